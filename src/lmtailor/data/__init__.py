"""Loading, validation, splits and built-in datasets (the row types are in ``lmtailor.core.example``)."""
