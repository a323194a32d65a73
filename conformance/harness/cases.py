"""Cases: scenarios written before the feature they check, and a runner for many of them.

A `Case` is a `scenarios.Scenario` with three more things:

- `pending`: the issue whose feature is missing; the case's check of the friction events is
  then a strict expected failure (`pytest.mark.xfail(strict=True)`), so it turns into a
  failure the day the feature makes it pass, and the mark must go. Cases that already hold
  (what the feature must not break, and the negative cases) have none;
- `needs`: the requests detection must see, at the level it needs them (`Need`), so that
  an audit policy can be checked against them without a cluster;
- `act`: a step that needs the whole environment (the agents, not only the cluster).

`WindowRunner` runs many cases back to back without waiting for the agents after each:
it notes when each case started and ended, syncs both agents once at the end, and gives
each case the friction events and audit events whose request time (the apiserver's
`requestReceivedTimestamp`, which the friction event keeps as its `timestamp`) lies in its
window. A case whose events reach the agents late (a batch the apiserver retries) waits
for them itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conformance.harness import policy as audit_policy
from conformance.harness.cluster import ControlPlane
from conformance.harness.env import Environment
from conformance.harness.runner import (
    MARKER_PREFIX,
    Outcome,
    Runner,
    is_marker,
    read_audit_events,
)
from conformance.harness.scenarios import Expect, Fact, Scenario
from conformance.harness.verdict import show
from healert_webhook.auditpolicy.document import Policy
from healert_webhook.auditpolicy.evaluate import evaluate

Step = Callable[[ControlPlane, Path], None]
EnvStep = Callable[[Environment, Path], None]
ENTITY_PENDING = "entity from the cluster view: issue 24"


@dataclass(frozen=True)
class Need:
    """A request detection must see, and the lowest audit level that shows what it needs.

    `who` is `person` (a developer), `admin` (in system:masters) or `proxy` (the access
    proxy's service account acting for a person: the policy judges the service account).
    """

    level: str          # Metadata | Request | RequestResponse
    verb: str
    resource: str
    group: str = ""
    subresource: str = ""
    who: str = "person"
    why: str = ""


def _never(_cp: ControlPlane, _work: Path) -> None:
    raise RuntimeError("this case runs through its `act`")


@dataclass(frozen=True)
class Case(Scenario):
    """A scenario with its pending issue, its audit needs and, optionally, a whole-
    environment step (then `run` is not used)."""

    pending: str = ""
    needs: tuple[Need, ...] = ()
    act: EnvStep | None = None
    settle: float = 0.0   # seconds its window stays open after the step: the controllers'
                          # reactions (a replaced pod, a rollout) belong to the case

    def perform(self, env: Environment, work: Path) -> None:
        """Run the case's step."""
        if self.act is not None:
            self.act(env, work)
        else:
            self.run(env.cluster, work)

    def marks(self) -> list[pytest.MarkDecorator]:
        """A strict expected failure while the case is pending."""
        if not self.pending:
            return []
        return [pytest.mark.xfail(strict=True, reason=self.pending, raises=AssertionError)]


def case(name: str, what: str, run: Step, expect: Iterable[Expect] = (), *,
         audited: Iterable[Fact] = (), pending: str = "", needs: Iterable[Need] = (),
         design: str = "", fixture: bool = True, settle: float = 0.0) -> Case:
    """A case whose step runs against the cluster."""
    return Case(name, what, run, tuple(expect), fixture=fixture, design=design,
                audited=tuple(audited), pending=pending, needs=tuple(needs), settle=settle)


def env_case(name: str, what: str, act: EnvStep, expect: Iterable[Expect] = (), *,
             audited: Iterable[Fact] = (), pending: str = "", needs: Iterable[Need] = (),
             design: str = "", fixture: bool = True) -> Case:
    """A case whose step needs the whole environment (it stops or restarts parts)."""
    return Case(name, what, _never, tuple(expect), fixture=fixture, design=design,
                audited=tuple(audited), pending=pending, needs=tuple(needs), act=act)


def kubectl(who: str, *args: Any, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 60) -> Step:
    """A step running kubectl as `who`; an argument with a `resolve(cp)` method (a
    `scenarios.PodOf`) or a callable taking the control plane is looked up first."""
    def run(cp: ControlPlane, _work: Path) -> None:
        argv = [_arg(cp, a) for a in args]
        cp.kubectl(who, *argv, env=env, check=check, timeout=timeout)
    return run


def _arg(cp: ControlPlane, value: Any) -> str:
    if hasattr(value, "resolve"):
        return str(value.resolve(cp))
    if callable(value):
        return str(value(cp))
    return str(value)


def seq(*steps: Step) -> Step:
    """Steps one after the other."""
    def run(cp: ControlPlane, work: Path) -> None:
        for step in steps:
            step(cp, work)
    return run


# -- running ------------------------------------------------------------------------------

@dataclass
class Window:
    """When a case ran, and how it ended."""

    case: Case
    start: float
    end: float
    error: str | None = None

    def holds(self, when: float | None) -> bool:
        """True when `when` (epoch seconds) lies in the window."""
        return when is not None and self.start - 0.01 <= when <= self.end


@dataclass
class Results:
    """Every case's outcome, and what no case's window holds."""

    outcomes: dict[str, Outcome]
    stray_serve: list[dict[str, Any]] = field(default_factory=list)
    stray_tail: list[dict[str, Any]] = field(default_factory=list)


def epoch(stamp: Any) -> float | None:
    """Seconds since the epoch of an apiserver timestamp, or None when it is none."""
    if not isinstance(stamp, str) or not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class WindowRunner:
    """Runs cases back to back; one sync of both agents at the end (see the module doc)."""

    def __init__(self, env: Environment, work: Path) -> None:
        self.env = env
        self.work = work
        self.syncer = Runner(env, work)

    def run(self, cases: Iterable[Case]) -> Results:
        """Run every case in order, then collect."""
        before_serve, before_tail = self.syncer.sync(timeout=180)
        windows = [self._one(c) for c in cases]
        serve, tail = self.syncer.sync(timeout=180)
        new_serve = [r for k, r in serve.items() if k not in before_serve and not is_marker(r)]
        new_tail = [r for k, r in tail.items() if k not in before_tail and not is_marker(r)]
        events = [e for e in read_audit_events(self.env.cluster.layout.audit_log)
                  if MARKER_PREFIX not in e.get("requestURI", "")]
        outcomes = {}
        for w in windows:
            outcomes[w.case.name] = Outcome(
                w.case, _keyed(r for r in new_serve if w.holds(_when(r))),
                _keyed(r for r in new_tail if w.holds(_when(r))),
                [e for e in events if w.holds(epoch(e.get("requestReceivedTimestamp")))],
                w.error)
        return Results(outcomes,
                       [r for r in new_serve if not any(w.holds(_when(r)) for w in windows)],
                       [r for r in new_tail if not any(w.holds(_when(r)) for w in windows)])

    def _one(self, item: Case) -> Window:
        start = time.time()
        error = None
        try:
            item.perform(self.env, self.work)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        time.sleep(item.settle)
        window = Window(item, start, time.time(), error)
        time.sleep(0.02)  # the next case's requests start strictly after this window
        return window


def _when(row: dict[str, Any]) -> float | None:
    return epoch(row.get("event", {}).get("timestamp"))


def _keyed(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in rows}


# -- checking -----------------------------------------------------------------------------

def fact_problems(outcome: Outcome, levels: bool = True) -> list[str]:
    """What the apiserver should have audited for the case and did not (levels compared
    only when `levels`: under another policy they differ by design)."""
    found = []
    for fact in outcome.scenario.audited:
        wanted = fact if levels else Fact(**{**fact.__dict__, "level": None})
        matching = [e for e in outcome.audit_events if wanted.matches(e)]
        if fact.count is None and not matching:
            found.append(f"no audit event like {wanted} among {len(outcome.audit_events)}")
        elif fact.count is not None and len(matching) != fact.count:
            found.append(f"{len(matching)} audit events like {wanted}")
    return found


def level_problems(outcome: Outcome, policy: Policy) -> list[str]:
    """Every audit event of the case whose level is not the one the package's policy
    evaluator gives its request under `policy` (the policy the apiserver ran)."""
    found = []
    for event in outcome.audit_events:
        decided = evaluate(policy, audit_policy.request_of(event))
        if decided.level.text != event["level"]:
            found.append(f"{event['verb']} {event['requestURI']} by "
                         f"{(event.get('user') or {}).get('username', '')!r}: audited at "
                         f"{event['level']}, the evaluator gives {decided.level.text} "
                         f"(policy rule {decided.rule})")
    return found


def agreement_problems(outcome: Outcome) -> list[str]:
    """Where the webhook agent's friction events differ from the tail agent's."""
    if set(outcome.serve) != set(outcome.tail):
        return [f"webhook:\n{show(outcome.serve)}\ntail:\n{show(outcome.tail)}"]
    return [f"{key}: {row['event']} != {outcome.tail[key]['event']}"
            for key, row in outcome.serve.items() if row["event"] != outcome.tail[key]["event"]]
