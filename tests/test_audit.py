"""Accessors over audit events: times, the dedup key, the actor, GitOps evidence."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from healert_webhook import audit
from healert_webhook.backend_contract import validate
from healert_webhook.rules import DEFAULT_GITOPS

from support.events import (
    PROXIES,
    exec_ws,
    gitops_deployment,
    managed_field,
    service_account,
    through_proxy,
    workload_patch,
)


@pytest.mark.parametrize("value", [
    "2026-11-26T10:15:30.123456Z",      # what the apiserver writes (metav1.MicroTime)
    "2018-10-26T13:07:36Z",             # v1beta1 `timestamp` (metav1.Time)
    "2024-02-29T23:59:59.999999Z",      # a leap day
    "2000-02-29T00:00:00Z",             # divisible by 400: a leap year
    "2026-11-26T10:15:30.1+05:30",
    "2026-11-26T10:15:30.123456789-08:00",
    "0001-01-01T00:00:00Z",
])
def test_real_rfc3339_times_pass_and_the_backend_accepts_them(value: str) -> None:
    assert audit.valid_timestamp(value)
    event = {"entity_ref": "component:shop/web", "type": "kubectl-exec", "severity": "high",
             "timestamp": value}
    assert validate(event) == []


@pytest.mark.parametrize("value", [
    "2026-13-45T99:99:99Z",             # no such month, day, hour, minute or second
    "2026-11-26T24:00:00Z",             # RFC 3339 allows no hour 24
    "2026-11-26T10:60:00Z",
    "2026-11-26T10:15:60Z",             # Go never writes a leap second; the backend refuses it
    "2026-02-29T00:00:00Z",             # 2026 is not a leap year
    "1900-02-29T00:00:00Z",             # divisible by 100, not by 400
    "2026-04-31T00:00:00Z",
    "2026-00-10T00:00:00Z",
    "2026-11-00T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "\uff12\uff10\uff12\uff16-11-26T10:15:30Z",  # full-width digits
    "2026-11-26T10:15:30.\u0661\u0662Z",          # Arabic-Indic digits
    "2026-11-26T10:15:30",              # no offset
    "2026-11-26T10:15:30+0100",         # ISO 8601 basic offset, not RFC 3339
    "2026-11-26T10:15:30+24:00",
    "2026-11-26t10:15:30z",
    "2026-11-26 10:15:30Z",
    "2026-11-26T10:15:30.Z",
    "2026-11-26T10:15:30.1234567890Z",  # more than nanoseconds
    "2026-11-26T10:15:30Z\n",
    "2026-11-26T10:15:30.123456Z" + "0" * 20,
    "", None, 1764152130, ["2026-11-26T10:15:30Z"],
])
def test_impossible_times_do_not_pass(value: Any) -> None:
    assert not audit.valid_timestamp(value)


def test_the_receive_time_is_kept_verbatim_else_the_stage_time_else_none() -> None:
    good = exec_ws(received="2026-11-26T10:15:30.123456Z")
    assert audit.event_timestamp(good) == ("2026-11-26T10:15:30.123456Z", None)
    bad = {**good, "requestReceivedTimestamp": "2026-13-45T99:99:99Z",
           "stageTimestamp": "2026-11-26T10:15:31.000001Z"}
    assert audit.event_timestamp(bad) == ("2026-11-26T10:15:31.000001Z",
                                          "timestamp_from_stage")
    old = {"timestamp": "2018-10-26T13:07:36Z", "requestReceivedTimestamp": None}
    assert audit.event_timestamp(old) == ("2018-10-26T13:07:36Z", "timestamp_from_v1beta1")
    none = {**good, "requestReceivedTimestamp": "24:00:00", "stageTimestamp": 5}
    assert audit.event_timestamp(none) == (None, "timestamp_missing")


def _old_key(event: dict[str, Any], username: str, verb: str, rule: str) -> str:
    """The key as the previous release computed it, for well-formed events."""
    parts = (event["auditID"], event["requestReceivedTimestamp"], verb, event["requestURI"],
             username, rule)
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=16).hexdigest()


def test_dedup_key_of_well_formed_events_is_unchanged() -> None:
    # Rows already queued in an outbox keep deduplicating across the upgrade.
    event = exec_ws()
    user = event["user"]["username"]
    assert audit.dedup_key(event, user, "get", "kubectl-exec") == \
        _old_key(event, user, "get", "kubectl-exec")


def test_dedup_key_cannot_be_shifted_between_fields() -> None:
    a = exec_ws(audit_id="x\x00y")
    b = exec_ws(audit_id="x")
    b["requestReceivedTimestamp"] = "y\x00" + a["requestReceivedTimestamp"]
    assert audit.dedup_key(a, "u", "get", "r") != audit.dedup_key(b, "u", "get", "r")
    c = exec_ws(audit_id="x\x01\x00")
    d = exec_ws(audit_id="x\x01")
    assert audit.dedup_key(c, "u", "get", "r") != audit.dedup_key(d, "u", "get", "r")


def test_dedup_key_never_formats_input() -> None:
    deep: Any = "x"
    for _ in range(5000):  # far deeper than repr (or the recursion limit) can take
        deep = [deep]
    event = {"auditID": deep, "requestURI": {"a": deep}, "requestReceivedTimestamp": 7}
    key = audit.dedup_key(event, "u", "get", "r")
    assert len(key) == 32
    # A number and the same digits as text are different fields.
    assert audit.dedup_key({"auditID": 7}, "u", "get", "r") != \
        audit.dedup_key({"auditID": "7"}, "u", "get", "r")


def test_two_people_behind_one_proxy_never_share_a_key() -> None:
    event = through_proxy(exec_ws(), "teleport")
    user = event["user"]["username"]
    assert audit.dedup_key(event, user, "get", "r", "alice@example.com") != \
        audit.dedup_key(event, user, "get", "r", "bob@example.com")


@pytest.mark.parametrize("proxy", sorted(PROXIES))
def test_a_proxy_hands_the_actor_to_the_person(proxy: str) -> None:
    account, person = PROXIES[proxy]
    actor = audit.resolve_actor(through_proxy(exec_ws(), proxy))
    assert actor.name == person["username"]
    assert not actor.internal
    assert actor.proxy == account["username"]
    assert actor.as_user == ""
    assert audit.actor_groups(through_proxy(exec_ws(), proxy), actor) == \
        tuple(person["groups"])


def test_a_person_stays_the_actor_whoever_they_impersonate() -> None:
    event = exec_ws(user="oidc:jane@example.com",
                    impersonatedUser=service_account("ci", "deployer"))
    actor = audit.resolve_actor(event)
    assert (actor.name, actor.internal, actor.proxy, actor.as_user) == \
        ("oidc:jane@example.com", False, "", "system:serviceaccount:ci:deployer")
    assert audit.actor_groups(event, actor) == ("oidc:platform", "system:authenticated")


@pytest.mark.parametrize("impersonated", [
    service_account("payments", "argocd-deployer"),   # Argo CD's sync impersonation
    {"username": "system:node:worker-1"},
    {"username": ""},
    {"username": 5},
    "alice",
    None,
])
def test_an_internal_identity_stays_the_actor_unless_it_impersonates_a_person(
        impersonated: Any) -> None:
    event = {"user": service_account("argocd", "argocd-application-controller"),
             "impersonatedUser": impersonated}
    actor = audit.resolve_actor(event)
    assert actor.name == "system:serviceaccount:argocd:argocd-application-controller"
    assert actor.internal
    assert actor.proxy == ""


def test_nobody_impersonating_someone_is_still_nobody() -> None:
    actor = audit.resolve_actor({"user": {}, "impersonatedUser": {"username": "alice"}})
    assert actor.name == "" and actor.internal


@pytest.mark.parametrize("tool,evidence", [
    ("argocd", "annotation argocd.argoproj.io/tracking-id on responseObject"),
    ("kustomize", "label kustomize.toolkit.fluxcd.io/name on responseObject"),
    ("helm", "label helm.toolkit.fluxcd.io/name on responseObject"),
])
def test_gitops_evidence(tool: str, evidence: str) -> None:
    gitops = DEFAULT_GITOPS
    event = workload_patch(gitops_deployment("checkout", "shop", tool))
    found = audit.gitops_evidence(event, gitops.annotations, gitops.labels,
                                  gitops.field_managers)
    assert found == evidence


def test_field_managers_alone_and_the_instance_label_alone() -> None:
    gitops = DEFAULT_GITOPS
    obj = gitops_deployment("checkout", "shop", "argocd")
    del obj["metadata"]["annotations"]["argocd.argoproj.io/tracking-id"]
    event = workload_patch(obj)
    assert audit.gitops_evidence(event, gitops.annotations, gitops.labels,
                                 gitops.field_managers) == \
        "field manager argocd-controller on responseObject"
    # Helm sets app.kubernetes.io/instance too: it proves nothing alone.
    obj["metadata"]["managedFields"] = [managed_field("kubectl-client-side-apply", "Update")]
    assert obj["metadata"]["labels"] == {"app.kubernetes.io/instance": "checkout"}
    assert audit.gitops_evidence(workload_patch(obj), gitops.annotations, gitops.labels,
                                 gitops.field_managers) is None
    # A Metadata-level patch carries no object at all.
    metadata_level = workload_patch(gitops_deployment("checkout", "shop", "argocd"),
                                    level="Metadata")
    assert audit.gitops_evidence(metadata_level, gitops.annotations, gitops.labels,
                                 gitops.field_managers) is None


@pytest.mark.parametrize("code,klass", [
    (101, "success"), (200, "success"), (201, "success"), (304, "success"),
    (401, "denied"), (403, "denied"), (404, "error"), (409, "error"), (422, "error"),
    (500, "error"), (None, None),
])
def test_response_classes(code: int | None, klass: str | None) -> None:
    assert audit.response_class(code) == klass


def test_response_code_ignores_junk() -> None:
    assert audit.response_code({"responseStatus": {"code": True}}) is None
    assert audit.response_code({"responseStatus": {"code": "403"}}) is None
    assert audit.response_code({"responseStatus": [403]}) is None
    assert audit.response_code({"responseStatus": {"code": 403}}) == 403


def test_failure_ids_are_cleaned_and_cut() -> None:
    assert audit.failure_id({"auditID": "a\nb" + "c" * 500}) == ("a\\nb" + "c" * 500)[:61] \
        + "..."
    assert audit.failure_id({"auditID": ["x"]}) == ""
    assert audit.failure_id(None) == ""


# --- times far ahead of the receive time ------------------------------------------

RECEIVED = 1_795_688_130.0  # 2026-11-26T10:15:30Z


def test_a_receive_time_far_ahead_is_repaired_from_the_stage_time() -> None:
    event = exec_ws(received="2999-01-01T00:00:00.000000Z")
    event["stageTimestamp"] = "2026-11-26T10:15:30.500000Z"
    assert audit.event_timestamp(event, RECEIVED) == ("2026-11-26T10:15:30.500000Z",
                                                      "future_timestamp_from_stage")
    # without a receive time nothing is judged ahead (as before)
    assert audit.event_timestamp(event) == ("2999-01-01T00:00:00.000000Z", None)
    both = {**event, "stageTimestamp": "2999-01-01T00:00:01.000000Z"}
    assert audit.event_timestamp(both, RECEIVED) == (None, "future_timestamp_missing")
    bad_then_ahead = {**both, "requestReceivedTimestamp": "not a time"}
    assert audit.event_timestamp(bad_then_ahead, RECEIVED) == (None,
                                                               "future_timestamp_missing")


@pytest.mark.parametrize(("stamp", "kept"), [
    ("2026-11-26T10:20:29.999999Z", True),     # 4:59.99 ahead: within the skew
    ("2026-11-26T10:20:31Z", False),           # 5:01 ahead
    ("2026-11-26T12:20:29+02:00", True),       # the same instant as 10:20:29Z
    ("2026-11-26T10:20:31-02:00", False),      # 12:20:31Z
    ("9999-12-31T23:59:59-23:59", False),      # past what a datetime holds in UTC
    ("0001-01-01T00:00:00+23:59", True),       # before it
    ("2026-11-26T10:15:30.123456789Z", True),  # nanoseconds
])
def test_the_skew_is_judged_on_the_instant_whatever_the_offset(stamp: str, kept: bool) -> None:
    assert audit.FUTURE_SKEW == 300
    event = {"requestReceivedTimestamp": stamp, "stageTimestamp": "2026-11-26T10:15:29Z"}
    assert (audit.event_timestamp(event, RECEIVED)[0] == stamp) is kept
