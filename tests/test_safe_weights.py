"""Safetensors only: a pickled adapter, model or checkpoint is refused before PEFT or transformers open it.

The pickle used here is harmless but live: unpickling it writes a marker file (the control test proves it does), so
a marker that never appears proves that no loader unpickled it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmtailor.errors import UserError
from lmtailor.models.safe_weights import check_safe_weights, load_peft_adapter, load_pretrained
from lmtailor.runtime import Runtime
from lmtailor.serve.target import load_target
from lmtailor.training.engine import EngineMixin


class _Marker:
    """Unpickling this calls Path.write_text(marker, "unpickled"): harmless, and visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "unpickled")


def _write_pickle(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"weight": _Marker(marker)}))
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "MARKER"


def _pickled_adapter(tmp_path: Path, marker: Path, base: str = "tiny-llama") -> Path:
    adapter = tmp_path / "adapter"
    _write_pickle(adapter / "adapter_model.bin", marker)
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "base_model_name_or_path": base, "r": 2, "lora_alpha": 4,
        "target_modules": ["q_proj"]}))
    return adapter


def test_the_payload_is_live(tmp_path, marker):
    """Control: unpickling the crafted file does write the marker, so its absence below means nothing unpickled it."""
    path = _write_pickle(tmp_path / "x.bin", marker)
    pickle.loads(path.read_bytes())
    assert marker.read_text() == "unpickled"


def test_serve_refuses_a_pickled_adapter_directory_before_peft(tmp_path, marker):
    adapter = _pickled_adapter(tmp_path, marker)
    with pytest.raises(UserError, match=r"adapter_model\.bin.*safetensors only"):
        load_target(str(adapter), Runtime("cpu", "fp32", "test"))
    assert not marker.exists()


class _Tiny(torch.nn.Module):
    """The smallest model the crafted LoRA config fits (a q_proj to target)."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.q_proj(x)


def test_load_adapter_refuses_a_pickle_that_peft_would_unpickle(tmp_path, marker, monkeypatch):
    """PEFT reads adapter_model.bin when there is no safetensors file: with its reader made to unpickle without
    weights_only (what stands in for PyTorch's default being off), PEFT alone writes the marker; lmtailor's loader
    refuses the directory first and nothing is unpickled."""
    from peft import PeftModel
    import peft.utils.save_and_load as save_and_load

    monkeypatch.setattr(save_and_load, "torch_load", lambda path, **kw: pickle.loads(Path(path).read_bytes()))
    adapter = _pickled_adapter(tmp_path, marker)
    with pytest.warns(UserWarning, match="missing adapter keys"):  # the marker dict holds no tensors to place
        PeftModel.from_pretrained(_Tiny(), str(adapter))
    assert marker.read_text() == "unpickled"  # PEFT did unpickle it
    marker.unlink()
    with pytest.raises(UserError, match="adapter_model.bin"):
        load_peft_adapter(_Tiny(), adapter)
    assert not marker.exists()


def test_a_model_directory_with_only_pickled_weights_is_refused(tmp_path, marker, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from lmtailor.models import load_model

    model = tmp_path / "model"
    model.mkdir()
    for file in Path(tiny_llama_dir).iterdir():  # config and tokenizer: everything but the safetensors weights
        if file.is_file() and not file.name.endswith((".safetensors", ".safetensors.index.json")):
            (model / file.name).write_bytes(file.read_bytes())
    _write_pickle(model / "pytorch_model.bin", marker)
    with pytest.raises(UserError, match="pytorch_model.bin"):
        load_pretrained(AutoModelForCausalLM, model)
    with pytest.raises(UserError, match="safetensors"):
        load_model(str(model), Runtime("cpu", "fp32", "test"))
    assert not marker.exists()


def test_safetensors_beside_a_pickle_are_what_is_read(tmp_path, marker):
    # transformers and PEFT read these first and never open the pickle: such directories (hub snapshots often ship
    # both) are accepted
    for kind, name in (("model", "model.safetensors"), ("adapter", "adapter_model.safetensors")):
        folder = tmp_path / kind
        _write_pickle(folder / "pytorch_model.bin", marker)
        (folder / name).write_bytes(b"")
        check_safe_weights(folder, kind)  # no error
    check_safe_weights("some-org/some-hub-model", "model")  # not a local directory: loaded with use_safetensors
    with pytest.raises(UserError, match="no adapter_model.safetensors"):
        check_safe_weights(tmp_path, "adapter")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "optimizer.pt", "rng_state.pth", "last.ckpt"])
def test_a_training_checkpoint_holding_a_pickle_is_refused_before_the_trainer_reads_it(tmp_path, marker, name):
    checkpoint = tmp_path / "checkpoint-4"
    _write_pickle(checkpoint / name, marker)
    (checkpoint / "model.safetensors").write_bytes(b"")  # a checkpoint may hold no pickle at all, even beside these
    with pytest.raises(UserError, match=name):
        EngineMixin._load_from_checkpoint(SimpleNamespace(model=torch.nn.Linear(2, 2)), str(checkpoint))
    assert not marker.exists()
