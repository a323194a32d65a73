"""The forwarder's reconcile and its marks, against the real test backend process and real
SQLite outboxes: a pause that a reconcile must not lift, the read's page edge,
and a row an operator purged while the forwarder held it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_forward import BASE_TIME, KEY, forwarding, friction, make_settings, wait_for

from healert_webhook import backend as backend_api
from healert_webhook.forward import LAST_SEND
from healert_webhook.outbox import Outbox

from support.backend import Backend, run_backend

REPO = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    with run_backend(tmp_path, api_key=KEY, limit=100_000, window=60.0) as server:
        yield server


# -- 1. a reconcile while deliveries are paused ---------------------------------------------

def test_a_reconcile_while_paused_sends_nothing_with_the_refused_key(
        tmp_path: Path, backend: Backend, outbox: Outbox) -> None:
    """Row 1's earlier send reached the backend, its answer was lost; the first read of it
    fails, so it stands aside while row 2 is sent and refused (401): paused. Row 1 is then
    read, found and marked delivered. Nothing more may be POSTed with the refused key until
    the probe (60 s away) or a new key."""
    settings = make_settings(tmp_path, backend, key="wrong-key", rate=20.0,
                             forward_timeout=0.5)
    first, second = friction(1), friction(2)
    httpx.post(backend.url + "/events", json=first.event, headers=AUTH,
               timeout=5.0).raise_for_status()  # the send whose answer was lost
    outbox.store([first, second])
    seq = outbox.head(1)[0].seq
    backend.control(friction_raw="not json")  # the first read fails
    # as a killed process left it: in flight, and a POST just started (the pacer waits a
    # full interval, 3.2 s at 20/min, before row 2: row 1 is due again by then)
    outbox.mark_in_flight(seq, LAST_SEND)
    with forwarding(settings, outbox, probe=60.0) as fwd:
        wait_for(lambda: backend.view()["read_requests"] >= 1, 20, "the failed read")
        backend.control(friction_raw=None)
        wait_for(lambda: backend.statuses().get(401), 20, "row 2 refused")
        wait_for(lambda: outbox.get(seq) is None, 20, "row 1 found and marked delivered")
        time.sleep(5.0)  # more than a pacer interval: an extra POST would have gone out
        assert backend.statuses() == {200: 1, 401: 1}  # ours, then row 2's one refusal
        assert fwd.status()["state"] == "paused"
    assert [e["description"] for e in backend.accepted()] == ["event-1"]


# -- 2. the read's page edge ------------------------------------------------------------------

def _stamp(micros: int) -> str:
    return (BASE_TIME + timedelta(microseconds=micros)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_an_event_cut_off_at_the_page_edge_is_unverifiable_not_missing(
        backend: Backend) -> None:
    """One audit event matched by two rules gives two friction events of one entity with
    the same timestamp. With 499 newer events of that entity, the backend's page of 500
    ends inside that tie: the other rule's event is shown, ours (stored, its answer lost)
    is not. The read cannot tell, so it must not say "missing" (a resend counted as
    checked)."""
    ref = "component:default/busy"
    edge = _stamp(0)

    def event(rule: str, description: str, stamp: str) -> dict[str, Any]:
        return {"entity_ref": ref, "type": rule, "severity": "high", "actor": "alice",
                "description": description, "timestamp": stamp}

    ours = event("exec-into-pod", "exec into busy-0", edge)
    with httpx.Client(timeout=10.0) as client:
        for body in [event("port-forward", "exec into busy-0", edge), ours,
                     *(event("exec-into-pod", f"newer-{n}", _stamp(n)) for n in range(1, 500))]:
            client.post(backend.url + "/events", json=body, headers=AUTH).raise_for_status()
    page = backend.friction(ref).json()["recentEvents"]
    assert len(page) == 500 and min(r["timestamp"] for r in page) == edge
    assert not any(r["type"] == "exec-into-pod" and r["timestamp"] == edge for r in page)

    async def read() -> backend_api.Finding:
        async with backend_api.make_client(10.0) as client:
            return await backend_api.find_event(client, backend.url, ours, 10.0, 30.0)

    finding = asyncio.run(read())
    assert finding.verdict == "unverifiable", finding


# -- 3. a row purged while the forwarder held it ----------------------------------------------

def test_a_row_purged_while_the_forwarder_held_it_is_not_sent(
        tmp_path: Path, backend: Backend, outbox: Outbox) -> None:
    """Paused on a refused key, the forwarder holds the head row while it waits. The
    operator purges the queue (`outbox purge --yes`, its own process), then fixes the key:
    the purged event must not be sent."""
    settings = make_settings(tmp_path, backend, key="wrong-key")
    outbox.store([friction(5)])
    with forwarding(settings, outbox, probe=60.0) as fwd:
        wait_for(lambda: fwd.status()["state"] == "paused", 20, "paused")
        time.sleep(0.5)  # it has taken the head row again and waits with it
        env = {**os.environ, "PYTHONPATH": str(REPO),
               "HEALERT_STATE_DIR": str(settings.state_dir)}
        done = subprocess.run([sys.executable, "-m", "healert_webhook", "outbox", "purge",
                               "--yes"], check=False, env=env, capture_output=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert outbox.stats().depth == 0
        (tmp_path / "api-key").write_text(KEY + "\n")
        wait_for(lambda: fwd.status()["state"] == "idle", 20, "resumed, nothing to do")
        time.sleep(0.5)
    assert backend.accepted() == []
    assert backend.statuses() == {401: 1}
