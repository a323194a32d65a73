"""Reading a YAML document node by node, with every problem tied to its file and line.

A rules file is validated strictly: a typo such as `resouce:` would otherwise silently
widen a rule to every resource. So the document is composed into nodes (which keep
their line numbers), and each value is read by a typed reader that reports what it
expected and what it got. `Problems` collects them, bounded: a 4 MiB file can hold a
million problems, and only the first MAX_LISTED (in file order) are kept as text.
"""

from __future__ import annotations

import difflib
import heapq
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from healert_webhook.rules.model import MAX_LISTED, RulesError, Superseded

# How often a load looks whether a newer version of the file is waiting, in YAML nodes.
CHECK_NODES = 4096
# libyaml's parser when PyYAML has it (3x faster here; the same nodes, marks and tags).
_BASE_LOADER: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BASE_RESOLVE = _BASE_LOADER.resolve
# Decodes YAML 1.1 booleans and integers exactly as the safe loader does.
_SCALARS = yaml.constructor.SafeConstructor()
STR = "tag:yaml.org,2002:str"
BOOL = "tag:yaml.org,2002:bool"
INT = "tag:yaml.org,2002:int"
Node = yaml.Node


class _Listed:
    """The first MAX_LISTED texts in file order (line, then arrival), and a count of all.

    A bounded heap, so a file of a million problems costs memory for MAX_LISTED of them.
    """

    def __init__(self) -> None:
        self.total = 0
        self._heap: list[tuple[int, int, str]] = []  # (-line, -arrival, text): max on top

    def add(self, line: int, text: str) -> None:
        self.total += 1
        item = (-line, -self.total, text)
        if len(self._heap) < MAX_LISTED:
            heapq.heappush(self._heap, item)
        elif item > self._heap[0]:  # earlier in the file than the last one kept
            heapq.heapreplace(self._heap, item)

    def first(self) -> list[str]:
        """The kept texts, in file order."""
        return [text for _, _, text in sorted(self._heap, reverse=True)]


class Problems:
    """The errors and warnings of one file, each with the file name and the node's line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._errors = _Listed()
        self._warnings = _Listed()

    def error(self, node: Node | None, where: str, message: str) -> None:
        """Record that the value at `where` cannot be used."""
        line = line_of(node)
        self._errors.add(line, f"{self.source}:{line}: {where}: {message}")

    def warn(self, node: Node | None, where: str, message: str) -> None:
        """Record that the value at `where` is usable but likely not what was meant."""
        line = line_of(node)
        self._warnings.add(line, f"{self.source}:{line}: {where}: {message}")

    @property
    def errors(self) -> int:
        """How many errors so far."""
        return self._errors.total

    @property
    def problems(self) -> list[str]:
        """The first MAX_LISTED errors, in file order."""
        return self._errors.first()

    @property
    def warnings(self) -> list[str]:
        """The first MAX_LISTED warnings, in file order."""
        return self._warnings.first()

    @property
    def warnings_total(self) -> int:
        """How many warnings in all."""
        return self._warnings.total


def line_of(node: Node | None) -> int:
    """The 1-based line a node starts on (1 without a node)."""
    return node.start_mark.line + 1 if node is not None else 1


def kind_of(node: Node) -> str:
    """What a node holds, in words (for "expected X, got Y")."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:null":
        return "nothing (null)"
    if node.tag == BOOL:
        return "a boolean"
    if node.tag in (INT, "tag:yaml.org,2002:float"):
        return "a number"
    return "a string"


def items(ctx: Problems, node: yaml.MappingNode, where: str,
          allowed: tuple[str, ...]) -> Iterator[tuple[str, Node]]:
    """Yield (key, value node) pairs, reporting unknown and duplicate keys."""
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str):
            ctx.error(key_node, where, "keys must be plain names")
            continue
        if key in seen:
            ctx.error(key_node, f"{where}.{key}", "duplicate key")
            continue
        seen.add(key)
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            ctx.error(key_node, f"{where}.{key}",
                      f"unknown key{hint}; allowed: {', '.join(allowed)}")
            continue
        yield key, value_node


