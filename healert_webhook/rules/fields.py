"""A field of the object an audit event is about, addressed by a path (the `object`
condition of rules/conditions.py).

A path names a field the way a reader of the object does: `spec.suspend`,
`metadata.labels."pod-security.kubernetes.io/enforce"` (a key holding dots is quoted),
`spec.match[].excludedNamespaces` (`[]`: each element of that list). It is compiled once,
when the rules are loaded, into a tuple of keys and EACH markers.

What the event shows of the object depends on the verb and on the audit level:

- the resulting object (`responseObject`, RequestResponse) for a create, update, patch,
  delete (the deleted object) or read; a `Status` answer is no object;
- the request (`requestObject`, Request) for a create or an update (the whole object),
  and for a patch: a merge or strategic merge patch states only the fields it changes
  (`null` removes one), a JSON patch is a list of operations, and a server-side apply
  states the whole object its manager wants.

A field is judged on the resulting object when the event carries it, else on the
request. A patch that does not touch the field (neither sets nor removes it, nor
replaces anything above or below it) leaves it as it was: the request did not do what
the test asks, whatever the resulting object holds, so the test fails. A create, an
update and a server-side apply state the whole object, so they touch every field.

Nothing here formats input or recurses into it: a walk follows the path's keys, and a
list is only entered at a `[]`, so the work is bounded by the path and the size of the
object it walks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

MAX_PATH = 256     # characters of a path
MAX_STEPS = 32     # keys and [] of a path
EACH = None        # in a compiled path: every element of the list at this point
Token = str | None
# Verbs whose request body is the object (or a change of it), and the rest.
WRITES = frozenset({"create", "update", "patch"})
UNKNOWN = "unknown"   # a patch below the field: its new value shows only in the answer


@dataclass(frozen=True, slots=True)
class Path:
    """A compiled path: `text` as written, `tokens` the keys with EACH at each `[]`."""

    text: str
    tokens: tuple[Token, ...]


def parse_path(text: str) -> Path:
    """Compile a path; raise ValueError saying what is wrong with it."""
    if not text.strip():
        raise ValueError("an empty path names no field")
    if len(text) > MAX_PATH:
        raise ValueError(f"longer than {MAX_PATH} characters")
    tokens: list[Token] = []
    pos = 0
    while True:
        key, pos = _segment(text, pos)
        tokens.append(key)
        while text.startswith("[]", pos):
            tokens.append(EACH)
            pos += 2
        if pos == len(text):
            break
        if text[pos] != ".":
            raise ValueError(f"unexpected {text[pos]!r} at character {pos + 1} (segments "
                             "are separated by '.'; a key holding '.' is quoted: "
                             '\'metadata.labels."app.kubernetes.io/name"\')')
        pos += 1
    if len(tokens) > MAX_STEPS:
        raise ValueError(f"more than {MAX_STEPS} keys and []")
    return Path(text, tuple(tokens))


def _segment(text: str, pos: int) -> tuple[str, int]:
    """One key from `pos`: bare up to '.' or '[', or quoted; the position after it."""
    if pos < len(text) and text[pos] == '"':
        out: list[str] = []
        pos += 1
        while pos < len(text) and text[pos] != '"':
            if text[pos] == "\\" and pos + 1 < len(text):
                pos += 1
            out.append(text[pos])
            pos += 1
        if pos >= len(text):
            raise ValueError("a quoted key is not closed")
        if not out:
            raise ValueError("an empty quoted key")
        return "".join(out), pos + 1
    end = pos
    while end < len(text) and text[end] not in '.["]':
        end += 1
    if end == pos:
        where = "at the end" if pos == len(text) else f"at character {pos + 1}"
        raise ValueError(f"a key is missing {where}")
    return text[pos:end], end


# --- what the event shows -------------------------------------------------------------

class Bodies(NamedTuple):
    """What one event shows of its object: the request's statement of it (`form`:
    `whole`, `merge` or `json`; `none` when the event carries none) and the result."""

    request: Any
    form: str
    result: dict[str, Any] | None


NO_BODIES = Bodies(None, "none", None)


def bodies(event: dict[str, Any], verb: str) -> Bodies:
    """The request's and the answer's object of one event (see the module docstring)."""
    result = event.get("responseObject")
    if not isinstance(result, dict) or result.get("kind") == "Status":
        result = None
    request = event.get("requestObject") if verb in WRITES else None
    if isinstance(request, list) and verb == "patch":
        form = "json"
    elif not isinstance(request, dict):
        request, form = None, "none"
    elif verb != "patch" or ("apiVersion" in request and "kind" in request):
        form = "whole"  # a create, an update, or a server-side apply's whole object
    else:
        form = "merge"
    if result is None and request is None:
        return NO_BODIES
    return Bodies(request, form, result)


# --- walking ----------------------------------------------------------------------------

def walk(value: Any, tokens: Iterable[Token]) -> list[Any]:
    """The values at `tokens` below `value`; null counts as absent. Lists are entered
    only at EACH, so each node of `value` is visited at most once."""
    found = [value]
    for token in tokens:
        step: list[Any] = []
        for item in found:
            if token is EACH:
                if isinstance(item, list):
                    step.extend(item)
            elif isinstance(item, dict):
                got = item.get(token)
                if got is not None:
                    step.append(got)
        found = step
        if not found:
            break
    return [item for item in found if item is not None]


def merge_touches(patch: dict[str, Any], tokens: tuple[Token, ...]) -> bool:
    """True when a merge (or strategic merge) patch sets, removes or replaces the field,
    or something above or below it. A list is replaced whole by a merge patch (and by a
    strategic one, unless merged by key: then an element changed), so reaching one at or
    above the field touches it."""
    level: list[Any] = [patch]
    for token in tokens:
        below: list[Any] = []
        for item in level:
            if not isinstance(item, dict) or "$patch" in item:
                return True  # a scalar, null or list replaced the subtree; or a directive
            if token is EACH:
                return True
            if token in item:
                below.append(item[token])
        if not below:
            return False
        level = below
    return True


def _pointer(text: Any) -> tuple[str, ...] | None:
    """A JSON pointer's reference tokens (RFC 6901), or None when it is not one."""
    if not isinstance(text, str) or (text and not text.startswith("/")):
        return None
    if not text:
        return ()
    return tuple(part.replace("~1", "/").replace("~0", "~") for part in text[1:].split("/"))


