"""In-process servers with the agent's own uvicorn setup, and polling helpers."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Running:
    """A uvicorn server running in a background thread on an ephemeral loopback port."""

    port: int
    server: Any
    thread: threading.Thread


@contextlib.contextmanager
def serve_app(app: Any, ctx: ssl.SSLContext | None = None, *, protocol: Any = None,
              keep_alive: float | None = None, limits: Any = None) -> Iterator[Running]:
    """Serve `app` with the agent's own uvicorn setup (uvloop, httptools, its protocol,
    its connection gate).

    `protocol`, `keep_alive` and `limits` replace the agent's protocol class, idle timeout
    and connection limits, so timeouts of tens of seconds can be tested in one or two.
    """
    from healert_webhook import connections
    from healert_webhook import protocol as http_protocol
    from healert_webhook import server as srv

    sock = srv.bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    if protocol is None:
        protocol = (http_protocol.PeerInfoProtocol if ctx is not None
                    else http_protocol.GuardedHttpProtocol)
    gate = connections.Gate("test", limits or connections.Limits(1000, 1000, 10.0), ctx)
    server = srv.make_server(app, protocol, gate)
    config = server.config
    if keep_alive is not None:
        config.timeout_keep_alive = keep_alive  # type: ignore[assignment]

    def run() -> None:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="server start")
    try:
        yield Running(port, server, thread)
    finally:
        server.should_exit = True
        thread.join(30)


def wait_for(check: Callable[[], Any], *, timeout: float = 20.0, what: str = "condition"
             ) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def sample(name: str, **labels: str) -> float:
    """The current value of a metric sample in this process (0 when absent)."""
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0
