"""EDA, "Easy Data Augmentation" (Wei & Zou 2019): four word-level edits of an input, none touching the target.

- synonym replacement (sr): n = max(1, alpha_sr * words) distinct non-stop words, each replaced everywhere it
  occurs by a random synonym from the lexicon;
- random insertion (ri): n = max(1, alpha_ri * words) times, a synonym of a random non-stop word of the input is
  inserted at a random position;
- random swap (rs): n = max(1, alpha_rs * words) times, two random words trade places;
- random deletion (rd): each word is deleted with probability alpha_rd; one word always stays.

Each augmented row gets one operation, the operations taking turns from a per-row random start (the paper makes
equal numbers of each). Unlike the paper's code, text is not lower-cased or stripped of punctuation: a word keeps
the punctuation around it and its capitalization, and line breaks survive (inputs may be code or documents).
Words that occur in the target (a QA answer span, a summary's key terms) are never replaced or deleted.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from tqdm.auto import tqdm

from lmtailor.augmentation.augment import AugmentConfig, AugmentContext, Candidate, stable_seed
from lmtailor.augmentation.lexicon import STOP_WORDS, Lexicon, load_wordnet
from lmtailor.core.example import Example
from lmtailor.registry import Registry

# A word with the punctuation around it: "(film)," -> "(", "film", "),". Only plain words are looked up.
_WORD = re.compile(r"^(\W*?)([A-Za-z]+(?:[-'][A-Za-z]+)*)(\W*)$")
_TARGET_WORD = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*")


@dataclass
class Words:
    """A text as its words and the whitespace around them (``seps[i]`` precedes ``words[i]``; one more at the end)."""

    words: list[str]
    seps: list[str]

    @classmethod
    def parse(cls, text: str) -> "Words":
        return cls(re.findall(r"\S+", text), re.split(r"\S+", text))

    def render(self) -> str:
        return "".join(s + w for s, w in zip(self.seps, self.words)) + self.seps[-1]

    def copy(self) -> "Words":
        return Words(list(self.words), list(self.seps))

    def insert(self, position: int, word: str) -> None:
        """Insert ``word`` before ``words[position]`` (at the end when ``position == len(words)``), space-separated."""
        self.words.insert(position, word)
        self.seps.insert(position + 1 if position < len(self.words) - 1 else position, " ")

    def keep(self, indices: Sequence[int]) -> "Words":
        """The words at ``indices`` (ascending); between two kept words the removed stretch's line break survives."""
        seps = [self.seps[0]]
        for a, b in zip(indices, indices[1:]):
            gap = self.seps[a + 1: b + 1]
            seps.append(max(gap, key=lambda s: s.count("\n")))  # the first of the most line breaks
        seps.append(self.seps[-1])
        return Words([self.words[i] for i in indices], seps)


@dataclass
class EdaContext:
    """The lexicon, and the lower-case words that must stay (they occur in the target)."""

    lexicon: Lexicon
    protected: frozenset[str]

    def core(self, token: str) -> str | None:
        """The lower-case word inside ``token`` if it may be replaced or be a synonym's source, else None."""
        match = _WORD.match(token)
        if not match:
            return None
        word = match.group(2).lower()
        return None if word in STOP_WORDS or word in self.protected else word

    def synonyms(self, word: str) -> tuple[str, ...]:
        return self.lexicon.synonyms(word)


def _cased_like(token: str, synonym: str) -> str:
    """``token`` with its word replaced by ``synonym`` in the word's capitalization, punctuation kept."""
    before, word, after = _WORD.match(token).groups()  # type: ignore[union-attr]
    if synonym != synonym.lower():  # a name ("City of Light") keeps its own capitals
        cased = synonym
    elif word.isupper() and len(word) > 1:
        cased = synonym.upper()
    elif word[0].isupper():
        cased = synonym[0].upper() + synonym[1:]
    else:
        cased = synonym
    return before + cased + after


def _count(alpha: float, words: Words) -> int:
    return max(1, int(alpha * len(words.words)))


def synonym_replacement(text: Words, alpha: float, rng: random.Random, ctx: EdaContext) -> Words:
    """Replace up to n distinct non-stop words (every occurrence) with a random synonym each."""
    out = text.copy()
    cores = [ctx.core(t) for t in out.words]
    candidates = sorted({c for c in cores if c and ctx.synonyms(c)})
    rng.shuffle(candidates)
    for word in candidates[: _count(alpha, text)]:
        synonym = rng.choice(ctx.synonyms(word))
        out.words = [_cased_like(t, synonym) if c == word else t for t, c in zip(out.words, cores)]
    return out


