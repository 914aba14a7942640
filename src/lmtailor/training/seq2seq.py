"""Fine-tuning of an encoder-decoder model (T5, Flan-T5, BART, BERT2BERT) through transformers' ``Seq2SeqTrainer``,
with any fine-tuning method the family supports (``training/peft_methods.py``).

The knobs are a ``TrainingLoop`` (``core/training_loop.py``) and the method's settings, read the same way as the
decoder-only path in ``training/sft.py``: same learning-rate defaults, precision from the runtime, no checkpoints, no
trackers, the loss on the progress bar. Rows are encoded by ``prompting/seq2seq_format.py``, the module inference
uses, so the tuned model is scored on exactly the source and target tokens it learnt. The loss of an encoder-decoder
model is always on the target alone (the source is the encoder's input, never predicted).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence


from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.core.training_loop import TrainingLoop
from lmtailor.errors import UserError
from lmtailor.models.families import model_family
from lmtailor.prompting.seq2seq_format import encode_training_row
from lmtailor.runtime import Runtime
from lmtailor.training.common import common_training_args, count_params, train_and_save, use_loss_bar
from lmtailor.training.engine import engine_trainer_class
from lmtailor.training.method_settings import MethodSettings
from lmtailor.training.peft_methods import finetune_method, save_override, wrap_for_training
from lmtailor.training.sft import learning_rate
from lmtailor.training.trained import Trained

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments


@dataclass
class Seq2SeqRows:
    """A tokenized split (``input_ids``, ``attention_mask``, ``labels``), with counts the run record reports."""

    dataset: "Dataset | None"
    rows: int
    tokens: int  # source + target tokens of one pass over the rows
    truncated_inputs: int
    truncated_targets: int

    def summary(self) -> dict:
        return {"rows": self.rows, "tokens": self.tokens, "truncated_inputs": self.truncated_inputs,
                "truncated_targets": self.truncated_targets}


def build_seq2seq_rows(tokenizer, task: TaskSpec, rows: Sequence[Example], budget: Budget,
                       decoder_start_token_id: int | None = None) -> Seq2SeqRows:
    """Encode ``rows`` into a ``datasets.Dataset`` of source ids and target labels within ``budget``
    (``decoder_start_token_id``: the model's, so targets do not repeat it; see ``encode_target``)."""
    from datasets import Dataset

    encoded = [encode_training_row(tokenizer, task, row, budget.max_input_tokens, budget.max_seq_len,
                                   decoder_start_token_id)
               for row in rows]
    records = [{"input_ids": e.source_ids, "attention_mask": [1] * len(e.source_ids), "labels": e.target_ids}
               for e in encoded]
    return Seq2SeqRows(
        dataset=Dataset.from_list(records) if records else None,
        rows=len(records),
        tokens=sum(len(e.source_ids) + len(e.target_ids) for e in encoded),
        truncated_inputs=sum(e.input_truncated for e in encoded),
        truncated_targets=sum(e.target_truncated for e in encoded),
    )


def seq2seq_training_args(loop: TrainingLoop, method: MethodSettings, runtime: Runtime, seed: int,
                          output_dir: Path, has_eval: bool) -> "Seq2SeqTrainingArguments":
    """``Seq2SeqTrainingArguments`` for one run: precision from ``runtime``, no checkpoints, no trackers."""
    from transformers import Seq2SeqTrainingArguments

    return Seq2SeqTrainingArguments(
        **common_training_args(loop, runtime, seed, output_dir, has_eval, learning_rate(loop, method)),
        prediction_loss_only=True,  # validation needs the loss only; keeping every logit would cost memory
        predict_with_generate=False,
        remove_unused_columns=False,  # the dataset holds exactly the model's inputs
    )


def _trainer_class():
    from transformers import Seq2SeqTrainer

    class _CountingSeq2SeqTrainer(engine_trainer_class(Seq2SeqTrainer)):
        """Counts the target tokens too: the Trainer's own count covers the encoder input (attention mask) only,
        and the meter's token count must be every real token processed, as on the decoder-only path."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            if "labels" in inputs:
                self.state.num_input_tokens_seen += int((inputs["labels"] != -100).sum())
            return super().training_step(model, inputs, num_items_in_batch)

    return _CountingSeq2SeqTrainer


def build_seq2seq_trainer(model, tokenizer, loop: TrainingLoop, method: MethodSettings, train: "Dataset",
                          validation: "Dataset | None", runtime: Runtime, seed: int,
                          output_dir: Path) -> "Seq2SeqTrainer":
    """A ``Seq2SeqTrainer`` over encoded rows, the model prepared (and PEFT-wrapped) by the fine-tuning method."""
    from transformers import DataCollatorForSeq2Seq

    if "completion_only_loss" in loop.model_fields_set and not loop.completion_only_loss:
        raise UserError("completion_only_loss: false does not apply to encoder-decoder models: their loss is always "
                        "on the target, the source is only read by the encoder; remove the setting")
    # the collator asks the unwrapped model for decoder inputs (prepare_decoder_input_ids_from_labels)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    model = wrap_for_training(model, method, model_family(model).name, loop.gradient_checkpointing)
    args = seq2seq_training_args(loop, method, runtime, seed, output_dir, has_eval=validation is not None)
    trainer = _trainer_class()(model=model, args=args, data_collator=collator, train_dataset=train,
                               eval_dataset=validation, processing_class=tokenizer)
    return use_loss_bar(trainer)


def train_seq2seq(model, tokenizer, loop: TrainingLoop, method: MethodSettings, task: TaskSpec,
                  train_rows: Sequence[Example], val_rows: Sequence[Example], budget: Budget, runtime: Runtime,
                  seed: int, out_dir: Path, callbacks: Sequence = ()) -> Trained:
    """Encode the rows, train, finish with a validation loss, save the adapter or model (safetensors) in ``out_dir``;
    ``callbacks`` are added to the trainer (the search's pruner)."""
    if not train_rows:
        raise UserError("fine-tuning needs training rows, but there are none; check data.max_train and the splits")
    out_dir = Path(out_dir)
    start = model.config.decoder_start_token_id
    train = build_seq2seq_rows(tokenizer, task, train_rows, budget, start)
    val = build_seq2seq_rows(tokenizer, task, val_rows, budget, start)
    trainer = build_seq2seq_trainer(model, tokenizer, loop, method, train.dataset, val.dataset, runtime, seed,
                                    out_dir / "checkpoints")
    for callback in callbacks:
        trainer.add_callback(callback)
    trainable, total = count_params(trainer.model)
    state, name, path = train_and_save(trainer, loop, tokenizer, out_dir, finetune_method(method.name).artifact_kind,
                                       **save_override(method))
    return Trained(trainer.model, state, train, val, trainable, total, name, path,
                   learning_rate=learning_rate(loop, method))
