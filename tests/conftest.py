"""Session-wide test setup: a private cache directory, no network, and the tiny models every test shares."""

from __future__ import annotations

import os

import pytest

# Set before any test module imports huggingface_hub/transformers, which read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Point LMTAILOR_CACHE at a session temp dir so tests never read or write the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMTAILOR_CACHE", str(tmp_path_factory.mktemp("lmtailor-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_llama_dir(_private_cache):
    """A tiny random Llama (ChatML chat template) saved with its tokenizer; the same dir the alias tiny-llama uses."""
    from lmtailor.models.tiny import tiny_model_dir

    return tiny_model_dir("llama")


@pytest.fixture(scope="session")
def tiny_t5_dir(_private_cache):
    """A tiny random T5 (encoder-decoder) saved with its tokenizer; the dir behind the alias tiny-t5."""
    from lmtailor.models.tiny import tiny_model_dir

    return tiny_model_dir("t5")


@pytest.fixture(scope="session")
def tiny_bert_dir(_private_cache):
    """A tiny random BERT (encoder) saved with its tokenizer; the dir behind the alias tiny-bert."""
    from lmtailor.models.tiny import tiny_model_dir

    return tiny_model_dir("bert")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and with other CPU work running 2 threads were ~20x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_st_dir(tiny_bert_dir, tmp_path_factory) -> str:
    """A random sentence-transformers model (tiny BERT + mean pooling) saved like any other."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    word = Transformer(str(tiny_bert_dir), max_seq_length=64)
    model = SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean")], device="cpu")
    path = tmp_path_factory.mktemp("tiny-st")
    model.save(str(path))
    return str(path)


@pytest.fixture(scope="session")
def llama_cpp():
    """llama-cpp-python with its server (the llamacpp extra, which `make test` installs); the test is skipped
    without it, except under CI=true, where that is a failure."""
    import os

    try:
        import llama_cpp
        import llama_cpp.server  # noqa: F401
    except ImportError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but llama-cpp-python[server] does not import ({e}): make test installs it")
        pytest.skip("llama-cpp-python[server] is not installed (make test installs it: the llamacpp extra)")
    return llama_cpp
