"""Export trained rows: merged standalone model directories (safetensors) and GGUF files for llama.cpp.

    from lmtailor.export import export_row
    result = export_row(run_dir, merge=True, gguf=True, gguf_type="f16")

Names are imported on first use, so the CLI can build its parser without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "export_row": "exporter", "ExportResult": "exporter", "default_out_dir": "exporter", "describe": "exporter",
    "merge_row": "merge", "MergeResult": "merge", "write_dir_atomically": "merge", "EXPORT_INFO": "merge",
    "export_gguf": "gguf_export", "GgufExport": "gguf_export", "GGUF_TYPES": "gguf_export",
    "GGUF_ARCHITECTURES": "gguf_export",
    "select_row": "run_rows", "trained_rows": "run_rows", "TrainedRow": "run_rows",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lmtailor.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lmtailor.export.{_WHERE[name]}"), name)
