"""Where the agent's CPU goes under the benchmark's load: py-spy on the real process.

    .venv/bin/pip install py-spy                               # a benchmark-only tool
    .venv/bin/python benchmarks/spy.py webhook             # (c): serve under loadgen
    .venv/bin/python benchmarks/spy.py webhook --tls       # (c) over mTLS
    .venv/bin/python benchmarks/spy.py latency             # (d): 400/batch at 10/s
    .venv/bin/python benchmarks/spy.py tail                # (e): tail catch-up

py-spy samples the running process from outside (no code change in the agent, no
slowdown of it with --nonblocking; --native, which adds C frames, pauses it per sample).
The samples are summarised twice: by category (what part of the agent: parse, detect,
uvicorn's protocol, the outbox thread...) and by the innermost Python function. The
raw collapsed stacks are kept (`--keep FILE`) for a flame graph (e.g. speedscope.app or
inferno-flamegraph). Idle samples (threads waiting in epoll, on a lock or a queue) are
left out, so the shares are shares of CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
sys.path.insert(2, str(Path(__file__).resolve().parent.parent / "tests"))

import procs
import run
from procs import Unavailable

from support import workload

# (category, substrings of a frame); a sample goes to the first category any of whose
# substrings appears in one of its frames, looking from the innermost frame outwards.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("gc", ("<gc>", "gc_collect", "collect (gc")),
    ("parse: orjson.loads", ("orjson", "loads (")),
    ("field pass: simdjson's read, its objects' fields, rule_out (prefilter.py, index.py)",
     ("prefilter.py", "index.py", "simdjson")),
    ("field pass: msgspec (fieldpass.py)", ("fieldpass.py", "msgspec")),
    ("body reading (sources/body.py, batches.py)", ("body.py", "batches.py")),
    ("detect.py", ("detect.py",)),
    ("tail: read/split (tail.py)", ("tail.py",)),
    ("pipeline.py / metrics", ("pipeline.py", "prometheus_client")),
    ("outbox.py (SQLite store, thread)", ("outbox.py", "sqlite3")),
    ("forward.py", ("forward.py",)),
    ("webhook.py (the ASGI app)", ("webhook.py",)),
    ("tls / ssl", ("ssl.py", "sslproto", "tls.py")),
    ("uvicorn protocol (httptools)", ("httptools_impl", "uvicorn")),
    ("asyncio / uvloop loop", ("asyncio", "uvloop", "run_forever", "_run_once")),
    ("threads / executor", ("threading.py", "concurrent/futures")),
]


def py_spy() -> str:
    """The py-spy executable (beside this interpreter, else on PATH)."""
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if found is None:
        raise Unavailable("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def record(pid: int, out: Path, rate: int, native: bool) -> subprocess.Popen[bytes]:
    """Start sampling `pid` (and its threads) into collapsed stacks at `out`."""
    argv = [py_spy(), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
            "--output", str(out), "--threads"]
    # C frames need the process paused while its stack is read; Python frames do not
    argv.append("--native" if native else "--nonblocking")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches before the load starts
    if proc.poll() is not None:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise Unavailable(f"py-spy failed (needs ptrace permission): {err[-300:]}")
    return proc


def finish(proc: subprocess.Popen[bytes]) -> None:
    """Stop sampling; py-spy writes its output on SIGINT."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)


# With --native py-spy cannot tell an idle thread from a busy one: the frames where
# threads wait (the loop in epoll, a worker on its queue or for the GIL) mark those idle.
IDLE_FRAMES = ("epoll_pwait", "epoll_wait", "SimpleQueue_get", "PyThread_acquire_lock_timed",
               "pthread_cond_timedwait", "take_gil")


def categorise(frames: list[str]) -> str:
    """The category of one sample (frames outermost first)."""
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def summarise(raw: Path, top: int) -> None:
    """Print the CPU shares by category, by thread and by innermost function."""
    by_cat: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if any(idle in frame for frame in frames for idle in IDLE_FRAMES):
            continue
        total += count
        # --threads makes the outermost frame "thread (<tid>): <name>"
        by_thread[frames[0].rpartition(": ")[2]] += count
        by_cat[categorise(frames[1:])] += count
        by_leaf[frames[-1]] += count
    if not total:
        print("no samples (the process was idle?)")
        return
    print(f"\n{total} CPU samples")
    for title, counter, limit in (("by category", by_cat, len(CATEGORIES) + 1),
                                  ("by thread", by_thread, 8),
                                  ("by innermost frame", by_leaf, top)):
        print(f"\n{title}:")
        for name, count in counter.most_common(limit):
            print(f"  {100.0 * count / total:5.1f}%  {name}")


