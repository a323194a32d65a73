"""What people do with the real kubectl, and the friction events that must follow.

Each scenario runs kubectl as one identity against the pods, Deployments and Secrets of
`objects.py`. Expectations are written against the product's detection semantics and
the shipped rules.yaml (with every optional rule enabled, see agents.all_rules_enabled),
never against what today's agent happens to do: one `Expect` per friction event, by
rule, entity and actor.

The pods are the controllers' (their names end in generated suffixes), so a scenario names
a pod by its workload (`PodOf`) and the name is looked up when it runs. kubectl commands
that reach a kubelet (exec, attach, port-forward, cp, logs) fail after admission, because
no kubelet runs; they are audited all the same, which is all that matters here. Their exit
status is therefore not checked.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance.harness import objects
from conformance.harness.cluster import ControlPlane

PROXY = f"system:serviceaccount:{objects.PROXY_NS}:{objects.PROXY_SA}"


@dataclass(frozen=True)
class PodOf:
    """The running pod of a workload, named when the scenario runs (see objects.py)."""

    namespace: str
    kind: str
    name: str

    def resolve(self, cp: ControlPlane) -> str:
        """The pod's name in this cluster."""
        return cp.running_pod(self.namespace, self.kind, self.name)


API_POD = PodOf("payments", "Deployment", "payments-api")   # owner: a ReplicaSet
DB_POD = "postgres-0"                                        # a StatefulSet's pod
AGENT_POD = PodOf("payments", "DaemonSet", "nvidia-dcgm")   # <owner>-<5 chars>
SHOP_POD = PodOf("shop", "Deployment", "checkout")          # labelled backstage.io/kubernetes-id
Arg = str | PodOf
BYPASS = "policy.admission.k8s.io/bypass=true"
COLON_ROLE = "system:healert-conformance-aggregate"
COLON_BINDING = "system:healert-conformance-binding"
NO_WEBSOCKETS = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false",
                 "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}


@dataclass(frozen=True)
class Expect:
    """One friction event: its rule, entity_ref and actor (and text its description has)."""

    rule: str
    entity: str
    actor: str
    mentions: tuple[str, ...] = ()   # substrings the description must contain
    only_if_rule: bool = False       # expected only when the rules file defines `rule`
    absent: tuple[str, ...] = ()     # substrings the description must not contain
    severity: str | None = None      # the friction event's severity, when given


@dataclass(frozen=True)
class Fact:
    """Audit events the real apiserver must have written for a scenario (how it audits).

    Every given field must match; `count`, when given, is the exact number of such events.
    Levels are the policy's to decide (the suite checks every event against it); a fact
    names one only where every policy the suite generates agrees.
    """

    verb: str
    resource: str
    subresource: str | None = None
    stage: str | None = None
    level: str | None = None
    code: int | None = None
    user: str | None = None            # "" for an event with `user: {}`
    impersonated: str | None = None
    count: int | None = None

    def matches(self, event: dict[str, Any]) -> bool:
        """True when `event` has every field this fact names."""
        ref = event.get("objectRef") or {}
        wanted: list[tuple[Any, Any]] = [
            (self.verb, event.get("verb")), (self.resource, ref.get("resource")),
            (self.subresource, ref.get("subresource")), (self.stage, event.get("stage")),
            (self.level, event.get("level")),
            (self.code, (event.get("responseStatus") or {}).get("code")),
            (self.user, (event.get("user") or {}).get("username", "")),
            (self.impersonated, (event.get("impersonatedUser") or {}).get("username")),
        ]
        return all(want is None or want == got for want, got in wanted)


@dataclass(frozen=True)
class Scenario:
    """A named thing someone does, and what it must produce."""

    name: str
    what: str                                    # one line for the fixtures README
    run: Callable[[ControlPlane, Path], None]
    expect: tuple[Expect, ...] = ()
    fixture: bool = True                         # keep its audit events as a fixture
    design: str = ""                             # the detection rule that decides it
    audited: tuple[Fact, ...] = ()               # what the apiserver must have audited
    # What its committed fixture gives, when that differs from `expect`: the fixtures were
    # recorded under the hand-written policy, the suite runs under the generated one.
    recorded: tuple[Expect, ...] | None = None


# The agent counts a person's session attempts on one pod in one ten-second window once
# (kubectl's WebSocket try and its SPDY fallback, `audit.session_window`).
SESSION_WINDOW = 10.5


def _then_session_window(step: Callable[[ControlPlane, Path], None]
                         ) -> Callable[[ControlPlane, Path], None]:
    """`step`, then the session window passes: the next attempt by the same person on
    the same pod is its own friction event."""
    def run(cp: ControlPlane, work: Path) -> None:
        step(cp, work)
        time.sleep(SESSION_WINDOW)
    return run


