"""The Helm chart charts/healert-webhook: lint, render and validate every mode.

Each value set (the chart's ci/*.yaml plus the defaults of each mode) is linted with
`helm lint --strict`, rendered with `helm template`, piped through `kubernetes-validate`
(strict, offline schemas) and put through the same workload checks as the plain
manifests (tests/test_manifests.py). The plain manifests are compared object by object
with the chart rendered for each mode, so the two never drift.

helm comes from $HELM or PATH (.ci/build-helm.sh builds it in CI). Without it the tests
skip, unless HEALERT_REQUIRE_HELM=1 (as in CI), when they fail.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import test_manifests as plain
import yaml
from test_manifests import Doc, check_workload, mode_of, pod_spec

from support.paths import ROOT

CHART = ROOT / "charts" / "healert-webhook"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "healert-webhook"
NAMESPACE = "healert-system"
HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/instance",
                    "app.kubernetes.io/managed-by", "app.kubernetes.io/version"}
# Objects whose plain names predate the chart: the rules ConfigMap and the tail
# workload keep their names so that re-applying the manifests updates them in place.
PLAIN_NAMES = {f"{RELEASE}-rules": "healert-rules", f"{RELEASE}-audit-tail": "healert-audit-tail",
               f"{RELEASE}-selfsigned": "healert-selfsigned",
               f"{RELEASE}-apiserver-client": "healert-apiserver-client"}
# The backend URL and monitoring objects the plain manifests ship with.
PLAIN_VALUES: dict[str, Any] = {
    "backend": {"url": "http://healert-backend.healert.svc.cluster.local:8000"},
    "prometheusRule": {"enabled": True},
    "dashboard": {"enabled": True},
}
# Secrets whose keys the chart must match: the templates of the plain manifests.
SECRET_KEYS = plain.template_secret_keys()


# --------------------------------------------------------------------------- helm


def _helm_binary() -> str | None:
    given = os.environ.get("HELM")
    if given:
        return given if os.access(given, os.X_OK) else None
    return shutil.which("helm")


@pytest.fixture(scope="module")
def helm() -> str:
    binary = _helm_binary()
    if binary is None:
        reason = ("helm not found: set HELM to a helm v3 binary or put helm on PATH "
                  "(.ci/build-helm.sh builds one from the Go module proxy)")
        if os.environ.get("HEALERT_REQUIRE_HELM") == "1":
            pytest.fail(f"HEALERT_REQUIRE_HELM=1 but {reason}")
        pytest.skip(reason)
    version = subprocess.run([binary, "version", "--template", "{{.Version}}"],
                             capture_output=True, text=True, timeout=30, check=True)
    assert version.stdout.startswith("v3."), version.stdout
    return binary


def run_helm(helm: str, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([helm, *map(str, args)], capture_output=True, text=True,
                            timeout=120, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def values_file(tmp_path: Path, values: dict[str, Any], name: str = "values.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


_RENDERED: dict[tuple[str, ...], str] = {}


def template(helm: str, *value_files: Path, release: str = RELEASE,
             namespace: str = NAMESPACE) -> str:
    """`helm template` output (cached per value set: the files never change in a run)."""
    key = (release, namespace, *(f.read_text(encoding="utf-8") for f in value_files))
    if key not in _RENDERED:
        args: list[str | Path] = ["template", release, CHART, "--namespace", namespace]
        for file in value_files:
            args += ["-f", file]
        _RENDERED[key] = run_helm(helm, *args).stdout
    return _RENDERED[key]


def docs_of(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(helm: str, tmp_path: Path, values: dict[str, Any], **kwargs: str) -> list[Doc]:
    return docs_of(template(helm, values_file(tmp_path, values), **kwargs))


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str) -> Doc:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def the_workload(docs: list[Doc]) -> Doc:
    found = [d for d in docs if d["kind"] in plain.WORKLOAD_KINDS]
    assert len(found) == 1, [d["kind"] for d in found]
    return found[0]


# --------------------------------------------------------------------------- value sets

VALUE_SETS = [pytest.param({"mode": m}, id=f"defaults-{m}") for m in plain.MODES] + [
    pytest.param(yaml.safe_load(p.read_text(encoding="utf-8")), id=p.stem) for p in CI_VALUES
]


def test_the_ci_value_sets_cover_every_mode() -> None:
    modes = {yaml.safe_load(p.read_text(encoding="utf-8"))["mode"] for p in CI_VALUES}
    assert modes == set(plain.MODES)


@pytest.mark.parametrize("values", VALUE_SETS)
def test_lint_is_clean(helm: str, tmp_path: Path, values: dict[str, Any]) -> None:
    result = run_helm(helm, "lint", "--strict", CHART, "-f", values_file(tmp_path, values),
                      check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


@pytest.mark.parametrize("values", VALUE_SETS)
def test_rendered_objects_pass_kubernetes_validate(
    helm: str, tmp_path: Path, values: dict[str, Any]
) -> None:
    """`helm template | kubernetes-validate --strict -` accepts every object."""
    text = template(helm, values_file(tmp_path, values))
    validator = Path(sys.executable).with_name("kubernetes-validate")
    command = [str(validator)] if validator.exists() else [sys.executable, "-m",
                                                           "kubernetes_validate"]
    result = subprocess.run([*command, "-k", plain.KUBE_VERSION, "--strict", "-"],
                            input=text, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    docs = docs_of(text)
    core = [d for d in docs if not d["apiVersion"].startswith(plain.CRD_GROUPS)]
    assert result.stdout.count(" passed for resource ") == len(core) > 0, result.stdout
    for doc in docs:
        if doc["apiVersion"].startswith(plain.CRD_GROUPS):
            assert isinstance(doc.get("spec"), dict), doc["kind"]
        if doc["kind"] in plain.CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], doc["metadata"]["name"]
        elif doc["kind"] != "ConfigMap" or "grafana_dashboard" not in doc["metadata"]["labels"]:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


@pytest.mark.parametrize("values", VALUE_SETS)
def test_rendered_workloads_pass_the_manifest_checks(
    helm: str, tmp_path: Path, values: dict[str, Any]
) -> None:
    docs = render(helm, tmp_path, values)
    workload = the_workload(docs)
    assert mode_of(workload) == values["mode"]
    keys = dict(SECRET_KEYS)
    for secret in by_kind(docs, "Secret"):
        keys[secret["metadata"]["name"]] = set(secret.get("data", {}))
    where = check_workload(workload, keys)
    assert where.startswith("pvc:" if values["mode"] == "service" else "hostPath:")
    assert not by_kind(docs, "Deployment")
    check_references(docs, workload, values)


def check_references(docs: list[Doc], workload: Doc, values: dict[str, Any]) -> None:
    """Every name the workload uses exists (or is the existing object the values name),
    and every selector selects its pods."""
    spec = pod_spec(workload)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    account = values.get("serviceAccount", {})
    if account.get("create", True):
        assert ("ServiceAccount", spec["serviceAccountName"]) in names
    else:
        assert spec["serviceAccountName"] == account["name"]
        assert not by_kind(docs, "ServiceAccount")
    volumes = {v["name"]: v for v in spec["volumes"]}
    rules = volumes["rules"]["configMap"]["name"]
    existing = values.get("rules", {}).get("existingConfigMap")
    assert rules == existing if existing else ("ConfigMap", rules) in names
    secrets = [v["secret"]["secretName"] for v in volumes.values() if "secret" in v]
    for secret in secrets:
        created = ("Secret", secret) in names
        assert created or secret in _existing_secret_names(values), secret
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for doc in docs:
        selector = _selector_of(doc)
        if selector is not None:
            assert selector.items() <= labels.items(), f"{doc['kind']} selects nothing"
    for monitor in by_kind(docs, "ServiceMonitor") + by_kind(docs, "PodMonitor"):
        target = labels if monitor["kind"] == "PodMonitor" else one(docs, "Service")[
            "metadata"]["labels"]
        assert monitor["spec"]["jobLabel"] in target
    if workload["kind"] == "StatefulSet":
        assert ("Service", workload["spec"]["serviceName"]) in names


def _selector_of(doc: Doc) -> dict[str, str] | None:
    spec = doc.get("spec", {})
    if doc["kind"] in {"Service"}:
        return dict(spec["selector"])
    if doc["kind"] in {"PodDisruptionBudget", "PodMonitor"}:
        return dict(spec["selector"]["matchLabels"])
    if doc["kind"] == "NetworkPolicy":
        return dict(spec["podSelector"]["matchLabels"])
    return None


def _existing_secret_names(values: dict[str, Any]) -> set[str]:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    names = set()
    for source in (defaults, values):
        backend = source.get("backend", {}).get("apiKey", {})
        webhook = source.get("webhook", {})
        names |= {backend.get("existingSecret"), webhook.get("tls", {}).get("secretName"),
                  webhook.get("token", {}).get("secretName")}
    return {n for n in names if n}


# --------------------------------------------------------------------------- the plain manifests


def normalise(value: Any) -> Any:
    """Drop Helm's bookkeeping labels and map chart names to the plain manifests' ones."""
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items() if k not in HELM_ONLY_LABELS}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, str):
        return PLAIN_NAMES.get(value, value)
    return value


def plain_objects(mode: str) -> list[Doc]:
    """What the plain manifests apply for one mode, plus the monitoring that fits it."""
    docs = [d for d in plain.objects_in("common") if d["kind"] != "Namespace"]
    docs += plain.objects_in(mode)
    component = {v: k for k, v in plain.MODE_OF_COMPONENT.items()}[mode]
    for doc in plain.objects_in("monitoring"):
        if doc["apiVersion"].startswith("cert-manager.io/"):
            continue  # the chart leaves certificates to certs/gen-certs.sh or cert-manager
        if doc["kind"] == "ServiceMonitor" and mode != "service":
            continue
        if doc["kind"] == "PodMonitor" and (
                doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
                != component or mode == "service"):
            continue
        docs.append(doc)
    return docs


@pytest.mark.parametrize("mode", plain.MODES)
def test_plain_manifests_are_the_chart_rendered(helm: str, tmp_path: Path, mode: str) -> None:
    monitor = "serviceMonitor" if mode == "service" else "podMonitor"
    values = {**PLAIN_VALUES, "mode": mode, monitor: {"enabled": True}}
    chart = {(d["kind"], d["metadata"]["name"]): d
             for d in map(normalise, render(helm, tmp_path, values))}
    shipped = {(d["kind"], d["metadata"]["name"]): d for d in plain_objects(mode)}
    assert set(chart) == set(shipped)
    kinds = {kind for kind, _ in shipped}
    assert {"ServiceAccount", "ConfigMap", plain.KIND_OF_MODE[mode], "PrometheusRule"} <= kinds
    for key, doc in shipped.items():
        assert chart[key] == doc, f"{key} differs between the chart and manifests/"


def test_normalise_keeps_real_differences() -> None:
    """The comparison above is not blind: a changed value still differs."""
    statefulset = plain.workload_of("service")
    changed = yaml.safe_load(yaml.safe_dump(statefulset))
    pod_spec(changed)["containers"][0]["resources"]["limits"]["memory"] = "512Mi"
    changed["metadata"]["labels"]["app.kubernetes.io/instance"] = "x"
    assert normalise(changed) != statefulset
    changed = yaml.safe_load(yaml.safe_dump(statefulset))
    changed["metadata"]["labels"]["helm.sh/chart"] = "healert-webhook-0.2.0"
    assert normalise(changed) == statefulset


# --------------------------------------------------------------------------- values


def test_image_tag_defaults_to_app_version(helm: str, tmp_path: Path) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"]["version"]
    assert chart["appVersion"] == version
    for mode in plain.MODES:
        spec = pod_spec(the_workload(render(helm, tmp_path, {"mode": mode})))
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["image"] == f"ghcr.io/healert-io/healert-webhook:{version}"
    digest = "sha256:" + "ab" * 32
    spec = pod_spec(the_workload(render(helm, tmp_path, {"image": {"digest": digest,
                                                                   "tag": "9.9"}})))
    assert spec["containers"][0]["image"] == f"ghcr.io/healert-io/healert-webhook:9.9@{digest}"


def test_rules_from_a_value_or_an_existing_configmap(helm: str, tmp_path: Path) -> None:
    text = "rules:\n  - name: only-one\n"
    docs = render(helm, tmp_path, {"rules": {"content": text}})
    assert one(docs, "ConfigMap")["data"]["rules.yaml"] == text
    docs = render(helm, tmp_path, {"rules": {"existingConfigMap": "mine"}})
    assert not by_kind(docs, "ConfigMap")
    rules = next(v for v in pod_spec(the_workload(docs))["volumes"] if v["name"] == "rules")
    assert rules["configMap"]["name"] == "mine"
    shipped = one(render(helm, tmp_path, {}), "ConfigMap")["data"]["rules.yaml"]
    assert shipped == (ROOT / "rules.yaml").read_text(encoding="utf-8")


def test_backend_key_as_value_becomes_a_secret_file(helm: str, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, {"backend": {"url": "https://b.example",
                                               "apiKey": {"value": "s3cret-key"}}})
    secret = one(docs, "Secret")
    assert base64.b64decode(secret["data"]["api-key"]).decode() == "s3cret-key"
    workload = the_workload(docs)
    rendered = yaml.safe_dump(workload)
    assert "s3cret-key" not in rendered and base64.b64encode(b"s3cret-key").decode() \
        not in rendered
    env = plain.env_of(pod_spec(workload)["containers"][0])
    assert env["HEALERT_API_KEY_FILE"]["value"].endswith("/api-key")
    # No key at all: nothing mounted, nothing referenced.
    docs = render(helm, tmp_path, {"backend": {"apiKey": {"existingSecret": ""}}})
    env = plain.env_of(pod_spec(the_workload(docs))["containers"][0])
    assert "HEALERT_API_KEY_FILE" not in env and not by_kind(docs, "Secret")
    assert "HEALERT_BACKEND_URL" not in env, "no URL: events stay in the outbox"


@pytest.mark.parametrize(("values", "rate"), [
    ({"mode": "node-local"}, "60"),
    ({"mode": "tail"}, "60"),
    ({"mode": "service"}, "30"),
    ({"mode": "service", "service": {"replicas": 3}}, "20"),
    ({"mode": "service", "backend": {"forwardRate": "12"}}, "12"),
])
def test_forward_rate_shares_the_backend_budget(
    helm: str, tmp_path: Path, values: dict[str, Any], rate: str
) -> None:
    env = plain.env_of(pod_spec(the_workload(render(helm, tmp_path, values)))["containers"][0])
    assert env["HEALERT_FORWARD_RATE"]["value"] == rate


def test_service_mode_with_tokens_and_a_node_port(helm: str, tmp_path: Path) -> None:
    values = yaml.safe_load((CHART / "ci" / "service-token-nodeport-values.yaml").read_text())
    docs = render(helm, tmp_path, values)
    workload = the_workload(docs)
    spec = pod_spec(workload)
    env = plain.env_of(spec["containers"][0])
    assert env["HEALERT_WEBHOOK_TOKEN_FILE"]["value"].endswith("/webhook-token/tokens")
    assert "HEALERT_TLS_CLIENT_CA" not in env
    token = next(v for v in spec["volumes"] if v["name"] == "webhook-token")
    assert token["secret"]["optional"] is False, "token mode needs the Secret"
    service = one(docs, "Service")
    assert service["spec"]["type"] == "NodePort" and "clusterIP" not in service["spec"]
    assert service["spec"]["ports"][0]["nodePort"] == 30843
    claim = workload["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "longhorn"
    assert claim["resources"]["requests"]["storage"] == "2Gi"
    assert spec["tolerations"][0]["key"] == "dedicated"


def test_node_local_ports_follow_the_values(helm: str, tmp_path: Path) -> None:
    values = yaml.safe_load((CHART / "ci" / "node-local-custom-values.yaml").read_text())
    docs = render(helm, tmp_path, values)
    spec = pod_spec(the_workload(docs))
    env = plain.env_of(spec["containers"][0])
    assert env["HEALERT_LISTEN"]["value"] == "127.0.0.1:18643"
    assert env["HEALERT_OPS_LISTEN"]["value"] == "$(HOST_IP):19190"
    assert env["HEALERT_TLS_CLIENT_NAMES"]["value"] == "kube-apiserver-audit,kube-apiserver-audit-2"
    assert env["HEALERT_OUTBOX_MAX_EVENTS"]["value"] == "200000"
    assert spec["priorityClassName"] == "system-node-critical"
    state = next(v for v in spec["volumes"] if v["name"] == "state")
    assert state["hostPath"]["path"] == "/srv/healert/outbox"


@pytest.mark.parametrize(("values", "message"), [
    ({"mode": "bogus"}, "mode"),
    ({"mode": "node-local", "webhook": {"auth": "token"}}, "requires webhook.auth=mtls"),
    ({"mode": "tail", "serviceMonitor": {"enabled": True}}, "use podMonitor"),
    ({"image": {"digest": "latest"}}, "digest"),
    ({"service": {"persistence": {"size": ""}}, "mode": "service"}, "size"),
])
def test_invalid_values_are_refused(
    helm: str, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    result = run_helm(helm, "template", RELEASE, CHART, "-f", values_file(tmp_path, values),
                      check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# --------------------------------------------------------------------------- monitoring


def test_monitors_take_labels_and_intervals(helm: str, tmp_path: Path) -> None:
    values = yaml.safe_load((CHART / "ci" / "node-local-values.yaml").read_text())
    monitor = one(render(helm, tmp_path, values), "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["podMetricsEndpoints"][0]["interval"] == "30s"
    values = yaml.safe_load((CHART / "ci" / "service-values.yaml").read_text())
    monitor = one(render(helm, tmp_path, values), "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    values = yaml.safe_load((CHART / "ci" / "node-local-custom-values.yaml").read_text())
    endpoint = one(render(helm, tmp_path, values), "PodMonitor")["spec"][
        "podMetricsEndpoints"][0]
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("15s", "10s")


def _alerts(rule: Doc) -> dict[str, Doc]:
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def test_prometheus_rule_filters_labels_and_follows_the_job(helm: str, tmp_path: Path) -> None:
    shipped = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    every = {r["alert"] for g in shipped["groups"] for r in g["rules"]}
    default = _alerts(one(render(helm, tmp_path, {"prometheusRule": {"enabled": True}}),
                          "PrometheusRule"))
    assert set(default) == every
    values = yaml.safe_load((CHART / "ci" / "node-local-custom-values.yaml").read_text())
    docs = render(helm, tmp_path, values)
    custom = _alerts(one(docs, "PrometheusRule"))
    assert set(custom) == every - {"HealertApiserverAuditWebhookErrors", "HealertTailStalled"}
    for alert in custom.values():
        assert alert["labels"]["team"] == "platform" and alert["labels"]["severity"]
    # nameOverride renames the job (the pods' app.kubernetes.io/name label).
    job = the_workload(docs)["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
    assert job == "audit-agent"
    assert f'up{{job="{job}"}}' in custom["HealertTargetDown"]["expr"]
    assert "healert-webhook" not in json.dumps([a["expr"] for a in custom.values()])


def test_dashboard_configmap_for_the_grafana_sidecar(helm: str, tmp_path: Path) -> None:
    values = yaml.safe_load((CHART / "ci" / "node-local-custom-values.yaml").read_text())
    configmap = next(d for d in render(helm, tmp_path, values)
                     if d["metadata"]["name"].endswith("-dashboard"))
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Platform"}
    shipped = json.loads((CHART / "dashboards" / "healert-webhook.json").read_text())
    assert json.loads(configmap["data"]["healert-webhook.json"]) == shipped


# --------------------------------------------------------------------------- NOTES.txt


def render_notes(helm: str, tmp_path: Path, values: dict[str, Any]) -> str:
    """NOTES.txt as `helm install` prints it. helm template leaves NOTES.txt out, so a
    copy of the chart renders it through tpl inside a plain template."""
    copy = tmp_path / "chart"
    if not copy.exists():
        shutil.copytree(CHART, copy)
        (copy / "NOTES.copy").write_text((CHART / "templates" / "NOTES.txt").read_text())
        (copy / "templates" / "zz-notes.yaml").write_text(
            'notes: |\n{{ tpl (.Files.Get "NOTES.copy") . | indent 2 }}\n')
    result = run_helm(helm, "template", RELEASE, copy, "-n", NAMESPACE, "-f",
                      values_file(tmp_path, values, "notes-values.yaml"),
                      "--show-only", "templates/zz-notes.yaml")
    return str(yaml.safe_load(result.stdout)["notes"])


@pytest.mark.parametrize(("mode", "flags"), [
    ("node-local", ["--audit-webhook-config-file=", "--audit-webhook-mode=batch",
                    "https://127.0.0.1:18443/audit", "kubeconfig-node-local.yaml"]),
    ("service", ["--audit-webhook-config-file=", "https://10.96.0.50:8443/audit",
                 "kubeconfig-service-mtls.yaml"]),
    ("tail", ["--audit-log-path=/var/log/kubernetes/audit/audit.log"]),
])
def test_notes_name_the_apiserver_flags(
    helm: str, tmp_path: Path, mode: str, flags: list[str]
) -> None:
    notes = render_notes(helm, tmp_path, {"mode": mode})
    for flag in ["--audit-policy-file=/etc/kubernetes/healert/audit-policy.yaml", *flags]:
        assert flag in notes, flag
    assert "kubeadm" in notes and "k3s" in notes and "kube-apiserver-arg" in notes
    assert "backend.url is empty" in notes
    assert ("--audit-webhook-config-file" in notes) == (mode != "tail")
    notes = render_notes(helm, tmp_path, {"mode": mode, "backend": {"url": "https://b"}})
    assert "backend.url is empty" not in notes


def test_notes_say_where_the_audit_policy_comes_from(helm: str, tmp_path: Path) -> None:
    notes = render_notes(helm, tmp_path, {})
    assert "audit-policy.yaml: the chart's files/audit-policy.yaml" in notes
    assert "healert-webhook policy --check FILE" in notes
    assert "healert-webhook policy --rules" not in notes, "the shipped policy fits"
    own = render_notes(helm, tmp_path, {"rules": {"content": "rules: []\n"}})
    assert "`healert-webhook policy --rules rules.yaml`" in own
    blind = render_notes(helm, tmp_path, {"clusterView": {"enabled": False}})
    assert "`healert-webhook policy --rules rules.yaml --cluster-view off`" in blind
    given = render_notes(helm, tmp_path, {"rules": {"content": "rules: []\n"},
                                          "auditPolicy": {"content": "x", "configMap": True}})
    assert "audit-policy.yaml: auditPolicy.content" in given
    assert "healert-webhook policy --rules" not in given
    assert f"get configmap {RELEASE}-audit-policy" in given


def test_the_audit_policy_configmap_is_opt_in(helm: str, tmp_path: Path) -> None:
    name = f"{RELEASE}-audit-policy"
    assert all(d["metadata"]["name"] != name for d in render(helm, tmp_path, {}))
    docs = render(helm, tmp_path, {"auditPolicy": {"configMap": True}})
    (configmap,) = [d for d in docs if d["metadata"]["name"] == name]
    shipped = (CHART / "files" / "audit-policy.yaml").read_text(encoding="utf-8")
    assert configmap["data"]["audit-policy.yaml"] == shipped
    assert shipped == (plain.APISERVER / "audit-policy.yaml").read_text(encoding="utf-8")
    own = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Metadata\n"
    docs = render(helm, tmp_path, {"auditPolicy": {"configMap": True, "content": own}})
    (configmap,) = [d for d in docs if d["metadata"]["name"] == name]
    assert configmap["data"]["audit-policy.yaml"] == own


@pytest.mark.parametrize("mode", plain.MODES)
def test_the_cluster_view_rbac_follows_its_value(helm: str, tmp_path: Path, mode: str) -> None:
    docs = render(helm, tmp_path, {"mode": mode})
    plain.check_cluster_view_rbac(docs, one(docs, "ServiceAccount")["metadata"]["name"],
                                  NAMESPACE)
    assert plain.check_api_token(the_workload(docs))
    off = render(helm, tmp_path, {"mode": mode, "clusterView": {"enabled": False}},
                 release="no-view")
    assert not by_kind(off, "ClusterRole") and not by_kind(off, "ClusterRoleBinding")
    assert not plain.check_api_token(the_workload(off))
    for policy in by_kind(off, "NetworkPolicy"):
        ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
        assert 6443 not in ports


def test_owners_of_other_kinds_get_a_get_rule(helm: str, tmp_path: Path) -> None:
    owners = [{"apiGroups": ["argoproj.io"], "resources": ["rollouts"]}]
    docs = render(helm, tmp_path, {"clusterView": {"ownerResources": owners}})
    role = one(docs, "ClusterRole")
    assert role["rules"][-1] == {"apiGroups": ["argoproj.io"], "resources": ["rollouts"],
                                 "verbs": ["get"]}
    plain.check_cluster_view_rbac(docs, RELEASE, NAMESPACE)
    bad = values_file(tmp_path, {"clusterView": {"ownerResources": [{"apiGroups": ["x"]}]}},
                      "bad.yaml")
    assert run_helm(helm, "template", RELEASE, CHART, "-f", bad, check=False).returncode != 0


# --------------------------------------------------------------------------- the values schema


@pytest.mark.parametrize(("values", "refused"), [
    ({"podmonitor": {"enabled": True}}, "'podmonitor'"),
    ({"backend": {"URL": "https://healert.example.com"}}, "'URL'"),
    ({"nodeLocal": {"resources": {"limit": {"memory": "2Gi"}}}}, "'limit'"),
    ({"networkPolicy": {"backendPort": [{"port": 443}]}}, "'backendPort'"),
    ({"probes": {"readiness": {"httpGet": {"path": "/"}}}}, "'httpGet'"),
    ({"webhook": {"tls": {"certManager": {"enable": True}}}}, "'enable'"),
    ({"updateStrategy": {"rollingUpdate": {"maxsurge": 2}}}, "'maxsurge'"),
])
def test_unknown_keys_are_refused_at_every_level(
    helm: str, tmp_path: Path, values: dict[str, Any], refused: str
) -> None:
    """A misspelt value is an error naming it, not a setting silently ignored."""
    result = run_helm(helm, "template", RELEASE, CHART, "-f", values_file(tmp_path, values),
                      check=False)
    assert result.returncode != 0
    assert f"additional properties {refused} not allowed" in result.stderr, result.stderr


def _object_schemas(schema: dict[str, Any], where: str = "") -> list[tuple[str, Any]]:
    found = [(where or "(root)", schema)] if "properties" in schema else []
    for name, sub in schema.get("properties", {}).items():
        found += _object_schemas(sub, f"{where}.{name}")
    items = schema.get("items")
    if isinstance(items, dict):
        found += _object_schemas(items, f"{where}[]")
    return found


def test_every_level_of_the_schema_is_closed_and_covers_the_defaults() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    levels = _object_schemas(schema)
    assert len(levels) > 30
    for where, level in levels:
        assert level.get("additionalProperties") is False, f"{where} accepts unknown keys"

    def covered(values: Any, level: dict[str, Any], where: str) -> None:
        if not isinstance(values, dict) or "properties" not in level:
            return
        for key, value in values.items():
            assert key in level["properties"], f"{where}.{key} is not in the schema"
            covered(value, level["properties"][key], f"{where}.{key}")

    covered(yaml.safe_load((CHART / "values.yaml").read_text()), schema, "")


# --------------------------------------------------------------------------- egress to the backend


def _backend_rule(docs: list[Doc]) -> Doc | None:
    """The NetworkPolicy's egress rule to the backend: the one that is neither DNS nor
    the Kubernetes API."""
    rules = one(docs, "NetworkPolicy")["spec"]["egress"]
    others = [r for r in rules if {p["port"] for p in r.get("ports", [])} not in ({53}, {6443})]
    assert len(others) <= 1, others
    return others[0] if others else None


@pytest.mark.parametrize(("url", "to", "port"), [
    ("http://healert-backend.healert.svc.cluster.local:8000",
     [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "healert"}}}], 8000),
    ("https://healert-backend.platform.svc",
     [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "platform"}}}], 443),
    ("http://healert-backend:8080",
     [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}}], 8080),
    ("https://healert.example.com", None, 443),
    ("https://user:secret@Healert.Example.com:8443/api", None, 8443),
    ("http://healert.example.com", None, 80),
    ("http://203.0.113.10:9000", [{"ipBlock": {"cidr": "203.0.113.10/32"}}], 9000),
    ("https://[2001:db8::10]", [{"ipBlock": {"cidr": "2001:db8::10/128"}}], 443),
])
@pytest.mark.parametrize("mode", ["service", "tail"])
def test_egress_to_the_backend_follows_its_url(
    helm: str, tmp_path: Path, mode: str, url: str, to: list[Doc] | None, port: int
) -> None:
    """An in-cluster Service name allows its namespace, an address that address, any
    other host every address (a NetworkPolicy cannot name a host), on the URL's port."""
    rule = _backend_rule(render(helm, tmp_path, {"mode": mode, "backend": {"url": url}}))
    assert rule is not None
    assert rule.get("to") == to
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]


