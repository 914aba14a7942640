"""LoRA adapters skip PEFT's fp32 input cast under bf16 autocast only (training/adapter_casts.py): bit-identical
without dropout, the same up to dropout's bf16-rounded scale with it, and casting as before outside autocast."""

from __future__ import annotations

import pytest
import torch

from lmtailor.training.adapter_casts import _CastUnlessBf16Autocast, skip_redundant_adapter_casts


class _TwoLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _lora(dropout: float, skip: bool):
    """A bf16 two-layer model with fp32 LoRA adapters (PEFT's default), B made non-zero so both matrices train."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(_TwoLayers().to(torch.bfloat16),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["up", "down"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(1))
    if skip:
        assert skip_redundant_adapter_casts(model) == 2  # both adapted layers
    return model


def _step(model):
    """One forward + backward under bf16 autocast (as accelerate runs a bf16 training); output and LoRA grads."""
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    torch.manual_seed(3)  # the dropout masks
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), grads


def test_without_dropout_the_step_is_bit_identical():
    # bf16 -> fp32 -> bf16 is exact, and autocast computes lora_A / lora_B in bf16 either way
    out_cast, grads_cast = _step(_lora(0.0, skip=False))
    out_skip, grads_skip = _step(_lora(0.0, skip=True))
    assert out_skip.dtype == torch.bfloat16 and torch.equal(out_cast, out_skip)
    assert grads_cast.keys() == grads_skip.keys() and len(grads_cast) == 4
    for name in grads_cast:
        assert grads_skip[name].dtype == torch.float32  # the adapters stay fp32 master weights
        assert torch.equal(grads_cast[name], grads_skip[name]), name


def test_with_dropout_only_the_rounded_scale_differs():
    # Same masks (bernoulli_ draws the same stream for bf16 and fp32), scale 1/0.95 = 1.05263 in fp32 but 1.0546875
    # in bf16 (spacing 2^-7 near 1): the adapter's contribution grows by 0.19%, below bf16's own 0.4% step; the
    # outputs differ by at most a few bf16 steps of the adapter's share, the gradients by well under 2%.
    out_cast, grads_cast = _step(_lora(0.05, skip=False))
    out_skip, grads_skip = _step(_lora(0.05, skip=True))
    assert not torch.equal(out_cast, out_skip)  # the path really changed
    assert torch.allclose(out_cast.float(), out_skip.float(), rtol=0.02, atol=0.02)
    for name in grads_cast:
        rel = (grads_cast[name] - grads_skip[name]).norm() / grads_cast[name].norm()
        assert rel < 0.02, (name, float(rel))


def test_outside_bf16_autocast_peft_casts_as_before():
    model = _lora(0.0, skip=True)
    layer = model.base_model.model.up
    assert isinstance(layer.cast_input_dtype_enabled, _CastUnlessBf16Autocast)
    x = torch.ones(2, 32, dtype=torch.bfloat16)
    assert layer._cast_input_dtype(x, torch.float32).dtype == torch.float32  # no autocast: cast (fp32 eval)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer._cast_input_dtype(x, torch.float32) is x
    with torch.autocast("cpu", dtype=torch.float16):
        assert layer._cast_input_dtype(x, torch.float32).dtype == torch.float32  # only bf16 autocast skips
    with torch.no_grad():
        assert model(x).dtype == torch.bfloat16  # outside autocast the fp32 adapters still run (PEFT casts back)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_sft_trainer_installs_it_on_plain_lora_only(tmp_path, method):
    from tiny_training import sft_trainer

    trainer, _, _ = sft_trainer(tmp_path, method=method)
    flags = [m.cast_input_dtype_enabled for m in trainer.model.modules() if hasattr(m, "lora_A")]
    assert flags and all(isinstance(f, _CastUnlessBf16Autocast) == (method == "lora") for f in flags)
