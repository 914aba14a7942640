"""llama.cpp (through llama-cpp-python) as an inference engine for decoder-only models stored as GGUF files.

The engine takes lmtailor's own prompt token ids (``prompting/formats.encode_prompt`` with the model's Hugging Face
tokenizer), never text: prompts, labels and stop tokens are then the same ids for both engines. For SmolLM2 the ids
equal what llama.cpp's own chat formatter (the GGUF's Jinja template, ``llama_chat_format.Jinja2ChatFormatter``)
and tokenizer give, which ``tests/test_llamacpp_backend.py`` checks.

One ``Llama`` context holds one sequence. Its KV cache is reused by prefix: evaluating a sequence keeps the cached
positions it shares with the previous one (``Llama.eval`` drops what lies past ``n_tokens``), which is how the
few-shot prefix shared by every prompt, and each prompt shared by its labels, are computed once. Decoding is our
own greedy loop over the logits of the last position (``llama_get_logits_ith``), so a label trie can restrict it;
``logits_all`` stays off (it would run the 49k-wide output layer on every prompt token).

Which GGUF: ``gguf_for(ref)`` — an embedded alias that ships one, a ``.gguf`` path, or a directory holding exactly
one (``lmtailor export RUN --merge --gguf`` writes a fine-tuned model's there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lmtailor.errors import UserError
from lmtailor.inference.generation import SamplingParams
from lmtailor.models.cache import build_once
from lmtailor.models.embedded import EMBEDDED_MODELS
from lmtailor.models.families import family_of
from lmtailor.models.loading import adapter_of, load_tokenizer
from lmtailor.paths import cache_dir
from lmtailor.remote.reference import is_remote

INSTALL_HINT = ("install the llamacpp extra: `make .venv/.lmtailor-llamacpp-installed`, or "
                "CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON\" "
                "pip install 'lmtailor[llamacpp]' (it compiles llama.cpp, several minutes; a -march=native build can "
                "die with SIGILL on VMs that hide CPU features)")
DEFAULT_N_CTX = 4096


def import_llama_cpp():
    """The ``llama_cpp`` module, or a UserError saying how to install it."""
    try:
        import llama_cpp
    except ImportError as e:
        raise UserError(f"backend: llamacpp needs llama-cpp-python, which does not import ({e}); {INSTALL_HINT}") from e
    return llama_cpp


def gguf_for(model_ref: str) -> Path:
    """The GGUF file llama.cpp runs for ``model_ref``; a UserError saying how to get one when there is none."""
    for entry in EMBEDDED_MODELS:
        if entry.alias == model_ref and entry.gguf is not None:
            return _embedded_gguf(entry)
    local = Path(model_ref).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        return local.resolve()
    if local.is_dir():
        found = sorted(local.glob("*.gguf"))
        if len(found) == 1:
            return found[0].resolve()
        if len(found) > 1:
            raise UserError(f"backend: llamacpp: {local} holds several GGUF files ({', '.join(p.name for p in found)});"
                            " name one as the model")
    raise UserError(f"backend: llamacpp runs GGUF files, and {model_ref!r} has none: use an embedded model that "
                    "ships one (smollm2-135m-instruct), a .gguf path, or export a trained row with "
                    "`lmtailor export RUN_DIR --merge --gguf` and use the .gguf it writes")


def _embedded_gguf(entry) -> Path:
    """An embedded model's GGUF file: in its package, or assembled once into the cache (gemma3-270m's parts)."""
    gguf = entry.gguf
    pkg = entry.require_installed()
    if (pkg / gguf.file_name).is_file():
        return pkg / gguf.file_name
    built = build_once(cache_dir() / "gguf-files" / f"{entry.alias}-{gguf.digest(pkg)[:16]}",
                       lambda tmp: gguf.materialize(pkg, tmp))
    return built / gguf.file_name


def check_decoder_only(model_ref: str) -> None:
    """Refuse encoders and encoder-decoders: llama.cpp here runs decoder-only GGUF models."""
    path = Path(model_ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":  # its metadata says: no need to convert the weights to ask
        from transformers import AutoConfig

        family = family_of(AutoConfig.from_pretrained(path.parent, gguf_file=path.name))
    else:
        family = adapter_of(model_ref)
    if not family.gguf:
        raise UserError(f"backend: llamacpp runs decoder-only models; {model_ref} is {family.name}. Use "
                        "backend: transformers for it")


def gguf_type_name(file_type: int | str | None) -> str:
    """The GGUF's weight type as llama.cpp names it (``general.file_type`` 3 -> ``Q4_1``)."""
    if file_type is None:
        return "unknown"
    from gguf import LlamaFileType

    try:
        return LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").replace("ALL_", "")
    except ValueError:
        return f"file_type {file_type}"


