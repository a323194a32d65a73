"""What the webhook's CPU per event is made of: the receiving stack, then the events.

    .venv/bin/python benchmarks/stack.py            # plain HTTP
    .venv/bin/python benchmarks/stack.py --tls      # HTTPS with client certificates
    .venv/bin/python benchmarks/stack.py --stream realistic   # another workload

Three servers take the benchmark's throughput load (loadgen.py, the same bodies) in
turn, round after round, so the machine's wandering speed hits them alike:

    socket  a uvloop protocol that reads each body into one buffer and answers: the
            kernel's and the event loop's part, about the least any Python server spends
    stack   the agent's own listener (uvicorn, GuardedHttpProtocol and its fast path for
            the webhook's POSTs, the connection gate, the same TLS context) before an app
            that only reads the body and answers
    agent   `serve` itself: the stack, then reading, pre-filtering and detecting

Printed per event, as medians of the rounds: each server's CPU, and the differences
(the stack beyond the socket, the events beyond the stack), next to the per-event
orjson.loads floor measured in the same run. A ratio to the floor cannot exceed
floor / stack however cheap reading the events becomes.

Then what reading the events costs in this process, measured in the same rounds: the
webhook's whole reading of the bodies, the field pass that decides each event from its
five fields (the native scanner when it is built), and the candidates it leaves, parsed
and detected (those that fire apart from those that do not). Last, the budget: what an
event may cost at the issue's target ratio (floor / target), and how much of it the
socket, the field pass and the candidates take before anything else is done.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
sys.path.insert(2, str(Path(__file__).resolve().parent.parent / "tests"))

import procs
import run
from procs import Unavailable

from healert_webhook import nativescan
from healert_webhook.config import Settings
from healert_webhook.pipeline import Pipeline, make_detector
from healert_webhook.records import Stats

from support import workload

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
HEAD_LIMIT = 64 * 1024


class SocketOnly(asyncio.BufferedProtocol):
    """Reads a request head, then its Content-Length body straight into one buffer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = bytearray(HEAD_LIMIT)
        self.filled = 0
        self.body: memoryview | None = None
        self.got = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to answer on."""
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        """The rest of the head buffer, or of the body once its length is known."""
        if self.body is None:
            return memoryview(self.head)[self.filled:]
        return self.body[self.got:]

    def buffer_updated(self, nbytes: int) -> None:
        """Account for what was read; answer once a body is complete."""
        if self.body is not None:
            self.got += nbytes
        else:
            self.filled += nbytes
            end = self.head.find(b"\r\n\r\n", 0, self.filled)
            if end < 0:
                return
            self._start_body(end + 4)
        if self.body is not None and self.got >= len(self.body):
            self.body = None
            assert self.transport is not None
            self.transport.write(ANSWER)

    def _start_body(self, body_at: int) -> None:
        lines = bytes(self.head[:body_at]).lower().split(b"\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in lines
                      if line.startswith(b"content-length:"))
        self.body = memoryview(bytearray(length))
        self.got = self.filled - body_at  # loadgen sends one request at a time
        self.body[:self.got] = memoryview(self.head)[body_at:self.filled]
        self.filled = 0


class ReadOnlyApp:
    """An ASGI app that reads the body whole, as the webhook does, and answers `{}`;
    the webhook's POSTs take the protocol's fast path, as they do in the agent."""

    raw_path = b"/audit"

    @property
    def fast_receiver(self) -> ReadOnlyApp:
        """The protocol's fast path is this app's."""
        return self

    def begin(self, scope: dict[str, Any]) -> ReadOnly | None:
        """Take every POST to the path with a Content-Length."""
        for name, value in scope["headers"]:
            if name == b"content-length":
                return ReadOnly(int(value))
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Any other request: read it and answer `{}` the ASGI way."""
        await read_only_app(scope, receive, send)


class ReadOnly:
    """A request on the fast path: its body read, then `{}`."""

    def __init__(self, size: int) -> None:
        self.size = size

    async def serve(self, body: Any) -> tuple[int, bytes, tuple[()]] | None:
        """Read the body whole and answer."""
        return None if await body.read() is None else (200, b"{}", ())


