"""The cluster view's watches against a real kube-apiserver and kube-controller-manager.

A control plane of its own (not the suite's shared one, which it would disturb): etcd,
two kube-apiservers on it (A, which the view watches and which is stopped and restarted;
B, through which changes go while A is down) and kube-controller-manager (so Deployments,
Jobs and CronJobs get real ReplicaSets, pods and owner references). The view connects
with a kubeconfig holding a token of the service account `healert-webhook`, bound to the
shipped `manifests/common/30-clusterrole-cluster-view.yaml` and nothing else: the RBAC
is proven sufficient too. In order (one module, one view):

1. the view is started before apiserver A answers: not synced, connection errors
   counted; A starts and the view syncs;
2. objects made before and after the sync are seen, resolved on real owner references;
3. create, update and delete are seen; a deleted pod is a tombstone for the window;
4. A is stopped for a few seconds while pods are made and deleted through B; A comes
   back: the view resyncs, sees the new pod, and keeps the deleted one as a tombstone
   (through a relist after 410 Gone, or the watch's DELETED event: either is right).

Needs kube-controller-manager next to kube-apiserver (conformance/build.sh builds it).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from conformance.harness import pki
from conformance.harness.cluster import REPO, Binaries, write_kubeconfig
from conformance.harness.env import binaries
from conformance.harness.procs import Proc, free_port, wait_for
from healert_webhook.cluster.connect import find
from healert_webhook.cluster.resolve import carried_record, gitops, resolve
from healert_webhook.cluster.runner import ClusterView
from healert_webhook.cluster.watch import Timing
from healert_webhook.entity import LABEL_KEYS
from healert_webhook.rules import DEFAULT_GITOPS

pytestmark = pytest.mark.timeout(900)

CLUSTER_ROLE = REPO / "manifests" / "common" / "30-clusterrole-cluster-view.yaml"
TOMBSTONE_WINDOW = 20.0
WAIT = 90.0  # bound on every wait for the view (shared CPUs: generous)
BACKSTAGE = "backstage.io/kubernetes-id"


def sample(name: str, **labels: str) -> float:
    """A metric of this process (the view runs here) summed over the given labels."""
    total = 0.0
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class Plane:
    """etcd, apiservers A and B on it, kube-controller-manager; files under `root`."""

    def __init__(self, bins: Binaries, root: Path) -> None:
        self.bins = bins
        self.root = root
        self.kcm_binary = bins.kube_apiserver.with_name("kube-controller-manager")
        self.pki = root / "pki"
        self.logs = root / "logs"
        for folder in (self.pki, self.logs, root / "etcd"):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.etcd_port, self.peer_port = free_port(), free_port()
        self.ports = {"a": free_port(), "b": free_port()}
        self.procs: dict[str, Proc] = {}
        cluster_ca = pki.new_authority(self.pki, "cluster-ca", "view CA")
        client_ca = pki.new_authority(self.pki, "client-ca", "view client CA")
        self.ca = cluster_ca.files.cert
        pki.issue(cluster_ca, self.pki, "apiserver", "kube-apiserver", server=True,
                  dns=("localhost", "kubernetes.default.svc"), ips=("127.0.0.1", "10.0.0.1"))
        pki.service_account_keys(self.pki)
        admin = pki.issue(client_ca, self.pki, "admin", "view-admin",
                          orgs=("system:masters",), client=True)
        self.admin = {k: write_kubeconfig(root / f"admin-{k}.yaml", self.url(k), self.ca,
                                          {"client-certificate": str(admin.cert),
                                           "client-key": str(admin.key)})
                      for k in self.ports}

    def url(self, which: str) -> str:
        """The URL of apiserver `which`."""
        return f"https://127.0.0.1:{self.ports[which]}"

    def start_etcd(self) -> None:
        """etcd on loopback, no fsync."""
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.procs["etcd"] = Proc("etcd", [
            str(self.bins.etcd), "--name", "view", "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"view={peer}", "--unsafe-no-fsync", "--log-level", "warn",
        ], self.logs / "etcd.log").start()
        wait_for(lambda: httpx.get(f"{client}/health", timeout=2).status_code == 200, 60,
                 "etcd")

    def start_apiserver(self, which: str, wait: bool = True) -> None:
        """Apiserver `which` (its log appended to across restarts)."""
        p = self.pki
        proc = self.procs.get(which) or Proc(f"kube-apiserver-{which}", [
            str(self.bins.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports[which]}",
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'client-ca.crt'}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24", "--profiling=false",
        ], self.logs / f"kube-apiserver-{which}.log")
        self.procs[which] = proc.start()
        if wait:
            self.wait_ready(which)

    def wait_ready(self, which: str) -> None:
        """Until apiserver `which` answers /readyz."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))

        def ready() -> bool:
            self.procs[which].check_alive()
            return httpx.get(f"{self.url(which)}/readyz", verify=context,
                             timeout=3).status_code == 200

        wait_for(ready, 120, f"kube-apiserver {which}", interval=0.3)

    def stop(self, name: str) -> None:
        """SIGTERM, then SIGKILL; the process object is kept for a restart."""
        self.procs[name].stop(timeout=60)

    def start_controller_manager(self) -> None:
        """kube-controller-manager on apiserver B (which stays up throughout)."""
        self.procs["kcm"] = Proc("kube-controller-manager", [
            str(self.kcm_binary), f"--kubeconfig={self.admin['b']}",
            "--leader-elect=false", "--controllers=*", "--secure-port=0",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            f"--root-ca-file={self.ca}", "--use-service-account-credentials=false",
        ], self.logs / "kube-controller-manager.log").start()

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """kubectl as the admin, through apiserver B."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env.update(KUBECONFIG=str(self.admin["b"]), HOME=str(self.root))
        result = subprocess.run([str(self.bins.kubectl), *args], input=stdin, env=env,
                                capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def found(self, *args: str) -> bool:
        """Whether `kubectl get <args>` finds the object."""
        try:
            self.kubectl("get", *args)
        except RuntimeError:
            return False
        return True

    def apply(self, *objects: dict[str, Any]) -> None:
        """`kubectl apply` of a List."""
        self.kubectl("apply", "-f", "-", stdin=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": list(objects)}))

    def stop_all(self) -> None:
        """Everything, the controller manager and apiservers first."""
        for name in ("kcm", "a", "b", "etcd"):
            if name in self.procs:
                self.procs[name].stop(timeout=60)


def deployment(namespace: str, name: str, template: dict[str, str],
               replicas: int = 2) -> dict[str, Any]:
    """A Deployment whose pods never run (no scheduler, no kubelet): owners are enough."""
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name, **template}},
                                  "spec": {"containers": [{"name": "app",
                                                           "image": "registry.example/a:1"}]}}}}


def job_spec() -> dict[str, Any]:
    """The pod template of a Job or a CronJob's Jobs."""
    return {"template": {"spec": {"restartPolicy": "Never", "containers": [
        {"name": "task", "image": "registry.example/task:1"}]}}}


