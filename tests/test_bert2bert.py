"""BERT2BERT: an encoder-decoder warm-started from a BERT encoder (the tiny BERT here, minilm-l6 for the real alias),
built once into the cache, then predicted and fine-tuned through the ordinary encoder-decoder paths."""

from __future__ import annotations

import random

import pytest
import torch

from lmtailor.core.budget import Budget
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.inference.predict import predict
from lmtailor.measure.meter import Meter
from lmtailor.models import load_model
from lmtailor.models.bert2bert import bert2bert_dir, bert2bert_path
from lmtailor.models.cache import COMPLETE_MARKER, is_complete
from lmtailor.prompting.seq2seq_format import encode_source, encode_target, source_text
from lmtailor.runtime import Runtime
from lmtailor.strategies.finetune import FinetuneConfig

CPU = Runtime("cpu", "fp32", "tests run in fp32 on the CPU")
LABELS = ("red", "green", "light blue sky")
TASK = TaskSpec("colours", "classification", "Which colour word does the text contain?", LABELS)
GEN_TASK = TaskSpec("echo", "generation", "Repeat the colour word.")
BUDGET = Budget(max_input_tokens=32, max_new_tokens=6, max_seq_len=96, eval_batch_size=3)


def _rows(n: int, prefix: str, seed: int) -> list[Example]:
    rng = random.Random(seed)
    words = "the a of one two river stone cloud quiet bright small old".split()
    return [Example(f"{prefix}{i}", " ".join(rng.choices(words, k=4)) + f" {LABELS[i % 3]}", LABELS[i % 3])
            for i in range(n)]


