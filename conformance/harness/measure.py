"""The load measurement: one fixed load under a given audit policy, and what auditing it cost.

A fresh environment (webhook agent only: the apiserver audits to the webhook alone, so its
CPU is the webhook path's) runs the background traffic of `noise.py` and, beside it, every
scenario of `scenarios.py` once (the bypasses). Measured over the load, from the start of
the traffic until the agent has received every event the apiserver audited:

- audit events the apiserver generated (`apiserver_audit_event_total`) and the webhook
  agent received (`healert_audit_events_total{source="webhook"}`), the batches and bytes
  it received (`healert_webhook_body_bytes` count and sum);
- the apiserver's and the agent's CPU seconds (user + system, from /proc/<pid>/stat);
- the API requests the apiserver served (`apiserver_request_total`), the same whatever
  the policy, to show the load was;
- the friction events the agent stored, by rule.

`python -m conformance.harness load [--policy FILE]` prints one Markdown table row (without
`--policy`, the policy `healert-webhook policy` generates for the agent's rules).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from conformance.harness.cluster import metric_sum, parse_metrics
from conformance.harness.env import Environment
from conformance.harness.noise import Load, LoadPlan
from conformance.harness.procs import wait_for
from conformance.harness.runner import is_marker
from conformance.harness.scenarios import SCENARIOS

HEADER = ("| policy | API requests | audit events | to the webhook | batches | MiB | "
          "apiserver CPU s | agent CPU s | friction events |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid`, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    # Fields 14 and 15 of proc(5) (utime, stime); `fields` starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Snapshot:
    """The counters at one moment (the agent's read just after the apiserver's)."""

    apiserver_cpu: float
    requests: float
    audited: float
    agent_cpu: float = 0.0
    received: float = 0.0
    batches: float = 0.0
    body_bytes: float = 0.0


def snapshot(env: Environment) -> Snapshot:
    """Read every counter of the measurement now."""
    return with_agent(env, apiserver_snapshot(env))


def apiserver_snapshot(env: Environment) -> Snapshot:
    """The apiserver's counters now (the agent's left at 0)."""
    cp = env.cluster
    assert cp.apiserver is not None
    text = cp.admin_client().get("/metrics").text
    api = parse_metrics(text, ("apiserver_audit_event_total", "apiserver_request_total"))
    return Snapshot(apiserver_cpu=cpu_seconds(cp.apiserver.pid),
                    requests=metric_sum(api, "apiserver_request_total"),
                    audited=metric_sum(api, "apiserver_audit_event_total"))


def with_agent(env: Environment, api: Snapshot) -> Snapshot:
    """`api` with the agent's counters read now."""
    serve = env.agents.serve
    assert serve is not None
    agent = serve.metrics()
    return replace(
        api, agent_cpu=cpu_seconds(serve.proc.pid),
        received=metric_sum(agent, "healert_audit_events_total", source="webhook"),
        batches=metric_sum(agent, "healert_webhook_body_bytes_count"),
        body_bytes=metric_sum(agent, "healert_webhook_body_bytes_sum"))


@dataclass
class Result:
    """What one run measured (differences between the two snapshots)."""

    policy: str
    seconds: float
    requests: int
    audited: int
    received: int
    batches: int
    body_bytes: int
    apiserver_cpu: float
    agent_cpu: float
    friction: Counter[str] = field(default_factory=Counter)
    friction_events: list[tuple[str, str, str]] = field(default_factory=list)
    load_requests: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def row(self) -> str:
        """One Markdown table row (see HEADER)."""
        return (f"| {self.policy} | {self.requests} | {self.audited} | {self.received} | "
                f"{self.batches} | {self.body_bytes / 2**20:.2f} | {self.apiserver_cpu:.1f} | "
                f"{self.agent_cpu:.1f} | {sum(self.friction.values())} |")

    def as_dict(self) -> dict[str, Any]:
        """Everything, for a JSON file."""
        found = asdict(self)
        found["friction"] = dict(sorted(self.friction.items()))
        found["friction_events"] = sorted(self.friction_events)
        return found


def _run_scenarios(env: Environment, work: Path, errors: list[str]) -> None:
    for scenario in SCENARIOS:
        try:
            scenario.run(env.cluster, work)
        except Exception as exc:  # reported with the result
            errors.append(f"scenario {scenario.name}: {type(exc).__name__}: {exc}")


def run_load(env: Environment, plan: LoadPlan, label: str) -> Result:
    """Run the load against a started environment and measure it."""
    serve = env.agents.serve
    assert serve is not None
    load = Load(env.cluster, plan)
    load.prepare()
    # Everything before the load (bootstrap, setup) reaches the agent before it starts.
    before = _settle(env, snapshot(env))
    seen = {row["key"] for row in serve.outbox()}
    errors: list[str] = []
    work = env.root / "work"
    work.mkdir(exist_ok=True)
    started = time.monotonic()
    load.start()
    bypasses = threading.Thread(target=_run_scenarios, args=(env, work, errors), daemon=True)
    bypasses.start()
    bypasses.join(timeout=1800)
    load.join()
    after = _settle(env, before)
    rows = [r for r in serve.outbox() if r["key"] not in seen and not is_marker(r)]
    return Result(
        policy=label, seconds=round(time.monotonic() - started, 1),
        requests=int(after.requests - before.requests),
        audited=int(after.audited - before.audited),
        received=int(after.received - before.received),
        batches=int(after.batches - before.batches),
        body_bytes=int(after.body_bytes - before.body_bytes),
        apiserver_cpu=round(after.apiserver_cpu - before.apiserver_cpu, 2),
        agent_cpu=round(after.agent_cpu - before.agent_cpu, 2),
        friction=Counter(r["rule"] for r in rows),
        friction_events=[(r["rule"], r["event"]["entity_ref"], r["event"].get("actor", ""))
                         for r in rows],
        load_requests=dict(load.tally.requests), errors=errors + load.tally.errors)


def _settle(env: Environment, before: Snapshot, timeout: float = 120) -> Snapshot:
    """The counters: the apiserver's now, the agent's once it has received every event
    the apiserver had audited by then (and a little more time to store what it found).
    Events audited meanwhile may make the agent's count a few higher. `before` is any
    earlier snapshot."""
    time.sleep(2)  # the last batch leaves at most a second after its first event
    api = apiserver_snapshot(env)
    wanted = before.received + api.audited - before.audited

    def caught_up() -> bool:
        return with_agent(env, api).received >= wanted

    wait_for(caught_up, timeout, "the agent to receive every audited event", interval=0.5)
    time.sleep(1)
    return with_agent(env, api)


def measure(policy: Path | None, plan: LoadPlan, root: Path | None = None,
            label: str | None = None, cluster_view: str | None = None) -> Result:
    """Start a fresh environment auditing with `policy` (None: the one the agent generates
    for its rules), run the load, stop; the result.

    `cluster_view` ("flag" or "env") gives the agent its cluster-view kubeconfig (off by
    default: today's agent does not read the cluster)."""
    folder = root or Path(tempfile.mkdtemp(prefix="load-"))
    env = Environment(folder, audit_policy=policy, audit_log=False, cluster_view=cluster_view)
    env.start()
    try:
        return run_load(env, plan, label or (policy.name if policy else "generated"))
    finally:
        env.stop()
