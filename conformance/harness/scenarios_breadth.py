"""Issue 26's techniques, each done once by a person with the real kubectl, and the friction
events its table calls for.

Expectations come from issue 26's words (rule, the table's severity, entity, actor) with
every optional rule enabled, as the harness runs them, and from the rules that already
exist (a Flux-managed Deployment annotated by hand is still config-drift and gitops-drift).
Entities follow issue 24's resolution: none of these objects carries an entity label and
none of their namespaces declares one, so the cluster view and the name rules agree on
them, and the cases hold before and after the cluster view is wired in.

The negative cases (what must stay silent: a resume, a change that suspends nothing, a
tightened Pod Security level...) guard against rules that match too much.

The audit level each needs is in `needs`: the writes of the tools' own kinds (Flux, Argo
CD, Gatekeeper) need at least Request for every content condition on them, people's pod
deletes RequestResponse (the deleted pod's owner). The environment's apiserver runs the
policy the agent generates for its rules, and the levels the `audited` facts name are
that policy's (Request for these writes: the request body, no resulting object).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from conformance.harness import breadth_env as be
from conformance.harness import crds
from conformance.harness.cases import Case, Need, Step, case, kubectl
from conformance.harness.cluster import ControlPlane
from conformance.harness.scenarios import API_POD, DB_POD, Expect, Fact, PodOf

ADMIN = "conformance-admin"
PAY = be.PAYMENTS
KS = f"{crds.KUSTOMIZATION.plural}.{crds.KUSTOMIZATION.group}"
HR = f"{crds.HELM_RELEASE.plural}.{crds.HELM_RELEASE.group}"
APP = f"{crds.APPLICATION.plural}.{crds.APPLICATION.group}"
POLEX = f"{crds.POLICY_EXCEPTION.plural}.{crds.POLICY_EXCEPTION.group}"
GK_CONFIG = f"{crds.GATEKEEPER_CONFIG.plural}.{crds.GATEKEEPER_CONFIG.group}"
PSA = "pod-security.kubernetes.io/enforce"
EXCEPTION = "allow-privileged-debug"
RESTART_POD = PodOf(PAY, "Deployment", "restart-me")  # Pending: never bound, never run
SETTLE = 2.0  # seconds for the controllers' reactions to a case (see cases.Case.settle)
# Values that look like secrets in an exec's command: none may reach a description.
FAKE_SECRETS = ("fake-pgpassword-1", "fake-password-2", "fakebearertoken3", "fake-token-4")
SECRET_COMMAND = (f"PGPASSWORD={FAKE_SECRETS[0]} psql --password {FAKE_SECRETS[1]} -h db"
                  f" && curl -H 'Authorization: Bearer {FAKE_SECRETS[2]}'"
                  f" --token={FAKE_SECRETS[3]} http://orders-api")


@dataclass(frozen=True)
class NewRule:
    """A rule of issue 26's table: its severity and whether it is on by default."""

    severity: str
    enabled: bool


# Issue 26's table. Every expectation of these rules carries the severity (see CASES).
TABLE = {
    "kubelet-proxy": NewRule("high", True), "pod-proxy": NewRule("medium", True),
    "gitops-suspend": NewRule("high", True), "policy-exception": NewRule("high", True),
    "pod-security-relabel": NewRule("high", True), "token-mint": NewRule("medium", True),
    "secret-write": NewRule("medium", True), "manual-pod-delete": NewRule("low", False),
    "eviction-by-hand": NewRule("low", False), "csr-approval": NewRule("medium", False),
    "service-exposure": NewRule("medium", False),
    "namespace-deletion": NewRule("medium", False),
}


def _with_table_severity(cases: tuple[Case, ...]) -> tuple[Case, ...]:
    """The cases, each expectation of a rule of the table with that rule's severity."""
    return tuple(replace(c, expect=tuple(
        replace(e, severity=TABLE[e.rule].severity) if e.rule in TABLE else e
        for e in c.expect)) for c in cases)


