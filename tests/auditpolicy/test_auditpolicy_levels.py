"""The level a rule states from what its checks read: an annotation on a read or a delete
is only in the answer, and GitOps ownership of a kind the view does not watch only in the
object the event carries. Each test states what the apiserver records and checks the
levels, the generated policy or the checker against it.
"""

from __future__ import annotations

from typing import Any

from healert_webhook.auditpolicy.check import FindingKind, check
from healert_webhook.auditpolicy.document import Level, parse_policy
from healert_webhook.auditpolicy.evaluate import Identity, Request, evaluate
from healert_webhook.auditpolicy.generate import generate
from healert_webhook.auditpolicy.needs import needs_of, rule_level
from healert_webhook.cluster.view import View
from healert_webhook.detect import Detector
from healert_webhook.records import Stats
from healert_webhook.rules import RuleSet, parse_rules
from healert_webhook.rules.matchers import DEFAULT_GITOPS

from support.events import audit_event, pod_object

ALICE = Identity("alice", ("system:authenticated",))


def _rules(match: str) -> RuleSet:
    return parse_rules("config: {}\nrules:\n  - name: protected\n    severity: high\n"
                       f"    ignore_system: true\n    match: {match}\n")


def _fires(ruleset: RuleSet, event: dict[str, Any]) -> bool:
    return bool(Detector(ruleset).detect([event], Stats()))


# --- an annotation on a read or a delete is only in the answer ----------------------------

ANNOTATED_DELETE = ('{resource: pods, verb: delete, '
                    'annotation: "example.com/protected=true"}')


def _pod_delete(level: str) -> dict[str, Any]:
    """`kubectl delete pod` as audited at `level`: the request states only DeleteOptions,
    the answer (RequestResponse) is the pod deleted, annotations and all (pods' storage
    returns the deleted object)."""
    event = audit_event("delete", "pods", "payments-api-0", "payments", level=level)
    if level in ("Request", "RequestResponse"):
        event["requestObject"] = {"kind": "DeleteOptions", "apiVersion": "v1",
                                  "propagationPolicy": "Background"}
    if level == "RequestResponse":
        pod = pod_object("payments-api-0", "payments")
        pod["metadata"]["annotations"] = {"example.com/protected": "true"}
        event["responseObject"] = pod
    return event


def test_an_annotation_on_a_deleted_object_is_seen_only_at_request_response() -> None:
    """What the level claim below rests on: detection sees the annotation of a deleted
    pod only in the answer."""
    ruleset = _rules(ANNOTATED_DELETE)
    assert _fires(ruleset, _pod_delete("RequestResponse"))
    assert not _fires(ruleset, _pod_delete("Request"))


def test_an_annotation_rule_on_deletes_states_request_response() -> None:
    rule = _rules(ANNOTATED_DELETE).enabled[0]
    assert rule_level(rule, cluster_view=True) is Level.REQUEST_RESPONSE
    assert rule_level(rule, cluster_view=False) is Level.REQUEST_RESPONSE


def test_the_generated_policy_records_an_annotated_delete_with_its_answer() -> None:
    ruleset = _rules(ANNOTATED_DELETE)
    policy = parse_policy(generate(needs_of(ruleset, cluster_view=True))).policy
    assert policy is not None
    decision = evaluate(policy, Request("delete", ALICE, None, "", "pods", "", "payments",
                                        "payments-api-0"))
    assert decision.level is Level.REQUEST_RESPONSE


def test_check_reports_a_policy_that_records_annotated_gets_without_their_answer() -> None:
    """A rule on any verb: a get's object is only in the answer too."""
    ruleset = _rules('{resource: deployments, annotation: "example.com/protected=true"}')
    policy = ("apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n"
              "rules:\n  - level: Request\n")
    starved = [f for f in check(policy, needs_of(ruleset, cluster_view=True))
               if f.kind is FindingKind.STARVED]
    assert any("`get deployments`" in f.message for f in starved), starved


def test_an_annotation_rule_on_writes_still_needs_only_the_request() -> None:
    """The shipped pipeline-skip's level is unchanged: a write states the object."""
    rule = _rules('{verbs: [create, update, patch], annotation: "a/b=c"}').enabled[0]
    assert rule_level(rule, cluster_view=True) is Level.REQUEST


# --- the cluster view knows GitOps ownership only of the kinds it watches -----------------

GITOPS_INGRESS = "{resources: [ingresses], verbs: [update, patch], gitops_managed: true}"


def _view() -> View:
    """A view of the cluster keeping every GitOps key, as the agent builds it."""
    return View(600.0, label_keys=DEFAULT_GITOPS.labels,
                annotation_keys=DEFAULT_GITOPS.annotations)


def _ingress_patch(level: str) -> dict[str, Any]:
    """`kubectl patch ingress` of an Argo CD-managed Ingress, audited at `level`."""
    event = audit_event("patch", "ingresses", "shop", "payments", level=level)
    event["objectRef"]["apiGroup"] = "networking.k8s.io"
    if level in ("Request", "RequestResponse"):
        event["requestObject"] = {"spec": {"rules": [{"host": "shop.example.com"}]}}
    if level == "RequestResponse":
        event["responseObject"] = {
            "kind": "Ingress", "apiVersion": "networking.k8s.io/v1",
            "metadata": {"name": "shop", "namespace": "payments", "annotations": {
                "argocd.argoproj.io/tracking-id": "shop:networking.k8s.io/Ingress:payments/shop"}},
            "spec": {"rules": [{"host": "shop.example.com"}]}}
    return event


def test_with_the_view_gitops_ownership_of_an_unwatched_kind_needs_the_answer() -> None:
    """What the level claim below rests on: the view does not watch Ingresses, so with
    it running the rule still fires only when the event carries the object."""
    ruleset = _rules(GITOPS_INGRESS)
    detector = Detector(ruleset, view=_view())
    assert detector.detect([_ingress_patch("RequestResponse")], Stats())
    assert not detector.detect([_ingress_patch("Metadata")], Stats())


def test_a_gitops_rule_on_an_unwatched_kind_needs_request_response_with_the_view() -> None:
    ruleset = _rules(GITOPS_INGRESS)
    assert rule_level(ruleset.enabled[0], cluster_view=True) is Level.REQUEST_RESPONSE
    policy = parse_policy(generate(needs_of(ruleset, cluster_view=True))).policy
    assert policy is not None
    decision = evaluate(policy, Request("patch", ALICE, None, "networking.k8s.io",
                                        "ingresses", "", "payments", "shop"))
    assert decision.level is Level.REQUEST_RESPONSE


def test_a_gitops_rule_on_watched_workloads_needs_only_metadata_with_the_view() -> None:
    """The view holds the workloads' GitOps keys: no body is needed for them."""
    rule = _rules("{resources: [deployments, statefulsets], verbs: [update, patch], "
                  "gitops_managed: true}").enabled[0]
    assert rule_level(rule, cluster_view=True) is Level.METADATA
    assert rule_level(rule, cluster_view=False) is Level.REQUEST_RESPONSE
