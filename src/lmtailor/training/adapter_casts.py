"""LoRA adapters without PEFT's fp32 round trip of their input while bf16 autocast computes them anyway.

PEFT keeps LoRA weights in fp32 (the master weights AdamW needs: bf16 weights would round small updates away) and
so casts every adapted layer's input to fp32 before ``lora_B(lora_A(dropout(x)))``. Under bf16 autocast, the mixed
precision every bf16 training runs in (accelerate wraps the model's forward), ``lora_A`` and ``lora_B`` are linear
layers that autocast computes in bf16 regardless: the fp32 copy of ``x`` is made, dropped out in fp32, and cast
straight back to bf16, and the backward casts its gradient twice more. A profile of a bf16 LoRA step of
SmolLM2-135M put these casts at ~10% of the step (benchmarks/README.md, training section).

``skip_redundant_adapter_casts`` turns PEFT's own switch (``cast_input_dtype_enabled``, which ``_cast_input_dtype``
reads on every forward) into a flag that is off exactly while bf16 autocast is active on the adapter's device:
outside it (fp32 training, evaluation or generation of the trained model) PEFT casts as before. The adapters stay
fp32 master weights; what changes is that dropout is applied to the bf16 input instead of its fp32 copy. Without
dropout the computation is unchanged bit for bit (a bf16 -> fp32 -> bf16 round trip is exact); with dropout, its
1/(1-p) scale is rounded to bf16 (1.0547 instead of 1.0526 for p = 0.05): the measured effect on losses is in
benchmarks/README.md and tests/test_adapter_casts.py.
"""

from __future__ import annotations

from typing import Any


class _CastUnlessBf16Autocast:
    """Truthy unless bf16 autocast is on for the device of ``weight``: PEFT casts the adapter input when truthy."""

    __slots__ = ("weight",)

    def __init__(self, weight: Any) -> None:
        self.weight = weight

    def __bool__(self) -> bool:
        import torch  # already loaded by then; imported here so that importing this module stays light

        device = self.weight.device.type
        return not (torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16)


def _plain_lora_linear(module) -> bool:
    """A PEFT LoRA ``Linear`` whose adapters are plain LoRA (no DoRA or other variant reading the fp32 input)."""
    import torch
    from peft.tuners.lora.layer import Linear

    return (isinstance(module, Linear) and not module.lora_variant
            and all(isinstance(a, torch.nn.Linear) for a in module.lora_A.values()))


def skip_redundant_adapter_casts(model) -> int:
    """Make every plain LoRA linear layer of ``model`` skip PEFT's fp32 input cast while bf16 autocast is on (see
    the module doc); returns how many layers now do. Other models and methods are left as they are."""
    count = 0
    for module in model.modules():
        if _plain_lora_linear(module) and module.lora_A:
            weight = next(iter(module.lora_A.values())).weight
            module.cast_input_dtype_enabled = _CastUnlessBf16Autocast(weight)
            count += 1
    return count
