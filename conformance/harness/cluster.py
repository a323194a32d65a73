"""etcd, kube-apiserver and kube-controller-manager on loopback, with generated
certificates, RBAC and identities.

The apiserver audits with a given policy file (`Environment` gives it the one the agent
generates for its rules; on its own, the shipped `manifests/apiserver/audit-policy.yaml`)
to both backends at once: the log file (`--audit-log-path`, small files
so that it rotates) and the webhook (`--audit-webhook-config-file`, a kubeconfig pointing at
`healert-webhook serve` with a client certificate and a token, batch mode, one second batch
wait). The controller-manager runs its controllers with their own service accounts
(`--use-service-account-credentials`), so their requests are audited like any controller's.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from conformance.harness import objects, pki
from conformance.harness.procs import Proc, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
AUDIT_POLICY = REPO / "manifests" / "apiserver" / "audit-policy.yaml"
WEBHOOK_CLIENT_CN = "kube-apiserver-audit"
SERVICE_CIDR = "10.0.0.0/24"  # allocated in etcd only; nothing routes to it
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
# The controllers of Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs, CronJobs,
# garbage collection, namespaces, service accounts and their tokens; nothing that needs a
# cloud, a kubelet or a scheduler.
CONTROLLERS = ("deployment-controller", "replicaset-controller", "statefulset-controller",
               "daemonset-controller", "job-controller", "cronjob-controller",
               "garbage-collector-controller", "namespace-controller",
               "serviceaccount-controller", "serviceaccount-token-controller")


@dataclass(frozen=True)
class Binaries:
    """The programs `conformance/build.sh` builds."""

    kube_apiserver: Path
    kubectl: Path
    etcd: Path
    kube_controller_manager: Path

    @classmethod
    def from_dir(cls, folder: Path) -> Binaries:
        """The binaries in `folder`; raise if one is missing."""
        found = cls(folder / "kube-apiserver", folder / "kubectl", folder / "etcd",
                    folder / "kube-controller-manager")
        for path in (found.kube_apiserver, found.kubectl, found.etcd,
                     found.kube_controller_manager):
            if not os.access(path, os.X_OK):
                raise FileNotFoundError(f"{path} is missing: run conformance/build.sh")
        return found

    def version(self) -> str:
        """The apiserver's version, e.g. v1.37.2."""
        out = subprocess.run([str(self.kube_apiserver), "--version"], capture_output=True,
                             text=True, check=True, timeout=30).stdout
        return out.split()[-1]


@dataclass(frozen=True)
class Identity:
    """Someone who talks to the apiserver, with a kubeconfig of their own."""

    name: str          # the user name the apiserver sees
    kubeconfig: Path


@dataclass
class WebhookTarget:
    """Where the apiserver sends audit batches, and the credentials it presents."""

    url: str
    ca: Path                 # CA of the agent's serving certificate
    client: pki.Pair         # the apiserver's client certificate for mTLS
    token_file: Path         # one token, also in the agent's accepted-token file


@dataclass
class Layout:
    """Every file of one control plane, under `root`."""

    root: Path
    pki: Path = field(init=False)
    etcd_data: Path = field(init=False)
    audit_dir: Path = field(init=False)
    audit_log: Path = field(init=False)
    kubeconfigs: Path = field(init=False)
    logs: Path = field(init=False)

    def __post_init__(self) -> None:
        self.pki = self.root / "pki"
        self.etcd_data = self.root / "etcd"
        self.audit_dir = self.root / "audit"
        self.audit_log = self.audit_dir / "audit.log"
        self.kubeconfigs = self.root / "kubeconfigs"
        self.logs = self.root / "logs"

    def create(self) -> None:
        """Make the folders (the audit and PKI ones private, as on a real node)."""
        for folder in (self.root, self.kubeconfigs, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in (self.pki, self.audit_dir, self.etcd_data):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)