def _pod_json(namespace: str, generate_name: str) -> str:
    """A one-container pod whose name the apiserver generates from `generate_name`."""
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "generateName": generate_name, "namespace": namespace}, "spec": {"containers": [
            {"name": "shell", "image": "registry.invalid/conformance/shell:1"}]}})


def _editor(work: Path) -> dict[str, str]:
    """A KUBE_EDITOR that changes the replica count in the file kubectl opens."""
    script = work / "editor.sh"
    script.write_text("#!/bin/sh\nsed -i 's/^  replicas: [0-9]*$/  replicas: 4/' \"$1\"\n")
    os.chmod(script, 0o755)  # noqa: S103 - a script kubectl must execute
    return {"KUBE_EDITOR": str(script), "EDITOR": str(script)}


def _cp_source(work: Path) -> str:
    source = work / "notes.txt"
    source.write_text("copied by the conformance suite\n")
    return str(source)


def _kubectl(who: str, *args: Arg, env: dict[str, str] | None = None,
             check: bool = True, timeout: float = 60) -> Callable[[ControlPlane, Path], None]:
    """A step that runs kubectl as `who` (pods named by workload are looked up first)."""
    def run(cp: ControlPlane, _work: Path) -> None:
        argv = [a.resolve(cp) if isinstance(a, PodOf) else a for a in args]
        cp.kubectl(who, *argv, env=env, check=check, timeout=timeout)
    return run


def _seq(*steps: Callable[[ControlPlane, Path], None]) -> Callable[[ControlPlane, Path], None]:
    def run(cp: ControlPlane, work: Path) -> None:
        for step in steps:
            step(cp, work)
    return run


def _pay(name: str) -> str:
    return f"component:payments/{name}"


def _shop(name: str) -> str:
    return f"component:shop/{name}"


def _edit(cp: ControlPlane, work: Path) -> None:
    cp.kubectl("alice", "-n", "payments", "edit", "deployment", "payments-api",
               env=_editor(work))


def _cp(cp: ControlPlane, work: Path) -> None:
    cp.kubectl("alice", "cp", _cp_source(work), f"payments/{AGENT_POD.resolve(cp)}:/tmp/notes.txt",
               "-c", "main", check=False)


def _create_named(who: str, namespace: str, name: str) -> Callable[[ControlPlane, Path], None]:
    def run(cp: ControlPlane, work: Path) -> None:
        path = work / f"{name}.json"
        pod = json.loads(_pod_json(namespace, ""))
        pod["metadata"] = {"name": name, "namespace": namespace}
        path.write_text(json.dumps(pod))
        cp.kubectl(who, "create", "-f", str(path), check=False)
    return run


def _create_generated(who: str, namespace: str, prefix: str,
                      extra: tuple[str, ...] = ()) -> Callable[[ControlPlane, Path], None]:
    def run(cp: ControlPlane, work: Path) -> None:
        path = work / f"{prefix}pod.json"
        path.write_text(_pod_json(namespace, prefix))
        cp.kubectl(who, *extra, "create", "-f", str(path))
    return run


