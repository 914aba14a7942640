"""The experiment file: YAML, CLI ``--set`` overrides and the Python API all build one validated ``Experiment``.

Unknown keys, wrong types, missing fields and duplicate YAML keys are errors naming the file and the key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmtailor.core.api_settings import ApiSettings
from lmtailor.core.budget import Budget
from lmtailor.data.config import DataConfig
from lmtailor.errors import UserError
from lmtailor.measure.pricing import Pricing, unpriced_api_problem
from lmtailor.registry import UnknownNameError
from lmtailor.remote.reference import is_remote, parse_endpoint
from lmtailor.report.deployment import DeploymentConfig
from lmtailor.strategies import STRATEGIES, StrategyConfig
from lmtailor.tasks import TASK_TYPES
from lmtailor.yaml_limits import MAX_YAML_BYTES, load_within_limits


class ConfigError(UserError, ValueError):
    """An experiment file that cannot be used; the message lists every problem with its key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskConfig(_Strict):
    """What the model must do. Built-in datasets fill in what is left out."""

    type: str | None = Field(None, description="task type: classification, generation or qa (default: from the built-in dataset)")
    name: str | None = Field(None, description="task name shown in the report (default: the dataset's name)")
    instruction: str | None = Field(None, description="the instruction every model sees (default: from the built-in dataset)")
    labels: list[str] | None = Field(None, description="classification label set (default: the training targets)")


class BudgetConfig(_Strict):
    """Size limits that keep a run within the user's time and money."""

    max_input_tokens: int = Field(256, gt=0, description="inputs longer than this are truncated (and counted)")
    max_new_tokens: int = Field(32, gt=0, description="generation length limit")
    max_seq_len: int = Field(384, gt=0, description="training sequence length limit (prompt + response)")
    eval_batch_size: int = Field(8, gt=0, description="batch size for scoring and generation")

    def to_budget(self) -> Budget:
        return Budget(**self.model_dump())


class RuntimeConfig(_Strict):
    """Device and precision; ``auto`` picks what the hardware does natively."""

    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="compute dtype")
    device: str | None = Field(None, description="torch device (default: cuda if present, else cpu)")
    threads: int | None = Field(
        None, ge=1, description="CPU threads for torch's operators (default: torch's own, one per physical core); "
                                "lower it when other jobs share the cores. Shown in the run output")
    trust_remote_code: bool = Field(
        False, description="let Transformers run Python code shipped with a model (its own modelling files); off "
                           "by default, and named in the run output when on. Only for models whose code you trust")


class ReportConfig(_Strict):
    """The user's target: what the recommendation in the report must meet (CLI flags of `lmtailor report` override)."""

    quality_floor: float | None = Field(
        None, description="smallest acceptable value of the task's primary metric (e.g. 0.8 accuracy; the largest "
                          "acceptable for a lower-is-better metric): a configuration meets it when the bad end of "
                          "its 95% bootstrap interval on the validation rows does (on the test rows when the run "
                          "has no validation scores), and the cheapest per month that meets it is recommended; "
                          "unset: the configuration with the best validation score within the budget")
    monthly_budget_usd: float | None = Field(
        None, ge=0, description="most the user will spend per month on inference (at requests_per_month)")
    requests_per_month: int = Field(
        100_000, ge=0, description="expected requests per month: sets the break-even and the monthly cost")
    baseline: str | None = Field(
        None, description="row label of the 'large general model' to compare with (default: the best prompted row)")
    deployment: DeploymentConfig = Field(
        default_factory=DeploymentConfig,
        description="how a self-hosted configuration is served, for its $/month: mode (always_on with "
                    "min_instances, or scale_to_zero), usd_per_hour, peak_to_average, hours_per_month "
                    "(report/deployment.py); API rows are their provider's bill")


