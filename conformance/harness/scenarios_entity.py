"""Issue 24's scenarios: the same workload charged to the same entity for every action, at
every audit level, by both ways in, once the agents read the cluster.

The agents run with their cluster view's kubeconfig (`breadth_env`), started before the
cluster answered. Every expectation is what issue 24's resolution gives ("the cluster knows
better than the event"): the configured label keys in order
(`backstage.io/kubernetes-id`, then `app.kubernetes.io/name`) on the object, then up its
controlling owner chain to the top controller, taking the first labelled object, else the
top owner's name (a Job made from `generateName` is its base); a subresource resolves
through its parent, an HPA through its `scaleTargetRef`; an object that is no workload by
its own labels and owners, else the entity its namespace declares, else the name rules.

The Deployment `orders-api` carries `backstage.io/kubernetes-id: orders-service` on its
pod template only (its pods have it; the Deployment and its Scale do not). Each action on
it is done twice: by alice directly, and by the access proxy's service account
`--as=bob`. The environment's apiserver runs the policy the agent generates, which judges
the proxy as a service account that may act for people: both are audited at Request for
writes (the request as sent, never the resulting object) and at Metadata for exec,
port-forward and logs. So no event carries the labelled object: the entity comes from the
view, whose records of workloads, pods and HPAs name it (the HPA made through the proxy:
its event names the HPA, not what it scales).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from conformance.harness import breadth_env as be
from conformance.harness import objects
from conformance.harness.cases import (
    Case,
    Need,
    Step,
    case,
    env_case,
    kubectl,
)
from conformance.harness.cluster import ControlPlane
from conformance.harness.env import Environment
from conformance.harness.procs import wait_for
from conformance.harness.scenarios import PROXY, SESSION_WINDOW, Expect, Fact, PodOf

NS = be.ORDERS
ORDERS_POD = PodOf(NS, "Deployment", "orders-api")
WORKER_POD = PodOf(NS, "Deployment", "orders-worker")
CRON_POD = PodOf(NS, "CronJob", "nightly-report")
ORDERS_SERVICE = f"component:{NS}/orders-service"
DOWN_SECONDS = 5.0
RETRY_WAIT = 90.0  # bound on the apiserver's retry of a failed batch (10 s x1.5 + jitter)
FIRST_ATTEMPT = 3.0  # the batch's first attempt is over by then (its wait is 1 s)


def ref(name: str, namespace: str = NS) -> str:
    """`component:<namespace>/<name>`."""
    return f"component:{namespace}/{name}"


def _pod_arg(pod: PodOf) -> Any:
    return lambda cp: f"pod/{pod.resolve(cp)}"


# (action, kubectl arguments after `-n orders`, rule, how many requests, key request,
#  check kubectl's exit status). `{v}` in an argument is replaced by the variant's name
# (alice's or the proxy's), so the two variants change different things.
_ACTIONS: tuple[tuple[str, tuple[Any, ...], str, int, Fact, bool], ...] = (
    ("exec", ("exec", ORDERS_POD, "-c", "main", "--", "ls", "/"), "kubectl-exec", 1,
     Fact("get", "pods", "exec", stage="ResponseStarted", count=1), False),
    ("port-forward-pod", ("port-forward", _pod_arg(ORDERS_POD), ":8080"), "port-forward", 1,
     Fact("create", "pods", "portforward", stage="ResponseStarted", count=1), False),
    ("port-forward-service", ("port-forward", "svc/orders-api", ":80"), "port-forward", 1,
     Fact("create", "pods", "portforward", stage="ResponseStarted", count=1), False),
    ("logs-deployment", ("logs", "deploy/orders-api", "-c", "main"), "pod-log-access", 1,
     Fact("get", "pods", "log", stage="ResponseStarted", count=1), False),
    ("scale", ("scale", "deployment", "orders-api", "--replicas=1"), "config-drift", 1,
     Fact("patch", "deployments", "scale", code=200), True),
    ("autoscale", ("autoscale", "deployment", "orders-api", "--min=1", "--max=3",
                   "--cpu-percent=80", "--name=orders-api-{v}"), "hpa-drift", 1,
     Fact("create", "horizontalpodautoscalers", code=201), True),
    ("set-image", ("set", "image", "deployment/orders-api",
                   "main=registry.invalid/conformance/app:{v}"), "config-drift", 1,
     Fact("patch", "deployments", code=200), True),
    ("set-env", ("set", "env", "deployment/orders-api", "CHANGED_BY={v}"), "config-drift", 1,
     Fact("patch", "deployments", code=200), True),
    ("pod-label", ("label", "pod", ORDERS_POD, "touched-by-{v}=yes"), "config-drift", 1,
     Fact("patch", "pods", code=200), True),
    ("patch", ("patch", "deployment", "orders-api", "--type=merge", "-p",
               '{"metadata":{"annotations":{"reviewed-by-{v}":"yes"}}}'), "config-drift", 1,
     Fact("patch", "deployments", code=200), True),
    ("debug", ("debug", ORDERS_POD, "--image=busybox:1.36", "--container=debugger-{v}"),
     "ephemeral-debug", 1, Fact("patch", "pods", "ephemeralcontainers", code=200), True),
)
_NEED = {"exec": ("get", "pods", "exec"), "port-forward-pod": ("create", "pods", "portforward"),
         "port-forward-service": ("create", "pods", "portforward"),
         "logs-deployment": ("get", "pods", "log"), "scale": ("patch", "deployments", "scale"),
         "autoscale": ("create", "horizontalpodautoscalers", ""),
         "set-image": ("patch", "deployments", ""), "set-env": ("patch", "deployments", ""),
         "pod-label": ("patch", "pods", ""), "patch": ("patch", "deployments", ""),
         "debug": ("patch", "pods", "ephemeralcontainers")}
_GROUPS = {"deployments": "apps", "horizontalpodautoscalers": "autoscaling"}
# The port-forward to the Service's pod that follows the one to the pod itself must start
# in the next session window to be its own friction event.
_SESSION_WINDOW = SESSION_WINDOW


def _args(args: tuple[Any, ...], variant: str) -> tuple[Any, ...]:
    return tuple(a.replace("{v}", variant) if isinstance(a, str) else a for a in args)


def _fact(fact: Fact, proxied: bool) -> Fact:
    if not proxied:
        return fact
    level = "Request" if fact.verb in _WRITES else "Metadata"  # the generated policy's
    return Fact(**{**fact.__dict__, "user": PROXY, "impersonated": "bob", "level": level})


_WRITES = ("create", "update", "patch")


def workload_actions() -> tuple[Case, ...]:
    """Each action on orders-api, by alice and through the access proxy."""
    found = []
    for variant, who, prefix, actor in (("direct", "alice", (), "alice"),
                                        ("proxy", "access-proxy", ("--as=bob",), "bob")):
        proxied = variant == "proxy"
        for action, args, rule, count, fact, check in _ACTIONS:
            verb, resource, sub = _NEED[action]
            mentions = (objects.PROXY_SA,) if proxied else ()
            found.append(case(
                f"entity-{variant}-{action}",
                f"{'the access proxy --as=bob' if proxied else 'alice'}: "
                f"`kubectl {' '.join(a for a in args if isinstance(a, str))}` on orders-api",
                kubectl(who, *prefix, "-n", NS, *_args(args, variant), check=check,
                        timeout=30),
                [Expect(rule, ORDERS_SERVICE, actor, mentions=mentions)] * count,
                audited=(_fact(fact, proxied),),
                needs=(Need("Metadata", verb, resource, group=_GROUPS.get(resource, ""),
                            subresource=sub, who="proxy" if proxied else "person",
                            why="the object's name: the view answers the rest"),),
                design=_DESIGN.get(action, "") + (_PROXY_DESIGN if proxied else ""),
                settle=_SESSION_WINDOW if action == "port-forward-pod" else 0.0))
    return tuple(found)


_PROXY_DESIGN = (" Through the proxy a write is audited at Request, anything else at "
                 "Metadata: no event carries the resulting object, the entity must come "
                 "from the view.")
_DESIGN = {
    "exec": "pods/exec resolves through its pod; the pod has the template's label.",
    "port-forward-pod": "kubectl tries WebSocket, then SPDY: two requests, one attempt, "
                        "one event.",
    "port-forward-service": "kubectl resolves the Service to a running pod and forwards to "
                            "the pod: the pod's entity.",
    "logs-deployment": "kubectl picks a pod of the Deployment: pods/log on that pod.",
    "scale": "deployments/scale resolves through its Deployment, whose pod template has "
             "the label (the Scale object has no labels).",
    "autoscale": "an HPA resolves through its scaleTargetRef (the Deployment): the "
                 "create at Request carries it, and so does the view's record of the HPA "
                 "(at Metadata, under another policy, only the view has it); the HPA's "
                 "own name is the Deployment's only by kubectl's default, and `--name` "
                 "here makes it differ.",
    "set-image": "the Deployment's own labels have no key; its pod template has one.",
    "set-env": "as set-image.",
    "pod-label": "the pod's own label.",
    "patch": "as set-image.",
    "debug": "pods/ephemeralcontainers resolves through its pod.",
}


def _statefulset(release: be.HelmRelease, action: str) -> Step:
    if action == "exec":
        return kubectl("alice", "-n", NS, "exec", f"{release.name}-0", "-c", "main", "--",
                       "ls", "/", check=False)
    if action == "scale":
        return kubectl("alice", "-n", NS, "scale", "statefulset", release.name,
                       "--replicas=1")
    return kubectl("alice", "-n", NS, "patch", "statefulset", release.name, "--type=merge",
                   "-p", '{"metadata":{"annotations":{"reviewed-by":"alice"}}}')


def helm_releases() -> tuple[Case, ...]:
    """Three releases of one chart, `app.kubernetes.io/name: postgresql` on every object."""
    orders_db, billing_db, ledger_db = be.HELM_RELEASES
    reasoning = {
        orders_db.release: (
            "orders-service: the release sets backstage.io/kubernetes-id on the StatefulSet "
            "and its pods (a chart's commonLabels); the first configured key wins over the "
            "chart's app.kubernetes.io/name on the same object"),
        billing_db.release: (
            "postgresql: no object of this release carries backstage.io/kubernetes-id, so "
            "the next key, app.kubernetes.io/name, decides, on the pod as on the "
            "StatefulSet. Two releases of one chart without a backstage id share the "
            "entity `postgresql`: that is the algorithm's answer, the same for every "
            "action; a team that wants its own entity sets the backstage id"),
        ledger_db.release: (
            "ledger-service: backstage.io/kubernetes-id is on the pod template only (a "
            "chart's podLabels), the StatefulSet itself has only app.kubernetes.io/name. "
            "The keys are tried in order along the chain, the pod template included, so "
            "the StatefulSet's write and an exec into its pod both give ledger-service "
            "(the same entity for every action); taking the first labelled object "
            "whatever its key would charge the StatefulSet's writes to `postgresql`"),
    }
    entity = {orders_db.release: "orders-service", billing_db.release: "postgresql",
              ledger_db.release: "ledger-service"}
    plan = ((orders_db, ("exec", "patch")), (billing_db, ("exec", "patch", "scale")),
            (ledger_db, ("exec", "patch")))
    found = []
    for release, actions in plan:
        for action in actions:
            rule = "kubectl-exec" if action == "exec" else "config-drift"
            fact = {"exec": Fact("get", "pods", "exec", stage="ResponseStarted", count=1),
                    "scale": Fact("patch", "statefulsets", "scale", code=200),
                    "patch": Fact("patch", "statefulsets", level="Request", code=200)}[action]
            found.append(case(
                f"entity-helm-{release.release}-{action}",
                f"alice: {action} on the release {release.release} of the postgresql chart "
                f"(StatefulSet {release.name})",
                _statefulset(release, action),
                (Expect(rule, ref(entity[release.release]), "alice"),),
                audited=(fact,), design=reasoning[release.release],
                ))
    return tuple(found)


def _migration_job() -> dict[str, Any]:
    return objects.job(NS, generate_name="db-migrate-")


def _migration_job_name(cp: ControlPlane) -> str:
    jobs = cp.get_json(ControlPlane.BOOTSTRAP, "-n", NS, "jobs")["items"]
    names = [j["metadata"]["name"] for j in jobs
             if j["metadata"].get("generateName") == "db-migrate-"]
    if len(names) != 1:
        raise RuntimeError(f"expected one Job from generateName db-migrate-, found {names}")
    return str(names[0])


def _create_migration(cp: ControlPlane, work: Path) -> None:
    path = work / "db-migrate-job.json"
    path.write_text(json.dumps(_migration_job()))
    cp.kubectl("alice", "create", "-f", str(path))


def _exec_migration_pod(cp: ControlPlane, _work: Path) -> None:
    job = _migration_job_name(cp)
    pod = cp.wait_for_pod_of(NS, "Job", job)["metadata"]["name"]
    cp.run_pod(NS, pod)
    cp.kubectl("alice", "-n", NS, "exec", pod, "-c", "main", "--", "ls", "/", check=False)


def owners_and_namespaces() -> tuple[Case, ...]:
    """Jobs, a CronJob's Job, and objects that are no workload."""
    exec_fact = Fact("get", "pods", "exec", stage="ResponseStarted", count=1)
    return (
        case("entity-job-generate-name-create", "alice creates a Job with "
             "`generateName: db-migrate-`",
             _create_migration, (Expect("config-drift", ref("db-migrate"), "alice"),),
             design="a Job made from generateName is its generateName base",
             audited=(Fact("create", "jobs", level="Request", code=201),)),
        case("entity-job-generate-name-exec", "alice execs into the pod of that Job "
             "(`db-migrate-<5>-<5>`)",
             _exec_migration_pod, (Expect("kubectl-exec", ref("db-migrate"), "alice"),),
             design="Pod -> Job: the top owner, a Job made from generateName, is its base; "
                    "the name rules alone give db-migrate-<5 chars>",
             audited=(exec_fact,)),
        case("entity-cronjob-pod-exec", "alice execs into the pod of the Job made by hand "
             "from CronJob nightly-report (`kubectl create job --from=cronjob/...`)",
             kubectl("alice", "-n", NS, "exec", CRON_POD, "-c", "main", "--", "ls", "/",
                     check=False),
             (Expect("kubectl-exec", ref("nightly-report"), "alice"),),
             design="Pod -> Job -> CronJob: the top owner; the name rules alone give "
                    "nightly-report-manual",
             audited=(exec_fact,)),
        case("entity-namespace-secret", "alice reads Secret payments-db-credentials in "
             "`storefront`, a namespace labelled backstage.io/kubernetes-id: storefront-team",
             kubectl("alice", "-n", be.STOREFRONT, "get", "secret", "payments-db-credentials",
                     "-o", "name"),
             (Expect("emergency-access", ref("storefront-team", be.STOREFRONT), "alice"),),
             design="an object that is no workload, with no label and no owner: the entity "
                    "its namespace declares",
             audited=(Fact("get", "secrets", level="Metadata", code=200),)),
        case("entity-name-rules-secret", "alice reads Secret orders-db-credentials in "
             "`orders`, a namespace that declares no entity",
             kubectl("alice", "-n", NS, "get", "secret", "orders-db-credentials", "-o", "name"),
             (Expect("emergency-access", ref("orders-db-credentials"), "alice"),),
             design="no label, no owner, no namespace entity: the name rules (today's "
                    "behaviour)",
             audited=(Fact("get", "secrets", level="Metadata", code=200),)),
    )


