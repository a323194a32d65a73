"""Load generator for the webhook benchmark: a separate process posting EventList bodies.

It plays the apiserver: HTTP/1.1 keep-alive connections, `Content-Type: application/json`,
the path with `?timeout=30s`. It runs in its own process so its CPU time is never counted
as the server's. Reads bodies (one per line) from a file and prints one JSON result line.

    python benchmarks/loadgen.py --url http://127.0.0.1:8443/audit --bodies FILE \
        throughput --connections 4 --passes 2
    python benchmarks/loadgen.py --url ... --bodies FILE rate --per-second 10 --count 100

Only loopback targets are accepted: this is a benchmark tool, never a load test of
anything else.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import ssl
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TIMEOUT = 60.0  # generous: a 60 MiB body on a busy 2-core machine


def connect(url: str, cafile: str | None,
            client: tuple[str, str] | None = None) -> http.client.HTTPConnection:
    """One keep-alive connection to the webhook (TLS when the URL is https, presenting
    `client`'s certificate and key when given)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"refusing non-loopback target {host}")
    if parts.scheme == "https":
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.check_hostname = False  # the benchmark certificate names 127.0.0.1 only
        if client is not None:
            ctx.load_cert_chain(*client)
        return http.client.HTTPSConnection(host, parts.port, timeout=TIMEOUT, context=ctx)
    return http.client.HTTPConnection(host, parts.port, timeout=TIMEOUT)


def target(url: str) -> str:
    """The request target the apiserver uses: the path plus `?timeout=30s`."""
    return (urlsplit(url).path or "/") + "?timeout=30s"


class Client:
    """A connection that reconnects once after a dropped keep-alive connection."""

    def __init__(self, url: str, cafile: str | None, token: str | None,
                 client: tuple[str, str] | None = None) -> None:
        self.url, self.cafile, self.client = url, cafile, client
        self.path = target(url)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.conn = connect(url, cafile, client)

    def cipher(self) -> str | None:
        """The TLS cipher the connection negotiated (None: plain HTTP, or not connected)."""
        sock = self.conn.sock
        found = sock.cipher() if isinstance(sock, ssl.SSLSocket) else None
        return found[0] if found else None

    def post(self, body: bytes) -> int:
        """POST one body; return the status code (0 for a transport error)."""
        for attempt in (1, 2):
            try:
                self.conn.request("POST", self.path, body=body, headers=self.headers)
                resp = self.conn.getresponse()
                resp.read()
                return resp.status
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = connect(self.url, self.cafile, self.client)
                if attempt == 2:
                    return 0
        return 0


def run_throughput(args: argparse.Namespace, bodies: list[bytes]) -> dict[str, Any]:
    """Post every body `passes` times over `connections` connections, as fast as answered."""
    jobs = [body for _ in range(args.passes) for body in bodies]
    lock = threading.Lock()
    status: Counter[int] = Counter()
    next_job = [0]
    ciphers: set[str] = set()

    def worker() -> None:
        client = Client(args.url, args.cafile, args.token, _client(args))
        local: Counter[int] = Counter()
        while True:
            with lock:
                index = next_job[0]
                next_job[0] += 1
            if index >= len(jobs):
                break
            local[client.post(jobs[index])] += 1
        cipher = client.cipher()
        client.conn.close()
        with lock:
            status.update(local)
            ciphers.update([cipher] if cipher else [])

    threads = [threading.Thread(target=worker) for _ in range(args.connections)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"requests": len(jobs), "status": {str(k): v for k, v in status.items()},
            "wall_s": wall, "ciphers": sorted(ciphers)}


def run_rate(args: argparse.Namespace, bodies: list[bytes]) -> dict[str, Any]:
    """Post `count` bodies at a fixed rate on one connection; record each ack latency."""
    client = Client(args.url, args.cafile, args.token, _client(args))
    interval = 1.0 / args.per_second
    latencies: list[float] = []
    status: Counter[int] = Counter()
    start = time.perf_counter()
    for index in range(args.count):
        due = start + index * interval  # absolute schedule: a slow answer does not shift it
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = time.perf_counter()
        status[client.post(bodies[index % len(bodies)])] += 1
        latencies.append((time.perf_counter() - sent) * 1000.0)
    wall = time.perf_counter() - start
    client.conn.close()
    return {"requests": args.count, "status": {str(k): v for k, v in status.items()},
            "wall_s": wall, "latencies_ms": latencies}


def _client(args: argparse.Namespace) -> tuple[str, str] | None:
    """The client certificate and key to present, if given."""
    return (args.client_cert, args.client_key) if args.client_cert else None


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="webhook URL on 127.0.0.1")
    p.add_argument("--bodies", required=True, type=Path, help="file of bodies, one per line")
    p.add_argument("--cafile", help="CA certificate for https")
    p.add_argument("--token", help="bearer token to send")
    p.add_argument("--client-cert", help="client certificate to present (PEM)")
    p.add_argument("--client-key", help="its private key (PEM)")
    sub = p.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--connections", type=int, default=4)
    t.add_argument("--passes", type=int, default=1)
    r = sub.add_parser("rate")
    r.add_argument("--per-second", type=float, default=10.0)
    r.add_argument("--count", type=int, default=100)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one load and print its result as one JSON line."""
    args = parser().parse_args(argv)
    bodies = [line for line in args.bodies.read_bytes().split(b"\n") if line]
    if not bodies:
        print(json.dumps({"error": "no bodies"}))
        return 2
    result = run_throughput(args, bodies) if args.mode == "throughput" else \
        run_rate(args, bodies)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