TRAIN, VAL, TEST = _rows(12, "train", 0), _rows(3, "val", 1), _rows(3, "test", 2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def b2b_dir(tiny_bert_dir):
    """The tiny BERT warm-started as BERT2BERT: the same builder the alias minilm-l6-bert2bert uses."""
    return bert2bert_dir(tiny_bert_dir, "tiny-bert2bert")


@pytest.fixture(scope="module")
def b2b(b2b_dir):
    return load_model(str(b2b_dir), CPU)


# --- the build -----------------------------------------------------------------------------------------------------

def test_the_alias_is_registered_as_an_embedded_encoder_decoder():
    from lmtailor.models.sources import MODEL_ALIASES

    alias = MODEL_ALIASES.get("minilm-l6-bert2bert")
    assert (alias.source, alias.family) == ("embedded", "encoder-decoder")
    assert "cross-attention random" in alias.description


def test_warm_start_is_an_untied_encoder_decoder_with_bert_specials(b2b, tiny_bert_dir):
    from transformers import AutoModel

    model, tok = b2b.model, b2b.tokenizer
    assert b2b.family == "encoder-decoder" and type(model).__name__ == "EncoderDecoderModel"
    config = model.config
    assert (config.decoder_start_token_id, config.eos_token_id, config.pad_token_id) == (
        tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
    assert model.generation_config.eos_token_id == tok.eos_token_id == tok.sep_token_id
    assert config.vocab_size == config.decoder.vocab_size == len(tok)
    assert config.decoder.is_decoder and config.decoder.add_cross_attention and not config.tie_encoder_decoder
    # both halves start from the BERT's weights, as separate tensors
    bert = AutoModel.from_pretrained(tiny_bert_dir, dtype=torch.float32)
    start = bert.embeddings.word_embeddings.weight
    enc, dec = model.encoder.embeddings.word_embeddings.weight, model.decoder.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(enc, start)
    torch.testing.assert_close(dec, start)
    assert enc.data_ptr() != dec.data_ptr()
    # the modules the warm start created are recorded, and only those
    assert config.warm_start_new_modules == ["decoder.bert.encoder.layer.0.crossattention",
                                             "decoder.bert.encoder.layer.1.crossattention",
                                             "decoder.cls.predictions.transform"]


def test_the_cache_is_reused_and_a_half_written_directory_is_rebuilt(b2b_dir, tiny_bert_dir, monkeypatch):
    import lmtailor.models.bert2bert as b2b_module

    assert is_complete(b2b_dir) and b2b_dir.name.startswith("tiny-bert2bert-")
    calls = []
    real_build = b2b_module.build_bert2bert
    monkeypatch.setattr(b2b_module, "build_bert2bert", lambda enc, out: calls.append(out) or real_build(enc, out))
    assert bert2bert_dir(tiny_bert_dir, "tiny-bert2bert") == b2b_dir and calls == []  # taken from the cache
    # a directory left without the completion marker (a killed build) is not loaded but rebuilt
    half = bert2bert_path(tiny_bert_dir, "half-b2b")
    half.mkdir(parents=True)
    (half / "config.json").write_text("{")
    built = bert2bert_dir(tiny_bert_dir, "half-b2b")
    assert built == half and len(calls) == 1 and is_complete(built)
    assert (built / COMPLETE_MARKER).is_file() and (built / "model.safetensors").is_file()
    assert load_model(str(built), CPU).family == "encoder-decoder"


def test_a_non_bert_directory_is_refused(tiny_t5_dir, tmp_path):
    from lmtailor.errors import UserError
    from lmtailor.models.bert2bert import build_bert2bert

    with pytest.raises(UserError, match="BERT-style encoder"):
        build_bert2bert(tiny_t5_dir, tmp_path / "out")


# --- formatting and prediction -------------------------------------------------------------------------------------

def test_sources_and_targets_are_wrapped_in_cls_and_sep(b2b):
    tok = b2b.tokenizer
    source = encode_source(tok, source_text(TASK, "a red hill"))
    assert source[0] == tok.cls_token_id and source[-1] == tok.sep_token_id  # no T5-style prefix, BERT's own specials
    target = encode_target(tok, "light blue sky", b2b.model.config.decoder_start_token_id)
    # the decoder starts from [CLS]; the target must not repeat it (a briefly tuned model would emit [CLS] forever)
    assert target == tok("light blue sky", add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    assert tok.sep_token_id == tok.eos_token_id


def test_training_rows_do_not_repeat_the_decoder_start_token(b2b):
    from lmtailor.training.seq2seq import build_seq2seq_rows

    rows = build_seq2seq_rows(b2b.tokenizer, TASK, TRAIN[:3], BUDGET, b2b.model.config.decoder_start_token_id)
    for labels in rows.dataset["labels"]:
        assert labels[0] != b2b.tokenizer.cls_token_id and labels[-1] == b2b.tokenizer.sep_token_id


@pytest.mark.parametrize("task, mode", [(GEN_TASK, "generate"), (TASK, "likelihood"), (TASK, "constrained")])
def test_predict_seq2seq_runs_in_every_mode(b2b, task, mode):
    meter = Meter()
    preds, details = predict(b2b.model, b2b.tokenizer, task, TEST, (), BUDGET, meter, mode=mode)
    assert len(preds) == len(TEST) and all(isinstance(p, str) for p in preds)
    if mode != "generate":
        assert set(preds) <= set(LABELS)
    assert meter.phases["inference"].tokens > 0


# --- training ------------------------------------------------------------------------------------------------------

def _train(model_dir, method: str, out_dir, epochs: int = 4):
    from lmtailor.training.seq2seq import train_seq2seq

    cfg = FinetuneConfig.model_validate({"name": "finetune", "method": method, "epochs": epochs, "batch_size": 4,
                                         "learning_rate": 1e-2, "logging_steps": 1})
    loaded = load_model(str(model_dir), CPU)
    trained = train_seq2seq(loaded.model, loaded.tokenizer, cfg, cfg.method, TASK, TRAIN, VAL, BUDGET, CPU, 0,
                            out_dir)
    return trained, loaded.tokenizer


def _assert_loss_fell(trained):
    from lmtailor.training.common import summarize_log

    s = summarize_log(trained.state.log_history)
    assert s["last_train_loss"] < s["first_train_loss"] - 0.3
    assert s["eval_log"][-1]["eval_loss"] < s["eval_log"][0]["eval_loss"]
    assert trained.state.num_input_tokens_seen == 4 * trained.train.tokens


def _logits(model, tok) -> torch.Tensor:
    batch = tok(["the river red stone", "one light blue sky"], return_tensors="pt", padding=True)
    labels = tok(text_target=["red", "light blue sky"], return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        return model.eval()(**batch, labels=labels).logits


def test_lora_trains_adapters_and_the_new_cross_attention_in_full(b2b_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    trained, tok = _train(b2b_dir, "lora", tmp_path)
    _assert_loss_fell(trained)
    config = trained.model.peft_config["default"]
    assert set(config.target_modules) == {"query", "value"}  # PEFT's BERT default, on both halves
    names = [n for n, p in trained.model.named_parameters() if p.requires_grad]
    assert any(".encoder.encoder.layer.0.attention.self.query.lora_A" in n for n in names)
    assert any("crossattention.modules_to_save" in n for n in names)
    assert all("lora_" in n or "modules_to_save" in n for n in names)
    assert not any("crossattention" in n and "lora_" in n for n in names)  # trained in full, not low-rank
    # the adapter (LoRA + the new modules) reloads with plain PEFT and predicts the same
    base = AutoModelForSeq2SeqLM.from_pretrained(b2b_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, trained.artifact)
    torch.testing.assert_close(_logits(reloaded, tok), _logits(trained.model, tok))


def test_full_fine_tuning_lowers_the_loss_and_the_model_reloads(b2b_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    trained, tok = _train(b2b_dir, "full", tmp_path)
    _assert_loss_fell(trained)
    assert trained.trainable == trained.total
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(trained.artifact, dtype=torch.float32)
    torch.testing.assert_close(_logits(reloaded, tok), _logits(trained.model, tok))
    preds, details = predict(trained.model, tok, TASK, TEST, (), BUDGET, Meter(), mode="generate")
    assert details["truncated_generations"] == 0  # it learnt to end its answer with [SEP]


def test_t5_lora_keeps_its_peft_defaults_and_saves_no_extra_modules(tiny_t5_dir):
    from lmtailor.training.peft_methods import finetune_method

    cfg = FinetuneConfig.model_validate({"name": "finetune", "method": "lora"})
    t5 = load_model(str(tiny_t5_dir), CPU).model
    lora = finetune_method("lora").peft_config(cfg.method, t5, "encoder-decoder")
    assert lora.target_modules is None and lora.modules_to_save is None


# --- the real alias ------------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_minilm_bert2bert_builds_and_generates(monkeypatch):
    import os

    import platformdirs

    # the user's model cache, as the other embedded-model tests use: the build is kept between sessions
    monkeypatch.setenv("LMTAILOR_CACHE", os.environ.get("LMTAILOR_TEST_MODEL_CACHE")
                       or platformdirs.user_cache_dir("lmtailor"))
    loaded = load_model("minilm-l6-bert2bert", CPU)
    assert loaded.family == "encoder-decoder" and loaded.source == "embedded" and is_complete(loaded.path)
    assert loaded.model.config.encoder.hidden_size == 384 and len(loaded.tokenizer) == 30522
    preds, details = predict(loaded.model, loaded.tokenizer, GEN_TASK, TEST[:2], (), BUDGET, Meter(),
                                     mode="generate")
    assert len(preds) == 2 and all(isinstance(p, str) for p in preds)
