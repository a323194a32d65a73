"""Offline checks of the deployment manifests under manifests/.

Cluster objects are validated against the Kubernetes OpenAPI schemas shipped with
kubernetes-validate (no network). The apiserver-side files (audit policy, webhook
kubeconfigs, kubeadm and k3s snippets) are not cluster objects and are checked here: the
audit policy through a small evaluator that follows the apiserver's own matching (first
matching rule wins), so the levels each detection rule depends on are asserted for the
requests that trigger it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="install the test extra (pip package kubernetes-validate)"
)

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"
APISERVER = MANIFESTS / "apiserver"
KUBE_VERSION = "1.30.0"
KUSTOMIZE_FOLDERS = ("common", "webhook", "daemonset", "monitoring")
KUSTOMIZATION = "Kustomization"
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob", "Pod"}
CRD_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/")
OPS_PORT = 9090
WEBHOOK_PORT = 8443
NONROOT_UID = 65532

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


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("path", cluster_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_cluster_objects_validate_offline(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        for key in ("apiVersion", "kind", "metadata"):
            assert key in doc, f"{path}: {key} missing"
        assert doc["metadata"].get("name"), f"{path}: metadata.name missing"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "healert-system", path
        if doc["apiVersion"].startswith(CRD_GROUPS):
            # CRDs have no schema in kubernetes-validate; shape only.
            assert isinstance(doc.get("spec"), dict), f"{path}: {doc['kind']} without spec"
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_validator_rejects_a_broken_object() -> None:
    """Guard against a validator that accepts anything (e.g. a missing schema)."""
    deployment = find("webhook", "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUsr"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


# --------------------------------------------------------------------------- kustomize


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
    assert bases == (["../common"] if folder in {"webhook", "daemonset"} else [])


def test_apiserver_folder_is_not_applied_to_the_cluster() -> None:
    assert not any((APISERVER / n).exists() for n in (KUSTOMIZATION, "kustomization.yaml"))
    assert (APISERVER / "README.md").exists()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for kustomize) absent")
@pytest.mark.parametrize(
    ("folder", "enforce"), [("webhook", "restricted"), ("daemonset", "privileged")]
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
    assert {"ServiceAccount", "ConfigMap", "NetworkPolicy"} <= kinds


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
    kinds = sorted((p.parent.name, d["kind"]) for p, d in workloads())
    assert kinds == [("daemonset", "DaemonSet"), ("webhook", "Deployment")]


@pytest.mark.parametrize(("path", "workload"), workloads(), ids=lambda v: getattr(v, "name", ""))
def test_every_container_is_hardened(path: Path, workload: Doc) -> None:
    spec = pod_spec(workload)
    assert spec.get("automountServiceAccountToken") is False
    assert spec["serviceAccountName"] == "healert-webhook"
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(flag), flag
    containers = spec["containers"] + spec.get("initContainers", [])
    for container in containers:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx.get("privileged", False) is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert not ctx["capabilities"].get("add"), "no capability is added back"
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
        assert "memory" in container["resources"]["limits"]
        assert "memory" in container["resources"]["requests"]
        if workload["kind"] == "DaemonSet":
            # Root by necessity (0600 root-owned audit log), but without capabilities.
            assert ctx["runAsUser"] == 0 and ctx["runAsNonRoot"] is False
        else:
            assert ctx["runAsNonRoot"] is True
            assert ctx["runAsUser"] == NONROOT_UID
            assert ctx["runAsGroup"] == NONROOT_UID


@pytest.mark.parametrize(("path", "workload"), workloads(), ids=lambda v: getattr(v, "name", ""))
def test_probes_and_ports(path: Path, workload: Doc) -> None:
    container = pod_spec(workload)["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == OPS_PORT
    expected = {"metrics"} | ({"webhook"} if workload["kind"] == "Deployment" else set())
    assert set(ports) == expected
    if "webhook" in ports:
        assert ports["webhook"] == WEBHOOK_PORT
    for probe, path_ in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path_
        assert (ports[get["port"]] if isinstance(get["port"], str) else get["port"]) == OPS_PORT
        assert get.get("scheme", "HTTP") == "HTTP"
    env = env_of(container)
    assert env["HEALERT_OPS_LISTEN"]["value"].endswith(f":{OPS_PORT}")
    assert env["K8S_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    expected_args = ["serve"] if workload["kind"] == "Deployment" else ["tail"]
    assert container["args"] == expected_args


@pytest.mark.parametrize(("path", "workload"), workloads(), ids=lambda v: getattr(v, "name", ""))
def test_secrets_and_files_come_from_mounts(path: Path, workload: Doc) -> None:
    spec = pod_spec(workload)
    container = spec["containers"][0]
    env = env_of(container)
    assert "HEALERT_API_KEY" not in env, "use HEALERT_API_KEY_FILE with a mounted Secret"
    for item in env.values():
        assert "secretKeyRef" not in item.get("valueFrom", {}), item["name"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(volumes) == {m["name"] for m in mounts.values()}, "unused or missing volumes"
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
            assert PurePosixPath(env[name]["value"]).name in _secret_keys(
                volume["secret"]["secretName"]
            ), name
    rules = mount_for(env["RULES_PATH"]["value"])
    assert rules["configMap"]["name"] == "healert-rules"
    cm = find("common", "ConfigMap", "healert-rules")
    assert PurePosixPath(env["RULES_PATH"]["value"]).name in cm["data"]
    state = env["HEALERT_STATE_DIR"]["value"]
    assert state == "/var/lib/healert" and not mounts[state].get("readOnly", False)
    assert "/tmp" in mounts, "a writable /tmp for a read-only root filesystem"


def _secret_keys(secret_name: str) -> set[str]:
    for path in (MANIFESTS / "common" / "templates").glob("*.yaml"):
        secret = load_docs(path)[0]
        if secret["metadata"]["name"] == secret_name:
            return set(secret["stringData"])
    raise AssertionError(f"no template for Secret {secret_name}")


def test_webhook_deployment_shape() -> None:
    deployment = find("webhook", "Deployment")
    assert deployment["spec"]["replicas"] == 2
    spec = pod_spec(deployment)
    terms = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    container = spec["containers"][0]
    env = env_of(container)
    # A parsed body takes about ten times its size: the limit must hold the whole
    # in-flight body budget parsed, plus the process itself.
    budget = int(env.get("HEALERT_MAX_INFLIGHT_BYTES", env.get(
        "HEALERT_MAX_BODY_BYTES", {"value": str(64 * 1024 * 1024)}))["value"])
    units = {"Mi": 1024 ** 2, "Gi": 1024 ** 3}
    limit = container["resources"]["limits"]["memory"]
    assert int(limit[:-2]) * units[limit[-2:]] >= 10 * budget + 64 * 1024 ** 2
    assert env["HEALERT_LISTEN"]["value"] == f"0.0.0.0:{WEBHOOK_PORT}"
    assert env["HEALERT_WEBHOOK_PATH"]["value"] == "/audit"
    # Replicas share the backend's 60/min per-IP limit when they leave through one IP.
    rate = float(env["HEALERT_FORWARD_RATE"]["value"])
    assert rate * deployment["spec"]["replicas"] <= 60
    pdb = find("webhook", "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= spec_labels(deployment).items()


def spec_labels(workload: Doc) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def test_service_has_fixed_cluster_ip_and_selects_the_pods() -> None:
    service = find("webhook", "Service")
    deployment = find("webhook", "Deployment")
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", service["spec"]["clusterIP"])
    assert service["spec"]["selector"].items() <= spec_labels(deployment).items()
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"webhook": (WEBHOOK_PORT, "webhook"), "metrics": (OPS_PORT, "metrics")}


@pytest.mark.parametrize("folder", ["webhook", "daemonset"])
def test_network_policy_admits_the_listeners(folder: str) -> None:
    policy = find(folder, "NetworkPolicy")
    workload = next(d for d in objects_in(folder) if d["kind"] in WORKLOAD_KINDS)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= spec_labels(workload).items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    admitted = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    expected = {OPS_PORT, WEBHOOK_PORT} if folder == "webhook" else {OPS_PORT}
    assert admitted == expected
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert 53 in egress_ports and len(policy["spec"]["egress"]) == 2, "DNS and backend only"


def test_daemonset_reads_the_log_directory_read_only() -> None:
    daemonset = find("daemonset", "DaemonSet")
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
    state = next(m for m in container["volumeMounts"] if m["mountPath"] == "/var/lib/healert")
    assert volumes[state["name"]]["hostPath"] == {
        "path": "/var/lib/healert",
        "type": "DirectoryOrCreate",
    }
    writable_host = [
        m["mountPath"]
        for m in container["volumeMounts"]
        if "hostPath" in volumes[m["name"]] and not m.get("readOnly")
    ]
    assert writable_host == ["/var/lib/healert"]


def test_daemonset_runs_only_on_control_planes() -> None:
    spec = pod_spec(find("daemonset", "DaemonSet"))
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


def test_image_tag_matches_the_package_version() -> None:
    pyproject = REPO / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("pyproject.toml absent")
    version = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    for _, workload in workloads():
        image = pod_spec(workload)["containers"][0]["image"]
        assert image.rsplit(":", 1)[1] == version, image


# --------------------------------------------------------------------------- rules ConfigMap


def test_rules_configmap_matches_top_level_rules() -> None:
    rules = REPO / "rules.yaml"
    if not rules.exists():
        pytest.skip("top-level rules.yaml does not exist yet; ConfigMap holds a placeholder")
    cm = find("common", "ConfigMap", "healert-rules")
    assert cm["data"]["rules.yaml"] == rules.read_text(encoding="utf-8"), (
        "run manifests/sync-rules.sh"
    )


def test_sync_rules_round_trips_exactly(tmp_path: Path) -> None:
    samples = [
        "config:\n  a: 1\n\nrules:\n  - x\n",
        "  indented first\nx\n",
        "no newline",
        "many\n\n\n",
        "# c\n\ttab\n  trailing  \n",
    ]
    for index, text in enumerate(samples):
        source, out = tmp_path / f"r{index}.yaml", tmp_path / f"cm{index}.yaml"
        source.write_text(text, encoding="utf-8")
        script = MANIFESTS / "sync-rules.sh"
        subprocess.run(
            ["bash", str(script), "--rules", str(source), "--out", str(out)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        assert load_docs(out)[0]["data"]["rules.yaml"] == text
        check = subprocess.run(
            ["bash", str(script), "--rules", str(source), "--out", str(out), "--check"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert check.returncode == 0
        source.write_text(text + "changed\n", encoding="utf-8")
        check = subprocess.run(
            ["bash", str(script), "--rules", str(source), "--out", str(out), "--check"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert check.returncode == 1


# --------------------------------------------------------------------------- audit policy

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
STAGES = {"RequestReceived", "ResponseStarted", "ResponseComplete", "Panic"}


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
    return load_docs(APISERVER / "audit-policy.yaml")[0]


ALICE = ("alice", ("system:authenticated", "developers"))
ADMIN = ("kubernetes-admin", ("kubeadm:cluster-admins", "system:authenticated"))
ARGO_SA = (
    "system:serviceaccount:argocd:argocd-application-controller",
    ("system:serviceaccounts", "system:serviceaccounts:argocd", "system:authenticated"),
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
    assert "RequestReceived" in policy["omitStages"]
    assert set(policy["omitStages"]) <= STAGES
    assert policy["rules"], "an empty policy audits nothing"
    for rule in policy["rules"]:
        assert set(rule) <= RULE_KEYS, rule
        assert rule["level"] in LEVELS
        assert not (
            rule.get("nonResourceURLs") and (rule.get("resources") or rule.get("namespaces"))
        ), "invalid combination"
        assert set(rule.get("omitStages", [])) <= STAGES
        for gr in rule.get("resources", []):
            assert set(gr) <= {"group", "resources", "resourceNames"}, gr
    assert policy["rules"][-1] == {"level": "Metadata"}, "catch-all last"


# (verb, group, resource, subresource, least level a human must get)
HUMAN_CASES = [
    *[
        (v, "", "pods", sub, "Metadata")
        for sub in ("exec", "attach", "portforward")
        for v in ("get", "create")
    ],
    ("patch", "", "pods", "ephemeralcontainers", "RequestResponse"),
    ("update", "", "pods", "ephemeralcontainers", "RequestResponse"),
    ("get", "", "pods", "log", "Metadata"),
    *[(v, "", "secrets", "", "Metadata") for v in ("get", "list", "watch", "create", "delete")],
    *[
        (v, "apps", r, "", "RequestResponse")
        for v in WRITES
        for r in ("deployments", "statefulsets", "daemonsets", "replicasets")
    ],
    *[
        (v, "apps", r, "scale", "RequestResponse")
        for v in ("update", "patch")
        for r in ("deployments", "statefulsets", "replicasets")
    ],
    ("delete", "apps", "deployments", "", "Metadata"),
    *[(v, "batch", r, "", "RequestResponse") for v in WRITES for r in ("jobs", "cronjobs")],
    ("delete", "batch", "jobs", "", "Metadata"),
    *[(v, "", "pods", "", "RequestResponse") for v in WRITES],
    ("delete", "", "pods", "", "Metadata"),
    *[(v, "autoscaling", "horizontalpodautoscalers", "", "RequestResponse") for v in WRITES],
    *[(v, "", "configmaps", "", "Metadata") for v in (*WRITES, "delete")],
    ("create", "", "namespaces", "", "Metadata"),
    ("delete", "", "namespaces", "", "Metadata"),
    *[
        (v, "rbac.authorization.k8s.io", r, "", "Metadata")
        for v in (*WRITES, "delete")
        for r in ("roles", "rolebindings", "clusterroles", "clusterrolebindings")
    ],
    *[(v, "", "nodes", "", "Metadata") for v in ("patch", "update")],
    *[
        (v, "networking.k8s.io", r, "", "RequestResponse")
        for v in WRITES
        for r in ("ingresses", "networkpolicies")
    ],
    *[("delete", "networking.k8s.io", r, "", "Metadata") for r in ("ingresses", "networkpolicies")],
    ("delete", "", "persistentvolumes", "", "Metadata"),
]


@pytest.mark.parametrize("who", [ALICE, ADMIN], ids=lambda w: w[0])
@pytest.mark.parametrize(
    ("verb", "group", "resource", "subresource", "least"),
    HUMAN_CASES,
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_humans_are_audited_at_the_level_rules_need(
    policy: Doc,
    who: tuple[str, tuple[str, ...]],
    verb: str,
    group: str,
    resource: str,
    subresource: str,
    least: str,
) -> None:
    scoped = resource not in {
        "namespaces",
        "nodes",
        "persistentvolumes",
        "clusterroles",
        "clusterrolebindings",
    }
    req = Request(
        who[0], who[1], verb, resource, subresource, group, namespace="payments" if scoped else ""
    )
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


def test_interactive_access_is_seen_even_from_service_accounts(policy: Doc) -> None:
    for who in (ARGO_SA, KUBE_SYSTEM_SA):
        for sub in ("exec", "attach", "portforward"):
            assert audit_level(policy, Request(who[0], who[1], "get", "pods", sub)) == "Metadata"


@pytest.mark.parametrize(
    ("req", "why"),
    [
        (
            Request(
                *NODE, "update", "leases", group="coordination.k8s.io", namespace="kube-node-lease"
            ),
            "node heartbeat",
        ),
        (
            Request(
                *KUBE_SYSTEM_SA,
                "update",
                "leases",
                group="coordination.k8s.io",
                namespace="kube-system",
            ),
            "leader election",
        ),
        (Request(*KUBE_SYSTEM_SA, "create", "events"), "events"),
        (Request(*KUBE_SYSTEM_SA, "update", "endpoints"), "endpoints by a controller"),
        (
            Request(*KUBE_SYSTEM_SA, "patch", "endpointslices", group="discovery.k8s.io"),
            "endpointslices by a controller",
        ),
        (
            Request(*KUBE_SYSTEM_SA, "update", "deployments", "status", "apps"),
            "status by a controller",
        ),
        (
            Request(
                "system:kube-proxy",
                ("system:authenticated",),
                "watch",
                "endpointslices",
                group="discovery.k8s.io",
                namespace="",
            ),
            "kube-proxy watch",
        ),
        (Request(*ARGO_SA, "list", "deployments", group="apps"), "service account reads"),
        (Request(*NODE, "get", "secrets"), "kubelet reads"),
        (Request(*NODE, "patch", "pods", "status"), "kubelet status"),
        (Request(*ALICE, "get", path="/healthz"), "health check"),
        (Request(*ALICE, "get", path="/apis/apps/v1"), "discovery"),
    ],
)
def test_noise_is_not_audited(policy: Doc, req: Request, why: str) -> None:
    assert audit_level(policy, req) == "None", why


def test_automation_writes_carry_no_bodies(policy: Doc) -> None:
    req = Request(*ARGO_SA, "patch", "deployments", group="apps")
    assert audit_level(policy, req) == "Metadata"


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


# --------------------------------------------------------------------------- gitops-drift

# The workload kinds a person's update or patch of which gitops-drift judges by the
# object's GitOps ownership (Argo CD's tracking annotation, Flux's labels, or the
# argocd-controller / kustomize-controller / helm-controller field managers).
GITOPS_WORKLOADS = [
    ("", "pods"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("apps", "replicasets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
]


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


@pytest.mark.parametrize("who", [ALICE, ADMIN], ids=lambda w: w[0])
@pytest.mark.parametrize("verb", ["update", "patch"])
@pytest.mark.parametrize(("group", "resource"), GITOPS_WORKLOADS,
                         ids=lambda v: v or "core")
def test_gitops_drift_sees_the_whole_owned_object(
    policy: Doc, who: tuple[str, tuple[str, ...]], verb: str, group: str, resource: str
) -> None:
    """A patch's requestObject is only the patch: the owned object is in responseObject,
    with its managedFields (the GitOps field managers) kept."""
    req = Request(who[0], who[1], verb, resource, group=group, namespace="payments")
    assert audit_level(policy, req) == "RequestResponse", req
    assert keeps_managed_fields(policy, req), f"{req}: managedFields omitted"


def test_managed_fields_are_kept_only_where_gitops_drift_needs_them(policy: Doc) -> None:
    assert policy["omitManagedFields"] is True, "the policy-wide default stays lean"
    lean = [
        Request(*ALICE, "create", "deployments", group="apps"),
        Request(*ALICE, "patch", "deployments", "scale", "apps"),
        Request(*ALICE, "patch", "pods", "ephemeralcontainers"),
        Request(*ALICE, "patch", "services"),
        Request(*ALICE, "patch", "ingresses", group="networking.k8s.io"),
    ]
    for req in lean:
        assert audit_level(policy, req) == "RequestResponse", req
        assert not keeps_managed_fields(policy, req), req
    # Automation (Argo CD and Flux themselves, controllers) stays without bodies.
    for who in (ARGO_SA, KUBE_SYSTEM_SA, NODE):
        for group, resource in GITOPS_WORKLOADS:
            req = Request(*who, "patch", resource, group=group)
            assert audit_level(policy, req) == "Metadata", req


def test_secrets_never_gain_bodies_or_managed_fields(policy: Doc) -> None:
    for who in EVERYONE:
        for verb in ("update", "patch"):
            req = Request(who[0], who[1], verb, "secrets")
            assert audit_level(policy, req) in ("None", "Metadata"), req


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


@pytest.mark.parametrize("form", ["mtls", "token"])
def test_webhook_kubeconfigs_reach_the_service(form: str) -> None:
    config = load_docs(APISERVER / f"audit-webhook-kubeconfig-{form}.yaml")[0]
    assert (config["apiVersion"], config["kind"]) == ("v1", "Config")
    contexts = {c["name"]: c["context"] for c in config["contexts"]}
    context = contexts[config["current-context"]]
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    url = urlsplit(cluster["server"])
    service = find("webhook", "Service")
    assert url.scheme == "https"
    assert url.hostname == service["spec"]["clusterIP"], "the apiserver cannot resolve DNS"
    assert url.port == WEBHOOK_PORT and url.path == "/audit"
    assert cluster["tls-server-name"] == "healert-webhook.healert-system.svc"
    assert cluster["certificate-authority"].startswith("/etc/kubernetes/healert/")
    if form == "mtls":
        assert set(user) == {"client-certificate", "client-key"}
        deployment_env = env_of(pod_spec(find("webhook", "Deployment"))["containers"][0])
        assert "HEALERT_TLS_CLIENT_CA" in deployment_env
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
    daemonset = pod_spec(find("daemonset", "DaemonSet"))["containers"][0]
    assert kubeadm["audit-log-path"] == env_value(daemonset, "AUDIT_LOG_PATH")
    mounted = {v["hostPath"] for v in cluster_config["apiServer"]["extraVolumes"]}
    for flag in ("audit-policy-file", "audit-webhook-config-file", "audit-log-path"):
        assert str(PurePosixPath(kubeadm[flag]).parent) in mounted, flag
