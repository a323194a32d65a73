"""Run scenarios against a started Environment and collect what each produced, both ways.

After each scenario a *marker* request is made (eve, bound to no role, tries to read a
Secret of a unique name: refused, a friction event of its own). When both agents hold the
marker's friction event, everything audited before it has reached them: the tail agent reads
the file in order, and the apiserver's webhook batches are cut at most one second apart. The
new friction events of a scenario are the outbox's keys that appeared since the previous
marker.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from conformance.harness.agents import Agent
from conformance.harness.env import Environment
from conformance.harness.procs import wait_for
from conformance.harness.scenarios import Scenario

MARKER_PREFIX = "conformance-marker-"
MARKER_IDENTITY = "eve"   # bound to no role: every read of hers is refused
_counter = itertools.count(1)


@dataclass
class Outcome:
    """What one scenario produced: friction events by key from each agent, audit events."""

    scenario: Scenario
    serve: dict[str, dict[str, Any]]
    tail: dict[str, dict[str, Any]]
    audit_events: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def is_marker(row: dict[str, Any]) -> bool:
    """True for the friction event of a marker request."""
    return MARKER_PREFIX in str(row.get("event", {}).get("entity_ref", ""))


def outbox_by_key(agent: Agent) -> dict[str, dict[str, Any]]:
    """The agent's queued friction events, keyed by dedup key."""
    return {row["key"]: row for row in agent.outbox()}


def audit_log_files(audit_log: Path) -> list[Path]:
    """The rotated files (oldest first, by their timestamped names), then the live file."""
    rotated = sorted(p for p in audit_log.parent.glob(f"{audit_log.stem}-*{audit_log.suffix}"))
    return [*rotated, audit_log] if audit_log.exists() else rotated


def read_audit_events(audit_log: Path) -> Iterator[dict[str, Any]]:
    """Every complete event line of the audit log and its rotated files."""
    for path in audit_log_files(audit_log):
        with path.open("rb") as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    yield json.loads(line)


class Runner:
    """Runs scenarios one after the other and syncs both agents after each."""

    def __init__(self, env: Environment, work: Path) -> None:
        self.env = env
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.seen_serve: set[str] = set()
        self.seen_tail: set[str] = set()

    @property
    def serve(self) -> Agent:
        """The running serve agent (it may have been restarted)."""
        agent = self.env.agents.serve
        assert agent is not None
        return agent

    @property
    def tail(self) -> Agent:
        """The running tail agent."""
        agent = self.env.agents.tail
        assert agent is not None
        return agent

    def marker(self) -> str:
        """Make a marker request; returns its Secret name.

        A refused read is one whether the Secret exists or not, and refused reads of
        Secrets count as friction. A read answered 404 would not do: it revealed nothing,
        and detection must not count it as a read.
        """
        name = f"{MARKER_PREFIX}{next(_counter):04d}-{int(time.time() * 1000)}"
        with self.env.cluster.client_for(MARKER_IDENTITY) as client:
            answer = client.get(f"/api/v1/namespaces/default/secrets/{name}")
        if answer.status_code != 403:
            raise RuntimeError(f"marker read answered {answer.status_code}")
        return name

    def sync(self, timeout: float = 120) -> tuple[dict[str, dict[str, Any]],
                                                  dict[str, dict[str, Any]]]:
        """Wait until both agents hold a fresh marker; return both outboxes by key."""
        name = self.marker()
        found: dict[str, dict[str, dict[str, Any]]] = {}

        def has_marker(agent: Agent, label: str) -> bool:
            rows = outbox_by_key(agent)
            found[label] = rows
            return any(name in str(r["event"].get("entity_ref", "")) for r in rows.values())

        wait_for(lambda: has_marker(self.serve, "serve"), timeout, f"marker {name} (webhook)",
                 interval=0.3)
        wait_for(lambda: has_marker(self.tail, "tail"), timeout, f"marker {name} (tail)",
                 interval=0.3)
        return found["serve"], found["tail"]

    def baseline(self) -> None:
        """Sync once and remember what is already there (bootstrap's friction events)."""
        serve, tail = self.sync()
        self.seen_serve = set(serve)
        self.seen_tail = set(tail)

    def new_since_last(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """Sync and return the friction events that appeared since the previous sync."""
        serve, tail = self.sync()
        new_serve = {k: v for k, v in serve.items()
                     if k not in self.seen_serve and not is_marker(v)}
        new_tail = {k: v for k, v in tail.items() if k not in self.seen_tail and not is_marker(v)}
        self.seen_serve = set(serve)
        self.seen_tail = set(tail)
        return new_serve, new_tail

    def run(self, scenario: Scenario) -> Outcome:
        """Run one scenario and collect its friction events and audit events."""
        started = time.time()
        error = None
        try:
            scenario.run(self.env.cluster, self.work)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        serve, tail = self.new_since_last()
        ended = time.time()
        events = [e for e in read_audit_events(self.env.cluster.layout.audit_log)
                  if _within(e, started, ended) and MARKER_PREFIX not in e.get("requestURI", "")]
        return Outcome(scenario, serve, tail, events, error)


def _within(event: dict[str, Any], start: float, end: float) -> bool:
    stamp = event.get("requestReceivedTimestamp")
    if not isinstance(stamp, str):
        return False
    when = _epoch(stamp)
    return start - 0.01 <= when <= end


def _epoch(stamp: str) -> float:
    """Seconds since the epoch of an apiserver timestamp (RFC 3339, microseconds, Z)."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