def ref(namespace: str, name: str) -> str:
    """`component:<namespace>/<name>`; cluster-scoped objects use ENTITY_NAMESPACE."""
    return f"component:{namespace or 'default'}/{name}"


def _file(who: str, verb: tuple[str, ...], obj: dict[str, Any], stem: str) -> Step:
    """kubectl `verb` -f a file holding `obj` (written to the run's work folder)."""
    def run(cp: ControlPlane, work: Path) -> None:
        path = work / f"{stem}.json"
        path.write_text(json.dumps(obj))
        cp.kubectl(who, *verb, "-f", str(path))
    return run


def _kubelet_port(cp: ControlPlane) -> str:
    return f"/api/v1/nodes/conformance-node:{cp.kubelet_port}/proxy/healthz"


def _pod_proxy(cp: ControlPlane) -> str:
    return f"/api/v1/namespaces/{PAY}/pods/{API_POD.resolve(cp)}:8080/proxy/metrics"


def _editor(work: Path) -> dict[str, str]:
    """A KUBE_EDITOR that changes the revision history limit (no new pods)."""
    script = work / "breadth-editor.sh"
    script.write_text("#!/bin/sh\n"
                      "sed -i 's/^  revisionHistoryLimit: [0-9]*$/  revisionHistoryLimit: 7/'"
                      " \"$1\"\n")
    script.chmod(0o755)
    return {"KUBE_EDITOR": str(script), "EDITOR": str(script)}


def _edit(cp: ControlPlane, work: Path) -> None:
    cp.kubectl("alice", "-n", PAY, "edit", "deployment", "payments-api", env=_editor(work))


def _get(verb: str, resource: str, sub: str | None = None, **kw: Any) -> Fact:
    return Fact(verb, resource, sub, **kw)


def proxies() -> tuple[Case, ...]:
    """nodes/proxy, pods/proxy and services/proxy by `kubectl get --raw`."""
    node_need = Need("Metadata", "get", "nodes", subresource="proxy", who="admin")
    return (
        case("kubelet-proxy", "the admin reads a kubelet's API through the apiserver "
             "(`kubectl get --raw /api/v1/nodes/<node>/proxy/pods`)",
             kubectl(ADMIN, "get", "--raw", "/api/v1/nodes/conformance-node/proxy/pods",
                     check=False),
             (Expect("kubelet-proxy", ref("", "conformance-node"), ADMIN),),
             audited=(_get("get", "nodes", "proxy", stage="ResponseStarted", count=1),),
             needs=(node_need,)),
        case("kubelet-proxy-port", "the admin names the kubelet's port "
             "(`/api/v1/nodes/<node>:<port>/proxy/healthz`): the apiserver's object name is "
             "`<node>:<port>`",
             kubectl(ADMIN, "get", "--raw", _kubelet_port, check=False),
             (Expect("kubelet-proxy", ref("", "conformance-node"), ADMIN),),
             design="the entity is the node without the `:port` the apiserver adds to the name",
             audited=(_get("get", "nodes", "proxy", stage="ResponseStarted", count=1),),
             needs=(node_need,)),
        case("pod-proxy", "bob reaches a pod's port through the apiserver "
             "(`/api/v1/namespaces/payments/pods/<pod>:8080/proxy/metrics`)",
             kubectl("bob", "get", "--raw", _pod_proxy, check=False),
             (Expect("pod-proxy", ref(PAY, "payments-api"), "bob"),),
             design="the pod without `:8080`, then the name rules (a Deployment's pod)",
             audited=(_get("get", "pods", "proxy", stage="ResponseStarted", count=1),),
             needs=(Need("Metadata", "get", "pods", subresource="proxy"),)),
        case("service-proxy", "bob reaches a Service through the apiserver "
             "(`/api/v1/namespaces/payments/services/orders-internal:80/proxy/`)",
             kubectl("bob", "get", "--raw",
                     f"/api/v1/namespaces/{PAY}/services/orders-internal:80/proxy/",
                     check=False),
             (Expect("pod-proxy", ref(PAY, "orders-internal"), "bob"),),
             audited=(_get("get", "services", "proxy", stage="ResponseStarted", count=1),),
             needs=(Need("Metadata", "get", "services", subresource="proxy"),)),
        case("service-proxy-scheme", "bob names the scheme too "
             "(`/api/v1/namespaces/payments/services/https:orders-internal:443/proxy/`)",
             kubectl("bob", "get", "--raw",
                     f"/api/v1/namespaces/{PAY}/services/https:orders-internal:443/proxy/status",
                     check=False),
             (Expect("pod-proxy", ref(PAY, "orders-internal"), "bob"),),
             design="the apiserver's name is `[scheme:]name[:port]`: the entity is the "
                    "Service alone, as for the port",
             audited=(_get("get", "services", "proxy", stage="ResponseStarted", count=1),),
             needs=(Need("Metadata", "get", "services", subresource="proxy"),)),
    )


