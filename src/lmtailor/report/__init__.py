"""Reports: pure functions of result records."""