async def read_only_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that reads the body whole, as the webhook does, and answers `{}`."""
    if scope["type"] != "http":
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    b"".join(chunks)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def serve(kind: str, port: int, pki: list[str] | None) -> None:
    """Run one of the measured servers in this process until it is killed."""
    from healert_webhook import connections, protocol, server, tls

    ctx = None
    if pki is not None:
        ca, cert, key = (Path(p) for p in pki)
        ctx = tls.build_server_context(cert, key, ca)
    sock = server.bind("127.0.0.1", port)  # listening from here on
    print("listening", flush=True)
    loop_factory = server.uvicorn_config(None, http="httptools").get_loop_factory()

    async def main() -> None:
        if kind == "socket":
            loop = asyncio.get_running_loop()
            listener = await loop.create_server(SocketOnly, sock=sock, ssl=ctx)
            await listener.serve_forever()
        http = protocol.PeerInfoProtocol if ctx is not None else protocol.GuardedHttpProtocol
        gate = connections.Gate("bench", connections.Limits(64, 16), ctx)
        await server.make_server(ReadOnlyApp(), http, gate).serve(sockets=[sock])

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


class Server:
    """One measured server process, on a loopback port."""

    def __init__(self, name: str, pid: int, url: str, stop: Any) -> None:
        self.name, self.pid, self.url, self.stop = name, pid, url, stop


def start_bare(kind: str, pki: procs.PKI | None) -> Server:
    """The socket or stack server in a process of its own, once it listens."""
    port = procs.free_port()
    argv = [sys.executable, __file__, "--serve", kind, str(port)]
    if pki is not None:
        argv += ["--pki", str(pki.ca), str(pki.server_cert), str(pki.server_key)]
    proc = subprocess.Popen(argv, env=procs.agent_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline() != b"listening\n":
        proc.kill()
        raise Unavailable(f"the {kind} server did not start (exit {proc.wait()})")
    scheme = "https" if pki is not None else "http"
    return Server(kind, proc.pid, f"{scheme}://127.0.0.1:{port}/audit", proc.kill)


def per_event_us(server: Server, pki: procs.PKI | None, bodies: Path, events: int,
                 passes: int) -> float:
    """Server CPU microseconds per event over `passes` passes of the bodies."""
    before = procs.cpu_seconds(server.pid)
    run.loadgen(server.url, bodies, ["throughput", "--connections", "4", "--passes",
                                     str(passes)], pki)
    return (procs.cpu_seconds(server.pid) - before) / (events * passes) * 1e6


@dataclass
class Candidates:
    """The events of a stream the field pass leaves to parse and detect, as bytes and
    parsed, those that fire a rule apart from the others."""

    firing: list[dict[str, Any]]
    quiet: list[dict[str, Any]]
    raw: list[bytes]

    @classmethod
    def of(cls, pipeline: Pipeline, bodies: list[bytes]) -> Candidates:
        """The candidates of `bodies` as the webhook's field pass leaves them."""
        fields, detector = pipeline.rules.prefilter.fields, pipeline.detector
        raw: list[bytes] = []
        for body in bodies:
            raw.extend(bytes(item) for _index, item in
                       fields.sort_body(body, len(body), Counter())[1])
        firing: list[dict[str, Any]] = []
        quiet: list[dict[str, Any]] = []
        for event in map(orjson.loads, raw):
            (firing if detector.detect([event], Stats()) else quiet).append(event)
        return cls(firing, quiet, raw)


class InProcess:
    """What reading a stream's events costs in this process, part by part."""

    def __init__(self, work: workload.Workload) -> None:
        settings = Settings()
        self.pipeline = Pipeline(settings, make_detector(run.shipped_rules(), settings))
        self.bodies = list(work.batches(400))
        self.events = len(work.items)
        self.candidates = Candidates.of(self.pipeline, self.bodies)

    def measure(self) -> dict[str, float]:
        """Each part once, in CPU microseconds per event of the stream."""
        fields, detector = self.pipeline.rules.prefilter.fields, self.pipeline.detector
        cand = self.candidates

        def sort_bodies() -> None:
            for body in self.bodies:
                fields.sort_body(body, len(body), Counter())

        parts = {
            "reading": lambda: run.evaluate_read(self.pipeline, self.bodies),
            "field pass": sort_bodies,
            "parse": lambda: run.loads_each(cand.raw),
            "firing": lambda: detector.detect(cand.firing, Stats()),
            "quiet": lambda: detector.detect(cand.quiet, Stats()),
        }
        return {name: run.cpu_timed(func) / self.events * 1e6 for name, func in parts.items()}


