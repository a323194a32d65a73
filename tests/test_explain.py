"""`replay --explain`: every decision about an event is visible, with its reason."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from healert_webhook.cli import main
from healert_webhook.commands.explain import render, run_explain
from healert_webhook.config import Settings
from healert_webhook.detect import Detector
from healert_webhook.explain import EventDecision, explain_event
from healert_webhook.records import Stats
from healert_webhook.rules import parse_rules

from support.events import (
    GITOPS_CONTROLLERS,
    audit_event,
    exec_ws,
    gitops_deployment,
    pod_create,
    pod_object,
    secret_get,
    through_proxy,
    workload_patch,
)
from support.paths import ROOT

RULES = """
config:
  ignore_namespaces: [kube-system]
rules:
  - name: kubectl-exec
    severity: high
    ignore_system: true
    match: {resource: pods, subresource: exec}
  - name: prod-secrets
    severity: high
    match: {resource: secrets, verb: get, namespace_contains: prod, users: ["oidc:*"]}
  - name: secret-read
    severity: medium
    ignore_system: true
    match: {resource: secrets, verb: get, response: success}
  - name: gitops-drift
    severity: high
    match: {resources: [deployments], verbs: [patch], gitops_managed: true}
  - name: pod-create
    severity: low
    match: {resource: pods, verb: create}