def _exec_and_stream() -> tuple[Scenario, ...]:
    pay_exec = ("-n", "payments", "exec", API_POD, "-c", "main", "--", "ls", "/")
    started, complete = "ResponseStarted", "ResponseComplete"
    return (
        Scenario("exec-websocket", "alice runs `kubectl exec` (WebSocket, kubectl's default)",
                 _kubectl("alice", *pay_exec, check=False),
                 (Expect("kubectl-exec", _pay("payments-api"), "alice"),),
                 audited=(Fact("get", "pods", "exec", stage=started, code=101, count=1),
                          Fact("get", "pods", "exec", stage=complete, count=1))),
        Scenario("exec-spdy", "alice runs `kubectl exec` over SPDY "
                 "(KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false), sent as verb create",
                 _kubectl("alice", *pay_exec, env=NO_WEBSOCKETS, check=False),
                 (Expect("kubectl-exec", _pay("payments-api"), "alice"),),
                 audited=(Fact("create", "pods", "exec", stage=started, count=1),)),
        Scenario("exec-denied", "eve, bound to no role, tries `kubectl exec`: kubectl stops "
                 "at reading the pod (403), no exec request is made",
                 _kubectl("eve", *pay_exec, check=False),
                 # The pod read itself is not recorded: no rule needs it.
                 audited=(Fact("get", "pods", "exec", user="eve", count=0),
                          Fact("create", "pods", "exec", user="eve", count=0))),
        Scenario("attach", "bob runs `kubectl attach` to a StatefulSet's pod",
                 _kubectl("bob", "-n", "payments", "attach", DB_POD, "-c", "main", check=False),
                 (Expect("kubectl-attach", _pay("postgres"), "bob"),),
                 audited=(Fact("get", "pods", "attach", stage=started, count=1),)),
        Scenario("port-forward", "bob runs `kubectl port-forward`: WebSocket first, then "
                 "kubectl falls back to SPDY when the upgrade fails (two requests, one "
                 "attempt)",
                 _then_session_window(_kubectl("bob", "-n", "payments", "port-forward",
                                               f"pod/{DB_POD}", ":5432", check=False,
                                               timeout=30)),
                 (Expect("port-forward", _pay("postgres"), "bob"),),
                 design="the two requests of one attempt are one friction event; the "
                        "SPDY scenario after it waits for the next session window",
                 audited=(Fact("get", "pods", "portforward", stage=started, count=1),
                          Fact("create", "pods", "portforward", stage=started, count=1))),
        Scenario("port-forward-spdy", "bob runs `kubectl port-forward` over SPDY "
                 "(KUBECTL_PORT_FORWARD_WEBSOCKETS=false)",
                 _kubectl("bob", "-n", "payments", "port-forward", f"pod/{DB_POD}", ":5432",
                    env=NO_WEBSOCKETS, check=False, timeout=30),
                 (Expect("port-forward", _pay("postgres"), "bob"),),
                 audited=(Fact("create", "pods", "portforward", stage=started, count=1),)),
        Scenario("cp", "alice copies a file into a DaemonSet's pod with `kubectl cp` "
                 "(two execs: a directory test, then tar)", _cp,
                 (Expect("kubectl-exec", _pay("nvidia-dcgm"), "alice"),
                  Expect("kubectl-exec", _pay("nvidia-dcgm"), "alice")),
                 design="a DaemonSet's pod is <owner>-<5 chars>",
                 audited=(Fact("get", "pods", "exec", stage=started, count=2),)),
        Scenario("logs", "alice reads a pod's logs with `kubectl logs`",
                 _kubectl("alice", "-n", "payments", "logs", API_POD, "-c", "main", check=False),
                 (Expect("pod-log-access", _pay("payments-api"), "alice"),),
                 audited=(Fact("get", "pods", "log", stage=started, count=1),)),
        Scenario("debug-ephemeral", "alice adds an ephemeral container with `kubectl debug`",
                 _kubectl("alice", "-n", "payments", "debug", API_POD, "--image=busybox:1.36",
                    "--container=debugger"),
                 (Expect("ephemeral-debug", _pay("payments-api"), "alice"),),
                 audited=(Fact("patch", "pods", "ephemeralcontainers", code=200),)),
        Scenario("debug-node", "the admin runs `kubectl debug node/...` (a node-debugger pod)",
                 _kubectl("conformance-admin", "-n", "payments", "debug",
                    f"node/{objects.NODE}", "--image=busybox:1.36"),
                 (Expect("config-drift", _pay(f"node-debugger-{objects.NODE}"),
                         "conformance-admin"),),
                 design="An entity never depends on the audit level: when the carried object "
                        "has no such label and no owner, the same name rules apply",
                 audited=(Fact("create", "pods", code=201),)),
    )


