"""How a webhook body is read (whole, or in groups of whole events) and what that costs."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from healert_webhook import batches

from support import workload
from support.events import event_list, exec_event, noise_event


def group_items(body: bytes, size: int) -> list[list[str]]:
    """The auditIDs of each group, read back as the JSON arrays the groups are parsed as."""
    plan = batches.reading(body, size=size)
    assert plan is not None and plan.groups is not None
    return [[e["auditID"] for e in orjson.loads(bytes(batches.group_text(body, span)))]
            for span in plan.groups]


def test_a_small_body_is_read_whole_whatever_its_layout() -> None:
    for body in (event_list([exec_event(1)]), b'{ "items" : [ ] }', b"not json",
                 event_list([exec_event(1, pad=50_000)])):
        plan = batches.reading(body)
        assert plan is not None and plan.groups is None
        per_byte = batches.RAW_PER_BYTE if plan.fields else batches.INDEX_PER_BYTE
        assert plan.largest == len(body) and plan.index == per_byte * len(body)


@pytest.mark.parametrize("stream,fields", [("realistic", True), ("small", True),
                                           ("today", False)])
def test_bodies_of_small_events_go_to_the_field_pass_and_large_ones_to_simdjson(
        stream: str, fields: bool) -> None:
    """The reader that costs less on each stream (docs/performance.md); either is exact."""
    bodies = list(workload.stream(stream, 4000).batches(400))
    chosen = [plan.fields for body in bodies if (plan := batches.reading(body)) is not None]
    assert len(chosen) == len(bodies)
    share = sum(chosen) / len(chosen)
    assert share >= 0.95 if fields else share <= 0.1, share
    assert not batches.reading(event_list([exec_event(1, pad=3000)] * 20)).fields  # type: ignore[union-attr]


@pytest.mark.parametrize("shape", ["eventlist", "array"])
def test_a_large_body_is_cut_into_groups_of_whole_events_in_order(shape: str) -> None:
    events = [noise_event(i) for i in range(300)]
    raw = [orjson.dumps(e) for e in events]
    body = event_list(events) + b"\n" if shape == "eventlist" else b"[" + b",".join(raw) + b"]"
    size = len(body) // 7
    groups = group_items(body, size)
    assert len(groups) >= 6
    assert [i for group in groups for i in group] == [e["auditID"] for e in events]
    plan = batches.reading(body, size=size)
    assert plan is not None and plan.groups is not None
    assert all(end - start < size + max(map(len, raw)) for start, end in plan.groups)


@pytest.mark.parametrize("body", [
    b'{"items":[],"kind":"EventList"}' + b" " * 100,  # another producer's field order
    b'[ {"level":"Metadata"} ]' + b" " * 100,  # whitespace
    b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"a":1}]}',
    b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[{"level":"x"}',
    b"not json" * 20,
])
def test_a_large_body_in_another_layout_is_parsed_whole(body: bytes) -> None:
    assert batches.reading(body, size=16) is None


def test_a_large_body_of_one_group_is_read_uncopied() -> None:
    body = orjson.dumps([exec_event(1, pad=50_000)])
    plan = batches.reading(body, size=1024)
    assert plan is not None and plan.groups is None and plan.largest == len(body)
    assert len(body) < plan.index < 3 * len(body)  # counted: a long string, no worst case


def test_memory_is_charged_for_the_body_its_largest_document_and_one_candidate() -> None:
    body = event_list([exec_event(i, pad=3000) for i in range(50)])
    plan = batches.reading(body)
    assert plan is not None and not plan.fields
    assert batches.cost(body, plan) == (len(body) + batches.INDEX_PER_BYTE * len(body)
                                        + batches.WORST_PER_BYTE * len(body))
    assert batches.cost(body, None) == batches.estimate(body) > len(body)
    # read by the field pass: the items' worst case in place of simdjson's index
    body = event_list([noise_event(i) for i in range(50)])
    plan = batches.reading(body)
    assert plan is not None and plan.fields
    assert batches.cost(body, plan) == (len(body) + batches.RAW_PER_BYTE * len(body)
                                        + batches.WORST_PER_BYTE * len(body))


def test_the_field_pass_charge_covers_its_items_at_their_shortest() -> None:
    """A `msgspec.Raw` and its list slot for every item of `0,0,0...`, the most items a
    byte of JSON can hold, stay within RAW_PER_BYTE."""
    import msgspec

    body = b"[" + b"0," * 100_000 + b"0]"
    before = tracemalloc_peak(lambda: msgspec.json.decode(body, type=list[msgspec.Raw]))
    assert before <= batches.RAW_PER_BYTE * len(body)


def tracemalloc_peak(func: Callable[[], object]) -> int:
    """The peak of memory Python allocated while `func` ran and kept its result."""
    import tracemalloc

    tracemalloc.start()
    try:
        kept = func()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del kept
    return peak


def test_a_body_of_huge_strings_is_cheaper_parsed_whole() -> None:
    big = exec_event(1)
    big["userAgent"] = "k" * (5 * batches.GROUP_BYTES)
    body = orjson.dumps([big, exec_event(2)])
    plan, charge = batches.plan(body)
    assert plan is None and charge == batches.estimate(body)
    many = event_list([noise_event(i) for i in range(20_000)])  # larger than a group
    assert len(many) > batches.GROUP_BYTES
    plan, charge = batches.plan(many)
    assert plan is not None and plan.groups is not None
    assert charge == batches.cost(many, plan) < batches.estimate(many)


def test_index_estimates_stay_above_what_simdjson_took() -> None:
    """Measured growth of the peak RSS while simdjson read 16 MiB of each shape."""
    n = 1 << 20
    measured = {b"{},": 9.33, b"0,": 12.0, b'"",': 7.0, b'{"a":1},': 8.76}
    for unit, per_byte in measured.items():
        text = b"[" + unit * (n // len(unit)) + b"0]"
        assert batches.index_estimate(text) >= per_byte * len(text)
    assert max(measured.values()) <= batches.INDEX_PER_BYTE
