"""Files and folders lmtailor writes get the mode the user's umask gives (not mkstemp/mkdtemp's private 0600/0700)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lmtailor.io import process_umask, write_json_atomic, write_jsonl_atomic, write_text_atomic


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_process_umask_reads_the_umask_without_changing_it(umask):
    umask(0o027)
    assert process_umask() == 0o027
    assert process_umask() == 0o027  # still set: reading it did not reset it


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o027, 0o640)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    write_json_atomic(tmp_path / "results" / "row.json", {"a": 1})  # 0o666 & ~mask, as open() would give
    write_jsonl_atomic(tmp_path / "predictions.jsonl", [{"id": "1"}])
    write_text_atomic(tmp_path / "report.md", "# r\n")
    for name in ("results/row.json", "predictions.jsonl", "report.md"):
        assert _mode(tmp_path / name) == expected, name
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert _mode(plain) == expected  # the same as an ordinary write


def test_an_export_folder_follows_the_umask(tmp_path, umask):
    from lmtailor.export.merge import write_dir_atomically

    umask(0o027)
    out = write_dir_atomically(tmp_path / "merged", lambda d: (d / "model.safetensors").write_bytes(b"x"))
    assert _mode(out) == 0o750  # 0o777 & ~0o027; mkdtemp alone gives 0o700
    assert _mode(out / "model.safetensors") == 0o640


def test_a_gguf_file_follows_the_umask(tmp_path, umask):
    from lmtailor.export.gguf_export import _write_atomically

    class Writer:  # what _write_atomically calls on a gguf.GGUFWriter
        def write_header_to_file(self, path):
            self.path = path
            Path(path).write_bytes(b"GGUF")

        def write_kv_data_to_file(self):
            pass

        def write_tensors_to_file(self, progress):
            pass

        def close(self):
            pass

    umask(0o022)
    _write_atomically(Writer(), tmp_path / "model.gguf")
    assert _mode(tmp_path / "model.gguf") == 0o644  # mkstemp alone gives 0o600