def _body(level: str, verb: str, resource: str, group: str, who: str = "person") -> Need:
    return Need(level, verb, resource, group=group, who=who,
                why="the object's content: the resulting object, else the request")


def flux() -> tuple[Case, ...]:
    """Flux reconciliation suspended by hand: three ways to set spec.suspend, and the
    annotation on a managed object; a resume and an unrelated change stay silent."""
    ks_group, hr_group = crds.KUSTOMIZATION.group, crds.HELM_RELEASE.group
    suspended = {"apiVersion": crds.KUSTOMIZATION.api_version, "kind": "Kustomization",
                 "metadata": {"name": "infra", "namespace": crds.FLUX_NS},
                 "spec": {"suspend": True}}
    return (
        case("flux-suspend-merge-patch", "bob suspends a Flux Kustomization with a merge "
             "patch (`spec.suspend: true`, what `flux suspend` sends)",
             kubectl("bob", "-n", crds.FLUX_NS, "patch", KS, "apps", "--type=merge",
                     "-p", '{"spec":{"suspend":true}}'),
             (Expect("gitops-suspend", ref(crds.FLUX_NS, "apps"), "bob"),),
             audited=(_get("patch", "kustomizations", level="Request", code=200),),
             needs=(_body("Request", "patch", "kustomizations", ks_group),)),
        case("flux-suspend-json-patch", "bob suspends a Flux HelmRelease with a JSON patch "
             "(`add /spec/suspend true`: the requestObject is an array of operations)",
             kubectl("bob", "-n", PAY, "patch", HR, "cache", "--type=json",
                     "-p", '[{"op":"add","path":"/spec/suspend","value":true}]'),
             (Expect("gitops-suspend", ref(PAY, "cache"), "bob"),),
             audited=(_get("patch", "helmreleases", level="Request", code=200),),
             needs=(_body("Request", "patch", "helmreleases", hr_group),)),
        case("flux-suspend-server-side-apply", "bob suspends a Kustomization by server-side "
             "apply of `spec.suspend: true` (the requestObject is the applied object)",
             _file("bob", ("apply", "--server-side", "--field-manager=bob-hotfix"),
                   suspended, "infra-suspended"),
             (Expect("gitops-suspend", ref(crds.FLUX_NS, "infra"), "bob"),),
             audited=(_get("patch", "kustomizations", level="Request", code=200,
                           count=1),),
             needs=(_body("Request", "patch", "kustomizations", ks_group),)),
        case("flux-resume", "bob resumes the Kustomization he suspended "
             "(`spec.suspend: false`): nothing is suspended",
             kubectl("bob", "-n", crds.FLUX_NS, "patch", KS, "apps", "--type=merge",
                     "-p", '{"spec":{"suspend":false}}'),
             audited=(_get("patch", "kustomizations", code=200),),
             needs=(_body("Request", "patch", "kustomizations", ks_group),)),
        case("flux-unrelated-change", "bob changes a Kustomization's interval: it stays "
             "reconciled, nothing is suspended",
             kubectl("bob", "-n", crds.FLUX_NS, "patch", KS, "platform", "--type=merge",
                     "-p", '{"spec":{"interval":"5m"}}'),
             audited=(_get("patch", "kustomizations", code=200),),
             needs=(_body("Request", "patch", "kustomizations", ks_group),)),
        case("flux-reconcile-disabled", "bob annotates a Flux-managed Deployment "
             "`kustomize.toolkit.fluxcd.io/reconcile=disabled`",
             kubectl("bob", "-n", PAY, "annotate", "deployment", "inventory",
                     "kustomize.toolkit.fluxcd.io/reconcile=disabled"),
             (Expect("gitops-suspend", ref(PAY, "inventory"), "bob"),
              Expect("config-drift", ref(PAY, "inventory"), "bob",
                     mentions=("kubectl-annotate",)),
              Expect("gitops-drift", ref(PAY, "inventory"), "bob",
                     mentions=("kubectl-annotate",))),
             design="a hand change of a GitOps-managed workload is also config-drift and "
                    "gitops-drift (Flux's labels are on it); {field_manager} names kubectl's",
             audited=(_get("patch", "deployments", level="Request", code=200),),
             needs=(_body("Request", "patch", "deployments", "apps"),)),
    )