def random_insertion(text: Words, alpha: float, rng: random.Random, ctx: EdaContext) -> Words:
    """Insert, n times, a synonym of a random non-stop word of the input at a random position."""
    out = text.copy()
    sources = [c for c in (ctx.core(t) for t in text.words) if c and ctx.synonyms(c)]
    if not sources:
        return out
    for _ in range(_count(alpha, text)):
        synonym = rng.choice(ctx.synonyms(rng.choice(sources)))
        out.insert(rng.randint(0, len(out.words)), synonym)
    return out


def random_swap(text: Words, alpha: float, rng: random.Random, ctx: EdaContext) -> Words:
    """Swap two distinct random positions, n times."""
    out = text.copy()
    if len(out.words) < 2:
        return out
    for _ in range(_count(alpha, text)):
        i, j = rng.sample(range(len(out.words)), 2)
        out.words[i], out.words[j] = out.words[j], out.words[i]
    return out


def random_deletion(text: Words, alpha: float, rng: random.Random, ctx: EdaContext) -> Words:
    """Delete each word with probability alpha (words of the target never); keep one if all would go."""
    if len(text.words) <= 1:
        return text.copy()
    kept = [i for i, t in enumerate(text.words) if _protected(t, ctx) or rng.random() > alpha]
    return text.keep(kept or [rng.randrange(len(text.words))])


def _protected(token: str, ctx: EdaContext) -> bool:
    match = _WORD.match(token)
    return bool(match) and match.group(2).lower() in ctx.protected  # type: ignore[union-attr]


@dataclass(frozen=True)
class EdaOp:
    """An EDA operation and the ``AugmentConfig`` field holding its strength (0 turns it off)."""

    alpha_field: str
    apply: Callable[[Words, float, random.Random, EdaContext], Words]


#: name -> EdaOp; adding an operation is a function, one line here and its alpha field in ``AugmentConfig``.
EDA_OPS: Registry[EdaOp] = Registry("EDA operation")
EDA_OPS.register("sr", EdaOp("alpha_sr", synonym_replacement))
EDA_OPS.register("ri", EdaOp("alpha_ri", random_insertion))
EDA_OPS.register("rs", EdaOp("alpha_rs", random_swap))
EDA_OPS.register("rd", EdaOp("alpha_rd", random_deletion))


def protected_words(target: str) -> frozenset[str]:
    """Lower-case words of the target: an input edit that dropped them could change the answer."""
    return frozenset(w.lower() for w in _TARGET_WORD.findall(target))


def eda_row(row: Example, cfg: AugmentConfig, seed: int, lexicon: Lexicon) -> list[Candidate]:
    """``cfg.factor`` candidates for one row, the active operations taking turns from a seeded start."""
    active = [name for name in EDA_OPS if getattr(cfg, EDA_OPS.get(name).alpha_field) > 0]
    start = random.Random(stable_seed(seed, row.id, "eda-start")).randrange(len(active))
    ctx = EdaContext(lexicon, protected_words(row.target))
    text = Words.parse(row.input)
    out = []
    for k in range(cfg.factor):
        name = active[(start + k) % len(active)]
        op = EDA_OPS.get(name)
        rng = random.Random(stable_seed(seed, row.id, "eda", k))
        out.append(Candidate(row, k, op.apply(text, getattr(cfg, op.alpha_field), rng, ctx).render(), [name]))
    return out


def eda_candidates(rows: list[Example], cfg: AugmentConfig, ctx: AugmentContext) -> list[Candidate]:
    """The EDA method of ``AUGMENT_METHODS``: WordNet synonyms unless the context brings another lexicon."""
    needs_lexicon = cfg.alpha_sr > 0 or cfg.alpha_ri > 0
    lexicon = ctx.lexicon or (load_wordnet() if needs_lexicon else _NoLexicon())
    return [c for row in tqdm(rows, desc="augment: eda", unit="row") for c in eda_row(row, cfg, ctx.seed, lexicon)]


class _NoLexicon:
    """Stands in when only swap and deletion run, so WordNet need not be installed for them."""

    name = "none"

    def synonyms(self, word: str) -> tuple[str, ...]:
        return ()