def trained_context(gguf_path: Path) -> int:
    """The context length the GGUF's model was trained for (``<arch>.context_length``), read without the weights."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    arch = reader.get_field("general.architecture")
    field = arch and reader.get_field(f"{arch.contents()}.context_length")
    if field is None:
        raise UserError(f"{gguf_path}: the GGUF has no context length (general.architecture / <arch>.context_length)")
    return int(field.contents())


def _pick(logits: np.ndarray, choices: list[int] | None, sampling: SamplingParams | None,
          rng: np.random.Generator | None) -> int:
    """The next token: the most likely (among ``choices`` when given), or drawn with temperature and top-p."""
    if choices is not None:
        sub = logits[choices]
        return int(choices[int(np.argmax(sub))]) if sampling is None else int(choices[_sample(sub, sampling, rng)])
    return int(np.argmax(logits)) if sampling is None else _sample(logits, sampling, rng)


def _sample(logits: np.ndarray, sampling: SamplingParams, rng) -> int:
    """Index drawn from softmax(logits / temperature) cut to the smallest set holding ``top_p`` of the mass."""
    z = logits.astype(np.float64) / sampling.temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    keep = int(np.searchsorted(np.cumsum(probs[order]), sampling.top_p)) + 1  # the token crossing top_p stays
    kept = order[:keep]
    return int(kept[rng.choice(len(kept), p=probs[kept] / probs[kept].sum())])


class LlamaCppModel:
    """A GGUF model in one llama.cpp context, fed token ids; keeps the cache of the previous sequence's prefix."""

    def __init__(self, gguf_path: Path, n_ctx: int | None = None, n_threads: int | None = None) -> None:
        import torch

        llama_cpp = import_llama_cpp()
        self.path = Path(gguf_path)
        threads = n_threads or torch.get_num_threads() or os.cpu_count() or 1
        if n_ctx is None:
            n_ctx = min(DEFAULT_N_CTX, trained_context(self.path))
        self.llm: Any = llama_cpp.Llama(str(self.path), n_ctx=n_ctx, n_batch=min(512, n_ctx), n_threads=threads,
                                        n_threads_batch=threads, logits_all=False, verbose=False)
        self._lib = llama_cpp
        self.n_ctx = self.llm.n_ctx()
        self.n_vocab = self.llm.n_vocab()
        self.n_params = int(llama_cpp.llama_model_n_params(self.llm.model))
        self.gguf_type = gguf_type_name(self.llm.metadata.get("general.file_type"))
        self.evaluated = 0  # tokens run through the model (cache reuse excluded)

    def describe(self) -> dict:
        """What a result record says about the engine."""
        return {"backend": "llamacpp", "gguf": {"file": str(self.path), "type": self.gguf_type, "n_ctx": self.n_ctx,
                                                "params": self.n_params}}

    def logits_after(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits (float32, vocabulary-wide) after ``ids``, reusing the cached prefix shared with the
        previous call."""
        ids = list(ids)
        if not ids:
            raise ValueError("logits_after needs at least one token")
        if len(ids) > self.n_ctx:
            raise UserError(f"backend: llamacpp: a sequence of {len(ids)} tokens does not fit the context of "
                            f"{self.n_ctx} tokens; lower budget.max_input_tokens or the number of shots")
        llm = self.llm
        cached = llm.input_ids[: llm.n_tokens]
        shared = 0
        limit = min(len(cached), len(ids) - 1)  # at least one token is evaluated: its logits are the answer
        while shared < limit and cached[shared] == ids[shared]:
            shared += 1
        llm.n_tokens = shared  # eval() removes the cache past n_tokens before decoding the rest
        llm.eval(ids[shared:])
        self.evaluated += len(ids) - shared
        pointer = self._lib.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def greedy(self, prompt: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int],
               allowed: Callable[[list[int]], list[int]] | None = None) -> list[int]:
        """Greedy answer ids after ``prompt`` (stop token kept); ``allowed(answer so far)`` limits each step."""
        return self.decode(prompt, max_new_tokens, stop_ids, allowed)

    def decode(self, prompt: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int],
               allowed: Callable[[list[int]], list[int]] | None = None, sampling: SamplingParams | None = None,
               on_token: Callable[[int], bool] | None = None) -> list[int]:
        """Answer ids after ``prompt`` (stop token kept): greedy, or sampled like ``generate_ids`` (temperature and
        nucleus, no top-k) from a generator seeded by ``sampling.seed``. ``on_token(token) -> True`` ends the answer
        early (a server's per-request stop strings and cancellation)."""
        if len(prompt) + max_new_tokens > self.n_ctx:
            raise UserError(f"backend: llamacpp: a prompt of {len(prompt)} tokens plus {max_new_tokens} new tokens "
                            f"does not fit the context of {self.n_ctx} tokens; lower budget.max_input_tokens or "
                            "budget.max_new_tokens")
        rng = np.random.default_rng(sampling.seed) if sampling is not None else None
        stops, answer = set(int(t) for t in stop_ids), []
        logits = self.logits_after(prompt)
        for _ in range(max_new_tokens):
            choices = (allowed(answer) or list(stop_ids)) if allowed is not None else None
            token = _pick(logits, choices, sampling, rng)
            answer.append(token)
            ended = on_token(token) if on_token is not None else False
            if ended or token in stops or len(answer) == max_new_tokens:
                break
            self.llm.eval([token])
            self.evaluated += 1
            logits = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self.llm.ctx, -1),
                                           shape=(self.n_vocab,)).copy()
        return answer

    def close(self) -> None:
        """Free the llama.cpp context and weights now rather than at garbage collection."""
        self.llm.close()