def test_egress_to_the_backend_as_given_or_none_without_one(helm: str, tmp_path: Path) -> None:
    given = {"backendTo": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
             "backendPorts": [{"protocol": "TCP", "port": 3128}]}
    docs = render(helm, tmp_path, {"mode": "tail", "networkPolicy": given,
                                   "backend": {"url": "https://healert.example.com"}})
    assert _backend_rule(docs) == {"to": given["backendTo"], "ports": given["backendPorts"]}
    docs = render(helm, tmp_path, {"mode": "tail", "networkPolicy": {
        "backendPorts": [{"protocol": "TCP", "port": 8443}]},
        "backend": {"url": "http://healert-backend.healert.svc:80"}})
    assert _backend_rule(docs) == {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                      "healert"}}}],
        "ports": [{"protocol": "TCP", "port": 8443}]}, "the Service's target port"
    assert _backend_rule(render(helm, tmp_path, {"mode": "tail"})) is None, "no backend"


# --------------------------------------------------------------------------- overrides


def test_the_service_account_can_be_named_annotated_or_brought(
    helm: str, tmp_path: Path
) -> None:
    docs = render(helm, tmp_path, {"serviceAccount": {
        "name": "audit", "annotations": {"iam.example.com/role": "audit"}}})
    account = one(docs, "ServiceAccount")
    assert account["metadata"]["name"] == "audit"
    assert account["metadata"]["annotations"] == {"iam.example.com/role": "audit"}
    assert account["automountServiceAccountToken"] is False
    assert pod_spec(the_workload(docs))["serviceAccountName"] == "audit"
    plain.check_cluster_view_rbac(docs, "audit", NAMESPACE)
    docs = render(helm, tmp_path, {"serviceAccount": {"create": False, "name": "platform"}})
    assert not by_kind(docs, "ServiceAccount")
    assert pod_spec(the_workload(docs))["serviceAccountName"] == "platform"
    plain.check_cluster_view_rbac(docs, "platform", NAMESPACE)
    bad = values_file(tmp_path, {"serviceAccount": {"create": False}}, "bad.yaml")
    result = run_helm(helm, "template", RELEASE, CHART, "-f", bad, check=False)
    assert result.returncode != 0 and "serviceAccount.name is required" in result.stderr


