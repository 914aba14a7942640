"""The teacher that writes synthetic rows: what synthetic-data generation asks of it, and the local-model teacher.

``generate_synthetic`` only talks to a ``Teacher``: prompts go in as chat messages and sampled texts come out with
their token counts, so an OpenAI-compatible endpoint can become a teacher by implementing the same few methods.
``HFTeacher`` is a transformers model already loaded in this process (any decoder-only or encoder-decoder model
of the registry). ``generate_ids`` in ``inference/generation.py`` decodes greedily only, so sampling is done here
with the same left/right padding rules.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol, Sequence

from lmtailor.errors import UserError
from lmtailor.prompting.formats import encode_prompt, stop_token_ids, truncate_text
from lmtailor.prompting.seq2seq_format import encode_source


@dataclass(frozen=True)
class Sampling:
    """How a teacher samples: temperature 0 means greedy. ``seed`` makes a call reproducible on its own."""

    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    # Text the reply is made to start with (the teacher continues it; the returned text includes it). Small
    # models asked for a layout often write prose first; starting their reply with "Input:" keeps them in it.
    reply_start: str = ""


@dataclass(frozen=True)
class Completion:
    """One sampled reply and the real tokens it cost (prompt without padding, generated up to the stop token)."""

    text: str
    prompt_tokens: int
    completion_tokens: int


class Teacher(Protocol):
    """What synthetic-data generation needs from the model that writes rows."""

    ref: str  # the model reference, recorded in every row's provenance

    def identity(self) -> str:
        """What its outputs depend on besides the prompt (weights, template), as a digest for the cache key."""
        ...

    def parameter_count(self) -> int | None:
        """Parameters, for the FLOP estimate (None when unknown, e.g. a remote endpoint)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Length of ``text`` in the teacher's tokens (the length filter counts these)."""
        ...

    def truncate(self, text: str, max_tokens: int) -> str:
        """``text`` cut to its first ``max_tokens`` tokens (long seed inputs shown in a prompt)."""
        ...

    def complete(self, prompts: Sequence[list[dict]], sampling: Sampling) -> list[Completion]:
        """Sample one reply per prompt (each a list of chat messages), in the prompts' order."""
        ...


def weights_digest(model) -> str:
    """sha256 over the model's tensors (names, dtypes, shapes, bytes): the same weights give the same digest,
    whether they came from a directory, the hub or a fine-tuning run in this process."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}\0".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


class HFTeacher:
    """A loaded transformers model and its tokenizer as a teacher; prompts go through its chat template."""

    def __init__(self, model, tokenizer, ref: str, identity: str | None = None) -> None:
        from lmtailor.models.families import model_family

        self.family = model_family(model)
        if not self.family.generates_text:
            raise UserError(f"teacher {ref!r} is an encoder (no language-model head), so it cannot write text; "
                            "use a decoder-only or encoder-decoder model as the synthetic-data teacher")
        self.model, self.tokenizer, self.ref = model, tokenizer, ref
        self._identity = identity

    def identity(self) -> str:
        """The weights digest (computed once) plus the chat template, which shapes every prompt."""
        if self._identity is None:
            template = getattr(self.tokenizer, "chat_template", None) or ""
            what = f"{type(self.model).__name__}\0{weights_digest(self.model)}\0{template}"
            self._identity = hashlib.sha256(what.encode()).hexdigest()[:24]
        return self._identity

    def parameter_count(self) -> int | None:
        return sum(p.numel() for p in self.model.parameters())

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def truncate(self, text: str, max_tokens: int) -> str:
        return truncate_text(self.tokenizer, text, max_tokens)[0]

    @cached_property
    def _stop_ids(self) -> list[int]:
        if self.family.seq2seq:  # the decoder's own sequence ends at eos
            return [self.tokenizer.eos_token_id]
        return list(stop_token_ids(self.tokenizer))

    def _encode(self, messages: list[dict]) -> list[int]:
        if self.family.seq2seq:  # no chat template: the turns' text is the encoder's source
            return encode_source(self.tokenizer, "\n\n".join(m["content"] for m in messages))
        return encode_prompt(self.tokenizer, messages)

    def complete(self, prompts: Sequence[list[dict]], sampling: Sampling) -> list[Completion]:
        """Sample all prompts as one padded batch (``generate_ids``; temperature 0 decodes greedily)."""
        from lmtailor.inference.generation import SamplingParams, generate_ids
        from lmtailor.inference.hf_rows import pad_token_id

        ids = [self._encode(p) for p in prompts]
        if sampling.reply_start and not self.family.seq2seq:  # a decoder's reply continues its prompt
            start_ids = self.tokenizer(sampling.reply_start, add_special_tokens=False)["input_ids"]
            ids = [p + start_ids for p in ids]
            lead = sampling.reply_start
        else:
            lead = ""
        how = SamplingParams(sampling.temperature, sampling.top_p, sampling.seed) if sampling.temperature > 0 else None
        was_training = self.model.training
        self.model.eval()
        try:
            out = generate_ids(self.model, ids, sampling.max_new_tokens, self._stop_ids, pad_token_id(self.tokenizer),
                               batch_size=max(1, len(ids)), sampling=how)
        finally:
            self.model.train(was_training)
        return [Completion(lead + self.tokenizer.decode(new, skip_special_tokens=True), len(prompt), len(new))
                for prompt, new in zip(ids, out.ids)]