def _index(part: str) -> bool:
    return part == "-" or part.isdigit()


def _relation(tokens: tuple[Token, ...], pointer: tuple[str, ...]) -> str | None:
    """How an operation's pointer relates to the field: `above` (at it or above it),
    `above-element` (one element of a list the field is read through [] from, or below
    such an element), `below`, or None (elsewhere)."""
    element = False
    for mine, theirs in zip(tokens, pointer, strict=False):
        if mine is EACH:
            if not _index(theirs):
                return None
            element = True
        elif mine != theirs:
            return None
    if len(pointer) > len(tokens):
        return "below"
    return "above-element" if element else "above"


def json_patch(ops: list[Any], tokens: tuple[Token, ...]) -> list[Any] | str | None:
    """What a JSON patch (RFC 6902) makes of the field: its values (empty: removed),
    UNKNOWN (changed below it, or in one element of a list read through []), or None
    when no operation touches it. The last operation that touches it decides."""
    state: list[Any] | str | None = None
    for op in ops:
        if not isinstance(op, dict):
            continue
        kind = op.get("op")
        if kind == "test":
            continue
        if kind == "move":
            source = _pointer(op.get("from"))
            came = _relation(tokens, source) if source is not None else None
            if came is not None:
                state = [] if came == "above" else UNKNOWN
        pointer = _pointer(op.get("path"))
        if pointer is None:
            continue
        how = _relation(tokens, pointer)
        if how is None:
            continue
        if how == "above" and kind == "remove":
            state = []
        elif how == "above" and kind in ("add", "replace"):
            state = walk(op.get("value"), tokens[len(pointer):])
        elif how == "above-element" and kind in ("add", "replace"):
            more = walk(op.get("value"), tokens[len(pointer):])
            state = more if more else UNKNOWN  # other elements may still hold it
        else:
            state = UNKNOWN
    return state


def seen(found: Bodies, tokens: tuple[Token, ...]) -> tuple[list[Any] | str | None, str]:
    """The field's values as this event shows them, and where they were read.

    None: the request does not touch the field (a patch that leaves it as it was).
    UNKNOWN: the request changes it in a way only the answer shows, and the event
    carries no answer. Otherwise the values (empty: absent), read from the resulting
    object when there is one, else from the request.
    """
    touched: bool
    from_request: list[Any] | str | None = None
    if found.form == "json":
        from_request = json_patch(found.request, tokens)
        touched = from_request is not None
    elif found.form == "merge":
        touched = merge_touches(found.request, tokens)
        if touched and found.result is None:
            from_request = walk(found.request, tokens)
    else:
        touched = True  # the whole object, or no request (a read, a delete): the answer
        if found.form == "whole" and found.result is None:
            from_request = walk(found.request, tokens)
    if not touched:
        return None, "request"
    if found.result is not None:
        return walk(found.result, tokens), "resulting object"
    return from_request, "request"