class Experiment(_Strict):
    """One experiment: a task and its data, the models, the strategies to run on each, budget and prices."""

    name: str = Field(description="experiment name; the run directory is named after it")
    description: str = Field("", description="free text")
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig
    models: list[str] = Field(min_length=1, description="model references: embedded alias, local directory, hub id, "
                              "or openai:MODEL@BASE_URL (an OpenAI-compatible endpoint: prompt and rag only)")
    strategies: list[Any] = Field(min_length=1, description="strategy runs; each is validated by its strategy's config")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="training/sampling seeds; one row per seed")
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    pricing: Pricing = Field(default_factory=Pricing)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    output_dir: str = Field("runs", description="where run directories are created (relative to the working directory)")
    report: ReportConfig = Field(default_factory=ReportConfig, description="targets for the report's recommendation")
    api: ApiSettings = Field(default_factory=ApiSettings, description="OpenAI-compatible endpoints (models named "
                             "openai:MODEL@BASE_URL): the key's environment variable, concurrency, retries, cache")
    trivial_baseline: bool = Field(
        True, description="add the free trivial baseline row (strategies/baseline.py: the training rows' majority "
                          "class, or the input's first sentence cut to 20 words) when the strategies do not list "
                          "one; every score is read against it. false leaves it out")
    forgetting: bool = Field(
        True, description="after each training row, probe the tuned model's general capability (perplexity on held-out "
                          "general text, accuracy on general questions) against its base model's, outside the cost "
                          "meter (probing/forgetting.py); false skips the probe")

    def strategy_configs(self) -> list[StrategyConfig]:
        return list(self.strategies)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                              f"(first at line {seen[key]}); remove one of them")
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> dict:
    """Read an experiment YAML file into a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    text = _experiment_text(path)
    try:
        raw = load_within_limits(text, _UniqueKeyLoader, str(path))  # size, alias-expansion and depth limits
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the experiment file must be a mapping of keys (name, data, models, strategies, ...)")
    return raw


def _experiment_text(path: Path) -> str:
    """The file's text; a file that is not UTF-8 text (a binary given by mistake) is a ``ConfigError``."""
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:  # before reading it: a huge file given by mistake is refused without loading it
        raise ConfigError(f"{path}: {size:,} bytes, over the {MAX_YAML_BYTES:,}-byte limit for an experiment file; "
                          "is it the experiment file? (data go in data files named by data.source)")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8); "
                          "give the experiment's YAML file") from None


