"""The Trainer arguments every fine-tuning backend shares (TRL SFT, Seq2SeqTrainer, the classifier Trainer).

One place decides what the library defaults get wrong for honest measurement: precision always follows the
runtime (TRL and ``dtype="auto"`` would switch on bf16, ~12x slower on CPUs that emulate it), no checkpoints yet,
no trackers, real (non-padding) tokens counted for the meter, progress bars on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmtailor.runtime import Runtime

if TYPE_CHECKING:
    from lmtailor.strategies.finetune import FinetuneConfig


def common_training_args(cfg: "FinetuneConfig", runtime: Runtime, seed: int, output_dir: Path, has_eval: bool,
                         learning_rate: float) -> dict[str, Any]:
    """Keyword arguments for ``TrainingArguments`` and its subclasses (``SFTConfig``, ``Seq2SeqTrainingArguments``)."""
    eval_strategy = cfg.eval_strategy if has_eval else "no"
    on_cpu = runtime.device == "cpu"
    return dict(
        output_dir=str(output_dir),
        seed=seed,
        data_seed=seed,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        learning_rate=learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_ratio,  # transformers 5 dropped warmup_ratio: a float < 1 here is a ratio
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=runtime.precision == "bf16",
        fp16=runtime.precision == "fp16",
        use_cpu=on_cpu,
        # TRL defaults to gradient checkpointing (saves memory, costs ~20-30% time): off unless asked for. Set under
        # its transformers-5 name, which also keeps the deprecated ``gradient_checkpointing`` alias from warning.
        activation_checkpointing=cfg.gradient_checkpointing,
        eval_strategy=eval_strategy,
        eval_steps=cfg.eval_steps if eval_strategy == "steps" else None,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,  # the loss before learning anything: the baseline the log is read against
        include_num_input_tokens_seen="non_padding",  # real tokens trained on, for the meter and the FLOP estimate
        save_strategy="no",  # one final save by the strategy; checkpoint/resume is not supported yet
        report_to=[],
        disable_tqdm=False,
        dataloader_num_workers=0,  # rows are tokenized in memory: worker processes would only compete for the cores
        dataloader_pin_memory=not on_cpu,
    )