@pytest.mark.parametrize("mode", plain.MODES)
def test_security_contexts_take_more_fields_and_keep_the_secure_defaults(
    helm: str, tmp_path: Path, mode: str
) -> None:
    values = {"mode": mode, "podSecurityContext": {"supplementalGroups": [4000]},
              "containerSecurityContext": {"seLinuxOptions": {"type": "container_t"}}}
    workload = the_workload(render(helm, tmp_path, values))
    spec = pod_spec(workload)
    assert spec["securityContext"]["supplementalGroups"] == [4000]
    assert spec["containers"][0]["securityContext"]["seLinuxOptions"] == {"type": "container_t"}
    plain.check_hardened(workload)
    default = pod_spec(the_workload(render(helm, tmp_path, {"mode": mode})))
    for key, value in default["containers"][0]["securityContext"].items():
        assert spec["containers"][0]["securityContext"][key] == value, key
    for key, value in default["securityContext"].items():
        assert spec["securityContext"][key] == value, key
    # An explicit choice wins over the default it names.
    spec = pod_spec(the_workload(render(helm, tmp_path, {
        "mode": mode, "containerSecurityContext": {"seccompProfile": {
            "type": "Localhost", "localhostProfile": "healert.json"}}})))
    assert spec["containers"][0]["securityContext"]["seccompProfile"]["type"] == "Localhost"


