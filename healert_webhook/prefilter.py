"""Rule out audit events from a SIMD parse of their JSON: only candidates become objects.

simdjson reads a whole document (about 2 GB/s, docs/performance.md) into an index of its own,
checking its syntax and UTF-8 as strictly as orjson does, and builds no Python object.
Detection can tell that nearly every audit event matches no rule from five fields: the
stage, the verb, the user's name, whether someone is impersonated, and the object's
resource, subresource and namespace (`Detector.detect`'s fast path reads exactly these,
through the rule index). `Prefilter` reads just those from the index; the events
it cannot rule out (candidates) are written out again by simdjson, parsed with orjson and
detected as before.

A parser reads JSON as JSON, so the decision does not depend on how the event is laid
out: field order, whitespace, escapes, strings holding the very bytes of a field, nested
objects with the same keys, an embedded object holding what looks like another event.

What it trusts: that an event holds each of its fields once, as the apiserver's encoder
writes it. Of a field written twice this reads the first and a full parse the last.
Nothing a user sends can add a field to the event itself (what they send is inside its
strings and embedded objects); another producer could, so replay, which reads files
from anywhere, parses every event in full.

Log lines, and webhook bodies of small events, are decided by the msgspec field pass
instead (fieldpass.py, `Prefilter.fields`), which costs less per event and reads a
repeated field as a full parse does; simdjson's reading stays for bodies of large
events, which it reads faster (batches.py chooses).

`Prefilter.reason` answers the skip reason detection would give, or None: "parse it".
It answers None whenever the fields are not what detection can settle from (a value of
the wrong type, an unknown stage); those events are parsed and decided exactly as
without the pre-filter, and items ruled out are counted under detection's own reasons.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import orjson
import simdjson

from healert_webhook.batches import SMALL_CANDIDATE, estimate
from healert_webhook.fieldpass import FieldPass
from healert_webhook.index import Undecidable

Object = simdjson.Object
Array = simdjson.Array
# A parser keeps the buffers of the largest document it read; documents above this get
# a parser of their own, freed with them, so no thread keeps more than this much times
# the index's worst size per byte.
KEEP_BYTES = 2 * 1024 * 1024
_local = threading.local()


class Unreadable(Exception):
    """A document simdjson does not take (not JSON, a number out of its range...)."""


class NeedsMore(Exception):
    """A candidate needs more memory to parse than was reserved: `size` bytes more."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _thread_parser() -> simdjson.Parser:
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    return parser


def parse(text: bytes | bytearray) -> Any:
    """`text` read by simdjson: an Object or Array proxy, or a plain value.

    Raises Unreadable. The result must be dropped before this thread parses again.
    """
    if text[:3] == b"\xef\xbb\xbf":  # a byte order mark, which orjson refuses
        raise Unreadable("a byte order mark")
    parser = _thread_parser() if len(text) <= KEEP_BYTES else simdjson.Parser()
    try:
        return parser.parse(text)
    except RuntimeError as exc:
        if "re-use" not in str(exc):  # a depth or size limit
            raise Unreadable(str(exc)) from None
        # proxies of the last document are still alive somewhere: leave that parser be
        _local.parser = parser = simdjson.Parser()
        try:
            return parser.parse(text)
        except (ValueError, RuntimeError) as again:
            raise Unreadable(str(again)) from None
    except ValueError as exc:  # syntax, strings, numbers, UTF-8 (UnicodeDecodeError)
        raise Unreadable(str(exc)) from None


def _impersonated(event: Any) -> Any:
    # A key's absence costs simdjson's `get` an exception; walking the keys does not.
    for key in event:
        if key == "impersonatedUser":
            return event.get(key)
    return None


class Prefilter:
    """The part of a Detector's decision a few fields settle (see the module docstring).

    `fields` is the msgspec field pass of the same rules (fieldpass.py): log lines are
    decided by it (`skip`), and so are webhook bodies of small events (sources/body.py).
    """

    def __init__(self, detector: Any) -> None:
        self._rule_out = detector.index.rule_out
        self.fields = FieldPass.for_index(detector.index)
        # The skip reason for the one event in a log line, or None: parse it. msgspec
        # reads a line's five fields for about half of simdjson's cost through its
        # proxies (docs/performance.md), and reads a repeated field as orjson does.
        self.skip: Callable[[bytes], str | None] = self.fields.reason

    def reason(self, event: Any) -> str | None:
        """`Detector.detect`'s fast-path skip reason for one event (a simdjson Object),
        or None: parse it (it may match, or detection must say why it is invalid)."""
        try:
            found = self._rule_out(event, _impersonated)
        except Undecidable:
            return None
        return found if isinstance(found, str) else None

    def candidates(self, items: Iterable[Any], ruled_out: Counter[str],
                   bad: list[tuple[int, str]], start: int = 0,
                   allowance: int | None = None) -> Iterator[dict[str, Any]]:
        """The items (simdjson values) that could match, parsed with orjson one at a time.

        Items ruled out are counted in `ruled_out`; an item that is no object is listed
        in `bad` (its index counted from `start`). With an `allowance`, a candidate larger
        than SMALL_CANDIDATE whose parse would take more memory raises NeedsMore first.
        """
        loads = orjson.loads
        reason = self.reason
        reasons: list[str] = []  # counted once at the end, not one update an event
        skipped = reasons.append
        for index, item in enumerate(items, start):
            if item.__class__ is not Object:
                bad.append((index, "not_an_object"))
                continue
            why = reason(item)
            if why is not None:
                skipped(why)
                continue
            raw = cast(bytes, item.mini)  # typed str, but simdjson hands out bytes
            if allowance is not None and len(raw) > SMALL_CANDIDATE:
                need = estimate(raw)
                if need > allowance:
                    raise NeedsMore(need - allowance)
            try:
                event = loads(raw)
            except orjson.JSONDecodeError:  # deeper than orjson goes
                bad.append((index, "bad_json"))
                continue
            yield event
        ruled_out.update(reasons)