def argocd() -> tuple[Case, ...]:
    """Argo CD automation removed or disabled by hand, in Argo CD's own namespace (which
    the shipped config.ignore_namespaces excludes: the rule must opt out of that list)."""
    group = crds.APPLICATION.group
    need = (_body("Request", "patch", "applications", group),)
    manual = crds.application("orders-manual", be.ORDERS, automated=False)

    def patch(app: str, kind: str, body: str) -> Step:
        return kubectl("bob", "-n", crds.ARGOCD_NS, "patch", APP, app, f"--type={kind}",
                       "-p", body)

    def suspends(app: str) -> tuple[Expect, ...]:
        return (Expect("gitops-suspend", ref(crds.ARGOCD_NS, app), "bob"),)

    audited = (_get("patch", "applications", level="Request", code=200),)
    return (
        case("argocd-automated-removed-json-patch", "bob removes an Application's "
             "automated sync with a JSON patch (`remove /spec/syncPolicy/automated`)",
             patch("orders-remove", "json",
                   '[{"op":"remove","path":"/spec/syncPolicy/automated"}]'),
             suspends("orders-remove"), audited=audited, needs=need,
             design="Argo CD's namespace is in config.ignore_namespaces; the rule opts out"),
        case("argocd-automated-removed-merge-patch", "bob removes an Application's "
             "automated sync with a merge patch (`automated: null`)",
             patch("orders-unset", "merge", '{"spec":{"syncPolicy":{"automated":null}}}'),
             suspends("orders-unset"), audited=audited, needs=need),
        case("argocd-automated-disabled", "bob disables an Application's automated sync "
             "(`spec.syncPolicy.automated.enabled: false`)",
             patch("orders-disabled", "merge",
                   '{"spec":{"syncPolicy":{"automated":{"enabled":false}}}}'),
             suspends("orders-disabled"), audited=audited, needs=need),
        case("argocd-skip-reconcile", "bob annotates an Application "
             "`argocd.argoproj.io/skip-reconcile=true`",
             kubectl("bob", "-n", crds.ARGOCD_NS, "annotate", APP, "orders-skip",
                     "argocd.argoproj.io/skip-reconcile=true"),
             suspends("orders-skip"), audited=audited, needs=need),
        case("argocd-unrelated-change", "bob points an automated Application at another "
             "revision: it stays automated, nothing is suspended",
             patch("orders-retarget", "merge", '{"spec":{"source":{"targetRevision":"v2"}}}'),
             audited=audited, needs=need),
        case("argocd-manual-app-created", "bob creates an Application without automated "
             "sync: it had no automation to remove",
             _file("bob", ("create",), manual, "orders-manual"),
             design="'automated removed or disabled' is a change of an Application; a new "
                    "one without it removes nothing",
             audited=(_get("create", "applications", level="Request", code=201),),
             needs=(_body("Request", "create", "applications", group),)),
    )


