"""From a ``data:`` block to validated, split rows, before any model is loaded.

One source (a file, ``builtin:`` or an ``hf:`` dataset without a test split) is de-duplicated and split by the seed;
separate train/validation/test files keep their rows and order (validation is carved from train when not given).
Either way, a training (or validation) row whose normalised input is also a test (or validation) row's is dropped
before the caps and listed (``data/leakage.py``). Rows that carry their own
instruction (``data.format: alpaca`` or ``messages``) make ``task.instruction`` optional: the rows' own instructions
are what models are shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lmtailor.core.example import DatasetSplits, Example
from lmtailor.data.builtin import BUILTIN_DATASETS
from lmtailor.data.config import DataConfig, source_kind
from lmtailor.data.leakage import content_record, drop_shared_inputs, dropped_warning
from lmtailor.data.loading import load_file, load_hf
from lmtailor.data.splits import cap_rows, split_rows, stratification_note
from lmtailor.data.validate import DataError, drop_exact_duplicates, unique_ids, unseen_label_warnings
from lmtailor.tasks import TASK_TYPES

SPLITS = ("train", "validation", "test")

# The task instruction recorded for data whose rows carry their own (prompting/formats.py shows each row its own).
OWN_INSTRUCTIONS = {"alpaca": "(each row's own instruction, data.format: alpaca)",
                    "messages": "(each row's own conversation, data.format: messages)"}


@dataclass
class PreparedData:
    """Split rows plus what the data implies about the task, the warnings to show, and the files read."""

    splits: DatasetSplits
    task_defaults: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    source_files: list[str] = field(default_factory=list)
    # {split: [{"id", "same_input_as"}]}: rows dropped for repeating a held-out row's input (data/leakage.py)
    dropped_duplicates: dict[str, list[dict]] = field(default_factory=dict)


@dataclass
class _Loaded:
    """Rows before splitting: ``pool`` (one source, to split) or ``given`` (already split)."""

    description: str
    pool: list[Example] | None = None
    given: dict[str, list[Example]] = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def _resolve(base_dir: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _load_files(cfg: DataConfig, base_dir: Path) -> _Loaded:
    keys = {"source": cfg.source} if cfg.source else {k: getattr(cfg, k) for k in SPLITS if getattr(cfg, k)}
    paths = {k: _resolve(base_dir, v) for k, v in keys.items()}
    names = [p.name for p in paths.values()]
    loaded = _Loaded(description=", ".join(f"{k}: {v}" for k, v in keys.items()) if not cfg.source else cfg.source,
                     files=[str(p) for p in paths.values()])
    for key, path in paths.items():
        # Ids cite the file by name; two files of the same name in different folders need their given paths.
        name = path.name if names.count(path.name) == 1 else keys[key]
        rows, notes = load_file(path, name, cfg.input_field, cfg.target_field, cfg.id_field, cfg.meta_fields(),
                                cfg.format)
        loaded.warnings += notes
        if key == "source":
            loaded.pool = rows
        else:
            loaded.given[key] = rows
    return loaded


def _load_builtin(cfg: DataConfig) -> _Loaded:
    dataset = BUILTIN_DATASETS.get(cfg.builtin_name()).load(cfg.options)
    return _Loaded(description=dataset.description, pool=dataset.rows, defaults=dict(dataset.task_defaults),
                   files=list(dataset.files))


def _load_hf(cfg: DataConfig) -> _Loaded:
    spec = cfg.source.partition(":")[2]
    by_split, warnings = load_hf(spec, cfg.input_field, cfg.target_field, cfg.id_field, cfg.meta_fields(), cfg.format)
    for alias in ("valid", "dev", "val"):  # datasets name their validation split in several ways
        if alias in by_split and "validation" not in by_split:
            by_split["validation"] = by_split.pop(alias)
    loaded = _Loaded(description=cfg.source, warnings=warnings)
    if "train" in by_split and "test" in by_split:
        loaded.given = {k: by_split[k] for k in SPLITS if k in by_split}
    else:  # no official test split: pool everything and split by the seed like a single file
        loaded.pool = [e for rows in by_split.values() for e in rows]
    return loaded


def _load(cfg: DataConfig, base_dir: Path) -> _Loaded:
    kind = source_kind(cfg.source) if cfg.source else "file"
    if kind == "builtin":
        return _load_builtin(cfg)
    if kind == "hf":
        return _load_hf(cfg)
    return _load_files(cfg, base_dir)


def _uses_labels(task_type: str) -> bool:
    return task_type in TASK_TYPES and TASK_TYPES.get(task_type).output == "labels"


def _split(cfg: DataConfig, loaded: _Loaded, stratify: bool) -> tuple[dict[str, list[Example]], list[str]]:
    if loaded.pool is not None:
        rows, warnings = drop_exact_duplicates(loaded.pool)
        train, validation, test = split_rows(rows, cfg.test_fraction, cfg.validation_fraction, cfg.seed, stratify)
        note = stratification_note(rows, cfg.test_fraction, cfg.validation_fraction) if stratify else None
        return {"train": train, "validation": validation, "test": test}, warnings + ([note] if note else [])
    parts = dict(loaded.given)
    warnings = []
    if "validation" not in parts:
        if cfg.validation_fraction > 0:
            kept, _, carved = split_rows(parts["train"], cfg.validation_fraction, 0.0, cfg.seed, stratify)
            kept_ids = {id(e) for e in kept}
            parts["train"] = [e for e in parts["train"] if id(e) in kept_ids]  # keep the file's order
            parts["validation"] = carved
            if stratify:
                warnings += _carved_note(parts["train"] + carved, carved)
        else:
            parts["validation"] = []
    return {k: parts[k] for k in SPLITS}, warnings


def _carved_note(train: list[Example], carved: list[Example]) -> list[str]:
    """Labels of the training file left without a validation row when validation was carved from it (one row: kept
    for training)."""
    labels = {e.target for e in train}
    missing = sorted(labels - {e.target for e in carved})
    if not missing:
        return []
    listed = ", ".join(repr(label) for label in missing[:5]) + (" ..." if len(missing) > 5 else "")
    return [f"validation was carved from the training file by label: {len(missing)} of {len(labels)} labels have one "
            f"training row, kept for training, so validation ({len(carved)} rows) has none of them: {listed}"
            + ("; validation is EMPTY, so nothing is chosen on validation rows" if not carved else "")]


def _cap_without_shared_inputs(parts: dict[str, list[Example]], caps: dict[str, int | None], seed: int,
                               stratify: bool) -> tuple[dict[str, list[Example]], dict[str, list[dict]], list[str]]:
    """Cap the splits, test first; validation rows repeating a test input and training rows repeating a validation
    or test input are dropped before their own caps, so the caps still fill. Returns (splits, dropped, warnings)."""
    test = cap_rows(parts["test"], caps["test"], seed, stratify)
    validation, dropped_validation = drop_shared_inputs(parts["validation"], test)
    validation = cap_rows(validation, caps["validation"], seed, stratify)
    train, dropped_train = drop_shared_inputs(parts["train"], test + validation)
    train = cap_rows(train, caps["train"], seed, stratify)
    dropped = {k: v for k, v in (("train", dropped_train), ("validation", dropped_validation)) if v}
    warnings = [dropped_warning(k, v, "test" if k == "validation" else "validation or test")
                for k, v in dropped.items()]
    return {"train": train, "validation": validation, "test": test}, dropped, warnings


def prepare_data(cfg: DataConfig, task_type: str, base_dir: Path) -> PreparedData:
    """Load, validate and split the data of ``cfg``; raises ``DataError`` naming file, row and field on bad data.

    ``task_type`` may be empty when the task type comes from a built-in dataset's defaults.
    """
    loaded = _load(cfg, Path(base_dir))
    task_type = task_type or loaded.defaults.get("type", "")
    stratify = _uses_labels(task_type)
    parts, warnings = _split(cfg, loaded, stratify)
    caps = {"train": cfg.max_train, "validation": cfg.max_validation, "test": cfg.max_test}
    parts, dropped, notes = _cap_without_shared_inputs(parts, caps, cfg.seed, stratify)
    warnings += notes
    unique_ids(parts)
    total = sum(len(rows) for rows in parts.values())
    for name in ("train", "test"):
        if not parts[name]:
            raise DataError(f"{loaded.description}: no {name} rows ({total} usable rows in all): "
                            f"add rows{' or lower data.test_fraction' if name == 'train' else ''}")
    defaults = dict(loaded.defaults)
    if cfg.format in OWN_INSTRUCTIONS:
        defaults.setdefault("instruction", OWN_INSTRUCTIONS[cfg.format])
    if stratify:
        warnings += unseen_label_warnings(parts)
        defaults.setdefault("labels", sorted({e.target for e in parts["train"]}))
    splits = DatasetSplits(parts["train"], parts["validation"], parts["test"], source=loaded.description)
    return PreparedData(splits, defaults, loaded.warnings + warnings, loaded.files, dropped)


def split_content(splits: DatasetSplits) -> dict:
    """The content digests of every split's rows, for ``splits.json`` (``data/leakage.content_record``)."""
    return content_record({"train": splits.train, "validation": splits.validation, "test": splits.test})
