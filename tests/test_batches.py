"""Splitting a webhook body into the spans of its events, without parsing it."""

from __future__ import annotations

import orjson
import pytest

from healert_webhook import batches

from support.events import event_list, exec_event


def pieces(body: bytes, most: int = 10_000) -> list[bytes] | None:
    spans = batches.split(body, most)
    return None if spans is None else [body[a:b] for a, b in spans]


def test_an_eventlist_an_array_and_one_event_split_into_their_items() -> None:
    events = [exec_event(i) for i in range(3)]
    raw = [orjson.dumps(e) for e in events]
    assert pieces(event_list(events) + b"\n") == raw
    assert pieces(b"[" + b",".join(raw) + b"]") == raw
    assert pieces(raw[0] + b"\n") == raw[:1]
    assert pieces(event_list([])) == []


@pytest.mark.parametrize("body", [
    b'{"items":[],"kind":"EventList"}',  # another producer's field order
    b'[ {"level":"Metadata"} ]',  # whitespace
    b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"a":1}]}',
    b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"level":"x"}',
    b"not json",
    b"",
])
def test_other_shapes_are_not_split(body: bytes) -> None:
    assert batches.split(body, 10_000) is None


@pytest.mark.parametrize("events,most", [(2, 1), (3, 2), (10, 3), (4, 3)])
def test_more_events_than_allowed_are_refused_with_their_count(events: int, most: int) -> None:
    body = event_list([exec_event(i) for i in range(events)])
    with pytest.raises(batches.TooManyItems) as refused:
        batches.split(body, most)
    assert refused.value.count == events


def test_exactly_as_many_as_allowed_are_split() -> None:
    body = event_list([exec_event(i) for i in range(3)])
    spans = batches.split(body, 3)
    assert spans is not None and len(spans) == 3


def test_a_split_body_costs_its_size_plus_its_largest_event_parsed() -> None:
    small, big = exec_event(1), exec_event(2, pad=50_000)
    body = event_list([small, big])
    cost = batches.cost(body, batches.split(body, 10))
    assert cost == len(body) + batches.WORST_PER_BYTE * len(orjson.dumps(big))
    assert batches.cost(body, None) == batches.estimate(body) > len(body)