def _override_value(key: str, text: str) -> Any:
    """A ``--set`` value parsed as YAML, within the experiment file's limits; a parse error names the key."""
    try:
        return load_within_limits(text, _UniqueKeyLoader, f"--set {key}")
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"--set {key}={text}: the value is not valid YAML ({problem}); quote it as a string "
                          "(--set 'KEY=\"...\"') or close its brackets and quotes") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` overrides (values parsed as YAML; list items by index, e.g. ``strategies.0.shots=8``)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. strategies.0.shots=8")
        value = _override_value(key, text) if text else ""
        parts = key.split(".")
        node: Any = raw
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: {where} is not an index of a list with {len(node)} entries")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value  # an unknown key is reported by validation, with its path
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is a value, not a mapping or list")
    return raw


def _format_errors(source: str, prefix: tuple, err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (*prefix, *e["loc"]))
        msg = e["msg"]
        if e["type"] == "value_error" and "error" in e.get("ctx", {}):
            msg = str(e["ctx"]["error"])  # our own validators' messages, without pydantic's "Value error, " prefix
        elif e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the example experiment files)"
        lines.append(f"{source}: {loc}: {msg}")
    return lines


def validate_experiment(raw: dict, source: str = "<experiment>") -> Experiment:
    """Validate a raw mapping into an ``Experiment``; every problem is reported with its key path."""
    problems: list[str] = []
    strategies: list[StrategyConfig] = []
    for i, item in enumerate(raw.get("strategies") or []):
        if not isinstance(item, dict) or "name" not in item:
            problems.append(f"{source}: strategies.{i}: expected a mapping with a 'name' (one of {', '.join(STRATEGIES)})")
            continue
        try:
            cls = STRATEGIES.get(str(item["name"])).Config
            strategies.append(cls.model_validate(item))
        except UnknownNameError as e:
            problems.append(f"{source}: strategies.{i}.name: {e}")
        except ValidationError as e:
            problems.extend(_format_errors(source, ("strategies", i), e))
    try:
        exp = Experiment.model_validate(raw)
    except ValidationError as e:
        problems.extend(_format_errors(source, (), e))
        exp = None
    if exp is not None and exp.task.type is not None and exp.task.type not in TASK_TYPES:
        problems.append(f"{source}: task.type: {TASK_TYPES.unknown_message(exp.task.type)}")
    if exp is not None:
        problems += _api_model_problems(source, exp, strategies)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise ConfigError(f"{source}: invalid experiment ({len(problems)} {noun}):\n  " + "\n  ".join(problems))
    assert exp is not None
    exp.strategies = strategies
    return exp


def _api_model_problems(source: str, exp: Experiment, strategies: list[StrategyConfig]) -> list[str]:
    """``openai:MODEL@URL`` references that do not parse, or that a strategy needing weights would run on."""
    problems = []
    for i, ref in enumerate(exp.models):
        if is_remote(ref):
            try:
                parse_endpoint(ref)
            except UserError as e:
                problems.append(f"{source}: models.{i}: {e}")
    for i, cfg in enumerate(strategies):
        strategy = STRATEGIES.get(cfg.name)(cfg)
        remote = [m for m in (cfg.models or exp.models) if is_remote(m)] if strategy.uses_model() else []
        if remote and not strategy.accepts_api_models():
            problems.append(f"{source}: strategies.{i} ({cfg.name}) would run on {', '.join(remote)}, an API "
                            "endpoint, which has no weights to train here (only prompt and rag can use one); set "
                            f"strategies.{i}.models to the local models it should run on")
        elif remote and getattr(cfg, "backend", None) not in (None, "openai"):
            # before the registry, backend: transformers was the default and sent openai: models to the API anyway
            problems.append(f"{source}: strategies.{i}.backend: {cfg.backend} cannot answer {', '.join(remote)}, "
                            f"an API endpoint (the openai backend does); remove backend, or set strategies.{i}.models "
                            "to the local models it should run on")
        elif remote and getattr(cfg, "calibrate", False):  # an endpoint gives no label likelihoods to calibrate
            problems.append(f"{source}: strategies.{i}.calibrate: true needs every label's likelihood, which the API "
                            f"endpoint {', '.join(remote)} does not give; set strategies.{i}.models to the local "
                            "models it should run on, or remove calibrate")
    return problems + _unpriced_api_problems(source, exp, strategies)


def _remote_refs(value: Any, where: str) -> list[tuple[str, str]]:
    """(key path, reference) of every openai:MODEL@URL string in a config value (a teacher, a generator...)."""
    if isinstance(value, str):
        return [(where, value)] if is_remote(value) else []
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in _remote_refs(v, f"{where}.{k}")]
    if isinstance(value, (list, tuple)):
        return [hit for i, v in enumerate(value) for hit in _remote_refs(v, f"{where}.{i}")]
    return []


def _unpriced_api_problems(source: str, exp: Experiment, strategies: list[StrategyConfig]) -> list[str]:
    """API models with no price: they would be billed $0 without a word (measure/pricing.py)."""
    refs = _remote_refs(list(exp.models), "models")
    for i, cfg in enumerate(strategies):
        refs += _remote_refs(cfg.model_dump(mode="json"), f"strategies.{i}")
    problems, named = [], set()
    for where, ref in refs:
        try:
            model = parse_endpoint(ref).model
        except UserError:
            continue  # reported where the reference is checked
        if model not in named and not exp.pricing.is_priced(model):
            named.add(model)
            problems.append(f"{source}: {where}: {unpriced_api_problem(model)}")
    return problems


def load_experiment(path: Path, overrides: list[str] | None = None) -> Experiment:
    """Read, override and validate an experiment file."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate_experiment(raw, source=str(path))


def dump_experiment(exp: Experiment) -> str:
    """The resolved experiment as YAML (strategies with all their defaults filled in)."""
    data = exp.model_dump(mode="json", exclude={"strategies"})
    data["strategies"] = [s.model_dump(mode="json") for s in exp.strategy_configs()]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def dump_experiment_as_written(exp: Experiment) -> str:
    """The experiment with only the keys that were set (after overrides): loading it gives back the same experiment.

    ``dump_experiment`` fills in every default, which validators that reject settings that do not apply (LoRA knobs
    on a full fine-tune) would then refuse; resuming a run reads this file instead.
    """
    data = exp.model_dump(mode="json", exclude={"strategies"}, exclude_unset=True)
    data["strategies"] = [s.model_dump(mode="json", exclude_unset=True) for s in exp.strategy_configs()]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
