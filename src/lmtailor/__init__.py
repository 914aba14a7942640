"""lmtailor: run every rung of the model customization spectrum on your task and measure which one pays."""

__version__ = "0.1.0"
