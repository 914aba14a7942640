"""The embedded real models load offline and say something sensible. Slow the first time (GGUF conversion)."""

from __future__ import annotations

import os

import platformdirs
import pytest
import torch

from lmtailor.models import load_model
from lmtailor.models.cache import is_complete
from lmtailor.runtime import Runtime

pytestmark = pytest.mark.integration
CPU = Runtime("cpu", "fp32", "test")


@pytest.fixture(scope="module", autouse=True)
def _shared_model_cache():
    """Use the user's cache (or $LMTAILOR_TEST_MODEL_CACHE) so the one-time GGUF conversions are not repeated
    every session; entries are keyed by the GGUF's sha256 and written atomically, so sharing is safe."""
    root = os.environ.get("LMTAILOR_TEST_MODEL_CACHE") or platformdirs.user_cache_dir("lmtailor")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMTAILOR_CACHE", root)
        yield


def _greedy(loaded, input_ids: list[int], n: int) -> str:
    ids = torch.tensor([input_ids])
    with torch.no_grad():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                    pad_token_id=loaded.tokenizer.pad_token_id)
    return loaded.tokenizer.decode(out[0, len(input_ids):], skip_special_tokens=True)


def test_smollm2_answers_through_its_chat_template():
    loaded = load_model("smollm2-135m-instruct", CPU)
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and loaded.model.dtype == torch.float32
    assert loaded.source == "embedded" and is_complete(loaded.path)
    tok = loaded.tokenizer
    assert tok.chat_template and "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert "Paris" in _greedy(loaded, ids, 12)


def test_gemma3_continues_a_pattern():
    loaded = load_model("gemma3-270m", CPU)
    assert type(loaded.model).__name__ == "Gemma3ForCausalLM" and loaded.family == "decoder-only"
    tok = loaded.tokenizer
    assert not tok.chat_template  # a base model: prompts go through the plain template
    few_shot = "Country: France\nCapital: Paris\n\nCountry: Germany\nCapital: Berlin\n\nCountry: Italy\nCapital:"
    ids = tok(few_shot).input_ids
    assert ids[0] == tok.bos_token_id  # Gemma is trained with <bos> first; the GGUF says add_bos_token
    assert _greedy(loaded, ids, 3).strip().startswith("Rome")
    ids = tok("def add(a, b):\n    return").input_ids
    assert _greedy(loaded, ids, 4).strip().startswith("a + b")


def test_minilm_embeddings_put_similar_sentences_close():
    loaded = load_model("minilm-l6", CPU)
    assert type(loaded.model).__name__ == "BertModel" and loaded.family == "encoder"
    texts = ["How do I open a file in Python?", "Reading a file with Python's open()", "The cat sat on the mat."]
    batch = loaded.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = loaded.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # mean pooling, as trained
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