def _secrets_and_writes() -> tuple[Scenario, ...]:
    return (
        Scenario("secret-get", "alice reads a Secret with `kubectl get secret`",
                 _kubectl("alice", "-n", "payments", "get", "secret", "payments-db", "-o", "name"),
                 (Expect("emergency-access", _pay("payments-db"), "alice"),),
                 audited=(Fact("get", "secrets", level="Metadata", code=200),)),
        Scenario("secret-get-denied", "eve tries to read a Secret (403)",
                 _kubectl("eve", "-n", "payments", "get", "secret", "payments-db", check=False),
                 (Expect("emergency-access", _pay("payments-db"), "eve"),),
                 audited=(Fact("get", "secrets", code=403, user="eve"),)),
        Scenario("secret-list", "alice lists Secrets, eve tries to (403): lists are not reads "
                 "of one Secret", _seq(
                     _kubectl("alice", "-n", "payments", "get", "secrets"),
                     _kubectl("eve", "-n", "payments", "get", "secrets", check=False)),
                 # Not even recorded: no rule needs a list of Secrets.
                 audited=(Fact("list", "secrets", count=0),)),
        Scenario("bypass-annotation", "bob annotates a Deployment with "
                 "policy.admission.k8s.io/bypass=true, then removes the annotation",
                 _seq(_kubectl("bob", "-n", "payments", "annotate", "deployment", "payments-api",
                         BYPASS),
                      _kubectl("bob", "-n", "payments", "annotate", "deployment", "payments-api",
                         BYPASS.split("=", maxsplit=1)[0] + "-")),
                 # The removal is a write too, but its objects no longer carry the annotation.
                 (Expect("pipeline-skip", _pay("payments-api"), "bob"),
                  Expect("config-drift", _pay("payments-api"), "bob"),
                  Expect("config-drift", _pay("payments-api"), "bob")),
                 audited=(Fact("patch", "deployments", code=200,
                               count=2),)),
        Scenario("scale", "alice runs `kubectl scale` (the scale subresource)",
                 _kubectl("alice", "-n", "payments", "scale", "deployment", "payments-api",
                    "--replicas=3"),
                 (Expect("config-drift", _pay("payments-api"), "alice"),),
                 audited=(Fact("patch", "deployments", "scale"),)),
        Scenario("rollout-restart", "bob runs `kubectl rollout restart`",
                 _kubectl("bob", "-n", "payments", "rollout", "restart", "deployment/payments-api"),
                 (Expect("config-drift", _pay("payments-api"), "bob"),),
                 audited=(Fact("patch", "deployments"),)),
        Scenario("edit", "alice runs `kubectl edit` (an editor changes replicas)", _edit,
                 (Expect("config-drift", _pay("payments-api"), "alice"),),
                 audited=(Fact("patch", "deployments", code=200),)),
        Scenario("gitops-patch", "bob patches a Deployment that Argo CD tracks "
                 "(argocd.argoproj.io/tracking-id)",
                 _kubectl("bob", "-n", "shop", "patch", "deployment", "checkout", "--type=merge",
                    "-p", '{"spec":{"replicas":2}}'),
                 (Expect("config-drift", _shop("checkout"), "bob"),
                  Expect("gitops-drift", _shop("checkout"), "bob", only_if_rule=True)),
                 audited=(Fact("patch", "deployments"),)),
        Scenario("gitops-managed-patch", "bob patches a Deployment whose fields Argo CD's "
                 "controller manages (managedFields only, no annotation)",
                 _kubectl("bob", "-n", "payments", "patch", "deployment", "ledger", "--type=merge",
                    "-p", '{"spec":{"replicas":3}}'),
                 (Expect("config-drift", _pay("ledger"), "bob"),
                  Expect("gitops-drift", _pay("ledger"), "bob", only_if_rule=True)),
                 audited=(Fact("patch", "deployments", code=200),)),
        Scenario("pod-label-patch", "bob labels a pod that carries backstage.io/kubernetes-id",
                 _kubectl("bob", "-n", "shop", "label", "pod", SHOP_POD, "touched=yes"),
                 (Expect("config-drift", _shop("shop-checkout"), "bob"),),
                 audited=(Fact("patch", "pods"),)),
        Scenario("generate-name", "bob creates a pod with metadata.generateName",
                 _create_generated("bob", "shop", "web-shell-"),
                 (Expect("config-drift", _shop("web-shell"), "bob"),),
                 design="metadata.generateName, when present, is the name with its suffix "
                        "already known",
                 audited=(Fact("create", "pods", code=201),)),
    )


