"""The backend key file against the real `serve`, `tail` and `check-backend` processes.

Must hold (issue 22 item 1, issue 27 item 4):
- a configured key file that is missing, unreadable, not a regular file, not UTF-8, or
  holds anything but printable ASCII stops the start with exit 2 and names the file;
- a UTF-8 BOM and surrounding whitespace are stripped: such a key works;
- a key file that turns bad while the agent runs keeps the key in use, says why once per
  change (ERROR), and deliveries go on.
Before: a missing file was "no key set"; a BOM or a non-ASCII character ended the
forwarder with UnicodeEncodeError at the first send, so the process exited 1, and again
after every restart.
"""

from __future__ import annotations

import itertools
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

KEY = "key-file-test-key-4f2a"
_TAGS = itertools.count()

BAD_KEY_FILES: dict[str, bytes | None] = {
    "missing": None,
    "a BOM and a non-ASCII character": "\ufeffk\u00e9y-4f2a\n".encode(),
    "not UTF-8": b"\xff\xfekey\n",
    "a control character inside": b"key\x07-4f2a\n",
}


def post_batch(port: int, events: int = 2) -> bytes:
    n = next(_TAGS)
    body = orjson.dumps([exec_event(n * 100 + i, tag=f"key{n}") for i in range(events)])
    answer = httpx.post(f"http://127.0.0.1:{port}/audit", content=body, headers=JSON,
                        timeout=30)
    assert answer.status_code == 200, answer.text
    return body


def run_command(tmp_path: Path, args: list[str],
                env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEALERT_")}
    clean.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "healert_webhook", *args], cwd=tmp_path,
                          env=clean, capture_output=True, text=True, timeout=60, check=False)


def test_a_key_file_that_cannot_be_used_stops_the_start_naming_it(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo-key"
    os.mkfifo(fifo)
    cases: list[tuple[str, Path]] = [("a FIFO", fifo)]
    for name, content in BAD_KEY_FILES.items():
        path = tmp_path / f"key-{len(cases)}"
        if content is not None:
            path.write_bytes(content)
        cases.append((name, path))
    url = "http://127.0.0.1:9"  # never reached: the start stops before
    found = {}
    for name, path in cases:
        env = {"HEALERT_BACKEND_URL": url, "HEALERT_API_KEY_FILE": str(path)}
        done = run_command(tmp_path, serve_args("state-" + path.name), env)
        found[name] = done.returncode
        assert done.returncode == 2, (name, done.stderr[-2000:])
        assert str(path) in done.stderr, (name, done.stderr)
        assert "Traceback" not in done.stderr, (name, done.stderr)
        assert not (tmp_path / ("state-" + path.name) / "outbox.db").exists(), name
    missing = cases[1][1]
    env = {"HEALERT_BACKEND_URL": url, "HEALERT_API_KEY_FILE": str(missing)}
    for args in (["tail", "--audit-log", str(tmp_path / "audit.log"), "--state-dir", "s",
                  "--ops-listen", "127.0.0.1:0"], ["check-backend"]):
        done = run_command(tmp_path, args, env)
        assert done.returncode == 2, (args, done.stderr[-2000:], done.stdout[-2000:])
        assert str(missing) in done.stderr + done.stdout, args
    print(f"refused at start, exit codes: {found}")


def test_a_bom_and_whitespace_around_the_key_are_stripped(tmp_path: Path,
                                                            agents: list[Agent]) -> None:
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend:
        env = forwarding_env(tmp_path, backend.url, KEY)
        Path(env["HEALERT_API_KEY_FILE"]).write_bytes(f"\ufeff  {KEY}  \r\n\n".encode())
        agent = Agent(serve_args(), tmp_path, env)
        agents.append(agent)
        port, _ops = agent.ports()
        batches = [post_batch(port)]
        wait_for(lambda: len(backend.accepted()) >= 2 or not agent.alive(), timeout=30,
                 what="deliveries")
        assert agent.alive(), agent.output()[-3000:]
        assert compare(expected_bodies(batches), backend.accepted()) == (0, 0, 0)
        assert backend.statuses() == {200: 2}
        assert agent.stop() == 0


def _errors_about(agent: Agent, path: Path) -> list[str]:
    return [line for line in agent.output().splitlines()
            if " ERROR " in line and str(path) in line]


def test_a_key_file_turned_bad_keeps_the_key_in_use(tmp_path: Path,
                                                    agents: list[Agent]) -> None:
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend:
        env = forwarding_env(tmp_path, backend.url, KEY)
        key_file = Path(env["HEALERT_API_KEY_FILE"])
        agent = Agent(serve_args(), tmp_path, env)
        agents.append(agent)
        port, _ops = agent.ports()
        batches = [post_batch(port)]
        wait_for(lambda: len(backend.accepted()) >= 2, timeout=30, what="first deliveries")
        for round_, content in enumerate(("k\u00e9y\n".encode(), b"\xff\xfe\n")):
            key_file.write_bytes(content)
            wait_for(lambda r=round_: len(_errors_about(agent, key_file)) > r
                     or not agent.alive(), timeout=30, what="the refusal said")
            assert agent.alive(), agent.output()[-3000:]
            batches.append(post_batch(port))
            wait_for(lambda: compare(expected_bodies(batches), backend.accepted())[0] == 0
                     or not agent.alive(), timeout=30, what="delivered with the old key")
            assert agent.alive(), agent.output()[-3000:]
        errors = _errors_about(agent, key_file)
        assert len(errors) == 2, errors  # once per change, not once per second
        assert "keeping the key in use" in errors[0], errors
        key_file.write_text(KEY + "\n")
        batches.append(post_batch(port))
        wait_for(lambda: compare(expected_bodies(batches), backend.accepted())[0] == 0,
                 timeout=30, what="delivered after the fix")
        assert compare(expected_bodies(batches), backend.accepted()) == (0, 0, 0)
        assert 401 not in backend.statuses()
        assert agent.stop() == 0
        assert KEY not in agent.output()
