"""How a webhook body is read (whole, or in groups of whole events) and what that costs."""

from __future__ import annotations

import orjson
import pytest

from healert_webhook import batches

from support.events import event_list, exec_event, noise_event


def group_items(body: bytes, size: int) -> list[list[str]]:
    """The auditIDs of each group, read back as the JSON arrays the groups are parsed as."""
    plan = batches.reading(body, size=size)
    assert plan is not None and plan.groups is not None
    return [[e["auditID"] for e in orjson.loads(bytes(batches.group_text(body, span)))]
            for span in plan.groups]


def test_a_small_body_is_read_whole_whatever_its_layout() -> None:
    for body in (event_list([exec_event(1)]), b'{ "items" : [ ] }', b"not json"):
        plan = batches.reading(body)
        assert plan is not None and plan.groups is None
        assert plan.largest == len(body) and plan.index == batches.INDEX_PER_BYTE * len(body)


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
    body = event_list([noise_event(i) for i in range(50)])
    plan = batches.reading(body)
    assert plan is not None
    assert batches.cost(body, plan) == (len(body) + batches.INDEX_PER_BYTE * len(body)
                                        + batches.WORST_PER_BYTE * len(body))
    assert batches.cost(body, None) == batches.estimate(body) > len(body)


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