# -- cases that stop or restart parts of the environment ---------------------------------

def _evidence(work: Path, name: str, data: dict[str, Any]) -> None:
    (work / f"{name}.evidence.json").write_text(json.dumps(data))


def read_evidence(work: Path, name: str) -> dict[str, Any]:
    """What a case noted while it ran (see `_tombstone`)."""
    found: dict[str, Any] = json.loads((work / f"{name}.evidence.json").read_text())
    return found


def _exec_rows(env: Environment, pod: str) -> list[dict[str, Any]]:
    serve = env.agents.serve
    assert serve is not None
    return [r for r in serve.outbox() if r["rule"] == "kubectl-exec"
            and pod in str(r["event"].get("description", ""))]


def _tombstone(env: Environment, work: Path) -> None:
    """An exec into a pod whose batch reaches the webhook agent only after the pod is gone.

    The webhook agent is stopped, so the apiserver's batch with the exec fails and is
    retried about ten seconds later; a few seconds after the exec (the first attempt has
    failed by then: started earlier, the agent would receive it) the agent is started
    again, its view (when
    it has one) syncs, the pod is deleted (by the bootstrap identity: no friction of its
    own) and the view keeps its tombstone. The tail agent is paused (SIGSTOP) over the
    same time, so it too reads the exec's line after the deletion (whether its view has
    applied the deletion by then is a race; either way the answer must be the same).
    """
    cp, agents = env.cluster, env.agents
    assert agents.serve is not None and agents.tail is not None
    pod = WORKER_POD.resolve(cp)
    agents.serve.stop()
    tail_pid = agents.tail.proc.pid
    os.kill(tail_pid, signal.SIGSTOP)
    try:
        cp.kubectl("alice", "-n", NS, "exec", pod, "-c", "main", "--", "ls", "/",
                   check=False)
        # The batch is sent within a second; its failure sets the retry ten seconds off.
        time.sleep(FIRST_ATTEMPT)
        serve = agents.restart_serve()
        be.wait_for_view(serve, lambda a: bool(be.view_synced(a)), "the view synced")
        tombstones = be.view_tombstones(serve)
        cp.kubectl(ControlPlane.BOOTSTRAP, "-n", NS, "delete", "pod", pod,
                   "--grace-period=0", "--force")
        seen = be.wait_for_view(serve, lambda a: be.view_tombstones(a) > tombstones,
                                "the deleted pod's tombstone")
        deleted = time.time()
    finally:
        os.kill(tail_pid, signal.SIGCONT)
    wait_for(lambda: bool(_exec_rows(env, pod)), RETRY_WAIT,
             "the apiserver's retry of the exec's batch", interval=0.5)
    _evidence(work, "entity-tombstone", {
        "pod": pod, "deleted": deleted, "tombstone_seen": seen,
        "stored": min(r["created"] for r in _exec_rows(env, pod))})


