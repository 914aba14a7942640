"""Where lmtailor keeps caches: ``$LMTAILOR_CACHE`` or the platform's user cache directory."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """Return (and create) the cache directory for converted models and built datasets."""
    root = Path(os.environ.get("LMTAILOR_CACHE") or platformdirs.user_cache_dir("lmtailor"))
    root.mkdir(parents=True, exist_ok=True)
    return root
