"""Every fine-tuning method on tiny models of each family it supports: it trains, the loss falls, the artifact
reloads with plain PEFT / Transformers and predicts what the tuned model predicted. Also: serving prefix- and
prompt-tuned models (label scores and generation equal plain forwards), freeze tuning's trainable set,
padding-free batches (no row sees another), and the errors (unknown method, stray settings, qlora on CPU, adapter).

lora and full are tested on every family in test_finetune.py, test_seq2seq.py and test_classifier.py.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from lmtailor.core.budget import Budget
from lmtailor.core.context import RunContext
from lmtailor.core.example import DatasetSplits
from lmtailor.core.strategy_output import StrategyOutput
from lmtailor.errors import UserError
from lmtailor.measure.meter import Meter
from lmtailor.runtime import Runtime
from lmtailor.strategies.finetune import FinetuneConfig, FinetuneStrategy
from lmtailor.training.peft_methods import FINETUNE_METHODS, artifact_kind, finetune_method, wrap_for_training

from colours import CPU, LABELS, TASK, colour_splits

BUDGET = Budget(max_input_tokens=32, max_new_tokens=6, max_seq_len=128, eval_batch_size=4)
SPLITS = colour_splits(12, 3, 6)  # 12 rows / batch 4 = 3 steps an epoch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def tiny_bart_dir(_private_cache):
    from lmtailor.models.tiny import tiny_model_dir

    return tiny_model_dir("bart")


def _config(**kw) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"name": "finetune", **kw})


def _loop(**kw):
    """(training loop, method settings) of a fine-tuning config written with ``kw``."""
    cfg = _config(**kw)
    return cfg, cfg.method


def _method(**kw):
    """The method settings of a fine-tuning config written with ``kw``."""
    return _config(**kw).method


@pytest.fixture(scope="session")
def tuned_bert_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT's encoder after full fine-tuning on the colour task, saved without its head.

    A random tiny BERT gives every input nearly the same pooled vector, so a fresh head over it cannot do better
    than chance however it trains; real encoders come pretrained. On this body a fresh head and any method's
    adapter have something to learn from, as they would on MiniLM.
    """
    from lmtailor.models import load_model
    from lmtailor.training.classifier import train_classifier

    torch.manual_seed(0)
    loaded = load_model(str(tiny_bert_dir), CPU, head="sequence-classification", num_labels=len(LABELS))
    rows = colour_splits(48, 3, 1)
    out = tmp_path_factory.mktemp("tuned-bert")
    cfg = _config(method="full", epochs=6, batch_size=8, learning_rate=3e-3, eval_strategy="no")
    trained = train_classifier(loaded.model, loaded.tokenizer, cfg, cfg.method, TASK, rows.train, [], BUDGET, CPU, 0,
                               out / "run")
    trained.model.bert.save_pretrained(out / "body")
    loaded.tokenizer.save_pretrained(out / "body")
    return out / "body"


# (model, method, learning rate): rates high enough for a random tiny model to learn in 12 steps
CASES = [
    ("llama", "dora", 1e-2), ("llama", "ia3", 3e-2), ("llama", "prefix", 3e-2), ("llama", "prompt-tuning", 1e-1),
    ("llama", "freeze", 3e-3), ("llama", "loha", 1e-2),
    ("t5", "dora", 1e-2), ("t5", "ia3", 3e-2), ("t5", "prompt-tuning", 1e-1), ("t5", "freeze", 3e-3),
    ("t5", "lokr", 1e-2),
    ("bart", "dora", 3e-2), ("bart", "ia3", 3e-1), ("bart", "prompt-tuning", 1e-1), ("bart", "freeze", 1e-2),
    ("bert", "dora", 1e-2), ("bert", "ia3", 3e-2), ("bert", "prompt-tuning", 3e-2), ("bert", "freeze", 3e-3),
    ("bert", "lokr", 1e-2),
]
EXPECTED_LABEL = {"dora": "DoRA", "ia3": "IA3", "prefix": "prefix tuning", "prompt-tuning": "prompt tuning",
                  "freeze": "freeze top 1", "loha": "LoHa", "lokr": "LoKr"}


