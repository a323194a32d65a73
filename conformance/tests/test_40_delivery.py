"""End to end: the webhook agent delivers everything it holds to a real test backend, once.

Until now both agents kept their friction events (no backend). The `serve` agent is started
again with the project's test backend (`tests/support/backend.py`, which enforces the
backend's contract) as HEALERT_BACKEND_URL; it must drain its whole outbox, and the backend
must have accepted each of those events exactly once.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conformance.harness.cluster import REPO
from conformance.harness.env import Environment
from conformance.harness.procs import Proc, wait_for
from conformance.harness.runner import Runner

pytestmark = pytest.mark.timeout(600)

CANDIDATES = (REPO / "tests" / "support" / "backend.py", REPO / "tests" / "backend_server.py")


@pytest.fixture
def backend(env: Environment) -> Iterator[str]:
    """The test backend on a loopback port, limits high enough for the whole outbox."""
    script = next((p for p in CANDIDATES if p.exists()), None)
    if script is None:
        pytest.fail(f"no test backend at any of {[str(p) for p in CANDIDATES]}")
    folder = env.root / "backend"
    folder.mkdir(exist_ok=True)
    port_file = folder / "port"
    argv = [sys.executable, str(script), "--port-file", str(port_file),
            "--record", str(folder / "accepted.jsonl"), "--limit", "100000", "--window", "60"]
    proc = Proc("backend", argv, folder / "backend.log",
                env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO).start()
    def up() -> bool:
        proc.check_alive()
        return port_file.exists()

    wait_for(up, 30, "the test backend")
    url = f"http://127.0.0.1:{port_file.read_text().strip()}"
    wait_for(lambda: httpx.get(url + "/health", timeout=2).status_code == 200, 30,
             "backend /health")
    try:
        yield url
    finally:
        proc.stop()


def _identity(event: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(event.get(k) for k in ("entity_ref", "type", "timestamp", "actor",
                                        "description", "severity"))


def test_webhook_agent_delivers_its_outbox_once(env: Environment, runner: Runner,
                                                backend: str) -> None:
    """Restarted with a backend, serve drains its outbox; each event is accepted once."""
    runner.sync()
    queued = [row["event"] for row in runner.serve.outbox()]
    assert queued, "nothing to deliver"
    agent = env.agents.restart_serve(backend_url=backend)
    wait_for(lambda: not agent.outbox(), 300, "the outbox to drain", interval=1.0)
    answer = httpx.get(backend + "/_accepted", timeout=10).json()
    accepted = answer["events"]
    want = Counter(_identity(e) for e in queued)
    got = Counter(_identity(e) for e in accepted)
    assert got == want, (f"{sum((want - got).values())} missing, "
                         f"{sum((got - want).values())} extra of {len(queued)}")
    assert set(answer.get("statuses", {})) <= {"200", 200}, answer.get("statuses")
    _check_read_endpoint(backend, accepted)
    print(f"delivery: {len(accepted)} friction events accepted once each")


def _check_read_endpoint(backend: str, accepted: list[dict[str, Any]]) -> None:
    """Where the backend has the contract's read endpoint, it shows what was accepted."""
    ref = Counter(e["entity_ref"] for e in accepted).most_common(1)[0][0]
    answer = httpx.get(f"{backend}/friction/{ref}", timeout=10)
    if answer.status_code == 404 and "recentEvents" not in answer.text:
        return  # this test backend has no read endpoints yet
    assert answer.status_code == 200, answer.text
    recent = answer.json()["recentEvents"]
    mine = [e for e in accepted if e["entity_ref"] == ref]
    assert len(recent) == min(len(mine), 500)

