"""The backend's field rules, checked one by one, and the lossless fixes of `prepare`."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healert_webhook import backend_contract as bc

GOOD: dict[str, Any] = {
    "entity_ref": "component:payments/payments-api",
    "type": "exec-into-pod",
    "severity": "high",
    "actor": "alice@example.com",
    "service": "payments-api",
    "namespace": "payments",
    "workflow": "debug",
    "description": "alice exec'd into payments-api",
    "points": 10,
    "timestamp": "2026-11-26T10:00:00.123456Z",
}


def fields_of(event: Any) -> list[str]:
    return [p.field for p in bc.validate(event)]


def test_a_complete_valid_event_passes() -> None:
    assert bc.validate(GOOD) == []
    assert bc.prepare(GOOD) == (GOOD, None)


def test_only_required_fields_pass() -> None:
    assert bc.validate({"entity_ref": "a:b/c", "type": "abc", "severity": "low"}) == []


@pytest.mark.parametrize("missing", ["entity_ref", "type", "severity"])
def test_required_fields(missing: str) -> None:
    event = {k: v for k, v in GOOD.items() if k != missing}
    problems = bc.validate(event)
    assert [(p.field, p.type) for p in problems] == [(missing, "missing")]


@pytest.mark.parametrize("ref, ok", [
    ("component:default/system-aggregate-to-edit", True),
    ("a:b/c", True),                       # 5 chars, the shortest sensible
    ("component:ns/name.with.dots", True),  # dots allowed in the name
    ("component:ns.x/name", False),         # no dots in the namespace
    ("component:ns/system:edit", False),    # no colons in the name
    ("component/ns/name", False),
    ("component:ns/", False),
    ("component:ns/na me", False),
    ("a:/c", False),
    ("component:ns/" + "n" * 188, False),  # 201 characters
    ("component:ns/" + "n" * 187, True),   # 200 characters
])
def test_entity_ref(ref: str, ok: bool) -> None:
    assert (fields_of({**GOOD, "entity_ref": ref}) == []) is ok


@pytest.mark.parametrize("value, ok", [
    ("abc", True), ("a-b", True), ("ab", False), ("-ab", False), ("ab-", False),
    ("Exec", False), ("exec_pod", False), ("a" * 50, True), ("a" * 51, False), ("1x1", True),
])
def test_type(value: str, ok: bool) -> None:
    assert (fields_of({**GOOD, "type": value}) == []) is ok


@pytest.mark.parametrize("value", ["critical", "HIGH", "", None, 1])
def test_severity_refused(value: Any) -> None:
    assert fields_of({**GOOD, "severity": value}) == ["severity"]


@pytest.mark.parametrize("name, limit", [("actor", 200), ("service", 200), ("namespace", 200),
                                         ("workflow", 200), ("description", 500)])
def test_optional_text_lengths(name: str, limit: int) -> None:
    assert fields_of({**GOOD, name: "x" * limit}) == []
    assert fields_of({**GOOD, name: "x" * (limit + 1)}) == [name]
    assert fields_of({**GOOD, name: 5}) == [name]


@pytest.mark.parametrize("value, ok", [
    (1, True), (100, True), (0, False), (101, False), (True, False), (5.5, False), ("5", False),
])
def test_points(value: Any, ok: bool) -> None:
    assert (fields_of({**GOOD, "points": value}) == []) is ok


@pytest.mark.parametrize("value, ok", [
    ("2026-11-26T10:00:00Z", True), ("2026-11-26T10:00:00+02:00", True),
    ("2026-11-26", True), ("yesterday", False), ("2026-11-26T10:00:00Z" + " " * 21, False),
])
def test_timestamp(value: str, ok: bool) -> None:
    assert (fields_of({**GOOD, "timestamp": value}) == []) is ok


def test_several_problems_are_all_reported_fastapi_style() -> None:
    problems = bc.validate({"entity_ref": "x", "type": "X", "severity": "no", "points": 0})
    assert {p.field for p in problems} == {"entity_ref", "type", "severity", "points"}
    assert problems[0].as_fastapi()["loc"][0] == "body"


def test_not_an_object() -> None:
    assert fields_of([1, 2]) == ["body"]
    assert bc.prepare("text") == (None, "body: not a JSON object")


def test_prepare_fixes_what_is_lossless() -> None:
    event = {**GOOD, "severity": " High ", "entity_ref": " component:payments/api\n",
             "points": 10.0, "extra": "ignored by the backend", "actor": None}
    body, problem = bc.prepare(event)
    assert problem is None and body is not None
    assert body["severity"] == "high"
    assert body["entity_ref"] == "component:payments/api"
    assert body["points"] == 10 and isinstance(body["points"], int)
    assert "extra" not in body and "actor" not in body


def test_prepare_refuses_with_the_reason() -> None:
    body, problem = bc.prepare({**GOOD, "entity_ref": "component:default/system:edit"})
    assert body is None
    assert problem is not None and problem.startswith("entity_ref: String should match")


@given(st.dictionaries(st.sampled_from(sorted(bc.FIELDS | {"other"})),
                       st.one_of(st.text(max_size=60), st.integers(-5, 150), st.none())))
def test_prepare_output_is_always_valid(event: dict[str, Any]) -> None:
    body, problem = bc.prepare(event)
    assert (body is None) != (problem is None)
    if body is not None:
        assert bc.validate(body) == []
        assert set(body) <= bc.FIELDS
