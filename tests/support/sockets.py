"""Plain sockets against a listener on loopback: connect (from a chosen address), ask,
and tell whether the server closed the connection; an app that proves a connection
the way the webhook does once a request passed authentication."""

from __future__ import annotations

import socket
import time
from typing import Any

from healert_webhook.auth import mark_authenticated


class Proving:
    """Answers 200; a request carrying `x-auth: yes` proves its connection (as the webhook
    does once a request passed authentication)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if (b"x-auth", b"yes") in scope["headers"]:
            mark_authenticated(scope)
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                    source_address=(source, 0))
    time.sleep(0.05)  # admitted in this order
    return sock


def ask(sock: socket.socket, auth: bool = False) -> bytes:
    sock.sendall(b"GET /x HTTP/1.1\r\nhost: x\r\n%s\r\n" % (b"x-auth: yes\r\n" if auth else b""))
    return sock.recv(1024)


def closed(sock: socket.socket) -> bool:
    """True when the server closed or reset the connection."""
    sock.settimeout(0.3)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except OSError:
        return True
