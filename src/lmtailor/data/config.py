"""The ``data:`` block of an experiment: where the rows come from, how rows hold their text (fields, Alpaca or
messages), and the split."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmtailor.data.builtin import BUILTIN_DATASETS

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def source_kind(source: str) -> str:
    """Classify a source string: ``"builtin"``, ``"hf"`` or ``"file"``."""
    if source.startswith("builtin:"):
        return "builtin"
    if source.startswith("hf:"):
        return "hf"
    return "file"


def _check_file(key: str, value: str) -> None:
    if PurePath(value).suffix.lower() not in FILE_SUFFIXES:
        raise ValueError(f"data.{key}: {value!r} is not a {', '.join(FILE_SUFFIXES)} file"
                         + (" (builtin: and hf: sources go in data.source)" if key != "source" else
                            " (or use builtin:<name> or hf:<dataset>[:<config>])"))


class DataConfig(BaseModel):
    """Where the task's rows come from and how they are split; relative paths are relative to the experiment file."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(None, description="one dataset, split by the seed: a .jsonl/.json/.csv/.tsv/.parquet "
                               "file, builtin:<name> (e.g. builtin:pydoc-module) or hf:<dataset>[:<config>]")
    train: str | None = Field(None, description="training rows file, instead of source (then test is required)")
    validation: str | None = Field(None, description="validation rows file (default: carved from train)")
    test: str | None = Field(None, description="test rows file, used with train")
    format: Literal["fields", "alpaca", "messages"] = Field(
        "fields", description="how rows hold their text: fields (data.input_field and data.target_field), alpaca "
        "(instruction, input (may be empty) and output, as in Stanford Alpaca; each row's instruction replaces "
        "task.instruction) or messages (a list of {role, content} turns: an optional system turn, then user and "
        "assistant alternating, ending with the assistant's answer)")
    input_field: str = Field("input", description="the field (JSON key / CSV column) holding the model input "
                             "(data.format: fields)")
    target_field: str = Field("target", description="the field holding the gold answer (the label, for "
                              "classification; data.format: fields)")
    id_field: str | None = Field(None, description="the field holding a unique row id (default: <file name>:<line>)")
    gold_doc_field: str | None = Field(None, description="the field naming each row's gold document id (or a list of "
                                       "ids) in the RAG corpus; rag rows then report recall@k and MRR")
    answers_field: str | None = Field(None, description="qa: the field listing every accepted answer (a list of "
                                      "strings); a prediction scores against the best-matching one")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of a single source's rows held out for test")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="share held out for validation (of the source, "
                                       "or of the train file when no validation file is given)")
    seed: int = Field(0, description="split seed: the same seed and rows give the same split on every machine")
    max_train: int | None = Field(None, ge=1, description="use at most this many training rows (chosen by the seed)")
    max_validation: int | None = Field(None, ge=0, description="use at most this many validation rows")
    max_test: int | None = Field(None, ge=1, description="use at most this many test rows")
    options: dict[str, Any] = Field(default_factory=dict, description="options of a builtin: dataset "
                                    "(e.g. max_classes for builtin:pydoc-module)")

    @model_validator(mode="after")
    def _check_sources(self) -> "DataConfig":
        separate = {k: getattr(self, k) for k in ("train", "validation", "test") if getattr(self, k)}
        if self.source and separate:
            raise ValueError(f"set either data.source (one dataset, split by the seed) or data.train/data.test "
                             f"(files already split), not both: remove data.{' / data.'.join(separate)} or data.source")
        if not self.source and not separate:
            raise ValueError("no data: set data.source (a file, builtin:<name> or hf:<dataset>) "
                             "or data.train and data.test")
        if separate and not (self.train and self.test):
            missing = "train" if not self.train else "test"
            raise ValueError(f"data.{missing} is missing: separate files need both data.train and data.test "
                             "(or use data.source with one file to split it by the seed)")
        for key, value in ({"source": self.source} if self.source else separate).items():
            if key != "source" or source_kind(value) == "file":
                _check_file(key, value)
        if self.source and self.validation_fraction + self.test_fraction >= 1:
            raise ValueError(f"data.test_fraction ({self.test_fraction}) + data.validation_fraction "
                             f"({self.validation_fraction}) must leave rows for training (sum below 1)")
        self._check_options()
        self._check_format()
        return self

    def _check_format(self) -> None:
        if self.format == "fields":
            return
        stray = [k for k in ("input_field", "target_field") if k in self.model_fields_set]
        if stray:
            verb = "applies" if len(stray) == 1 else "apply"
            raise ValueError(f"data.{' and data.'.join(stray)} only {verb} to data.format: fields; data.format: "
                             f"{self.format} reads its own fields "
                             + ("('instruction', 'input', 'output')" if self.format == "alpaca" else "('messages')")
                             + f": remove data.{' / data.'.join(stray)} or use data.format: fields")
        if self.source and source_kind(self.source) == "builtin":
            raise ValueError(f"data.format: {self.format} applies to files and hf: datasets; built-in datasets have "
                             "their own layout: remove data.format")

    def _check_options(self) -> None:
        kind = source_kind(self.source) if self.source else "file"
        if kind != "builtin":
            if self.options:
                raise ValueError("data.options only apply to builtin: sources; remove them")
            return

        name = self.builtin_name()
        if name not in BUILTIN_DATASETS:
            raise ValueError(f"data.source: {BUILTIN_DATASETS.unknown_message(name)}")
        options_model = BUILTIN_DATASETS.get(name).options
        try:
            options_model.model_validate(self.options)
        except ValidationError as e:
            problems = "; ".join(f"data.options.{'.'.join(map(str, err['loc']))}: "
                                 + ("unknown option" if err["type"] == "extra_forbidden" else err["msg"])
                                 for err in e.errors())
            known = ", ".join(options_model.model_fields)
            raise ValueError(f"{problems} (options of builtin:{name}: {known})") from None

    def meta_fields(self) -> dict[str, str]:
        """Optional row facts to read from the data files: {"gold_doc": field, "answers": field} as set."""
        return {k: v for k, v in (("gold_doc", self.gold_doc_field), ("answers", self.answers_field)) if v}

    def builtin_name(self) -> str:
        """The name after ``builtin:`` (empty when the source is not a built-in dataset)."""
        return self.source.partition(":")[2] if self.source and source_kind(self.source) == "builtin" else ""
