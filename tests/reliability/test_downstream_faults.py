"""Downstream faults: the real `serve` process delivering to the real test backend
(tests/backend_server.py) through a fault-injecting proxy (faultproxy.py).

Each phase posts a fresh batch to the webhook, turns a fault on, watches /metrics and
/readyz tell the truth while it lasts (the agent stays ready: the outbox rides the outage
out; the delivery line says what is wrong), turns it off and waits for delivery. At the
end every friction event is at the backend exactly once, except copies the agent itself
counted as possible duplicates (healert_forward_uncertain_resends_total).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from healert_webhook import forward
from healert_webhook.config import Settings
from healert_webhook.outbox import Outbox

from support.agent import (
    JSON,
    Agent,
    compare,
    expected_bodies,
    forwarding_env,
    metric,
    readyz,
    serve_args,
)
from support.backend import Backend, run_backend
from support.events import exec_event
from support.faultproxy import fault_proxy
from support.pki import make_pki
from support.servers import wait_for

KEY = "downstream-test-key-0123456789"


def agent_env(tmp_path: Path, url: str, **more: str) -> dict[str, str]:
    return forwarding_env(tmp_path, url, KEY, **{
        "HEALERT_BACKOFF_MAX": "0.5", "HEALERT_FORWARD_PROBE_INTERVAL": "0.5", **more})


class Poster:
    """Posts batches of people's exec sessions to the webhook; keeps what it sent."""

    def __init__(self, port: int, scheme: str = "http") -> None:
        self.url = f"{scheme}://127.0.0.1:{port}/audit"
        self.batches: list[bytes] = []

    def post(self, events: int = 4) -> None:
        n = next(_BATCHES)  # unique across posters: a repeat would be deduplicated
        body = orjson.dumps([exec_event(n * 100 + i, tag=f"d{n}") for i in range(events)])
        answer = httpx.post(self.url, content=body, headers=JSON, timeout=30)
        assert answer.status_code == 200, answer.text
        self.batches.append(body)


_BATCHES = itertools.count()


def attempts(ops: int, outcome: str) -> float:
    return metric(ops, "healert_forward_attempts_total", outcome=outcome)


def test_every_fault_then_recovery_delivers_each_event_once(tmp_path: Path) -> None:
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend, \
            fault_proxy(backend.port) as proxy:
        agent = Agent(serve_args(), tmp_path, agent_env(tmp_path, proxy.url))
        try:
            _phases(agent, backend, proxy)
        finally:
            agent.kill()


def _phases(agent: Agent, backend: Backend, proxy: Any) -> None:
    port, ops = agent.ports()
    poster = Poster(port)
    poster.post()
    delivered = _delivered(backend, poster)
    wait_for(delivered, what="first batch delivered")

    def phase(name: str, on: Callable[[], None], off: Callable[[], None], outcome: str,
              readyz_says: str) -> None:
        before = attempts(ops, outcome)
        on()
        poster.post()
        wait_for(lambda: attempts(ops, outcome) >= before + 2, what=f"{name}: failed attempts")
        ready = readyz(ops)
        # the agent stays ready (the apiserver keeps sending), /readyz says what is wrong
        assert ready.status_code == 200, (name, ready.text)
        assert re.search(readyz_says, ready.text), (name, ready.text)
        assert metric(ops, "healert_outbox_depth") >= 1 or not delivered()
        off()
        wait_for(delivered, timeout=30, what=f"{name}: delivered after recovery")

    phase("backend down", lambda: proxy.set_mode("down"), lambda: proxy.set_mode("pass"),
          "transport_error", "state=backoff")
    phase("500 burst", lambda: backend.control(mode="500"), lambda: backend.control(mode="ok"),
          "server_error", "state=backoff")
    phase("429 storm", lambda: backend.control(mode="429"), lambda: backend.control(mode="ok"),
          "rate_limited", "state=backoff")
    # an answer cut off after the backend stored the event: the agent asks before resending
    phase("reset mid-response", lambda: proxy.set_mode("reset"),
          lambda: proxy.set_mode("pass"), "transport_error", "state=(backoff|reconciling)")
    before_paused = metric(ops, "healert_forward_paused")
    phase("key refused", lambda: backend.control(mode="401"),
          lambda: backend.control(mode="ok"), "auth", "deliveries paused")
    assert before_paused == 0
    wait_for(lambda: metric(ops, "healert_forward_paused") == 0, what="unpaused")

    expected = expected_bodies(poster.batches)
    lost, dups, unexpected = compare(expected, backend.accepted())
    uncertain = metric(ops, "healert_forward_uncertain_resends_total")
    settled = sum(metric(ops, "healert_forward_reconciled_total", result=result)
                  for result in ("delivered", "resent", "unverifiable"))
    summary = (f"{len(expected)} events, lost {lost}, duplicates {dups}, unexpected "
               f"{unexpected}, reconciled {settled:g}, uncertain resends {uncertain:g}, proxy "
               f"resets {proxy.resets}")
    print(summary)
    assert (lost, unexpected) == (0, 0), summary
    assert dups <= uncertain, summary  # only a send the backend could not confirm can repeat
    assert settled >= 1, summary  # the reset phase cut answers off: they were reconciled
    assert agent.stop() == 0


