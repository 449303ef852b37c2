"""Reading the mapping files and their site overlays, compiling message maps, and the load-time checks
against HL7 v2 and FHIR R4 definitions."""
