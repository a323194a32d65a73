"""Issue 26: the new rules, the `object` condition, the opt-out of config.ignore_namespaces,
a 404 that is no read, one refused exec that is one attempt, and the description tokens.

Entities are today's (no view of the cluster): the name rules and the carried object's
metadata. Each test names the entity its rule is meant to charge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from healert_webhook.backend_contract import validate
from healert_webhook.detect import Detector
from healert_webhook.outbox import Outbox
from healert_webhook.records import Friction, Stats
from healert_webhook.rules import load_rules, parse_rules

from support.events import audit_event, exec_ws, go_ordered, secret_get, service_account
from support.paths import ROOT, SEED_RULES

RECORDED = ROOT / "tests" / "fixtures" / "apiserver-1.37-breadth"
ADMIN = "conformance-admin"


@pytest.fixture(scope="module")
def every_rule() -> Detector:
    """The shipped rules with every optional rule enabled, as the conformance agents run."""
    text = (ROOT / "rules.yaml").read_text().replace("enabled: false", "enabled: true")
    return Detector(parse_rules(text), own_namespace="healert-system")


def run(detector: Detector, *events: Any) -> tuple[list[Friction], Stats]:
    stats = Stats()
    return detector.detect(list(events), stats), stats


def fired(detector: Detector, *events: Any) -> list[tuple[str, str, str]]:
    """(rule, entity, actor) of each friction event, first of each key (as the outbox)."""
    found, _ = run(detector, *events)
    kept: dict[str, Friction] = {}
    for friction in found:
        kept.setdefault(friction.key, friction)
    return [(f.rule, f.event["entity_ref"], f.event.get("actor", "")) for f in kept.values()]


def write(verb: str, resource: str, name: str, ns: str = "", *, level: str = "Request",
          request: Any = None, response: Any = None, manager: str = "kubectl-patch",
          user: str = "bob", subresource: str | None = None, code: int = 200,
          **kw: Any) -> dict[str, Any]:
    """A write by a person as the apiserver audits it, with the bodies its level keeps."""
    event = audit_event(verb, resource, name, ns, level=level, user=user, code=code,
                        subresource=subresource, **kw)
    event["requestURI"] += f"?fieldManager={manager}"
    if level in ("Request", "RequestResponse") and request is not None:
        event["requestObject"] = request
    if level == "RequestResponse" and response is not None:
        event["responseObject"] = response
    return go_ordered(event)


def obj(kind: str, name: str, ns: str = "", **fields: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    meta.update(fields.pop("metadata", {}))
    return {"kind": kind, "apiVersion": "v1", "metadata": meta, **fields}


# --- real events of a kube-apiserver v1.37.2 (tests/fixtures/apiserver-1.37-breadth) -----

def recorded(name: str) -> list[dict[str, Any]]:
    path = RECORDED / f"{name}.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def ref(ns: str, name: str) -> str:
    return f"component:{ns or 'default'}/{name}"


CASES: dict[str, set[tuple[str, str, str]]] = {
    # nodes/proxy: the node, without the port the apiserver adds to its name
    "kubelet-proxy": {("kubelet-proxy", ref("", "conformance-node"), ADMIN)},
    "kubelet-proxy-port": {("kubelet-proxy", ref("", "conformance-node"), ADMIN)},
    # pods/proxy: the pod without :8080, then a Deployment's pod; services/proxy: the
    # Service without [scheme:] and :port
    "pod-proxy": {("pod-proxy", ref("payments", "payments-api"), "bob")},
    "service-proxy": {("pod-proxy", ref("payments", "orders-internal"), "bob")},
    "service-proxy-scheme": {("pod-proxy", ref("payments", "orders-internal"), "bob")},
    # the suspended object itself (Kustomization, HelmRelease, Application)
    "flux-suspend-merge-patch": {("gitops-suspend", ref("flux-system", "apps"), "bob")},
    "flux-suspend-json-patch": {("gitops-suspend", ref("payments", "cache"), "bob")},
    "flux-suspend-server-side-apply": {("gitops-suspend", ref("flux-system", "infra"), "bob")},
    "flux-resume": set(),
    "flux-unrelated-change": set(),
    "flux-reconcile-disabled": {("gitops-suspend", ref("payments", "inventory"), "bob"),
                                ("config-drift", ref("payments", "inventory"), "bob"),
                                ("gitops-drift", ref("payments", "inventory"), "bob")},
    # Argo CD's namespace is in config.ignore_namespaces: gitops-suspend opts out
    "argocd-automated-removed-json-patch": {
        ("gitops-suspend", ref("argocd", "orders-remove"), "bob")},
    "argocd-automated-removed-merge-patch": {
        ("gitops-suspend", ref("argocd", "orders-unset"), "bob")},
    "argocd-automated-disabled": {("gitops-suspend", ref("argocd", "orders-disabled"), "bob")},
    "argocd-skip-reconcile": {("gitops-suspend", ref("argocd", "orders-skip"), "bob")},
    "argocd-unrelated-change": set(),
    "argocd-manual-app-created": set(),
    "policy-exception-created": {
        ("policy-exception", ref("payments", "allow-privileged-debug"), "bob")},
    "policy-exception-changed": {
        ("policy-exception", ref("payments", "allow-privileged-debug"), "bob")},
    "gatekeeper-excluded-namespaces": {
        ("policy-exception", ref("gatekeeper-system", "config"), ADMIN)},
    # a namespace's own events are cluster-scoped: the namespace in ENTITY_NAMESPACE
    "gatekeeper-ignore-label": {("policy-exception", ref("", "legacy-batch"), ADMIN)},
    "pod-security-restricted": set(),
    "pod-security-privileged": {("pod-security-relabel", ref("", "team-sandbox"), ADMIN)},
    "pod-security-removed": {("pod-security-relabel", ref("", "team-sandbox"), ADMIN)},
    "namespace-unrelated-label": set(),
    # the service account the token is for
    "token-mint": {("token-mint", ref("payments", "deployer"), "alice")},
    "secret-created": {("secret-write", ref("payments", "orders-api-key"), "alice")},
    # kubectl reads the Secret before patching or replacing it: that read is a read
    "secret-patched": {("secret-write", ref("payments", "orders-api-key"), "alice"),
                       ("emergency-access", ref("payments", "orders-api-key"), "alice")},
    "secret-updated": {("secret-write", ref("payments", "orders-api-key"), "alice"),
                       ("emergency-access", ref("payments", "orders-api-key"), "alice")},
    # kubectl's wait after the delete reads the Secret until 404: not a read
    "secret-deleted": {("secret-deletion", ref("payments", "orders-api-key"), "alice")},
    "secret-get-not-found": set(),
    # the pod's workload (its Deployment, by the name rules)
    "manual-pod-delete": {("manual-pod-delete", ref("payments", "restart-me"), "bob")},
    "bare-pod-delete": set(),
    "drain": {("node-access", ref("", "drain-node"), ADMIN),
              ("eviction-by-hand", ref("payments", "batch-worker"), ADMIN)},
    "csr-approval": {("csr-approval", ref("", "orders-client"), ADMIN)},
    "service-nodeport-created": {("service-exposure", ref("payments", "orders-np"), "bob")},
    "service-loadbalancer-created": {
        ("service-exposure", ref("payments", "orders-lb"), "bob")},
    "service-patched-to-nodeport": {
        ("service-exposure", ref("payments", "orders-internal"), "bob")},
    "service-clusterip-created": set(),
    "namespace-deleted": {("namespace-deletion", ref("", "scratch-breadth"), ADMIN)},
    # WebSocket refused, SPDY refused: one attempt
    "exec-refused-once": {("kubectl-exec", ref("payments", "payments-api"), "dave")},
    "exec-command": {("kubectl-exec", ref("payments", "payments-api"), "alice")},
    "exec-command-secrets": {("kubectl-exec", ref("payments", "payments-api"), "alice")},
    "attach-container": {("kubectl-attach", ref("payments", "postgres"), "bob")},
    "field-manager-edit": {("config-drift", ref("payments", "payments-api"), "alice")},
    "field-manager-set": {("config-drift", ref("payments", "payments-api"), "alice")},
    "field-manager-rollout": {("config-drift", ref("payments", "payments-api"), "bob")},
}

# Words a case's description must show, and secrets it must not.
SHOWS = {
    "exec-command": ("container:main", "command:ls -la /srv/orders"),
    "exec-command-secrets": ("command:sh -c PGPASSWORD=*** psql --password *** -h db", "curl",
                             "--token=***"),
    "attach-container": ("container:main",),
    "field-manager-edit": ("manager:kubectl-edit",),
    "field-manager-set": ("manager:kubectl-set",),
    "field-manager-rollout": ("manager:kubectl-rollout",),
    "flux-reconcile-disabled": ("manager:kubectl-annotate",),
}
FAKE_SECRETS = ("fake-pgpassword-1", "fake-password-2", "fakebearertoken3", "fake-token-4")


def test_every_recorded_case_has_its_expectation() -> None:
    if not RECORDED.is_dir():
        pytest.skip(f"{RECORDED} not present")
    assert {p.stem for p in RECORDED.glob("*.jsonl")} == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_recorded_events_give_exactly_the_issues_friction(every_rule: Detector,
                                                          case: str) -> None:
    events = recorded(case)
    found, stats = run(every_rule, *events)
    assert sorted(fired(every_rule, *events)) == sorted(CASES[case])  # each one once
    assert stats.invalid == {}
    for friction in found:
        assert validate(friction.event) == [], friction.event
        description = friction.event["description"]
        assert description.isascii() and description.isprintable()
        for secret in FAKE_SECRETS:
            assert secret not in description
    described = " ".join(f.event["description"] for f in found)
    for words in SHOWS.get(case, ()):
        assert words in described, described


@pytest.mark.parametrize("case", ["flux-suspend-merge-patch", "flux-suspend-json-patch",
                                  "flux-suspend-server-side-apply",
                                  "argocd-automated-removed-json-patch",
                                  "argocd-automated-removed-merge-patch",
                                  "argocd-automated-disabled", "argocd-skip-reconcile",
                                  "gatekeeper-excluded-namespaces", "pod-security-privileged",
                                  "pod-security-removed", "gatekeeper-ignore-label",
                                  "service-patched-to-nodeport", "service-nodeport-created",
                                  "csr-approval", "flux-resume", "flux-unrelated-change",
                                  "argocd-unrelated-change", "namespace-unrelated-label",
                                  "pod-security-restricted", "service-clusterip-created"])
def test_recorded_writes_decide_alike_at_request_level(every_rule: Detector,
                                                       case: str) -> None:
    """The same real events with the answer's object dropped (an audit policy at Request):
    the request's body decides as the resulting object did."""
    events = recorded(case)
    stripped = []
    for event in events:
        copy = dict(event)
        if copy.get("level") == "RequestResponse":
            copy["level"] = "Request"
            copy.pop("responseObject", None)
        stripped.append(copy)
    assert sorted(fired(every_rule, *stripped)) == sorted(CASES[case])


