"""Credentials in HEALERT_BACKEND_URL are never shown, and deliveries log our own line.

Must hold (issue 22 item 7, issue 27 item 8): the user info of the backend URL is
redacted wherever the URL is shown (the start line, the unreachable warning, errors,
`check-backend`, the `outbox` commands); third-party request logging (httpx, httpcore)
stays out of INFO; each delivered event logs one line with its key, rule, entity and the
backend's status, as JSON fields in JSON format.
Before: the password was in the start line, the unreachable warning and an httpx INFO
line per request.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson

from support.agent import JSON, Agent, compare, expected_bodies, forwarding_env, serve_args
from support.backend import run_backend
from support.events import exec_event
from support.paths import ROOT
from support.servers import wait_for

SECRET = "Pa55-in-the-URL-7781"


def command(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEALERT_")}
    clean.update(env, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "healert_webhook", *args], cwd=tmp_path,
                          env=clean, capture_output=True, text=True, timeout=60, check=False)
    return done.stdout + done.stderr


def test_credentials_in_the_backend_url_are_never_shown(tmp_path: Path,
                                                        agents: list[Agent]) -> None:
    with run_backend(tmp_path, api_key=None, limit=100_000) as backend:
        url = f"http://healert:{SECRET}@127.0.0.1:{backend.port}"
        env = forwarding_env(tmp_path, url, "unused-key", HEALERT_LOG_FORMAT="json",
                             HEALERT_STATE_DIR=str(tmp_path / "state"))
        backend.stop()  # unreachable at the start: the warning names the backend
        agent = Agent(serve_args(), tmp_path, env)
        agents.append(agent)
        port, _ops = agent.ports()
        agent.wait_line("unreachable")
        backend.start()
        body = orjson.dumps([exec_event(i, tag="url") for i in range(2)])
        assert httpx.post(f"http://127.0.0.1:{port}/audit", content=body, headers=JSON,
                          timeout=30).status_code == 200
        wait_for(lambda: len(backend.accepted()) >= 2, timeout=30, what="deliveries")
        with contextlib.suppress(AssertionError):  # asserted below, after the secret
            wait_for(lambda: agent.output().count("friction event delivered") >= 2,
                     timeout=10, what="the delivery lines")
        assert compare(expected_bodies([body]), backend.accepted()) == (0, 0, 0)
        assert agent.stop() == 0
        cli = command(tmp_path, env, "check-backend")
        cli += command(tmp_path, env, "outbox", "status")
        backend.stop()
        cli += command(tmp_path, env, "check-backend")  # unreachable
    text = agent.output()
    records = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    delivered = [r for r in records if r.get("msg") == "friction event delivered"]
    print(f"{len(records)} log records, {len(delivered)} delivery lines: {delivered[:1]}")
    assert SECRET not in text and SECRET not in cli, cli
    assert "healert:***@127.0.0.1" in text and "healert:***@127.0.0.1" in cli
    assert not [r for r in records if r["logger"].startswith(("httpx", "httpcore"))]
    assert "HTTP Request" not in text
    assert len(delivered) == 2
    for record in delivered:
        assert record["level"] == "INFO" and record["status"] == 200
        assert record["rule"] and record["entity"].startswith("component:")
        assert len(record["key"]) == 32
