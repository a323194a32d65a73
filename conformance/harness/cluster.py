"""etcd and kube-apiserver on loopback, with generated certificates, RBAC and identities.

The apiserver audits with the project's own `manifests/apiserver/audit-policy.yaml` to both
backends at once: the log file (`--audit-log-path`, small files so that it rotates) and the
webhook (`--audit-webhook-config-file`, a kubeconfig pointing at `healert-webhook serve`
with a client certificate and a token, batch mode, one second batch wait).
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
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


@dataclass(frozen=True)
class Binaries:
    """The three programs `conformance/build.sh` builds."""

    kube_apiserver: Path
    kubectl: Path
    etcd: Path

    @classmethod
    def from_dir(cls, folder: Path) -> Binaries:
        """The binaries in `folder`; raise if one is missing."""
        found = cls(folder / "kube-apiserver", folder / "kubectl", folder / "etcd")
        for path in (found.kube_apiserver, found.kubectl, found.etcd):
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
    """etcd plus kube-apiserver, their PKI and identities; `start()` then `stop()`."""

    PEOPLE = ("alice", "bob", "eve")

    def __init__(self, binaries: Binaries, root: Path, webhook: WebhookTarget) -> None:
        self.bin = binaries
        self.layout = Layout(root)
        self.webhook = webhook
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.kubelet_port = free_port()  # nothing listens here: kubelet calls fail fast
        self.server = f"https://127.0.0.1:{self.port}"
        self.identities: dict[str, Identity] = {}
        self.procs: list[Proc] = []
        self.cluster_ca: Path | None = None
        self._admin: httpx.Client | None = None

    # -- files --------------------------------------------------------------------------

    def write_files(self) -> None:
        """PKI, kubeconfigs for every identity, and the audit webhook kubeconfig."""
        lay = self.layout
        lay.create()
        cluster_ca = pki.new_authority(lay.pki, "cluster-ca", "conformance cluster CA")
        client_ca = pki.new_authority(lay.pki, "client-ca", "conformance client CA")
        self.cluster_ca = cluster_ca.files.cert
        pki.issue(cluster_ca, lay.pki, "apiserver", "kube-apiserver", server=True,
                  dns=("localhost", "kubernetes", "kubernetes.default",
                       "kubernetes.default.svc"), ips=("127.0.0.1", "10.0.0.1"))
        pki.service_account_keys(lay.pki)
        people: dict[str, tuple[str, ...]] = {
            "conformance-admin": ("system:masters",),
            "system:conformance-bootstrap": ("system:masters",),
            "alice": ("developers",), "bob": ("developers",), "eve": ("contractors",),
        }
        for user, groups in people.items():
            stem = user.replace(":", "-")
            pair = pki.issue(client_ca, lay.pki, stem, user, orgs=groups, client=True)
            self._add_identity(stem, user, {"client-certificate": str(pair.cert),
                                            "client-key": str(pair.key)})
        self._add_identity("bad-token", "", {"token": "not-a-token-the-apiserver-knows"})
        token = self.webhook.token_file.read_text().strip()
        write_kubeconfig(lay.root / "audit-webhook-kubeconfig.yaml", self.webhook.url,
                         self.webhook.ca, {"client-certificate": str(self.webhook.client.cert),
                                           "client-key": str(self.webhook.client.key),
                                           "token": token})

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
        """kube-apiserver flags: loopback, RBAC, client certificates, tokens, both audits."""
        p = self.layout.pki
        return [
            str(self.bin.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}",
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'client-ca.crt'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
            f"--audit-policy-file={AUDIT_POLICY}",
            f"--audit-log-path={self.layout.audit_log}",
            "--audit-log-format=json", "--audit-log-maxsize=1", "--audit-log-maxbackup=50",
            f"--audit-webhook-config-file={self.layout.root / 'audit-webhook-kubeconfig.yaml'}",
            "--audit-webhook-mode=batch", "--audit-webhook-batch-max-wait=1s",
        ]

    def start(self) -> None:
        """Write the files, start etcd and the apiserver, wait until ready, bootstrap."""
        self.write_files()
        etcd = Proc("etcd", self.etcd_argv(), self.layout.logs / "etcd.log").start()
        self.procs.append(etcd)
        wait_for(lambda: self._etcd_healthy(etcd), 60, "etcd")
        apiserver = Proc("kube-apiserver", self.apiserver_argv(),
                         self.layout.logs / "kube-apiserver.log").start()
        self.procs.append(apiserver)
        wait_for(lambda: self._apiserver_ready(apiserver), 120, "kube-apiserver /readyz",
                 interval=0.3)
        self.bootstrap()

    def _etcd_healthy(self, etcd: Proc) -> bool:
        etcd.check_alive()
        answer = httpx.get(f"http://127.0.0.1:{self.etcd_port}/health", timeout=2)
        return answer.status_code == 200 and '"true"' in answer.text

    def _apiserver_ready(self, apiserver: Proc) -> bool:
        apiserver.check_alive()
        return self.admin_client().get("/readyz", timeout=3).status_code == 200

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
        """Stop the apiserver first (it flushes its audit buffers), then etcd."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        for proc in reversed(self.procs):
            proc.stop(timeout=60 if proc.name == "kube-apiserver" else 20)
        self.procs.clear()

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

    # -- what controllers and an administrator would have done ---------------------------

    def bootstrap(self) -> None:
        """Identities and RBAC, then the node, pods and workloads; pods marked Running."""
        who = "system-conformance-bootstrap"
        self.apply(who, objects.identities_and_rbac())
        wait_for(lambda: self._service_account_exists("payments", "default"), 30,
                 "the default service account")
        self.apply(who, objects.workloads(self.kubelet_port))
        self.kubectl(who, "apply", "--server-side", f"--field-manager={objects.GITOPS_MANAGER}",
                     "-f", "-", stdin=json.dumps(objects.as_list(objects.gitops_owned())))
        status = json.dumps(objects.running_status())
        for ns, name, *_ in objects.PODS:
            self.kubectl(who, "-n", ns, "patch", "pod", name, "--subresource=status",
                         "--type=merge", "-p", status)
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

    # -- the apiserver's own metrics -----------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """The apiserver's audit metrics: `name{labels}` -> value."""
        text = self.admin_client().get("/metrics").text
        return parse_metrics(text, ("apiserver_audit_",))


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