def test_at_metadata_level_content_rules_say_their_object_is_missing(
        every_rule: Detector) -> None:
    events = [dict(e, level="Metadata") for e in recorded("pod-security-privileged")]
    for event in events:
        event.pop("requestObject", None)
        event.pop("responseObject", None)
    found, stats = run(every_rule, *events)
    assert found == []
    assert stats.skipped["object_missing"] == 1


# --- the rules, one by one, on real-shaped events ----------------------------------------

def node_proxy(user: str = ADMIN, name: str = "worker-1", **kw: Any) -> dict[str, Any]:
    event = audit_event("get", "nodes", name, subresource="proxy", user=user,
                        stage="ResponseStarted", **kw)
    event["requestURI"] = f"/api/v1/nodes/{name}/proxy/pods"
    return event


def test_kubelet_proxy_is_a_persons_not_a_scrapers(every_rule: Detector) -> None:
    # the node, cluster-scoped: component:default/worker-1
    assert fired(every_rule, node_proxy()) == [
        ("kubelet-proxy", "component:default/worker-1", ADMIN)]
    prometheus = service_account("monitoring", "prometheus")["username"]
    found, stats = run(every_rule, node_proxy(user=prometheus))
    assert found == [] and stats.skipped == {"system_actor": 1}


@pytest.mark.parametrize("resource,name,entity", [
    ("pods", "payments-api-7d9f8b6c4-xkj2p:8080", "payments-api"),     # a Deployment's pod
    ("pods", "https:postgres-0:5432", "postgres"),                       # a StatefulSet's
    ("services", "orders-internal:http", "orders-internal"),            # a named port
    ("services", "https:orders-internal:", "orders-internal"),          # scheme, no port
    ("services", "orders-internal", "orders-internal"),
])
def test_pod_proxy_charges_the_object_without_scheme_and_port(
        every_rule: Detector, resource: str, name: str, entity: str) -> None:
    event = audit_event("get", resource, name, "payments", subresource="proxy",
                        stage="ResponseStarted", user="bob")
    found, _ = run(every_rule, event)
    assert [(f.rule, f.event["entity_ref"]) for f in found] == [
        ("pod-proxy", f"component:payments/{entity}")]
    assert ":" not in found[0].event["description"].split(" (ns:")[0].split("/")[1]