def measure(args: argparse.Namespace, tmp: Path
            ) -> tuple[dict[str, list[float]], float, InProcess, dict[str, float]]:
    """Per-event CPU of each server by round, the floor in microseconds, and the
    in-process parts (medians of the rounds)."""
    work = workload.stream(args.stream, args.events, seed=1)
    bodies = tmp / "bodies.json"
    bodies.write_bytes(b"\n".join(work.batches(400)) + b"\n")
    pki = procs.mtls_pki(tmp) if args.tls else None
    (tmp / "agent").mkdir()
    agent = procs.start_server(tmp / "agent", pki)
    servers = [start_bare("socket", pki), start_bare("stack", pki),
               Server("agent", agent.pid, run.server_url(agent, pki is not None), agent.stop)]
    inproc = InProcess(work)
    floors: list[float] = []
    spent: dict[str, list[float]] = {s.name: [] for s in servers}
    parts: list[dict[str, float]] = []
    try:
        for server in servers:  # warm up
            per_event_us(server, pki, bodies, args.events, 1)
        inproc.measure()
        for round_ in range(args.rounds):
            run.loads_each(work.items)  # warm, as run.py measures it
            floors.append(run.cpu_timed(lambda: run.loads_each(work.items))
                          / len(work.items) * 1e6)
            parts.append(inproc.measure())
            for server in servers if round_ % 2 == 0 else reversed(servers):
                spent[server.name].append(
                    per_event_us(server, pki, bodies, args.events, args.passes))
    finally:
        for server in servers:
            server.stop()
    medians = {name: statistics.median(p[name] for p in parts) for name in parts[0]}
    return spent, statistics.median(floors), inproc, medians


def report(spent: dict[str, list[float]], floor: float) -> dict[str, float]:
    """Print the medians, the differences and what they allow against the floor; the
    medians."""
    # CPU time comes in 10 ms ticks: a tiny load can measure as none
    median = {name: max(statistics.median(values), 1e-3) for name, values in spent.items()}
    print(f"floor: orjson.loads per event      {floor:6.2f} us")
    for name, values in spent.items():
        rounds = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:7s} server CPU per event    {median[name]:6.2f} us   "
              f"({floor / median[name]:.2f}x the floor)   rounds: {rounds}")
    print(f"the stack beyond the socket        {median['stack'] - median['socket']:6.2f} us")
    print(f"the events beyond the stack        {median['agent'] - median['stack']:6.2f} us")
    return median


def report_parts(inproc: InProcess, parts: dict[str, float]) -> None:
    """Print what reading the events costs in this process, part by part."""
    cand, events = inproc.candidates, inproc.events
    scanner = "native scanner" if nativescan.native is not None else "pure Python"
    shares = {"parse": len(cand.raw), "firing": len(cand.firing), "quiet": len(cand.quiet)}
    print("in this process, per event of the stream:")
    print(f"  the webhook's reading, all of it         {parts['reading']:6.2f} us")
    print(f"  the field pass ({scanner})".ljust(43) + f"{parts['field pass']:6.2f} us")
    labels = {"parse": "candidates parsed", "firing": "candidates detected, firing",
              "quiet": "candidates detected, not firing"}
    for name, label in labels.items():
        share = shares[name]
        each = parts[name] * events / share if share else 0.0
        print(f"  {label} ({100 * share / events:.2f}%)".ljust(43)
              + f"{parts[name]:6.2f} us   ({each:.1f} us each)")


def report_budget(args: argparse.Namespace, floor: float, servers: dict[str, float],
                  parts: dict[str, float]) -> None:
    """Print what an event may cost at the target ratio, and what the parts that any
    reading of the events pays take of it."""
    target = run.TARGETS[args.stream]["webhook_mtls" if args.tls else "webhook_http"]
    budget = floor / target
    fixed = [("the socket alone", servers["socket"]),
             ("the field pass", parts["field pass"]),
             ("the candidates' parse", parts["parse"]),
             ("the candidates' detection", parts["firing"] + parts["quiet"])]
    print(f"budget at the target ({target:.2f}x the floor): {budget:6.2f} us an event")
    total = 0.0
    for label, value in fixed:
        total += value
        print(f"  {label:38s} {value:6.2f} us   (sum {total:.2f})")
    left = budget - total
    print(f"left for everything else                 {left:6.2f} us   "
          f"(the agent spends {servers['agent'] - total:.2f} us beyond these)")


def main(argv: list[str] | None = None) -> int:
    """Measure and print, or (--serve) be one of the measured servers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tls", action="store_true", help="HTTPS with client certificates")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=16000)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--stream", choices=workload.STREAMS, default="today",
                        help="the workload posted (tests/support/workload.py)")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--pki", nargs=3, metavar=("CA", "CERT", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.pki)
        return 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            spent, floor, inproc, parts = measure(args, Path(tmp))
    except Unavailable as exc:
        print(f"cannot measure: {exc}", file=sys.stderr)
        return 2
    servers = report(spent, floor)
    report_parts(inproc, parts)
    report_budget(args, floor, servers, parts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
