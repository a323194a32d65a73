"""Issue 26's content rules against the real apiserver when it records only the request.

The breadth scenarios (harness/scenarios_breadth.py, where merged) record every write at
RequestResponse, so the resulting object always decides there. Here a control plane of
its own audits people's writes at Request: the event carries what the request said (a
merge patch's changes, a JSON patch's operations, a server-side apply's object) and no
resulting object. Both agents (webhook and tail) must then find exactly:

- a Flux Kustomization suspended by merge patch, JSON patch and server-side apply, but
  not resumed, and not an already suspended one whose interval changes (the patch leaves
  spec.suspend as it was: the resulting object alone would say "suspended");
- an Argo CD Application's automated sync removed by a JSON patch, in Argo CD's own
  namespace (which config.ignore_namespaces excludes: gitops-suspend opts out), but not a
  manual Application retargeted (no automation removed, though none is in its object);
- a namespace's Pod Security enforce label removed, not an unrelated label;
- a Service patched to NodePort;
- one `kubectl exec` by someone whose Role grants `create` on pods/exec but not `get`:
  the WebSocket upgrade (get) is refused, kubectl falls back to SPDY (create): two audit
  events, one friction event;
- a Secret read answered 404: none.

Minimal CustomResourceDefinitions stand for Flux's and Argo CD's kinds (no controller of
those tools runs). The sync marker after each case is a refused Secret read (a read
answered 404 is no friction event any more).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance.harness.cluster import ControlPlane
from conformance.harness.env import Environment
from conformance.harness.runner import MARKER_PREFIX, Outcome, Runner
from conformance.harness.scenarios import API_POD, Expect, Fact, PodOf, Scenario
from conformance.harness.verdict import problems, show

pytestmark = pytest.mark.timeout(900)

ADMIN = "conformance-admin"
BOOT = ControlPlane.BOOTSTRAP
EXEC_ONLY = "carol"   # a Role with create on pods/exec, without get
POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    nonResourceURLs: ["*"]
  - level: None
    resources:
      - {group: coordination.k8s.io, resources: [leases]}
      - {group: "", resources: [events]}
      - {group: events.k8s.io, resources: [events]}
  - level: Metadata
    resources:
      - {group: "", resources: [secrets, configmaps, serviceaccounts/token]}
  - level: Request
    verbs: [create, update, patch]
  - level: Metadata
"""
KINDS = (("kustomize.toolkit.fluxcd.io", "v1", "Kustomization", "kustomizations"),
         ("argoproj.io", "v1alpha1", "Application", "applications"))
KS = "kustomizations.kustomize.toolkit.fluxcd.io"
APP = "applications.argoproj.io"
PSA = "pod-security.kubernetes.io/enforce"
_markers = itertools.count(1)


def crd(group: str, version: str, kind: str, plural: str) -> dict[str, Any]:
    """A namespaced kind that takes any content (no schema beyond an object)."""
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower(),
                               "listKind": f"{kind}List"},
                     "versions": [{"name": version, "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object",
                                       "x-kubernetes-preserve-unknown-fields": True}}}]}}


def kustomization(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": name, "namespace": "flux-system"},
            "spec": {"interval": "10m", "path": f"./clusters/conformance/{name}", **spec}}


def application(name: str, automated: bool) -> dict[str, Any]:
    policy: dict[str, Any] = {"syncOptions": ["CreateNamespace=true"]}
    if automated:
        policy["automated"] = {"prune": True, "selfHeal": True}
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
            "metadata": {"name": name, "namespace": "argocd"},
            "spec": {"project": "default", "syncPolicy": policy,
                     "source": {"repoURL": "https://git.invalid/apps.git", "path": name,
                                "targetRevision": "main"},
                     "destination": {"server": "https://kubernetes.default.svc",
                                     "namespace": "orders"}}}