@dataclass
class Run:
    family: str
    method: str
    output: StrategyOutput
    served: torch.nn.Module  # the model the strategy predicted with
    base_dir: Path


def _evaluate_on_start(common_training_args):
    def args(*a, **kw):
        return {**common_training_args(*a, **kw), "eval_on_start": True}

    return args


def _run(family: str, method: str, out_dir: Path, train_loss: bool = False, model_dir: Path | None = None,
         **kw) -> Run:
    """Run the finetune strategy on the tiny ``family`` model, keeping the model it predicted with.

    ``train_loss``: validate on the training rows, before training and after each epoch, so the record's
    ``eval_log`` holds the loss on the training rows before and after (in eval mode: no dropout noise).
    """
    from lmtailor.models.tiny import tiny_model_dir

    module = importlib.import_module("lmtailor.training.classifier" if family == "bert" else
                                     "lmtailor.inference.predict")
    name = "predict_classifier" if family == "bert" else "predict"
    original, seen = getattr(module, name), {}

    def capture(model, *args, **kwargs):
        seen["model"] = model
        return original(model, *args, **kwargs)

    meter = Meter()
    splits = DatasetSplits(SPLITS.train, SPLITS.train, SPLITS.test) if train_loss else SPLITS
    ctx = RunContext(task=TASK, data=splits, model_ref=str(model_dir) if model_dir else f"tiny-{family}",
                     budget=BUDGET, seed=0, meter=meter, out_dir=out_dir, runtime=CPU)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, name, capture)
        if train_loss:
            for builder in ("sft", "seq2seq", "classifier"):
                builder = importlib.import_module(f"lmtailor.training.{builder}")
                mp.setattr(builder, "common_training_args", _evaluate_on_start(builder.common_training_args))
        with meter:
            output = FinetuneStrategy(_config(method=method, **kw)).run(ctx)
    return Run(family, method, output, seen["model"], model_dir or tiny_model_dir(family))


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{m}" for f, m, _ in CASES])
def run(request, tmp_path_factory, tiny_llama_dir, tiny_t5_dir, tiny_bart_dir) -> Run:
    family, method, lr = request.param
    settings = {"trainable_layers": 1} if method == "freeze" else {}
    if method == "prompt-tuning" or method == "prefix":
        settings["num_virtual_tokens"] = 4
    model_dir = request.getfixturevalue("tuned_bert_dir") if family == "bert" else None
    return _run(family, method, tmp_path_factory.mktemp(f"{family}-{method}"), train_loss=True, model_dir=model_dir,
                epochs=4, batch_size=4, learning_rate=lr, logging_steps=1, **settings)


def test_the_method_trains_and_the_loss_falls(run):
    d = run.output.details
    before, after = d["eval_log"][0], d["eval_log"][-1]  # the loss on the training rows, in eval mode
    assert (before["step"], after["step"], d["steps"]) == (0, 12, 12)
    if (run.family, run.method) == ("bart", "prompt-tuning"):
        # the random tiny BART's decoder barely reads its encoder (its logits move by ~0.004 for unit-sized
        # virtual tokens), so prompts on the encoder side can only nudge the loss: it must still fall
        assert after["eval_loss"] < before["eval_loss"]
    else:
        assert after["eval_loss"] < 0.995 * before["eval_loss"]
    assert d["method"] == run.method and 0 < d["trainable_params"] < d["total_params"]
    assert d["trainable_percent"] == pytest.approx(100 * d["trainable_params"] / d["total_params"], abs=1e-3)
    assert FinetuneStrategy(_config(method=run.method, **({"trainable_layers": 1} if run.method == "freeze" else {}))
                            ).label() == EXPECTED_LABEL[run.method]


