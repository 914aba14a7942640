"""What ``lmtailor models`` shows: every alias, whether it can be used offline now, and what the cache holds."""

from __future__ import annotations

from pathlib import Path

from lmtailor.models.cache import dir_size, is_complete
from lmtailor.models.embedded import EMBEDDED_MODELS, EmbeddedModel, MissingPackageError
from lmtailor.models.gguf_cache import converted_path
from lmtailor.models.sources import MODEL_ALIASES, Alias
from lmtailor.models.tiny import TINY_VERSION
from lmtailor.paths import cache_dir


def _size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return ""  # unreachable


def _row(name: str, source: str, family: str, installed: str, cached: str, size: str, description: str) -> dict:
    return {"name": name, "source": source, "family": family, "installed": installed, "cached": cached,
            "size": size, "description": description}


def _embedded_row(entry: EmbeddedModel) -> tuple[dict, Path | None]:
    missing = entry.missing_packages()
    row = _row(entry.alias, "embedded", entry.family, "yes" if not missing else f"no: {entry.pip_command}", "-", "-",
               entry.description)
    if missing:
        return row, None
    pkg = entry.require_installed()
    if entry.gguf is None:
        row.update(cached="n/a", size=_size(dir_size(pkg / entry.model_subdir)))
        return row, None
    converted = converted_path(entry.alias, entry.gguf.digest(pkg))
    if is_complete(converted):
        row.update(cached="yes", size=_size(dir_size(converted)))
    else:
        row.update(cached="no: converted on first use", size=_size(dir_size(pkg)) + " GGUF")
    return row, converted


def _built_row(alias: Alias) -> tuple[dict, Path | None]:
    """An alias built once on first use (e.g. minilm-l6-bert2bert): installed if its sources are, cached once built."""
    try:
        path = alias.cached_path()  # type: ignore[misc]
    except MissingPackageError as exc:
        return _row(alias.name, alias.source, alias.family, f"no: {exc}".splitlines()[-1].strip(), "-", "-",
                    alias.description), None
    done = is_complete(path)
    return _row(alias.name, alias.source, alias.family, "yes", "yes" if done else "no: built on first use",
                _size(dir_size(path)) if done else "-", alias.description), path


def list_models() -> list[dict]:
    """One row per alias (embedded, then tiny) and per other model directory found in the cache.

    Keys: name, source, family, installed, cached, size, description. The cache location is ``cache_dir()/models``.
    """
    rows, known = [], set()
    for entry in EMBEDDED_MODELS:
        row, converted = _embedded_row(entry)
        rows.append(row)
        known.add(converted)
    for name in MODEL_ALIASES.names():
        alias = MODEL_ALIASES.get(name)
        if alias.cached_path is not None:
            row, path = _built_row(alias)
            rows.append(row)
            known.add(path)
            continue
        if alias.source != "tiny":
            continue
        built = cache_dir() / "models" / f"{name}-{TINY_VERSION}"
        known.add(built)
        done = is_complete(built)
        rows.append(_row(name, "tiny", alias.family, "yes", "yes" if done else "no: built on first use",
                         _size(dir_size(built)) if done else "-", alias.description))
    models_dir = cache_dir() / "models"
    for path in sorted(models_dir.iterdir()) if models_dir.is_dir() else []:
        if path in known or path.name.startswith(".") or not is_complete(path):
            continue
        rows.append(_row(path.name, "cache", "", "", "yes", _size(dir_size(path)),
                         f"no alias uses it now (an older package?); delete {path} to free the space"))
    return rows