def until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
    """Wait (bounded) until `check()` is true."""
    wait_for(lambda: bool(check()), timeout, what, interval=0.2)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    """etcd, apiserver B and the controller manager running; apiserver A not yet."""
    bins = binaries()
    made = Plane(bins, tmp_path_factory.mktemp("cluster-view"))
    if not os.access(made.kcm_binary, os.X_OK):
        pytest.skip(f"{made.kcm_binary} is missing: conformance/build.sh builds it")
    try:
        made.start_etcd()
        made.start_apiserver("b")
        made.start_controller_manager()
        yield made
    finally:
        made.stop_all()


@pytest.fixture(scope="module")
def view(plane: Plane) -> Iterator[ClusterView]:
    """The view of apiserver A, as the agent's service account, started before A."""
    plane.apply({"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": "healert-system"}},
                {"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": "healert-webhook", "namespace": "healert-system"}})
    plane.kubectl("apply", "-f", str(CLUSTER_ROLE))
    token = plane.kubectl("-n", "healert-system", "create", "token", "healert-webhook",
                          "--duration=2h").strip()
    config = write_kubeconfig(plane.root / "view.yaml", plane.url("a"), plane.ca,
                              {"token": token})
    connection = find("auto", (config,), environ={})
    assert connection is not None
    cluster = ClusterView(connection, TOMBSTONE_WINDOW, (*LABEL_KEYS, *DEFAULT_GITOPS.labels),
                          DEFAULT_GITOPS.annotations, timing=Timing(backoff_max=2.0))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(timeout=20)