def policies() -> tuple[Case, ...]:
    """Policy exceptions (Kyverno, Gatekeeper) and Pod Security relaxed by hand."""
    exception = crds.policy_exception(PAY, EXCEPTION, PAY)
    gk_body = json.dumps({"spec": {"match": [{"excludedNamespaces": ["kube-system", PAY],
                                              "processes": ["*"]}]}})
    ns_need = (Need("Request", "patch", "namespaces", who="admin",
                    why="the namespace's labels: the resulting object, else the request"),)
    label = _get("patch", "namespaces", level="Request", code=200)
    return (
        case("policy-exception-created", "bob creates a Kyverno PolicyException",
             _file("bob", ("create",), exception, "policy-exception"),
             (Expect("policy-exception", ref(PAY, EXCEPTION), "bob"),),
             audited=(_get("create", "policyexceptions", code=201),),
             needs=(Need("Metadata", "create", "policyexceptions", group="kyverno.io"),)),
        case("policy-exception-changed", "bob widens the PolicyException to another "
             "namespace (a merge patch)",
             kubectl("bob", "-n", PAY, "patch", POLEX, EXCEPTION, "--type=merge", "-p",
                     json.dumps({"spec": {"match": {"any": [{"resources": {
                         "kinds": ["Pod"], "namespaces": [PAY, be.ORDERS]}}]}}})),
             (Expect("policy-exception", ref(PAY, EXCEPTION), "bob"),),
             audited=(_get("patch", "policyexceptions", code=200),),
             needs=(Need("Metadata", "patch", "policyexceptions", group="kyverno.io"),)),
        case("gatekeeper-excluded-namespaces", "the admin adds `payments` to Gatekeeper's "
             "Config `spec.match[].excludedNamespaces`",
             kubectl(ADMIN, "-n", crds.GATEKEEPER_NS, "patch", GK_CONFIG, "config",
                     "--type=merge", "-p", gk_body),
             (Expect("policy-exception", ref(crds.GATEKEEPER_NS, "config"), ADMIN),),
             audited=(_get("patch", "configs", level="Request", code=200),),
             needs=(_body("Request", "patch", "configs", crds.GATEKEEPER_CONFIG.group,
                          "admin"),)),
        case("gatekeeper-ignore-label", "the admin labels a namespace "
             "`admission.gatekeeper.sh/ignore=true`",
             kubectl(ADMIN, "label", "namespace", be.LEGACY, "admission.gatekeeper.sh/ignore=true"),
             (Expect("policy-exception", ref("", be.LEGACY), ADMIN),),
             design="a namespace's own events are cluster-scoped",
             audited=(label,), needs=ns_need),
        case("pod-security-restricted", "the admin tightens a namespace to "
             "`pod-security.kubernetes.io/enforce=restricted`: no bypass",
             kubectl(ADMIN, "label", "namespace", be.SANDBOX, f"{PSA}=restricted"),
             audited=(label,), needs=ns_need),
        case("pod-security-privileged", "the admin relabels that namespace "
             "`pod-security.kubernetes.io/enforce=privileged`",
             kubectl(ADMIN, "label", "--overwrite", "namespace", be.SANDBOX, f"{PSA}=privileged"),
             (Expect("pod-security-relabel", ref("", be.SANDBOX), ADMIN),),
             audited=(label,), needs=ns_need),
        case("pod-security-removed", "the admin removes the namespace's "
             "`pod-security.kubernetes.io/enforce` label",
             kubectl(ADMIN, "label", "namespace", be.SANDBOX, f"{PSA}-"),
             (Expect("pod-security-relabel", ref("", be.SANDBOX), ADMIN),),
             audited=(label,), needs=ns_need),
        case("namespace-unrelated-label", "the admin labels a namespace that never had a "
             "Pod Security label (`team=sandbox`): nothing was removed",
             kubectl(ADMIN, "label", "namespace", be.SCRATCH, "team=sandbox"),
             audited=(label,), needs=ns_need),
    )


