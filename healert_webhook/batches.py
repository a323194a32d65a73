"""Split a webhook body into its events without parsing it; estimate what parsing costs.

The apiserver serializes an EventList with Go's encoder, always the same way:

    {"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"level":"...

with no whitespace, and every item an audit Event whose first field is `level`. Between two
items there is therefore exactly `},{"level":"`. Those bytes can also occur inside an
object an event carries (`requestObject` holds whatever a client sent), so a split is only
a proposal: the pipeline parses every piece it evaluates, and a piece that is not one
complete JSON object sends the whole body down the careful path (one parse of the whole
document). The same holds for a JSON array of events and for a single event.

Split, a body costs about its own size in memory, however large: items are parsed one
at a time. A body that cannot be split is parsed whole, which costs what `estimate`
says, and is charged that much against the in-memory budget before it is parsed.
"""

from __future__ import annotations

EVENTLIST_HEAD = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":['
ITEM = b'{"level":"'
SEPARATOR = b'},{"level":"'
_WHITESPACE = b" \t\r\n"
PER_BYTE = 3  # memory of parsed JSON: per byte of the text...
PER_VALUE = 100  # ...and per object, array or value, which small values make count


def split(body: bytes) -> list[memoryview] | None:
    """The items of an EventList, an array of events or one event; None if not that shape.

    No item is parsed or copied: the pieces are views into `body`.
    """
    end = len(body)
    while end and body[end - 1] in _WHITESPACE:  # Go's encoder ends with a newline
        end -= 1
    if body.startswith(EVENTLIST_HEAD):
        start, close = len(EVENTLIST_HEAD), b"]}"
    elif body.startswith(b"[" + ITEM):
        start, close = 1, b"]"
    elif body.startswith(ITEM):
        return [memoryview(body)[:end]]
    else:
        return None
    if body[end - len(close):end] != close:
        return None
    stop = end - len(close)
    if start == stop:  # an empty list of events
        return []
    if not body.startswith(ITEM, start):
        return None
    view = memoryview(body)
    pieces: list[memoryview] = []
    find = body.find
    at = start
    while True:
        cut = find(SEPARATOR, at + len(ITEM), stop)
        if cut < 0:
            pieces.append(view[at:stop])
            return pieces
        pieces.append(view[at:cut + 1])
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


def cost(body: bytes, pieces: list[memoryview] | None) -> int:
    """Memory evaluating `body` takes: split, its size plus its largest event parsed
    (events are parsed one at a time); whole, what it expands to."""
    if pieces is None:
        return estimate(body)
    largest = max(pieces, key=len, default=None)
    return len(body) + (estimate(bytes(largest)) if largest is not None else 0)
