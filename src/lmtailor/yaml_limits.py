"""YAML read within limits: a size cap, and a cap on the values a document holds once its aliases are expanded.

PyYAML shares an anchored block between its aliases, so a "billion laughs" file (each level nine aliases of the one
before) loads in microseconds; the blow-up comes later, when validation copies the block or ``experiment.yaml`` is
written out with every alias expanded (3 GB and more). Counting the values a document expands to, before anything is
constructed, refuses such a file at load time, wherever the block sits (``peft_options``, ``data.options``, a
``--set`` value): the same limits hold for every nested block because they are counted over the whole document.
"""

from __future__ import annotations

from typing import Any

import yaml

from lmtailor.errors import UserError

MAX_YAML_BYTES = 1 << 20  # 1 MiB: the largest shipped example is a few KB; data belongs in data files
MAX_YAML_VALUES = 100_000  # scalars, lists and mappings after alias expansion; an experiment needs hundreds
MAX_YAML_DEPTH = 100  # nesting levels; deeper documents are not experiments, and would exhaust Python's stack


class YamlLimitError(UserError, ValueError):
    """A YAML document over the size, expansion or nesting limits; the message names the source and the key."""


def load_within_limits(text: str, loader_class: type, source: str) -> Any:
    """``yaml.load(text, loader_class)``, refusing documents over the limits before any Python object is built.

    ``source`` names the text in messages (a file path, or ``--set KEY``). YAML errors propagate as ``yaml.YAMLError``.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_YAML_BYTES:
        raise YamlLimitError(f"{source}: {size:,} bytes, over the {MAX_YAML_BYTES:,}-byte limit for an experiment "
                             "file; put rows and documents in data files (data.source) and refer to them by path")
    loader = loader_class(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlLimitError(f"{source}: nested too deeply to read (limit {MAX_YAML_DEPTH} levels)") from None
        if node is None:
            return None
        sizes: dict[int, int] = {}
        _expanded_size(node, sizes, set(), 0, source)
        if sizes[id(node)] > MAX_YAML_VALUES:
            path = _culprit(node, sizes)
            raise YamlLimitError(
                f"{source}: {'.'.join(path) or 'the document'} expands to more than {MAX_YAML_VALUES:,} values once "
                "its aliases (*name) are replaced by their anchored blocks (&name), over the limit for an "
                "experiment file; write the values out, or remove the aliases that repeat a block within a block")
        value = loader.construct_document(node)
    finally:
        loader.dispose()
    where = _lone_surrogate(value, [])
    if where is not None:  # YAML's "\\udbff" escape: a value no file, log or tokenizer can take
        raise YamlLimitError(f"{source}: {'.'.join(where[:-1]) or 'a value'} holds the lone surrogate escape "
                             f"{where[-1]} (half of a UTF-16 pair, no character by itself); write the character "
                             "itself, or both halves of its pair")
    return value


def _lone_surrogate(value: Any, path: list[str]) -> list[str] | None:
    """Key path of the first string (key or value) that UTF-8 cannot encode, ending with the offending escape."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return [*path, ascii(value[e.start:e.end])[1:-1]]
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _lone_surrogate(key, path) if isinstance(key, str) else None
        found = found or _lone_surrogate(item, [*path, str(key)])
        if found is not None:
            return found
    return None


def _children(node: yaml.Node) -> list[tuple[str, yaml.Node]]:
    """(key, child) pairs of a collection node: list indexes, mapping keys (a key node counts as a child too)."""
    if isinstance(node, yaml.SequenceNode):
        return [(str(i), child) for i, child in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        out = []
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            out += [(name, key), (name, value)]
        return out
    return []


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int], depth: int, source: str) -> int:
    """Values under ``node`` with every alias expanded (capped just over the limit); memoised on the shared nodes, so
    the walk costs the document's size, not its expansion's."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise YamlLimitError(f"{source}: an alias refers to a block that contains it (a recursive structure); an "
                             "experiment file cannot hold one")
    if depth > MAX_YAML_DEPTH:
        raise YamlLimitError(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep; an experiment file needs a "
                             "handful")
    open_nodes.add(key)
    total = 1
    for _, child in _children(node):
        total = min(total + _expanded_size(child, sizes, open_nodes, depth + 1, source), MAX_YAML_VALUES + 1)
    open_nodes.discard(key)
    sizes[key] = total
    return total


def _culprit(node: yaml.Node, sizes: dict[int, int]) -> list[str]:
    """Key path of the smallest block that is over the limit by itself: where the user should look."""
    path: list[str] = []
    while True:
        over = [(name, child) for name, child in _children(node) if sizes[id(child)] > MAX_YAML_VALUES]
        if not over:
            return path
        name, node = over[0]
        path.append(name)
