"""Freeze tuning: only the top N transformer layers, the final norm and the head train; everything below stays put.

The layer stack is found generically, not by architecture name: the outermost ``nn.ModuleList`` of identical
blocks (Llama ``model.layers``, T5 ``decoder.block``, BART ``model.decoder.layers``, BERT ``bert.encoder.layer``).
An encoder-decoder trains the top of its decoder, the layers nearest the output (its adapter's ``freeze_stack``).
The final norm is a norm module registered after the stack beside it (Llama ``norm``, T5 ``final_layer_norm``; BART
has none: its ``layernorm_embedding`` sits at the bottom). A language-model head tied to the input embeddings stays
frozen: training it would change the input of every layer, which is what freezing the lower layers avoids.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lmtailor.errors import UserError
from lmtailor.models.families import family_of


def _is_stack(module: nn.Module) -> bool:
    return (isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1
            and any(True for _ in module.parameters()))


def layer_stack(model: nn.Module, family: str) -> tuple[str, nn.ModuleList]:
    """(qualified name, module list) of the transformer layers freeze tuning counts from the top of."""
    stacks = [(name, m) for name, m in model.named_modules() if _is_stack(m)]
    outer = [(n, m) for n, m in stacks if not any(n.startswith(other + ".") for other, _ in stacks)]
    stack = family_of(family).freeze_stack
    if stack is not None:
        outer = [(n, m) for n, m in outer if stack in n.split(".")] or outer
    if not outer:
        raise UserError(f"method: freeze found no list of transformer layers (a ModuleList of identical blocks) in "
                        f"{type(model).__name__}; use method: full or lora")
    return max(outer, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def _final_norms(model: nn.Module, stack_name: str) -> list[str]:
    parent_name = stack_name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    names = [n for n, _ in parent.named_children()]
    after = names[names.index(stack_name.rpartition(".")[2]) + 1:]
    prefix = f"{parent_name}." if parent_name else ""
    return [prefix + n for n in after if "norm" in type(getattr(parent, n)).__name__.lower() and "embed" not in n]


def _head(model: nn.Module, family: str) -> tuple[list[str], str | None]:
    """(head module names, why the LM head stays frozen or None)."""
    if family_of(family).fresh_head:  # a classifier: its fresh head, and the encoder's pooler (read only by it)
        from lmtailor.training.method_base import head_modules

        names = head_modules(model)
        base = getattr(model, model.base_model_prefix, None)
        if base is not None and isinstance(getattr(base, "pooler", None), nn.Module):
            names.append(f"{model.base_model_prefix}.pooler")
        return names, None
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None:
        return [], None
    if inp is not None and out.weight is inp.weight:
        return [], "tied to the input embeddings: kept frozen, as training it would change every layer's input"
    return [n for n, m in model.named_modules() if m is out][:1], None


def freeze_below_top(model: nn.Module, trainable_layers: int, family: str) -> dict[str, Any]:
    """Set ``requires_grad`` so that only the top ``trainable_layers`` layers, the final norm, the head and any
    modules a warm start left random train; return the summary (also kept on the model for the run record)."""
    stack_name, stack = layer_stack(model, family)
    if trainable_layers > len(stack):
        raise UserError(f"trainable_layers: {trainable_layers} is more than the {len(stack)} layers of "
                        f"{stack_name}; use at most {len(stack)} (or method: full)")
    first = len(stack) - trainable_layers
    trained = [f"{stack_name}.{i}" for i in range(first, len(stack))] + _final_norms(model, stack_name)
    head, head_note = _head(model, family)
    new = list(getattr(model.config, "warm_start_new_modules", None) or [])
    model.requires_grad_(False)
    for name in trained + head:
        model.get_submodule(name).requires_grad_(True)
    for name, module in model.named_modules():  # random modules of a warm start (BERT2BERT's cross-attention)
        if any(name == n or name.endswith("." + n) for n in new):
            module.requires_grad_(True)
    summary = {"layers": stack_name, "total_layers": len(stack), "trainable_layers": trainable_layers,
               "trained_modules": trained + head, **({"head": head_note} if head_note else {}),
               **({"warm_start_new_modules": new} if new else {})}
    model._lmtailor_freeze = summary
    return summary


def freeze_summary(model: nn.Module) -> dict[str, Any] | None:
    """The summary ``freeze_below_top`` left on the model (None if it was not freeze-tuned)."""
    return getattr(model, "_lmtailor_freeze", None)
