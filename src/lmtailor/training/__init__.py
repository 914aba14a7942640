"""Training helpers shared by the strategies that train: row encoding for SFT and the TRL trainer setup."""
