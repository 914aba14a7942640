"""Extract the docstrings of the running Python's standard library: one JSON object per documented public object.

Run as a script in a fresh interpreter (``python -I -S pydoc_extract.py OUT.jsonl``), never imported by lmtailor:
importing ~200 modules has side effects (signal handlers, warnings filters, registered codecs) that must stay out of
the main process, and ``-I -S`` keeps site-packages (``.pth`` hooks that swap stdlib modules) out of the extraction,
so the same Python version yields the same rows. This file imports only the standard library. Any change to it
changes the cache key (a hash of this file's text), so cached extractions never go stale.
"""

from __future__ import annotations

import os
import sys

# lmtailor/data has its own inspect.py: never let the script's folder shadow the standard library (``-I`` already
# keeps it off sys.path; this guards a plain ``python pydoc_extract.py``).
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import ast  # noqa: E402
import inspect  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import warnings  # noqa: E402

# Never imported: they open windows or browsers, print on import, need a display (so they vary by machine),
# or are the test suite / the script being run.
SKIP = {"antigravity", "this", "idlelib", "turtledemo", "turtle", "tkinter", "test", "__main__"}


def _public_modules() -> list[str]:
    return sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP)


def _import(name: str):
    """Import ``name`` quietly; ``None`` when it fails (missing C extension, wrong platform, ...)."""
    out, err = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = io.StringIO()  # some modules print (or emit terminal codes) on import
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated modules warn on import
            return __import__(name)
    except BaseException:  # noqa: BLE001 - anything a module raises on import means "skip it" (incl. SystemExit)
        return None
    finally:
        sys.stdout, sys.stderr = out, err


def _own_doc(obj) -> str | None:
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


# Default values whose repr carries a memory address (``<object object at 0x7f...>``) would differ between runs.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# Paths of this machine (a default of ``basedir=sys.prefix + ...``) must not reach the rows either.
_LOCAL = tuple(p for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.expanduser("~")} if len(p) > 1)


class _Elided:
    """Shown as ``...`` where a default is not a short literal, as type stubs do."""

    def __repr__(self) -> str:
        return "..."


def _portable_default(value):
    """``value`` when its repr is a short literal that reads back equal, else ``...``.

    A default can be any object: ``cgi.parse(environ=os.environ)`` would put this process's environment variables
    into the dataset, and reprs of functions or sentinels change between runs.
    """
    text = repr(value)
    try:
        literal = ast.literal_eval(text) == value
    except Exception:  # noqa: BLE001 - not a literal (or an object whose == raises)
        literal = False
    if not literal or len(text) > 60 or any(p in text for p in _LOCAL):
        return _Elided()
    return value


def _signature(obj) -> str | None:
    """``inspect.signature`` as text, e.g. ``(iterable, /, *, key=None)``; ``None`` where Python cannot tell."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sig = inspect.signature(obj)
        params = [p if p.default is p.empty else p.replace(default=_portable_default(p.default))
                  for p in sig.parameters.values()]
        return _ADDRESS.sub("", str(sig.replace(parameters=params)))
    except Exception:  # noqa: BLE001 - many builtins and some classes have no introspectable signature
        return None


def _methods(cls: type, module: str):
    """Public methods defined in ``cls``'s own ``__dict__`` that carry their own docstring."""
    for name, attr in sorted(cls.__dict__.items()):
        if name.startswith("_"):
            continue
        func = getattr(attr, "__func__", attr)  # classmethod / staticmethod wrappers
        if not inspect.isroutine(func) or getattr(func, "__name__", None) != name:
            continue  # properties, data, aliases (``b = a`` in a class body)
        doc = _own_doc(func)
        if doc:
            # Looked up on the class so that a classmethod's signature drops ``cls`` as callers see it.
            yield {"id": f"{module}.{cls.__name__}.{name}", "module": module, "qualname": f"{cls.__name__}.{name}",
                   "name": name, "kind": "method", "doc": doc, "signature": _signature(getattr(cls, name, func))}


def _objects(module_name: str, module) -> list[dict]:
    rows = []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        # Only objects defined here under their own name: no re-exports, no aliases.
        if getattr(obj, "__module__", None) != module_name or getattr(obj, "__name__", None) != name:
            continue
        doc = _own_doc(obj)
        if doc:
            kind = "class" if inspect.isclass(obj) else "function"
            rows.append({"id": f"{module_name}.{name}", "module": module_name, "qualname": name, "name": name,
                         "kind": kind, "doc": doc, "signature": _signature(obj)})
        if inspect.isclass(obj):
            rows.extend(_methods(obj, module_name))
    return rows


def extract() -> tuple[list[dict], list[str]]:
    """Return (one row per documented public object, sorted by id; the names of the modules that imported)."""
    rows: list[dict] = []
    imported = []
    for name in _public_modules():
        module = _import(name)
        if module is None:
            continue
        imported.append(name)
        rows.extend(_objects(name, module))
    unique = {r["id"]: r for r in rows}
    return [unique[k] for k in sorted(unique)], imported


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -I -S pydoc_extract.py OUT.jsonl", file=sys.stderr)
        return 2
    rows, _ = extract()
    with open(argv[1], "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