def _delivered(backend: Backend, poster: Poster) -> Callable[[], bool]:
    def check() -> bool:
        lost, _, _ = compare(expected_bodies(poster.batches), backend.accepted())
        return lost == 0
    return check


def test_untrusted_tls_then_trusted_and_dns_failure_then_fixed(tmp_path: Path) -> None:
    """An HTTPS backend whose certificate the agent does not trust; then trusted (the CA
    in SSL_CERT_FILE). A backend name that does not resolve (.invalid never does, and no
    packet leaves the machine); then the right URL. Both: a clear error, retried, the
    agent ready throughout, every event delivered once after the fix."""
    pki = make_pki(tmp_path / "pki")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend, \
            fault_proxy(backend.port, server_ctx) as proxy:
        posters: list[Poster] = []
        for url, error, fixed_url, fixed_env in (
                (proxy.url, "CERTIFICATE_VERIFY_FAILED", proxy.url,
                 {"SSL_CERT_FILE": str(pki.ca_file)}),
                ("http://healert-backend.invalid:8000", r"delivery failed \(ConnectError",
                 backend.url, {})):
            agent = Agent(serve_args(), tmp_path, agent_env(tmp_path, url))
            try:
                port, ops = agent.ports()
                poster = Poster(port)
                posters.append(poster)
                poster.post()
                wait_for(lambda o=ops: attempts(o, "transport_error") >= 2, what="failures")
                assert readyz(ops).status_code == 200
                assert "state=backoff" in readyz(ops).text
                agent.wait_line(error)
                assert metric(ops, "healert_forward_uncertain_resends_total") == 0
                assert agent.stop() == 0
            finally:
                agent.kill()
            assert backend.accepted() == [] or compare(
                expected_bodies(posters[0].batches), backend.accepted())[0] == 0
            fixed = Agent(serve_args(), tmp_path,
                          agent_env(tmp_path, fixed_url, **fixed_env))
            try:
                fixed.ports()
                wait_for(_delivered(backend, poster), what="delivered once fixed")
                assert fixed.stop() == 0
            finally:
                fixed.kill()
        expected = expected_bodies([b for p in posters for b in p.batches])
        assert compare(expected, backend.accepted()) == (0, 0, 0)


# -- slow backend, scaled: the forwarder's whole-request timeout (10 s) set to 1 s ------

@contextlib.contextmanager
def forwarder_thread(settings: Settings, outbox: Outbox) -> Iterator[forward.Forwarder]:
    fwd = forward.Forwarder(settings, outbox)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(fwd.run(stop)),
                              daemon=True)
    thread.start()
    try:
        yield fwd
    finally:
        wait_for(loop.is_running, what="loop")
        loop.call_soon_threadsafe(stop.set)
        thread.join(20)
        assert not thread.is_alive()


def test_backend_slower_than_the_request_timeout(tmp_path: Path, long_run: bool) -> None:
    """The backend takes longer than the forwarder waits: HEALERT_FORWARD_TIMEOUT is 1 s
    here with the backend at 1.5 s; the long variant runs the default 10 s against 11 s.
    The backend records the event after its delay, so every timed-out attempt is a
    possible duplicate, and is counted."""
    from healert_webhook import metrics
    from healert_webhook.records import Friction

    timeout = Settings().forward_timeout if long_run else 1.0
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    with run_backend(tmp_path, api_key=KEY, limit=100_000) as backend:
        settings = Settings(backend_url=backend.url, api_key_file=key_file,
                            state_dir=tmp_path / "state", forward_rate=6000,
                            backoff_base=0.05, backoff_max=0.2, forward_timeout=timeout)
        outbox = Outbox(settings.outbox_path)
        events = [Friction(f"{n:032x}", "kubectl-exec",
                           {"entity_ref": f"component:default/svc-{n}", "type": "kubectl-exec",
                            "severity": "high", "description": f"slow-{n}"}) for n in range(3)]
        outbox.store(events)
        uncertain = metrics.FORWARD_UNCERTAIN_RESENDS._value.get()
        backend.control(latency=timeout + 0.5)
        with forwarder_thread(settings, outbox) as fwd:
            wait_for(lambda: fwd.status()["last_error"] == "timed out", timeout=timeout * 3,
                     what="a timeout")
            assert outbox.stats().depth == 3
            backend.control(latency=0.0)
            wait_for(lambda: outbox.stats().depth == 0, timeout=timeout * 4, what="drained")
        outbox.close()
        counts = [e["description"] for e in backend.accepted()]
    resends = metrics.FORWARD_UNCERTAIN_RESENDS._value.get() - uncertain
    assert set(counts) == {"slow-0", "slow-1", "slow-2"}
    assert len(counts) - 3 <= resends and resends >= 1
    print(f"slow backend: timeout {timeout:g}s, {len(counts)} copies of 3 events, "
          f"{resends:g} uncertain resends")