@dataclass
class LoadedLlamaCpp:
    """A GGUF model in llama.cpp with the Hugging Face tokenizer that writes its prompts."""

    model: LlamaCppModel
    tokenizer: Any
    ref: str


def load_llamacpp(model_ref: str, n_ctx: int | None = None) -> LoadedLlamaCpp:
    """Load ``model_ref``'s GGUF into llama.cpp and its Hugging Face tokenizer (for prompts, labels, stop ids)."""
    if is_remote(model_ref):
        raise UserError(f"{model_ref} is an API endpoint: backend: llamacpp runs local GGUF files; drop the backend "
                        "setting for an openai: model")
    import_llama_cpp()
    gguf = gguf_for(model_ref)
    check_decoder_only(model_ref)
    folder = Path(model_ref).expanduser()
    if folder.is_dir() and (folder / "tokenizer_config.json").is_file():  # an export: its own tokenizer files
        tokenizer = load_tokenizer(str(folder))
    else:  # an embedded alias or a .gguf: the tokenizer is in the GGUF (converting the weights would be wasted)
        tokenizer = load_tokenizer(str(gguf.parent), gguf_file=gguf.name)
    return LoadedLlamaCpp(LlamaCppModel(gguf, n_ctx=n_ctx), tokenizer, model_ref)
