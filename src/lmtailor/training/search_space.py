"""The ``search:`` block of a fine-tuning row and the default search space of every method, in one table.

A searched row tries ``trials`` settings drawn by Optuna's TPE sampler from the space, scores each on the
validation rows, and trains its final model with the best (``training/search.py`` runs it). The default space of a
method is ``DEFAULT_SPACES[kind]`` (the learning rate on a log scale around the method's default, and what the
sources below found to matter for that kind of method); ``space:`` in the experiment overrides or adds entries,
and an entry set to null holds that setting at its configured value.

Sources of the defaults:
- Learning rate, every method: log-uniform from a tenth to ten times the method's default (the defaults and their
  sources are in ``training/peft_methods.py``). Hugging Face PEFT's method comparison (``method_comparison/
  MetaMathQA``, Llama-3.2-3B) ran every method at one rate, 1e-4, and found that prompt tuning and IA3 need far
  higher ones (their best runs: prompt tuning at 1e-3, 5.7% -> 34.3% on GSM8K; IA3 at 5e-3, 31.1% -> 45.5%): the
  rate matters most for them, so prompt tuning's range reaches down to 1e-3 and up to 0.3 (Lester et al. 2021's
  Adafactor rate).
- LoRA rank 4..32: LLaMA-Factory's and Axolotl's examples use 8..32; PEFT's comparison found ranks beyond 32
  rarely pay at its sizes. method.alpha follows the rank as alpha = 2 r (LLaMA-Factory's default ratio, and this
  config's 32/16) unless it is set or searched.
- Virtual tokens 10..100: Lester et al. (2021, figure 3) saw gains up to ~20 tokens and little past 100; PEFT's
  comparison used 200 on a 3B model, far larger than the models lmtailor trains on a laptop.
- Epochs 1..3: LLaMA-Factory's and Axolotl's fine-tuning examples train 1-3 epochs; more overfits small data sets.

A method's own settings are named inside ``method`` (``method.r``, ``method.num_virtual_tokens``); the flat names of
earlier versions (``lora_r``, ``num_virtual_tokens``, ...) are still read (``OLD_NAMES``), with a deprecation note
in ``lmtailor validate``.

Importing this module is cheap (no Optuna, torch or transformers): the config validator uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lmtailor.training.method_settings import OLD_SEARCH_NAMES

if TYPE_CHECKING:
    from lmtailor.core.training_loop import TrainingLoop


class Range(BaseModel):
    """A numeric dimension: uniform between low and high (log-uniform with log: true); integer settings draw
    integers."""

    model_config = ConfigDict(extra="forbid")

    low: float = Field(description="smallest value tried")
    high: float = Field(description="largest value tried")
    log: bool = Field(False, description="draw on a log scale (learning rates)")

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if not self.low < self.high:
            raise ValueError(f"a range needs low < high (got low {self.low:g}, high {self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0 (got {self.low:g})")
        return self


Dimension = Union[Range, list[Any]]  # a range, or a list of the values to choose among

# Settings a search may vary: training-loop knobs every method reads, and the method's own ones (``method.<name>``,
# refused for a method without that setting).
LOOP_SEARCHABLE = ("learning_rate", "epochs", "max_steps", "batch_size", "gradient_accumulation_steps",
                   "warmup_ratio", "weight_decay")
METHOD_SEARCHABLE = ("method.r", "method.alpha", "method.dropout", "method.num_virtual_tokens",
                     "method.trainable_layers")
SEARCHABLE = LOOP_SEARCHABLE + METHOD_SEARCHABLE
INT_SETTINGS = {"max_steps", "batch_size", "gradient_accumulation_steps", "method.r", "method.alpha",
                "method.num_virtual_tokens", "method.trainable_layers"}
# the flat names of earlier versions, still read (with a deprecation note in validate)
OLD_NAMES = OLD_SEARCH_NAMES

# Relative learning-rate range around the method's default (a tenth to ten times), and the other defaults per kind
# of method; the sources are in the module docstring. Every built-in method name maps to one kind below.
LR_SPAN = (0.1, 10.0)
EPOCHS = [1, 2, 3]
DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "full": {"learning_rate": LR_SPAN, "epochs": EPOCHS},
    "freeze": {"learning_rate": LR_SPAN, "epochs": EPOCHS},
    "lora": {"learning_rate": LR_SPAN, "method.r": [4, 8, 16, 32], "epochs": EPOCHS},
    "ia3": {"learning_rate": LR_SPAN, "epochs": EPOCHS},
    "prefix": {"learning_rate": LR_SPAN, "method.num_virtual_tokens": [10, 20, 50, 100], "epochs": EPOCHS},
    "prompt-tuning": {"learning_rate": Range(low=1e-3, high=3e-1, log=True),
                      "method.num_virtual_tokens": [10, 20, 50, 100], "epochs": EPOCHS},
    "adapter": {"learning_rate": LR_SPAN, "epochs": EPOCHS},
    "other": {"learning_rate": LR_SPAN, "epochs": EPOCHS},  # PEFT methods passed through by name
}
_KIND = {"dora": "lora", "qlora": "lora"}


class SearchConfig(BaseModel):
    """Hyperparameter search of a fine-tuning row: Optuna's TPE sampler seeded with the row's seed, each trial
    trained on the training rows and scored on the validation rows (never the test rows), unpromising trials
    stopped early by a median pruner on the validation loss; the best trial's settings train the final model.
    Its time and $ are the row's set-up cost (the meter's ``search`` phase)."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(8, ge=1, description="settings tried (each a full training on the training rows)")
    metric: Literal["validation_loss", "validation_score"] = Field(
        "validation_loss", description="what chooses the best trial: the loss on the validation rows, or the task's "
                                       "main metric on them (slower: the validation rows are answered each trial)")
    space: dict[str, Dimension | None] = Field(
        default_factory=dict,
        description="overrides of the method's default space (training/search_space.py), e.g. {learning_rate: "
                    "{low: 1e-4, high: 1e-2, log: true}, method.r: [8, 16], epochs: null}; null holds a setting at "
                    "its configured value")
    timeout_minutes: float | None = Field(
        None, gt=0, description="stop starting new trials after this many minutes (the trials run so far count)")
    pruning: bool = Field(
        True, description="stop a trial whose validation loss is worse than the median of earlier trials at the "
                          "same step (Optuna's MedianPruner, after 2 complete trials)")
    evaluations_per_epoch: int = Field(
        2, ge=1, description="validation losses per epoch within a trial: the points the pruner judges it at")

    @field_validator("space", mode="before")
    @classmethod
    def _nested_names(cls, space: Any) -> Any:
        """The flat names of earlier versions (lora_r, ...) read as their nested ones (method.r, ...)."""
        return {OLD_NAMES.get(k, k): v for k, v in space.items()} if isinstance(space, dict) else space

    @model_validator(mode="after")
    def _known_settings(self) -> "SearchConfig":
        unknown = sorted(set(self.space) - set(SEARCHABLE))
        if unknown:
            raise ValueError(f"search.space: {', '.join(unknown)} cannot be searched; searchable settings: "
                             f"{', '.join(SEARCHABLE)}")
        for key, dim in self.space.items():
            if isinstance(dim, list) and not dim:
                raise ValueError(f"search.space.{key} is an empty list; list the values to try")
        return self


