"""The base class of errors whose messages are written for people: the CLI prints them without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a config key, a data row, a missing model); the message says what and where."""
