"""What of a webhook body to parse at once, and what parsing it costs in memory.

A body up to GROUP_BYTES is read whole, whatever its layout: by the msgspec field pass
when its events are small (fieldpass.py), else by simdjson (prefilter.py).
A larger one is read in groups of about GROUP_BYTES of whole events, so that memory
follows the group, not the body: the apiserver serializes an EventList with Go's
encoder, always the same way,

    {"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"level":"...

with no whitespace and every item an audit Event whose first field is `level`, so two
items meet at `},{"level":"`. Those bytes can also occur inside an object an event
carries (whatever a client sent); a group cut there is no JSON array of events, simdjson
refuses it, and the body is parsed whole instead (`estimate` says what that costs). Only
the cuts between groups are found from bytes, and every group is parsed in full, so a
cut in the wrong place can fail a group but never make one read wrongly. A large body
in any other layout is parsed whole.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENTLIST_HEAD = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":['
ITEM = b'{"level":"'
SEPARATOR = b'},{"level":"'
GROUP_BYTES = 4 * 1024 * 1024
_WHITESPACE = b" \t\r\n"
WORST_PER_BYTE = 36  # the most memory per byte of JSON orjson took (`{}` items: 30)
PER_BYTE = 3  # memory of parsed JSON: per byte of the text...
PER_VALUE = 100  # ...and per object, array or value, which small values make count
# The most memory simdjson's index took per byte of JSON, over every shape tried
# (`0,0,0...`: 12; `{},{}...`: 9.3; realistic audit events: 2.3).
INDEX_PER_BYTE = 13
# Candidates up to this size are parsed within what a body reserves up front; a larger
# one is estimated first, and charged what it needs.
SMALL_CANDIDATE = 256 * 1024
# Bodies of events smaller than this on average are read by the msgspec field pass,
# larger ones by simdjson: msgspec costs less per event, simdjson less per byte
# (docs/performance.md: bodies of 1.1 KiB events cost 0.8x simdjson's reading, of 3.4
# KiB ones 1.3x). On the benchmark's streams (60,000 events each) the estimate below
# puts every realistic and small body below this, 98% of today's above.
FIELDPASS_ITEM_BYTES = 1800
# The size is estimated from this many windows of this many bytes spread over the body
# (15 µs a body here): a guess only chooses the faster reader, both are exact. An
# estimate within UNSURE of the threshold is made again with more windows, pooled
# (30 µs): most of today's bodies, few realistic ones.
SAMPLE_WINDOWS = 8
SAMPLE_BYTES = 2048
MORE_WINDOWS = 16
MORE_BYTES = 1024
UNSURE = (1600, 3000)
# The most memory per byte of JSON the field pass's items take: a `msgspec.Raw` and a
# list slot per item, and an item can be as short as `0,`. Measured: 29 bytes a byte with
# msgspec 0.23, 32 with 0.18 (the declared floor, whose Raw is larger).
RAW_PER_BYTE = 33


Span = tuple[int, int]  # where a run of whole events starts and ends in the body


class TooManyItems(Exception):
    """A body holds more events than a batch may."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


def groups(body: bytes, size: int = GROUP_BYTES) -> list[Span] | None:
    """Runs of whole events, each about `size` bytes or one event, covering every item
    of an EventList or array the apiserver's way; None if the body is not that layout.

    Only one cut per group is searched for, so this reads a few bytes per group, not the
    body: the groups' parses check everything else.
    """
    end = len(body)
    while end and body[end - 1] in _WHITESPACE:  # Go's encoder ends with a newline
        end -= 1
    if body.startswith(EVENTLIST_HEAD):
        start, close = len(EVENTLIST_HEAD), b"]}"
    elif body.startswith(b"[" + ITEM):
        start, close = 1, b"]"
    else:
        return None
    if body[end - len(close):end] != close or not body.startswith(ITEM, start):
        return None
    stop = end - len(close)
    spans: list[Span] = []
    at = start
    while True:
        cut = body.find(SEPARATOR, min(at + size, stop), stop) if at + size < stop else -1
        if cut < 0:
            spans.append((at, stop))
            return spans
        spans.append((at, cut + 1))
        at = cut + 2