"""


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(parse_rules(RULES), own_namespace="healert-system")


def rules_of(decision: EventDecision) -> dict[str, tuple[bool, str, str]]:
    return {r.rule: (r.candidate, r.reason, r.detail) for r in decision.rules}


def test_a_proxied_exec_names_the_person_the_proxy_and_the_entity(detector: Detector) -> None:
    decision = explain_event(detector, through_proxy(exec_ws(), "rancher"))
    assert decision.outcome == "friction"
    assert decision.actor == ("u-7gkmh (person, via system:serviceaccount:"
                              "cattle-impersonation-system:cattle-impersonation-u-7gkmh)")
    assert decision.entity == ("component:payments/payments-api (workload payments-api, "
                               "found by name rules (no cluster view): name, as a "
                               "Deployment's pod)")
    assert rules_of(decision)["kubectl-exec"] == (True, "fired", "every condition holds")
    assert rules_of(decision)["secret-read"] == (
        False, "resource", "resource pods is not secrets")
    assert rules_of(decision)["pod-create"][:2] == (False, "verb")


def test_the_closest_miss_is_the_decisive_reason_and_each_rule_says_why(
        detector: Detector) -> None:
    event = secret_get(ns="shop-prod", user="system:serviceaccount:ci:reader", code=403)
    decision = explain_event(detector, event)
    assert (decision.outcome, decision.reason) == ("skipped", "user")
    found = rules_of(decision)
    assert found["prod-secrets"] == (True, "user", "the actor system:serviceaccount:ci:reader "
                                     "is not one of users oidc:*")
    assert found["secret-read"] == (True, "system_actor", "the actor system:serviceaccount:"
                                    "ci:reader is internal and the rule has ignore_system: "
                                    "true")
    person = explain_event(detector, secret_get(ns="shop-prod", code=403,
                                                user="kate"))
    assert rules_of(person)["secret-read"] == (True, "response", "the response 403 is denied, "
                                               "not success")


def test_gitops_decisions_say_what_was_seen(detector: Detector) -> None:
    managed = gitops_deployment("checkout", "shop", "argocd")
    by_person = explain_event(detector, workload_patch(managed))
    assert by_person.outcome == "friction"
    user, manager, agent = GITOPS_CONTROLLERS["argocd"]
    by_tool = explain_event(detector, workload_patch(managed, field_manager=manager,
                                                     user=user["username"], user_agent=agent))
    assert rules_of(by_tool)["gitops-drift"][1:] == (
        "gitops_controller", "written by the GitOps controller system:serviceaccount:argocd:"
        "argocd-application-controller: applying Git is not drift")
    blind = explain_event(detector, workload_patch(managed, level="Metadata"))
    assert rules_of(blind)["gitops-drift"][1:] == (
        "gitops", "the event carries no object, so GitOps ownership cannot be seen (log this "
        "request at RequestResponse, or run the agent with its view of the cluster)")


def test_event_level_decisions(detector: Detector) -> None:
    cases: list[tuple[Any, str, str, str]] = [
        (dict(exec_ws(), stage="RequestReceived"), "skipped", "stage", "stage RequestReceived "
         "never fires; only ResponseStarted and ResponseComplete do"),
        (audit_event("watch", "leases", "", "kube-node-lease"), "skipped", "no_rule",
         "no enabled rule names this resource, subresource and verb"),
        (exec_ws(ns="healert-system"), "skipped", "namespace", "namespace healert-system is "
         "excluded for every rule (config.ignore_namespaces or the agent's own namespace)"),
        (exec_ws(user="system:node:worker-1"), "skipped", "system_actor", "the actor "
         "system:node:worker-1 is internal and impersonates nobody; every candidate rule has "
         "ignore_system: true"),
        (pod_create(pod_object("", "shop", generate_name="web-"), level="Metadata"),
         "skipped", "no_name", "the request names no object (no name, no generateName): "
         "there is no entity to charge"),
        ({**exec_ws(), "verb": ["get"]}, "invalid", "bad_verb",
         "the event is malformed (bad_verb)"),
        ([1, 2], "invalid", "not_an_object", "the item is not a JSON object"),
    ]
    for event, outcome, reason, detail in cases:
        decision = explain_event(detector, event)
        assert (decision.outcome, decision.reason, decision.detail) == (outcome, reason,
                                                                        detail), event
        # The same decision as the detector's own count.
        stats = Stats()
        detector.detect([event], stats)
        assert (stats.skipped if outcome == "skipped" else stats.invalid) == {reason: 1}


def test_a_timestamp_fixup_is_visible(detector: Detector) -> None:
    event = exec_ws()
    event["requestReceivedTimestamp"] = "2026-11-26T24:00:00Z"
    decision = explain_event(detector, event)
    assert decision.detail == ("1 friction event(s) (timestamp from stage: the receive time "
                               "is missing or not a time)")


def test_render_is_readable(detector: Detector) -> None:
    event = through_proxy(exec_ws(audit_id="a-1"), "teleport")
    decision = explain_event(detector, event)
    lines = render("audit.log #3", decision, set())
    assert lines == [
        "audit.log #3 auditID a-1 ResponseStarted get pods/exec payments/"
        "payments-api-7d9f8b6c4-xkj2p by alice@example.com (person, via "
        "system:serviceaccount:teleport-agent:teleport-kube-agent)",
        "  => 1 friction event(s), charged to component:payments/payments-api (workload "
        "payments-api, found by name rules (no cluster view): name, as a Deployment's pod)",
        "     kubectl-exec (high): get on pods/payments-api-7d9f8b6c4-xkj2p (ns:payments) by "
        "alice@example.com (via system:serviceaccount:teleport-agent:teleport-kube-agent)",
        "  rule kubectl-exec: fired",
        "  not candidates: prod-secrets (resource), secret-read (resource), gitops-drift "
        "(resource), pod-create (verb)",
    ]
    again = render("audit.log #4", decision, {decision.frictions[0].key})
    assert again[2].endswith("(already seen at another stage or in a resend: sent once)")
    hostile = explain_event(detector, exec_ws(user="eve\n\x1b[2J", pod="x\r\ny"))
    for line in render("f", hostile, set()):
        assert line.isascii() and line.isprintable()


def line(event: dict[str, Any]) -> bytes:
    return orjson.dumps({"kind": "Event", "apiVersion": "audit.k8s.io/v1", **event}) + b"\n"


@pytest.fixture
def logs(tmp_path: Path) -> tuple[Settings, list[str]]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    plain = tmp_path / "audit.log"
    started = through_proxy(exec_ws(audit_id="a-1"), "kube-oidc-proxy")
    plain.write_bytes(line(started) + line({**started, "stage": "ResponseComplete"})
                      + line(secret_get(audit_id="a-2", user="kate")) + b"{broken\n")
    rotated = tmp_path / "audit-2026-11-26T10-00-00.000.log.gz"
    rotated.write_bytes(gzip.compress(line(exec_ws(audit_id="a-3", user="system:node:n1"))))
    settings = Settings(rules_path=rules, k8s_namespace="healert-system")
    return settings, [str(plain), str(rotated)]


def test_run_explain_reads_files_like_replay(logs: tuple[Settings, list[str]]) -> None:
    settings, paths = logs
    out = io.StringIO()
    assert run_explain(settings, paths, audit_id=None, user=None, out=out) == 0
    text = out.getvalue()
    assert f"{paths[0]} #1 auditID a-1 ResponseStarted" in text
    assert f"{paths[0]} #2 auditID a-1 ResponseComplete" in text
    assert "(already seen at another stage or in a resend: sent once)" in text
    assert f"{paths[1]} #1 auditID a-3" in text
    assert "=> skipped (system_actor)" in text
    last = text.splitlines()[-2:]
    assert last[0] == "explain: 5 lines, 4 events shown, 3 friction events (before " \
        "removing repeats)"
    assert last[1].startswith(f"  invalid line {paths[0]}:4: bad_json")


def test_run_explain_filters_by_audit_id_and_by_user(logs: tuple[Settings, list[str]]) -> None:
    settings, paths = logs
    out = io.StringIO()
    run_explain(settings, paths, audit_id="a-2", user=None, out=out)
    shown = [ln for ln in out.getvalue().splitlines() if " auditID " in ln]
    assert len(shown) == 1 and "auditID a-2" in shown[0]
    # A person behind a proxy is found by their own name and by the proxy's.
    for who in ("oidc:jane@example.com", "system:serviceaccount:kube-oidc-proxy:"
                "kube-oidc-proxy"):
        out = io.StringIO()
        run_explain(settings, paths, audit_id=None, user=who, out=out)
        shown = [ln for ln in out.getvalue().splitlines() if " auditID " in ln]
        assert [ln.split()[3] for ln in shown] == ["a-1", "a-1"], who


def test_run_explain_exit_codes(logs: tuple[Settings, list[str]], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    settings, paths = logs
    out = io.StringIO()
    assert run_explain(settings, [*paths, str(tmp_path / "gone.log")], audit_id=None,
                       user=None, out=out) == 1
    assert f"cannot read {tmp_path / 'gone.log'}" in out.getvalue()
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules:\n  - name: x\n")
    assert main(["replay", "--explain", "--rules", str(broken), *paths]) == 2
    assert "missing 'severity'" in capsys.readouterr().err


def test_explain_with_the_shipped_rules_over_the_real_fixtures(fixtures_dir: Path) -> None:
    settings = Settings(rules_path=ROOT / "rules.yaml")
    paths = sorted(str(p) for p in fixtures_dir.rglob("*") if p.suffix in (".json", ".log",
                                                                              ".ndjson"))
    out = io.StringIO()
    assert run_explain(settings, paths, audit_id=None, user="minikube-user", out=out) == 0
    text = out.getvalue()
    assert "charged to component:foo/test-pod (workload test-pod, found by name rules (no " \
           "cluster view): name, as a StatefulSet's pod)" in text
    assert "kubectl exec on pods/nginx-deployment-7998647bdf-phvq7" in text
    assert text.splitlines()[-1].endswith(", 5 friction events (before removing repeats)")


# --- issue 26: the object condition and the opt-out, explained -----------------------

def test_object_decisions_say_what_the_request_did_to_the_field() -> None:
    text = (ROOT / "rules.yaml").read_text()
    detector = Detector(parse_rules(text), own_namespace="healert-system")

    def app_patch(level: str, body: Any) -> dict[str, Any]:
        event = audit_event("patch", "applications", "orders", "argocd", user="bob",
                            level=level)
        if body is not None:
            event["requestObject"] = body
        return event

    retarget = explain_event(detector, app_patch("Request", {"spec": {"source": {
        "targetRevision": "v2"}}}))
    assert (retarget.outcome, retarget.reason) == ("skipped", "object")
    said = rules_of(retarget)["gitops-suspend"][2]
    assert "spec.syncPolicy.automated absent on applications: the patch leaves " \
           "spec.syncPolicy.automated as it was" in said
    assert "spec.suspend=true on buckets|" in said and ": kustomizations is not" not in said
    assert "applications is not one of those" in said  # Flux's kinds
    blind = explain_event(detector, app_patch("Metadata", None))
    assert rules_of(blind)["gitops-suspend"][1:] == (
        "object_missing", "the event carries no object (logged at Metadata level): the audit "
        "policy must log patch, update of applications, buckets, gitrepositories, helmcharts, "
        "helmreleases, helmrepositories, imagerepositories, imageupdateautomations, "
        "kustomizations, ocirepositories and any resource (for metadata.annotations."
        "\"kustomize.toolkit.fluxcd.io/reconcile\") at Request or higher (the request states "
        "what it sets; RequestResponse adds the resulting object)")
    removed = explain_event(detector, app_patch("Request", {"spec": {"syncPolicy": {
        "automated": None}}}))
    assert removed.outcome == "friction"
    assert removed.entity.startswith("component:argocd/orders ")
    assert rules_of(removed)["gitops-suspend"] == (True, "fired", "every condition holds")
    assert rules_of(removed)["pipeline-skip"][1:] == (
        "namespace", "namespace argocd is in config.ignore_namespaces")


def test_a_not_found_answer_is_explained() -> None:
    detector = Detector(parse_rules(RULES))
    decision = explain_event(detector, secret_get(ns="shop-prod", code=404, user="oidc:kate"))
    assert rules_of(decision)["prod-secrets"][1:] == (
        "response", "the response 404 Not Found concerns no object: nothing was read, "
        "changed or entered (a rule whose response names error counts these)")
