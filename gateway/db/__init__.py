"""The database under the FHIR store and the journal: engines, the one schema, its migrations,
and the bulk statements of the write path."""
