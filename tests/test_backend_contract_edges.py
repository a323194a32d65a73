"""The edges of the backend contract, against the real test backend: patterns that end
where the backend's do (no final newline), entity refs that a URL can carry back
(`GET /friction/<ref>` for a workload named `.` or `..`), and the optional fields' nulls
read as absent."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from healert_webhook import backend, backend_contract
from healert_webhook.entity import entity_ref
from healert_webhook.rules.load import RulesError, parse_rules

from support.backend import Backend, run_backend

KEY = "review-contract-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def running(tmp_path: Path) -> Backend:
    with run_backend(tmp_path, api_key=KEY, limit=100, window=60.0) as started:
        yield started  # type: ignore[misc]


def _event(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"entity_ref": "component:pay/api", "type": "kubectl-exec",
                            "severity": "high"}
    body.update(fields)
    return body


# -- a final newline: Python's `$` accepts it, the backend's pattern (pydantic) does not ---

@pytest.mark.parametrize("field, value", [("entity_ref", "component:pay/api\n"),
                                          ("type", "kubectl-exec\n")])
def test_backend_refuses_a_final_newline_in_a_patterned_field(running: Backend, field: str,
                                                               value: str) -> None:
    body = _event(**{field: value})
    assert [p.field for p in backend_contract.validate(body)] == [field]
    answer = httpx.post(running.url + "/events", json=body, headers=AUTH, timeout=10.0)
    assert answer.status_code == 422, answer.text
    assert running.accepted() == []


def test_a_rule_name_with_a_final_newline_is_refused_when_loading() -> None:
    # Accepted, every event of this rule would be cut to "ab" and dead-lettered.
    text = ('rules:\n  - name: "ab\\n"\n    description: "exec into {name}"\n'
            "    severity: high\n    match:\n      resource: pods\n      subresource: exec\n")
    with pytest.raises(RulesError):
        parse_rules(text)


# -- the read-back finds an event under the ref the agent wrote ----------------------------

@pytest.mark.parametrize("workload", [".", "..", "..."])
def test_read_back_finds_an_event_of_a_workload_named_with_dots(running: Backend,
                                                                  workload: str) -> None:
    # An owner reference's name is not checked by the apiserver, so a pod may name "..".
    ref = entity_ref("pay", workload)
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    body, problem = backend_contract.prepare(_event(entity_ref=ref, actor="alice",
                                                    timestamp=stamp, description="exec"))
    assert body is not None, problem

    async def post_then_read() -> backend.Finding:
        async with backend.make_client(10.0) as client:
            answer = await backend.post_event(client, running.url, KEY, body, 10.0)
            assert answer.status == 200
            return await backend.find_event(client, running.url, body, 10.0, 30.0)

    finding = asyncio.run(post_then_read())
    assert finding.verdict == "found", finding
    shown = running.friction(ref)
    assert shown.status_code == 200 and shown.json()["entityRef"] == ref


# -- an explicit null is an absent field: the backend stamps and scores it -----------------

def test_null_timestamp_and_points_are_filled_as_when_absent(running: Backend) -> None:
    answer = httpx.post(running.url + "/events", json=_event(timestamp=None, points=None),
                        headers=AUTH, timeout=10.0)
    assert answer.status_code == 200
    rows = httpx.get(running.url + "/events", timeout=10.0)
    assert rows.status_code == 200, rows.text
    assert isinstance(rows.json()[0]["timestamp"], str)
    assert rows.json()[0]["points"] == 10
    friction = running.friction("component:pay/api")
    assert friction.status_code == 200, friction.text
    assert len(friction.json()["recentEvents"]) == 1