def test_started_before_the_apiserver_answers_then_synced(plane: Plane,
                                                          view: ClusterView) -> None:
    before = sample("healert_cluster_view_errors_total", reason="transport")
    until(lambda: sample("healert_cluster_view_errors_total", reason="transport") > before,
          "connection errors while apiserver A is down")
    assert not view.view.synced()
    assert "cluster view: not synced" in view.describe()
    plane.start_apiserver("a")
    until(view.view.synced, "the view synced once A answers")
    # Synced means every resource was listed and is watched as the service account bound
    # to the shipped ClusterRole: it grants what the view needs. (A 403 or two while A
    # starts are its authorizer not having read RBAC yet; they are retried.)
    assert view.describe().startswith("cluster view: synced")
    forbidden = sample("healert_cluster_view_errors_total", reason="forbidden")
    time.sleep(3)
    assert sample("healert_cluster_view_errors_total", reason="forbidden") == forbidden


def test_real_owner_chains_resolve_to_the_entity(plane: Plane, view: ClusterView) -> None:
    plane.apply(
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": "shop", "labels": {BACKSTAGE: "shop-team"}}},
        deployment("shop", "orders-api", {BACKSTAGE: "orders-service"}),
        deployment("shop", "cart", {}),
        {"apiVersion": "batch/v1", "kind": "CronJob",
         "metadata": {"name": "nightly", "namespace": "shop"},
         "spec": {"schedule": "0 3 * * *", "suspend": True,
                  "jobTemplate": {"spec": job_spec()}}},
    )
    plane.kubectl("create", "-f", "-", stdin=json.dumps({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"generateName": "db-migrate-", "namespace": "shop"}, "spec": job_spec()}))
    plane.kubectl("-n", "shop", "create", "job", "--from=cronjob/nightly", "nightly-manual")

    def pods(prefix: str) -> list[str]:
        return [name for (ns, names) in list(view.view.stores["pods"].live.items())
                if ns == "shop" for name in list(names) if name.startswith(prefix)]

    for prefix in ("orders-api-", "cart-", "db-migrate-", "nightly-manual-"):
        until(partial(pods, prefix), f"a pod {prefix}* made by the controllers")
    orders = pods("orders-api-")[0]
    exec_ = resolve(view.view, "pods", "shop", orders, subresource="exec")
    scale = resolve(view.view, "deployments", "shop", "orders-api", subresource="scale")
    assert (exec_.name, exec_.method) == ("orders-service", "label"), exec_
    assert (scale.name, scale.method) == ("orders-service", "label"), scale
    pod = view.view.get("pods", "shop", orders)
    assert pod is not None and pod.controller() is not None
    assert "kube-controller-manager" in pod.managers
    cart = resolve(view.view, "pods", "shop", pods("cart-")[0])
    assert (cart.name, cart.method) == ("cart", "owner"), cart
    assert "ReplicaSet cart-" in cart.explanation and "-> Deployment cart" in cart.explanation
    migrate = resolve(view.view, "pods", "shop", pods("db-migrate-")[0])
    assert (migrate.name, migrate.method) == ("db-migrate", "owner"), migrate
    nightly = resolve(view.view, "pods", "shop", pods("nightly-manual-")[0])
    assert (nightly.name, nightly.method) == ("nightly", "owner"), nightly
    secret = resolve(view.view, "secrets", "shop", "db-credentials",
                     carried=carried_record("secrets", {"metadata": {
                         "name": "db-credentials", "namespace": "shop"}}))
    assert (secret.name, secret.method) == ("shop-team", "namespace"), secret
    managed = gitops(view.view, "deployments", "shop", "orders-api", DEFAULT_GITOPS)
    assert managed.known and managed.evidence is None, "kubectl applied it, not a GitOps tool"


