"""Both agents with their view of the cluster, against the real apiserver and
controller-manager: one workload, one entity, for every action and audit level.

A control plane of its own: its agents get the kubeconfig of their read-only cluster
identity in `KUBECONFIG` (the default HEALERT_CLUSTER_VIEW=auto finds it) and start
`HEAD_START` seconds before etcd and the apiserver. The shared bootstrap's Deployment
`shop/checkout` is the workload: its pod template is labelled
`backstage.io/kubernetes-id: shop-checkout`, the Deployment itself only
`app.kubernetes.io/name: checkout`, and Argo CD's tracking annotation marks it
GitOps-managed. The apiserver runs the policy the agent generates for its rules with the
cluster view on: alice's Deployment writes and the access proxy's (`--as=bob`) at Request
(what was sent, no resulting object), exec, port-forward and logs at Metadata. Whatever
the event carries, the entity must be `shop-checkout`, from the webhook and from the tail
alike.

In order: before the cluster answers, both agents run and say their view is not
synced; then the actions; a Job made from generateName; a Secret in a namespace that
declares its entity; the apiserver stopped for a few seconds while the tail agent reads
(the views answer from memory, then list again); a pod deleted before the batch about it
reaches the webhook agent (the apiserver's retry of a batch the agent was down for).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conformance.harness import objects
from conformance.harness.agents import Agent
from conformance.harness.cases import agreement_problems
from conformance.harness.cluster import ControlPlane, metric_sum
from conformance.harness.env import Environment
from conformance.harness.procs import wait_for
from conformance.harness.runner import Outcome, Runner
from conformance.harness.scenarios import PROXY, Expect, Fact, PodOf, Scenario
from conformance.harness.verdict import problems

pytestmark = pytest.mark.timeout(1200)

HEAD_START = 4.0     # seconds the agents run before etcd and the apiserver start
SYNC_WAIT = 180.0    # bound on a view's (re)sync: its backoff reaches 30 s between tries
DOWN_SECONDS = 5.0
NAMESPACE_SEEN = 2.0  # a new namespace reaches the views' watches in milliseconds
RETRY_WAIT = 120.0   # bound on the apiserver's retry of a failed batch (10 s, x1.5, jitter)
FIRST_ATTEMPT = 2.0  # by then the batch's first attempt has failed (its wait is 1 s)
NS = "shop"
CHECKOUT = PodOf(NS, "Deployment", "checkout")
ENTITY = "component:shop/shop-checkout"
BACKSTAGE = "backstage.io/kubernetes-id"
DECLARED_NS = "storefront"
Step = Callable[[ControlPlane, Path], None]


@dataclass
class Before:
    """What the agents said while nothing answered at the apiserver's address."""

    readyz: dict[str, tuple[int, str]]
    synced: dict[str, bool | None]
    waited: float  # seconds from the apiserver answering to both views synced


@dataclass
class Wired:
    """The environment, its runner and what was seen before the cluster answered."""

    env: Environment
    runner: Runner
    before: Before


def synced(agent: Agent) -> bool | None:
    """Whether every resource of the agent's view is synced; None without a view."""
    text = httpx.get(agent.url("/metrics"), timeout=5).text
    samples = [line for line in text.splitlines()
               if line.startswith("healert_cluster_view_synced{")]
    return all(line.endswith(" 1.0") for line in samples) if samples else None


def both(env: Environment) -> tuple[Agent, Agent]:
    """The running serve and tail agents."""
    serve, tail = env.agents.serve, env.agents.tail
    assert serve is not None and tail is not None
    return serve, tail


def wait_synced(env: Environment, what: str) -> None:
    """Wait (bounded) until both views are synced."""
    for agent in both(env):
        wait_for(lambda a=agent: synced(a) is True, SYNC_WAIT,  # type: ignore[misc]
                 f"{agent.name}'s view synced {what}", interval=0.5)


