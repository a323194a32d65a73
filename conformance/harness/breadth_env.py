"""The environment of the entity and detection-breadth scenarios (issues 24 and 26).

A control plane of its own, beside the suite's shared one, because it differs in three
ways: both agents get the kubeconfig of their cluster-view identity, so its audit policy
is the one the agent under test generates for every rule enabled *with* the cluster view
(`healert-webhook policy --cluster-view on`; `$HEALERT_CONFORMANCE_BREADTH_POLICY` picks
another file, e.g. the recording policy), and the agents start `AGENT_HEAD_START` seconds
before etcd and the apiserver, so every scenario runs against agents that were started
before the cluster answered.

On top of the harness's bootstrap (`objects.py`), `prepare` installs the CRDs of
`crds.py` and, as the bootstrap identity (an internal actor: none of it is friction):

- `orders` (no entity label): Deployment `orders-api` whose pod template alone carries
  `backstage.io/kubernetes-id: orders-service`, its Service, Deployment `orders-worker`
  (the same label), three releases of a `postgresql` chart as StatefulSets (see
  `HELM_RELEASES`), CronJob `nightly-report` and the Job made from it by hand, Secret
  `orders-db-credentials`;
- `storefront`, labelled `backstage.io/kubernetes-id: storefront-team`: Secret
  `payments-db-credentials`;
- in `payments`: Deployments `restart-me`, `batch-worker` (its pod bound to the Node
  `drain-node`) and `inventory` (Flux's labels), a bare pod `scratch-shell`, a ClusterIP
  Service `orders-internal`, a HelmRelease `cache`;
- Flux Kustomizations, Argo CD Applications, Gatekeeper's Config, a CertificateSigningRequest;
- namespaces `legacy-batch`, `team-sandbox`, `scratch-breadth`;
- RBAC: alice and bob get `BREADTH_ROLE` in `orders`, `storefront`, `payments`,
  `flux-system` and `argocd`; `dave` (a new person) may only read pods in `payments`.

One pod of each workload a scenario acts on is bound to a Node and reported Running, as
the harness's bootstrap does; `ControlPlane.running_pod` names them.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conformance.harness import crds, objects
from conformance.harness import policy as audit_policy
from conformance.harness.agents import Agent, all_rules_enabled
from conformance.harness.cluster import REPO, ControlPlane, parse_metrics
from conformance.harness.env import Environment
from conformance.harness.procs import wait_for
from healert_webhook.auditpolicy.document import Policy

POLICIES = REPO / "conformance" / "policies"
RECORDING_POLICY = POLICIES / "request-response-everywhere.yaml"
POLICY_VARIABLE = "HEALERT_CONFORMANCE_BREADTH_POLICY"
# How the agents get their cluster-view kubeconfig: KUBECONFIG, not --kubeconfig (today's
# serve and tail do not take the flag yet).
CLUSTER_VIEW = "env"
AGENT_HEAD_START = 4.0   # seconds the agents run before etcd and the apiserver start
BACKSTAGE = "backstage.io/kubernetes-id"
APP_NAME = "app.kubernetes.io/name"
WHO = ControlPlane.BOOTSTRAP

ORDERS, STOREFRONT, PAYMENTS = "orders", "storefront", "payments"
LEGACY, SANDBOX, SCRATCH = "legacy-batch", "team-sandbox", "scratch-breadth"
NEW_NAMESPACES = (ORDERS, STOREFRONT, LEGACY, SANDBOX, SCRATCH, crds.FLUX_NS,
                  crds.ARGOCD_NS, crds.GATEKEEPER_NS)
DEVELOPER_NAMESPACES = (ORDERS, STOREFRONT, PAYMENTS, crds.FLUX_NS, crds.ARGOCD_NS)
BREADTH_ROLE = "healert-conformance:breadth-developer"
READER_ROLE = "healert-conformance:pod-reader"
READER = "dave"   # may read pods in payments, nothing more: his exec is refused
DRAIN_NODE = "drain-node"
CSR_NAME = "orders-client"
FLUX_LABELS = {"kustomize.toolkit.fluxcd.io/name": "apps",
               "kustomize.toolkit.fluxcd.io/namespace": crds.FLUX_NS}
# Argo CD Applications, one per scenario that changes one (each starts automated).
APPLICATIONS = ("orders-remove", "orders-unset", "orders-disabled", "orders-skip",
                "orders-retarget")
KUSTOMIZATIONS = ("apps", "infra", "platform", "tenants")
CHART_LABELS = {APP_NAME: "postgresql", "app.kubernetes.io/managed-by": "Helm",
                "helm.sh/chart": "postgresql-16.4.1", "app.kubernetes.io/component": "primary"}


@dataclass(frozen=True)
class HelmRelease:
    """One release of the chart: its StatefulSet's own extra labels and its pods' extra
    labels (a chart's `commonLabels` go on both, its `podLabels` on the pods only)."""

    release: str
    object_labels: dict[str, str] = field(default_factory=dict)
    pod_labels: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The StatefulSet, `<release>-postgresql`, as the chart names it."""
        return f"{self.release}-postgresql"


HELM_RELEASES = (
    HelmRelease("orders-db", {BACKSTAGE: "orders-service"}, {BACKSTAGE: "orders-service"}),
    HelmRelease("billing-db"),
    HelmRelease("ledger-db", {}, {BACKSTAGE: "ledger-service"}),
)


def chosen_policy() -> Path | None:
    """The policy file `$HEALERT_CONFORMANCE_BREADTH_POLICY` names, or None: then the
    environment runs the one the agent generates (`generated_policy`)."""
    chosen = os.environ.get(POLICY_VARIABLE)
    return Path(chosen).resolve() if chosen else None


def generated_policy(folder: Path) -> Path:
    """Write in `folder` the policy this environment's apiserver runs by default: the one
    the agent under test generates for its rules, every optional rule enabled, with the
    cluster view on (its agents run the view), as `Environment` does for its own rules
    (`rules.yaml` and `audit-policy.yaml`, the names it uses)."""
    folder.mkdir(parents=True, exist_ok=True)
    rules = all_rules_enabled(folder / "rules.yaml")
    return audit_policy.generate(rules, folder / "audit-policy.yaml", cluster_view=True)


@dataclass
class BeforeCluster:
    """What each agent said while nothing answered at the apiserver's address."""

    readyz: dict[str, tuple[int, str]] = field(default_factory=dict)
    synced: dict[str, bool | None] = field(default_factory=dict)
    agents_started: float = 0.0
    cluster_answered: float = 0.0


@dataclass
class BreadthEnvironment:
    """The started environment and what was seen before its cluster answered."""

    env: Environment
    before: BeforeCluster
    generated: bool = True   # the apiserver runs the generated policy, not a chosen file:
                             # the cases' `audited` facts name that policy's levels

    @property
    def cluster(self) -> ControlPlane:
        """The control plane."""
        return self.env.cluster

    def policy(self) -> Policy:
        """The audit policy the apiserver runs, loaded as the apiserver loads it."""
        return audit_policy.load(self.env.audit_policy)

    def stop(self) -> None:
        """Stop everything."""
        self.env.stop()


def start(root: Path) -> BreadthEnvironment:
    """The agents first, `AGENT_HEAD_START` seconds later the cluster, then `prepare`."""
    chosen = chosen_policy()
    # The same function writes the policy test_05 checks against the cases' needs.
    env = Environment(root, audit_policy=chosen or generated_policy(root),
                      cluster_view=CLUSTER_VIEW)
    before = BeforeCluster()
    try:
        env.start_agents()
        before.agents_started = time.time()
        time.sleep(AGENT_HEAD_START)
        for agent in (env.agents.serve, env.agents.tail):
            assert agent is not None
            before.readyz[agent.name] = readyz(agent)
            before.synced[agent.name] = view_synced(agent)
        env.start_cluster()
        before.cluster_answered = time.time()
        prepare(env.cluster)
    except BaseException:
        env.stop()
        raise
    return BreadthEnvironment(env, before, generated=chosen is None)


def readyz(agent: Agent) -> tuple[int, str]:
    """The agent's /readyz status and body."""
    answer = httpx.get(agent.url("/readyz"), timeout=5)
    return answer.status_code, answer.text


def _view_samples(agent: Agent, name: str) -> dict[str, float]:
    return parse_metrics(httpx.get(agent.url("/metrics"), timeout=5).text, (name,))


def view_synced(agent: Agent) -> bool | None:
    """Whether every resource of the agent's cluster view is synced
    (`healert_cluster_view_synced`), or None when the agent runs no view (no samples)."""
    samples = _view_samples(agent, "healert_cluster_view_synced{")
    return all(v == 1 for v in samples.values()) if samples else None


def view_tombstones(agent: Agent) -> float:
    """The deleted objects the agent's view keeps (0 when it runs none)."""
    return _view_samples(agent, "healert_cluster_view_tombstones").get(
        "healert_cluster_view_tombstones", 0.0)


def wait_for_view(agent: Agent, check: Callable[[Agent], bool], what: str,
                  timeout: float = 60) -> bool:
    """Wait (bounded) until `check(agent)`, when the agent runs a cluster view; returns
    whether it held. An agent without a view (today's) is not waited for."""
    if view_synced(agent) is None:
        return False
    try:
        wait_for(lambda: check(agent), timeout, what, interval=0.2)
    except TimeoutError:
        return False
    return True


# -- what the bootstrap makes ------------------------------------------------------------

def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def rbac() -> list[dict[str, Any]]:
    """The developers' broader role in this environment's namespaces, and dave's."""
    rw = ["get", "list", "watch", "create", "update", "patch", "delete"]
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": BREADTH_ROLE}, "rules": [
                _rule([""], ["pods", "pods/exec", "pods/attach", "pods/portforward",
                             "pods/ephemeralcontainers", "pods/log", "pods/proxy", "services",
                             "services/proxy", "configmaps", "secrets", "serviceaccounts"], rw),
                _rule([""], ["serviceaccounts/token"], ["create"]),
                _rule(["apps"], ["deployments", "deployments/scale", "statefulsets",
                                 "statefulsets/scale", "replicasets"], rw),
                _rule(["batch"], ["jobs", "cronjobs"], rw),
                _rule(["autoscaling"], ["horizontalpodautoscalers"], rw),
                _rule([d.group for d in crds.ALL], [d.plural for d in crds.ALL], rw),
            ]}
    reader = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
              "metadata": {"name": READER_ROLE},
              "rules": [_rule([""], ["pods"], ["get", "list", "watch"])]}
    items: list[dict[str, Any]] = [role, reader]
    people = [{"kind": "User", "name": p, "apiGroup": "rbac.authorization.k8s.io"}
              for p in objects.PEOPLE]
    for ns in DEVELOPER_NAMESPACES:
        items.append(_binding(ns, "breadth-developers", BREADTH_ROLE, people))
    items.append(_binding(PAYMENTS, "pod-readers", READER_ROLE, [
        {"kind": "User", "name": READER, "apiGroup": "rbac.authorization.k8s.io"}]))
    return items


