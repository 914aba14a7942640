"""Equal-steps controls for rows trained on extra data: is the gain the extra rows', or the longer training's?

A row trained on augmented or synthetic rows (``augment:`` / ``synthetic:`` on a finetune strategy, or inside the
``finetune:`` block of continued pre-training and scratch) trains on more rows, so at the same ``epochs`` it also
takes more optimizer steps: 4x EDA on 96 rows is 480 rows, five times the steps of the plain row. Measured on the
spectrum example (issue 16), nearly all of LoRA + 4x EDA's gain over plain LoRA came back with plain LoRA trained
for the same number of steps.

So the runner plans a control next to each such row (``add_equal_steps_controls``, called from ``plan_rows``): the
same strategy, model, seed, training-set size and hyperparameters, without the extra data, trained for exactly the
optimizer steps the data row took (``max_steps``). The step count is read from the data row's record, which the run
has written by then: rows run in plan order and the control is planned right after its data row. Reading it, rather
than computing it, keeps the match exact whatever decided the count (rows the augmentation dropped as duplicates,
the synthetic rows a teacher kept, gradient accumulation, the Trainer's rounding of a last partial batch). A
``control: false`` on every extra-data block of a row turns its control off; the report then names the step ratio
beside the gain (``report/extra_data.py``).
"""

from __future__ import annotations


from lmtailor.core.context import RunContext
from lmtailor.core.strategy_output import StrategyOutput
from lmtailor.errors import UserError
from lmtailor.row_plan import PlannedRow, unique_row_id
from lmtailor.rundir import RunDir
from lmtailor.strategies import STRATEGIES
from lmtailor.strategies.base import Strategy, StrategyConfig
from lmtailor.strategies.extra_data import extra_data_label
from lmtailor.strategies.finetune import FinetuneConfig
from lmtailor.strategies.traits import StrategyTraits


def finetune_block(cfg: StrategyConfig) -> "FinetuneConfig | None":
    """The fine-tuning knobs of a training strategy: the config itself (finetune) or its ``finetune`` block
    (continued pre-training, scratch); None for a strategy that does not fine-tune."""
    if isinstance(cfg, FinetuneConfig):
        return cfg
    inner = getattr(cfg, "finetune", None)
    return inner if isinstance(inner, FinetuneConfig) else None


def wants_control(cfg: StrategyConfig) -> bool:
    """Whether a row of ``cfg`` trains on extra data and gets an equal-steps control (unless every extra-data
    block says ``control: false``)."""
    ft = finetune_block(cfg)
    blocks = [b for b in (ft.augment, ft.synthetic) if b is not None] if ft is not None else []
    return any(b.control for b in blocks)


def _with_finetune(cfg: StrategyConfig, **changes) -> StrategyConfig:
    """``cfg`` with ``changes`` made to its fine-tuning knobs (wherever they live)."""
    ft = finetune_block(cfg)
    new_ft = ft.model_copy(update=changes)
    return new_ft if ft is cfg else cfg.model_copy(update={"finetune": new_ft})


def control_config(cfg: StrategyConfig, data_label: str) -> StrategyConfig:
    """The control's config: ``cfg`` without its extra data, labelled as the control of the row ``data_label``."""
    ft = finetune_block(cfg)
    plain = _with_finetune(cfg, augment=None, synthetic=None)
    if cfg.label:
        label = f"{cfg.label} (control)"
    else:
        base = STRATEGIES.get(cfg.name)(plain).label()
        label = f"{base}, control for{extra_data_label(ft.augment, ft.synthetic)}"
    return plain.model_copy(update={"label": label})


def data_row_steps(record: dict) -> int | None:
    """The optimizer steps a finished training row took (its fine-tuning phase's, for pre-training strategies)."""
    details = record.get("details") or {}
    steps = details.get("steps")
    if steps is None and isinstance(details.get("finetune"), dict):
        steps = details["finetune"].get("steps")
    return int(steps) if isinstance(steps, (int, float)) else None


class EqualStepsControl(Strategy):
    """The control of one extra-data row: its strategy on the original rows only, for the data row's steps."""

    def __init__(self, config: StrategyConfig, inner: type[Strategy], data_row_id: str, data_label: str) -> None:
        super().__init__(config)
        self.inner = inner
        self.data_row_id = data_row_id
        self.data_label = data_label

    def uses_training_data(self) -> bool:
        return True

    def traits(self) -> StrategyTraits:
        return self.inner(self.config).traits()  # the data row's strategy, on the original rows only

    def run(self, ctx: RunContext) -> StrategyOutput:
        steps = self._steps(RunDir(ctx.run_dir))
        ctx.log.info("%s: %d optimizer steps on the %d original training rows, as %s took", self.label(), steps,
                     len(ctx.data.train), self.data_row_id)
        output = self.inner(_with_finetune(self.config, max_steps=steps)).run(ctx)
        output.details["control"] = {"of_row": self.data_row_id, "of_label": self.data_label, "max_steps": steps}
        return output

    def _steps(self, run: RunDir) -> int:
        path = run.record_path(self.data_row_id)
        if not path.is_file():
            raise UserError(f"the control of row {self.data_row_id} needs that row's optimizer steps, but its record "
                            f"{path} is missing (the control runs after it); run the two rows together")
        record = run.read_record(path).as_dict()
        steps = data_row_steps(record)
        if record.get("status") != "ok" or not steps:
            raise UserError(f"the control of row {self.data_row_id} cannot run: that row "
                            f"{'failed' if record.get('status') != 'ok' else 'recorded no optimizer steps'}, so "
                            "there is no step count to match")
        return steps


def add_equal_steps_controls(rows: list[PlannedRow]) -> list[PlannedRow]:
    """``rows`` with an equal-steps control planned right after each row trained on extra data (ids unique,
    ``index`` renumbered in plan order)."""
    seen = {r.row_id for r in rows}
    out: list[PlannedRow] = []
    for row in rows:
        out.append(row)
        cfg = row.strategy.config
        if not wants_control(cfg):
            continue
        control = EqualStepsControl(control_config(cfg, row.label), type(row.strategy), row.row_id, row.label)
        planned = PlannedRow("", control, row.model_ref, row.seed, row.train_size)
        planned.row_id = unique_row_id(planned, seen)
        out.append(planned)
    for i, row in enumerate(out):
        row.index = i
    return out