def _reload(run: Run):
    """The artifact loaded with plain Transformers (+ PEFT for adapters), as a user would."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    from lmtailor.models import load_tokenizer

    name, path = next(iter(run.output.artifacts.items()))
    assert name == artifact_kind(run.method)
    auto = {"llama": AutoModelForCausalLM, "t5": AutoModelForSeq2SeqLM, "bart": AutoModelForSeq2SeqLM,
            "bert": AutoModelForSequenceClassification}[run.family]
    extra = {"num_labels": len(LABELS)} if run.family == "bert" else {}
    if name == "model":
        assert (path / "model.safetensors").is_file()
        model = auto.from_pretrained(path, dtype=torch.float32)
    else:
        assert (path / "adapter_model.safetensors").is_file() and (path / "adapter_config.json").is_file()
        model = PeftModel.from_pretrained(auto.from_pretrained(run.base_dir, dtype=torch.float32, **extra), path)
    return model.eval(), load_tokenizer(str(path))


def test_the_artifact_reloads_and_predicts_the_same(run):
    from lmtailor.inference.predict import predict
    from lmtailor.training.classifier import predict_classifier

    model, tokenizer = _reload(run)
    before = run.output.details["inference"]
    if run.family == "bert":
        predictions, after = predict_classifier(model, tokenizer, TASK, SPLITS.test, BUDGET, Meter())
        key = "label_probs"
    else:
        predictions, after = predict(model, tokenizer, TASK, SPLITS.test, (), BUDGET, Meter())
        key = "label_scores"
    assert predictions == run.output.predictions
    for row in SPLITS.test:  # scores rounded to 4 decimals in the record
        torch.testing.assert_close(torch.tensor(after[key][row.id]), torch.tensor(before[key][row.id]),
                                   atol=2e-4, rtol=1e-4)


def test_the_record_says_how_the_method_trained_and_served(run):
    d = run.output.details
    if artifact_kind(run.method) == "model":
        assert d["serving"] == "the trained weights, as saved" and "peft" not in d
        assert d["freeze"]["trainable_layers"] == 1
        return
    assert d["peft"]["peft_type"] == {"dora": "LORA", "prompt-tuning": "PROMPT_TUNING", "prefix": "PREFIX_TUNING"}.get(
        run.method, run.method.upper().replace("-", "_"))
    if run.method in ("prefix", "prompt-tuning"):
        assert d["peft"]["num_virtual_tokens"] == 4 and "PeftModel" in d["serving"]
        assert type(run.served).__name__.startswith("PeftModel")
    else:
        assert "merged" in d["serving"] and not hasattr(run.served, "peft_config")
    if run.method == "dora":
        assert d["peft"]["use_dora"] is True
    if run.family == "bert":  # the fresh head trains in full beside any method
        assert "classifier" in d["peft"]["modules_to_save"]
    if run.family == "llama":  # the shared-prefix cache served it, and its self-check agreed
        assert d["inference"]["scoring_path"] == "prefix-cache" and not d["inference"]["notes"]


# --- serving prefix- and prompt-tuned models -----------------------------------------------------------------------

def _prompt_learning_model(family: str, method: str):
    """A tiny model wrapped with a prefix / prompt-tuning adapter whose virtual tokens are large and random, so
    that a path which dropped or doubled them would give visibly different answers."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from lmtailor.models import load_tokenizer
    from lmtailor.models.tiny import tiny_model_dir

    path = tiny_model_dir(family)
    auto = AutoModelForCausalLM if family == "llama" else AutoModelForSeq2SeqLM
    task_type = "CAUSAL_LM" if family == "llama" else "SEQ_2_SEQ_LM"
    config = {"prefix": PrefixTuningConfig, "prompt-tuning": PromptTuningConfig}[method](
        task_type=task_type, num_virtual_tokens=5)
    torch.manual_seed(0)
    model = get_peft_model(auto.from_pretrained(path, dtype=torch.float32), config).eval()
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.normal_(0, 1.0)
    return model, load_tokenizer(str(path))


def _prompts(tokenizer, shared: str) -> list[list[int]]:
    texts = ["the river red stone", "one two blue cloud quiet bright small", "a green"]
    return [tokenizer(shared + t)["input_ids"] for t in texts]