def _apiserver_down(env: Environment, _work: Path) -> None:
    """Requests on orders-api, then the apiserver stopped: the tail agent (paused until
    then) reads them while nothing answers; the apiserver comes back, and an exec into
    the pod of a Deployment made after that shows the view watching again."""
    cp, agents = env.cluster, env.agents
    assert agents.tail is not None
    tail_pid = agents.tail.proc.pid
    pod = ORDERS_POD.resolve(cp)
    os.kill(tail_pid, signal.SIGSTOP)
    try:
        cp.kubectl("alice", "-n", NS, "exec", pod, "-c", "main", "--", "ls", "/",
                   check=False)
        cp.kubectl("alice", "-n", NS, "scale", "deployment", "orders-api", "--replicas=1")
        cp.kubectl("alice", "-n", NS, "logs", pod, "-c", "main", check=False)
        status = cp.stop_apiserver()
        if status != 0:
            raise RuntimeError(f"kube-apiserver exited {status} on SIGTERM")
        os.kill(tail_pid, signal.SIGCONT)
        time.sleep(DOWN_SECONDS)
    finally:
        os.kill(tail_pid, signal.SIGCONT)
        cp.start_apiserver()
    late = objects.deployment(NS, "orders-late", pod_labels={be.BACKSTAGE: "orders-service"})
    cp.kubectl(ControlPlane.BOOTSTRAP, "create", "-f", "-", stdin=json.dumps(late))
    late_pod = cp.wait_for_pod_of(NS, "Deployment", "orders-late")["metadata"]["name"]
    cp.run_pod(NS, late_pod)
    for agent in (agents.serve, agents.tail):
        assert agent is not None
        be.wait_for_view(agent, lambda a: bool(be.view_synced(a)), "the view synced again")
    cp.kubectl("alice", "-n", NS, "exec", late_pod, "-c", "main", "--", "ls", "/",
               check=False)