def write_kubeconfig(path: Path, server: str, ca: Path, user: dict[str, Any]) -> Path:
    """A one-context kubeconfig file (mode 0600: it may hold a token)."""
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "conformance",
                      "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "conformance",
                      "context": {"cluster": "conformance", "user": "user"}}],
        "current-context": "conformance",
    }
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class ControlPlane:
    """etcd, kube-apiserver and kube-controller-manager, their PKI and identities.

    `start()` then `stop()`; in between the apiserver can be stopped and started again
    (`restart_apiserver`) on the same port, certificates and etcd.
    """

    PEOPLE = ("alice", "bob", "eve")

    def __init__(self, binaries: Binaries, root: Path, webhook: WebhookTarget, *,
                 audit_policy: Path = AUDIT_POLICY, audit_log: bool = True) -> None:
        self.bin = binaries
        self.layout = Layout(root)
        self.webhook = webhook
        self.audit_policy = audit_policy
        self.audit_log = audit_log
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.controller_manager_port = free_port()
        self.kubelet_port = free_port()  # nothing listens here: kubelet calls fail fast
        self.server = f"https://127.0.0.1:{self.port}"
        self.identities: dict[str, Identity] = {}
        self.running: dict[tuple[str, str, str], str] = {}  # (ns, kind, workload) -> pod
        self.etcd: Proc | None = None
        self.apiserver: Proc | None = None
        self.controller_manager: Proc | None = None
        self.cluster_ca: Path | None = None
        self._client_ca: pki._Authority | None = None
        self._admin: httpx.Client | None = None

    @property
    def procs(self) -> list[Proc]:
        """The started processes, in start order."""
        return [p for p in (self.etcd, self.apiserver, self.controller_manager) if p]

    @property
    def cluster_view_kubeconfig(self) -> Path:
        """The kubeconfig of the agent's cluster-view identity (written by `write_files`)."""
        return self.layout.kubeconfigs / "agent-cluster-view.yaml"

    # -- files --------------------------------------------------------------------------

    def write_files(self) -> None:
        """PKI, kubeconfigs for every identity, and the audit webhook kubeconfig (once)."""
        if self.cluster_ca is not None:
            return
        lay = self.layout
        lay.create()
        cluster_ca = pki.new_authority(lay.pki, "cluster-ca", "conformance cluster CA")
        self._client_ca = pki.new_authority(lay.pki, "client-ca", "conformance client CA")
        self.cluster_ca = cluster_ca.files.cert
        pki.issue(cluster_ca, lay.pki, "apiserver", "kube-apiserver", server=True,
                  dns=("localhost", "kubernetes", "kubernetes.default",
                       "kubernetes.default.svc"), ips=("127.0.0.1", "10.0.0.1"))
        pki.issue(cluster_ca, lay.pki, "controller-manager-serving", "kube-controller-manager",
                  server=True, dns=("localhost",), ips=("127.0.0.1",))
        pki.service_account_keys(lay.pki)
        people: dict[str, tuple[str, ...]] = {
            "conformance-admin": ("system:masters",),
            "system:conformance-bootstrap": ("system:masters",),
            "alice": ("developers",), "bob": ("developers",), "eve": ("contractors",),
            # The controller-manager's own user, bound by the apiserver's default RBAC.
            CONTROLLER_MANAGER_USER: (),
        }
        for user, groups in people.items():
            self.add_identity(user.replace(":", "-"), user, groups)
        # The identity a pod's token would give the agent: same user name and groups, so
        # RBAC and the audit policy treat it alike; a certificate because it exists before
        # the apiserver answers.
        self.add_identity("agent-cluster-view", objects.AGENT_USER, objects.AGENT_GROUPS)
        self._add_identity("bad-token", "", {"token": "not-a-token-the-apiserver-knows"})
        token = self.webhook.token_file.read_text().strip()
        write_kubeconfig(lay.root / "audit-webhook-kubeconfig.yaml", self.webhook.url,
                         self.webhook.ca, {"client-certificate": str(self.webhook.client.cert),
                                           "client-key": str(self.webhook.client.key),
                                           "token": token})

    def add_identity(self, stem: str, user: str, groups: tuple[str, ...] = ()) -> Identity:
        """A client certificate (CN = `user`, O = `groups`) and a kubeconfig named `stem`."""
        assert self._client_ca is not None, "write_files() first"
        pair = pki.issue(self._client_ca, self.layout.pki, stem, user, orgs=groups,
                         client=True)
        return self._add_identity(stem, user, {"client-certificate": str(pair.cert),
                                               "client-key": str(pair.key)})

    def _add_identity(self, stem: str, user: str, credentials: dict[str, Any]) -> Identity:
        assert self.cluster_ca is not None
        path = write_kubeconfig(self.layout.kubeconfigs / f"{stem}.yaml", self.server,
                                self.cluster_ca, credentials)
        found = Identity(user, path)
        self.identities[stem] = found
        return found

    # -- processes ----------------------------------------------------------------------

    def etcd_argv(self) -> list[str]:
        """etcd on loopback, plain HTTP, no fsync (a throwaway store)."""
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return [str(self.bin.etcd), "--name", "conformance",
                "--data-dir", str(self.layout.etcd_data),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"conformance={peer}",
                "--unsafe-no-fsync", "--log-level", "warn"]

    def apiserver_argv(self) -> list[str]:
        """kube-apiserver flags: loopback, Node+RBAC, client certificates, tokens, audit."""
        p = self.layout.pki
        argv = [
            str(self.bin.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}",
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'client-ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
            # Without it a stop waits 60 s for the controllers' watches to end by themselves.
            "--shutdown-watch-termination-grace-period=5s",
            f"--audit-policy-file={self.audit_policy}",
            f"--audit-webhook-config-file={self.layout.root / 'audit-webhook-kubeconfig.yaml'}",
            "--audit-webhook-mode=batch", "--audit-webhook-batch-max-wait=1s",
        ]
        if self.audit_log:
            argv += [f"--audit-log-path={self.layout.audit_log}", "--audit-log-format=json",
                     "--audit-log-maxsize=1", "--audit-log-maxbackup=50"]
        return argv

    def controller_manager_argv(self) -> list[str]:
        """kube-controller-manager: the workload, GC, namespace and service-account
        controllers, each with its own service account; no cloud, no leader election."""
        p = self.layout.pki
        kubeconfig = self.identities["system-kube-controller-manager"].kubeconfig
        return [
            str(self.bin.kube_controller_manager),
            f"--kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={self.controller_manager_port}",
            f"--tls-cert-file={p / 'controller-manager-serving.crt'}",
            f"--tls-private-key-file={p / 'controller-manager-serving.key'}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'cluster-ca.crt'}",
            f"--controllers={','.join(CONTROLLERS)}",
            "--profiling=false",
        ]

    def start(self) -> None:
        """Write the files, start etcd, the apiserver and the controller-manager, bootstrap."""
        self.write_files()
        self.etcd = Proc("etcd", self.etcd_argv(), self.layout.logs / "etcd.log").start()
        etcd = self.etcd
        wait_for(lambda: self._etcd_healthy(etcd), 60, "etcd")
        self.apiserver = Proc("kube-apiserver", self.apiserver_argv(),
                              self.layout.logs / "kube-apiserver.log")
        self.start_apiserver()
        self.controller_manager = Proc(
            "kube-controller-manager", self.controller_manager_argv(),
            self.layout.logs / "kube-controller-manager.log").start()
        wait_for(self._controller_manager_healthy, 120, "kube-controller-manager /healthz",
                 interval=0.3)
        self.bootstrap()

    def _etcd_healthy(self, etcd: Proc) -> bool:
        etcd.check_alive()
        answer = httpx.get(f"http://127.0.0.1:{self.etcd_port}/health", timeout=2)
        return answer.status_code == 200 and '"true"' in answer.text

    def _apiserver_ready(self, apiserver: Proc) -> bool:
        apiserver.check_alive()
        return self.admin_client().get("/readyz", timeout=3).status_code == 200

    def _controller_manager_healthy(self) -> bool:
        assert self.controller_manager is not None and self.cluster_ca is not None
        self.controller_manager.check_alive()
        answer = httpx.get(f"https://127.0.0.1:{self.controller_manager_port}/healthz",
                           verify=ssl.create_default_context(cafile=str(self.cluster_ca)),
                           timeout=3)
        return answer.status_code == 200

    def stop_apiserver(self) -> int | None:
        """Stop the apiserver (SIGTERM: it flushes its audit buffers); etcd keeps running.
        Returns its exit status (-9 if it had to be killed, its buffers lost)."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        return None if self.apiserver is None else self.apiserver.stop(timeout=60)

    def start_apiserver(self, timeout: float = 120) -> None:
        """Start the apiserver (again: same flags, port, certificates and etcd) and wait
        until /readyz answers 200."""
        apiserver = self.apiserver
        if apiserver is None:
            raise RuntimeError("start() first")
        if apiserver.alive():
            return
        apiserver.start()
        wait_for(lambda: self._apiserver_ready(apiserver), timeout, "kube-apiserver /readyz",
                 interval=0.3)

    def restart_apiserver(self, down_seconds: float) -> tuple[float, float]:
        """Stop the apiserver, leave it down `down_seconds`, start it again; returns the
        (epoch) times it stopped answering and answered again. Raises if it did not exit
        by itself on SIGTERM (its audit buffers would have been lost)."""
        status = self.stop_apiserver()
        stopped = time.time()
        time.sleep(down_seconds)
        self.start_apiserver()  # even after a bad stop, so that later tests have a cluster
        if status not in (0, None):
            raise RuntimeError(f"kube-apiserver exited {status} on SIGTERM")
        return stopped, time.time()

    def admin_client(self) -> httpx.Client:
        """The admin's HTTP client (system:masters), kept open until `stop()`."""
        if self._admin is None:
            self._admin = self.client_for("conformance-admin")
        return self._admin

    def client_for(self, stem: str) -> httpx.Client:
        """A new HTTP client with the client certificate of `stem` (the caller closes it)."""
        p = self.layout.pki
        assert self.cluster_ca is not None
        context = ssl.create_default_context(cafile=str(self.cluster_ca))
        context.load_cert_chain(str(p / f"{stem}.crt"), str(p / f"{stem}.key"))
        return httpx.Client(base_url=self.server, verify=context, timeout=30)

    def stop(self) -> None:
        """The controller-manager, then the apiserver (it flushes its audit buffers), then
        etcd."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        for proc in reversed(self.procs):
            proc.stop(timeout=60 if proc.name == "kube-apiserver" else 20)
        self.etcd = self.apiserver = self.controller_manager = None

    # -- kubectl ------------------------------------------------------------------------

    def kubectl(self, identity: str, *args: str, stdin: str | None = None,
                env: dict[str, str] | None = None, timeout: float = 60,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl as `identity` (a kubeconfig stem)."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        full_env["KUBECONFIG"] = str(self.identities[identity].kubeconfig)
        full_env["HOME"] = str(self.layout.root / "home")
        full_env.update(env or {})
        result = subprocess.run([str(self.bin.kubectl), *args], input=stdin,
                                capture_output=True, text=True, env=full_env,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} as {identity} failed "
                               f"({result.returncode}): {result.stderr.strip()}")
        return result

    def apply(self, identity: str, items: list[dict[str, Any]]) -> None:
        """`kubectl apply -f -` of a List of objects."""
        self.kubectl(identity, "apply", "-f", "-", stdin=json.dumps(objects.as_list(items)))

    def get_json(self, identity: str, *args: str) -> dict[str, Any]:
        """`kubectl get <args> -o json` as `identity`: the object, or a List of them."""
        out = self.kubectl(identity, "get", *args, "-o", "json").stdout
        found: dict[str, Any] = json.loads(out)
        return found

    # -- what an administrator, a scheduler and kubelets would have done -----------------

    BOOTSTRAP = "system-conformance-bootstrap"

    def bootstrap(self) -> None:
        """Identities and RBAC, then the node and workloads; one pod of each workload bound
        to the node and marked Running."""
        who = self.BOOTSTRAP
        self.apply(who, objects.identities_and_rbac())
        wait_for(lambda: self._service_account_exists("payments", "default"), 30,
                 "the default service account")
        self.add_node(objects.NODE)
        self.apply(who, objects.workloads())
        self.kubectl(who, "apply", "--server-side", f"--field-manager={objects.GITOPS_MANAGER}",
                     "-f", "-", stdin=json.dumps(objects.as_list(objects.gitops_owned())))
        for ns, kind, name in objects.RUNNING_WORKLOADS:
            pod = self.wait_for_pod_of(ns, kind, name)["metadata"]["name"]
            self.run_pod(ns, pod)
            self.running[(ns, kind, name)] = pod
        token = self.kubectl(who, "-n", objects.PROXY_NS, "create", "token",
                             objects.PROXY_SA, "--duration=24h").stdout.strip()
        user = f"system:serviceaccount:{objects.PROXY_NS}:{objects.PROXY_SA}"
        assert self.cluster_ca is not None
        path = write_kubeconfig(self.layout.kubeconfigs / "access-proxy.yaml", self.server,
                                self.cluster_ca, {"token": token})
        self.identities["access-proxy"] = Identity(user, path)

    def _service_account_exists(self, namespace: str, name: str) -> bool:
        answer = self.admin_client().get(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
        return answer.status_code == 200

    def _list(self, path: str) -> list[dict[str, Any]]:
        answer = self.admin_client().get(path)
        answer.raise_for_status()
        items: list[dict[str, Any]] = answer.json()["items"]
        return items

    def pods_of(self, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
        """The pods whose controller chain leads to `kind`/`name` (a Deployment through its
        ReplicaSets, a CronJob through its Jobs), oldest first."""
        # uid of a ReplicaSet or Job -> its own controller's owner reference
        parents: dict[str, dict[str, Any] | None] = {}
        for group, plural in (("apps/v1", "replicasets"), ("batch/v1", "jobs")):
            for item in self._list(f"/apis/{group}/namespaces/{namespace}/{plural}"):
                parents[item["metadata"]["uid"]] = _controller_ref(item["metadata"])
        found = []
        for pod in self._list(f"/api/v1/namespaces/{namespace}/pods"):
            ref = _controller_ref(pod["metadata"])
            for _ in range(4):  # owner chains are short; a loop in one ends here
                if ref is None or (ref["kind"], ref["name"]) == (kind, name):
                    break
                ref = parents.get(ref["uid"])
            if ref is not None and (ref["kind"], ref["name"]) == (kind, name):
                found.append(pod)
        found.sort(key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))
        return found

    def wait_for_pod_of(self, namespace: str, kind: str, name: str,
                        timeout: float = 120) -> dict[str, Any]:
        """The first pod the controllers made for `kind`/`name`, once there is one."""
        found: list[dict[str, Any]] = []

        def made() -> bool:
            found[:] = self.pods_of(namespace, kind, name)
            return bool(found)

        wait_for(made, timeout, f"a pod of {kind} {namespace}/{name}", interval=0.3)
        return found[0]

    def add_node(self, name: str, labels: dict[str, str] | None = None) -> None:
        """A Ready Node with no kubelet (its kubelet port answers nothing), untainted.

        The apiserver taints every new Node `node.kubernetes.io/not-ready:NoSchedule`;
        the node lifecycle controller (not run here: no kubelet renews a lease) removes
        the taint once the kubelet reports Ready, and so does this, as the bootstrap
        identity. Only then does the DaemonSet controller make a pod for the Node.
        """
        self.apply(self.BOOTSTRAP, [objects.node(name, self.kubelet_port, labels)])
        self.untaint_node(name)

    def untaint_node(self, name: str) -> None:
        """Remove every taint of Node `name` (what the node lifecycle controller does for
        a Ready node), as the bootstrap identity."""
        with self.client_for(self.BOOTSTRAP) as client:
            client.patch(f"/api/v1/nodes/{name}", content='{"spec":{"taints":null}}',
                         headers={"Content-Type": "application/merge-patch+json"}
                         ).raise_for_status()

    def running_pod(self, namespace: str, kind: str, name: str) -> str:
        """The name of the pod of workload `kind`/`name` the bootstrap marked Running."""
        return self.running[(namespace, kind, name)]

    def run_pod(self, namespace: str, name: str, node: str = objects.NODE) -> None:
        """Bind the pod to `node` (what the scheduler does) unless it is bound already,
        and report it Running and Ready (what a kubelet does), as the bootstrap identity.
        exec, attach, port-forward and logs on it then reach the kubelet stage."""
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        with self.client_for(self.BOOTSTRAP) as client:
            pod = client.get(path)
            pod.raise_for_status()
            if not pod.json()["spec"].get("nodeName"):
                binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                           "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
                client.post(f"{path}/binding", json=binding).raise_for_status()
            client.patch(f"{path}/status", content=json.dumps(objects.running_status()),
                         headers={"Content-Type": "application/merge-patch+json"}
                         ).raise_for_status()

    # -- the apiserver's own metrics -----------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """The apiserver's audit metrics: `name{labels}` -> value."""
        text = self.admin_client().get("/metrics").text
        return parse_metrics(text, ("apiserver_audit_",))


def _controller_ref(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The owner reference marked `controller: true`, if any."""
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller"):
            found: dict[str, Any] = ref
            return found
    return None


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)")


def parse_metrics(text: str, prefixes: tuple[str, ...]) -> dict[str, float]:
    """Prometheus text samples whose names start with one of `prefixes`."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefixes):
            match = _SAMPLE.match(line)
            if match:
                found[match.group(1)] = float(match.group(2))
    return found


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total

