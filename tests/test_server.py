"""`serve` and `tail` as the real command in a subprocess: listeners, signals, reloads, exits.

Each test starts `python -m healert_webhook ...` on ephemeral loopback ports (port 0; the
actual ports are read from the agent's log lines), talks to it over real TLS, and stops
it with a real signal. No backend is configured, so friction events stay in the outbox,
which the test opens afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from healert_webhook.config import ConfigError, Settings, check_webhook, is_loopback
from healert_webhook.outbox import Outbox

from support.events import RULES, batch_of_400, event_list, exec_event, two_rules
from support.pki import (
    CLIENT_NAME,
    PKI,
    client_context,
    handshake_error,
    server_common_name,
)
from support.servers import wait_for
from support.webhooks import expected_keys

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tok-" + "9" * 20
JSON = {"content-type": "application/json"}


class Agent:
    """A `healert-webhook` subprocess whose output is collected line by line."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith("HEALERT_") and k not in {"RULES_PATH", "AUDIT_LOG_PATH"}}
        clean["PYTHONPATH"] = str(ROOT)
        clean.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "healert_webhook", *args], cwd=cwd, env=clean,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        regex = re.compile(pattern)

        def find() -> re.Match[str] | None:
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.output()}")
            return next((m for line in list(self.lines) if (m := regex.search(line))), None)

        return wait_for(find, timeout=timeout, what=pattern)

    def ports(self) -> tuple[int, int]:
        ops = int(self.wait_line(r"ops listener on http://127\.0\.0\.1:(\d+)").group(1))
        hook = self.wait_line(r"webhook listener on https?://127\.0\.0\.1:(\d+)/")
        return int(hook.group(1)), ops

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def wait(self, timeout: float = 30) -> int:
        """The exit code of an agent expected to exit on its own."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def started(tmp_path: Path, pki: PKI) -> Iterator[Any]:
    """Start `serve` with mTLS, a client-name allow-list and a token file."""
    agents: list[Agent] = []

    def start(*extra: str, rules: str = RULES) -> Agent:
        (tmp_path / "rules.yaml").write_text(rules)
        (tmp_path / "tokens").write_text(f"{TOKEN}\n")
        agent = Agent([
            "serve", "--rules", "rules.yaml", "--state-dir", "state",
            "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0",
            "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--tls-client-ca", str(pki.ca_file), "--tls-client-names", CLIENT_NAME,
            "--webhook-token-file", "tokens", *extra], tmp_path)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.kill()


def client(pki: PKI, token: str = TOKEN) -> httpx.Client:
    return httpx.Client(verify=client_context(pki, pki.client()), timeout=60,
                        headers={"authorization": f"Bearer {token}"})


def metric(ops: int, name: str, **labels: str) -> float:
    """A sample's value from the agent's /metrics (0 when absent)."""
    text = httpx.get(f"http://127.0.0.1:{ops}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def stored(tmp_path: Path) -> list[Any]:
    box = Outbox(tmp_path / "state" / "outbox.db")
    try:
        return box.head(1_000_000)
    finally:
        box.close()


def test_serve_end_to_end(tmp_path: Path, pki: PKI, started: Any) -> None:
    agent = started()
    port, ops = agent.ports()
    url = f"https://127.0.0.1:{port}/audit?timeout=30s"
    items, _ = batch_of_400()

    health = httpx.get(f"http://127.0.0.1:{ops}/healthz", timeout=10)
    assert (health.status_code, health.text) == (200, "ok\n")
    ready = httpx.get(f"http://127.0.0.1:{ops}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.text.startswith("ready\n")
    assert "deliveries:" in ready.text
    for secret in (TOKEN, str(tmp_path), "tokens", "server.key"):
        assert secret not in ready.text

    with client(pki) as c:
        assert c.post(url, content=event_list(items), headers=JSON).status_code == 200
    with client(pki, token="wrong") as c:
        assert c.post(url, content=event_list(items), headers=JSON).status_code == 401
    assert handshake_error(port, client_context(pki)) is not None  # no client certificate

    assert metric(ops, "healert_webhook_requests_total", code="200") == 1
    assert metric(ops, "healert_webhook_requests_total", code="401") == 1
    assert metric(ops, "healert_webhook_auth_failures_total", reason="bad_token") == 1
    wait_for(lambda: metric(ops, "healert_webhook_auth_failures_total",
                            reason="no_client_cert") == 1, what="handshake count")
    assert metric(ops, "healert_audit_events_total", source="webhook") == 400
    metrics_text = httpx.get(f"http://127.0.0.1:{ops}/metrics", timeout=10).text
    assert TOKEN not in metrics_text

    assert agent.stop() == 0
    assert {row.key for row in stored(tmp_path)} == expected_keys(items)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert TOKEN not in agent.output()


def test_sigterm_with_batches_in_flight_answers_them_all(
        tmp_path: Path, pki: PKI, started: Any) -> None:
    agent = started()
    port, _ = agent.ports()
    ctx = client_context(pki, pki.client())
    conns = []
    bodies = []
    for n in range(5):
        body = event_list([exec_event(n * 100 + i, tag=f"t{n}") for i in range(50)])
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        conn = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        conn.sendall(b"POST /audit?timeout=30s HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:len(body) // 2])
        conns.append(conn)
        bodies.append(body)
    time.sleep(0.5)  # the requests have started: the app is waiting for the rest
    agent.proc.send_signal(signal.SIGTERM)
    agent.wait_line("stopping: finishing in-flight batches")
    answers = []
    for conn, body in zip(conns, bodies, strict=True):
        conn.sendall(body[len(body) // 2:])
        answers.append(conn.recv(4096))
        conn.close()
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), answers
    assert agent.stop() == 0
    assert len(stored(tmp_path)) == 5 * 50


def test_rules_reload_on_change_and_sighup_keeps_old_rules_when_invalid(
        tmp_path: Path, pki: PKI, started: Any) -> None:
    agent = started("--log-format", "json")
    port, ops = agent.ports()
    url = f"https://127.0.0.1:{port}/audit"
    rules = tmp_path / "rules.yaml"

    rules.write_text(two_rules("zz"))
    wait_for(lambda: metric(ops, "healert_rules_reloads_total", result="success") == 1,
             what="reload on change")
    with client(pki) as c:
        assert c.post(url, content=event_list([exec_event(1)]), headers=JSON
                      ).status_code == 200

    rules.write_text("rules:\n  - name: Bad Name\n    severity: urgent\n")
    wait_for(lambda: metric(ops, "healert_rules_reloads_total", result="failure") == 1,
             what="failed reload")
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: metric(ops, "healert_rules_reloads_total", result="failure") == 2,
             what="failed reload on SIGHUP")
    with client(pki) as c:
        assert c.post(url, content=event_list([exec_event(2)]), headers=JSON
                      ).status_code == 200
    assert agent.stop() == 0
    assert sorted(row.rule for row in stored(tmp_path)) == ["zz-one", "zz-one", "zz-two",
                                                            "zz-two"]
    records = [orjson.loads(line) for line in agent.lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any(r["level"] == "ERROR" and "rules reload failed" in r["msg"] for r in records)


def test_certificate_and_token_rotation_without_restart(
        tmp_path: Path, pki: PKI, started: Any) -> None:
    agent = started()
    port, _ = agent.ports()
    ctx = client_context(pki, pki.client())
    assert server_common_name(port, ctx) == "healert-webhook-1"
    pki.reissue_server("healert-webhook-2")
    wait_for(lambda: server_common_name(port, ctx) == "healert-webhook-2",
             what="new certificate on a new connection")

    (tmp_path / "tokens").write_text(f"{TOKEN}\nnext-token\n")
    url = f"https://127.0.0.1:{port}/audit"

    def accepted(token: str) -> bool:
        with client(pki, token) as c:
            return c.post(url, content=b"[]", headers=JSON).status_code == 200

    wait_for(lambda: accepted("next-token"), what="new token accepted")
    assert accepted(TOKEN)
    assert agent.stop() == 0


def test_kubernetes_secret_symlink_swap_is_followed(tmp_path: Path, pki: PKI,
                                                     started: Any) -> None:
    """A Secret volume: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>, swapped by rename."""
    mount = tmp_path / "secret"
    first = mount / "..2026_11_26_10_00_00.1"
    first.mkdir(parents=True)
    for name, src in (("tls.crt", pki.server_cert), ("tls.key", pki.server_key)):
        (first / name).write_bytes(src.read_bytes())
        (mount / name).symlink_to(Path("..data") / name)
    (mount / "..data").symlink_to(first.name)
    agent = started("--tls-cert", str(mount / "tls.crt"), "--tls-key", str(mount / "tls.key"))
    port, _ = agent.ports()
    ctx = client_context(pki, pki.client())
    assert server_common_name(port, ctx) == "healert-webhook-1"

    pki.reissue_server("healert-webhook-2")
    second = mount / "..2026_11_26_11_00_00.2"
    second.mkdir()
    for name, src in (("tls.crt", pki.server_cert), ("tls.key", pki.server_key)):
        (second / name).write_bytes(src.read_bytes())
    (mount / "..data_tmp").symlink_to(second.name)
    os.rename(mount / "..data_tmp", mount / "..data")  # the atomic swap kubelet does
    wait_for(lambda: server_common_name(port, ctx) == "healert-webhook-2",
             what="certificate from the swapped secret")
    assert agent.stop() == 0


def test_serve_with_tail_follows_the_file(tmp_path: Path, pki: PKI, started: Any) -> None:
    log = tmp_path / "audit.log"
    log.write_text("")
    agent = started("--tail", str(log))
    _, ops = agent.ports()
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{ops}/readyz", timeout=10).status_code
             == 200, what="ready with the tailer following")
    with log.open("ab") as f:
        f.write(orjson.dumps({"kind": "Event", "apiVersion": "audit.k8s.io/v1",
                              **exec_event(7, tag="tail")}) + b"\n")
    wait_for(lambda: metric(ops, "healert_audit_events_total", source="tail") >= 1,
             what="tailed event")
    assert agent.stop() == 0
    assert [row.rule for row in stored(tmp_path)] == ["kubectl-exec"]


# -- refusing to start ------------------------------------------------------------------


def test_plain_http_on_a_non_loopback_address_is_refused(tmp_path: Path) -> None:
    agent = Agent(["serve", "--listen", "0.0.0.0:0", "--ops-listen", "127.0.0.1:0",
                   "--state-dir", "state"], tmp_path)
    assert agent.wait() == 2
    assert "HEALERT_INSECURE_HTTP" in agent.output()
    with pytest.raises(ConfigError, match="HEALERT_INSECURE_HTTP"):
        check_webhook(Settings(listen=("10.1.2.3", 8443)))
    check_webhook(Settings(listen=("10.1.2.3", 8443), insecure_http=True))
    check_webhook(Settings(listen=("127.0.0.1", 8443)))
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")


def test_invalid_rules_at_start_print_every_problem_and_the_agent_runs(
        tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - name: Bad Name\n    severity: urgent\n    match:\n      resouce: pods\n")
    agent = Agent(["serve", "--rules", "rules.yaml", "--listen", "127.0.0.1:0",
                   "--ops-listen", "127.0.0.1:0", "--state-dir", "state"], tmp_path)
    try:
        agent.ports()  # it started, on the packaged rules
        out = agent.output()
        assert "cannot be used" in out
        assert "urgent" in out and "resouce" in out and "Bad Name" in out
    finally:
        assert agent.stop() == 0


def test_unusable_certificate_exits_2(tmp_path: Path, pki: PKI) -> None:
    agent = Agent(["serve", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0",
                   "--state-dir", "state", "--tls-cert", str(pki.server_cert),
                   "--tls-key", str(pki.ca_file)], tmp_path)
    assert agent.wait() == 2
    assert "HEALERT_TLS_CERT" in agent.output()


def test_env_token_is_accepted(tmp_path: Path, pki: PKI) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    agent = Agent(["serve", "--rules", "rules.yaml", "--state-dir", "state",
                   "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0",
                   "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)],
                  tmp_path, env={"HEALERT_WEBHOOK_TOKEN": "from-env"})
    try:
        port, _ = agent.ports()
        ctx = client_context(pki)  # no client CA configured: the token is the auth
        with httpx.Client(verify=ctx, timeout=30) as c:
            url = f"https://127.0.0.1:{port}/audit"
            ok = c.post(url, content=b"[]", headers={**JSON, "authorization": "Bearer from-env"})
            bad = c.post(url, content=b"[]", headers={**JSON, "authorization": "Bearer x"})
        assert (ok.status_code, bad.status_code) == (200, 401)
        assert agent.stop() == 0
        assert "from-env" not in agent.output()
    finally:
        agent.kill()
