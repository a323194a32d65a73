"""Offline checks of the deployment manifests under manifests/.

Cluster objects are validated against the Kubernetes OpenAPI schemas shipped with
kubernetes-validate (no network). The apiserver-side files (audit policy, webhook
kubeconfigs, kubeadm and k3s snippets) are not cluster objects and are checked here: the
audit policy through a small evaluator that follows the apiserver's own matching (first
matching rule wins), so the levels each detection rule depends on are asserted for the
requests that trigger it.

The workload checks (hardening, durable outbox, secrets as files) are plain functions so
that tests/test_chart.py applies the same ones to every rendering of the Helm chart.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from healert_webhook.auditpolicy.check import check
from healert_webhook.auditpolicy.generate import generate
from healert_webhook.auditpolicy.needs import needs_of
from healert_webhook.rules import load_rules

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="install the test extra (pip package kubernetes-validate)"
)

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"
APISERVER = MANIFESTS / "apiserver"
KUBE_VERSION = "1.30.0"
MODES = ("node-local", "service", "tail")
KUSTOMIZE_FOLDERS = ("common", *MODES, "monitoring", "cert-manager")
KUSTOMIZATION = "Kustomization"
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob", "Pod"}
CRD_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
# What the cluster view watches (healert_webhook/cluster/kinds.py), by API group: the
# ClusterRole grants get/list/watch on exactly these and nothing else.
CLUSTER_VIEW_RULES = {
    "": {"pods", "namespaces"},
    "apps": {"replicasets", "deployments", "statefulsets", "daemonsets"},
    "batch": {"jobs", "cronjobs"},
    "autoscaling": {"horizontalpodautoscalers"},
}
# Watched but never read by name: list and watch only.
LIST_WATCH_ONLY = {"horizontalpodautoscalers"}
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
NONROOT_UID = 65532
STATE_DIR = "/var/lib/healert"
# Each mode's workload, by its app.kubernetes.io/component label.
MODE_OF_COMPONENT = {"webhook-node-local": "node-local", "webhook": "service",
                     "audit-log-tail": "tail"}
KIND_OF_MODE = {"node-local": "DaemonSet", "service": "StatefulSet", "tail": "DaemonSet"}
# (webhook port, ops port) of each mode's container; tail has no webhook.
PORTS = {"node-local": (18443, 19090), "service": (8443, 9090), "tail": (None, 9090)}
# Host ports control-plane nodes commonly use already (apiserver, etcd, kubelet and
# control-plane components, k3s, CNI agents, ingress controllers, node-exporter,
# Cockpit, the image's own defaults), which a host-network listener must avoid.
BUSY_HOST_PORTS = {
    80, 443, 179, 2379, 2380, 2381, 4240, 4244, 5473, 6443, 6444, 7472, 7946, 8080, 8443,
    8472, 9090, 9091, 9099, 9100, 9345, 9443, 9879, 9890, 9962, 9963, 9964, 10010, 10254,
    *range(10248, 10261),
}
NODEPORT_RANGE = range(30000, 32768)
EPHEMERAL_RANGE = range(32768, 61000)

Doc = dict[str, Any]


# --------------------------------------------------------------------------- loading


def load_docs(path: Path) -> list[Doc]:
    """All non-empty YAML documents of a file."""
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def cluster_files() -> list[Path]:
    """YAML files that hold cluster objects: everything but the apiserver folder."""
    return sorted(p for p in MANIFESTS.rglob("*.yaml") if APISERVER not in p.parents)


def cluster_objects() -> Iterator[tuple[Path, Doc]]:
    """(file, object) for every cluster object under manifests/."""
    for path in cluster_files():
        for doc in load_docs(path):
            yield path, doc


def objects_in(folder: str) -> list[Doc]:
    """The objects of one manifests/ folder (not recursive)."""
    return [doc for p in sorted((MANIFESTS / folder).glob("*.yaml")) for doc in load_docs(p)]


def find(folder: str, kind: str, name: str | None = None) -> Doc:
    """The single object of `kind` (and `name`) in a folder."""
    found = [
        d
        for d in objects_in(folder)
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} in {folder}, found {len(found)}"
    return found[0]


def workloads() -> list[tuple[Path, Doc]]:
    return [(p, d) for p, d in cluster_objects() if d.get("kind") in WORKLOAD_KINDS]


def workload_of(mode: str) -> Doc:
    return find(mode, KIND_OF_MODE[mode])


def mode_of(workload: Doc) -> str:
    """The deployment mode a workload belongs to, from its component label."""
    return MODE_OF_COMPONENT[workload["metadata"]["labels"]["app.kubernetes.io/component"]]


def pod_spec(workload: Doc) -> Doc:
    """The pod spec of a workload object."""
    spec = workload["spec"]
    if workload["kind"] == "Pod":
        return spec
    if workload["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return spec["template"]["spec"]


def env_of(container: Doc) -> dict[str, Doc]:
    return {item["name"]: item for item in container.get("env", [])}


def env_value(container: Doc, name: str) -> str:
    return str(env_of(container)[name]["value"])


def spec_labels(workload: Doc) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def template_secret_keys() -> dict[str, set[str]]:
    """Keys of the Secrets the manifests expect, from manifests/common/templates."""
    keys = {}
    for path in (MANIFESTS / "common" / "templates").glob("*.yaml"):
        secret = load_docs(path)[0]
        keys[secret["metadata"]["name"]] = set(secret["stringData"])
    return keys


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    return int(quantity[:-2]) * units[quantity[-2:]]


# --------------------------------------------------------------------------- shared checks
# Used for the plain manifests here and for every chart rendering in test_chart.py.


def check_hardened(workload: Doc) -> None:
    """Least privilege: no API token, read-only root, no capabilities, seccomp, limits."""
    mode = mode_of(workload)
    spec = pod_spec(workload)
    assert spec.get("automountServiceAccountToken") is False
    assert spec["serviceAccountName"]
    for flag in ("hostPID", "hostIPC"):
        assert not spec.get(flag), flag
    # Only the node-local receiver joins the host network: it listens on the node's
    # loopback, where its own apiserver sends.
    assert bool(spec.get("hostNetwork")) == (mode == "node-local")
    if spec.get("hostNetwork"):
        assert spec["dnsPolicy"] == "ClusterFirstWithHostNet", "resolve the backend's name"
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    init = spec.get("initContainers", [])
    for container in spec["containers"] + init:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx.get("privileged", False) is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
        assert "memory" in container["resources"]["limits"]
        assert "memory" in container["resources"]["requests"]
    for container in spec["containers"]:
        ctx = container["securityContext"]
        assert not ctx["capabilities"].get("add"), "no capability is added back"
        if mode == "tail":
            # Root by necessity (0600 root-owned audit log), but without capabilities.
            assert ctx["runAsUser"] == 0 and ctx["runAsNonRoot"] is False
        else:
            assert ctx["runAsNonRoot"] is True
            assert ctx["runAsUser"] == NONROOT_UID
            assert ctx["runAsGroup"] == NONROOT_UID
    if mode == "node-local":
        # One short-lived helper hands the hostPath state directory to the agent's uid:
        # root with CAP_CHOWN and nothing else, mounting nothing but that directory.
        assert [c["name"] for c in init] == ["state-dir-owner"]
        ctx = init[0]["securityContext"]
        assert ctx["runAsUser"] == 0 and ctx["capabilities"]["add"] == ["CHOWN"]
        assert [m["mountPath"] for m in init[0]["volumeMounts"]] == [STATE_DIR]
        script = " ".join(init[0]["command"] + init[0]["args"])
        assert f"chown {NONROOT_UID}:{NONROOT_UID}" in script and "chmod 0700" in script
        assert spec["securityContext"]["fsGroup"] == NONROOT_UID, "Secrets readable by gid"
    else:
        assert not init


def check_state_is_durable(workload: Doc) -> str:
    """The outbox lives on the node or on a PVC of its own, never on an emptyDir.

    Returns "hostPath:<path>" or "pvc:<claim template>".
    """
    spec = pod_spec(workload)
    container = spec["containers"][0]
    state = env_value(container, "HEALERT_STATE_DIR")
    assert state == STATE_DIR
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == state)
    assert not mount.get("readOnly", False) and "subPath" not in mount
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    if workload["kind"] == "StatefulSet":
        assert mount["name"] not in volumes, "the claim template, not a pod volume"
        claims = {c["metadata"]["name"]: c for c in workload["spec"]["volumeClaimTemplates"]}
        claim = claims[mount["name"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], "one replica per volume"
        assert claim["spec"]["resources"]["requests"]["storage"]
        retention = workload["spec"]["persistentVolumeClaimRetentionPolicy"]
        assert retention == {"whenDeleted": "Retain", "whenScaled": "Retain"}
        return f"pvc:{mount['name']}"
    assert workload["kind"] == "DaemonSet", "only DaemonSets and StatefulSets keep an outbox"
    volume = volumes[mount["name"]]
    assert set(volume) == {"name", "hostPath"}, f"outbox on {volume}"
    assert volume["hostPath"]["type"] == "DirectoryOrCreate"
    return f"hostPath:{volume['hostPath']['path']}"


def check_secrets_from_mounts(workload: Doc, secret_keys: dict[str, set[str]]) -> None:
    """Secrets reach the agent as mounted files, never as environment values."""
    spec = pod_spec(workload)
    container = spec["containers"][0]
    env = env_of(container)
    assert "HEALERT_API_KEY" not in env, "use HEALERT_API_KEY_FILE with a mounted Secret"
    assert "HEALERT_WEBHOOK_TOKEN" not in env, "use HEALERT_WEBHOOK_TOKEN_FILE"
    for item in env.values():
        assert "secretKeyRef" not in item.get("valueFrom", {}), item["name"]
    assert not container.get("envFrom"), "no bulk environment from Secrets or ConfigMaps"
    assert not any("secret" in str(a).lower() for a in container.get("args", []))
    claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mounted = {m["name"] for m in mounts.values()}
    assert set(volumes) | claims == mounted, "unused or missing volumes"
    for mount in mounts.values():
        assert "subPath" not in mount, "subPath mounts never see ConfigMap/Secret updates"

    def mount_for(file: str) -> Doc:
        owners = [m for p, m in mounts.items() if PurePosixPath(file).is_relative_to(p)]
        assert owners, f"{file} is not on a mounted volume"
        return volumes[max(owners, key=lambda m: len(m["mountPath"]))["name"]]

    for name in (
        "HEALERT_API_KEY_FILE",
        "HEALERT_TLS_CERT",
        "HEALERT_TLS_KEY",
        "HEALERT_TLS_CLIENT_CA",
        "HEALERT_WEBHOOK_TOKEN_FILE",
    ):
        if name in env:
            volume = mount_for(env[name]["value"])
            assert "secret" in volume, f"{name} must come from a Secret volume"
            secret = volume["secret"]["secretName"]
            if secret in secret_keys:
                assert PurePosixPath(env[name]["value"]).name in secret_keys[secret], name
            mode = volume["secret"]["defaultMode"]
            assert mode & 0o007 == 0, f"{name}: the Secret's files are not world-readable"
    rules = mount_for(env["RULES_PATH"]["value"])
    assert "configMap" in rules
    assert "/tmp" in mounts, "a writable /tmp for a read-only root filesystem"


def check_probes_and_ports(workload: Doc) -> None:
    """Ports that the listeners, the probes and the monitors agree on: named in the pod
    networks, undeclared on the host network (node-local: see check_node_local)."""
    mode = mode_of(workload)
    container = pod_spec(workload)["containers"][0]
    webhook, ops = container_ports(workload)
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if mode == "node-local":
        assert not ports
    else:
        assert ports == ({"metrics": ops} if mode == "tail" else
                         {"metrics": ops, "webhook": webhook})
    for probe, path_ in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path_
        assert get["port"] == (ops if mode == "node-local" else "metrics")
        assert get.get("scheme", "HTTP") == "HTTP"
    env = env_of(container)
    assert env["K8S_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert container["args"] == (["tail"] if mode == "tail" else ["serve"])
    assert (webhook is None) == (mode == "tail")
    if webhook is not None:
        assert env["HEALERT_WEBHOOK_PATH"]["value"] == "/audit"


def container_ports(workload: Doc) -> tuple[int | None, int]:
    """(webhook port, ops port) the agent container listens on, from its settings."""
    env = env_of(pod_spec(workload)["containers"][0])
    listen = env.get("HEALERT_LISTEN", {}).get("value")
    ops = env["HEALERT_OPS_LISTEN"]["value"]
    return (int(listen.rpartition(":")[2]) if listen else None), int(ops.rpartition(":")[2])


def check_control_plane_only(workload: Doc) -> None:
    spec = pod_spec(workload)
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}
            ]
        }
    ]
    tolerated = {(t["key"], t.get("effect")) for t in spec["tolerations"]}
    assert ("node-role.kubernetes.io/control-plane", "NoSchedule") in tolerated
    assert ("node-role.kubernetes.io/master", "NoSchedule") in tolerated


def check_node_local(workload: Doc) -> None:
    """Loopback webhook, client certificates required, ports that fit a control plane."""
    spec = pod_spec(workload)
    container = spec["containers"][0]
    env = env_of(container)
    host = env["HEALERT_LISTEN"]["value"].rpartition(":")[0]
    assert host == "127.0.0.1", "only the node's own apiserver may reach the webhook"
    assert env["HEALERT_TLS_CLIENT_CA"]["value"], "mTLS is required on a shared host network"
    assert env["HEALERT_TLS_CLIENT_NAMES"]["value"]
    assert "HEALERT_WEBHOOK_TOKEN_FILE" not in env
    assert "HEALERT_INSECURE_HTTP" not in env
    # The ops listener binds the node's IP, taken from the Downward API before its use.
    names = [item["name"] for item in container["env"]]
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["HEALERT_OPS_LISTEN"]["value"].startswith("$(HOST_IP):")
    assert names.index("HOST_IP") < names.index("HEALERT_OPS_LISTEN")
    for port_ in container_ports(workload):
        assert port_ not in BUSY_HOST_PORTS, port_
        assert port_ not in NODEPORT_RANGE and port_ not in EPHEMERAL_RANGE, port_
        assert port_ >= 1024, "no privileged port (no CAP_NET_BIND_SERVICE)"
    check_surges(workload)
    check_control_plane_only(workload)


def check_surges(workload: Doc) -> None:
    """On each node the new pod starts beside the old one and shares its ports (the agent
    sets SO_REUSEPORT) and its outbox; the old one stops once the new one is ready.

    On the host network the API server turns every declared container port into a host
    port, and the scheduler and the kubelet refuse a second pod with the same host port
    on a node: a declared port would leave the surge pod Pending and the rollout stuck.
    """
    strategy = workload["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate",
                        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    spec = pod_spec(workload)
    for container in spec["containers"] + spec.get("initContainers", []):
        assert not container.get("ports"), f"{container['name']} declares host ports"
    # The kubelet's probes reach either process while both listen: the old pod goes only
    # after the new one has stayed ready a while, by then listening itself.
    assert workload["spec"]["minReadySeconds"] >= 10


def check_scrapes_undeclared_port(endpoint: Doc, workload: Doc) -> None:
    """A PodMonitor endpoint for pods that declare no port: the agent container's target
    only, its address the pod's IP (IPv4 or IPv6) with the ops port."""
    assert "port" not in endpoint and "portNumber" not in endpoint
    _, ops = container_ports(workload)
    keep, *addresses = endpoint["relabelings"]
    assert keep == {"sourceLabels": ["__meta_kubernetes_pod_container_name"],
                    "regex": pod_spec(workload)["containers"][0]["name"], "action": "keep"}
    for rule, ip, address in zip(addresses, ("10.0.0.7", "fd00::7"),
                                 (f"10.0.0.7:{ops}", f"[fd00::7]:{ops}"), strict=True):
        assert rule["sourceLabels"] == ["__meta_kubernetes_pod_ip"]
        assert rule["targetLabel"] == "__address__"
        assert re.fullmatch(rule["regex"], ip), (rule, ip)
        assert rule["replacement"].replace("${1}", ip) == address
        other = "fd00::7" if ip == "10.0.0.7" else "10.0.0.7"
        assert not re.fullmatch(rule["regex"], other), "each rule for one family"