@pytest.mark.parametrize("method", ["prefix", "prompt-tuning"])
@pytest.mark.parametrize("shared", ["", "Which colour is it? "])
def test_label_scores_of_virtual_token_models_equal_plain_forwards(method, shared, tiny_llama_dir):
    from lmtailor.inference.label_reference import naive_label_scores
    from lmtailor.inference.label_scoring import score_labels

    model, tok = _prompt_learning_model("llama", method)
    prompts = _prompts(tok, shared)
    labels = [tok(lab)["input_ids"] + [tok.eos_token_id] for lab in ("red", "light blue sky", "green")]
    reference = naive_label_scores(model, prompts, labels)  # one plain PeftModel forward per (row, label)
    with model.disable_adapter():
        untuned = naive_label_scores(model, prompts, labels)
    assert not torch.allclose(torch.tensor(reference), torch.tensor(untuned), atol=1e-2)  # the adapter matters
    for cached in (True, False):
        result = score_labels(model, prompts, labels, tok.pad_token_id, prefix_cache=cached)
        torch.testing.assert_close(torch.tensor(result.scores), torch.tensor(reference), atol=1e-4, rtol=1e-4)
        assert result.path == ("prefix-cache" if cached else "no-cache") and not result.notes


def _greedy(model, prompt: list[int], steps: int, allowed=None) -> list[int]:
    """Greedy decoding by plain forwards of the whole sequence (no cache, no generate)."""
    ids, out = list(prompt), []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        if allowed is not None:
            mask = torch.full_like(logits, float("-inf"))
            mask[allowed(out)] = 0
            logits = logits + mask
        token = int(logits.argmax())
        out.append(token)
        ids.append(token)
    return out


@pytest.mark.parametrize("method", ["prefix", "prompt-tuning"])
def test_generation_of_virtual_token_models_equals_greedy_forwards(method, tiny_llama_dir):
    from lmtailor.inference.generation import LabelTrie, generate_ids

    model, tok = _prompt_learning_model("llama", method)
    prompts = _prompts(tok, "")  # different lengths: the batch is left-padded
    never = [10**6]  # no stop token: every row generates all its steps
    batched = generate_ids(model, prompts, 5, never, tok.pad_token_id, batch_size=3)
    assert batched.ids == [_greedy(model, p, 5) for p in prompts]
    if method == "prefix":  # what PeftModel.generate gives with transformers 5: the prefix dropped
        with model.disable_adapter():
            assert batched.ids != [_greedy(model, p, 5) for p in prompts]
    labels = [tok(lab)["input_ids"] + [tok.eos_token_id] for lab in ("red", "light blue sky", "green")]
    trie = LabelTrie(labels)
    stops = sorted({lab[-1] for lab in labels})
    constrained = generate_ids(model, prompts, max(map(len, labels)), stops, tok.pad_token_id, batch_size=3, trie=trie)
    expected = [_greedy(model, p, max(map(len, labels)), lambda out: trie.allowed(out) or stops) for p in prompts]
    assert constrained.ids == [e[:e.index(tok.eos_token_id) + 1] for e in expected]


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_prompt_tuned_encoder_decoders_score_and_generate_through_the_peft_model(family, request):
    from lmtailor.inference.generation import generate_ids
    from lmtailor.inference.seq2seq import score_labels_seq2seq

    request.getfixturevalue(f"tiny_{family}_dir")
    model, tok = _prompt_learning_model(family, "prompt-tuning")
    sources = _prompts(tok, "")
    labels = [tok(text_target=lab)["input_ids"] for lab in ("red", "light blue sky")]
    result = score_labels_seq2seq(model, sources, labels, tok.pad_token_id)
    with torch.no_grad():  # the model's own loss over each label: a plain forward of the PeftModel
        reference = [[-model(input_ids=torch.tensor([s]), labels=torch.tensor([lab])).loss.item() * len(lab)
                      for lab in labels] for s in sources]
    torch.testing.assert_close(torch.tensor(result.scores), torch.tensor(reference), atol=1e-4, rtol=1e-4)
    assert result.path == "full-forward"
    batched = generate_ids(model, sources, 4, [10**6], tok.pad_token_id, batch_size=3)
    assert batched.ids == [generate_ids(model, [s], 4, [10**6], tok.pad_token_id, batch_size=1).ids[0]
                           for s in sources]


# --- freeze --------------------------------------------------------------------------------------------------------