@pytest.mark.parametrize("mode", plain.MODES)
def test_extra_volumes_probe_timings_and_placement(
    helm: str, tmp_path: Path, mode: str
) -> None:
    values = {
        "mode": mode,
        "extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ca", "readOnly": True}],
        "probes": {"readiness": {"periodSeconds": 3, "initialDelaySeconds": 4},
                   "liveness": {"timeoutSeconds": 7}},
        "controlPlane": {"nodeSelector": {"audit.example.com/receiver": "true"},
                         "tolerations": [{"key": "dedicated", "operator": "Exists"}]},
    }
    spec = pod_spec(the_workload(render(helm, tmp_path, values)))
    container = spec["containers"][0]
    assert {"name": "ca", "configMap": {"name": "corporate-ca"}} in spec["volumes"]
    assert {"name": "ca", "mountPath": "/etc/ca", "readOnly": True} in container["volumeMounts"]
    ready, live = container["readinessProbe"], container["livenessProbe"]
    assert (ready["periodSeconds"], ready["initialDelaySeconds"], ready["timeoutSeconds"]) \
        == (3, 4, 2)
    assert ready["httpGet"]["path"] == "/readyz"
    assert (live["timeoutSeconds"], live["periodSeconds"]) == (7, 10)
    if mode == "service":
        return  # the StatefulSet has its own placement values (service.*)
    assert spec["nodeSelector"] == {"audit.example.com/receiver": "true"}
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    plain.check_control_plane_only(the_workload(render(helm, tmp_path, {"mode": mode})))