def credentials() -> tuple[Case, ...]:
    """Tokens minted and Secrets written by hand; a 404 is no read."""
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": "orders-api-key", "namespace": PAY},
              "stringData": {"key": "replaced-not-a-real-key"}}
    key = ref(PAY, "orders-api-key")
    read_first = ("kubectl patch and kubectl replace GET the Secret first (200: its values "
                  "reached the client), which emergency-access counts as it counts every "
                  "read; issue 26 changes only reads answered 404")
    return (
        case("token-mint", "alice mints a token for a service account "
             "(`kubectl create token deployer`)",
             kubectl("alice", "-n", PAY, "create", "token", "deployer", "--duration=10m"),
             (Expect("token-mint", ref(PAY, "deployer"), "alice"),),
             audited=(_get("create", "serviceaccounts", "token", level="Metadata", code=201),),
             needs=(Need("Metadata", "create", "serviceaccounts", subresource="token"),)),
        case("secret-created", "alice creates a Secret (`kubectl create secret generic`)",
             kubectl("alice", "-n", PAY, "create", "secret", "generic", "orders-api-key",
                     "--from-literal=key=not-a-real-key"),
             (Expect("secret-write", key, "alice"),),
             audited=(_get("create", "secrets", level="Metadata", code=201),),
             needs=(Need("Metadata", "create", "secrets"),)),
        case("secret-patched", "alice patches the Secret (`kubectl patch secret`; kubectl "
             "reads it first)",
             kubectl("alice", "-n", PAY, "patch", "secret", "orders-api-key", "--type=merge",
                     "-p", '{"stringData":{"key":"rotated-not-a-real-key"}}'),
             (Expect("secret-write", key, "alice"), Expect("emergency-access", key, "alice")),
             design=read_first,
             audited=(_get("get", "secrets", code=200, user="alice", count=1),
                      _get("patch", "secrets", level="Metadata", code=200)),
             needs=(Need("Metadata", "patch", "secrets"),)),
        case("secret-updated", "alice replaces the Secret (`kubectl replace`: an update; "
             "kubectl reads it first)",
             _file("alice", ("replace",), secret, "orders-api-key"),
             (Expect("secret-write", key, "alice"), Expect("emergency-access", key, "alice")),
             design=read_first,
             audited=(_get("get", "secrets", code=200, user="alice", count=1),
                      _get("update", "secrets", level="Metadata", code=200)),
             needs=(Need("Metadata", "update", "secrets"),)),
        case("secret-deleted", "alice deletes the Secret; kubectl then waits, reading it "
             "until the read answers 404",
             kubectl("alice", "-n", PAY, "delete", "secret", "orders-api-key"),
             (Expect("secret-deletion", key, "alice"),),
             design="not found is not a read: the 404 get revealed nothing",
             audited=(_get("delete", "secrets", code=200),
                      _get("get", "secrets", code=404, user="alice")),
             needs=(Need("Metadata", "delete", "secrets"), Need("Metadata", "get", "secrets"))),
        case("secret-get-not-found", "alice reads a Secret that does not exist (404)",
             kubectl("alice", "-n", PAY, "get", "secret", "no-such-secret", check=False),
             design="not found is not a read",
             audited=(_get("get", "secrets", code=404, user="alice"),),
             needs=(Need("Metadata", "get", "secrets"),)),
    )


