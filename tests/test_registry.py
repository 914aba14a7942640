import pytest

from lmtailor.registry import Registry, UnknownNameError
from lmtailor.strategies import STRATEGIES
from lmtailor.tasks import TASK_TYPES


def test_register_and_get_lazy_entry():
    reg = Registry("thing")
    reg.register("path-join", "os.path:join")
    import os.path

    assert reg.get("path-join") is os.path.join


def test_clash_is_refused():
    reg = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)


def test_unregister_returns_the_entry_and_frees_the_name():
    reg = Registry("thing")
    reg.register("a", 1)
    assert reg.unregister("a") == 1
    assert "a" not in reg
    reg.register("a", 2)  # the name is free again
    with pytest.raises(UnknownNameError, match="unknown thing 'b'. Known: a"):
        reg.unregister("b")


def test_unknown_name_suggests_nearest():
    with pytest.raises(UnknownNameError) as e:
        STRATEGIES.get("promt")
    assert "Did you mean 'prompt'" in str(e.value)
    assert "finetune" in str(e.value)


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_registered_strategy_imports_with_a_config(name):
    from lmtailor.strategies.base import Strategy, StrategyConfig

    cls = STRATEGIES.get(name)
    assert issubclass(cls, Strategy)
    assert issubclass(cls.Config, StrategyConfig)
    # every knob is documented for users
    for field_name, field in cls.Config.model_fields.items():
        assert field.description, f"{name}.{field_name} has no description"


@pytest.mark.parametrize("name", TASK_TYPES.names())
def test_every_task_type_scores_a_perfect_prediction_as_best(name):
    task = TASK_TYPES.get(name)()
    refs = ["alpha beta", "gamma"]
    result = task.score(refs, refs, ("alpha beta", "gamma"))
    primary = next(m for m in result["metrics"] if m["name"] == task.primary_metric)
    assert primary["value"] == pytest.approx(1.0)