def read_string(ctx: Problems, node: Node, where: str) -> str | None:
    """A string, or None (reported)."""
    if isinstance(node, yaml.ScalarNode) and node.tag == STR:
        return str(node.value)
    hint = " (write a single value, or use the plural field for a list)" \
        if isinstance(node, yaml.SequenceNode) else ""
    ctx.error(node, where, f"expected a string, got {kind_of(node)}{hint}")
    return None


def read_string_list(ctx: Problems, node: Node, where: str) -> list[str] | None:
    """A list of non-empty strings, or None (reported)."""
    if not isinstance(node, yaml.SequenceNode):
        hint = " (write it as a list: '- value')" if isinstance(node, yaml.ScalarNode) else ""
        ctx.error(node, where, f"expected a list of strings, got {kind_of(node)}{hint}")
        return None
    values: list[str] = []
    for index, item in enumerate(node.value):
        value = read_string(ctx, item, f"{where}[{index}]")
        if value is not None:
            if not value.strip():
                ctx.error(item, f"{where}[{index}]", "empty string")
            values.append(value)
    return values


def read_one_or_more(ctx: Problems, node: Node, where: str) -> list[str] | None:
    """A string or a list of strings (the match fields added to the old format take both)."""
    if isinstance(node, yaml.ScalarNode):
        value = read_string(ctx, node, where)
        if value is not None and not value.strip():
            ctx.error(node, where, "empty string")
        return None if value is None else [value]
    return read_string_list(ctx, node, where)


def read_bool(ctx: Problems, node: Node, where: str) -> bool | None:
    """true or false, or None (reported)."""
    if isinstance(node, yaml.ScalarNode) and node.tag == BOOL:
        return bool(_SCALARS.construct_yaml_bool(node))
    ctx.error(node, where, f"expected true or false, got {kind_of(node)}")
    return None


def read_int(ctx: Problems, node: Node, where: str) -> int | None:
    """A whole number, or None (reported)."""
    if isinstance(node, yaml.ScalarNode) and node.tag == INT:
        return int(_SCALARS.construct_yaml_int(node))
    ctx.error(node, where, f"expected a whole number, got {kind_of(node)}")
    return None


class _CheckedLoader(_BASE_LOADER):  # type: ignore[misc]
    """The loader, looking every CHECK_NODES nodes whether the load was superseded.

    libyaml's composer calls `resolve` for each node it builds, so raising Superseded
    there abandons even the composition of a huge file within milliseconds.
    """

    superseded: Callable[[], bool] = staticmethod(lambda: False)
    _until_check = CHECK_NODES

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        self._until_check -= 1
        if not self._until_check:
            self._until_check = CHECK_NODES
            if self.superseded():
                raise Superseded
        return _BASE_RESOLVE(self, kind, value, implicit)


def _compose_text(text: str, superseded: Callable[[], bool] | None) -> Any:
    if superseded is None:
        return yaml.compose(text, Loader=_BASE_LOADER)
    loader = _CheckedLoader(text)
    loader.superseded = superseded
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def compose(text: str, source: str, max_bytes: int,
            superseded: Callable[[], bool] | None = None) -> yaml.MappingNode:
    """The document's top-level mapping node; raise RulesError when it has none."""
    if len(text) > max_bytes:
        raise RulesError(source, [f"{source}: larger than {max_bytes} bytes"])
    try:
        root = _compose_text(text, superseded)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        place = f"{mark.line + 1}:{mark.column + 1}" if mark is not None else "1"
        raise RulesError(source, [f"{source}:{place}: invalid YAML: {exc.problem}"]) from exc
    except yaml.YAMLError as exc:
        raise RulesError(source, [f"{source}: invalid YAML: {exc}"]) from exc
    if root is None:
        raise RulesError(source, [f"{source}:1: the file is empty; it needs a 'rules' list"])
    if not isinstance(root, yaml.MappingNode):
        raise RulesError(source, [f"{source}:{line_of(root)}: expected a mapping with "
                                  f"'config' and 'rules', got {kind_of(root)}"])
    return root