@pytest.fixture(scope="module")
def wired(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wired]:
    """Agents first, the cluster `HEAD_START` seconds later, then both views synced."""
    env = Environment(tmp_path_factory.mktemp("entity-wiring"), cluster_view="env")
    try:
        env.start_agents()
        time.sleep(HEAD_START)
        readyz, views = {}, {}
        for agent in both(env):
            answer = httpx.get(agent.url("/readyz"), timeout=5)
            readyz[agent.name] = (answer.status_code, answer.text)
            views[agent.name] = synced(agent)
        env.start_cluster()
        answered = time.time()
        wait_synced(env, "after the cluster started")
        before = Before(readyz, views, time.time() - answered)
        runner = Runner(env, env.root / "work")
        runner.baseline()
        yield Wired(env, runner, before)
    finally:
        env.stop()


@pytest.fixture(scope="module")
def rule_names(wired: Wired) -> set[str]:
    """The rules the agents run (every shipped rule enabled)."""
    doc = yaml.safe_load(wired.env.rules.read_text())
    return {rule["name"] for rule in doc.get("rules", [])}


# -- steps ---------------------------------------------------------------------------------

def kubectl(who: str, *args: str | PodOf, pod_prefix: str = "", check: bool = True,
            timeout: float = 60) -> Step:
    """kubectl as `who`; a PodOf argument is the workload's running pod (`pod_prefix`
    before its name)."""
    def run(cp: ControlPlane, _work: Path) -> None:
        argv = [f"{pod_prefix}{a.resolve(cp)}" if isinstance(a, PodOf) else a for a in args]
        cp.kubectl(who, *argv, check=check, timeout=timeout)
    return run


def _exec(who: str, pod: PodOf | str, *extra: str) -> Step:
    def run(cp: ControlPlane, _work: Path) -> None:
        name = pod.resolve(cp) if isinstance(pod, PodOf) else pod
        cp.kubectl(who, *extra, "-n", NS, "exec", name, "-c", "main", "--", "ls", "/",
                   check=False)
    return run


def _seq(*steps: Step) -> Step:
    def run(cp: ControlPlane, work: Path) -> None:
        for step in steps:
            step(cp, work)
    return run


def _create(cp: ControlPlane, *items: dict[str, Any]) -> None:
    cp.kubectl(ControlPlane.BOOTSTRAP, "apply", "-f", "-",
               stdin=json.dumps(objects.as_list(list(items))))


def _running_pod_of(cp: ControlPlane, kind: str, name: str) -> str:
    pod = str(cp.wait_for_pod_of(NS, kind, name)["metadata"]["name"])
    cp.run_pod(NS, pod)
    return pod


def _migration(cp: ControlPlane, _work: Path) -> None:
    """The bootstrap (an internal actor) runs a Job from generateName; alice execs into
    its pod, `db-migrate-<5>-<5>`."""
    cp.kubectl(ControlPlane.BOOTSTRAP, "create", "-f", "-",
               stdin=json.dumps(objects.job(NS, generate_name="db-migrate-")))
    jobs = cp.get_json(ControlPlane.BOOTSTRAP, "-n", NS, "jobs")["items"]
    [job] = [j["metadata"]["name"] for j in jobs
             if j["metadata"].get("generateName") == "db-migrate-"]
    _exec("alice", _running_pod_of(cp, "Job", job))(cp, _work)


def _declared_namespace(cp: ControlPlane, _work: Path) -> None:
    """A namespace labelled with its entity; once the views hold it, a Secret in it and
    alice's rights there (the bootstrap's RoleBinding is an rbac-change: that rule counts
    internal actors too); she reads the Secret."""
    _create(cp, {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": DECLARED_NS, "labels": {BACKSTAGE: "storefront-team"}}})
    time.sleep(NAMESPACE_SEEN)
    _create(cp, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": "payments-db-credentials", "namespace": DECLARED_NS},
             "stringData": {"password": "not-a-real-secret"}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "developers", "namespace": DECLARED_NS},
             "subjects": [{"kind": "User", "name": "alice",
                           "apiGroup": "rbac.authorization.k8s.io"}],
             "roleRef": {"kind": "ClusterRole", "name": objects.DEVELOPER_ROLE,
                         "apiGroup": "rbac.authorization.k8s.io"}})
    cp.kubectl("alice", "-n", DECLARED_NS, "get", "secret", "payments-db-credentials",
               "-o", "name")