def check_webhook_memory(workload: Doc) -> None:
    """Request bodies in memory never take more than the in-flight budget: the limit holds
    the budget plus the process (50-70 MiB), the cluster view and room to spare."""
    from healert_webhook.config import default_of
    container = pod_spec(workload)["containers"][0]
    env = env_of(container)
    budget = int(env.get("HEALERT_MAX_INFLIGHT_BYTES", {}).get("value")
                 or default_of("max_inflight_bytes"))
    limit = memory_bytes(container["resources"]["limits"]["memory"])
    assert limit >= budget + 256 * 1024**2, (limit, budget)


def check_api_token(workload: Doc) -> bool:
    """The cluster view's token, if mounted: a short-lived projected token, read-only, in
    the agent's container only (never in an init container); True when it is mounted."""
    spec = pod_spec(workload)
    assert spec.get("automountServiceAccountToken") is False, "never in every container"
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    if "kube-api-access" not in volumes:
        return False
    sources = volumes["kube-api-access"]["projected"]["sources"]
    token = next(s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s)
    assert token["path"] == "token" and token["expirationSeconds"] <= 3607
    assert "audience" not in token, "the apiserver's own audience"
    for container in spec.get("initContainers", []):
        assert all(m["name"] != "kube-api-access" for m in container["volumeMounts"])
    mounts = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "kube-api-access"]
    assert mounts == [{"name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_DIR,
                       "readOnly": True}]
    return True


