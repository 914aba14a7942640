"""Document corpora for retrieval: a folder of text/Markdown/HTML files, a JSONL file, or ``builtin:pydoc``.

    docs = load_corpus("docs/", base_dir=Path("."), exclude_ids={row.id for row in test_rows})
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterable

from lmtailor.errors import UserError
from lmtailor.registry import Registry

log = logging.getLogger("lmtailor")

TEXT_SUFFIXES = {".txt": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}


class CorpusError(UserError):
    """A corpus that cannot be read: the message names the file (and line) and what to do."""


@dataclass(frozen=True)
class Document:
    """One retrievable document: a stable id, its text, and where it came from."""

    id: str
    text: str
    meta: dict = field(default_factory=dict, compare=False)


def load_corpus(source: str, base_dir: Path, text_field: str = "text", id_field: str | None = None,
                exclude: Callable[[Document], bool] | None = None,
                exclude_ids: Iterable[str] | None = None) -> list[Document]:
    """Load the documents ``source`` names (folder, .jsonl file, or ``builtin:<name>``), minus the excluded ones."""
    if source.startswith("builtin:"):
        docs = BUILTIN_CORPORA.get(source.removeprefix("builtin:"))()
    else:
        path = Path(source).expanduser()
        path = path if path.is_absolute() else Path(base_dir) / path
        if path.is_dir():
            docs = _load_folder(path)
        elif path.is_file() and path.suffix == ".jsonl":
            docs = _load_jsonl(path, text_field, id_field)
        elif path.is_file():
            raise CorpusError(f"corpus {path}: a corpus file must be JSONL (.jsonl, one object per line with a "
                              f"{text_field!r} field); for text, Markdown or HTML files, give their folder")
        else:
            raise CorpusError(f"corpus {source!r}: no such folder or file (looked for {path.resolve()}); give a "
                              f"folder of {', '.join(sorted(TEXT_SUFFIXES))} files, a .jsonl file, or "
                              f"builtin:{' / builtin:'.join(BUILTIN_CORPORA.names())}")
    return _excluded(docs, exclude, set(exclude_ids or ()), source)


def _excluded(docs: list[Document], exclude: Callable[[Document], bool] | None, ids: set[str],
              source: str) -> list[Document]:
    kept = [d for d in docs if d.id not in ids and not (exclude and exclude(d))]
    if len(kept) < len(docs):
        log.info("corpus %s: excluded %d of %d documents", source, len(docs) - len(kept), len(docs))
    if not kept:
        raise CorpusError(f"corpus {source}: no documents left after excluding {len(docs)} (the test rows?)")
    return kept


def _load_folder(folder: Path) -> list[Document]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        seen = sorted({p.suffix or p.name for p in folder.rglob("*") if p.is_file()})[:10]
        raise CorpusError(f"corpus folder {folder} has no {', '.join(sorted(TEXT_SUFFIXES))} files "
                          f"(found: {', '.join(seen) or 'nothing'}); put the documents there, one per file")
    docs, empty = [], 0
    for path in files:
        rel = path.relative_to(folder).as_posix()
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CorpusError(f"corpus file {path}: not UTF-8 text ({e.reason} at byte {e.start}); "
                              "re-save it as UTF-8") from None
        kind = TEXT_SUFFIXES[path.suffix.lower()]
        text = html_to_text(raw) if kind == "html" else raw
        if not text.strip():
            empty += 1
            continue
        docs.append(Document(rel, text, {"path": rel, "format": kind}))
    if empty:
        log.warning("corpus folder %s: skipped %d empty files", folder, empty)
    if not docs:
        raise CorpusError(f"corpus folder {folder}: every file is empty")
    return docs


def _load_jsonl(path: Path, text_field: str, id_field: str | None) -> list[Document]:
    docs: list[Document] = []
    first_line: dict[str, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"corpus {where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise CorpusError(f"corpus {where}: each line must be a JSON object, got {type(row).__name__}")
        for key in (text_field, id_field):
            if key is not None and key not in row:
                raise CorpusError(f"corpus {where}: no {key!r} field (fields: {', '.join(row) or 'none'}); "
                                  f"set the corpus's text/id field to the one that holds it")
        text = row[text_field]
        if not isinstance(text, str):
            raise CorpusError(f"corpus {where}: field {text_field!r} must be a string, got {type(text).__name__}")
        doc_id = str(row[id_field]) if id_field else f"{path.name}:{n}"
        if doc_id in first_line:
            raise CorpusError(f"corpus {where}: id {doc_id!r} was already used on line {first_line[doc_id]}; "
                              "document ids must be unique")
        first_line[doc_id] = n
        if text.strip():
            meta = {k: v for k, v in row.items() if k != text_field}
            docs.append(Document(doc_id, text, {"path": str(path), "line": n, **meta}))
    if not docs:
        raise CorpusError(f"corpus {path}: no documents with non-empty {text_field!r} text")
    return docs


def pydoc_documents() -> list[Document]:
    """One document per documented public stdlib object: id ``module.qualname``, text = that name + docstring.

    ``meta["views"]`` holds the docstring masked as builtin:pydoc-module masks its inputs, so that the leakage
    check (``retrieval/exclusion.py``) finds a twin of a test row's object: another name, the same masked docstring.
    """
    from lmtailor.data.pydoc_module import extract_objects, mask_docstring

    docs: dict[str, Document] = {}
    for obj in extract_objects():
        name = f"{obj['module']}.{obj['qualname']}"
        if obj.get("doc", "").strip() and name not in docs:
            docs[name] = Document(name, f"{name}\n\n{obj['doc']}",
                                  {"module": obj["module"], "qualname": obj["qualname"], "kind": obj.get("kind"),
                                   "views": [mask_docstring(obj["doc"], obj["module"], obj["qualname"])]})
    return list(docs.values())


BUILTIN_CORPORA: Registry[Callable[[], list[Document]]] = Registry("built-in corpus")
BUILTIN_CORPORA.register("pydoc", pydoc_documents)


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page: script/style dropped, block elements on their own lines."""

    BLOCKS = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "pre", "blockquote",
              "h1", "h2", "h3", "h4", "h5", "h6", "title", "header", "footer", "dt", "dd"}
    HIDDEN = {"script", "style", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.HIDDEN:
            self._hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Reduce an HTML page to its visible text with the standard library's parser (paragraphs kept apart)."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    text, blank = [], False
    for line in lines:  # collapse runs of blank lines into one paragraph break
        if line:
            text.append(line)
            blank = False
        elif text and not blank:
            text.append("")
            blank = True
    return "\n".join(text).strip()
