"""Defects found by reviewing delivery (outbox, forwarder, backend client), each proved
against the real test backend process and real SQLite files."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from test_forward import KEY, forwarding, friction, make_settings, numbers, sample, wait_for

from healert_webhook.outbox import Outbox

from support.backend import Backend, run_backend


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    with run_backend(tmp_path, api_key=KEY, limit=10_000, window=60.0) as server:
        yield server


@contextmanager
def gateway(upstream: str, read_timeout: float) -> Iterator[str]:
    """A reverse proxy on loopback in front of the backend, as an ingress runs one: it
    passes each request on and relays the answer, and answers 504 Gateway Timeout when
    the backend takes longer than `read_timeout` (nginx's proxy_read_timeout). A real
    HTTP hop, not a mock: nginx itself is not installed on the test machines."""
    client = httpx.Client(timeout=httpx.Timeout(read_timeout, connect=2.0))

    class Handler(BaseHTTPRequestHandler):
        def _relay(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(size) if size else None
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() in ("content-type", "authorization")}
            try:
                answer = client.request(self.command, upstream + self.path, content=body,
                                        headers=headers)
                status, content = answer.status_code, answer.content
                kind = answer.headers.get("content-type", "application/json")
            except httpx.TimeoutException:
                status, content, kind = 504, b"<html>504 Gateway Time-out</html>", "text/html"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = _relay

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        client.close()
        thread.join(5)


class _At:
    """A backend seen through the gateway: the forwarder's settings only read `url`."""

    def __init__(self, url: str) -> None:
        self.url = url


def test_a_gateway_timeout_after_the_backend_stored_the_event_sends_it_once(
        tmp_path: Path, backend: Backend, outbox: Outbox) -> None:
    # The backend stores the event, then takes 1.5 s to answer; the ingress in front of
    # it gives up after 0.3 s and answers 504. The request reached the backend: a blind
    # resend is a duplicate, which raises the service's score for nothing.
    backend.control(latency_after=1.5)
    with gateway(backend.url, read_timeout=0.3) as url:
        settings = make_settings(tmp_path, _At(url), forward_timeout=1.0)  # type: ignore[arg-type]
        outbox.store([friction(1)])
        with forwarding(settings, outbox):
            wait_for(lambda: len(backend.accepted()) >= 1, 15,
                     "the first send reached the backend")
            wait_for(lambda: outbox.stats().depth == 0 or len(backend.accepted()) >= 2, 20,
                     "settled or sent again")
            backend.control(latency_after=0.0)
            wait_for(lambda: outbox.stats().depth == 0, 20, "settled")
    assert numbers(backend.accepted()) == [1]
    assert sample("healert_forward_reconciled_total", {"result": "delivered"}) >= 1
