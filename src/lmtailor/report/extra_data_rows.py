"""Which rows trained on extra data (augmented or synthetic rows), their equal-steps controls and plain twins, and
the optimizer steps each took: what the table's status notes and the extra-data section (``report/extra_data.py``)
both read. A pure function of result records.
"""

from __future__ import annotations

import statistics

_EXTRA_KEYS = ("augmented", "synthetic")


def finetune_details(record: dict) -> dict:
    """The record's fine-tuning details (a pre-training strategy keeps them under ``finetune``)."""
    details = record.get("details") or {}
    return details["finetune"] if isinstance(details.get("finetune"), dict) else details


def trained_on_extra_data(record: dict) -> bool:
    """Whether the row's training rows included augmented or synthetic ones."""
    return any(isinstance(finetune_details(record).get(k), dict) for k in _EXTRA_KEYS)


def control_of(record: dict) -> dict | None:
    """A control row's link to its data row (``of_row``, ``of_label``, ``max_steps``), else None."""
    control = (record.get("details") or {}).get("control")
    return control if isinstance(control, dict) else None


def optimizer_steps(records: list[dict]) -> float | None:
    """The mean optimizer steps of the finished ``records`` (a pre-training strategy's fine-tuning phase)."""
    steps = [s for r in records if r.get("status") == "ok"
             and isinstance(s := finetune_details(r).get("steps"), (int, float))]
    return statistics.fmean(steps) if steps else None


def _plain_config(record: dict) -> dict:
    """The record's config without its label and extra data: what a plain twin's config must equal."""
    config = {k: v for k, v in (record.get("config") or {}).items() if k not in ("label", "models")}
    if isinstance(config.get("finetune"), dict):  # a copy: the record itself is left as it is
        config["finetune"] = {k: v for k, v in config["finetune"].items() if k not in ("augment", "synthetic")}
    for key in ("augment", "synthetic"):
        config.pop(key, None)
    return config


def _key(record: dict) -> tuple[str, str]:
    return record["label"], record["model"]


def label_model_groups(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The records by (label, model), in order: the table's groups."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault(_key(r), []).append(r)
    return groups


def plain_twin(data: list[dict], groups: dict[tuple[str, str], list[dict]]) -> tuple[str, str] | None:
    """The group trained the same way on the original rows only, with no step override (the plain row)."""
    first = data[0]
    want = (first.get("strategy"), first.get("train_size_requested"), _plain_config(first))
    for key, recs in groups.items():
        r = recs[0]
        if (key[1] == first["model"] and not trained_on_extra_data(r) and control_of(r) is None
                and (r.get("strategy"), r.get("train_size_requested"), _plain_config(r)) == want):
            return key
    return None


def fmt_steps(steps: float) -> str:
    """A step count: whole when it is, else to one decimal (a mean over seeds)."""
    return f"{steps:.0f}" if steps == round(steps) else f"{steps:.1f}"


def step_ratio_note(records: list[dict], all_records: list[dict]) -> str:
    """The table's status note for an extra-data row without a control ("4.9x the optimizer steps of LoRA") or for
    a control ("control: 120 optimizer steps"); "" otherwise."""
    if not records:
        return ""
    control = control_of(records[0])
    if control is not None:
        steps = optimizer_steps(records)
        return f"control: {fmt_steps(steps)} optimizer steps, original rows only" if steps else ""
    if not trained_on_extra_data(records[0]):
        return ""
    if any((c := control_of(r)) and c.get("of_label") == records[0]["label"] and r["model"] == records[0]["model"]
           for r in all_records):
        return ""
    groups = label_model_groups(all_records)
    twin_key = plain_twin(records, groups)
    steps, twin_steps = optimizer_steps(records), optimizer_steps(groups[twin_key]) if twin_key else None
    if not (steps and twin_steps):
        return ""
    return f"{steps / twin_steps:.1f}x the optimizer steps of {twin_key[0]}"
