"""What the rest of lmtailor records about an endpoint model (its ``api:`` block is ``core/api_settings.py``)."""

from __future__ import annotations

# The "family" recorded for a row whose model is an endpoint: its architecture is not known to lmtailor.
API_FAMILY = "api"