def disruptions() -> tuple[Case, ...]:
    """A pod gone before its batch; the apiserver down while events arrive."""
    exec_fact = Fact("get", "pods", "exec", stage="ResponseStarted")
    return (
        env_case("entity-tombstone", "alice execs into a pod of orders-worker (labelled "
                 "orders-service); the pod is deleted before the exec's batch reaches the "
                 "webhook agent (a retried batch) and before the paused tail agent reads it",
                 _tombstone, (Expect("kubectl-exec", ORDERS_SERVICE, "alice"),),
                 design="deleted objects are kept as tombstones for a window, so a batch "
                        "about a pod that is already gone still resolves",
                 audited=(Fact("get", "pods", "exec", stage="ResponseStarted", count=1),
                          Fact("delete", "pods", user="system:conformance-bootstrap"))),
        env_case("entity-apiserver-down", "alice execs into, scales and reads the logs of "
                 "orders-api; the apiserver is stopped for a few seconds, the tail agent "
                 "reads those events meanwhile; after the restart she execs into a pod of "
                 "a Deployment made since (labelled orders-service)",
                 _apiserver_down,
                 (Expect("kubectl-exec", ORDERS_SERVICE, "alice"),
                  Expect("config-drift", ORDERS_SERVICE, "alice"),
                  Expect("pod-log-access", ORDERS_SERVICE, "alice"),
                  Expect("kubectl-exec", ORDERS_SERVICE, "alice")),
                 design="nothing lost; a view that lost its apiserver still answers from "
                        "what it holds, and resyncs when the apiserver is back",
                 audited=(Fact("get", "pods", "exec", stage="ResponseStarted", count=2),
                          exec_fact)),
    )


# Run in this order: the disruptions last (they stop parts of the environment).
CASES: tuple[Case, ...] = (workload_actions() + helm_releases() + owners_and_namespaces()
                           + disruptions())
BY_NAME = {c.name: c for c in CASES}