def check_cluster_view_rbac(docs: list[Doc], service_account: str, namespace: str) -> None:
    """A ClusterRole with get/list/watch on exactly the watched resources (list/watch on
    those never read by name; plus `get` on owners of other kinds), bound to the agent's
    service account and nothing else."""
    [role] = [d for d in docs if d["kind"] == "ClusterRole"]
    [binding] = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    watched: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames, no URLs"
        assert "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        if rule["verbs"] == ["get"]:
            continue  # an owner of another kind, fetched by GET
        if set(rule["resources"]) <= LIST_WATCH_ONLY:
            assert rule["verbs"] == ["list", "watch"], rule
        else:
            assert rule["verbs"] == ["get", "list", "watch"], rule
            assert not LIST_WATCH_ONLY.intersection(rule["resources"]), rule
        for group in rule["apiGroups"]:
            watched.setdefault(group, set()).update(rule["resources"])
    assert watched == CLUSTER_VIEW_RULES
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": service_account,
                                    "namespace": namespace}]


def check_workload(workload: Doc, secret_keys: dict[str, set[str]]) -> str:
    """Every check that applies to one mode's workload; returns where the outbox lives."""
    mode = mode_of(workload)
    assert workload["kind"] == KIND_OF_MODE[mode]
    check_hardened(workload)
    check_api_token(workload)
    check_probes_and_ports(workload)
    check_secrets_from_mounts(workload, secret_keys)
    where = check_state_is_durable(workload)
    if mode == "node-local":
        check_node_local(workload)
    if mode == "tail":
        check_control_plane_only(workload)
    if mode != "tail":
        check_webhook_memory(workload)
    return where


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("path", cluster_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_cluster_objects_validate_offline(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        for key in ("apiVersion", "kind", "metadata"):
            assert key in doc, f"{path}: {key} missing"
        assert doc["metadata"].get("name"), f"{path}: metadata.name missing"
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == "healert-system", path
        else:
            assert "namespace" not in doc["metadata"], path
        if doc["apiVersion"].startswith(CRD_GROUPS):
            # CRDs have no schema in kubernetes-validate; shape only.
            assert isinstance(doc.get("spec"), dict), f"{path}: {doc['kind']} without spec"
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_validator_rejects_a_broken_object() -> None:
    """Guard against a validator that accepts anything (e.g. a missing schema)."""
    statefulset = workload_of("service")
    broken = yaml.safe_load(yaml.safe_dump(statefulset))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(statefulset))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUsr"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


# --------------------------------------------------------------------------- kustomize


def test_the_layout_is_the_documented_one() -> None:
    folders = {p.name for p in MANIFESTS.iterdir() if p.is_dir()}
    assert folders == {"apiserver", *KUSTOMIZE_FOLDERS}
    assert not (MANIFESTS / "webhook").exists() and not (MANIFESTS / "daemonset").exists()


@pytest.mark.parametrize("folder", KUSTOMIZE_FOLDERS)
def test_kustomization_lists_exactly_the_folder(folder: str) -> None:
    directory = MANIFESTS / folder
    # Named "Kustomization" so `kubectl apply -f DIR` skips it (it reads only .yaml,
    # .yml and .json files) while kustomize still finds it.
    assert not (directory / "kustomization.yaml").exists()
    kustomization = load_docs(directory / KUSTOMIZATION)[0]
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "duplicate resources"
    files = {p.name for p in directory.glob("*.yaml")}
    assert {r for r in listed if not r.startswith("..")} == files
    bases = [r for r in listed if r.startswith("..")]
    assert bases == (["../common"] if folder in MODES else [])


def test_apiserver_folder_is_not_applied_to_the_cluster() -> None:
    assert not any((APISERVER / n).exists() for n in (KUSTOMIZATION, "kustomization.yaml"))
    assert (APISERVER / "README.md").exists()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for kustomize) absent")