KS = "kustomizations"


def suspended(name: str = "apps", ns: str = "flux-system", suspend: Any = True,
              **extra: Any) -> dict[str, Any]:
    spec = {"interval": "10m", "path": f"./clusters/prod/{name}", **extra}
    if suspend is not None:
        spec["suspend"] = suspend
    return {"kind": "Kustomization", "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


@pytest.mark.parametrize("level", ["Request", "RequestResponse"])
@pytest.mark.parametrize("request_body,result,fires", [
    ({"spec": {"suspend": True}}, suspended(), True),                       # flux suspend
    ([{"op": "add", "path": "/spec/suspend", "value": True}], suspended(), True),
    ([{"op": "replace", "path": "/spec", "value": {"suspend": True}}], suspended(), True),
    (suspended(), suspended(), True),                                       # server-side apply
    ({"spec": {"suspend": False}}, suspended(suspend=False), False),        # flux resume
    ([{"op": "remove", "path": "/spec/suspend"}], suspended(suspend=None), False),
    # already suspended, and this patch changes the interval only: it suspends nothing
    ({"spec": {"interval": "5m"}}, suspended(), False),
    ([{"op": "replace", "path": "/spec/interval", "value": "5m"}], suspended(), False),
])
def test_flux_suspend_is_a_change_that_suspends(every_rule: Detector, level: str,
                                                request_body: Any, result: Any,
                                                fires: bool) -> None:
    # the Kustomization itself: component:flux-system/apps
    event = write("patch", KS, "apps", "flux-system", level=level, request=request_body,
                  response=result)
    expected = [("gitops-suspend", "component:flux-system/apps", "bob")] if fires else []
    assert fired(every_rule, event) == expected


def test_a_cronjob_suspended_is_not_gitops(every_rule: Detector) -> None:
    event = write("patch", "cronjobs", "nightly", "shop", request={"spec": {"suspend": True}})
    assert [rule for rule, _, _ in fired(every_rule, event)] == ["config-drift"]


def test_flux_reconcile_annotation_on_any_object(every_rule: Detector) -> None:
    # the ConfigMap's name: component:shop/flags
    annotate = {"metadata": {"annotations": {"kustomize.toolkit.fluxcd.io/reconcile":
                                             "disabled"}}}
    event = write("patch", "configmaps", "flags", "shop", request=annotate,
                  manager="kubectl-annotate")
    found, _ = run(every_rule, event)
    assert [(f.rule, f.event["entity_ref"]) for f in found] == [
        ("gitops-suspend", "component:shop/flags"), ("configmap-drift", "component:shop/flags")]
    assert "manager:kubectl-annotate" in found[0].event["description"]
    enabled = write("patch", "configmaps", "flags", "shop", request={"metadata": {
        "annotations": {"kustomize.toolkit.fluxcd.io/reconcile": "enabled"}}})
    assert "gitops-suspend" not in [rule for rule, _, _ in fired(every_rule, enabled)]


def application(name: str, automated: Any = None, **annotations: str) -> dict[str, Any]:
    policy: dict[str, Any] = {"syncOptions": ["CreateNamespace=true"]}
    if automated is not None:
        policy["automated"] = automated
    return {"kind": "Application", "apiVersion": "argoproj.io/v1alpha1",
            "metadata": {"name": name, "namespace": "argocd", "annotations": annotations},
            "spec": {"project": "default", "syncPolicy": policy,
                     "source": {"repoURL": "https://git.example.com/apps.git",
                                "targetRevision": "main"}}}


@pytest.mark.parametrize("request_body,result,fires", [
    ({"spec": {"syncPolicy": {"automated": None}}}, application("a"), True),
    ({"spec": {"syncPolicy": None}}, application("a"), True),
    ([{"op": "remove", "path": "/spec/syncPolicy/automated"}], application("a"), True),
    ([{"op": "remove", "path": "/spec/syncPolicy"}], application("a"), True),
    ({"spec": {"syncPolicy": {"automated": {"enabled": False}}}},
     application("a", {"enabled": False, "prune": True}), True),
    ({"metadata": {"annotations": {"argocd.argoproj.io/skip-reconcile": "true"}}},
     application("a", {"prune": True}, **{"argocd.argoproj.io/skip-reconcile": "true"}), True),
    # a manual Application retargeted: it had no automation, this patch removes none
    ({"spec": {"source": {"targetRevision": "v2"}}}, application("a"), False),
    ({"spec": {"syncPolicy": {"automated": {"selfHeal": True}}}},
     application("a", {"selfHeal": True}), False),
])
@pytest.mark.parametrize("level", ["Request", "RequestResponse"])
def test_argocd_automation_removed_or_disabled_in_argocds_namespace(
        every_rule: Detector, request_body: Any, result: Any, fires: bool,
        level: str) -> None:
    # the Application in Argo CD's namespace: component:argocd/a
    event = write("patch", "applications", "a", "argocd", level=level, request=request_body,
                  response=result)
    found, stats = run(every_rule, event)
    expected = [("gitops-suspend", "component:argocd/a")] if fires else []
    assert [(f.rule, f.event["entity_ref"]) for f in found] == expected
    if not fires:
        assert stats.skipped == {"object": 1}


def test_the_opt_out_is_only_the_rules_and_not_the_agents_own(every_rule: Detector) -> None:
    removal = {"spec": {"syncPolicy": {"automated": None}}}
    # other rules still skip Argo CD's namespace, whatever a person does there
    found, stats = run(every_rule, exec_ws(ns="argocd", user="bob"))
    assert found == [] and stats.skipped == {"namespace": 1}
    # the agent's own namespace is never reported, by any rule
    own = write("patch", "applications", "a", "healert-system", request=removal)
    found, stats = run(every_rule, own)
    assert found == [] and stats.skipped == {"namespace": 1}
    # Argo CD's own controller writing there is internal
    controller = write("patch", "applications", "a", "argocd", request=removal,
                       user="system:serviceaccount:argocd:argocd-application-controller")
    found, stats = run(every_rule, controller)
    assert found == [] and stats.skipped == {"namespace": 1}


def test_a_rule_without_the_opt_out_keeps_todays_exclusions() -> None:
    rules = parse_rules("""
config:
  ignore_namespaces: [argocd]
rules:
  - name: app-writes
    severity: low
    match: {resource: applications, verbs: [patch]}
  - name: app-writes-everywhere
    severity: low
    config_ignore_namespaces: false
    match: {resource: applications, verbs: [patch]}
""")
    assert [r.config_namespaces for r in rules.rules] == [True, False]
    found, _ = run(Detector(rules), write("patch", "applications", "a", "argocd"))
    assert [f.rule for f in found] == ["app-writes-everywhere"]
    found, _ = run(Detector(rules), write("patch", "applications", "a", "team"))
    assert [f.rule for f in found] == ["app-writes", "app-writes-everywhere"]
    assert "config.ignore_namespaces=off" in rules.rules[1].summary()


def test_policy_exception_kyverno_at_any_level_gatekeeper_by_content(
        every_rule: Detector) -> None:
    # the PolicyException: component:payments/allow-debug
    created = write("create", "policyexceptions", "allow-debug", "payments", level="Metadata",
                    code=201)
    assert fired(every_rule, created) == [
        ("policy-exception", "component:payments/allow-debug", "bob")]
    excluded = {"spec": {"match": [{"excludedNamespaces": ["kube-system", "payments"]}]}}
    config = write("patch", "configs", "config", "gatekeeper-system", request=excluded,
                   user=ADMIN)
    assert fired(every_rule, config) == [
        ("policy-exception", "component:gatekeeper-system/config", ADMIN)]
    sync_only = write("patch", "configs", "config", "gatekeeper-system", user=ADMIN,
                      request={"spec": {"sync": {"syncOnly": []}}})
    assert fired(every_rule, sync_only) == []
    one = write("patch", "configs", "config", "gatekeeper-system", user=ADMIN, request=[
        {"op": "add", "path": "/spec/match/0/excludedNamespaces/-", "value": "payments"}])
    assert fired(every_rule, one) == []  # below the field: only the answer would show it
    ignore = write("patch", "namespaces", "legacy", "legacy", user=ADMIN, request={
        "metadata": {"labels": {"admission.gatekeeper.sh/ignore": "yes"}}})
    assert fired(every_rule, ignore) == [
        ("policy-exception", "component:default/legacy", ADMIN)]


@pytest.mark.parametrize("request_body,fires", [
    ({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}, True),
    ({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": None}}}, True),
    ({"metadata": {"labels": None}}, True),
    ([{"op": "remove", "path": "/metadata/labels/pod-security.kubernetes.io~1enforce"}], True),
    ([{"op": "replace", "path": "/metadata/labels",
       "value": {"team": "a"}}], True),
    ({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "baseline"}}}, False),
    ({"metadata": {"labels": {"team": "sandbox"}}}, False),
    ({"metadata": {"labels": {"pod-security.kubernetes.io/warn": None}}}, False),
])
def test_pod_security_relaxed_is_privileged_or_removed(every_rule: Detector,
                                                        request_body: Any,
                                                        fires: bool) -> None:
    # the namespace, cluster-scoped: component:default/sandbox
    event = write("patch", "namespaces", "sandbox", "sandbox", request=request_body,
                  user=ADMIN, manager="kubectl-label")
    expected = [("pod-security-relabel", "component:default/sandbox", ADMIN)] if fires else []
    assert fired(every_rule, event) == expected


def test_token_mint_and_secret_writes(every_rule: Detector) -> None:
    token = write("create", "serviceaccounts", "deployer", "ci", subresource="token",
                  level="Metadata", code=201, user="alice")
    # the service account: component:ci/deployer
    assert fired(every_rule, token) == [("token-mint", "component:ci/deployer", "alice")]
    kubelet = write("create", "serviceaccounts", "default", "ci", subresource="token",
                    level="Metadata", code=201, user="system:node:worker-1")
    assert fired(every_rule, kubelet) == []
    for verb in ("create", "update", "patch"):
        # the Secret: component:ci/registry
        event = write(verb, "secrets", "registry", "ci", level="Metadata", user="alice")
        assert fired(every_rule, event) == [("secret-write", "component:ci/registry", "alice")]


def pod(name: str, owners: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"deletionTimestamp": "2026-11-26T10:15:30Z"}
    if owners is not None:
        meta["ownerReferences"] = owners
    return obj("Pod", name, "shop", metadata=meta)


def test_manual_pod_delete_needs_a_controlling_owner(every_rule: Detector) -> None:
    owned = pod("web-7d9f8b6c4-q2w4z", [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": "web-7d9f8b6c4", "controller": True}])
    delete = {"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/__internal"}
    event = write("delete", "pods", "web-7d9f8b6c4-q2w4z", "shop", level="RequestResponse",
                  request=delete, response=owned)
    # the pod's workload, its Deployment: component:shop/web
    assert fired(every_rule, event) == [("manual-pod-delete", "component:shop/web", "bob")]
    bare = write("delete", "pods", "debug-shell", "shop", level="RequestResponse",
                 request=delete, response=pod("debug-shell"))
    assert fired(every_rule, bare) == []
    not_controller = pod("x-1", [{"kind": "Node", "name": "n", "controller": False}])
    assert fired(every_rule, write("delete", "pods", "x-1", "shop", level="RequestResponse",
                                   response=not_controller)) == []
    # the DeleteOptions of the request are not the pod: at Request level it is unseen
    found, stats = run(every_rule, write("delete", "pods", "web-7d9f8b6c4-q2w4z", "shop",
                                         level="Request", request=delete))
    assert found == [] and stats.skipped == {"object_missing": 1}


def test_eviction_csr_service_and_namespace(every_rule: Detector) -> None:
    evict = write("create", "pods", "batch-7cfb8d9d9d-nvz5j", "jobs", subresource="eviction",
                  level="Metadata", code=201, user=ADMIN)
    # the evicted pod's workload: component:jobs/batch
    assert fired(every_rule, evict) == [("eviction-by-hand", "component:jobs/batch", ADMIN)]

    def csr(condition: str) -> dict[str, Any]:
        body = obj("CertificateSigningRequest", "orders-client",
                   status={"conditions": [{"type": condition, "status": "True"}]})
        return write("update", "certificatesigningrequests", "orders-client",
                     subresource="approval", request=body, user=ADMIN)

    # cluster-scoped: component:default/orders-client
    assert fired(every_rule, csr("Approved")) == [
        ("csr-approval", "component:default/orders-client", ADMIN)]
    assert fired(every_rule, csr("Denied")) == []

    def service(verb: str, body: Any) -> dict[str, Any]:
        return write(verb, "services", "orders", "shop", request=body, code=201)

    exposed = obj("Service", "orders", "shop", spec={"type": "LoadBalancer"})
    # the Service: component:shop/orders
    assert fired(every_rule, service("create", exposed)) == [
        ("service-exposure", "component:shop/orders", "bob")]
    assert fired(every_rule, service("patch", {"spec": {"type": "NodePort"}})) == [
        ("service-exposure", "component:shop/orders", "bob")]
    assert fired(every_rule, service("create", obj("Service", "orders", "shop",
                                                   spec={"ports": []}))) == []
    assert fired(every_rule, service("patch", {"metadata": {"labels": {"a": "b"}}})) == []
    gone = write("delete", "namespaces", "team-a", "team-a", level="Metadata", user=ADMIN)
    assert fired(every_rule, gone) == [
        ("namespace-deletion", "component:default/team-a", ADMIN)]


# --- a 404 is no read ------------------------------------------------------------------------

def test_not_found_is_not_a_read_unless_a_rule_asks_for_errors() -> None:
    detector = Detector(load_rules(ROOT / "rules.yaml"))
    found, stats = run(detector, secret_get(code=404))
    assert found == [] and stats.skipped == {"response": 1}
    assert [f.rule for f in run(detector, secret_get(code=403))[0]] == ["emergency-access"]
    probing = parse_rules("""
rules:
  - name: secret-probe
    severity: low
    match: {resource: secrets, verb: get, response: error}
""")
    assert [f.rule for f in run(Detector(probing), secret_get(code=404))[0]] == ["secret-probe"]


def test_the_old_agents_file_no_longer_counts_a_404_either() -> None:
    if not SEED_RULES.is_file():
        pytest.skip("seed rules not present")
    old = Detector(load_rules(SEED_RULES))
    found, stats = run(old, *recorded("secret-deleted"), secret_get(code=404))
    assert found == [] and stats.skipped["response"] == 2


# --- one refused kubectl exec is one attempt -------------------------------------------

def attempt(verb: str, code: int, at: str, *, user: str = "dave", pod: str = "web-0",
            sub: str = "exec", tag: str = "a") -> dict[str, Any]:
    event = audit_event(verb, "pods", pod, "shop", subresource=sub, code=code, user=user,
                        stage="ResponseStarted", received=at,
                        audit_id=f"{tag}-{verb}-{at}")
    event["requestURI"] += "?command=ls&container=main&stdout=true"
    return event


WS, SPDY = "2026-11-26T10:04:32.904914Z", "2026-11-26T10:04:32.909807Z"


@pytest.mark.parametrize("spdy_code", [403, 101])
def test_websocket_then_spdy_is_one_attempt(detector: Detector, spdy_code: int) -> None:
    """Refused twice (no exec right), or refused then allowed (a Role granting only
    `create` on pods/exec, which the WebSocket's `get` lacks): one key."""
    found, _ = run(detector, attempt("get", 403, WS), attempt("create", spdy_code, SPDY))
    assert [f.rule for f in found] == ["kubectl-exec", "kubectl-exec"]
    assert found[0].key == found[1].key


def test_other_people_pods_subresources_and_later_attempts_are_their_own(
        detector: Detector) -> None:
    first = attempt("get", 403, WS)
    others = [attempt("get", 403, WS, user="erin"), attempt("get", 403, WS, pod="web-1"),
              attempt("get", 403, WS, sub="attach"),
              attempt("get", 403, "2026-11-26T10:04:45.000000Z")]
    text = (ROOT / "rules.yaml").read_text().replace("enabled: false", "enabled: true")
    found, _ = run(Detector(parse_rules(text)), first, *others)
    assert len({f.key for f in found}) == 5


def test_one_attempt_is_one_row_across_batches_sources_and_restarts(
        detector: Detector, tmp_path: Path) -> None:
    """The WebSocket attempt in one batch, the SPDY fallback in the next (or from the tail,
    or after a restart): the outbox keeps one friction event."""
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    try:
        first, _ = run(detector, attempt("get", 403, WS))
        assert box.store(first).stored == 1
        second, _ = run(detector, attempt("create", 403, SPDY))
        assert box.store(second).stored == 0
    finally:
        box.close()
    box = Outbox(path)  # restarted
    try:
        again, _ = run(detector, dict(attempt("create", 403, SPDY), stage="ResponseComplete"))
        assert box.store(again).stored == 0
        assert len(box.head(10)) == 1
    finally:
        box.close()


# --- the description tokens ------------------------------------------------------------

def exec_with(query: str, **kw: Any) -> dict[str, Any]:
    event = exec_ws(**kw)
    event["requestURI"] += "?" + query
    return event


def describe(detector: Detector, event: dict[str, Any]) -> str:
    found, _ = run(detector, event)
    return str(found[0].event["description"])


@pytest.mark.parametrize("query,command", [
    ("command=ls&command=-la&command=%2Fsrv%2Forders&container=main", "ls -la /srv/orders"),
    ("command=sh&command=-c&command=echo+hello+world", "sh -c echo hello world"),
    ("command=env&command=DB_PASSWORD%3Dhunter2&command=psql", "env DB_PASSWORD=*** psql"),
    ("command=vault&command=login&command=-token=s.abc123", "vault login -token=***"),
    ("command=mysql&command=--password&command=hunter2&command=-h&command=db",
     "mysql --password *** -h db"),
    ("command=curl&command=-H&command=Authorization%3A+Bearer+eyJhbGciOi.x.y&command=x",
     "curl -H Authorization: Bearer *** x"),
    ("command=curl&command=https%3A%2F%2Fu%3Apw%40host%2Fp", "curl https://u:***@host/p"),
    ("command=sh&command=-c&command=export+API_KEY%3D%27a+b+c%27%3B+run",
     "sh -c export API_KEY=*** run"),
    ("command=cat&command=%2Fetc%2Fhosts&stdin=true", "cat /etc/hosts"),
])
def test_command_is_every_argument_decoded_with_secrets_hidden(
        detector: Detector, query: str, command: str) -> None:
    text = describe(detector, exec_with(query))
    assert f"command:{command})" in text


def test_command_is_bounded_and_printable(detector: Detector) -> None:
    huge = "command=" + "a%0A%1B%C3%A9" * 20_000 + "&command=--token%3Dsecret"
    text = describe(detector, exec_with(huge))
    assert len(text) <= 500 and text.isascii() and text.isprintable()
    assert "secret" not in text


def test_container_and_field_manager(detector: Detector, every_rule: Detector) -> None:
    assert "container:sidecar," in describe(detector, exec_with("container=sidecar"))
    patch = audit_event("patch", "deployments", "web", "shop", level="Metadata",
                        user_agent="k9s/v0.32.5 (linux/amd64)")
    assert "manager:k9s)" in describe(detector, patch)
    patch["requestURI"] += "?fieldManager=kubectl-rollout&fieldValidation=Strict"
    assert "manager:kubectl-rollout)" in describe(detector, patch)
    attach = audit_event("get", "pods", "postgres-0", "shop", subresource="attach",
                         stage="ResponseStarted", code=101)
    attach["requestURI"] += "?container=main&stdout=true"
    assert describe(every_rule, attach) == (
        "kubectl attach on pods/postgres-0 (ns:shop, container:main) by oidc:jane@example.com")
