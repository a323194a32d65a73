"""A rolling restart of the webhook agent while audit traffic flows, measured.

The two ways a DaemonSet replaces a node's receiver (docs/operations.md, "Upgrades and
rollbacks"), both on the same port and state directory, as on a node:

- `replace` (maxSurge 0): the old agent stops (SIGTERM), nothing listens for `gap`
  seconds (the old pod's deletion, the new pod's creation, image pull, init container,
  start), then the new agent starts;
- `surge` (maxSurge 1): the new agent starts on the same webhook and ops ports while the
  old one runs (SO_REUSEPORT: the kernel spreads new connections over both); once the
  ops port's /readyz answers and 10 s more have passed (minReadySeconds), the old one
  stops.

alice reads a Secret at a steady pace before, during and after (one friction event per
read). Measured: the reads answered, the friction events stored (each read once), the
events the apiserver dropped (`apiserver_audit_error_total{plugin="webhook"}`), and how
late each read reached the outbox (stored time minus request time): a read whose batch
the apiserver had to resend arrives 10 s or more late (its first retry waits 10 s, then
x1.5 with jitter; after 5 attempts, about 81 to 97 s, it drops the batch).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from conformance.harness.cluster import metric_sum
from conformance.harness.env import Environment
from conformance.harness.load import LoadResult, get_until
from conformance.harness.procs import wait_for
from conformance.harness.runner import Runner, is_marker, outbox_by_key

READ_PATH = "/api/v1/namespaces/payments/secrets/payments-db"
STRATEGIES = ("replace", "surge")
# A batch the apiserver resends arrives at least its first backoff late.
RESENT_AFTER = 10.0


@dataclass
class RollResult:
    """What one rolling restart lost, doubled or delayed."""

    strategy: str
    gap: float
    reads: int
    stored: int
    twice: int
    dropped: float
    closed_seconds: float
    delays: list[float] = field(default_factory=list)
    load: LoadResult = field(default_factory=LoadResult)

    @property
    def resent(self) -> int:
        """Reads that reached the outbox only through the apiserver's retries."""
        return sum(1 for d in self.delays if d >= RESENT_AFTER)

    def line(self) -> str:
        """One line for the log and the docs."""
        worst = max(self.delays, default=0.0)
        how = f"replace, port closed {self.closed_seconds:.1f} s" if self.strategy == \
            "replace" else f"surge, both running {self.closed_seconds:.1f} s"
        return (f"rolling restart ({how}): {self.reads} reads, {self.stored} stored, "
                f"{self.twice} twice, {self.dropped:.0f} audit events dropped by the "
                f"apiserver; {self.resent} arrived through its retries, the latest "
                f"{worst:.1f} s after the request")


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _reads(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows.values()
            if r["rule"] == "emergency-access" and r["event"].get("actor") == "alice"]


def roll(env: Environment, runner: Runner, strategy: str, *, gap: float = 0.0,
         before: float = 5.0, after: float = 8.0, pace: float = 0.05,
         settle: float = 240.0, predecessor: Path | None = None) -> RollResult:
    """Replace the webhook agent as `strategy` says while alice reads a Secret; wait up to
    `settle` seconds for the apiserver's retries; count what arrived. `predecessor`, an
    earlier version's executable, runs the agent that is replaced."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: one of {STRATEGIES}")
    if predecessor is not None:
        env.agents.restart_serve(executable=predecessor)
    runner.sync()
    known = set(runner.seen_serve) | set(outbox_by_key(runner.serve))
    dropped_before = metric_sum(env.cluster.metrics(), "apiserver_audit_error_total",
                                plugin="webhook")
    stop = threading.Event()
    loads: list[LoadResult] = []
    reader = threading.Thread(target=lambda: loads.append(
        get_until(env.cluster, "alice", READ_PATH, stop, pause=pace)), daemon=True)
    reader.start()
    try:
        time.sleep(before)
        if strategy == "replace":
            first, second = env.agents.replace_serve(gap)
        else:
            first, second = env.agents.surge_serve()
        time.sleep(after)
    finally:
        stop.set()
        reader.join(timeout=120)
    load = loads[0] if loads else LoadResult()
    sent = load.codes.get(200, 0)

    def new_reads() -> list[dict[str, Any]]:
        rows = outbox_by_key(runner.serve)
        runner.seen_serve = set(rows)
        return _reads({k: v for k, v in rows.items() if k not in known and not is_marker(v)})

    runner.sync(timeout=settle)
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: len(new_reads()) >= sent, settle, "every read in the outbox",
                 interval=1.0)
    time.sleep(3)  # a late duplicate would show now
    reads = new_reads()
    stamps = [str(r["event"]["timestamp"]) for r in reads]
    dropped = metric_sum(env.cluster.metrics(), "apiserver_audit_error_total",
                         plugin="webhook") - dropped_before
    return RollResult(strategy, gap, sent, len(set(stamps)), len(stamps) - len(set(stamps)),
                      dropped, second - first,
                      sorted(float(r["created"]) - _epoch(s) for r, s in zip(reads, stamps,
                                                                            strict=True)),
                      load)