def pods_and_nodes() -> tuple[Case, ...]:
    """Pods deleted and evicted by hand, a node drained, a certificate approved."""
    pod_need = Need("RequestResponse", "delete", "pods",
                    why="the deleted pod's owner references, unless the cluster view knows it")
    return (
        case("manual-pod-delete", "bob deletes a pod that a Deployment's ReplicaSet owns "
             "(a restart by hand)",
             kubectl("bob", "-n", PAY, "delete", "pod", RESTART_POD, "--wait=false"),
             (Expect("manual-pod-delete", ref(PAY, "restart-me"), "bob"),),
             audited=(_get("delete", "pods", level="RequestResponse", code=200),),
             needs=(pod_need,),
             settle=SETTLE),
        case("bare-pod-delete", "bob deletes a pod no controller owns: no restart by hand",
             kubectl("bob", "-n", PAY, "delete", "pod", "scratch-shell", "--wait=false"),
             audited=(_get("delete", "pods", code=200),), needs=(pod_need,)),
        case("drain", "the admin drains a Node (`kubectl drain --ignore-daemonsets`): a "
             "cordon, then one eviction per pod (kubectl gives up waiting: no kubelet "
             "ends the pod)",
             kubectl(ADMIN, "drain", be.DRAIN_NODE, "--ignore-daemonsets",
                     "--delete-emptydir-data", "--timeout=3s", check=False),
             (Expect("node-access", ref("", be.DRAIN_NODE), ADMIN),
              Expect("eviction-by-hand", ref(PAY, "batch-worker"), ADMIN)),
             design="the cordon is a patch of the Node (node-access, optional, enabled)",
             audited=(_get("create", "pods", "eviction", code=201, count=1),
                      _get("patch", "nodes", code=200, count=1)),
             needs=(Need("Metadata", "create", "pods", subresource="eviction", who="admin"),
                    Need("Metadata", "patch", "nodes", who="admin"))),
        case("csr-approval", "the admin approves a certificate signing request "
             "(`kubectl certificate approve`)",
             kubectl(ADMIN, "certificate", "approve", be.CSR_NAME),
             (Expect("csr-approval", ref("", be.CSR_NAME), ADMIN),),
             audited=(_get("update", "certificatesigningrequests", "approval", code=200),),
             needs=(Need("Metadata", "update", "certificatesigningrequests",
                         group="certificates.k8s.io", subresource="approval", who="admin"),)),
    )


def services_and_namespaces() -> tuple[Case, ...]:
    """Services exposed outside the cluster, and a namespace deleted."""
    need = Need("Request", "create", "services",
                why="the Service's spec.type: the resulting object, else the request")
    return (
        case("service-nodeport-created", "bob creates a NodePort Service",
             kubectl("bob", "-n", PAY, "create", "service", "nodeport", "orders-np",
                     "--tcp=80:8080"),
             (Expect("service-exposure", ref(PAY, "orders-np"), "bob"),),
             audited=(_get("create", "services", level="Request", code=201),),
             needs=(need,)),
        case("service-loadbalancer-created", "bob creates a LoadBalancer Service",
             kubectl("bob", "-n", PAY, "create", "service", "loadbalancer", "orders-lb",
                     "--tcp=80:8080"),
             (Expect("service-exposure", ref(PAY, "orders-lb"), "bob"),),
             audited=(_get("create", "services", level="Request", code=201),),
             needs=(need,)),
        case("service-patched-to-nodeport", "bob changes a ClusterIP Service to NodePort",
             kubectl("bob", "-n", PAY, "patch", "service", "orders-internal",
                     "-p", '{"spec":{"type":"NodePort"}}'),
             (Expect("service-exposure", ref(PAY, "orders-internal"), "bob"),),
             audited=(_get("patch", "services", level="Request", code=200),),
             needs=(Need("Request", "patch", "services", why=need.why),)),
        case("service-clusterip-created", "bob creates a ClusterIP Service: nothing exposed",
             kubectl("bob", "-n", PAY, "create", "service", "clusterip", "orders-plain",
                     "--tcp=80:8080"),
             audited=(_get("create", "services", code=201),), needs=(need,)),
        case("namespace-deleted", "the admin deletes a namespace",
             kubectl(ADMIN, "delete", "namespace", be.SCRATCH, "--wait=false"),
             (Expect("namespace-deletion", ref("", be.SCRATCH), ADMIN),),
             audited=(_get("delete", "namespaces", code=200),),
             needs=(Need("Metadata", "delete", "namespaces", who="admin"),), settle=SETTLE),
    )


