"""The traffic of a busy cluster, for the load measurement: kubelets, operators, people.

Everything here is bounded in count and time and talks only to the loopback apiserver:

- **kubelets** (`system:node:<name>`, group `system:nodes`, allowed by the Node
  authorizer): register their Node and Lease, list and watch their pods and their Node,
  renew the Lease every tick and patch the Node's status every few ticks;
- **operators** (service accounts with a token from the TokenRequest API): list and watch
  cluster-wide, relisting when a watch ends (as informers do), read a few objects, and one
  of them (a GitOps controller) changes a Deployment's scale now and then, which gives the
  controller-manager work;
- **people** (`alice`, `bob`, the admin): the real kubectl, browsing;
- a CronJob due every minute (the cronjob and job controllers' work).

One tick stands for one kubelet lease period (10 s in a real cluster) and lasts
`tick_seconds`: the load is a fixed set of requests, compressed in time, so that runs under
different audit policies can be compared. The scenarios' bypasses run beside it
(`measure.py`).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from conformance.harness import objects
from conformance.harness.cluster import ControlPlane

LEASE_NS = "kube-node-lease"
LOAD_NODE = "load-node-{:02d}"
READER_ROLE = "healert-load:reader"
SCALER_ROLE = "healert-load:scaler"
GITOPS_TARGET = ("shop", "storefront")


@dataclass(frozen=True)
class Operator:
    """A service account that lists and watches like an informer-based controller."""

    namespace: str
    name: str
    watches: tuple[str, ...]            # collection paths listed and watched cluster-wide
    gets: tuple[str, ...] = ()          # object paths read every `get_every` ticks
    get_every: int = 1
    scales: bool = False                # changes GITOPS_TARGET's scale every few ticks

    @property
    def user(self) -> str:
        """Its user name."""
        return f"system:serviceaccount:{self.namespace}:{self.name}"


_APPS = "/apis/apps/v1"
OPERATORS: tuple[Operator, ...] = (
    Operator("monitoring", "kube-state-metrics", watches=(
        "/api/v1/pods", "/api/v1/nodes", "/api/v1/namespaces", f"{_APPS}/deployments",
        f"{_APPS}/replicasets", f"{_APPS}/statefulsets", f"{_APPS}/daemonsets",
        "/apis/batch/v1/jobs", "/apis/batch/v1/cronjobs")),
    Operator("argocd", "argocd-application-controller", watches=(
        f"{_APPS}/deployments", f"{_APPS}/replicasets", "/api/v1/pods", "/api/v1/configmaps"),
        gets=(f"{_APPS}/namespaces/shop/deployments/storefront",), scales=True),
    Operator("cert-manager", "cert-manager", watches=("/api/v1/secrets", "/api/v1/configmaps"),
             gets=("/api/v1/namespaces/shop/secrets/checkout-stripe",), get_every=3),
)

# What each person runs, in turn (all allowed by their roles).
BROWSING: dict[str, tuple[tuple[str, ...], ...]] = {
    "alice": (("-n", "payments", "get", "pods"), ("-n", "payments", "get", "deployments"),
              ("-n", "payments", "describe", "deployment", "payments-api"),
              ("-n", "payments", "get", "replicasets", "-o", "wide")),
    "bob": (("-n", "shop", "get", "pods", "-o", "wide"), ("-n", "shop", "get", "deployments"),
            ("-n", "shop", "get", "configmaps"), ("-n", "payments", "get", "pods")),
    "conformance-admin": (("get", "nodes"), ("get", "pods", "-A"), ("get", "namespaces"),
                          ("-n", "kube-node-lease", "get", "leases")),
}


@dataclass(frozen=True)
class LoadPlan:
    """How much of each kind of traffic, in ticks."""

    ticks: int = 90
    tick_seconds: float = 1.0
    nodes: int = 5
    status_every: int = 6       # a node's status patch every N ticks (staggered)
    relist_every: int = 30      # a watch lasts N ticks, then the informer relists
    people_every: int = 3       # each person runs one kubectl command every N ticks
    scale_every: int = 15       # the GitOps operator changes the scale every N ticks


@dataclass
class Tally:
    """Requests the load made, by kind, and the errors it met (thread-safe)."""

    requests: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str, n: int = 1) -> None:
        """Count `n` requests of `kind`."""
        with self.lock:
            self.requests[kind] += n

    def error(self, what: str) -> None:
        """Remember an error (the first ones are reported)."""
        with self.lock:
            self.errors.append(what)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check(answer: httpx.Response, what: str) -> httpx.Response:
    if answer.status_code >= 400:
        raise RuntimeError(f"{what}: {answer.status_code} {answer.text[:200]}")
    return answer


class Load:
    """The background traffic of one plan against one control plane."""

    def __init__(self, cp: ControlPlane, plan: LoadPlan) -> None:
        self.cp = cp
        self.plan = plan
        self.tally = Tally()
        self.nodes = [LOAD_NODE.format(i) for i in range(1, plan.nodes + 1)]
        self.tokens: dict[str, str] = {}
        self.threads: list[threading.Thread] = []
        self._clients: list[httpx.Client] = []
        self._leases: dict[str, dict[str, Any]] = {}
        self.ends_at = 0.0

    # -- setup (before the measurement) --------------------------------------------------

    def prepare(self) -> None:
        """Identities, RBAC, tokens, the GitOps Deployment and the CronJob."""
        cp = self.cp
        for node in self.nodes:
            cp.add_identity(f"kubelet-{node}", f"system:node:{node}", ("system:nodes",))
        items: list[dict[str, Any]] = []
        for ns in sorted({op.namespace for op in OPERATORS}):
            items.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        rbac = "rbac.authorization.k8s.io"
        items.append({"apiVersion": f"{rbac}/v1", "kind": "ClusterRole",
                      "metadata": {"name": READER_ROLE}, "rules": [
                          {"apiGroups": ["", "apps", "batch"], "verbs": ["get", "list", "watch"],
                           "resources": ["pods", "nodes", "namespaces", "configmaps", "secrets",
                                         "deployments", "replicasets", "statefulsets",
                                         "daemonsets", "jobs", "cronjobs"]}]})
        items.append({"apiVersion": f"{rbac}/v1", "kind": "ClusterRole",
                      "metadata": {"name": SCALER_ROLE}, "rules": [
                          {"apiGroups": ["apps"], "verbs": ["get", "patch", "update"],
                           "resources": ["deployments", "deployments/scale"]}]})
        for op in OPERATORS:
            items.append({"apiVersion": "v1", "kind": "ServiceAccount",
                          "metadata": {"name": op.name, "namespace": op.namespace}})
            for role in (READER_ROLE, SCALER_ROLE) if op.scales else (READER_ROLE,):
                items.append({"apiVersion": f"{rbac}/v1", "kind": "ClusterRoleBinding",
                              "metadata": {"name": f"{role}:{op.namespace}:{op.name}"},
                              "roleRef": {"apiGroup": rbac, "kind": "ClusterRole",
                                          "name": role},
                              "subjects": [{"kind": "ServiceAccount", "name": op.name,
                                            "namespace": op.namespace}]})
        ns, name = GITOPS_TARGET
        items.append(objects.deployment(ns, name, replicas=2))
        items.append(objects.cron_job("payments", "ledger-report", schedule="* * * * *"))
        cp.apply(cp.BOOTSTRAP, items)
        for op in OPERATORS:
            self.tokens[op.user] = cp.kubectl(
                cp.BOOTSTRAP, "-n", op.namespace, "create", "token", op.name,
                "--duration=2h").stdout.strip()

    def _token_client(self, user: str) -> httpx.Client:
        assert self.cp.cluster_ca is not None
        context = ssl.create_default_context(cafile=str(self.cp.cluster_ca))
        client = httpx.Client(base_url=self.cp.server, verify=context, timeout=60,
                              headers={"Authorization": f"Bearer {self.tokens[user]}"})
        self._clients.append(client)
        return client

    def _cert_client(self, stem: str) -> httpx.Client:
        client = self.cp.client_for(stem)
        self._clients.append(client)
        return client

    # -- the run -------------------------------------------------------------------------

    def start(self) -> None:
        """Register the kubelets and start every watcher, the people and the tick loop."""
        plan = self.plan
        self.ends_at = time.monotonic() + plan.ticks * plan.tick_seconds
        kubelets = {node: self._cert_client(f"kubelet-{node}") for node in self.nodes}
        for node, client in kubelets.items():
            self._register(node, client)
            self.cp.untaint_node(node)  # the node lifecycle controller's part
            for path, selector in (("/api/v1/pods", f"spec.nodeName={node}"),
                                   ("/api/v1/nodes", f"metadata.name={node}")):
                self._spawn(self._list_watch, client, path, selector, "kubelet")
        for op in OPERATORS:
            client = self._token_client(op.user)
            for path in op.watches:
                self._spawn(self._list_watch, client, path, "", "operator")
        self._spawn(self._people)
        self._spawn(self._ticks, kubelets)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        def guarded() -> None:
            try:
                target(*args)
            except Exception as exc:  # reported with the result, never silent
                self.tally.error(f"{target.__name__}: {type(exc).__name__}: {exc}")
        thread = threading.Thread(target=guarded, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        """Wait for every thread (each ends by itself at the end of the plan)."""
        for thread in self.threads:
            thread.join(timeout=self.plan.ticks * self.plan.tick_seconds + 120)
        for client in self._clients:
            client.close()

    def _register(self, node: str, client: httpx.Client) -> None:
        """What a kubelet does first: its Node object and its Lease."""
        if client.get(f"/api/v1/nodes/{node}").status_code == 404:
            body = objects.node(node, self.cp.kubelet_port)
            _check(client.post("/api/v1/nodes", json=body), f"create node {node}")
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases"
        answer = client.get(f"{lease_path}/{node}")
        if answer.status_code == 404:
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": node, "namespace": LEASE_NS},
                     "spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
                              "renewTime": _now()}}
            answer = _check(client.post(lease_path, json=lease), f"create lease {node}")
        self._leases[node] = answer.json()
        self.tally.count("kubelet", 4)

    def _list_watch(self, client: httpx.Client, path: str, selector: str, kind: str) -> None:
        """An informer: list, watch until the watch times out, relist; until the plan ends."""
        period = self.plan.relist_every * self.plan.tick_seconds
        while (left := self.ends_at - time.monotonic()) >= 1:
            query: dict[str, str | int] = {"limit": 500}
            if selector:
                query["fieldSelector"] = selector
            listed = _check(client.get(path, params=query), f"list {path}")
            query.pop("limit")
            query.update(watch=1, allowWatchBookmarks="true",
                         resourceVersion=listed.json()["metadata"]["resourceVersion"],
                         timeoutSeconds=max(1, int(min(period, left))))
            with client.stream("GET", path, params=query, timeout=None) as watch:
                for _ in watch.iter_lines():
                    pass
            self.tally.count(kind, 2)

    def _ticks(self, kubelets: dict[str, httpx.Client]) -> None:
        """Per tick: lease renewals, status patches, operators' reads and scale changes."""
        plan = self.plan
        ops = [(op, self._token_client(op.user)) for op in OPERATORS]
        started = time.monotonic()
        for tick in range(plan.ticks):
            for index, (node, client) in enumerate(kubelets.items()):
                self._renew(node, client)
                if tick % plan.status_every == index % plan.status_every:
                    self._report(node, client)
            for op, client in ops:
                if tick % op.get_every == 0:
                    for path in op.gets:
                        _check(client.get(path), f"{op.name} get {path}")
                        self.tally.count("operator")
                if op.scales and tick % plan.scale_every == plan.scale_every - 1:
                    self._scale(client, 2 + (tick // plan.scale_every) % 2)
            time.sleep(max(0.0, started + (tick + 1) * plan.tick_seconds - time.monotonic()))

    def _renew(self, node: str, client: httpx.Client) -> None:
        lease = self._leases[node]
        lease["spec"]["renewTime"] = _now()
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases/{node}"
        self._leases[node] = _check(client.put(path, json=lease), f"renew {node}").json()
        self.tally.count("kubelet")

    def _report(self, node: str, client: httpx.Client) -> None:
        now = _now()
        patch = {"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "kubelet is posting ready status", "lastHeartbeatTime": now,
             "lastTransitionTime": now}]}}
        _check(client.patch(f"/api/v1/nodes/{node}/status", content=json.dumps(patch),
                            headers={"Content-Type": "application/strategic-merge-patch+json"}),
               f"status of {node}")
        self.tally.count("kubelet")

    def _scale(self, client: httpx.Client, replicas: int) -> None:
        ns, name = GITOPS_TARGET
        patch = json.dumps({"spec": {"replicas": replicas}})
        _check(client.patch(f"{_APPS}/namespaces/{ns}/deployments/{name}/scale", content=patch,
                            headers={"Content-Type": "application/merge-patch+json"}),
               "scale")
        self.tally.count("operator")

    def _people(self) -> None:
        """Each person runs one kubectl command every `people_every` ticks, in turn."""
        plan = self.plan
        started = time.monotonic()
        for tick in range(0, plan.ticks, plan.people_every):
            for person, commands in BROWSING.items():
                args = commands[(tick // plan.people_every) % len(commands)]
                result = self.cp.kubectl(person, *args, check=False)
                if result.returncode != 0:
                    self.tally.error(f"{person} kubectl {' '.join(args)}: "
                                     f"{result.stderr.strip()[:200]}")
                self.tally.count("kubectl")
            wait = started + (tick + plan.people_every) * plan.tick_seconds - time.monotonic()
            time.sleep(max(0.0, min(wait, self.ends_at - time.monotonic())))
