"""reading.py: raw audit JSON (log lines) and parsed items to events, and torn lines."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from healert_webhook import reading
from healert_webhook.reading import RESYNC_TRIES, parse_each, resync

from support.events import as_log_line, exec_event


def parse_items(items: list[Any]) -> tuple[list[Any], list[tuple[int, str]]]:
    bad: list[tuple[int, str]] = []
    return list(parse_each(items, bad)), bad


def log_line(n: int, tag: str = "r") -> bytes:
    return as_log_line(exec_event(n, tag=tag))


def audit_ids(found: list[dict[str, Any]]) -> list[str]:
    return [event["auditID"].split("-")[1] for event in found]


def test_parse_each_parses_raw_items_once_and_names_the_bad_ones() -> None:
    parsed = {"already": "parsed"}
    items = [b'{"a":1}', b"", b"[1]", b"{nope", parsed, b'{"b":2}', 0, b"  "]
    events, bad = parse_items(items)
    assert events == [{"a": 1}, parsed, {"b": 2}]
    assert events[1] is parsed  # parsed items are not copied
    assert bad == [(1, "blank"), (2, "not_an_object"), (3, "bad_json"), (6, "not_an_object"),
                   (7, "blank")]
    assert parse_items([b'{"a":1}', {"b": 2}]) == ([{"a": 1}, {"b": 2}], [])


def test_resync_finds_every_whole_event_in_a_line_that_did_not_parse() -> None:
    a, b, c = log_line(1), log_line(2), log_line(3)
    assert resync(b"not json at all") == ([], 15)
    found, junk = resync(a[:100] + b)  # torn, then the restarted writer's line
    assert (audit_ids(found), junk) == (["00000002"], 100)
    found, junk = resync(a + b)  # a whole event that lost only its newline
    assert (audit_ids(found), junk) == (["00000001", "00000002"], 0)
    found, junk = resync(a[:50] + b[:300] + c)  # two torn writes in a row
    assert (audit_ids(found), junk) == (["00000003"], 350)
    found, junk = resync(a + b"\0")  # cut by a NUL run, yet whole
    assert (audit_ids(found), junk) == (["00000001"], 0)
    assert resync(a[:80] + b"\0") == ([], 80)
    # an event carrying an audit Event as its object: the outer one is the event
    nested = orjson.dumps({"kind": "Event", "apiVersion": "audit.k8s.io/v1",
                           **exec_event(4, tag="r"), "requestObject": orjson.loads(b)})
    found, junk = resync(a[:100] + nested)
    assert (audit_ids(found), junk) == (["00000004"], 100)
    found, junk = resync(nested[:-30] + c)  # torn inside the carried event
    assert (audit_ids(found), junk) == (["00000003"], len(nested) - 30)


def test_a_line_of_nested_starts_costs_a_bounded_number_of_parses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    inner = b'{"kind":"Event","apiVersion":"audit.k8s.io/v1","x":' * 5000
    parses: list[int] = []
    real = reading._object_at
    monkeypatch.setattr(reading, "_object_at",
                        lambda view: parses.append(len(view)) or real(view))
    assert resync(inner) == ([], len(inner))
    assert len(parses) == RESYNC_TRIES  # not one per start (5000)