def method_kind(method: str) -> str:
    """The row of ``DEFAULT_SPACES`` a method takes (DoRA and QLoRA search like LoRA)."""
    method = _KIND.get(method, method)
    return method if method in DEFAULT_SPACES else "other"


def default_space(cfg: "TrainingLoop", family: str) -> dict[str, Dimension]:
    """The method's default space (``cfg``: a fine-tuning config, a training loop with ``method`` and ``search``),
    its learning-rate span made absolute around the method's default rate."""
    from lmtailor.training.peft_methods import finetune_method

    base = finetune_method(cfg.method.name).default_learning_rate(family)
    space: dict[str, Dimension] = {}
    for key, dim in DEFAULT_SPACES[method_kind(cfg.method.name)].items():
        if key == "learning_rate" and isinstance(dim, tuple):
            dim = Range(low=base * dim[0], high=base * dim[1], log=True)
        space[key] = dim
    return space


def resolve_space(cfg: "TrainingLoop", family: str) -> dict[str, Dimension]:
    """The space searched: the default one with the user's ``space:`` entries over it (null entries removed)."""
    assert cfg.search is not None
    space: dict[str, Dimension | None] = {**default_space(cfg, family), **cfg.search.space}
    if cfg.max_steps is not None or "max_steps" in space:  # max_steps overrides epochs: searching both is moot
        space.pop("epochs", None)
    return {k: v for k, v in space.items() if v is not None}


def is_set(cfg: "TrainingLoop", key: str) -> bool:
    """Whether the setting ``key`` (a loop key, or ``method.<name>``) was written in the experiment."""
    owner, name = (cfg.method, key.removeprefix("method.")) if key.startswith("method.") else (cfg, key)
    return name in owner.model_fields_set


def check_search(cfg: "TrainingLoop", family: str = "decoder-only") -> None:
    """Refuse a search that contradicts the row: a searched setting also set by hand, a setting the method does
    not take, a pruner without validation losses, a learning curve (one search per size is not implemented)."""
    if cfg.search is None:
        return
    space = resolve_space(cfg, family)
    hand_set = sorted(k for k in space if is_set(cfg, k) and k not in cfg.search.space)
    if hand_set:
        raise ValueError(f"{', '.join(hand_set)} is set by hand and also searched (the method's default space has "
                         f"it); remove the hand-set value, or hold it with search.space: "
                         f"{{{hand_set[0]}: null}}")
    from lmtailor.training.peft_methods import finetune_method

    takes = set(finetune_method(cfg.method.name).settings)
    stray = sorted(k for k in space if k in METHOD_SEARCHABLE and k.removeprefix("method.") not in takes)
    if stray:
        raise ValueError(f"search.space: {', '.join(stray)} do not apply to method: {cfg.method.name} (it takes: "
                         f"{', '.join(f'method.{t}' for t in sorted(takes)) or 'none of them'})")
    if cfg.eval_strategy == "no":
        raise ValueError("search scores trials on the validation rows: it needs eval_strategy epoch or steps")
    if cfg.train_sizes is not None:
        raise ValueError("search with train_sizes is not supported (it would search once per size); search one "
                         "size, or remove search from the learning-curve row")