def _trainable_modules(model) -> set[str]:
    return {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_trains_exactly_the_top_layers_the_final_norm_and_an_untied_head():
    from transformers import AutoModelForCausalLM, LlamaConfig

    from lmtailor.training.freeze import freeze_below_top

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config)
    summary = freeze_below_top(model, 1, "decoder-only")
    top = {n.rsplit(".", 1)[0] for n, _ in model.model.layers[2].named_parameters(prefix="model.layers.2")}
    assert _trainable_modules(model) == top | {"model.norm", "lm_head"}
    assert summary["trained_modules"] == ["model.layers.2", "model.norm", "lm_head"]
    assert summary["layers"] == "model.layers" and summary["total_layers"] == 3


def test_freeze_keeps_a_tied_head_frozen_and_trains_a_classifier_head(tiny_llama_dir, tiny_bert_dir, tiny_t5_dir):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    from lmtailor.training.freeze import freeze_below_top

    llama = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)  # its head is the input embedding matrix
    summary = freeze_below_top(llama, 1, "decoder-only")
    assert {m.split(".")[:3] == ["model", "layers", "1"] or m == "model.norm"
            for m in _trainable_modules(llama)} == {True}
    assert not llama.lm_head.weight.requires_grad and "tied" in summary["head"]
    bert = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3)
    freeze_below_top(bert, 1, "encoder")
    assert {m.split(".")[3] if m.startswith("bert.encoder.layer") else m for m in _trainable_modules(bert)} >= {
        "classifier", "bert.pooler.dense"}
    assert all(m.startswith(("bert.encoder.layer.1.", "classifier", "bert.pooler")) for m in _trainable_modules(bert))
    t5 = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir)
    freeze_below_top(t5, 1, "encoder-decoder")  # the decoder's top: the layers nearest the output
    assert all(m.startswith(("decoder.block.1.", "decoder.final_layer_norm")) for m in _trainable_modules(t5))
    with pytest.raises(UserError, match="trainable_layers: 5 is more than the 2 layers"):
        freeze_below_top(t5, 5, "encoder-decoder")


# --- padding-free batches ------------------------------------------------------------------------------------------

@pytest.fixture()
def padding_free_trainer(tiny_llama_dir, tmp_path):
    from lmtailor.models import load_model
    from lmtailor.training.dataset import build_sft_rows
    from lmtailor.training.sft import build_trainer

    def make(padding_free: bool, attn: str = "sdpa"):
        loaded = load_model("tiny-llama", CPU)
        loaded.model.set_attn_implementation(attn)
        rows = build_sft_rows(loaded.tokenizer, TASK, SPLITS.train[:4], BUDGET)
        cfg = _config(method="full", padding_free=padding_free)
        return build_trainer(loaded.model, loaded.tokenizer, cfg, cfg.method, rows.dataset, None, CPU, 0, tmp_path,
                             BUDGET.max_seq_len)

    return make


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_rows_attend_only_to_themselves(padding_free_trainer, attn):
    flat, padded = padding_free_trainer(True, attn), padding_free_trainer(False, attn)
    examples = [flat.train_dataset[i] for i in range(4)]
    batch = flat.data_collator(examples)
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one flattened row, no padding
    model = flat.model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        lengths = [len(e["input_ids"]) for e in examples]
        for example, part in zip(examples, logits.split(lengths)):
            alone = model(input_ids=torch.tensor([example["input_ids"]]), use_cache=False).logits[0]
            torch.testing.assert_close(part, alone, atol=1e-4, rtol=1e-4)
        # the training loss is the padded batch's, to rounding
        padded_batch = padded.data_collator(examples)
        assert len({len(e["input_ids"]) for e in examples}) > 1  # the padded batch really has padding
        loss_flat = flat.compute_loss(model, dict(batch))
        loss_padded = padded.compute_loss(padded.model.eval(), dict(padded_batch))
    torch.testing.assert_close(loss_flat, loss_padded, atol=1e-5, rtol=1e-5)


def test_padding_free_is_refused_when_the_attention_would_mix_rows(tiny_llama_dir, monkeypatch):
    import transformers.masking_utils as masking

    from lmtailor.models import load_model
    from lmtailor.training.padding_free import check_padding_free

    loaded = load_model("tiny-llama", CPU)
    check_padding_free(loaded.model, loaded.tokenizer.pad_token_id)  # sdpa builds per-row masks: fine
    # an attention that ignores the restarts in position_ids (as a model without transformers' masks would)
    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(UserError, match="attend to the rows before them"):
        check_padding_free(loaded.model, loaded.tokenizer.pad_token_id)


