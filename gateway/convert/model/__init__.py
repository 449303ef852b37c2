"""The vocabulary of a conversion: paths, structures, tables, the FHIR model, the context a
mapping runs in, and the one error for mistakes in mapping files."""