def exec_and_tokens() -> tuple[Case, ...]:
    """One refused exec is one attempt; what an exec's, an attach's and a drift's
    description tells its reader."""
    exec_need = (Need("Metadata", "get", "pods", subresource="exec"),)
    started = "ResponseStarted"
    drift = Need("Metadata", "patch", "deployments", group="apps")
    return (
        case("exec-refused-once", "dave may read pods but not exec: kubectl tries "
             "WebSocket (403), then falls back to SPDY (403) — one attempt",
             kubectl(be.READER, "-n", PAY, "exec", API_POD, "-c", "main", "--", "ls", "/",
                     check=False),
             (Expect("kubectl-exec", ref(PAY, "payments-api"), be.READER),),
             design="the same person refused on the same pod and subresource within a few "
                    "seconds is one attempt",
             audited=(_get("get", "pods", "exec", stage=started, code=403, count=1),
                      _get("create", "pods", "exec", stage=started, code=403, count=1)),
             needs=exec_need),
        case("exec-command", "alice runs `kubectl exec ... -- ls -la /srv/orders`: one "
             "`command=` per argument",
             kubectl("alice", "-n", PAY, "exec", API_POD, "-c", "main", "--", "ls", "-la",
                     "/srv/orders", check=False),
             (Expect("kubectl-exec", ref(PAY, "payments-api"), "alice",
                     mentions=("ls -la /srv/orders", "main")),),
             design="{command}: every command= of the URI, decoded, joined with spaces; "
                    "{container}",
             audited=(_get("get", "pods", "exec", stage=started, count=1),),
             needs=exec_need),
        case("exec-command-secrets", "alice runs a shell command holding a password, a "
             "`--password` value, a bearer token and a `--token=` value",
             kubectl("alice", "-n", PAY, "exec", API_POD, "-c", "main", "--", "sh", "-c",
                     SECRET_COMMAND, check=False),
             (Expect("kubectl-exec", ref(PAY, "payments-api"), "alice",
                     mentions=("sh -c", "psql"), absent=FAKE_SECRETS),),
             design="values that look like secrets are redacted in {command}",
             audited=(_get("get", "pods", "exec", stage=started, count=1),),
             needs=exec_need),
        case("attach-container", "bob attaches to a container (`kubectl attach -c main`)",
             kubectl("bob", "-n", PAY, "attach", DB_POD, "-c", "main", check=False),
             (Expect("kubectl-attach", ref(PAY, "postgres"), "bob", mentions=("main",)),),
             audited=(_get("get", "pods", "attach", stage=started, count=1),),
             needs=(Need("Metadata", "get", "pods", subresource="attach"),)),
        case("field-manager-edit", "alice changes a Deployment with `kubectl edit`",
             _edit,
             (Expect("config-drift", ref(PAY, "payments-api"), "alice",
                     mentions=("kubectl-edit",)),),
             audited=(_get("patch", "deployments", level="Request", code=200),),
             needs=(drift,), settle=SETTLE),
        case("field-manager-set", "alice changes a Deployment's image with `kubectl set "
             "image`",
             kubectl("alice", "-n", PAY, "set", "image", "deployment/payments-api",
                     "main=registry.invalid/conformance/app:2"),
             (Expect("config-drift", ref(PAY, "payments-api"), "alice",
                     mentions=("kubectl-set",)),),
             audited=(_get("patch", "deployments", level="Request", code=200),),
             needs=(drift,), settle=SETTLE),
        case("field-manager-rollout", "bob restarts a Deployment with `kubectl rollout "
             "restart`",
             kubectl("bob", "-n", PAY, "rollout", "restart", "deployment/payments-api"),
             (Expect("config-drift", ref(PAY, "payments-api"), "bob",
                     mentions=("kubectl-rollout",)),),
             audited=(_get("patch", "deployments", level="Request", code=200),),
             needs=(drift,), settle=SETTLE),
    )


# Run in this order: the proxies use the ClusterIP Service before it is exposed, and the
# unrelated namespace label comes before that namespace is deleted.
CASES: tuple[Case, ...] = _with_table_severity(
    proxies() + flux() + argocd() + policies() + credentials() + pods_and_nodes()
    + services_and_namespaces() + exec_and_tokens())
BY_NAME = {c.name: c for c in CASES}
