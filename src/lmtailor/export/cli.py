"""The ``lmtailor export`` command: its arguments and what it prints. The work is in ``exporter.py``."""

from __future__ import annotations

import argparse
from pathlib import Path

GGUF_TYPE_CHOICES = ("f32", "f16", "q8_0")  # gguf_export.GGUF_TYPES, kept here so --help imports nothing heavy


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to the ``lmtailor`` parser's subparsers."""
    p = subparsers.add_parser(
        "export", help="merge a trained row's adapter into its base model and/or write a GGUF file for llama.cpp",
        description="Export a trained row of a run directory. Without --merge or --gguf, say where its adapter or "
                    "model is and how to load it. Outputs go to RUN_DIR/export/<row_id>/ unless --out is given.")
    p.add_argument("run_dir", type=Path, help="a run directory written by `lmtailor run`")
    p.add_argument("--row", default=None, metavar="ROW_ID",
                   help="which trained row (results/<ROW_ID>.json); may be omitted when the run has only one")
    p.add_argument("--merge", action="store_true",
                   help="fold the adapter into the base model (fp32) and save a standalone model directory "
                        "(safetensors) at OUT/merged, loadable with plain AutoModel...from_pretrained")
    p.add_argument("--gguf", action="store_true",
                   help="write OUT/<row_id>.<type>.gguf for llama.cpp (decoder-only Llama/Mistral/Qwen2 models; "
                        "merges first when the row saved an adapter)")
    p.add_argument("--gguf-type", choices=GGUF_TYPE_CHOICES, default="f16",
                   help="GGUF tensor type: f32, f16 (default) or q8_0 (8-bit; norms stay f32)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="directory for this row's exports (default: RUN_DIR/export/<row_id>)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export of the same row")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``lmtailor export`` with parsed arguments; print what was written and how to load it."""
    from rich.console import Console

    from lmtailor.export.exporter import describe, export_row

    result = export_row(args.run_dir, row_id=args.row, merge=args.merge, gguf=args.gguf, gguf_type=args.gguf_type,
                        out_dir=args.out, overwrite=args.overwrite)
    console = Console()
    for line in describe(result):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0
