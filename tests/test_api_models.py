"""openai:MODEL@URL models in an experiment: validation, pricing and the meter's API bill."""

import textwrap

import pytest

from lmtailor.config import ConfigError, load_experiment
from lmtailor.measure import Meter, Pricing
from lmtailor.measure.pricing import ApiPrice

API = "openai:big@http://127.0.0.1:9/v1"


def _experiment(tmp_path, body: str):
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_prompt_and_rag_may_use_an_endpoint_and_finetune_on_other_models(tmp_path):
    exp = load_experiment(_experiment(tmp_path, f"""
        name: t
        data: {{source: rows.jsonl}}
        models: ["{API}"]
        strategies:
          - {{name: prompt, shots: 0}}
          - {{name: rag, corpus: task:train}}
          - {{name: finetune, method: lora, models: [tiny-llama]}}
        pricing: {{api_models: {{big: {{input_usd_per_1m: 0.15, output_usd_per_1m: 0.60}}}}}}
    """))
    assert exp.models == [API] and exp.api.key_env == "OPENAI_API_KEY"


def test_an_api_model_without_a_price_is_refused_naming_the_key_and_the_line_to_add(tmp_path):
    path = _experiment(tmp_path, f"""
        name: t
        data: {{source: rows.jsonl}}
        models: [tiny-llama]
        strategies:
          - {{name: prompt, models: ["{API}"]}}
          - {{name: finetune, method: lora, synthetic: {{teacher: "openai:teach@http://127.0.0.1:9/v1"}}}}
    """)
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    message = str(e.value)
    # both the prompted model and the synthetic-data teacher, each at its key path, with the YAML to add
    assert "strategies.0.models.0: the API model 'big' has no price" in message
    assert "strategies.1.synthetic.teacher: the API model 'teach' has no price" in message
    assert "big: {input_usd_per_1m: 0.15, output_usd_per_1m: 0.60}" in message and "big: {unpriced: true}" in message


def test_a_zero_price_needs_the_unpriced_flag_and_the_record_marks_it(tmp_path):
    body = f"""
        name: t
        data: {{source: rows.jsonl}}
        models: ["{API}"]
        strategies: [{{name: prompt}}]
        pricing: {{api_models: {{big: PRICE}}}}
    """
    with pytest.raises(ConfigError, match="both 0 .*unpriced: true"):
        load_experiment(_experiment(tmp_path, body.replace("PRICE", "{input_usd_per_1m: 0, output_usd_per_1m: 0}")))
    with pytest.raises(ConfigError, match="unpriced: true with a price"):
        load_experiment(_experiment(tmp_path, body.replace("PRICE", "{input_usd_per_1m: 1, unpriced: true}")))
    exp = load_experiment(_experiment(tmp_path, body.replace("PRICE", "{unpriced: true}")))
    assert exp.pricing.is_unpriced("big") and exp.pricing.is_unpriced("listed-nowhere")
    meter = Meter(pricing=exp.pricing)
    with meter:
        meter.add_api_call("inference", 100, 10, exp.pricing.api_usd("big", 100, 10), sent=True, model="big")
    api = meter.record()["api"]["inference"]
    assert api["usd"] == 0.0 and api["unpriced_models"] == ["big"]


def test_a_default_price_counts_for_models_not_listed():
    assert not Pricing().is_priced("m")  # the defaults are 0: no price
    assert Pricing(api_usd_per_1m_input_tokens=0.5).is_priced("m")


def test_a_strategy_that_trains_cannot_run_on_an_endpoint(tmp_path):
    path = _experiment(tmp_path, f"""
        name: t
        data: {{source: rows.jsonl}}
        models: ["{API}", tiny-llama]
        strategies:
          - {{name: prompt}}
          - {{name: finetune, method: lora}}
    """)
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    message = str(e.value)
    assert "strategies.1 (finetune)" in message and API in message and "strategies.1.models" in message
    assert "strategies.0" not in message


def test_a_malformed_endpoint_reference_is_named(tmp_path):
    path = _experiment(tmp_path, """
        name: t
        data: {source: rows.jsonl}
        models: ["openai:big", tiny-llama]
        strategies: [{name: prompt}]
    """)
    with pytest.raises(ConfigError, match=r"models\.0: .*openai:big"):
        load_experiment(path)


def test_api_keys_are_not_settings_of_the_file(tmp_path):
    path = _experiment(tmp_path, f"""
        name: t
        data: {{source: rows.jsonl}}
        models: ["{API}"]
        strategies: [{{name: prompt}}]
        api: {{key: sk-secret}}
    """)
    with pytest.raises(ConfigError, match=r"api\.key: unknown key"):
        load_experiment(path)


def test_api_prices_per_model_with_the_default_for_others():
    pricing = Pricing(api_usd_per_1m_input_tokens=1.0, api_usd_per_1m_output_tokens=2.0,
                      api_models={"big": ApiPrice(input_usd_per_1m=0.15, output_usd_per_1m=0.60)})
    assert pricing.api_usd("big", 1_000_000, 500_000) == pytest.approx(0.15 + 0.30)
    assert pricing.api_usd("other", 2_000, 1_000) == pytest.approx(0.002 + 0.002)
    assert pricing.api_price("big")[1] == "pricing.api_models.big"


def test_an_api_row_is_billed_for_its_tokens_not_for_the_waiting_machine():
    meter = Meter(pricing=Pricing(cpu_usd_per_hour=3600.0), hardware="cpu")  # $1 a second: waiting would show
    with meter:
        with meter.phase("inference"):
            for sent in (True, True, False, False):  # two answers from the response cache
                meter.add_api_call("inference", 100, 10, 0.25, sent=sent, latency_s=0.5)
            meter.add_examples("inference", 4)
        with meter.phase("data"):  # a teacher behind an API: a set-up cost
            meter.add_api_call("data", 1000, 100, 2.0, sent=True, latency_s=1.0)
    record = meter.record()
    assert record["usd"]["inference_per_1k"] == pytest.approx(0.25 * 1000)  # $1 for 4 requests → $250 per 1k
    assert record["usd"]["train"] == pytest.approx(2.0 + meter.setup_wall_s(), rel=1e-6)
    api = record["api"]["inference"]
    assert (api["requests"], api["sent"], api["cache_hits"]) == (4, 2, 2)
    assert (api["input_tokens"], api["output_tokens"]) == (400, 40)
    assert api["usd"] == pytest.approx(1.0) and api["usd_spent_this_run"] == pytest.approx(0.5)
    assert record["api"]["data"]["usd"] == pytest.approx(2.0)


def test_a_local_row_has_no_api_record():
    meter = Meter()
    with meter:
        with meter.phase("inference"):
            meter.add_examples("inference", 2)
    assert meter.record()["api"] is None