@pytest.mark.parametrize(
    ("folder", "enforce"),
    [("node-local", "privileged"), ("service", "restricted"), ("tail", "privileged")],
)
def test_kustomize_builds_and_sets_pod_security(folder: str, enforce: str) -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS / folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == enforce
    kinds = {d["kind"] for d in docs}
    assert {"ServiceAccount", "ConfigMap", KIND_OF_MODE[folder]} <= kinds
    # Host-network pods are outside every NetworkPolicy: none is shipped for them.
    assert ("NetworkPolicy" in kinds) == (folder != "node-local")


def test_secret_templates_are_placeholders_outside_kustomizations() -> None:
    templates = sorted((MANIFESTS / "common" / "templates").glob("*.yaml"))
    names = set()
    for path in templates:
        secret = load_docs(path)[0]
        assert secret["kind"] == "Secret"
        names.add(secret["metadata"]["name"])
        for value in secret["stringData"].values():
            assert "REPLACE-ME" in value, f"{path}: not an obvious placeholder"
    assert names == {"healert-backend-api-key", "healert-webhook-token", "healert-webhook-tls"}


# --------------------------------------------------------------------------- workloads


def test_workloads_exist() -> None:
    found = sorted((p.parent.name, d["kind"], mode_of(d)) for p, d in workloads())
    assert found == [(m, KIND_OF_MODE[m], m) for m in MODES]


@pytest.mark.parametrize(("path", "workload"), workloads(), ids=lambda v: getattr(v, "name", ""))
def test_every_workload_passes_the_shared_checks(path: Path, workload: Doc) -> None:
    check_workload(workload, template_secret_keys())
    assert container_ports(workload) == PORTS[mode_of(workload)]
    spec = pod_spec(workload)
    assert spec["serviceAccountName"] == "healert-webhook"
    rules = next(v for v in spec["volumes"] if v["name"] == "rules")
    cm = find("common", "ConfigMap", "healert-rules")
    assert rules["configMap"]["name"] == "healert-rules"
    assert PurePosixPath(env_value(spec["containers"][0], "RULES_PATH")).name in cm["data"]


def test_every_outbox_is_durable_and_its_own() -> None:
    """No emptyDir, no Deployment, and no two modes sharing one outbox on a node."""
    places = [check_state_is_durable(w) for _, w in workloads()]
    assert len(places) == len(set(places)) == len(MODES)
    assert "hostPath:/var/lib/healert" in places, "the tail keeps its existing state dir"
    for _, doc in cluster_objects():
        assert doc["kind"] != "Deployment"


def test_the_checks_catch_an_emptydir_outbox() -> None:
    """The durable-outbox check fails on what the old Deployment did."""
    daemonset = yaml.safe_load(yaml.safe_dump(workload_of("node-local")))
    spec = pod_spec(daemonset)
    state = next(v for v in spec["volumes"] if v["name"] == "state")
    state.pop("hostPath")
    state["emptyDir"] = {"sizeLimit": "1Gi"}
    with pytest.raises(AssertionError):
        check_state_is_durable(daemonset)
    with pytest.raises(AssertionError):
        check_hardened(_with_init_capability(workload_of("node-local"), "DAC_OVERRIDE"))


def _with_init_capability(workload: Doc, capability: str) -> Doc:
    copy = yaml.safe_load(yaml.safe_dump(workload))
    pod_spec(copy)["initContainers"][0]["securityContext"]["capabilities"]["add"].append(
        capability)
    return copy


def test_service_statefulset_shape() -> None:
    statefulset = workload_of("service")
    assert statefulset["spec"]["replicas"] == 2
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    service = find("service", "Service")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    spec = pod_spec(statefulset)
    terms = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert spec["securityContext"]["fsGroup"] == NONROOT_UID, "the volume writable by 65532"
    env = env_of(spec["containers"][0])
    assert env["HEALERT_LISTEN"]["value"] == "0.0.0.0:8443"
    # Replicas share the backend's 60/min per-IP limit when they leave through one IP.
    rate = float(env["HEALERT_FORWARD_RATE"]["value"])
    assert rate * statefulset["spec"]["replicas"] <= 60
    pdb = find("service", "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == statefulset["spec"]["selector"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= spec_labels(
        statefulset).items()


def test_node_local_daemonset_shape() -> None:
    daemonset = workload_of("node-local")
    env = env_of(pod_spec(daemonset)["containers"][0])
    # Every node sends from its own IP: the whole budget per node.
    assert float(env["HEALERT_FORWARD_RATE"]["value"]) == 60
    places = {check_state_is_durable(w) for w in (daemonset, workload_of("tail"))}
    assert places == {"hostPath:/var/lib/healert-webhook", "hostPath:/var/lib/healert"}


def test_service_has_fixed_cluster_ip_and_selects_the_pods() -> None:
    service = find("service", "Service")
    statefulset = workload_of("service")
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", service["spec"]["clusterIP"])
    assert service["spec"]["selector"].items() <= spec_labels(statefulset).items()
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"webhook": (8443, "webhook"), "metrics": (9090, "metrics")}


def test_the_cluster_view_reads_exactly_what_it_watches() -> None:
    from healert_webhook.cluster.kinds import WATCHED
    watched: dict[str, set[str]] = {}
    for kind in WATCHED:
        watched.setdefault(kind.group, set()).add(kind.resource)
    assert watched == CLUSTER_VIEW_RULES
    check_cluster_view_rbac(objects_in("common"), "healert-webhook", "healert-system")
    for mode in MODES:
        assert check_api_token(workload_of(mode)), mode


def test_the_token_checks_catch_a_token_in_every_container() -> None:
    daemonset = yaml.safe_load(yaml.safe_dump(workload_of("node-local")))
    init = pod_spec(daemonset)["initContainers"][0]
    init["volumeMounts"].append({"name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_DIR,
                                 "readOnly": True})
    with pytest.raises(AssertionError):
        check_api_token(daemonset)
    role = yaml.safe_load(yaml.safe_dump(objects_in("common")))
    for doc in role:
        if doc["kind"] == "ClusterRole":
            doc["rules"][0]["resources"].append("secrets")
    with pytest.raises(AssertionError):
        check_cluster_view_rbac(role, "healert-webhook", "healert-system")


@pytest.mark.parametrize("folder", ["service", "tail"])
def test_network_policy_admits_the_listeners(folder: str) -> None:
    policy = find(folder, "NetworkPolicy")
    workload = workload_of(folder)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= spec_labels(workload).items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    admitted = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    webhook_port, ops_port = PORTS[folder]
    assert admitted == ({ops_port} if webhook_port is None else {ops_port, webhook_port})
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert 53 in egress_ports and 6443 in egress_ports
    assert len(policy["spec"]["egress"]) == 3, "DNS, backend and the Kubernetes API only"


def test_tail_reads_the_log_directory_read_only() -> None:
    daemonset = workload_of("tail")
    spec = pod_spec(daemonset)
    container = spec["containers"][0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    log_path = PurePosixPath(env_value(container, "AUDIT_LOG_PATH"))
    assert str(log_path) == "/var/log/kubernetes/audit/audit.log"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(log_path.parent))
    assert mount["readOnly"] is True
    host = volumes[mount["name"]]["hostPath"]
    assert host["path"] == str(log_path.parent), "mount the directory: rotation renames the file"
    assert host["type"] == "Directory"
    for volume in volumes.values():
        if "hostPath" in volume:
            assert volume["hostPath"].get("type") != "File"
    writable_host = [
        m["mountPath"]
        for m in container["volumeMounts"]
        if "hostPath" in volumes[m["name"]] and not m.get("readOnly")
    ]
    assert writable_host == [STATE_DIR]


