"""The real agent as a subprocess: start, watch its output and memory, stop or kill it;
its metrics; the friction events a batch should produce; a steady, well-behaved client.

Everything talks over loopback to real processes: the agent as `python -m healert_webhook
serve`, the backend as tests/support/backend.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from healert_webhook import backend_contract
from healert_webhook.config import Settings
from healert_webhook.pipeline import make_detector
from healert_webhook.records import Stats
from healert_webhook.rules import load_rules

from support.events import exec_event
from support.paths import ROOT
from support.servers import wait_for

JSON = {"content-type": "application/json"}
MiB = 1024 * 1024


class Agent:
    """A `healert-webhook serve` subprocess; its output goes to a file read line by line."""

    started = 0

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None,
                 log_name: str | None = None, fd_limit: int | None = None) -> None:
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("HEALERT_", "SSL_CERT"))
                 and k not in {"RULES_PATH", "AUDIT_LOG_PATH"}}
        clean["PYTHONPATH"] = str(ROOT)
        clean.update(env or {})
        Agent.started += 1
        self.log_path = cwd / (log_name or f"agent-{Agent.started}.log")  # one per process
        argv = [sys.executable, "-m", "healert_webhook", *args]
        if fd_limit is not None:  # the shell sets the limit, then becomes the agent
            argv = ["sh", "-c", f'ulimit -n {int(fd_limit)} && exec "$@"', "sh", *argv]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=clean, stdout=out, stderr=out)
        self.pid = self.proc.pid

    def output(self) -> str:
        """Everything the agent wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def wait_line(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first output line matching `pattern` (fails if the agent exits first)."""
        regex = re.compile(pattern)

        def find() -> re.Match[str] | None:
            found = regex.search(self.output())
            if found is None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.output()}")
            return found

        return wait_for(find, timeout=timeout, what=pattern)

    def ports(self) -> tuple[int, int]:
        """(webhook port, ops port), read from the agent's startup lines."""
        ops = int(self.wait_line(r"ops listener on http://127\.0\.0\.1:(\d+)").group(1))
        hook = self.wait_line(r"webhook listener on https?://127\.0\.0\.1:(\d+)/")
        return int(hook.group(1)), ops

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) of the agent process, in MiB."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        return {key: int(re.search(rf"{key}:\s+(\d+)", text).group(1)) // 1024  # type: ignore
                for key in ("VmRSS", "VmHWM")}

    def stop(self, timeout: float = 40) -> int:
        """SIGTERM and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (no cleanup of any kind) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None


def forwarding_env(tmp_path: Path, url: str, key: str, **more: str) -> dict[str, str]:
    """The environment of an agent that delivers to the backend at `url` without delay:
    the API key in a file, pacing and retries in tens of milliseconds, `more` on top."""
    key_file = tmp_path / "api-key"
    key_file.write_text(key + "\n")
    return {"HEALERT_BACKEND_URL": url, "HEALERT_API_KEY_FILE": str(key_file),
            "HEALERT_FORWARD_RATE": "6000", "HEALERT_BACKOFF_BASE": "0.05",
            "HEALERT_FORWARD_POLL_INTERVAL": "0.2", **more}


def serve_args(state: str = "state", *extra: str) -> list[str]:
    """`serve` on ephemeral loopback ports with the packaged rules."""
    return ["serve", "--state-dir", state, "--listen", "127.0.0.1:0",
            "--ops-listen", "127.0.0.1:0", *extra]


def metric(ops: int, name: str, **labels: str) -> float:
    """A sample's value from the agent's /metrics (0 when absent)."""
    text = httpx.get(f"http://127.0.0.1:{ops}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += float(s.value)
    return total


def readyz(ops: int) -> httpx.Response:
    """GET /readyz."""
    return httpx.get(f"http://127.0.0.1:{ops}/readyz", timeout=10)


# -- expected friction events ------------------------------------------------------------

def packaged_detector() -> Any:
    """The Detector `serve` builds with no rules flag and default settings."""
    return make_detector(load_rules(None), Settings())


def canonical(event: dict[str, Any]) -> bytes:
    """A friction event as the backend receives it, in a comparable form."""
    body, problem = backend_contract.prepare(event)
    assert body is not None, problem
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def expected_bodies(batches: Iterable[bytes]) -> set[bytes]:
    """The distinct friction event bodies the packaged rules find in `batches`."""
    detector = packaged_detector()
    found: dict[str, bytes] = {}
    for body in batches:
        items = orjson.loads(body)
        items = items["items"] if isinstance(items, dict) else items
        for friction in detector.detect(items, Stats()):
            found.setdefault(friction.key, canonical(friction.event))
    assert len(set(found.values())) == len(found), "two keys share a body: not comparable"
    return set(found.values())


def compare(expected: set[bytes], accepted: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(lost, duplicated copies, unexpected) of the backend's events against `expected`."""
    counts = Counter(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in accepted)
    lost = len(expected - set(counts))
    dups = sum(c - 1 for c in counts.values() if c > 1)
    unexpected = sum(c for body, c in counts.items() if body not in expected)
    return lost, dups, unexpected


# -- a steady, well-behaved client -------------------------------------------------------

@dataclass
class Steady:
    """Posts a small exec batch every `interval` seconds in a thread; records answers."""

    url: str
    tag: str = "steady"
    interval: float = 0.05
    client_kwargs: dict[str, Any] = field(default_factory=dict)
    codes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    batches: list[bytes] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        with httpx.Client(timeout=60, **self.client_kwargs) as client:
            n = 0
            while not self._stop.is_set():
                body = orjson.dumps([exec_event(n * 2 + i, tag=f"{self.tag}{n}")
                                     for i in range(2)])
                try:
                    code = client.post(self.url, content=body, headers=JSON).status_code
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                else:
                    self.codes.append(code)
                    self.batches.append(body)
                n += 1
                self._stop.wait(self.interval)

    def __enter__(self) -> Steady:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        wait_for(lambda: self.codes or self.errors, what="first steady batch")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)

    def check(self, minimum: int = 5) -> None:
        """Every batch got 200, none failed, and enough of them were sent."""
        assert self.errors == [], self.errors[:5]
        assert set(self.codes) == {200}, Counter(self.codes)
        assert len(self.codes) >= minimum, len(self.codes)




def settle(seconds: float) -> None:
    """Give a server a moment (only where the test then polls or counts, never as proof)."""
    time.sleep(seconds)