def test_padding_free_training_counts_every_token_and_learns(tiny_llama_dir, tmp_path):
    run = _run("llama", "lora", tmp_path, epochs=2, batch_size=4, learning_rate=1e-2, logging_steps=1,
               eval_strategy="no", padding_free=True)
    d = run.output.details
    assert d["padding_free"] is True and d["train_tokens"] == 2 * d["train_data"]["tokens"]
    assert d["last_train_loss"] < d["first_train_loss"]


def test_padding_free_is_the_default_where_it_applies_and_falls_back_with_a_warning(tiny_llama_dir, monkeypatch,
                                                                                     caplog):
    import transformers.masking_utils as masking

    from lmtailor.models import load_model
    from lmtailor.training.padding_free import use_padding_free

    loaded = load_model("tiny-llama", CPU)
    model, pad = loaded.model, loaded.tokenizer.pad_token_id
    assert _config(method="lora").padding_free is None  # unset: decided on the loaded model
    assert use_padding_free(model, pad, *_loop(method="lora", batch_size=4)) is True
    assert use_padding_free(model, pad, *_loop(method="full", batch_size=4, padding_free=False)) is False
    assert use_padding_free(model, pad, *_loop(method="lora", batch_size=1)) is False  # nothing to flatten
    for method in ("prompt-tuning", "prefix"):  # virtual tokens would go before the whole flattened batch
        assert use_padding_free(model, pad, *_loop(method=method, batch_size=4)) is False
    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)
    with caplog.at_level("WARNING", logger="lmtailor.training.padding_free"):
        assert use_padding_free(model, pad, *_loop(method="lora", batch_size=4)) is False
    assert "attend to the rows before them" in caplog.text and "padded batches instead" in caplog.text
    with pytest.raises(UserError, match="attend to the rows before them"):  # asked for explicitly: refused
        use_padding_free(model, pad, *_loop(method="lora", batch_size=4, padding_free=True))


def test_default_run_records_its_batches(tiny_llama_dir, tiny_t5_dir, tmp_path):
    decoder = _run("llama", "lora", tmp_path / "llama", batch_size=4, eval_strategy="no").output.details
    assert decoder["padding_free"] is True and decoder["train_tokens"] == decoder["train_data"]["tokens"]
    padded = _run("llama", "prompt-tuning", tmp_path / "pt", batch_size=4, eval_strategy="no").output.details
    assert padded["padding_free"] is False


def test_padding_free_only_for_decoder_only_models_and_not_with_virtual_tokens(tiny_t5_dir, tmp_path):
    with pytest.raises(UserError, match="decoder-only models only"):
        _run("t5", "lora", tmp_path, padding_free=True)
    with pytest.raises(ValidationError, match="virtual tokens"):
        _config(method="prompt-tuning", padding_free=True)


# --- registry, settings and errors ---------------------------------------------------------------------------------

def test_every_registered_method_has_a_label_rates_and_an_artifact():
    expected = {"full", "lora", "dora", "qlora", "ia3", "prefix", "prompt-tuning", "adapter", "freeze"}
    assert set(FINETUNE_METHODS.names()) == expected
    for name in FINETUNE_METHODS:
        method = finetune_method(name)
        assert method.label and method.learning_rate > 0 and method.encoder_learning_rate > 0
        assert artifact_kind(name) == ("model" if name in ("full", "freeze") else "adapter")
    assert finetune_method("prefix_tuning") is finetune_method("prefix")  # PEFT's name for a built-in method
    loha = finetune_method("loha")
    assert loha.label == "LoHa" and loha.settings == ("peft_options", "target_modules")
    assert FinetuneStrategy(_config(method="ia3")).label() == "IA3"
    assert FinetuneStrategy(_config(method="freeze", trainable_layers=3)).label() == "freeze top 3"