def test_image_tag_matches_the_package_version() -> None:
    pyproject = REPO / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("pyproject.toml absent")
    version = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    for _, workload in workloads():
        spec = pod_spec(workload)
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["image"].rsplit(":", 1)[1] == version, container["image"]


# --------------------------------------------------------------------------- monitoring


def test_monitors_select_each_mode_and_name_the_alerts_job() -> None:
    monitors = [d for d in objects_in("monitoring") if d["kind"] in {"ServiceMonitor",
                                                                     "PodMonitor"}]
    selected = {}
    for monitor in monitors:
        # The job name comes from the app.kubernetes.io/name label: "healert-webhook",
        # which the alerts select on.
        assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
        selector = monitor["spec"]["selector"]["matchLabels"]
        if monitor["kind"] == "ServiceMonitor":
            target = find("service", "Service")["metadata"]["labels"]
            endpoint = monitor["spec"]["endpoints"][0]
        else:
            mode = MODE_OF_COMPONENT[selector["app.kubernetes.io/component"]]
            target = spec_labels(workload_of(mode))
            endpoint = monitor["spec"]["podMetricsEndpoints"][0]
        assert selector.items() <= target.items()
        assert target["app.kubernetes.io/name"] == "healert-webhook"
        assert endpoint["path"] == "/metrics"
        if selector.get("app.kubernetes.io/component") == "webhook-node-local":
            check_scrapes_undeclared_port(endpoint, workload_of("node-local"))
        else:
            assert endpoint["port"] == "metrics"
        selected[monitor["kind"], selector["app.kubernetes.io/component"]] = True
    assert set(selected) == {("ServiceMonitor", "webhook"), ("PodMonitor", "webhook-node-local"),
                             ("PodMonitor", "audit-log-tail")}
    rule = find("monitoring", "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert any('up{job="healert-webhook"}' in e for e in exprs)


def test_monitoring_never_touches_a_secret_or_a_certificate() -> None:
    """`kubectl apply -k manifests/monitoring` leaves the webhook's serving certificate
    alone: cert-manager objects (which would reissue healert-webhook-tls from another CA)
    and Secrets live only in their own opt-in bundle."""
    for doc in objects_in("monitoring"):
        assert not doc["apiVersion"].startswith("cert-manager.io/"), doc["kind"]
        assert doc["kind"] != "Secret"
        assert not _keys_named(doc, "secretName"), f"{doc['kind']} names a Secret"
    for path, doc in cluster_objects():
        if doc["apiVersion"].startswith("cert-manager.io/"):
            assert path.parent.name == "cert-manager", path
    for folder in KUSTOMIZE_FOLDERS:
        listed = load_docs(MANIFESTS / folder / KUSTOMIZATION)[0]["resources"]
        assert not [r for r in listed if "cert-manager" in r], folder


def _keys_named(value: Any, key: str) -> list[Any]:
    """Every value stored under `key` anywhere in a YAML document."""
    if isinstance(value, dict):
        return [v for k, v in value.items() if k == key] + [
            found for v in value.values() for found in _keys_named(v, key)]
    if isinstance(value, list):
        return [found for v in value for found in _keys_named(v, key)]
    return []


def test_the_cert_manager_bundle_issues_what_the_pods_and_the_apiserver_use() -> None:
    """One CA signs the server certificate the webhook pods mount and the client
    certificate the apiserver presents; the server certificate names what the shipped
    kubeconfigs check; the client certificate's name is one the agent accepts."""
    docs = objects_in("cert-manager")
    issuers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Issuer"}
    certificates = {d["spec"]["secretName"]: d for d in docs if d["kind"] == "Certificate"}
    [ca] = [c for c in certificates.values() if c["spec"].get("isCA")]
    assert issuers[ca["spec"]["issuerRef"]["name"]]["spec"] == {"selfSigned": {}}
    [ca_issuer] = [i for i in issuers.values() if "ca" in i["spec"]]
    assert ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    for mode in ("node-local", "service"):
        volumes = pod_spec(workload_of(mode))["volumes"]
        tls = next(v for v in volumes if v["name"] == "tls")["secret"]["secretName"]
        server = certificates[tls]["spec"]
        assert server["issuerRef"] == {"name": ca_issuer["metadata"]["name"], "kind": "Issuer"}
        assert "server auth" in server["usages"]
        names = env_value(pod_spec(workload_of(mode))["containers"][0],
                          "HEALERT_TLS_CLIENT_NAMES").split(",")
        [client] = [c["spec"] for c in certificates.values() if "client auth" in
                    c["spec"].get("usages", [])]
        assert client["commonName"] in names
        assert client["issuerRef"] == server["issuerRef"]
    for name in ("node-local", "service-mtls", "service-token"):
        cluster, _ = _kubeconfig(name)
        assert cluster["tls-server-name"] in server["dnsNames"]
        host = urlsplit(cluster["server"]).hostname
        assert host in server["ipAddresses"], name


def test_monitoring_manifests_are_generated_from_the_chart() -> None:
    result = subprocess.run(["bash", str(MANIFESTS / "sync-monitoring.sh"), "--check"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- rules ConfigMap


def test_rules_configmap_matches_top_level_rules() -> None:
    rules = REPO / "rules.yaml"
    if not rules.exists():
        pytest.skip("top-level rules.yaml does not exist yet; ConfigMap holds a placeholder")
    cm = find("common", "ConfigMap", "healert-rules")
    text = rules.read_text(encoding="utf-8")
    assert cm["data"]["rules.yaml"] == text, "run manifests/sync-rules.sh"
    chart_copy = REPO / "charts" / "healert-webhook" / "files" / "rules.yaml"
    assert chart_copy.read_text(encoding="utf-8") == text, "run manifests/sync-rules.sh"


def test_sync_rules_round_trips_exactly(tmp_path: Path) -> None:
    samples = [
        "config:\n  a: 1\n\nrules:\n  - x\n",
        "  indented first\nx\n",
        "no newline",
        "many\n\n\n",
        "# c\n\ttab\n  trailing  \n",
    ]
    script = MANIFESTS / "sync-rules.sh"
    env = {**os.environ, "HEALERT_WEBHOOK": shutil.which("true") or "/bin/true"}  # texts, no rules
    for index, text in enumerate(samples):
        source, out = tmp_path / f"r{index}.yaml", tmp_path / f"cm{index}.yaml"
        copy = tmp_path / f"chart{index}" / "rules.yaml"
        source.write_text(text, encoding="utf-8")
        args = ["bash", str(script), "--rules", str(source), "--out", str(out),
                "--chart-copy", str(copy)]
        subprocess.run(args, check=True, capture_output=True, timeout=30, env=env)
        assert load_docs(out)[0]["data"]["rules.yaml"] == text
        assert copy.read_text(encoding="utf-8") == text
        check = subprocess.run([*args, "--check"], capture_output=True, timeout=30,
                               check=False)
        assert check.returncode == 0
        source.write_text(text + "changed\n", encoding="utf-8")
        check = subprocess.run([*args, "--check"], capture_output=True, timeout=30,
                               check=False)
        assert check.returncode == 1


def validator(tmp_path: Path) -> dict[str, str]:
    """The environment that points sync-rules.sh at this checkout's healert-webhook."""
    wrapper = tmp_path / "healert-webhook"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" '
                       '-m healert_webhook "$@"\n')
    wrapper.chmod(0o755)
    return {**os.environ, "HEALERT_WEBHOOK": str(wrapper)}


def test_sync_rules_on_other_files_leaves_the_chart_alone(tmp_path: Path) -> None:
    source, out = tmp_path / "r.yaml", tmp_path / "cm.yaml"
    source.write_text("rules: []\n", encoding="utf-8")
    chart_copy = REPO / "charts" / "healert-webhook" / "files" / "rules.yaml"
    before = chart_copy.read_bytes()
    subprocess.run(["bash", str(MANIFESTS / "sync-rules.sh"), "--rules", str(source),
                    "--out", str(out)], check=True, capture_output=True, timeout=30,
                   env=validator(tmp_path))
    assert chart_copy.read_bytes() == before


def test_sync_rules_never_writes_rules_that_do_not_validate(tmp_path: Path) -> None:
    source, out = tmp_path / "r.yaml", tmp_path / "cm.yaml"
    source.write_text("rules:\n  - name: Bad_Name\n    severity: urgent\n", encoding="utf-8")
    out.write_text("the ConfigMap as it was\n")
    done = subprocess.run(["bash", str(MANIFESTS / "sync-rules.sh"), "--rules", str(source),
                           "--out", str(out)], capture_output=True, timeout=60, text=True,
                          check=False, env=validator(tmp_path))
    assert done.returncode == 1, done.stderr
    assert "does not validate" in done.stderr and "Bad_Name" in done.stderr
    assert out.read_text() == "the ConfigMap as it was\n"


# --------------------------------------------------------------------------- audit policy
#
# The shipped policy is `healert-webhook policy` for the shipped rules.yaml (what each
# rule needs is tested in tests/auditpolicy/); here: it is that output, in the chart too,
# the sync script keeps it so, and a few of its decisions through an evaluator of our own.

SHIPPED_POLICY = APISERVER / "audit-policy.yaml"
CHART_POLICY = REPO / "charts" / "healert-webhook" / "files" / "audit-policy.yaml"
SYNC_POLICY = MANIFESTS / "sync-policy.sh"


def _sync_policy(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # The command of the package under test, wherever its environment is.
    agent = Path(sys.executable).parent / "healert-webhook"
    env = {**os.environ, "HEALERT_WEBHOOK": str(agent)}
    return subprocess.run(["bash", str(SYNC_POLICY), *map(str, args)], capture_output=True,
                          text=True, timeout=120, check=False, env=env)


def test_the_shipped_policy_is_the_generated_one() -> None:
    text = generate(needs_of(load_rules(REPO / "rules.yaml")))
    assert SHIPPED_POLICY.read_text(encoding="utf-8") == text, "run manifests/sync-policy.sh"
    assert CHART_POLICY.read_text(encoding="utf-8") == text, "run manifests/sync-policy.sh"
    assert check(text, needs_of(load_rules(REPO / "rules.yaml"))) == []


def test_sync_policy_fails_when_the_rules_drift_and_one_command_regenerates(
        tmp_path: Path) -> None:
    assert _sync_policy("--check").returncode == 0
    rules = tmp_path / "rules.yaml"
    rules.write_text((REPO / "rules.yaml").read_text(encoding="utf-8").replace(
        "enabled: false", "enabled: true", 1), encoding="utf-8")
    drifted = _sync_policy("--rules", rules, "--out", SHIPPED_POLICY, "--check")
    assert drifted.returncode == 1
    assert f"{SHIPPED_POLICY} is not the policy the rules need" in drifted.stderr
    out, copy = tmp_path / "audit-policy.yaml", tmp_path / "chart" / "audit-policy.yaml"
    written = _sync_policy("--rules", rules, "--out", out, "--chart-copy", copy)
    assert written.returncode == 0, written.stderr
    assert out.read_text() == copy.read_text() == generate(needs_of(load_rules(rules)))
    assert "gitops-drift" in out.read_text()
    assert _sync_policy("--rules", rules, "--out", out, "--chart-copy", copy,
                        "--check").returncode == 0


def test_sync_policy_passes_arguments_on_and_leaves_the_chart_alone(tmp_path: Path) -> None:
    before = CHART_POLICY.read_bytes()
    out = tmp_path / "audit-policy.yaml"
    proxy = "system:serviceaccount:teleport:teleport"
    result = _sync_policy("--rules", REPO / "rules.yaml", "--out", out, "--",
                          "--cluster-view", "off", "--proxy", proxy)
    assert result.returncode == 0, result.stderr
    assert f'"{proxy}"' in out.read_text()
    assert "--cluster-view off" in out.read_text()
    assert CHART_POLICY.read_bytes() == before
    assert _sync_policy("--rules", tmp_path / "none.yaml").returncode == 2


LEVELS = ("None", "Metadata", "Request", "RequestResponse")
POLICY_KEYS = {"apiVersion", "kind", "metadata", "rules", "omitStages", "omitManagedFields"}
RULE_KEYS = {
    "level",
    "users",
    "userGroups",
    "verbs",
    "resources",
    "namespaces",
    "nonResourceURLs",
    "omitStages",
    "omitManagedFields",
}


@dataclass(frozen=True)
class Request:
    """The attributes the apiserver's audit policy checker looks at."""

    user: str
    groups: tuple[str, ...]
    verb: str
    resource: str = ""
    subresource: str = ""
    group: str = ""
    namespace: str = "default"
    name: str = "x"
    path: str = ""  # non-resource requests only


def _path_matches(path: str, spec: str) -> bool:
    return spec in ("*", path) or (spec.endswith("*") and path.startswith(spec.rstrip("*")))


def _resource_matches(rule: Doc, req: Request) -> bool:
    if not req.resource:
        return False
    if rule.get("namespaces") and req.namespace not in rule["namespaces"]:
        return False
    if not rule.get("resources"):
        return True
    combined = f"{req.resource}/{req.subresource}" if req.subresource else req.resource
    for gr in rule["resources"]:
        if gr.get("group", "") != req.group:
            continue
        if not gr.get("resources"):
            return True
        if gr.get("resourceNames") and req.name not in gr["resourceNames"]:
            continue
        for res in gr["resources"]:
            if res in ("*", combined):
                return True
            if req.subresource and res.startswith("*/") and res[2:] == req.subresource:
                return True
            if res.endswith("/*") and res[:-2] == req.resource:
                return True
    return False


def rule_matches(rule: Doc, req: Request) -> bool:
    """k8s.io/apiserver/pkg/audit/policy checker semantics for one rule."""
    if rule.get("users") and req.user not in rule["users"]:
        return False
    if rule.get("userGroups") and not set(rule["userGroups"]) & set(req.groups):
        return False
    if rule.get("verbs") and req.verb not in rule["verbs"]:
        return False
    if rule.get("namespaces") or rule.get("resources"):
        return _resource_matches(rule, req)
    if rule.get("nonResourceURLs"):
        return not req.resource and any(
            _path_matches(req.path, spec) for spec in rule["nonResourceURLs"]
        )
    return True


def audit_level(policy: Doc, req: Request) -> str:
    """The level of the first rule that matches, None when no rule does."""
    for rule in policy["rules"]:
        if rule_matches(rule, req):
            return str(rule["level"])
    return "None"


@pytest.fixture(scope="module")
def policy() -> Doc:
    return load_docs(SHIPPED_POLICY)[0]


ALICE = ("alice", ("system:authenticated", "developers"))
ADMIN = ("kubernetes-admin", ("kubeadm:cluster-admins", "system:authenticated"))
ARGO_SA = (
    "system:serviceaccount:argocd:argocd-application-controller",
    ("system:serviceaccounts", "system:serviceaccounts:argocd", "system:authenticated"),
)
PROXY_SA = (
    "system:serviceaccount:teleport:teleport",
    ("system:serviceaccounts", "system:serviceaccounts:teleport", "system:authenticated"),
)
KUBE_SYSTEM_SA = (
    "system:serviceaccount:kube-system:endpointslice-controller",
    ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"),
)
NODE = ("system:node:cp-1", ("system:nodes", "system:authenticated"))
EVERYONE = [
    ALICE,
    ADMIN,
    ARGO_SA,
    PROXY_SA,
    KUBE_SYSTEM_SA,
    NODE,
    ("system:kube-controller-manager", ("system:authenticated",)),
    ("system:admin", ("system:masters", "system:authenticated")),
    ("system:anonymous", ("system:unauthenticated",)),
]
ALL_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
WRITES = ("create", "update", "patch")


def test_policy_shape(policy: Doc) -> None:
    assert policy["apiVersion"] == "audit.k8s.io/v1"
    assert policy["kind"] == "Policy"
    assert set(policy) <= POLICY_KEYS
    assert policy["omitStages"] == ["RequestReceived"]
    assert policy["omitManagedFields"] is True, "no enabled rule reads managed fields"
    assert policy["rules"], "an empty policy audits nothing"
    for rule in policy["rules"]:
        assert set(rule) <= RULE_KEYS, rule
        assert rule["level"] in LEVELS
        assert not (
            rule.get("nonResourceURLs") and (rule.get("resources") or rule.get("namespaces"))
        ), "invalid combination"
        assert "omitManagedFields" not in rule
        for gr in rule.get("resources", []):
            assert set(gr) <= {"group", "resources", "resourceNames"}, gr
            assert gr["group"] != "*", "apiservers before 1.35 refuse to start on it"
    assert policy["rules"][-1] == {"level": "None"}, "what no rule needs is dropped"


# (verb, group, resource, subresource, least level) for what the enabled rules match
PEOPLE_CASES = [
    *[(v, "", "pods", sub, "Metadata") for sub in ("exec", "portforward")
      for v in ("get", "create")],
    ("get", "", "secrets", "", "Metadata"),
    *[(v, "apps", r, "", "Request") for v in WRITES
      for r in ("deployments", "statefulsets", "daemonsets", "replicasets")],
    *[(v, "apps", "deployments", "scale", "Request") for v in ("update", "patch")],
    *[(v, "batch", r, "", "Request") for v in WRITES for r in ("jobs", "cronjobs")],
    *[(v, "", "pods", "", "Request") for v in WRITES],
    ("patch", "", "services", "", "Request"),
    ("patch", "networking.k8s.io", "ingresses", "", "Request"),
]


@pytest.mark.parametrize("who", [ALICE, ADMIN, PROXY_SA], ids=lambda w: w[0])
@pytest.mark.parametrize(("verb", "group", "resource", "subresource", "least"), PEOPLE_CASES,
                         ids=lambda v: v if isinstance(v, str) else "")
def test_people_and_proxies_are_audited_at_the_level_rules_need(
    policy: Doc, who: tuple[str, tuple[str, ...]], verb: str, group: str, resource: str,
    subresource: str, least: str,
) -> None:
    """An access proxy is a service account the policy cannot tell from an operator's."""
    req = Request(who[0], who[1], verb, resource, subresource, group, namespace="payments")
    level = audit_level(policy, req)
    assert LEVELS.index(level) >= LEVELS.index(least), f"{req} -> {level}"


@pytest.mark.parametrize("who", EVERYONE, ids=lambda w: w[0])
def test_secret_bodies_never_reach_the_audit_log(
    policy: Doc, who: tuple[str, tuple[str, ...]]
) -> None:
    sensitive = [
        ("", "secrets", ""),
        ("", "configmaps", ""),
        ("", "serviceaccounts", "token"),
        ("authentication.k8s.io", "tokenreviews", ""),
    ]
    for group, resource, sub in sensitive:
        for verb in ALL_VERBS:
            for namespace in ("kube-system", "payments"):
                req = Request(who[0], who[1], verb, resource, sub, group, namespace)
                level = audit_level(policy, req)
                assert level in ("None", "Metadata"), f"{req} -> {level}"


@pytest.mark.parametrize(
    ("req", "why"),
    [
        (Request(*NODE, "update", "leases", group="coordination.k8s.io",
                 namespace="kube-node-lease"), "node heartbeat"),
        (Request(*KUBE_SYSTEM_SA, "update", "leases", group="coordination.k8s.io",
                 namespace="kube-system"), "leader election"),
        (Request(*PROXY_SA, "create", "events"), "events"),
        (Request(*KUBE_SYSTEM_SA, "update", "endpoints"), "endpoints by a controller"),
        (Request(*KUBE_SYSTEM_SA, "create", "pods"), "a controller's pods"),
        (Request(*KUBE_SYSTEM_SA, "update", "deployments", "status", "apps"),
         "status by a controller"),
        (Request("system:kube-proxy", ("system:authenticated",), "watch", "endpointslices",
                 group="discovery.k8s.io", namespace=""), "kube-proxy watch"),
        (Request(*ARGO_SA, "patch", "deployments", group="apps"),
         "a GitOps controller applying Git: never drift"),
        (Request(*PROXY_SA, "list", "deployments", group="apps"), "service account reads"),
        (Request(*NODE, "get", "secrets"), "kubelet reads"),
        (Request(*NODE, "patch", "pods", "status"), "kubelet status"),
        (Request(*ALICE, "get", "pods"), "a person reading: no rule needs it"),
        (Request(*ALICE, "delete", "deployments", group="apps"), "no enabled rule on deletes"),
        (Request(*ALICE, "patch", "deployments", group="apps", namespace="kube-system"),
         "a namespace every rule skips"),
        (Request(*ALICE, "get", path="/healthz"), "health check"),
        (Request(*ALICE, "get", path="/apis/apps/v1"), "discovery"),
    ],
)
def test_noise_is_not_audited(policy: Doc, req: Request, why: str) -> None:
    assert audit_level(policy, req) == "None", why


def test_a_secret_read_through_an_access_proxy_is_audited(policy: Doc) -> None:
    """The proxy authenticates as a service account; only the event names the person."""
    assert audit_level(policy, Request(*PROXY_SA, "get", "secrets")) == "Metadata"
    assert audit_level(policy, Request(*PROXY_SA, "list", "secrets")) == "None"
    assert audit_level(policy, Request(*PROXY_SA, "get", "configmaps")) == "None"
    assert audit_level(policy, Request(*KUBE_SYSTEM_SA, "get", "secrets")) == "None"


def test_evaluator_follows_first_match() -> None:
    rules = {
        "rules": [
            {"level": "None", "users": ["bob"]},
            {
                "level": "RequestResponse",
                "resources": [{"group": "apps", "resources": ["*/scale"]}],
            },
            {"level": "Request", "resources": [{"group": "", "resources": ["pods/*"]}]},
            {"level": "Metadata", "resources": [{"group": "", "resources": ["pods"]}]},
        ]
    }
    assert audit_level(rules, Request("bob", (), "get", "pods")) == "None"
    assert (
        audit_level(rules, Request("al", (), "patch", "deployments", "scale", "apps"))
        == "RequestResponse"
    )
    assert audit_level(rules, Request("al", (), "get", "deployments", "", "apps")) == "None"
    assert audit_level(rules, Request("al", (), "get", "pods", "log")) == "Request"
    # As in the apiserver's checker, "pods/*" also matches the pods resource itself.
    assert audit_level(rules, Request("al", (), "get", "pods")) == "Request"
    assert audit_level(rules, Request("al", (), "get", "services", "status")) == "None"
    assert audit_level(rules, Request("al", (), "get", path="/healthz")) == "None"


# --------------------------------------------------------------------------- managed fields


def matching_rule(policy: Doc, req: Request) -> Doc | None:
    """The first rule that matches, as the apiserver picks it."""
    return next((rule for rule in policy["rules"] if rule_matches(rule, req)), None)


def keeps_managed_fields(policy: Doc, req: Request) -> bool:
    """Whether the event of `req` carries metadata.managedFields: the matching rule's
    omitManagedFields wins over the policy's; neither set means they are kept."""
    rule = matching_rule(policy, req)
    assert rule is not None
    omit = rule.get("omitManagedFields", policy.get("omitManagedFields", False))
    return not omit


def test_managed_fields_are_omitted_where_no_enabled_rule_reads_them(policy: Doc) -> None:
    for req in (Request(*ALICE, "patch", "deployments", group="apps"),
                Request(*ALICE, "patch", "pods"), Request(*PROXY_SA, "create", "pods")):
        assert audit_level(policy, req) != "None", req
        assert not keeps_managed_fields(policy, req), req


def test_evaluator_resolves_managed_fields_per_rule() -> None:
    rules = {
        "omitManagedFields": True,
        "rules": [
            {"level": "RequestResponse", "omitManagedFields": False, "verbs": ["patch"],
             "resources": [{"group": "apps", "resources": ["deployments"]}]},
            {"level": "RequestResponse", "resources": [{"group": "apps"}]},
            {"level": "Metadata", "omitManagedFields": False},
        ],
    }
    assert keeps_managed_fields(rules, Request("al", (), "patch", "deployments", group="apps"))
    assert not keeps_managed_fields(rules, Request("al", (), "update", "deployments",
                                                   group="apps"))
    assert keeps_managed_fields(rules, Request("al", (), "get", "pods"))
    assert keeps_managed_fields({"rules": [{"level": "Metadata"}]}, Request("al", (), "get",
                                                                            "pods"))


# --------------------------------------------------------------------------- apiserver files


def _kubeconfig(name: str) -> tuple[Doc, Doc]:
    """(cluster, user) of the current context of a webhook kubeconfig."""
    config = load_docs(APISERVER / f"audit-webhook-kubeconfig-{name}.yaml")[0]
    assert (config["apiVersion"], config["kind"]) == ("v1", "Config")
    contexts = {c["name"]: c["context"] for c in config["contexts"]}
    context = contexts[config["current-context"]]
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    return cluster, user


def test_the_kubeconfigs_are_the_documented_ones() -> None:
    names = {p.name for p in APISERVER.glob("audit-webhook-kubeconfig-*.yaml")}
    assert names == {f"audit-webhook-kubeconfig-{n}.yaml"
                     for n in ("node-local", "service-mtls", "service-token")}


def test_node_local_kubeconfig_reaches_the_agent_on_its_own_node() -> None:
    cluster, user = _kubeconfig("node-local")
    container = pod_spec(workload_of("node-local"))["containers"][0]
    url = urlsplit(cluster["server"])
    assert url.scheme == "https"
    assert f"{url.hostname}:{url.port}" == env_value(container, "HEALERT_LISTEN")
    assert url.path == env_value(container, "HEALERT_WEBHOOK_PATH")
    assert cluster["tls-server-name"] == "healert-webhook.healert-system.svc"
    assert cluster["certificate-authority"].startswith("/etc/kubernetes/healert/")
    # mTLS only: the agent requires the certificate, a token alone would be refused.
    assert set(user) == {"client-certificate", "client-key"}
    assert env_value(container, "HEALERT_TLS_CLIENT_NAMES") == "kube-apiserver-audit"


@pytest.mark.parametrize("form", ["mtls", "token"])
def test_service_kubeconfigs_reach_the_service(form: str) -> None:
    cluster, user = _kubeconfig(f"service-{form}")
    url = urlsplit(cluster["server"])
    service = find("service", "Service")
    assert url.scheme == "https"
    assert url.hostname == service["spec"]["clusterIP"], "the apiserver cannot resolve DNS"
    assert url.port == 8443 and url.path == "/audit"
    assert cluster["tls-server-name"] == "healert-webhook.healert-system.svc"
    assert cluster["certificate-authority"].startswith("/etc/kubernetes/healert/")
    if form == "mtls":
        assert set(user) == {"client-certificate", "client-key"}
        env = env_of(pod_spec(workload_of("service"))["containers"][0])
        assert "HEALERT_TLS_CLIENT_CA" in env
    else:
        assert set(user) == {"tokenFile"}, "the token stays in a file, not in the kubeconfig"


def _flags(items: list[str]) -> dict[str, str]:
    return dict(item.lstrip("-").split("=", 1) for item in items)


def test_kubeadm_and_k3s_flags_agree() -> None:
    cluster_config = load_docs(APISERVER / "kubeadm-cluster-configuration.yaml")[0]
    kubeadm = {a["name"]: a["value"] for a in cluster_config["apiServer"]["extraArgs"]}
    static = load_docs(APISERVER / "kubeadm-kube-apiserver-additions.yaml")[0]
    k3s = load_docs(APISERVER / "k3s-config.yaml")[0]
    assert _flags(static["command"]) == kubeadm == _flags(k3s["kube-apiserver-arg"])
    assert kubeadm["audit-policy-file"].endswith("/audit-policy.yaml")
    assert kubeadm["audit-webhook-mode"] == "batch", "blocking mode would stall the apiserver"
    tail = pod_spec(workload_of("tail"))["containers"][0]
    assert kubeadm["audit-log-path"] == env_value(tail, "AUDIT_LOG_PATH")
    mounted = {v["hostPath"] for v in cluster_config["apiServer"]["extraVolumes"]}
    for flag in ("audit-policy-file", "audit-webhook-config-file", "audit-log-path"):
        assert str(PurePosixPath(kubeadm[flag]).parent) in mounted, flag
    static_mounts = {m["mountPath"] for m in static["volumeMounts"]}
    assert mounted == static_mounts
