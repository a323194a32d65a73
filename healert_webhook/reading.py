"""Raw audit JSON to events for detection: each item parsed once, only if it can matter.

The tail's log lines and replay's documents arrive as raw JSON of single events (bytes)
or as events already parsed. `parse_each` turns them into events one at a time, as
detection asks for them, so a batch never has to be in memory parsed as a whole; with a
pre-filter, an event it rules out from its five fields (the msgspec field pass,
`Prefilter.skip`) is counted and never parsed; `parse_open` does the same for the lines
of a block the native scanner sorted in one pass (`FieldPass.sort_lines`).
A log line that does not parse may still hold whole events after a torn write: `resync`
finds them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from healert_webhook.fieldpass import OpenLine
from healert_webhook.prefilter import Prefilter

# How an apiserver log line starts (audit.k8s.io/v1, or v1beta1 in old files). Outside a
# JSON string a quote is structure, so these bytes start an object wherever they appear.
EVENT_START = b'{"kind":"Event","apiVersion":"audit.k8s.io/'
RESYNC_TRIES = 32  # event starts tried in one line that did not parse


def _object_at(view: memoryview) -> dict[str, Any] | None:
    """The JSON object that is exactly `view`, or None."""
    try:
        item = orjson.loads(view)
    except orjson.JSONDecodeError:
        return None
    return item if item.__class__ is dict else None


def resync(raw: bytes) -> tuple[list[dict[str, Any]], int]:
    """The whole events in a log line that did not parse, and how many bytes before them
    are junk (0: none).

    A writer that dies mid-write leaves a torn line without newline, and the next writer
    appends its lines right after it: the torn part and a whole event read as one line.
    Each whole event there starts with EVENT_START and runs to the end of the line (or to
    the next whole event), so the line is taken apart from its end: the earliest start
    whose rest parses as one object is the last event, and so on before it. What precedes
    the first event found is junk, unless it is itself a whole event that only lost its
    newline. A line ending in NUL was cut by a run of NULs (see the tail): the same
    applies, and the line itself may be a whole event. At most RESYNC_TRIES starts are
    tried per line, so a line full of nested starts cannot cost more than that many
    parses.
    """
    body = raw.rstrip(b"\0")
    view = memoryview(body)
    if len(body) < len(raw):  # cut by NULs rather than ended by a newline
        whole = _object_at(view)
        if whole is not None:
            return [whole], 0
    found: list[dict[str, Any]] = []
    end, tries = len(body), 0
    while tries < RESYNC_TRIES:
        start = body.find(EVENT_START, 1, end)
        item = None
        while start > 0 and tries < RESYNC_TRIES:
            tries += 1
            item = _object_at(view[start:end])
            if item is not None:
                break
            start = body.find(EVENT_START, start + 1, end)
        if item is None:
            break
        found.append(item)
        end = start
    if found:
        first = _object_at(view[:end])
        if first is not None:
            found.append(first)
            end = 0
    found.reverse()
    return found, end


def parse_each(items: Iterable[Any], bad: list[tuple[int, str]],
               prefilter: Prefilter | None = None,
               ruled_out: Counter[str] | None = None) -> Iterator[dict[str, Any]]:
    """Parse the raw items (bytes) one at a time, those the pre-filter cannot rule out;
    parsed items pass.

    Each event is parsed as it is needed and dropped once evaluated, so a batch never has
    to be in memory parsed as a whole. An item ruled out from its bytes is counted in
    `ruled_out` under its skip reason and never parsed. An item that is not JSON, or JSON
    but not an object, is skipped and listed in `bad` with its reason; an empty or blank
    one (a log line) as "blank", which no metric counts: it is no event. A raw item that
    does not parse is searched for whole events first (`resync`): those are evaluated,
    and the junk before them is listed as "truncated_line" (as is a line cut by NULs).
    """
    loads = orjson.loads
    skip = prefilter.skip if prefilter is not None else None
    for index, raw in enumerate(items):
        if raw.__class__ is bytes:
            if skip is not None and ruled_out is not None:
                reason = skip(raw)
                if reason is not None:
                    ruled_out[reason] += 1
                    continue
            try:
                item = loads(raw)
            except orjson.JSONDecodeError:
                if not raw.strip():
                    bad.append((index, "blank"))
                    continue
                found, junk = resync(raw)
                if junk or not found:
                    cut = found or raw.endswith(b"\0")
                    bad.append((index, "truncated_line" if cut else "bad_json"))
                yield from found
                continue
        else:
            item = raw
        if item.__class__ is dict:
            yield item
        else:
            bad.append((index, "not_an_object"))


def parse_open(block: bytes | memoryview, lines: Iterable[OpenLine],
               bad: list[tuple[int, str]], prefilter: Prefilter, ruled_out: Counter[str],
               *, longest: int, too_long: list[int]) -> Iterator[dict[str, Any]]:
    """`parse_each` for the lines of `block` its field pass did not rule out
    (`FieldPass.sort_lines`): a candidate is parsed from its own bytes; any other line is
    read as `parse_each` reads a line. A line longer than `longest` is listed in
    `too_long` (no event: not in `bad`)."""
    view = memoryview(block)
    loads = orjson.loads
    for index, start, end, candidate in lines:
        if end - start > longest:
            too_long.append(index)
            continue
        if candidate:  # the scanner read it as orjson reads it: an object
            try:
                event = loads(view[start:end])
            except orjson.JSONDecodeError:  # never seen; the careful way says why
                pass
            else:
                if event.__class__ is dict:
                    yield event
                    continue
        mine: list[tuple[int, str]] = []
        yield from parse_each([bytes(view[start:end])], mine, prefilter, ruled_out)
        bad += [(index, reason) for _, reason in mine]
