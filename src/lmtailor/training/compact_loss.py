"""The SFT loss computed on the answer positions only, through the model's own forward.

TRL's ``SFTTrainer`` patches the model with a fused LM head. On CUDA its Triton kernel projects only the positions
that have a label; on every other device (CPU, MPS) it projects *every* position onto the vocabulary in fp32
tiles, recomputes that projection in the backward and accumulates its gradient with an fp32 matmul, and it works
out entropy and top-1 over the whole vocabulary at every position. With ``completion_only_loss`` most positions
are prompt (a 3-token answer after a 60-token docstring in the demo), so on a CPU most of that head work is thrown
away: the LM head of SmolLM2-135M (49k x 576) is a fifth of the model's weights.

``CompactLossSFTTrainer`` asks the model for the logits of the labelled positions only, through transformers'
``logits_to_keep`` with a boolean mask (``slice_logits_to_keep``: the hidden states are gathered before the LM
head), and takes the same token-mean cross-entropy TRL takes; it logs the same entropy and token accuracy, computed
on those positions. The loss and its gradients are the ones TRL's path gives (tests/test_training_speedups.py).
It falls back to TRL's path whenever that one does something this does not: CUDA/XPU (TRL's kernel already
skips unlabelled positions), prompt-learning PEFT (virtual tokens shift the positions), a custom loss, label
smoothing, DFT, MoE auxiliary losses, pre-shifted labels (context parallelism), ``return_outputs``, and models
whose forward does not take a boolean ``logits_to_keep`` (checked once by ``supports_compact_logits``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import SFTTrainer


@torch.no_grad()
def supports_compact_logits(model) -> bool:
    """Whether ``model(..., logits_to_keep=bool_mask)`` returns exactly the masked positions' logits (one short probe
    forward): the flattened ``(kept, vocab)`` logits equal to the full forward's at those positions."""
    vocab = model.config.get_text_config().vocab_size
    ids = torch.arange(3, 9).remainder(vocab).reshape(1, 6).to(next(model.parameters()).device)
    keep = torch.tensor([[False, True, False, False, True, False]], device=ids.device)
    was_training = model.training
    model.eval()
    try:
        full = model(input_ids=ids, use_cache=False).logits
        kept = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
    except (TypeError, ValueError, IndexError, RuntimeError):
        return False
    finally:
        model.train(was_training)
    return kept.shape == (2, full.shape[-1]) and torch.allclose(kept.float(), full[keep].float(), atol=1e-3, rtol=1e-3)


def _is_prompt_learning(model) -> bool:
    config = getattr(model, "peft_config", None)
    active = getattr(model, "active_adapter", None)
    return isinstance(config, dict) and active in config and bool(getattr(config[active], "is_prompt_learning", False))


class CompactLossSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss projects only the labelled positions onto the vocabulary (see the module doc)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.compact_loss = self._compact_loss_applies()

    def _compact_loss_applies(self) -> bool:
        args = self.args
        device = next(self.model.parameters()).device
        if device.type in ("cuda", "xpu") or _is_prompt_learning(self.model):
            return False
        if self.compute_loss_func is not None or self.label_smoother is not None or args.loss_type != "nll":
            return False
        if self.aux_loss_enabled:
            return False
        return supports_compact_logits(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.compact_loss or return_outputs or "shift_labels" in inputs or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        labels = inputs["labels"]
        # position t predicts token t + 1: keep t when label t + 1 is trained on
        targets = labels[:, 1:]
        keep = torch.cat([targets != -100, torch.zeros_like(labels[:, :1], dtype=torch.bool)], dim=1)
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        logits = model(**model_inputs, use_cache=False, logits_to_keep=keep).logits.float()  # (kept, vocab)
        wanted = targets[targets != -100]
        n_valid = wanted.numel()
        summed = F.cross_entropy(logits, wanted, reduction="sum")
        denominator = num_items_in_batch if num_items_in_batch is not None else max(n_valid, 1)
        loss = summed / torch.as_tensor(denominator, device=summed.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as TRL and Trainer do
        self._log_compact_metrics(mode, logits.detach(), wanted, inputs)
        return loss

    def _log_compact_metrics(self, mode: str, logits: torch.Tensor, wanted: torch.Tensor, inputs: dict) -> None:
        """TRL's per-step metrics (entropy, mean token accuracy, tokens seen) on the labelled positions."""
        gather = self.accelerator.gather_for_metrics
        log_p = torch.log_softmax(logits, dim=-1)
        n_valid = gather(torch.tensor(wanted.numel(), device=logits.device)).sum()
        entropy = gather(-(log_p.exp() * log_p).sum(-1).sum()).sum()
        correct = gather((logits.argmax(-1) == wanted).sum()).sum()
        self._metrics[mode]["entropy"].append((entropy / n_valid).item() if n_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((correct / n_valid).item() if n_valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                tokens = gather(inputs["attention_mask"].sum()).sum().item()
            else:
                tokens = gather(torch.tensor(inputs["position_ids"].size(1), device=logits.device)).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
