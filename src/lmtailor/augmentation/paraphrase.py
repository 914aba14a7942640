"""Model-based augmentation: paraphrase an input, or translate it to a pivot language and back, with any
generation model lmtailor can load (decoder-only through its chat or plain template, encoder-decoder through the
Flan-style source text).

Prompts are built by the same code as task prompts (``prompting/formats.py``, ``prompting/seq2seq_format.py``), with the
augmentation instruction as the task instruction. With ``temperature`` 0 decoding is greedy (``generate_ids``);
above 0 it samples (needed for more than one new row per input) with torch's RNG seeded per batch inside
``fork_rng``, so the global RNG is left as it was and the same seed gives the same texts. Time, tokens and the
FLOP estimate go into the meter's "data" phase: a teacher's work is part of the cost of the data.
"""

from __future__ import annotations

from typing import Any, Sequence

from tqdm.auto import tqdm

from lmtailor.augmentation.augment import AugmentConfig, AugmentContext, Candidate, stable_seed
from lmtailor.core.example import Example
from lmtailor.core.task_spec import TaskSpec
from lmtailor.errors import UserError
from lmtailor.inference.generation import SamplingParams, generate_ids
from lmtailor.inference.hf_rows import pad_token_id
from lmtailor.measure.meter import estimate_flops
from lmtailor.models.families import family_of, model_family
from lmtailor.models.loading import adapter_of, load_model
from lmtailor.prompting.formats import build_messages, encode_prompt, stop_token_ids, truncate_text
from lmtailor.prompting.seq2seq_format import encode_source, source_text
from lmtailor.runtime import detect_runtime

PARAPHRASE_INSTRUCTION = ("Paraphrase the input: say the same thing in different words, keeping its meaning. "
                          "Reply with the paraphrase only.")


def translate_instruction(language: str) -> str:
    """The instruction of one back-translation leg."""
    return f"Translate the input into {language}. Reply with the translation only."


def paraphrase_candidates(rows: list[Example], cfg: AugmentConfig, ctx: AugmentContext) -> list[Candidate]:
    """The paraphrase method: ``cfg.factor`` paraphrases of each input."""
    lm = _generator(cfg, ctx)
    jobs = [(row, k) for row in rows for k in range(cfg.factor)]
    texts = generate_texts(lm, PARAPHRASE_INSTRUCTION, [row.input for row, _ in jobs], cfg,
                           stable_seed(ctx.seed, "paraphrase"), ctx.meter, "paraphrase")
    model = {"model": _ref(cfg, lm)}
    return [Candidate(row, k, text, ["paraphrase"], model) for (row, k), text in zip(jobs, texts)]


def back_translation_candidates(rows: list[Example], cfg: AugmentConfig, ctx: AugmentContext) -> list[Candidate]:
    """The back-translation method: each input to ``cfg.pivot_language`` ``cfg.factor`` times, then each back."""
    lm = _generator(cfg, ctx)
    jobs = [(row, k) for row in rows for k in range(cfg.factor)]
    pivots = generate_texts(lm, translate_instruction(cfg.pivot_language), [row.input for row, _ in jobs], cfg,
                            stable_seed(ctx.seed, "back-translation", "out"), ctx.meter,
                            f"to {cfg.pivot_language}")
    ready = [i for i, p in enumerate(pivots) if p]  # an empty pivot has nothing to translate back
    backs = generate_texts(lm, translate_instruction(cfg.source_language), [pivots[i] for i in ready], cfg,
                           stable_seed(ctx.seed, "back-translation", "back"), ctx.meter,
                           f"to {cfg.source_language}")
    back_of = dict(zip(ready, backs))
    op = f"back-translation:{cfg.pivot_language}"
    return [Candidate(row, k, back_of.get(i, ""), [op], {"model": _ref(cfg, lm), "pivot": pivots[i]})
            for i, (row, k) in enumerate(jobs)]


def _ref(cfg: AugmentConfig, lm: Any) -> str:
    return cfg.model or getattr(lm, "ref", None) or "given"


def _generator(cfg: AugmentConfig, ctx: AugmentContext) -> Any:
    """The model passed in, else ``cfg.model`` loaded (in the "data" phase: a teacher is part of the data cost)."""
    if ctx.generator is not None:
        lm = ctx.generator
    elif cfg.model is None:
        raise UserError(f"augmentation method {cfg.method!r} generates text with a model: set augment.model to a "
                        "generation model (alias, local directory or hub id)")
    else:
        runtime = ctx.runtime or detect_runtime()
        if not adapter_of(cfg.model, runtime.trust_remote_code).generates_text:
            raise UserError(f"augment.model {cfg.model!r} is an encoder (BERT-like): it cannot generate text. Use a "
                            "decoder-only or encoder-decoder model for paraphrase and back-translation")
        lm = load_model(cfg.model, runtime)
    if not hasattr(lm, "model") or not hasattr(lm, "tokenizer"):
        raise TypeError("generator must be a LoadedModel (or have .model and .tokenizer)")
    if not _generates_text(lm):
        raise UserError(f"the model given for {cfg.method} is an encoder (BERT-like): it cannot generate text")
    return lm


def _generates_text(lm: Any) -> bool:
    """Whether a generator's family has a language-model head (a generator that names no family is trusted)."""
    family = getattr(lm, "family", None)
    return family is None or family_of(family).generates_text


def _prompts(tokenizer, seq2seq: bool, instruction: str, texts: Sequence[str],
             max_input_tokens: int) -> list[list[int]]:
    spec = TaskSpec("augment", "generation", instruction)
    cut = [truncate_text(tokenizer, t, max_input_tokens)[0] for t in texts]
    if seq2seq:
        return [encode_source(tokenizer, source_text(spec, t)) for t in cut]
    return [encode_prompt(tokenizer, build_messages(spec, t)) for t in cut]


def generate_texts(lm: Any, instruction: str, texts: Sequence[str], cfg: AugmentConfig, seed: int, meter: Any,
                   desc: str) -> list[str]:
    """One generated text per input (empty when the model wrote nothing); tokens counted into "data"."""
    if not texts:
        return []
    model, tokenizer = lm.model, lm.tokenizer
    seq2seq = model_family(model).seq2seq
    prompts = _prompts(tokenizer, seq2seq, instruction, texts, cfg.max_input_tokens)
    stops = (tokenizer.eos_token_id,) if seq2seq else stop_token_ids(tokenizer)
    pad_id = pad_token_id(tokenizer)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc=f"augment: {desc}", unit="row")
    try:
        sampling = SamplingParams(cfg.temperature, cfg.top_p, seed) if cfg.temperature > 0 else None
        out = generate_ids(model, prompts, cfg.max_new_tokens, stops, pad_id, cfg.batch_size, on_batch=bar.update,
                           sampling=sampling)
    finally:
        bar.close()
        model.train(was_training)
    if meter is not None:
        meter.add_tokens("data", out.tokens)
        meter.add_flops("data", estimate_flops(sum(p.numel() for p in model.parameters()), out.tokens, "inference"))
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out.ids]