def load_webhook(agent: procs.Agent, bodies: Path, pki: procs.PKI | None, mode: str,
                 cfg: run.Config) -> None:
    """The benchmark's (c) or (d) load against a started server."""
    url = run.server_url(agent, pki is not None)
    if mode == "latency":
        result = run.loadgen(url, bodies, ["rate", "--per-second", "10", "--count",
                                           str(cfg.latency_batches)])
        lat = sorted(result["latencies_ms"])
        print(f"ack latency ms: p50 {lat[len(lat) // 2]:.1f}  p99 "
              f"{lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]:.1f}  max {lat[-1]:.1f}")
    else:
        run.loadgen(url, bodies, ["throughput", "--connections", str(cfg.connections),
                                  "--passes", str(cfg.passes)], pki)


def profile_webhook(args: argparse.Namespace, cfg: run.Config, tmp: Path, raw: Path) -> None:
    """Sample `serve` while the load generator posts the workload (after a warm-up)."""
    work = workload.stream(args.stream, cfg.events, match_ratio=cfg.match_ratio,
                           seed=cfg.seed)
    bodies = tmp / "bodies.json"
    bodies.write_bytes(b"\n".join(work.batches(cfg.batch)) + b"\n")
    pki = procs.mtls_pki(tmp) if args.tls else None
    agent = procs.start_server(tmp / "srv", pki)
    try:
        run.loadgen(run.server_url(agent, pki is not None), bodies,
                    ["throughput", "--connections", "1", "--passes", "1"], pki)
        spy = record(agent.pid, raw, args.rate, args.native)
        before = procs.cpu_seconds(agent.pid)
        start = time.perf_counter()
        load_webhook(agent, bodies, pki, args.what, cfg)
        spent = procs.cpu_seconds(agent.pid) - before
        finish(spy)
        print(f"server CPU {spent:.2f} s over {time.perf_counter() - start:.1f} s wall")
    finally:
        agent.stop()


def profile_tail(args: argparse.Namespace, cfg: run.Config, tmp: Path, raw: Path) -> None:
    """Sample `tail --from start` catching up the benchmark's rotated log."""
    chunks = run.log_chunks(cfg, args.stream)
    lines = sum(chunk.count(b"\n") for chunk in chunks)
    agent, path = run.start_tail_agent(tmp)
    try:
        spy = record(agent.pid, raw, args.rate, args.native)
        before = procs.cpu_seconds(agent.pid)
        run.write_with_rotation(path, chunks)
        run.wait_tail_lines(agent, lines, 600)
        spent = procs.cpu_seconds(agent.pid) - before
        finish(spy)
        print(f"tail CPU {spent:.2f} s for {lines} lines: {lines / spent:,.0f} lines/cpu-s")
    finally:
        agent.stop()


def main(argv: list[str] | None = None) -> int:
    """Profile one of the benchmark's loads and print where the CPU went."""
    parser = argparse.ArgumentParser(description="py-spy profile of a benchmark load.")
    parser.add_argument("what", choices=["webhook", "latency", "tail"])
    parser.add_argument("--tls", action="store_true",
                        help="webhook over TLS with a client certificate")
    parser.add_argument("--quick", action="store_true", help="the quick mode's sizes")
    parser.add_argument("--stream", choices=workload.STREAMS, default="today",
                        help="the workload (tests/support/workload.py)")
    parser.add_argument("--native", action="store_true",
                        help="include C frames (orjson, sqlite, ssl, the kernel side)")
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--passes", type=int,
                        help="passes over the workload (more samples; default: the mode's)")
    parser.add_argument("--keep", type=Path, help="save the collapsed stacks here")
    args = parser.parse_args(argv)
    cfg = run.MODES["quick" if args.quick else "full"]
    if args.passes:
        cfg = dataclasses.replace(cfg, passes=args.passes)
    with tempfile.TemporaryDirectory(prefix="healert-prof-") as tmp_name:
        tmp = Path(tmp_name)
        raw = tmp / "stacks.txt"
        try:
            if args.what == "tail":
                profile_tail(args, cfg, tmp, raw)
            else:
                profile_webhook(args, cfg, tmp, raw)
        except Unavailable as exc:
            print(f"not available: {exc}", file=sys.stderr)
            return 1
        summarise(raw, args.top)
        if args.keep is not None:
            shutil.copyfile(raw, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
