"""What a strategy is, declared by the strategy: its place on the spectrum, how it uses a model, what data it used,
and its row in the cost-benefit table.

Every ``Strategy`` declares ``TRAITS`` (a configured strategy refines them in ``traits()`` where its knobs change
them: a prompt with ``shots`` shows exemplars, a finetune with ``augment:`` trains on augmented rows). The runner
writes them into every record (``record["traits"]``), and the report reads them from there (``report/traits.py``),
never a strategy's name, so a newly registered strategy gets its table row, chart lines and checks with no report
edit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

# The customization spectrum, cheapest first: the report orders its cost-benefit table by it.
SPECTRUM = ("floor", "prompting", "retrieval", "fine-tuning", "continued-pretraining", "pretraining")
Place = Literal["floor", "prompting", "retrieval", "fine-tuning", "continued-pretraining", "pretraining"]
# floor: a row every score is read against (no language model); prompted: a model used as it is; trained: weights
# changed on the task's data.
USES = ("floor", "prompted", "trained")
Use = Literal["floor", "prompted", "trained"]
# What a row drew on beyond the task's instruction: the training rows (trained on, or answered with), solved
# training rows shown in the prompt, a document corpus (retrieved from or pre-trained on), and the extra rows made
# from the training rows (augmentation/augment.py, augmentation/synthetic.py).
DATA = ("training rows", "exemplars", "corpus", "augmented rows", "synthetic rows")


@dataclass(frozen=True)
class StrategyTraits:
    """What one configured strategy is; the record keeps it as a JSON dict (``to_record``)."""

    place: Place  # its place on the spectrum (SPECTRUM)
    use: Use  # floor, prompted (a model as it is) or trained
    rung: str  # its row's name in the report's cost-benefit table (one row per name: the best configuration)
    data: tuple[str, ...] = ()  # what it used, of DATA; () for a fixed rule or a model shown nothing
    exemplars: int = 0  # solved training rows shown before each input (prompted rows)

    def __post_init__(self) -> None:
        if self.place not in SPECTRUM:
            raise ValueError(f"traits place {self.place!r} is not on the spectrum; use one of {', '.join(SPECTRUM)}")
        if self.use not in USES:
            raise ValueError(f"traits use {self.use!r} is not one of {', '.join(USES)}")
        unknown = [d for d in self.data if d not in DATA]
        if unknown:
            raise ValueError(f"traits data {unknown} are not known kinds; use any of {', '.join(DATA)}")
        if not self.rung:
            raise ValueError("traits rung (the cost-benefit table's row name) is empty")

    @property
    def order(self) -> tuple[int, bool, str]:
        """Where its table row goes: by place on the spectrum, then rows using no data first, then by name."""
        return SPECTRUM.index(self.place), bool(self.data), self.rung

    @property
    def zero_shot(self) -> bool:
        """A model used as it is and shown nothing: the reference of the report's "Δ vs zero-shot"."""
        return self.use == "prompted" and not self.data

    @property
    def fixed_rule(self) -> bool:
        """A floor that uses no data (the trivial baseline): it rides on what already serves, at $0."""
        return self.use == "floor" and not self.data

    @property
    def learns(self) -> bool:
        """Whether its answers come from the training rows (trained on them, or voted by them): a learning curve
        applies. Exemplars shown to a model as it is do not count."""
        return self.use == "trained" or "training rows" in self.data

    def to_record(self) -> dict[str, Any]:
        """The traits as the record's JSON dict."""
        out = asdict(self)
        out["data"] = list(self.data)
        return out

    @classmethod
    def from_record(cls, value: dict[str, Any]) -> "StrategyTraits":
        """The traits a record stores (``to_record``); ValueError names what is wrong."""
        if not isinstance(value, dict):
            raise ValueError(f"traits must be a JSON object, not {type(value).__name__}")
        # Keys this version does not know are left aside, as RunRecord keeps unknown keys: a newer lmtailor that only
        # adds a trait must not make an older one refuse the whole report.
        missing = sorted({"place", "use", "rung"} - set(value))
        if missing:
            raise ValueError(f"traits lacks {missing}")
        return cls(place=value["place"], use=value["use"], rung=str(value["rung"]),
                   data=tuple(value.get("data") or ()), exemplars=int(value.get("exemplars") or 0))


def with_extra_data(traits: StrategyTraits, augment: object | None, synthetic: object | None) -> StrategyTraits:
    """``traits`` with the data an ``augment:`` and a ``synthetic:`` block of a training strategy add."""
    extra = (("augmented rows",) if augment is not None else ()) + (("synthetic rows",) if synthetic is not None
                                                                     else ())
    return replace(traits, data=traits.data + extra)