def _view_errors(env: Environment) -> dict[str, float]:
    return {agent.name: metric_sum(agent.metrics(), "healert_cluster_view_errors_total")
            for agent in both(env)}


def _apiserver_down(env: Environment, evidence: dict[str, Any]) -> Step:
    """alice execs into checkout's pod and scales it while the tail agent is paused; the
    apiserver stops (flushing its audit buffers to the webhook) and the tail agent reads
    those lines while nothing answers; the apiserver comes back, both views list again,
    and alice execs into the pod of a Deployment made since."""
    def run(cp: ControlPlane, work: Path) -> None:
        _serve, tail = both(env)
        evidence["errors_before"] = _view_errors(env)
        os.kill(tail.proc.pid, signal.SIGSTOP)
        try:
            _exec("alice", CHECKOUT)(cp, work)
            cp.kubectl("alice", "-n", NS, "scale", "deployment", "checkout", "--replicas=1")
            status = cp.stop_apiserver()
            os.kill(tail.proc.pid, signal.SIGCONT)
            time.sleep(DOWN_SECONDS)
            if status != 0:
                raise RuntimeError(f"kube-apiserver exited {status} on SIGTERM")
        finally:
            os.kill(tail.proc.pid, signal.SIGCONT)
            cp.start_apiserver()
        wait_synced(env, "after the apiserver came back")
        evidence["errors_after"] = _view_errors(env)
        _create(cp, objects.deployment(NS, "after-restart",
                                       pod_labels={BACKSTAGE: "late-service"}))
        _exec("alice", _running_pod_of(cp, "Deployment", "after-restart"))(cp, work)
    return run


def _tombstone(env: Environment, evidence: dict[str, Any]) -> Step:
    """alice execs into a pod while the webhook agent is down and the tail agent paused;
    the webhook agent comes back (its view lists the pod), the pod is deleted (by the
    bootstrap: no friction of its own), and only then does the apiserver's retry of the
    batch reach the webhook agent, and the tail agent read the line."""
    def run(cp: ControlPlane, work: Path) -> None:
        serve, tail = both(env)
        pod = _running_pod_of(cp, "Deployment", "checkout")
        known = {r["key"] for r in serve.outbox()}  # an earlier case execs into it too
        serve.stop()
        os.kill(tail.proc.pid, signal.SIGSTOP)
        try:
            _exec("alice", pod)(cp, work)
            time.sleep(FIRST_ATTEMPT)
            serve = env.agents.restart_serve()
            wait_for(lambda: synced(serve) is True, SYNC_WAIT, "the new agent's view synced",
                     interval=0.5)
            tombs = _tombstones(serve)
            cp.kubectl(ControlPlane.BOOTSTRAP, "-n", NS, "delete", "pod", pod,
                       "--grace-period=0", "--force")
            wait_for(lambda: _tombstones(serve) > tombs, 60, "the pod's tombstone",
                     interval=0.2)
            evidence["deleted"] = time.time()
        finally:
            os.kill(tail.proc.pid, signal.SIGCONT)

        def arrived() -> bool:
            rows = [r for r in serve.outbox() if r["rule"] == "kubectl-exec"
                    and r["key"] not in known and pod in str(r["event"].get("description"))]
            if rows:
                evidence["stored"] = min(r["created"] for r in rows)
            return bool(rows)

        wait_for(arrived, RETRY_WAIT, "the apiserver's retry of the exec's batch",
                 interval=0.5)
    return run


def _tombstones(agent: Agent) -> float:
    return metric_sum(agent.metrics(), "healert_cluster_view_tombstones")


