"""Converting: the Converter (one v2 message in, one transaction Bundle out) and one conversion run."""
