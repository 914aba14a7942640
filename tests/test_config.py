import textwrap
from pathlib import Path

import pytest
import yaml

from lmtailor.config import ConfigError, apply_overrides, dump_experiment, load_experiment, read_yaml

GOOD = """
name: t
data:
  source: rows.jsonl
models: [tiny-llama]
strategies:
  - name: prompt
    shots: 2
  - name: finetune
    method: lora
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_good_file_validates_and_fills_defaults(tmp_path):
    exp = load_experiment(_write(tmp_path, GOOD))
    prompt, finetune = exp.strategy_configs()
    assert prompt.shots == 2 and finetune.method.name == "lora"
    assert exp.budget.max_input_tokens > 0 and exp.seeds == [0]
    dumped = yaml.safe_load(dump_experiment(exp))["strategies"][1]["method"]  # nested, with the method's defaults
    assert dumped == {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": None,
                      "peft_options": {}}


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("shots: 2", "shots: 2\n    shotz: 3"), "strategies.0.shotz: unknown key"),
    (GOOD.replace("shots: 2", "shots: many"), "strategies.0.shots"),
    (GOOD.replace("method: lora", "method: lorra"), "strategies.1.method"),
    (GOOD.replace("name: prompt", "name: promt"), "strategies.0.name: unknown strategy 'promt'. Did you mean 'prompt'"),
    (GOOD.replace("models: [tiny-llama]\n", ""), "models: Field required"),
    (GOOD + "budgett: {}\n", "budgett: unknown key"),
    (GOOD + "budget: {max_input_tokens: -1}\n", "budget.max_input_tokens"),
    (GOOD + "task: {type: clasification}\n", "task.type: unknown task type 'clasification'"),
])
def test_errors_name_file_and_key_path(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    assert expected in str(e.value)
    assert str(path) in str(e.value)


def test_duplicate_keys_are_rejected(tmp_path):
    path = _write(tmp_path, GOOD + "name: again\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'name' at line \d+"):
        read_yaml(path)


def test_overrides_set_nested_keys_and_list_items(tmp_path):
    exp = load_experiment(_write(tmp_path, GOOD), ["strategies.0.shots=8", "budget.max_new_tokens=5", "seeds=[1, 2]"])
    assert exp.strategy_configs()[0].shots == 8
    assert exp.budget.max_new_tokens == 5 and exp.seeds == [1, 2]


@pytest.mark.parametrize("override, expected", [
    ("strategies.9.shots=1", "strategies.9 is not an index of a list with 2 entries"),
    ("noequals", "expected KEY.PATH=VALUE"),
    ("name.sub=1", "name is a value"),
])
def test_bad_overrides(tmp_path, override, expected):
    raw = read_yaml(_write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=expected):
        apply_overrides(raw, [override])


def test_override_with_unknown_key_is_reported_with_its_path(tmp_path):
    with pytest.raises(ConfigError, match="strategies.1.rank: unknown key"):
        load_experiment(_write(tmp_path, GOOD), ["strategies.1.rank=8"])


def test_every_shipped_example_validates():
    from importlib.resources import files

    examples = sorted(Path(str(files("lmtailor").joinpath("examples"))).glob("*.yaml"))
    assert examples, "no packaged example experiments found"
    for path in examples:
        load_experiment(path)