def scenarios(env: Environment, evidence: dict[str, Any]) -> tuple[Scenario, ...]:
    """Every case, in the order they run (the disruptions last)."""
    started = "ResponseStarted"
    proxied = ("--as=bob",)
    return (
        Scenario("exec", "alice execs into checkout's pod (Metadata)", _exec("alice", CHECKOUT),
                 (Expect("kubectl-exec", ENTITY, "alice"),),
                 audited=(Fact("get", "pods", "exec", stage=started, level="Metadata"),)),
        Scenario("port-forward", "alice port-forwards to checkout's pod (WebSocket, then "
                 "SPDY: two requests, one attempt)",
                 kubectl("alice", "-n", NS, "port-forward", CHECKOUT, ":8080",
                         pod_prefix="pod/", check=False, timeout=30),
                 (Expect("port-forward", ENTITY, "alice"),),
                 audited=(Fact("get", "pods", "portforward", stage=started),
                          Fact("create", "pods", "portforward", stage=started))),
        Scenario("logs", "alice reads the logs of deploy/checkout (kubectl picks a pod)",
                 kubectl("alice", "-n", NS, "logs", "deploy/checkout", "-c", "main",
                         check=False),
                 (Expect("pod-log-access", ENTITY, "alice"),),
                 audited=(Fact("get", "pods", "log", stage=started),)),
        Scenario("scale", "alice scales checkout (a Scale object: no labels, no annotations)",
                 kubectl("alice", "-n", NS, "scale", "deployment", "checkout", "--replicas=2"),
                 (Expect("config-drift", ENTITY, "alice"),
                  Expect("gitops-drift", ENTITY, "alice")),
                 audited=(Fact("patch", "deployments", "scale", level="Request"),)),
        Scenario("patch", "alice patches checkout (the event carries the patch, not the "
                 "Deployment: its pod template's label and Argo CD's annotation come from "
                 "the view)",
                 kubectl("alice", "-n", NS, "patch", "deployment", "checkout", "--type=merge",
                         "-p", '{"metadata":{"annotations":{"reviewed-by":"alice"}}}'),
                 (Expect("config-drift", ENTITY, "alice"),
                  Expect("gitops-drift", ENTITY, "alice")),
                 audited=(Fact("patch", "deployments", level="Request"),)),
        Scenario("debug", "alice adds a debug container to checkout's pod",
                 kubectl("alice", "-n", NS, "debug", CHECKOUT, "--image=busybox:1.36",
                         "--container=debugger"),
                 (Expect("ephemeral-debug", ENTITY, "alice"),),
                 audited=(Fact("patch", "pods", "ephemeralcontainers"),)),
        Scenario("proxy-exec", "the access proxy execs into checkout's pod --as=bob",
                 _exec("access-proxy", CHECKOUT, *proxied),
                 (Expect("kubectl-exec", ENTITY, "bob", mentions=(objects.PROXY_SA,)),),
                 audited=(Fact("get", "pods", "exec", stage=started, user=PROXY,
                               impersonated="bob"),)),
        Scenario("proxy-patch", "the access proxy annotates checkout --as=bob (Request: the "
                 "patch, no object in the event; GitOps ownership from the view)",
                 kubectl("access-proxy", *proxied, "-n", NS, "annotate", "deployment",
                         "checkout", "reviewed-by=bob", "--overwrite"),
                 (Expect("config-drift", ENTITY, "bob", mentions=(objects.PROXY_SA,)),
                  Expect("gitops-drift", ENTITY, "bob", mentions=(objects.PROXY_SA,))),
                 audited=(Fact("patch", "deployments", level="Request", user=PROXY,
                               impersonated="bob"),)),
        Scenario("job-generate-name", "alice execs into the pod of a Job made from "
                 "generateName db-migrate- (the name rules alone: db-migrate-<5>)",
                 _migration, (Expect("kubectl-exec", "component:shop/db-migrate", "alice"),),
                 audited=(Fact("get", "pods", "exec", stage=started),)),
        Scenario("declared-namespace", "alice reads a Secret in a namespace labelled "
                 f"{BACKSTAGE}: storefront-team", _declared_namespace,
                 (Expect("rbac-change", f"component:{DECLARED_NS}/storefront-team",
                         "system:conformance-bootstrap"),
                  Expect("emergency-access", f"component:{DECLARED_NS}/storefront-team",
                         "alice")),
                 audited=(Fact("get", "secrets", level="Metadata", code=200),)),
        Scenario("apiserver-down", "requests, then the apiserver stopped for a few seconds "
                 "while the paused tail agent reads them; an exec after the restart into "
                 "the pod of a Deployment made since", _apiserver_down(env, evidence),
                 (Expect("kubectl-exec", ENTITY, "alice"),
                  Expect("config-drift", ENTITY, "alice"),
                  Expect("gitops-drift", ENTITY, "alice"),
                  Expect("kubectl-exec", "component:shop/late-service", "alice")),
                 audited=(Fact("get", "pods", "exec", stage=started, count=2),)),
        Scenario("tombstone", "alice execs into a pod deleted before the batch about it "
                 "reaches the webhook agent and before the paused tail agent reads it",
                 _tombstone(env, evidence), (Expect("kubectl-exec", ENTITY, "alice"),),
                 audited=(Fact("get", "pods", "exec", stage=started, count=1),
                          Fact("delete", "pods", user="system:conformance-bootstrap"))),
    )


