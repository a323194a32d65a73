"""Operator commands given what a script or a hurried operator gives them (a backend that
answers 500, a --limit that is no row count, a dead letter whose stored answer holds a
token or terminal controls): each test runs the real command line on a real outbox file
(a subprocess of `python -m healert_webhook`, as an operator runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from healert_webhook import exits
from healert_webhook.outbox import Outbox
from healert_webhook.records import Friction

from support.backend import run_backend

SECRET = "s3cr3t-token-value"


def friction(n: int) -> Friction:
    return Friction(f"{n:032x}", "exec-into-pod", {
        "entity_ref": f"component:default/svc-{n}", "type": "exec-into-pod",
        "severity": "high", "description": f"event-{n}"})


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALERT_")}
    env["HEALERT_STATE_DIR"] = str(state)
    return subprocess.run([sys.executable, "-m", "healert_webhook", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory whose outbox holds 30 queued events and one dead letter."""
    state = tmp_path / "state"
    box = Outbox(state / "outbox.db")
    box.store([friction(n) for n in range(31)])
    box.dead_letter(box.head()[0].seq, status=400, reason="backend refused the event (HTTP 400)",
                    answer=f"bad request\nAuthorization: Bearer {SECRET}\x1b[2J\x1b[31mred")
    box.close()
    return state


@pytest.mark.parametrize("action", ["list", "dead"])
@pytest.mark.parametrize("limit", ["0", "-1", str(10**20)])
def test_a_limit_that_is_no_row_count_is_refused(state: Path, action: str, limit: str) -> None:
    # -1 listed the whole queue (SQLite's LIMIT -1 is no limit), 0 listed the default 20
    # rows, and 10**20 ended in an OverflowError traceback.
    done = cli(state, "outbox", action, "--limit", limit)
    assert done.returncode == exits.CONFIG, done
    assert "--limit" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_a_limit_is_the_most_rows_shown(state: Path) -> None:
    done = cli(state, "outbox", "list", "--limit", "3", "--json")
    assert done.returncode == exits.OK, done
    assert len(json.loads(done.stdout)) == 3


def test_outbox_dead_never_prints_a_bearer_token_or_terminal_controls(state: Path) -> None:
    # The backend's answer is stored as it came; `outbox dead` printed it raw, with the
    # token a proxy echoed and escape sequences that clear the operator's terminal.
    for args in (("outbox", "dead"), ("outbox", "dead", "--json")):
        done = cli(state, *args)
        assert done.returncode == exits.OK, done
        assert "HTTP 400" in done.stdout or '"status": 400' in done.stdout
        assert "bad request" in done.stdout
        assert SECRET not in done.stdout
        assert "\x1b" not in done.stdout


def test_check_backend_never_calls_a_key_accepted_on_a_server_error(tmp_path: Path) -> None:
    # The key check posts an empty object: only 422 (validation, after the key) says the
    # key was taken. A backend whose POST /events fails with 500 while /health is fine
    # made a wrong key pass, "ok auth key accepted", exit 0.
    with run_backend(tmp_path / "backend", api_key="the-right-key") as backend:
        backend.control(mode="500")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALERT_")}
        env.update(HEALERT_BACKEND_URL=backend.url, HEALERT_API_KEY="a-wrong-key")
        for args in ((), ("--json",)):
            done = subprocess.run([sys.executable, "-m", "healert_webhook", "check-backend",
                                   *args], env=env, capture_output=True, text=True,
                                  timeout=60, check=False)
            assert done.returncode == exits.UNREACHABLE, done
            assert "key accepted" not in done.stdout and "HTTP 500" in done.stdout
            assert "a-wrong-key" not in done.stdout + done.stderr
