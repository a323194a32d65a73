"""Connection floods against the real `serve` process over mTLS: silent connections that
never speak TLS, connect-and-close churn, garbage instead of a ClientHello.

Must hold: RSS grows by less than 100 MiB over 10,000 such connections; a real client with
a client certificate is served throughout, both on its kept-alive connection and on new
ones; `/healthz` answers within a second throughout; refusals and handshake timeouts are
counted; the log names peers and stays short (aggregated per reason).
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from pathlib import Path

import httpx

from support.agent import JSON, Agent, Steady, metric, serve_args
from support.events import exec_event
from support.pki import client_context, make_pki
from support.servers import wait_for

FLOOD = 10_000
GROWTH_BOUND_MIB = 100


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))


class Prober:
    """Polls /healthz and posts on a new TLS connection every `interval` s, in a thread."""

    def __init__(self, ops: int, url: str, ctx: object, interval: float = 0.2) -> None:
        self.ops, self.url, self.ctx, self.interval = ops, url, ctx, interval
        self.health: list[float] = []  # seconds per /healthz, inf on failure
        self.fresh: list[int] = []  # status per new-connection post, 0 on failure
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                httpx.get(f"http://127.0.0.1:{self.ops}/healthz", timeout=5).raise_for_status()
                self.health.append(time.monotonic() - started)
            except httpx.HTTPError:
                self.health.append(float("inf"))
            body = [exec_event(n, tag="fresh")]
            try:
                with httpx.Client(verify=self.ctx, timeout=10) as client:  # type: ignore[arg-type]
                    self.fresh.append(client.post(self.url, json=body, headers=JSON).status_code)
            except httpx.HTTPError:
                self.fresh.append(0)
            n += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def _silent(port: int, count: int, held: list[socket.socket]) -> None:
    for _ in range(count):
        held.append(socket.create_connection(("127.0.0.1", port), timeout=10))


def _churn(port: int, count: int) -> None:
    for i in range(count):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                if i % 2:
                    sock.sendall(b"\x16\x03\x01garbage, not a ClientHello")
        except OSError:
            pass  # closed at once by the gate: that is the point


def test_silent_and_churning_connections_are_bounded_and_others_are_served(
        tmp_path: Path) -> None:
    _raise_fd_limit(FLOOD + 1024)
    pki = make_pki(tmp_path / "pki")
    agent = Agent(serve_args("state", "--tls-cert", str(pki.server_cert),
                             "--tls-key", str(pki.server_key),
                             "--tls-client-ca", str(pki.ca_file),
                             "--handshake-timeout", "1"), tmp_path)
    held: list[socket.socket] = []
    try:
        port, ops = agent.ports()
        url = f"https://127.0.0.1:{port}/audit"
        ctx = client_context(pki, pki.client())
        before = agent.memory()["VmRSS"]
        with Steady(url, client_kwargs={"verify": ctx}) as steady, \
                Prober(ops, url, ctx) as prober:
            half = FLOOD // 2
            silent = threading.Thread(target=_silent, args=(port, half, held))
            churn = threading.Thread(target=_churn, args=(port, FLOOD - half))
            silent.start()
            churn.start()
            silent.join(120)
            churn.join(120)
            peak = agent.memory()["VmHWM"] - before
            time.sleep(2.0)  # the held ones time out in their handshake meanwhile
        steady.check(minimum=20)
        assert max(prober.health) < 1.0, sorted(prober.health)[-5:]
        served = sum(1 for code in prober.fresh if code == 200)
        assert served >= 0.9 * len(prober.fresh) and served >= 5, prober.fresh
        assert peak < GROWTH_BOUND_MIB, peak
        assert metric(ops, "healert_connections_refused_total", listener="webhook") > 0
        assert metric(ops, "healert_tls_handshake_timeouts_total") > 0
        wait_for(lambda: metric(ops, "healert_tls_handshakes_in_progress") == 0,
                 what="handshakes drained")
        log = agent.output()
        refusal_lines = [line for line in log.splitlines()
                         if "closed at once" in line or "TLS handshake from" in line]
        assert 0 < len(refusal_lines) <= 40, len(refusal_lines)
        assert "127.0.0.1:" in refusal_lines[0]  # the peer is named
        print(f"connections: {FLOOD} silent/churn, RSS peak growth {peak} MiB, healthz max "
              f"{max(prober.health) * 1000:.0f} ms, fresh {served}/{len(prober.fresh)}, "
              f"steady {len(steady.codes)} x 200, {len(refusal_lines)} log lines")
    finally:
        for sock in held:
            sock.close()
        agent.kill()


def test_the_ops_listener_answers_when_the_webhook_is_at_the_descriptor_limit(
        tmp_path: Path) -> None:
    _raise_fd_limit(2000)
    agent = Agent(serve_args("state", "--max-connections", "100000"), tmp_path,
                  fd_limit=400)
    held: list[socket.socket] = []
    try:
        port, ops = agent.ports()
        # 400 descriptors, less the ops listener's 64 and a reserve of 64
        agent.wait_line(r"HEALERT_MAX_CONNECTIONS=100000 is more than the 272 descriptors")
        _silent(port, 600, held)  # past what the process could hold
        started = time.monotonic()
        assert httpx.get(f"http://127.0.0.1:{ops}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
        assert metric(ops, "healert_connections_open", listener="webhook") == 272
        refused = metric(ops, "healert_connections_refused_total", listener="webhook",
                         reason="max_connections")
        assert refused >= 600 - 272
        with httpx.Client(timeout=10) as client:  # a real client still gets in
            answer = client.post(f"http://127.0.0.1:{port}/audit", json=[exec_event(1)],
                                 headers=JSON)
        assert answer.status_code == 200
        assert agent.alive()
    finally:
        for sock in held:
            sock.close()
        agent.kill()


def test_a_flood_of_refused_handshakes_is_counted_and_the_log_stays_short(
        tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    agent = Agent(serve_args("state", "--tls-cert", str(pki.server_cert),
                             "--tls-key", str(pki.server_key),
                             "--tls-client-ca", str(pki.ca_file)), tmp_path)
    try:
        port, ops = agent.ports()
        no_cert = client_context(pki)  # trusts the server, presents no certificate
        tries = 400
        for _ in range(tries):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                        no_cert.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    conn.recv(16)
            except OSError:
                pass  # refused, as it must be
        wait_for(lambda: metric(ops, "healert_webhook_auth_failures_total",
                                reason="no_client_cert") == tries, what="every refusal counted")
        lines = [line for line in agent.output().splitlines() if "no_client_cert" in line]
        assert 1 <= len(lines) <= 5, len(lines)
        assert all("from 127.0.0.1:" in line for line in lines)  # each names the peer
    finally:
        agent.kill()