@pytest.mark.parametrize(("mode", "strategy", "ready"), [
    ("node-local", {"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}, 10),
    ("tail", {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}, None),
    ("service", {"type": "RollingUpdate"}, None),
])
def test_update_strategy_defaults_per_mode_and_overrides(
    helm: str, tmp_path: Path, mode: str, strategy: Doc, ready: int | None
) -> None:
    workload = the_workload(render(helm, tmp_path, {"mode": mode}))
    assert workload["spec"]["updateStrategy"] == strategy
    assert workload["spec"].get("minReadySeconds") == ready
    mine = {"type": "OnDelete"}
    workload = the_workload(render(helm, tmp_path, {"mode": mode, "updateStrategy": mine,
                                                    "minReadySeconds": 30}))
    assert workload["spec"]["updateStrategy"] == mine
    assert workload["spec"]["minReadySeconds"] == 30


def test_node_local_declares_no_host_port_so_the_surge_pod_fits(
    helm: str, tmp_path: Path
) -> None:
    """The API server makes every container port of a host-network pod a host port, and
    the scheduler and the kubelet refuse a second pod holding it on a node."""
    docs = render(helm, tmp_path, {"mode": "node-local", "podMonitor": {"enabled": True},
                                   "nodeLocal": {"opsPort": 19190}})
    workload = the_workload(docs)
    plain.check_surges(workload)
    endpoint = one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]
    plain.check_scrapes_undeclared_port(endpoint, workload)
    assert pod_spec(workload)["containers"][0]["readinessProbe"]["httpGet"]["port"] == 19190


# --------------------------------------------------------------------------- cert-manager


@pytest.mark.parametrize("mode", ["node-local", "service"])
def test_cert_manager_objects_are_the_bundle_and_opt_in(
    helm: str, tmp_path: Path, mode: str
) -> None:
    monitoring = {"podMonitor": {"enabled": mode != "service"},
                  "serviceMonitor": {"enabled": mode == "service"},
                  "prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}
    docs = render(helm, tmp_path, {"mode": mode, **monitoring})
    assert not [d for d in docs if d["apiVersion"].startswith("cert-manager.io/")]
    docs = render(helm, tmp_path, {"mode": mode, **monitoring,
                                   "webhook": {"tls": {"certManager": {"enabled": True}}}})
    chart = {(d["kind"], d["metadata"]["name"]): d for d in map(normalise, docs)
             if d["apiVersion"].startswith("cert-manager.io/")}
    bundle = {(d["kind"], d["metadata"]["name"]): d for d in plain.objects_in("cert-manager")}
    assert set(chart) == set(bundle)
    for key, shipped in bundle.items():
        mine = chart[key]
        if "ipAddresses" in shipped["spec"]:  # the bundle serves both modes
            assert set(mine["spec"].pop("ipAddresses")) <= set(shipped["spec"]["ipAddresses"])
            mine["spec"]["ipAddresses"] = shipped["spec"]["ipAddresses"]
        assert mine == shipped, key
    tail = render(helm, tmp_path, {"mode": "tail", "webhook": {"tls": {"certManager": {
        "enabled": True}}}}, release="tail-cm")
    assert not [d for d in tail if d["apiVersion"].startswith("cert-manager.io/")], \
        "the tail has no webhook"


def test_notes_say_how_the_apiserver_gets_the_cert_manager_ca(
    helm: str, tmp_path: Path
) -> None:
    notes = render_notes(helm, tmp_path, {"webhook": {"tls": {"certManager": {
        "enabled": True}}}})
    assert "healert-webhook-apiserver-client" in notes
    assert "ca.crt" in notes and "cert-manager" in notes
    assert "gen-certs.sh --out" not in notes
    assert "gen-certs.sh --out" in render_notes(helm, tmp_path, {})
