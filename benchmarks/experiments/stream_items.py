"""Proposal for sources/webhook.py: parse an EventList item by item, from zero-copy pieces.

Measured by stream_bench.py beside this file. Not used by the agent (yet).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from healert_webhook import audit

_ITEMS = b'"items":['
_SEP = b'},{"level":"'


def stream_items(body: bytes) -> Iterator[Any]:
    """The items of an EventList body, parsed one at a time; falls back to one whole parse.

    Items of the apiserver's EventList start with `{"level":`; pieces are cut at `},{"level":"`.
    Sound because JSON is unambiguous: if the envelope with an empty items array parses, and
    every piece between separators parses as a complete value on its own, the pieces
    are exactly the array's elements. Any separator found elsewhere (inside a nested array, or
    ending a string) leaves an unbalanced piece, which fails to parse -> the whole-body path.
    """
    loads = orjson.loads
    start = body.find(_ITEMS)
    done = 0
    if start > 0 and body.endswith(b"]}"):
        start += len(_ITEMS)
        end = len(body) - 2
        try:
            envelope = loads(body[:start] + b"]}")
        except orjson.JSONDecodeError:
            envelope = None
        if type(envelope) is dict and envelope.get("kind") == "EventList" and \
                envelope.get("items") == []:
            view = memoryview(body)
            find = body.find
            at = start
            try:
                while at < end:
                    nxt = find(_SEP, at, end)
                    stop = end if nxt < 0 else nxt + 1
                    item = loads(view[at:stop])
                    if type(item) is not dict:
                        break
                    yield item
                    done += 1
                    at = stop + 1
                else:
                    return
            except orjson.JSONDecodeError:
                pass
            del view
    items = audit.batch_items(loads(body))
    yield from items[done:] if done else items
