"""Fine-tune an encoder (BERT, MiniLM, RoBERTa, DeBERTa, ...) as a sequence classifier, and predict.

Any fine-tuning method the encoder family supports (``training/peft_methods.py``: full, lora, dora, ia3,
prompt-tuning, freeze, other PEFT methods); the fresh head always trains in full and is saved with the adapter.

The model sees the bare row input (no instruction, no label list: a classification head needs neither) and a head
over ``task.labels`` (label id i = ``task.labels[i]``) learns to pick one. Training runs through transformers'
``Trainer`` with the same measurement-minded settings as ``training/sft.py``: precision from the runtime, no
checkpoints, no trackers, real-token counting, the loss on the progress bar.

There is deliberately no zero-shot counterpart: the head of a freshly loaded encoder is randomly initialised, so
predicting with it before training measures noise, not the model. Encoders enter a comparison only fine-tuned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from tqdm.auto import tqdm

from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.core.training_loop import TrainingLoop
from lmtailor.errors import UserError
from lmtailor.io import write_json_atomic
from lmtailor.measure.meter import Meter
from lmtailor.models.families import model_family
from lmtailor.prompting.formats import truncate_text
from lmtailor.runtime import Runtime
from lmtailor.training.common import common_training_args, count_params, train_and_save, use_loss_bar
from lmtailor.training.engine import engine_trainer_class
from lmtailor.training.method_settings import MethodSettings
from lmtailor.training.peft_methods import (finetune_method, save_adapters, wrap_for_training,
                                            learning_rate as method_learning_rate)
from lmtailor.training.trained import Trained

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import LoraConfig
    from pydantic import BaseModel
    from transformers import TrainingArguments

# The encoder learning rates are each method's ``encoder_learning_rate`` in training/peft_methods.py (with sources).

LABELS_FILE = "labels.json"  # next to the artifact: adapters carry no model config, so the label order lives here
_NOT_FOR_CLASSIFIERS = ("scoring", "completion_only_loss")


@dataclass
class EncodedSplit:
    """A tokenized split with the counts the run record reports (the same shape as ``SFTRows``)."""

    dataset: "Dataset | None"
    rows: int
    tokens: int
    truncated_inputs: int

    def summary(self) -> dict:
        return {"rows": self.rows, "tokens": self.tokens, "truncated_inputs": self.truncated_inputs}


def learning_rate(loop: TrainingLoop, method: MethodSettings) -> float:
    """The configured learning rate, or the encoder default for the method: the classifier's fresh head trains
    beside it."""
    return method_learning_rate(loop, method, fresh_head=True)


def check_config(cfg: "BaseModel") -> None:
    """Reject fine-tuning knobs set explicitly (in a pydantic config) that mean nothing for a classification head."""
    stray = [f for f in _NOT_FOR_CLASSIFIERS if f in cfg.model_fields_set]
    if "with_instruction" in cfg.model_fields_set and getattr(cfg, "with_instruction", False):
        stray.append("with_instruction")
    if stray:
        raise UserError(f"finetune: {', '.join(stray)} apply to generative models only; an encoder classifier reads "
                        "the bare input and picks a label with its head. Remove them for this model.")


def _label_ids(task: TaskSpec) -> dict[str, int]:
    if task.type != "classification" or not task.labels:
        raise UserError(f"task {task.name!r} ({task.type}) has no label set; an encoder classifier needs a "
                        "classification task with labels")
    return {label: i for i, label in enumerate(task.labels)}


def _input_limit(tokenizer, budget: Budget) -> int:
    """Input tokens allowed: the budget, but never past the model's maximum once [CLS]/[SEP] are added."""
    limit = budget.max_input_tokens
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000:  # tokenizers without a limit report ~1e30
        limit = min(limit, model_max - tokenizer.num_special_tokens_to_add(pair=False))
    return limit


def encode_split(tokenizer, task: TaskSpec, rows: Sequence[Example], budget: Budget) -> EncodedSplit:
    """Tokenize ``rows`` (inputs cut to the budget) with their label ids as ``labels``."""
    from datasets import Dataset

    ids = _label_ids(task)
    limit, records, cut_rows, tokens = _input_limit(tokenizer, budget), [], 0, 0
    for row in rows:
        if row.target not in ids:
            raise UserError(f"row {row.id!r}: label {row.target!r} is not one of the task labels "
                            f"({', '.join(task.labels)}); fix the row or add the label to task.labels")
        text, cut = truncate_text(tokenizer, row.input, limit)
        enc = dict(tokenizer(text))
        records.append({**enc, "labels": ids[row.target]})
        cut_rows += cut
        tokens += len(enc["input_ids"])
    dataset = Dataset.from_list(records) if records else None
    return EncodedSplit(dataset, len(records), tokens, cut_rows)


def lora_config(method: MethodSettings, model) -> "LoraConfig":
    """PEFT's ``LoraConfig`` for sequence classification; every module of the head is trained and saved.

    PEFT's SEQ_CLS task adds modules named "classifier"/"score" to modules_to_save. Some heads have more fresh parts
    (DeBERTa's "pooler", DistilBERT's "pre_classifier"), so every top-level module outside the encoder is saved
    (``peft_methods.head_modules``), whatever the method."""
    return finetune_method("lora").peft_config(method, model, model_family(model).name)


