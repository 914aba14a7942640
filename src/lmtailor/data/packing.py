"""Raw text into pre-training examples: documents packed into full-length blocks, and the denoising objectives of
encoder-decoder models (T5's span corruption, BART's text infilling) applied to a block.

Packing is what Hugging Face's ``run_clm.py`` and ``run_t5_mlm_flax.py`` (and LLaMA-Factory, Axolotl, torchtune) do:
tokenize every document, join them into one stream with an end-of-sequence token after each (so the model learns
where a document ends), and cut the stream into blocks of exactly ``block_size`` tokens. Every block is full, so no
position is spent on padding. The last partial block is dropped (as ``run_clm.py`` does) and its tokens are counted
in ``PackedCorpus.dropped_tokens``; nothing else is lost or repeated. Attention is not masked at document boundaries
(the usual practice: the EOS token tells the model a new document starts).

Span corruption follows T5 (Raffel et al. 2020) as ``run_t5_mlm_flax.py`` implements it: about ``noise_density`` of a
block's tokens, in spans of mean length ``mean_noise_span_length``, are each replaced by one sentinel
(``<extra_id_0>``, ``<extra_id_1>``, ... in order) in the input; the target lists each sentinel followed by the tokens
it hid. Both end with EOS.

    input:  Thank you <extra_id_0> me to your party <extra_id_1> week . </s>
    target: <extra_id_0> for inviting <extra_id_1> last <extra_id_2> </s>     (T5 closes with the next sentinel)

Here the target has no closing sentinel: the input ends with the last noise span's sentinel, so the target ends with
that span (``run_t5_mlm_flax.py``'s layout, in which the noise mask always ends with a noise span).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from lmtailor.errors import UserError


@dataclass(frozen=True)
class PackedCorpus:
    """A corpus as equal-length blocks of token ids, with the counts that show nothing was lost."""

    blocks: np.ndarray  # (n_blocks, block_size) int64
    documents: int  # documents in the stream (empty ones included: they still contribute their separator)
    stream_tokens: int  # every document's tokens plus one separator each
    dropped_tokens: int  # the last partial block, shorter than block_size, not trained on

    @property
    def block_size(self) -> int:
        return int(self.blocks.shape[1])

    def summary(self) -> dict:
        """The counts for the run record."""
        return {"documents": self.documents, "stream_tokens": self.stream_tokens, "block_size": self.block_size,
                "blocks": int(self.blocks.shape[0]), "dropped_tail_tokens": self.dropped_tokens}


def pack_documents(documents: Iterable[Sequence[int]], block_size: int, separator: int | None) -> PackedCorpus:
    """Join tokenized documents into one stream (``separator`` after each, when given) and cut it into blocks.

    The stream is ``blocks.ravel()`` followed by the ``dropped_tokens`` of the last partial block.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    pieces, n_docs = [], 0
    tail = np.array([separator], dtype=np.int64) if separator is not None else None
    for ids in documents:
        pieces.append(np.asarray(ids, dtype=np.int64))
        if tail is not None:
            pieces.append(tail)
        n_docs += 1
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise UserError(f"the corpus has {len(stream)} tokens ({n_docs} documents), less than one block of "
                        f"{block_size}; give a larger corpus or a smaller block_size")
    blocks = stream[: n_blocks * block_size].reshape(n_blocks, block_size)
    return PackedCorpus(blocks, n_docs, len(stream), len(stream) - n_blocks * block_size)


def noise_span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) for a block of ``length`` tokens, as T5 fixes them (both at least 1)."""
    noise = min(max(int(round(length * noise_density)), 1), length - 1)
    spans = max(int(round(noise / mean_noise_span_length)), 1)
    return noise, spans


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of ``length`` marking the noise tokens: spans alternate non-noise, noise, beginning with
    non-noise and ending with noise; the counts are fixed by ``noise_span_counts``, the span lengths are random."""
    if length < 2:
        raise ValueError(f"a noise mask needs at least 2 tokens, got {length}")
    noise, spans = noise_span_counts(length, noise_density, mean_noise_span_length)
    spans = min(spans, noise, length - noise)  # every span non-empty

    def segment_lengths(items: int) -> np.ndarray:
        """Split ``items`` into ``spans`` random non-empty segments (uniformly among such splits)."""
        cuts = np.sort(rng.choice(np.arange(1, items), size=spans - 1, replace=False)) if spans > 1 else []
        return np.diff(np.concatenate([[0], cuts, [items]])).astype(np.int64)

    interleaved = np.stack([segment_lengths(length - noise), segment_lengths(noise)], axis=1).ravel()
    return np.repeat(np.arange(2 * spans) % 2 == 1, interleaved)


def span_corruption_lengths(input_length: int, noise_density: float,
                            mean_noise_span_length: float) -> tuple[int, int]:
    """(raw block length, target length) such that a corrupted block's input is exactly ``input_length`` tokens,
    EOS included (T5's ``random_spans_helper``): pack raw blocks of the first length to fill the encoder."""
    def lengths(raw: int) -> tuple[int, int]:
        noise, spans = noise_span_counts(raw, noise_density, mean_noise_span_length)
        return raw - noise + spans + 1, noise + spans + 1

    raw = input_length
    while lengths(raw + 1)[0] <= input_length:
        raw += 1
    return raw, lengths(raw)[1]


def span_corruption(block: Sequence[int], sentinel_ids: Sequence[int], eos_id: int, noise_density: float,
                    mean_noise_span_length: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """T5 span corruption of one block: (input ids, target ids). Noise span k becomes ``sentinel_ids[k]`` in the
    input; the target is each sentinel followed by the span it replaced. Both end with ``eos_id``."""
    ids = np.asarray(block, dtype=np.int64)
    mask = random_spans_noise_mask(len(ids), noise_density, mean_noise_span_length, rng)
    starts = mask & ~np.concatenate([[False], mask[:-1]])  # first token of each noise span
    n_spans = int(starts.sum())
    if n_spans > len(sentinel_ids):
        raise UserError(f"a block of {len(ids)} tokens has {n_spans} noise spans but the tokenizer has "
                        f"{len(sentinel_ids)} sentinel tokens; lower block_size or mean_noise_span_length")
    span_ids = np.asarray(sentinel_ids[:n_spans], dtype=np.int64)
    sentinel_at = np.zeros_like(ids)
    sentinel_at[starts] = span_ids
    inputs = np.where(starts, sentinel_at, ids)[~mask | starts]  # kept tokens, one sentinel per noise span
    # the hidden tokens, each span preceded by its sentinel
    targets = np.insert(ids[mask], np.flatnonzero(starts[mask]), span_ids)
    inputs, targets = inputs.tolist(), targets.tolist()
    return inputs + [eos_id], targets + [eos_id]


def text_infilling(block: Sequence[int], mask_id: int, noise_density: float, mean_noise_span_length: float,
                   rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """BART's text infilling on one block: each noise span becomes a single ``mask_id`` in the input; the target is
    the whole block (the decoder rewrites the text, filling each gap with however many tokens it hid).

    Span lengths come from the same random segmentation as T5's, not BART's Poisson(3) draw, and sentences are not
    permuted: the objective is BART's, the noise schedule is simplified. Special tokens are added by the caller.
    """
    ids = np.asarray(block, dtype=np.int64)
    mask = random_spans_noise_mask(len(ids), noise_density, mean_noise_span_length, rng)
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    inputs = np.where(starts, mask_id, ids)[~mask | starts]
    return inputs.tolist(), ids.tolist()
