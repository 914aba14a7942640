"""The on-disk response cache of OpenAI-compatible endpoints: a rerun of an experiment sends nothing twice.

One JSON file per request under ``cache_dir()/api/<first 2 hex>/<sha256>.json``. The key is the sha256 of the
canonical JSON (sorted keys, no spaces) of ``{base_url, model, body}``: exactly what decides the answer, and never the
API key (a new key gives the same answers; the key must not end up in file names or on disk). A sampled request
(temperature > 0) is cached under its ``seed``, which is part of the body, so a rerun gets the same sample; one
without a seed is not cached (each call is meant to be a fresh sample; see ``cacheable``).

An entry holds the answer's text, its token usage, finish reason and the latency measured when it was sent. It is
written to a scratch file and renamed (``io.write_json_atomic``), so a killed write is never read as a whole one; an
entry that does not parse or lacks a field is ignored (debug log) and overwritten by the next answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

from lmtailor.io import write_json_atomic
from lmtailor.paths import cache_dir

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the entry layout changes: older entries are then ignored, not misread
_FIELDS: dict[str, tuple[type, ...]] = {"text": (str,), "input_tokens": (int,), "output_tokens": (int,),
                                        "usage_known": (bool,), "finish_reason": (str, type(None)),
                                        "latency_s": (int, float)}


def default_cache_root() -> Path:
    """Where responses are kept: ``cache_dir()/api``."""
    return cache_dir() / "api"


def request_key(base_url: str, model: str, body: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of what decides the answer (never the API key)."""
    what = {"base_url": base_url, "model": model, "body": body}
    canonical = json.dumps(what, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def cacheable(body: Mapping[str, Any]) -> bool:
    """Greedy requests always; sampled ones (temperature > 0, or unset: servers sample by default) with a seed only."""
    temperature = body.get("temperature", 1.0)
    return temperature == 0 or body.get("seed") is not None


class ResponseCache:
    """Answers of an endpoint stored by request key (``request_key``)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The stored entry for ``key``, or None when there is none or it is unreadable (it will be overwritten)."""
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.debug("response cache: ignoring unreadable entry %s (%s)", path, e)
            return None
        problem = _problem(entry)
        if problem:
            log.debug("response cache: ignoring entry %s: %s", path, problem)
            return None
        return {name: entry[name] for name in _FIELDS}

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        """Store ``entry`` (the fields of ``_FIELDS``) atomically under ``key``."""
        write_json_atomic(self.path(key), {"format": FORMAT, **{name: entry[name] for name in _FIELDS}})


def _problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "not a JSON object"
    if entry.get("format") != FORMAT:
        return f"format {entry.get('format')!r}, expected {FORMAT}"
    for name, types in _FIELDS.items():
        value = entry.get(name)
        # bool is an int in Python: a token count of true is a damaged entry, not 1
        if name not in entry or not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            return f"field {name!r} missing or of the wrong type"
    return None