def classifier_args(loop: TrainingLoop, method: MethodSettings, runtime: Runtime, seed: int, output_dir: Path,
                    has_eval: bool) -> "TrainingArguments":
    """``TrainingArguments`` for one run: precision from ``runtime``, no checkpoints, no trackers, progress shown."""
    from transformers import TrainingArguments

    return TrainingArguments(
        **common_training_args(loop, runtime, seed, output_dir, has_eval, learning_rate(loop, method)),
        remove_unused_columns=False,  # the columns are exactly the model's inputs; PEFT wrappers hide the signature
        label_names=["labels"],
    )


def _accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def _set_labels(model, labels: Sequence[str]) -> None:
    """Name the head's outputs after the task labels, so a saved model says what it predicts."""
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}


def train_classifier(model, tokenizer, loop: TrainingLoop, method: MethodSettings, task: TaskSpec,
                     train_rows: Sequence[Example], val_rows: Sequence[Example], budget: Budget, runtime: Runtime,
                     seed: int, out_dir: Path) -> Trained:
    """Train ``model`` (loaded with a sequence-classification head over ``task.labels``) and save the artifact."""
    from transformers import DataCollatorWithPadding, Trainer

    check_config(loop)
    labels = tuple(task.labels or ())
    train, val = encode_split(tokenizer, task, train_rows, budget), encode_split(tokenizer, task, val_rows, budget)
    if train.dataset is None:
        raise UserError("finetune needs training rows, but the training split is empty")
    if model.config.num_labels != len(labels):
        raise UserError(f"the model's head has {model.config.num_labels} outputs but task {task.name!r} has "
                        f"{len(labels)} labels; load it with num_labels={len(labels)}")
    _set_labels(model, labels)
    model = wrap_for_training(model, method, model_family(model).name, loop.gradient_checkpointing)
    out_dir = Path(out_dir)
    args = classifier_args(loop, method, runtime, seed, out_dir / "checkpoints", has_eval=val.dataset is not None)
    trainer = engine_trainer_class(Trainer)(model=model, args=args, train_dataset=train.dataset,
                                            eval_dataset=val.dataset, processing_class=tokenizer,
                                            data_collator=DataCollatorWithPadding(tokenizer),
                                            compute_metrics=_accuracy)
    use_loss_bar(trainer)
    trainable, total = count_params(trainer.model)
    state, name, path = train_and_save(trainer, loop, tokenizer, out_dir, finetune_method(method.name).artifact_kind,
                                       save=lambda m, tok, p: save_classifier(m, tok, labels, p))
    return Trained(trainer.model, state, train, val, trainable, total, name, path,
                   learning_rate=learning_rate(loop, method), labels=labels)


def save_classifier(model, tokenizer, labels: Sequence[str], path: Path) -> Path:
    """Save the model (or adapter with its head) as safetensors, the tokenizer, and the label order."""
    if hasattr(model, "save_adapter") and not hasattr(model, "peft_config"):  # AdapterHub bottleneck adapters
        save_adapters(model, tokenizer, path)
    else:
        model.save_pretrained(path)  # safetensors is the default of both PEFT and Transformers
        tokenizer.save_pretrained(path)
    write_json_atomic(path / LABELS_FILE, {"labels": list(labels),
                                           "id2label": {str(i): label for i, label in enumerate(labels)}})
    return path


def _check_head(model, task: TaskSpec) -> None:
    labels = tuple(_label_ids(task))
    config = model.config
    if config.num_labels != len(labels):
        raise UserError(f"the model's head has {config.num_labels} outputs but task {task.name!r} has {len(labels)} "
                        "labels; fine-tune it on this task first")
    named = [config.id2label.get(i) for i in range(len(labels))]
    if named != list(labels) and named != [f"LABEL_{i}" for i in range(len(labels))]:
        raise UserError(f"the model's head predicts labels {named} but task {task.name!r} has {list(labels)} (in "
                        "that order); use the model fine-tuned on this task or fix task.labels")


@torch.no_grad()
def predict_classifier(model, tokenizer, task: TaskSpec, rows: Sequence[Example], budget: Budget, meter: Meter,
                       progress_desc: str = "") -> tuple[list[str], dict]:
    """Return the argmax label per row and details (probabilities by row id); counts tokens, rows, FLOPs."""
    _check_head(model, task)
    limit = _input_limit(tokenizer, budget)
    details: dict = {"mode": "classifier-head", "rows": len(rows), "truncated_inputs": 0, "labels": list(task.labels)}
    predictions, probs, tokens = [], [], 0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    bar = tqdm(total=len(rows), desc=progress_desc or "classify", unit="row")
    try:
        for start in range(0, len(rows), budget.eval_batch_size):
            batch = rows[start:start + budget.eval_batch_size]
            texts = []
            for row in batch:
                text, cut = truncate_text(tokenizer, row.input, limit)
                texts.append(text)
                details["truncated_inputs"] += cut
            enc = tokenizer(texts, padding=True, return_tensors="pt").to(device)
            tokens += int(enc["attention_mask"].sum())  # real tokens, padding excluded
            p = model(**enc).logits.float().softmax(-1)
            predictions += [task.labels[i] for i in p.argmax(-1).tolist()]
            probs += p.tolist()
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    meter.count_inference(model, tokens, len(rows))
    details["tokens"] = tokens
    details["label_probs"] = {row.id: [round(x, 4) for x in p] for row, p in zip(rows, probs)}
    return predictions, details
