"""The test backend answers as the backend's contract says, read endpoints included.

Every delivery test relies on it, so what it promises is checked here against a real
subprocess: validation before the rate limit, 429 without Retry-After, the 30-day window
of `GET /friction/{entity_ref}` by string comparison, newest first, at most 500, and the
two ways of holding a request.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from support.backend import Backend, run_backend

KEY = "backend-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def event(n: int, *, when: datetime | None = None, entity: str = "component:pay/api",
          **extra: object) -> dict[str, object]:
    body: dict[str, object] = {"entity_ref": entity, "type": "kubectl-exec",
                               "severity": "high", "actor": "alice",
                               "description": f"exec {n}"}
    if when is not None:
        body["timestamp"] = when.isoformat().replace("+00:00", "Z")
    body.update(extra)
    return body


@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    with run_backend(tmp_path, api_key=KEY, limit=5, window=60.0) as running:
        yield running  # type: ignore[misc]


def test_key_then_validation_then_the_rate_limit(backend: Backend) -> None:
    url = backend.url + "/events"
    assert httpx.post(url, json=event(1)).status_code == 401
    assert httpx.post(url, json={"type": "x"}, headers=AUTH).status_code == 422
    answers = [httpx.post(url, json=event(n), headers=AUTH) for n in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]  # 401, 422 took no slot
    assert answers[0].json()["status"] == "ok" and "id" not in answers[0].json()
    limited = httpx.post(url, json=event(9), headers=AUTH)
    assert limited.status_code == 429
    assert "retry-after" not in limited.headers
    assert limited.json() == {"error": "Rate limit exceeded: 5 per 1 minute"}


def test_friction_reads_the_window_newest_first_and_at_most_500(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    with run_backend(tmp_path, api_key=KEY, limit=1000) as backend:
        url = backend.url + "/events"
        with httpx.Client(headers=AUTH) as client:
            old = event(0, when=now - timedelta(days=31))
            assert client.post(url, json=old).status_code == 200
            for n in range(1, 503):
                body = event(n, when=now - timedelta(minutes=n))
                assert client.post(url, json=body).status_code == 200
            client.post(url, json=event(999, entity="component:pay/other", when=now))
        read = backend.friction("component:pay/api").json()
        recent = read["recentEvents"]
        assert len(recent) == 500
        assert recent[0]["description"] == "exec 1" and recent[-1]["description"] == "exec 500"
        assert set(recent[0]) == {"timestamp", "actor", "type", "description", "workflow"}
        assert read["entityRef"] == "component:pay/api"
        assert read["frictionScore"]["bypassCount"] == 502
        assert backend.friction("component:pay/other").json()["recentEvents"][0][
            "description"] == "exec 999"
        assert backend.friction("nope").status_code == 400
        rows = httpx.get(url, params={"limit": 3}).json()
        assert [r["description"] for r in rows] == ["exec 999", "exec 1", "exec 2"]
        assert all("id" in r for r in rows)
        assert httpx.get(url, params={"limit": 501}).status_code == 422
    # the 31-day-old event is deleted at the next start (retention), the others kept
    with run_backend(tmp_path, api_key=KEY) as again:
        recent = again.friction("component:pay/api").json()["recentEvents"]
        assert "exec 0" not in {r["description"] for r in recent}
        assert len(recent) == 500


def test_a_held_request_is_answered_or_dropped_when_released(backend: Backend) -> None:
    url = backend.url + "/events"
    for mode, stored in (("hold_stored", True), ("hold_unstored", False)):
        backend.control(mode=mode)
        results: list[object] = []

        def post(body: dict[str, object] = event(7, description=mode)) -> None:
            try:
                results.append(httpx.post(url, json=body, headers=AUTH, timeout=30)
                               .status_code)
            except httpx.HTTPError as exc:
                results.append(type(exc).__name__)

        sender = threading.Thread(target=post)
        sender.start()
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while backend.view()["held"] == 0 and datetime.now(UTC) < deadline:
            pass
        assert backend.view()["held"] == 1
        kept = [e["description"] for e in backend.accepted()]
        assert (mode in kept) is stored  # stored before the answer, or not at all
        backend.release()
        sender.join(30)
        assert results == ([200] if stored else ["RemoteProtocolError"])
        backend.control(mode="ok")