@pytest.mark.parametrize("bad, message", [
    ({"method": "lorra"}, r"unknown fine-tuning method 'lorra'\. Did you mean 'lora'"),
    ({"method": "ia3", "lora_r": 8}, r"LoRA settings \(lora_r\) do not apply to method: ia3"),
    ({"method": "lora", "trainable_layers": 4}, r"freeze settings \(trainable_layers\) do not apply"),
    ({"method": "full", "num_virtual_tokens": 8}, r"virtual-token settings \(num_virtual_tokens\)"),
    ({"method": "freeze", "peft_options": {"r": 4}}, r"PEFT settings \(peft_options\) do not apply"),
    ({"method": "loha", "lora_alpha": 8}, r"LoRA settings \(lora_alpha\) do not apply to method: loha"),
])
def test_settings_of_another_method_are_refused(bad, message):
    with pytest.raises(ValidationError, match=message):
        _config(**bad)


def test_peft_options_extend_the_config_and_unknown_ones_are_named(tiny_llama_dir):
    from lmtailor.models import load_model

    model = load_model("tiny-llama", CPU).model
    config = finetune_method("lora").peft_config(_method(method="lora", peft_options={"use_rslora": True}), model,
                                                 "decoder-only")
    assert config.use_rslora is True and config.r == 16
    loha = finetune_method("loha").peft_config(_method(method="loha", peft_options={"r": 4, "alpha": 8}), model,
                                               "decoder-only")
    assert (loha.r, loha.alpha, loha.task_type) == (4, 8, "CAUSAL_LM")
    wrapped = wrap_for_training(model, _method(method="loha", peft_options={"r": 4}), "decoder-only")
    assert wrapped.peft_config["default"].target_modules == {"q_proj", "v_proj"}  # PEFT's LoHa default for llama
    with pytest.raises(ValidationError, match="rank is not a setting of PEFT's LoraConfig"):
        _config(method="lora", peft_options={"rank": 4})  # refused by the config (so by validate), before a model


@pytest.mark.parametrize("method, options, message", [
    ("lora", {"use_rslora": True, "lora_rr": 3}, r"lora_rr \(did you mean lora_bias, lora_dropout\?\) is not a setting of "
                                                   r"PEFT's LoraConfig \(method: lora\); its settings are: .*use_rslora"),
    ("loha", {"r": 4, "nope": 1}, r"nope is not a setting of PEFT's LoHaConfig \(method: loha\); its settings are: "
                                  r"alpha, .*r, rank_dropout"),
    ("prompt-tuning", {"num_virtual_token": 3}, r"num_virtual_token \(did you mean num_virtual_tokens\?\) is not a "
                                                r"setting of PEFT's PromptTuningConfig"),
])
def test_unknown_peft_options_are_refused_by_the_config_naming_the_valid_ones(method, options, message):
    with pytest.raises(ValidationError, match=message):
        _config(method=method, peft_options=options)
    _config(method=method, peft_options={k: v for k, v in options.items() if k in ("use_rslora", "r")})  # known: ok


def test_unsupported_families_and_unknown_target_defaults_are_clear_errors(tiny_t5_dir, tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, DistilBertConfig

    with pytest.raises(UserError, match="prefix does not support encoder-decoder models"):
        _run("t5", "prefix", tmp_path / "t5")
    with pytest.raises(UserError, match="prefix does not support encoder models"):
        _run("bert", "prefix", tmp_path / "bert")
    model = AutoModelForSequenceClassification.from_config(
        DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64, num_labels=3))
    with pytest.raises(UserError, match="no default IA3 target modules for model type 'distilbert'"):
        finetune_method("ia3").peft_config(_method(method="ia3"), model, "encoder")


def test_bert2bert_gets_both_sides_default_targets_and_trains_its_random_modules(tiny_bert_dir):
    from transformers import EncoderDecoderModel

    model = EncoderDecoderModel.from_encoder_decoder_pretrained(str(tiny_bert_dir), str(tiny_bert_dir))
    model.config.warm_start_new_modules = ["crossattention"]
    lora = finetune_method("lora").peft_config(_method(method="lora"), model, "encoder-decoder")
    assert lora.target_modules == {"query", "value"} and lora.modules_to_save == ["crossattention"]
    ia3 = finetune_method("ia3").peft_config(_method(method="ia3"), model, "encoder-decoder")
    assert ia3.target_modules == {"key", "output.dense", "value"} and ia3.feedforward_modules == {"output.dense"}


def _no_loading(monkeypatch):
    import lmtailor.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the method's error")

    monkeypatch.setattr(models, "load_model", refuse)


