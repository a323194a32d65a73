"""A TCP proxy between the agent and the test backend that injects network faults.

Runs an asyncio server in a thread of the test process on a loopback port. Modes:
  pass   forward bytes both ways
  reset  forward the request, let the backend answer (and record the event), then reset
         the agent's connection instead of passing the answer on: the request took
         effect but its answer was lost, as when a load balancer or NAT drops a flow
  down   stop listening and drop open connections: connections are refused, as for a
         backend that is down
With `ssl_context` the proxy terminates TLS, so the agent sees an HTTPS backend whose
certificate it may or may not trust.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from typing import Any


class FaultProxy:
    """See the module docstring; `url` is what HEALERT_BACKEND_URL should hold."""

    def __init__(self, upstream_port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.upstream_port = upstream_port
        self.ssl_context = ssl_context
        self.mode = "pass"
        self.resets = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the loop thread and listen."""
        self._thread.start()
        self._call(self._listen())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._handle, sock=sock,
                                                  ssl=self.ssl_context)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):  # a down backend keeps no connection either
            writer.transport.abort()

    def set_mode(self, mode: str) -> None:
        """Switch to `pass`, `reset` or `down` (down closes the listener; any other
        mode opens it again on the same port)."""
        if mode == "down":
            self._call(self._close())
        elif self._server is None:
            self._call(self._listen())
        self.mode = mode

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._open.add(writer)

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if self.mode == "reset":
                    self.resets += 1
                    raw = writer.get_extra_info("socket")
                    with contextlib.suppress(OSError):
                        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            w.transport.abort()
        self._open.discard(writer)

    def stop(self) -> None:
        """Stop listening and end the loop thread."""
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@contextlib.contextmanager
def fault_proxy(upstream_port: int, ssl_context: ssl.SSLContext | None = None
                ) -> Iterator[FaultProxy]:
    """Run a FaultProxy for the duration of the block."""
    proxy = FaultProxy(upstream_port, ssl_context)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
