"""``lmtailor export``: a trained row of a run directory as a merged standalone model and/or a GGUF file.

    result = export_row(Path("runs/demo-20250101-120000"), merge=True, gguf=True, gguf_type="q8_0")

Outputs go to ``RUN_DIR/export/<row_id>/`` (or ``out_dir``): ``merged/`` (a transformers model directory) and
``<row_id>.<type>.gguf``. A full fine-tune's ``model/`` is already standalone and is used where it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from lmtailor.errors import UserError
from lmtailor.export.gguf_export import GGUF_TYPES, GgufExport, check_gguf_config, export_gguf
from lmtailor.export.merge import MergeResult, base_reference, export_runtime, merge_row
from lmtailor.export.run_rows import TrainedRow, select_row
from lmtailor.models import resolve_model
from lmtailor.models.family import auto_class
from lmtailor.rundir import RunDir

log = logging.getLogger("lmtailor")


@dataclass
class ExportResult:
    """What one export did: the row, the standalone model directory (if made or found) and the GGUF file."""

    row: TrainedRow
    out_dir: Path
    model: MergeResult | None = None
    gguf: GgufExport | None = None


def default_out_dir(run_dir: Path, row_id: str) -> Path:
    """Where a row's exports go unless told otherwise: ``RUN_DIR/export/<row_id>``."""
    return RunDir(run_dir).export_dir(row_id)


def run_trusts_remote_code(run_dir: Path) -> bool:
    """The run's ``runtime.trust_remote_code`` (off unless the experiment set it)."""
    path = RunDir(run_dir).config
    if not path.is_file():
        return False
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return bool((config.get("runtime") or {}).get("trust_remote_code", False))


def _check_gguf_possible(row: TrainedRow) -> None:
    """Fail before a slow merge when the row's model cannot become a GGUF file anyway."""
    from transformers import AutoConfig

    if row.labels:
        raise UserError(f"row {row.row_id} is an encoder classifier (a head over labels, no language-model head): "
                        "GGUF export is for decoder-only language models; use --merge for a transformers directory")
    where = row.artifact if row.kind == "model" else resolve_model(base_reference(row)).path
    check_gguf_config(AutoConfig.from_pretrained(where, trust_remote_code=False), where)


def export_row(run_dir: Path, row_id: str | None = None, merge: bool = False, gguf: bool = False,
               gguf_type: str = "f16", out_dir: Path | None = None, overwrite: bool = False) -> ExportResult:
    """Export one trained row: ``merge`` writes a standalone model, ``gguf`` a GGUF file (merging first if needed)."""
    if gguf_type not in GGUF_TYPES:
        raise UserError(f"--gguf-type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    row = select_row(Path(run_dir), row_id)
    out = Path(out_dir) if out_dir is not None else default_out_dir(run_dir, row.row_id)
    result = ExportResult(row, out)
    if gguf:
        _check_gguf_possible(row)
    if merge or gguf:
        trust = run_trusts_remote_code(run_dir)
        if trust:
            log.warning("trust_remote_code is ON for this export (set in the run's experiment): Python code inside "
                        "the model directories may run")
        merged_dir = out / "merged"
        if row.kind == "adapter" and not merge and merged_dir.is_dir():  # --gguf alone reuses an earlier merge
            log.info("using the merged model already at %s", merged_dir)
            result.model = MergeResult(merged_dir, base_reference(row), None, None, merged=True)
        else:
            result.model = merge_row(row, merged_dir, overwrite=overwrite, runtime=export_runtime(trust))
    if gguf:
        assert result.model is not None
        target = out / f"{row.row_id}.{gguf_type}.gguf"
        result.gguf = export_gguf(result.model.path, target, gguf_type, name=row.row_id, overwrite=overwrite)
    return result


def describe(result: ExportResult) -> list[str]:
    """Lines telling what was written and how to load it with plain transformers / peft / llama.cpp."""
    row = result.row
    lines = [f"row {row.row_id}: {row.record.get('label', '')} on {row.model_ref} ({row.kind}, method "
             f"{row.method or 'unknown'})"]
    if row.kind == "adapter" and row.is_peft:
        lines += [f"adapter: {row.artifact}",
                  f"  load: PeftModel.from_pretrained(<base model loaded from {base_reference_or_note(row)}>, "
                  f"{str(row.artifact)!r})"]
    elif row.kind == "adapter":
        lines += [f"adapter (not PEFT: AdapterHub bottleneck adapters): {row.artifact}",
                  f"  load: adapters.init(model); model.load_adapter({str(row.artifact)!r}, use_safetensors=True)"]
    m = result.model
    if m is not None:
        what = "merged model" if m.merged else "standalone model (a full fine-tune needs no merge)"
        lines += [f"{what}: {m.path}", f"  load: {_auto_class_name(m)}.from_pretrained({str(m.path)!r})"]
    if result.gguf is not None:
        g = result.gguf
        lines += [f"GGUF ({g.gguf_type}, {g.architecture}, {g.bytes / 1e6:.1f} MB): {g.path}",
                  f"  run: llama-cli -m {g.path} -cnv   (or llama-server -m {g.path})"]
    if m is None and result.gguf is None:
        lines.append("nothing written: add --merge for a standalone model directory, --gguf for llama.cpp")
    return lines


def _auto_class_name(m: MergeResult) -> str:
    """The transformers auto class that loads the exported directory."""
    from transformers import AutoConfig

    from lmtailor.models.families import family_of
    if m.head:
        return auto_class(m.head).__name__
    return family_of(AutoConfig.from_pretrained(m.path, trust_remote_code=False)).auto_class().__name__


def base_reference_or_note(row: TrainedRow) -> str:
    """The adapter's base for display; the reason in words when there is none to load."""
    try:
        return base_reference(row)
    except UserError:
        return f"{row.model_ref} after the row's pre-training, which was not saved"