def _binding(namespace: str, name: str, role: str,
             subjects: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace}, "subjects": subjects,
            "roleRef": {"kind": "ClusterRole", "name": role,
                        "apiGroup": "rbac.authorization.k8s.io"}}


def namespaces() -> list[dict[str, Any]]:
    """This environment's namespaces (their `default` service accounts are the service
    account controller's); `storefront` declares its entity."""
    items = []
    for ns in NEW_NAMESPACES:
        meta: dict[str, Any] = {"name": ns}
        if ns == STOREFRONT:
            meta["labels"] = {BACKSTAGE: "storefront-team"}
        items.append({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    return items


def helm_stateful_set(release: HelmRelease) -> dict[str, Any]:
    """The chart's StatefulSet for `release`, labelled as a Helm chart labels it."""
    selector = {APP_NAME: "postgresql", "app.kubernetes.io/instance": release.release}
    labels = {**CHART_LABELS, **selector, **release.object_labels}
    template = objects.pod_template({**CHART_LABELS, **selector, **release.object_labels,
                                     **release.pod_labels})
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": release.name, "namespace": ORDERS, "labels": labels},
            "spec": {"replicas": 1, "serviceName": f"{release.name}-hl",
                     "selector": {"matchLabels": selector},
                     "updateStrategy": {"type": "OnDelete"}, "template": template}}


def service(namespace: str, name: str, selector: dict[str, str],
            kind: str = "ClusterIP") -> dict[str, Any]:
    """A Service of port 80 to the pods' 8080."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"type": kind, "selector": selector,
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def _secret(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {"password": "not-a-real-secret"}}


def workloads() -> list[dict[str, Any]]:
    """The workloads, Services and Secrets the scenarios act on."""
    label = {BACKSTAGE: "orders-service"}
    items: list[dict[str, Any]] = [
        objects.deployment(ORDERS, "orders-api", pod_labels=label),
        service(ORDERS, "orders-api", {"app": "orders-api"}),
        objects.deployment(ORDERS, "orders-worker", pod_labels=label),
        *[helm_stateful_set(r) for r in HELM_RELEASES],
        objects.cron_job(ORDERS, "nightly-report"),
        _secret(ORDERS, "orders-db-credentials"),
        _secret(STOREFRONT, "payments-db-credentials"),
        objects.deployment(PAYMENTS, "restart-me"),
        objects.deployment(PAYMENTS, "batch-worker"),
        objects.deployment(PAYMENTS, "inventory", labels=FLUX_LABELS),
        _bare_pod(PAYMENTS, "scratch-shell"),
        service(PAYMENTS, "orders-internal", {"app": "payments-api"}),
    ]
    return items


def tool_objects() -> list[dict[str, Any]]:
    """The GitOps tools' and Gatekeeper's objects (applied server-side, as their own
    installers do: no last-applied annotation, which a person's later server-side apply
    would first migrate with a patch of its own)."""
    return [crds.helm_release(PAYMENTS, "cache", "redis"),
            crds.gatekeeper_config(["kube-system"]),
            *[crds.kustomization(n, f"./clusters/conformance/{n}") for n in KUSTOMIZATIONS],
            *[crds.application(name, ORDERS) for name in APPLICATIONS]]


def _bare_pod(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name,
                                                             "namespace": namespace},
            "spec": objects.pod_template({})["spec"]}


def certificate_request(name: str) -> dict[str, Any]:
    """A CertificateSigningRequest for a client certificate (a fresh key; nothing signs
    it: no signer runs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "orders"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(
        key, hashes.SHA256())
    pem = request.public_bytes(serialization.Encoding.PEM)
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {"request": base64.b64encode(pem).decode(),
                     "signerName": "kubernetes.io/kube-apiserver-client",
                     "expirationSeconds": 86400, "usages": ["client auth"]}}


# Workloads of which one pod is bound and reported Running: (namespace, kind, name, node).
RUNNING: tuple[tuple[str, str, str, str], ...] = (
    (ORDERS, "Deployment", "orders-api", objects.NODE),
    (ORDERS, "Deployment", "orders-worker", objects.NODE),
    *[(ORDERS, "StatefulSet", r.name, objects.NODE) for r in HELM_RELEASES],
    (ORDERS, "CronJob", "nightly-report", objects.NODE),
    (PAYMENTS, "Deployment", "batch-worker", DRAIN_NODE),
)


def prepare(cp: ControlPlane) -> None:
    """Install the CRDs, namespaces, RBAC and objects; run one pod of each workload."""
    cp.apply(WHO, [d.crd() for d in crds.ALL])
    for definition in crds.ALL:
        cp.kubectl(WHO, "wait", "--for=condition=Established", "--timeout=60s",
                   f"crd/{definition.name}")
    cp.apply(WHO, namespaces() + rbac())
    for ns in NEW_NAMESPACES:
        wait_for(partial(cp._service_account_exists, ns, "default"), 60,
                 f"the default service account of {ns}")
    cp.add_identity(READER, READER, ("readers",))
    cp.add_node(DRAIN_NODE)
    cp.apply(WHO, [*workloads(), certificate_request(CSR_NAME)])
    cp.kubectl(WHO, "apply", "--server-side", "--field-manager=platform-bootstrap", "-f", "-",
               stdin=json.dumps(objects.as_list(tool_objects())))
    cp.kubectl(WHO, "-n", ORDERS, "create", "job", "nightly-report-manual",
               "--from=cronjob/nightly-report")
    for ns, kind, name, node in RUNNING:
        pod = cp.wait_for_pod_of(ns, kind, name)["metadata"]["name"]
        cp.run_pod(ns, pod, node)
        cp.running[(ns, kind, name)] = pod
    # Named now, so that the case deleting it makes no look-up of its own.
    restart = (PAYMENTS, "Deployment", "restart-me")
    cp.running[restart] = cp.wait_for_pod_of(*restart)["metadata"]["name"]