def setup(cp: ControlPlane) -> None:
    """The kinds, their objects, the namespaces, the Service and carol's Role, as the
    bootstrap identity (internal: none of it is friction)."""
    cp.apply(BOOT, [crd(*kind) for kind in KINDS])
    for group, _, _, plural in KINDS:
        cp.kubectl(BOOT, "wait", "--for=condition=Established", f"crd/{plural}.{group}",
                   "--timeout=60s")
    namespace = "v1", "Namespace"
    cp.apply(BOOT, [{"apiVersion": namespace[0], "kind": namespace[1],
                     "metadata": {"name": name, "labels": labels}}
                    for name, labels in (("flux-system", {}), ("argocd", {}),
                                         ("team-sandbox", {PSA: "restricted"}),
                                         ("scratch", {}))])
    # Created, not applied: a first server-side apply over a client-side applied object
    # makes kubectl migrate its field managers and apply again (two requests, both
    # stating spec.suspend), a double count docs/rules.md names.
    cp.kubectl(BOOT, "create", "-f", "-", stdin=json.dumps(kustomization("edge")))
    cp.apply(BOOT, [kustomization("apps"), kustomization("infra"),
                    application("orders-remove", True), application("orders-manual", False),
                    {"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": "orders-internal", "namespace": "payments"},
                     "spec": {"selector": {"app": "payments-api"},
                              "ports": [{"port": 80, "targetPort": 8080}]}},
                    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                     "metadata": {"name": "exec-only", "namespace": "payments"},
                     "rules": [{"apiGroups": [""], "resources": ["pods"],
                                "verbs": ["get", "list"]},
                               {"apiGroups": [""], "resources": ["pods/exec"],
                                "verbs": ["create"]}]},
                    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                     "metadata": {"name": "exec-only", "namespace": "payments"},
                     "subjects": [{"kind": "User", "name": EXEC_ONLY,
                                   "apiGroup": "rbac.authorization.k8s.io"}],
                     "roleRef": {"kind": "Role", "name": "exec-only",
                                 "apiGroup": "rbac.authorization.k8s.io"}}])


Step = Callable[[ControlPlane, Path], None]


def kubectl(who: str, *args: str | PodOf, check: bool = True) -> Step:
    def run(cp: ControlPlane, _work: Path) -> None:
        argv = [a.resolve(cp) if isinstance(a, PodOf) else a for a in args]
        cp.kubectl(who, *argv, check=check)
    return run


def server_side_apply(obj: dict[str, Any]) -> Step:
    def run(cp: ControlPlane, work: Path) -> None:
        path = work / f"{obj['metadata']['name']}.json"
        path.write_text(json.dumps(obj))
        cp.kubectl(ADMIN, "apply", "--server-side", "--field-manager=hotfix", "-f", str(path))
    return run


def suspends(name: str, ns: str = "flux-system") -> tuple[Expect, ...]:
    return (Expect("gitops-suspend", f"component:{ns}/{name}", ADMIN),)


def ks_patch(name: str, kind: str, body: str) -> Step:
    return kubectl(ADMIN, "-n", "flux-system", "patch", KS, name, f"--type={kind}", "-p", body)


