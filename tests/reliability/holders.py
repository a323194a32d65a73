"""Peers that hold many connections open to a listener, and probes that time answers.

`Holder` plays one peer keeping `count` connections of the given kinds open, renewing
each one the server closes at once (the strongest form of "held": every eviction is
answered with a new connection). `Probe` asks like a kubelet or Prometheus would: a new
connection per request, from a source address of its own choosing (any 127.0.0.0/8
address is loopback, so a second peer needs no network).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import resource
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

# What each kind of held connection sends once connected (and keeps doing).
OPS_HEAD = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
KINDS = {
    "idle": b"",  # connects, never sends a byte
    "half": b"GET /healthz HTTP/1.1\r\nhost:",  # half a head, then nothing
    "trickle": b"",  # sends `Hold.trickle` one byte per `trickle_every` seconds instead
    "served": OPS_HEAD,  # one whole request, reads the answer, then idles
}


@dataclass
class _Held:
    kind: str
    sock: socket.socket | ssl.SSLSocket
    sent: int = 0


@dataclass(frozen=True)
class Hold:
    """What one peer holds: `count` connections to 127.0.0.1:`port`, cycling through
    `kinds`, each sending `first[kind]` at once ("trickle": `trickle` one byte per
    `trickle_every` s). With `ca_file` the connections are TLS (trusting that CA; the
    handshake is done before anything is sent)."""

    port: int
    count: int
    kinds: tuple[str, ...] = tuple(KINDS)
    first: tuple[tuple[str, bytes], ...] = tuple(KINDS.items())
    trickle: bytes = OPS_HEAD
    trickle_every: float = 0.5
    ca_file: str | None = None
    source: str = "127.0.0.1"


class Holder:
    """Runs a `Hold` in a process of its own (its busy loop must not take the GIL from
    the test's probes): connections the server closes are reopened at once."""

    def __init__(self, hold: Hold) -> None:
        context = multiprocessing.get_context("spawn")
        self._opened = context.Value("q", 0)
        self._stop = context.Event()
        self._process = context.Process(target=_hold, args=(hold, self._opened, self._stop),
                                        daemon=True)

    @property
    def opened(self) -> int:
        """Connections opened so far (renewals included)."""
        return int(self._opened.value)

    def __enter__(self) -> Holder:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(60)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(10)

    def wait_opened(self, at_least: int, timeout: float = 120) -> None:
        """Until `at_least` connections were opened (the first round, or renewals)."""
        deadline = time.monotonic() + timeout
        while self.opened < at_least:
            assert self._process.is_alive(), "the holder died"
            assert time.monotonic() < deadline, f"only {self.opened} opened"
            time.sleep(0.05)


def _hold(hold: Hold, opened: Any, stop: Any) -> None:
    """The holder process: open every connection, then renew what closes, and trickle."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tls = None
    if hold.ca_file is not None:
        tls = ssl.create_default_context(cafile=hold.ca_file)
    first = dict(hold.first)
    held: dict[int, _Held] = {}
    selector = selectors.DefaultSelector()

    def connect(kind: str) -> _Held | None:
        try:
            raw = socket.create_connection(("127.0.0.1", hold.port), timeout=5,
                                           source_address=(hold.source, 0))
        except OSError:
            return None
        sock: socket.socket | ssl.SSLSocket = raw
        try:
            if tls is not None:
                sock = tls.wrap_socket(raw, server_hostname="127.0.0.1")
            data = first[kind] if kind != "trickle" else hold.trickle[:1]
            if data:
                sock.sendall(data)
        except OSError:
            raw.close()
            return None
        sock.setblocking(False)
        with opened.get_lock():
            opened.value += 1
        return _Held(kind, sock, 1 if kind == "trickle" else 0)

    def open_one(kind: str) -> None:
        one = connect(kind)
        while one is None and not stop.is_set():
            time.sleep(0.01)  # refused before the handshake, or the backlog is full
            one = connect(kind)
        if one is not None:
            held[one.sock.fileno()] = one
            selector.register(one.sock, selectors.EVENT_READ)

    for n in range(hold.count):
        if stop.is_set():
            break
        open_one(hold.kinds[n % len(hold.kinds)])
    next_trickle = time.monotonic() + hold.trickle_every
    while not stop.is_set():
        for key, _ in selector.select(0.05):
            one = held[key.fd]
            if _closed(one):
                selector.unregister(one.sock)
                del held[key.fd]
                one.sock.close()
                open_one(one.kind)  # renewed at once
        if time.monotonic() >= next_trickle:
            next_trickle += hold.trickle_every
            for one in list(held.values()):
                if one.kind == "trickle" and one.sent < len(hold.trickle):
                    with contextlib.suppress(OSError):
                        one.sock.send(hold.trickle[one.sent:one.sent + 1])
                        one.sent += 1
    for one in held.values():
        one.sock.close()


def _closed(held: _Held) -> bool:
    """Read what arrived; True when the server closed the connection."""
    try:
        while True:
            data = held.sock.recv(65536)
            if not data:
                return True
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True


@dataclass
class Probe:
    """Calls `ask()` every `interval` s in a thread; records seconds per call (inf: failed)."""

    ask: Callable[[], object]
    interval: float = 0.1
    times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.ask()
            except (httpx.HTTPError, OSError, AssertionError) as exc:
                self.times.append(float("inf"))
                self.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                self.times.append(time.monotonic() - started)
            self._stop.wait(self.interval)

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)

    def summary(self) -> str:
        """Answered / asked, and the slowest answer."""
        ok = [t for t in self.times if t != float("inf")]
        slowest = f"{max(ok) * 1000:.0f} ms" if ok else "-"
        return f"{len(ok)}/{len(self.times)} answered, slowest {slowest}"


def get(port: int, path: str, source: str = "127.0.0.1") -> Callable[[], object]:
    """A GET of `path` on a new plain-HTTP connection from `source`, as a kubelet probe
    does it (Connection: close), which must answer 200. A raw socket: an HTTP client
    library's own set-up would take longer than the answer being timed."""

    def ask() -> object:
        with socket.create_connection(("127.0.0.1", port), timeout=5,
                                      source_address=(source, 0)) as sock:
            sock.sendall(b"GET %s HTTP/1.1\r\nhost: x\r\nuser-agent: probe\r\n"
                         b"connection: close\r\n\r\n" % path.encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:60]
        return answer

    return ask
