"""Prompt formats: task rows as messages, encoder source texts and token ids (the same for training and inference),
and the exemplars shown before a row."""