def item_bytes(body: bytes) -> float:
    """About how many bytes an event of `body` takes, from the boundaries between the
    apiserver's items (`SEPARATOR`) in a sample of it; infinite when none is found (a
    body of one large event, or in another layout)."""
    end = len(body)
    if end <= MORE_WINDOWS * MORE_BYTES:
        return end / (body.count(SEPARATOR) + 1)
    found = _boundaries(body, SAMPLE_WINDOWS, SAMPLE_BYTES, 0)
    sampled = SAMPLE_WINDOWS * SAMPLE_BYTES
    low, high = UNSURE
    if not found or not low < sampled / found < high:
        return sampled / found if found else float("inf")
    found += _boundaries(body, MORE_WINDOWS, MORE_BYTES, MORE_BYTES // 2)
    return (sampled + MORE_WINDOWS * MORE_BYTES) / found


def _boundaries(body: bytes, windows: int, width: int, offset: int) -> int:
    """The item boundaries in `windows` windows of `width` bytes spread over `body`."""
    step = (len(body) - width - offset) // (windows - 1)
    return sum(body.count(SEPARATOR, start, start + width)
               for start in range(offset, offset + step * windows, step))


def group_text(body: bytes, span: Span) -> bytearray:
    """The events of `span` as one JSON array, to parse on their own."""
    start, end = span
    text = bytearray(end - start + 2)
    text[0] = 0x5B  # [
    text[1:-1] = memoryview(body)[start:end]
    text[-1] = 0x5D  # ]
    return text


def estimate(body: bytes) -> int:
    """About how many bytes of memory parsing `body` whole takes (an upper-side guess).

    Measured as the growth of the process's peak RSS while orjson parses: audit events
    take 6 to 9 times their JSON's size, one 50 MiB string twice its size, a body of
    `{}` items 30 times, of short strings 19. A share per byte and one per container or
    value (C-level counts) stay within 1 to 4 times the real figure for every shape tried.
    """
    return PER_BYTE * len(body) + PER_VALUE * (
        body.count(b"{") + body.count(b"[") + body.count(b","))


@dataclass(frozen=True)
class Reading:
    """How a body is read: whole (`groups` None) or in groups; `largest` is the size of
    the largest document read at once, `index` the memory its reading takes (simdjson's
    index, or the field pass's items); `fields`: read whole by the msgspec field pass
    (fieldpass.py) rather than simdjson."""

    groups: list[Span] | None
    largest: int
    index: int
    fields: bool = False


def reading(body: bytes, size: int = GROUP_BYTES) -> Reading | None:
    """How `body` is read: whole up to `size` (by the field pass when its events are
    small, else by simdjson), else by simdjson in groups; None when it must be parsed
    whole by orjson instead (a large body in another layout)."""
    if len(body) <= size:
        if item_bytes(body) <= FIELDPASS_ITEM_BYTES:
            return Reading(None, len(body), RAW_PER_BYTE * len(body), fields=True)
        return Reading(None, len(body), INDEX_PER_BYTE * len(body))
    found = groups(body, size)
    if found is None:
        return None
    if len(found) == 1:  # one group holds every event: read the body itself, uncopied
        return Reading(None, len(body), index_estimate(body))
    start, end = max(found, key=lambda span: span[1] - span[0])
    if end - start <= size:  # the worst shape measured, without counting anything
        return Reading(found, end - start + 2, INDEX_PER_BYTE * (end - start + 2))
    return Reading(found, end - start + 2, index_estimate(body, start, end))


def index_estimate(text: bytes, start: int = 0, end: int | None = None) -> int:
    """About how much memory simdjson's index of `text[start:end]` takes (an upper-side
    guess): a copy of the text and of its strings, and a few words per value and
    separator. Counted in place: the span is not copied."""
    stop = len(text) if end is None else end
    values = (text.count(b",", start, stop) + text.count(b"{", start, stop)
              + text.count(b"[", start, stop))
    return 2 * (stop - start) + 24 * values + 8 * text.count(b":", start, stop)


def plan(body: bytes) -> tuple[Reading | None, int]:
    """How to read `body` (None: parse it whole with orjson) and the memory that takes.

    simdjson's way, unless the body is large and a whole parse costs less: a body of a
    few huge strings takes about twice its size parsed, less than a copy plus an index.
    Reads a large body several times over: off the event loop.
    """
    read = reading(body)
    charge = cost(body, read)
    if read is None or len(body) <= GROUP_BYTES:
        return read, charge
    whole = estimate(body)
    return (None, whole) if whole < charge else (read, charge)


def cost(body: bytes, plan: Reading | None) -> int:
    """Memory evaluating `body` takes: by simdjson, the body, its largest document and
    that document's index, and room for parsing one candidate (larger ones are charged
    when met: prefilter.NeedsMore); by orjson, what the body expands to."""
    if plan is None:
        return estimate(body)
    copy = plan.largest if plan.groups is not None else 0
    return len(body) + copy + plan.index + candidate_reserve(plan)


def candidate_reserve(plan: Reading) -> int:
    """What parsing one candidate may take without being measured first: the worst shape
    of the largest candidate that is not (one can be no larger than its document)."""
    return WORST_PER_BYTE * min(plan.largest, SMALL_CANDIDATE)