def _identities_and_cluster() -> tuple[Scenario, ...]:
    pay_exec = ("-n", "payments", "exec", API_POD, "-c", "main", "--", "ls", "/")
    return (
        Scenario("impersonate-as", "alice reads a Secret `--as=bob`",
                 _kubectl("alice", "--as=bob", "-n", "payments", "get", "secret", "payments-db",
                    "-o", "name"),
                 (Expect("emergency-access", _pay("payments-db"), "alice"),),
                 design="when a person impersonates anyone, the person is the actor",
                 audited=(Fact("get", "secrets", user="alice", impersonated="bob"),)),
        Scenario("impersonate-service-account", "alice scales a Deployment "
                 "`--as=system:serviceaccount:payments:deployer`",
                 _kubectl("alice", f"--as=system:serviceaccount:payments:{objects.DEPLOYER_SA}",
                    "-n", "payments", "scale", "deployment", "payments-api", "--replicas=2"),
                 (Expect("config-drift", _pay("payments-api"), "alice"),),
                 design="when a person impersonates anyone, the person is the actor",
                 audited=(Fact("patch", "deployments", "scale", user="alice",
                               impersonated=f"system:serviceaccount:payments:"
                                            f"{objects.DEPLOYER_SA}"),)),
        Scenario("proxy-exec", "an access proxy's service account execs `--as=bob`",
                 _kubectl("access-proxy", "--as=bob", *pay_exec, check=False),
                 (Expect("kubectl-exec", _pay("payments-api"), "bob",
                         mentions=(objects.PROXY_SA,)),),
                 design="The actor is the person: an internal identity impersonating a "
                        "non-internal user gives actor = that user, the description names "
                        "the proxy",
                 audited=(Fact("get", "pods", "exec", user=PROXY, impersonated="bob",
                               stage="ResponseStarted"),)),
        Scenario("proxy-secret-get", "an access proxy's service account reads a Secret "
                 "`--as=bob`", _kubectl("access-proxy", "--as=bob", "-n", "payments", "get",
                                        "secret", "payments-db", "-o", "name"),
                 (Expect("emergency-access", _pay("payments-db"), "bob",
                         mentions=(objects.PROXY_SA,)),),
                 fixture=False,
                 design="The actor is the person (the read must be audited to be seen)"),
        Scenario("proxy-patch", "an access proxy's service account annotates a Deployment "
                 "`--as=bob` (audited as the service account, which may be an access proxy: "
                 "the policy cannot see whom it acts for)",
                 _kubectl("access-proxy", "--as=bob", "-n", "payments", "annotate", "deployment",
                    "payments-api", "reviewed-by=bob", "--overwrite"),
                 (Expect("config-drift", _pay("payments-api"), "bob",
                         mentions=(objects.PROXY_SA,)),),
                 design="The actor is the person; an entity never depends on the audit level",
                 audited=(Fact("patch", "deployments", user=PROXY, impersonated="bob"),)),
        Scenario("proxy-generate-name", "an access proxy's service account creates a pod "
                 "with generateName `--as=bob` (its name is only in the object)",
                 _create_generated("access-proxy", "payments", "proxy-shell-", ("--as=bob",)),
                 (Expect("config-drift", _pay("proxy-shell"), "bob",
                         mentions=(objects.PROXY_SA,)),),
                 design="metadata.generateName is the name with its suffix known; the "
                        "generated policy records a create's object for any service account "
                        "that may be an access proxy",
                 audited=(Fact("create", "pods", user=PROXY, impersonated="bob", code=201),),
                 # Recorded at Metadata by the hand-written policy: no name anywhere, so
                 # the event is skipped with its own reason.
                 recorded=()),
        Scenario("proxy-self-create", "the access proxy's service account creates a pod "
                 "as itself (no right to: 403; an internal actor)",
                 _create_named("access-proxy", "payments", "proxy-self-shell"),
                 audited=(Fact("create", "pods", user=PROXY, code=403),)),
        Scenario("bad-token", "a request with a token the apiserver does not know (401)",
                 _kubectl("bad-token", "-n", "payments", "get", "secret", "payments-db",
                    check=False),
                 design="An empty username (failed authentication) counts as internal",
                 audited=(Fact("get", "secrets", stage="ResponseStarted", code=401, user="",
                               count=1),)),
        Scenario("clusterrole-colon", "the admin creates a ClusterRole and a "
                 "ClusterRoleBinding whose names hold colons",
                 _seq(_kubectl("conformance-admin", "create", "clusterrole", COLON_ROLE,
                         "--verb=get", "--resource=pods"),
                      _kubectl("conformance-admin", "create", "clusterrolebinding", COLON_BINDING,
                         f"--clusterrole={COLON_ROLE}", "--user=bob")),
                 (Expect("rbac-change", "component:default/"
                         "system-healert-conformance-aggregate", "conformance-admin"),
                  Expect("rbac-change", "component:default/"
                         "system-healert-conformance-binding", "conformance-admin")),
                 audited=(Fact("create", "clusterroles", code=201),
                          Fact("create", "clusterrolebindings", code=201))),
        Scenario("namespace-create", "the admin creates a namespace (cluster-scoped)",
                 _kubectl("conformance-admin", "create", "namespace", "scratch-team"),
                 (Expect("namespace-creation", "component:default/scratch-team",
                         "conformance-admin"),),
                 audited=(Fact("create", "namespaces", code=201),)),
    )


def _scenarios() -> tuple[Scenario, ...]:
    return _exec_and_stream() + _secrets_and_writes() + _identities_and_cluster()


SCENARIOS: tuple[Scenario, ...] = _scenarios()
BY_NAME = {s.name: s for s in SCENARIOS}


def expected_for(scenario: Scenario, rules: set[str]) -> list[Expect]:
    """The scenario's expectations, given the rule names the agent runs."""
    return [e for e in scenario.expect if not e.only_if_rule or e.rule in rules]