def test_qlora_on_cpu_is_a_clear_error_before_anything_loads(tiny_llama_dir, tmp_path, monkeypatch):
    _no_loading(monkeypatch)
    with pytest.raises(UserError, match="qlora .* needs a CUDA GPU; this run is on cpu. Use method: lora"):
        _run("llama", "qlora", tmp_path)
    cfg = _config(method="qlora")  # a valid experiment: it only fails on a machine without CUDA
    assert FinetuneStrategy(cfg).label() == "QLoRA"


def test_adapter_explains_why_the_library_cannot_be_used(tiny_llama_dir, tmp_path, monkeypatch):
    try:
        import adapters  # noqa: F401
        pytest.skip("AdapterHub's adapters imports here: the method would train")
    except ImportError:
        pass
    _no_loading(monkeypatch)
    with pytest.raises(UserError) as error:
        _run("llama", "adapter", tmp_path)
    message = str(error.value)
    assert "AdapterHub's `adapters`" in message and "transformers ~=4.57" in message and "HfFolder" in message
    assert "Use method: lora or ia3" in message


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
                    reason="QLoRA needs a CUDA GPU and bitsandbytes")
def test_qlora_trains_lora_on_a_4bit_base_on_cuda(tiny_llama_dir, tmp_path):
    meter = Meter()
    runtime = Runtime("cuda", "bf16" if torch.cuda.is_bf16_supported() else "fp16", "test")
    ctx = RunContext(task=TASK, data=SPLITS, model_ref="tiny-llama", budget=BUDGET, seed=0, meter=meter,
                     out_dir=tmp_path, runtime=runtime)
    with meter:
        out = FinetuneStrategy(_config(method="qlora", epochs=4, batch_size=4, learning_rate=1e-2,
                                       logging_steps=1)).run(ctx)
    d = out.details
    assert d["quantization"].startswith("4-bit NF4") and d["last_train_loss"] < d["first_train_loss"]
    assert (out.artifacts["adapter"] / "adapter_model.safetensors").is_file()
    assert "4-bit" in d["serving"] and set(out.predictions) <= set(LABELS)


def test_prompt_tuning_starts_from_sampled_vocabulary_text_or_random_vectors(tiny_llama_dir):
    from lmtailor.models import load_model

    loaded = load_model("tiny-llama", CPU)
    method = finetune_method("prompt-tuning")
    assert method.peft_config(_method(method="prompt-tuning"), loaded.model, "decoder-only").prompt_tuning_init == \
        "SAMPLE_VOCAB"
    random = _method(method="prompt-tuning", peft_options={"prompt_tuning_init": "RANDOM"})
    assert method.peft_config(random, loaded.model, "decoder-only").prompt_tuning_init == "RANDOM"
    text = _method(method={"name": "prompt-tuning", "num_virtual_tokens": 3,
                           "peft_options": {"prompt_tuning_init_text": "red blue"}})
    wrapped = wrap_for_training(loaded.model, text, "decoder-only")
    ids = loaded.tokenizer("red blue", add_special_tokens=False)["input_ids"]
    expected = wrapped.get_input_embeddings()(torch.tensor((ids * 3)[:3]))
    # the virtual tokens start as the embeddings of the text's tokens (repeated to fill them), as PEFT's TEXT does
    torch.testing.assert_close(wrapped.prompt_encoder["default"].embedding.weight, expected)


def test_serving_casts_fp32_master_weights_and_merged_adapters_to_the_run_dtype(tiny_llama_dir):
    """Full fine-tuning trains fp32 master weights; served in the run's dtype, a tuned row pays the inference its
    base model pays, and is probed in the same precision."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lmtailor.training.peft_methods import serve

    full = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    served, how = serve(full, torch.bfloat16)
    assert {p.dtype for p in served.parameters()} == {torch.bfloat16}
    assert how == "the trained weights, as saved, in the run's compute dtype (bfloat16)"
    same, how = serve(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32), torch.float32)
    assert how == "the trained weights, as saved"
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    lora = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"]))  # fp32 adapter
    merged, how = serve(lora, torch.bfloat16)
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    assert how.startswith("adapter merged into the base weights")