REQUEST_ONLY = Fact("patch", "kustomizations", level="Request", code=200)
CASES: tuple[Scenario, ...] = (
    Scenario("flux-suspend-merge-patch", "merge patch spec.suspend: true",
             ks_patch("apps", "merge", '{"spec":{"suspend":true}}'), suspends("apps"),
             audited=(REQUEST_ONLY,)),
    Scenario("flux-resume", "merge patch spec.suspend: false",
             ks_patch("apps", "merge", '{"spec":{"suspend":false}}'), audited=(REQUEST_ONLY,)),
    Scenario("flux-suspend-json-patch", "JSON patch add /spec/suspend true",
             ks_patch("infra", "json", '[{"op":"add","path":"/spec/suspend","value":true}]'),
             suspends("infra"), audited=(REQUEST_ONLY,)),
    Scenario("flux-suspended-interval-change", "the suspended Kustomization's interval "
             "changed: the patch leaves spec.suspend as it was",
             ks_patch("infra", "merge", '{"spec":{"interval":"5m"}}'), audited=(REQUEST_ONLY,)),
    Scenario("flux-suspend-server-side-apply", "server-side apply of spec.suspend: true",
             server_side_apply(kustomization("edge", suspend=True)), suspends("edge"),
             audited=(REQUEST_ONLY,)),
    Scenario("argocd-automated-removed-json-patch", "JSON patch remove "
             "/spec/syncPolicy/automated, in Argo CD's namespace",
             kubectl(ADMIN, "-n", "argocd", "patch", APP, "orders-remove", "--type=json", "-p",
                     '[{"op":"remove","path":"/spec/syncPolicy/automated"}]'),
             suspends("orders-remove", "argocd"),
             audited=(Fact("patch", "applications", level="Request", code=200),)),
    Scenario("argocd-manual-retargeted", "a manual Application retargeted: no automation "
             "removed",
             kubectl(ADMIN, "-n", "argocd", "patch", APP, "orders-manual", "--type=merge",
                     "-p", '{"spec":{"source":{"targetRevision":"v2"}}}'),
             audited=(Fact("patch", "applications", level="Request", code=200),)),
    Scenario("pod-security-removed", "the enforce label removed from a namespace",
             kubectl(ADMIN, "label", "namespace", "team-sandbox", f"{PSA}-"),
             (Expect("pod-security-relabel", "component:default/team-sandbox", ADMIN),),
             audited=(Fact("patch", "namespaces", level="Request", code=200),)),
    Scenario("namespace-unrelated-label", "a namespace without the label labelled team=x",
             kubectl(ADMIN, "label", "namespace", "scratch", "team=x"),
             audited=(Fact("patch", "namespaces", level="Request", code=200),)),
    Scenario("service-patched-to-nodeport", "a ClusterIP Service patched to NodePort",
             kubectl(ADMIN, "-n", "payments", "patch", "service", "orders-internal", "-p",
                     '{"spec":{"type":"NodePort"}}'),
             (Expect("service-exposure", "component:payments/orders-internal", ADMIN),),
             audited=(Fact("patch", "services", level="Request", code=200),)),
    Scenario("exec-create-only-role", "carol's Role grants create on pods/exec, not get: "
             "the WebSocket is refused and kubectl falls back to SPDY",
             kubectl(EXEC_ONLY, "-n", "payments", "exec", API_POD, "-c", "main", "--", "ls",
                     check=False),
             (Expect("kubectl-exec", "component:payments/payments-api", EXEC_ONLY,
                     mentions=("container:main", "command:ls")),),
             audited=(Fact("get", "pods", "exec", stage="ResponseStarted", code=403, count=1,
                           user=EXEC_ONLY),
                      Fact("create", "pods", "exec", user=EXEC_ONLY))),
    Scenario("secret-not-found", "a Secret read answered 404",
             kubectl(ADMIN, "-n", "payments", "get", "secret", "no-such-secret", check=False),
             audited=(Fact("get", "secrets", code=404, user=ADMIN),)),
)


class RefusedMarkerRunner(Runner):
    """The harness's runner, its sync marker a refused Secret read by eve (bound to no
    role): a read answered 404, the harness's marker on main, is no friction event now."""

    def marker(self) -> str:
        name = f"{MARKER_PREFIX}breadth-{next(_markers):04d}"
        with self.env.cluster.client_for("eve") as client:
            answer = client.get(f"/api/v1/namespaces/default/secrets/{name}")
        if answer.status_code != 403:
            raise RuntimeError(f"marker read answered {answer.status_code}")
        return name


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """A control plane auditing people's writes at Request; every case run once."""
    root = tmp_path_factory.mktemp("breadth-request-level")
    policy = root / "policy.yaml"
    policy.write_text(POLICY)
    env = Environment(root / "env", audit_policy=policy).start()
    try:
        env.cluster.add_identity(EXEC_ONLY, EXEC_ONLY, ("exec-only",))
        setup(env.cluster)
        runner = RefusedMarkerRunner(env, root / "work")
        runner.baseline()
        yield {case.name: runner.run(case) for case in CASES}
    finally:
        env.stop()


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_request_level_events_give_exactly_the_expected_friction_both_ways(
        outcomes: dict[str, Outcome], name: str) -> None:
    outcome = outcomes[name]
    assert outcome.error is None, outcome.error
    for fact in outcome.scenario.audited:
        matching = [e for e in outcome.audit_events if fact.matches(e)]
        assert len(matching) == fact.count if fact.count is not None else matching, \
            f"{len(matching)} audit events like {fact}"
    assert not [e for e in outcome.audit_events if "responseObject" in e]
    assert set(outcome.serve) == set(outcome.tail), (
        f"webhook:\n{show(outcome.serve)}\ntail:\n{show(outcome.tail)}")
    for key, row in outcome.serve.items():
        assert row["event"] == outcome.tail[key]["event"], key
    names = {e.rule for e in outcome.scenario.expect}
    found = problems(outcome.scenario, outcome.serve, names)
    assert not found, "\n".join(found)
