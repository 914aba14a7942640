"""The bottom layer: shared types that import nothing else of lmtailor above it."""