EVIDENCE: dict[str, Any] = {}  # what the disruptions noted as they ran
NAMES = ["exec", "port-forward", "logs", "scale", "patch", "debug", "proxy-exec",
         "proxy-patch", "job-generate-name", "declared-namespace", "apiserver-down",
         "tombstone"]


@pytest.fixture(scope="module")
def outcomes(wired: Wired) -> dict[str, Outcome]:
    """Every case run once, in order."""
    cases = scenarios(wired.env, EVIDENCE)
    assert [c.name for c in cases] == NAMES
    return {case.name: wired.runner.run(case) for case in cases}


def test_before_the_cluster_answered_ingest_was_ready_and_the_views_said_so(
        wired: Wired) -> None:
    before = wired.before
    status, text = before.readyz["serve"]
    assert status == 200, text
    for name, (_, body) in before.readyz.items():
        assert "cluster view: not synced" in body, (name, body)
    assert before.synced == {"serve": False, "tail": False}
    print(f"\nboth views synced {before.waited:.1f} s after the apiserver answered")


@pytest.mark.parametrize("name", NAMES)
def test_the_apiserver_audited_the_case(outcomes: dict[str, Outcome], name: str) -> None:
    """The case ran, and was audited as the generated policy audits it."""
    outcome = outcomes[name]
    assert outcome.error is None, outcome.error
    for fact in outcome.scenario.audited:
        matching = [e for e in outcome.audit_events if fact.matches(e)]
        assert matching if fact.count is None else len(matching) == fact.count, \
            f"{len(matching)} audit events like {fact}"


@pytest.mark.parametrize("name", NAMES)
def test_webhook_and_tail_agree(outcomes: dict[str, Outcome], name: str) -> None:
    """Both ways in stored the same friction events: same keys, same payloads."""
    found = agreement_problems(outcomes[name])
    assert not found, "\n".join(found)


@pytest.mark.parametrize("name", NAMES)
def test_the_entity_is_the_workloads_whatever_the_action_and_level(
        outcomes: dict[str, Outcome], name: str, rule_names: set[str]) -> None:
    outcome = outcomes[name]
    found = problems(outcome.scenario, outcome.serve, rule_names)
    assert not found, "\n".join(found)


def test_the_tombstone_batch_really_came_after_the_delete(outcomes: dict[str, Outcome]) -> None:
    """The webhook agent stored the exec only after its pod was gone: the case tests what
    it says it tests."""
    assert outcomes["tombstone"].error is None
    assert EVIDENCE["stored"] > EVIDENCE["deleted"], EVIDENCE


def test_the_views_lost_the_apiserver_and_came_back(wired: Wired,
                                                    outcomes: dict[str, Outcome]) -> None:
    """Both views counted failures while the apiserver was down and were synced again
    after it (the case waited for it); at the end they are synced and every agent has
    counted how it found its entities."""
    assert outcomes["apiserver-down"].error is None
    before, after = EVIDENCE["errors_before"], EVIDENCE["errors_after"]
    assert all(after[name] > before[name] for name in before), EVIDENCE
    wait_synced(wired.env, "at the end")
    for agent in both(wired.env):
        samples = agent.metrics()
        assert metric_sum(samples, "healert_entity_resolutions_total", method="label") > 0
