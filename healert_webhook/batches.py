"""Split a webhook body into its events without parsing it; estimate what parsing costs.

The apiserver serializes an EventList with Go's encoder, always the same way:

    {"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"level":"...

with no whitespace, and every item an audit Event whose first field is `level`. Between two
items there is therefore exactly `},{"level":"`. Those bytes can also occur inside an
object an event carries (a patch, a custom resource: whatever a client sent), and there a
cut yields pieces that each look like an event while the one holding them is lost. So a
split is only a proposal: nothing of a piece counts before it was read as exactly one JSON
object (prefilter.py, or a parse). A cut inside an object leaves the piece before it
unclosed, which no reader takes, and the body goes the careful path: one parse of the
whole document. The same holds for a JSON array of events; a single event is its own
piece.

Split, a body costs about its own size in memory, however large: items are parsed one
at a time. A body that cannot be split is parsed whole, which costs what `estimate`
says, and is charged that much against the in-memory budget before it is parsed.
"""

from __future__ import annotations

EVENTLIST_HEAD = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":['
ITEM = b'{"level":"'
SEPARATOR = b'},{"level":"'
_WHITESPACE = b" \t\r\n"
SMALL_EVENT = 1024 * 1024  # events up to this size are charged the worst case, uncounted
WORST_PER_BYTE = 36  # the most memory per byte of JSON any shape took (`{}` items: 30)
PER_BYTE = 3  # memory of parsed JSON: per byte of the text...
PER_VALUE = 100  # ...and per object, array or value, which small values make count


Span = tuple[int, int]  # where one event's JSON starts and ends in the body


class TooManyItems(Exception):
    """A body holds more events than a batch may (nothing of it was split)."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


def split(body: bytes, most: int) -> list[Span] | None:
    """The items of an EventList, an array of events or one event; None if not that shape.

    No item is parsed or copied: each is a (start, end) span of `body`. Raises
    TooManyItems, before building anything, when there would be more than `most`.
    """
    end = len(body)
    while end and body[end - 1] in _WHITESPACE:  # Go's encoder ends with a newline
        end -= 1
    if body.startswith(EVENTLIST_HEAD):
        start, close = len(EVENTLIST_HEAD), b"]}"
    elif body.startswith(b"[" + ITEM):
        start, close = 1, b"]"
    elif body.startswith(ITEM):
        return [(0, end)]
    else:
        return None
    if body[end - len(close):end] != close:
        return None
    stop = end - len(close)
    if start == stop:  # an empty list of events
        return []
    if not body.startswith(ITEM, start):
        return None
    spans: list[Span] = []
    find = body.find
    at = start
    while True:
        if len(spans) == most:  # one item more: counting the rest is for the message only
            raise TooManyItems(most + 1 + body.count(SEPARATOR, at + len(ITEM), stop))
        cut = find(SEPARATOR, at + len(ITEM), stop)
        if cut < 0:
            spans.append((at, stop))
            return spans
        spans.append((at, cut + 1))
        at = cut + 2


def estimate(body: bytes) -> int:
    """About how many bytes of memory parsing `body` whole takes (an upper-side guess).

    Measured as the growth of the process's peak RSS while orjson parses: audit events
    take 6 to 9 times their JSON's size, one 50 MiB string twice its size, a body of
    `{}` items 30 times, of short strings 19. A share per byte and one per container or
    value (C-level counts) stay within 1 to 4 times the real figure for every shape tried.
    """
    return PER_BYTE * len(body) + PER_VALUE * (
        body.count(b"{") + body.count(b"[") + body.count(b","))


def cost(body: bytes, spans: list[Span] | None) -> int:
    """Memory evaluating `body` takes: split, its size plus its largest event parsed
    (events are parsed one at a time, if at all); whole, what it expands to."""
    if spans is None:
        return estimate(body)
    if not spans:
        return len(body)
    start, end = max(spans, key=lambda span: span[1] - span[0])
    if end - start <= SMALL_EVENT:  # the worst shape measured, without counting anything
        return len(body) + WORST_PER_BYTE * (end - start)
    return len(body) + estimate(body[start:end])