def test_create_update_delete_and_tombstones(plane: Plane, view: ClusterView) -> None:
    plane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "scratch"}})
    # The service account controller makes `default` (applying it as well races with it:
    # whichever create comes second fails), and a pod is admitted only once it exists.
    until(lambda: plane.found("-n", "scratch", "serviceaccount", "default"),
          "the default service account of a new namespace")
    plane.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "debug-shell",
                                                                 "namespace": "scratch"},
                 "spec": {"containers": [{"name": "sh", "image": "registry.example/sh:1"}]}})
    until(lambda: view.view.get("pods", "scratch", "debug-shell"), "the new pod")
    plane.kubectl("label", "namespace", "scratch", f"{BACKSTAGE}=sandbox")
    until(lambda: resolve(view.view, "pods", "scratch", "debug-shell").name == "sandbox",
          "the namespace's new label")
    plane.kubectl("-n", "scratch", "delete", "pod", "debug-shell", "--grace-period=0",
                  "--force", "--wait=false")
    until(lambda: (m := view.view.get("pods", "scratch", "debug-shell")) is not None
          and m.deleted_at is not None, "the pod's tombstone")
    late = resolve(view.view, "pods", "scratch", "debug-shell", subresource="exec")
    assert (late.name, late.method) == ("sandbox", "namespace"), late
    until(lambda: view.view.get("pods", "scratch", "debug-shell") is None,
          "the tombstone forgotten after the window", timeout=TOMBSTONE_WINDOW + WAIT)


def test_the_apiserver_stopped_and_restarted_the_view_resyncs(plane: Plane,
                                                               view: ClusterView) -> None:
    plane.apply({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "doomed", "namespace": "scratch"},
                 "spec": {"containers": [{"name": "sh", "image": "registry.example/sh:1"}]}})
    until(lambda: view.view.get("pods", "scratch", "doomed"), "the pod to delete later")
    expired = sample("healert_cluster_view_lists_total", reason="expired")
    deleted = sample("healert_cluster_view_events_total", resource="pods", type="deleted")
    plane.stop("a")
    until(lambda: not view.view.synced(), "the view noticing A is gone")
    # Meanwhile, through apiserver B: a pod made, one deleted, many writes.
    plane.apply({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "born-while-down", "namespace": "scratch"},
                 "spec": {"containers": [{"name": "sh", "image": "registry.example/sh:1"}]}})
    plane.kubectl("-n", "scratch", "delete", "pod", "doomed", "--grace-period=0", "--force")
    for i in range(20):
        plane.kubectl("-n", "scratch", "create", "configmap", f"churn-{i}")
    time.sleep(3)
    assert view.view.get("pods", "scratch", "born-while-down") is None
    plane.start_apiserver("a")
    until(view.view.synced, "the view synced again")
    until(lambda: view.view.get("pods", "scratch", "born-while-down"), "the pod born meanwhile")
    doomed = view.view.get("pods", "scratch", "doomed")
    assert doomed is not None and doomed.deleted_at is not None, \
        "the pod deleted meanwhile is a tombstone"
    relisted = sample("healert_cluster_view_lists_total", reason="expired") - expired
    watched = sample("healert_cluster_view_events_total", resource="pods",
                     type="deleted") - deleted
    assert relisted > 0 or watched > 0
    print(f"after the restart: {relisted:.0f} relists on 410, "
          f"{watched:.0f} DELETED pod events by the resumed watch")
