"""Extra training rows for a training strategy: augmented rows (``augmentation/augment.py``) and a teacher's
synthetic rows (``augmentation/synthetic.py``), made from the row's real training rows only and added to them before
training.

Both are set-up costs in the meter's "data" phase. The rows made, with their provenance, and the synthetic-data
rejection log are written into the run directory (``augmented/<row>.jsonl``, ``synthetic/<row>.jsonl`` and
``synthetic/<row>.rejections.jsonl``), so a reader can see exactly what the extra data was.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from lmtailor.augmentation.augment import AugmentConfig, augment as make_augmented
from lmtailor.augmentation.synthetic import SyntheticConfig, generate_synthetic, write_synthetic
from lmtailor.augmentation.synthetic_teacher import HFTeacher
from lmtailor.augmentation.teachers import open_teacher
from lmtailor.core.context import RunContext
from lmtailor.distributed import on_main
from lmtailor.errors import UserError
from lmtailor.rundir import RunDir

if TYPE_CHECKING:
    from lmtailor.core.example import Example


def extra_data_label(augment: AugmentConfig | None, synthetic: SyntheticConfig | None) -> str:
    """The table's suffix for a row trained on extra data, e.g. " + 4× EDA + 256 synthetic"."""
    parts = []
    if augment is not None:
        name = "EDA" if augment.method == "eda" else augment.method
        parts.append(f"{augment.factor}× {name}")
    if synthetic is not None:
        parts.append(f"{synthetic.rows} synthetic")
    return "".join(f" + {p}" for p in parts)


def _record(row: "Example") -> dict:
    return {"id": row.id, "input": row.input, "target": row.target, "meta": row.meta}


def with_extra_rows(ctx: RunContext, augment: AugmentConfig | None, synthetic: SyntheticConfig | None,
                    model: Any = None, tokenizer: Any = None) -> tuple[RunContext, dict]:
    """Return ``ctx`` with its training rows extended by augmented and synthetic rows, and what was added.

    ``model``/``tokenizer`` are the model being trained, loaded: the default generator for paraphrase and
    back-translation and the default synthetic-data teacher (``augment.model`` / ``synthetic.teacher`` name
    another one). Validation and test rows are never a source, and no new row may copy one of their inputs.
    """
    if augment is None and synthetic is None:
        return ctx, {}
    real = list(ctx.data.train)
    added: list["Example"] = []
    details: dict = {"real_rows": len(real)}
    if augment is not None:
        from types import SimpleNamespace

        generator = None
        if augment.method != "eda" and augment.model is None and model is not None:
            generator = SimpleNamespace(model=model, tokenizer=tokenizer)  # the model being trained rewrites
        result = make_augmented(real, augment, ctx.seed, ctx.task, generator, ctx.meter, splits=ctx.data,
                                runtime=ctx.runtime)
        run = RunDir(ctx.run_dir)
        path = run.extra_rows_path("augmented", ctx.row_id)
        on_main(lambda: run.write_jsonl(path, (_record(r) for r in result.rows)))  # one writer per run
        details["augmented"] = {**result.stats, "rows_file": str(path)}
        ctx.log.info("augmentation (%s, %d×): %d rows added to %d real rows", augment.method, augment.factor,
                     len(result.rows), len(real))
        added += result.rows
    if synthetic is not None:
        details["synthetic"] = _synthetic(ctx, synthetic, real, model, tokenizer)
        added += details["synthetic"].pop("_rows")
    details["extra_rows"] = len(added)
    details["train_rows_total"] = len(real) + len(added)
    return replace(ctx, data=replace(ctx.data, train=real + added)), details


def _synthetic(ctx: RunContext, cfg: SyntheticConfig, real: list["Example"], model: Any, tokenizer: Any) -> dict:
    ref = cfg.teacher or ctx.model_ref
    if cfg.teacher is None:
        if model is None:
            raise UserError("synthetic.teacher is not set, and the model being trained cannot write text; set "
                            "synthetic.teacher to a generation model (e.g. smollm2-135m-instruct)")
        teacher = HFTeacher(model, tokenizer, ctx.model_ref)
    else:  # an endpoint's bill goes into the "data" phase; a local model's load into "load"
        teacher = open_teacher(cfg.teacher, ctx)
    # The rows answered include the validation rows (tasks/held_out.py): de-duplicated, the list (and the cache key)
    # is validation then test, as before they were answered too.
    held_out = list({e.id: e for e in ctx.data.validation + ctx.data.test}.values())
    result = generate_synthetic(ctx.task, real, held_out, cfg, teacher, ctx.meter, seed=ctx.seed)
    del teacher
    paths = write_synthetic(ctx.run_dir, ctx.row_id, result)
    ctx.log.info("synthetic data (teacher %s): %d rows kept, %d rejected", ref, len(result.rows),
                 len(result.rejections))
    return {**result.stats, "teacher": ref, "rows_file": str(paths["rows"]),
            "rejections_file": str(paths["rejections"]), "_rows": result.rows}
