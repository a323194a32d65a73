"""The real apiserver runs with a generated audit policy and records what the evaluator says.

A second control plane is started (its own etcd, apiserver and webhook agent) with the
policy `healert-webhook policy --cluster-view off` writes for every rule of rules.yaml,
each enabled. Then:

- the apiserver starts with it (it refuses to start on an invalid policy);
- every event it writes has the level `evaluate` gives that request, computed from the
  event's own user, verb and object, and no RequestReceived event is written;
- probes by a person, a person through the access proxy and a person acting `--as`
  someone, each tagged with its own Audit-ID, are recorded at the level detection needs,
  and noise is not recorded at all; managed fields are kept exactly where decided;
- documents `parse_policy` calls refused make the real apiserver exit, and those it
  accepts (with or without ignored keys) are loaded, with the warning exactly when
  keys are ignored.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conformance.harness import objects
from conformance.harness import policy as audit_policy
from conformance.harness.agents import AgentSet, all_rules_enabled
from conformance.harness.cluster import Binaries, ControlPlane, WebhookTarget
from conformance.harness.env import binaries
from conformance.harness.procs import Proc, free_port, wait_for
from conformance.harness.runner import read_audit_events
from healert_webhook.auditpolicy.document import Level, Policy, parse_policy
from healert_webhook.auditpolicy.evaluate import evaluate
from healert_webhook.auditpolicy.generate import generate
from healert_webhook.auditpolicy.needs import Need, Needs, Target

pytestmark = pytest.mark.timeout(600)


class PolicyPlane(ControlPlane):
    """The harness's control plane with another audit policy file."""

    def __init__(self, binaries_: Binaries, root: Path, webhook: WebhookTarget,
                 policy: Path) -> None:
        super().__init__(binaries_, root, webhook)
        self.policy = policy

    def apiserver_argv(self) -> list[str]:
        """The harness's flags, the policy flag pointing at this plane's policy."""
        return [f"--audit-policy-file={self.policy}" if arg.startswith("--audit-policy-file=")
                else arg for arg in super().apiserver_argv()]


class Plane:
    """The started control plane, its policy and the webhook agent it sends to."""

    def __init__(self, root: Path) -> None:
        rules = all_rules_enabled(root / "rules.yaml")
        policy_file = audit_policy.generate(rules, root / "audit-policy.yaml",
                                            cluster_view=False)
        self.text = policy_file.read_text()
        self.policy: Policy = audit_policy.load(policy_file)
        self.agents = AgentSet(root / "agents", root / "cluster" / "audit" / "audit.log", rules)
        target = self.agents.prepare()
        self.cluster = PolicyPlane(binaries(), root / "cluster", target, policy_file)

    def start(self) -> Plane:
        try:
            self.agents.serve = self.agents.serve_agent().start()
            self.cluster.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.cluster.stop()
        self.agents.stop()


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    started = Plane(tmp_path_factory.mktemp("generated-policy")).start()
    try:
        yield started
    finally:
        started.stop()


# --- the probes ---------------------------------------------------------------------------

POD = "/api/v1/namespaces/payments/pods/payments-api-7d9f8b6c4d-xkj2p"
DEPLOYMENT = "/apis/apps/v1/namespaces/payments/deployments/payments-api"
DB_CREDENTIALS = "/api/v1/namespaces/payments/secrets/payments-db"
CONFIGMAP = "/api/v1/namespaces/payments/configmaps/app-config"
LEASE = "/apis/coordination.k8s.io/v1/namespaces/payments/leases"
MERGE = {"Content-Type": "application/merge-patch+json"}
PROXY = f"system:serviceaccount:{objects.PROXY_NS}:{objects.PROXY_SA}"


def _patch(key: str) -> str:
    return json.dumps({"metadata": {"annotations": {"conformance.healert.io/probe": key}}})


# (who, acting for, method, path, body, the level detection needs, managed fields kept)
PROBES: list[tuple[str, str | None, str, str, str | None, Level, bool | None]] = [
    ("alice", None, "GET", f"{POD}/exec?command=true&stdout=true", None, Level.METADATA, None),
    ("alice", None, "PATCH", DEPLOYMENT, _patch("alice"), Level.REQUEST_RESPONSE, True),
    ("alice", None, "PATCH", POD, _patch("alice"), Level.REQUEST_RESPONSE, False),
    ("alice", None, "GET", DB_CREDENTIALS, None, Level.METADATA, None),
    ("alice", None, "GET", CONFIGMAP, None, Level.NONE, None),
    ("alice", None, "GET", "/api/v1/namespaces/payments/pods", None, Level.NONE, None),
    ("alice", "bob", "GET", DB_CREDENTIALS, None, Level.METADATA, None),
    ("access-proxy", "alice", "PATCH", DEPLOYMENT, _patch("proxy"), Level.REQUEST_RESPONSE,
     True),
    ("access-proxy", "alice", "GET", DB_CREDENTIALS, None, Level.METADATA, None),
    ("access-proxy", "alice", "GET", f"{POD}/exec?command=true&stdout=true", None,
     Level.METADATA, None),
    ("access-proxy", None, "GET", "/api/v1/namespaces/payments/pods", None, Level.NONE, None),
    ("conformance-admin", None, "POST", LEASE,
     '{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":'
     '{"name":"probe-lease"}}', Level.NONE, None),
    ("conformance-admin", None, "GET", "/healthz", None, Level.NONE, None),
]


def _client(plane: Plane, who: str) -> httpx.Client:
    if who != "access-proxy":
        return plane.cluster.client_for(who)
    config = yaml.safe_load(plane.cluster.identities["access-proxy"].kubeconfig.read_text())
    token = config["users"][0]["user"]["token"]
    assert plane.cluster.cluster_ca is not None
    context = ssl.create_default_context(cafile=str(plane.cluster.cluster_ca))
    return httpx.Client(base_url=plane.cluster.server, verify=context,
                        headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _send(plane: Plane) -> dict[str, tuple[Level, bool | None]]:
    """Each probe sent once with its own Audit-ID; returns what each ID must show."""
    expected: dict[str, tuple[Level, bool | None]] = {}
    for who, acting_for, method, path, body, level, fields in PROBES:
        audit_id = str(uuid.uuid4())
        headers = {"Audit-ID": audit_id, **(MERGE if method == "PATCH" else {})}
        if acting_for:
            headers["Impersonate-User"] = acting_for
        if method == "POST":
            headers["Content-Type"] = "application/json"
        with _client(plane, who) as client:
            answer = client.request(method, path, content=body, headers=headers)
        assert answer.status_code < 500 or "exec" in path, (who, method, path, answer.text)
        expected[audit_id] = (level, fields)
    return expected


def _events_with(plane: Plane, audit_id: str) -> list[dict[str, Any]]:
    return [e for e in read_audit_events(plane.cluster.layout.audit_log)
            if e.get("auditID") == audit_id]


@pytest.fixture(scope="module")
def recorded(plane: Plane) -> tuple[dict[str, tuple[Level, bool | None]], list[dict[str, Any]]]:
    """The probes' expectations, and every event written once the last one is in."""
    expected = _send(plane)
    marker = str(uuid.uuid4())
    with plane.cluster.client_for("alice") as client:
        client.get(DB_CREDENTIALS, headers={"Audit-ID": marker})
    wait_for(lambda: any(e.get("stage") == "ResponseComplete"
                         for e in _events_with(plane, marker)), 60, "the marker event")
    return expected, list(read_audit_events(plane.cluster.layout.audit_log))


def test_the_apiserver_starts_with_the_generated_policy(plane: Plane) -> None:
    answer = plane.cluster.admin_client().get("/readyz")
    assert answer.status_code == 200
    assert plane.cluster.procs[-1].alive()


def test_every_event_has_the_level_the_evaluator_gives(
        plane: Plane, recorded: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    events = recorded[1]
    assert len(events) > 50
    assert not [e for e in events if e["stage"] == "RequestReceived"]
    wrong = []
    for event in events:
        decision = evaluate(plane.policy, audit_policy.request_of(event))
        if decision.level.text != event["level"]:
            wrong.append((event["level"], decision.level.text, decision.rule,
                          event["verb"], event["requestURI"], event["user"].get("username")))
    assert wrong == []


def test_probes_are_recorded_as_detection_needs(
        plane: Plane, recorded: tuple[dict[str, tuple[Level, bool | None]],
                                      list[dict[str, Any]]]) -> None:
    expected, events = recorded
    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_id.setdefault(event.get("auditID", ""), []).append(event)
    for (who, acting_for, method, path, *_), (audit_id, (level, fields)) in zip(
            PROBES, expected.items(), strict=True):
        got = [e for e in by_id.get(audit_id, []) if e["stage"] == "ResponseComplete"]
        what = f"{method} {path} by {who}" + (f" as {acting_for}" if acting_for else "")
        if level is Level.NONE:
            assert got == [], what
            continue
        assert [e["level"] for e in got] == [level.text], what
        if acting_for:
            assert got[0]["impersonatedUser"]["username"] == acting_for, what
        if fields is not None:
            meta = got[0]["responseObject"]["metadata"]
            assert ("managedFields" in meta) is fields, what


def test_the_webhook_got_what_the_log_got(plane: Plane,
                                          recorded: tuple[Any, list[dict[str, Any]]]) -> None:
    """The same policy feeds both backends: the agent counted the apiserver's events."""
    serve = plane.agents.serve
    assert serve is not None
    sent = sum(v for k, v in plane.cluster.metrics().items()
               if k.startswith("apiserver_audit_event_total"))

    def caught_up() -> bool:
        got = sum(v for k, v in serve.metrics().items()
                  if k.startswith('healert_audit_events_total{source="webhook"'))
        return got >= sent

    wait_for(caught_up, 60, "the webhook agent to count every event")


# --- documents the real apiserver refuses -----------------------------------------------

HEAD = "apiVersion: audit.k8s.io/v1\nkind: Policy\n"
REFUSED = {
    "an unknown level": HEAD + "rules:\n- level: Everything\n",
    "a wildcard inside a URL": HEAD + "rules:\n- level: None\n  nonResourceURLs: [/api/*/x]\n",
    "a group with a version": HEAD + "rules:\n- level: None\n  resources: [{group: apps/v1}]\n",
    "no rules": HEAD + "rules: []\n",
    "a string for a list": HEAD + "rules:\n- level: None\n  verbs: get\n",
    "v1beta1": "apiVersion: audit.k8s.io/v1beta1\nkind: Policy\nrules:\n- level: None\n",
    "an unknown stage": HEAD + "omitStages: [Done]\nrules:\n- level: None\n",
}


def _apiserver_with(plane: Plane, text: str, folder: Path) -> tuple[Proc, Path]:
    """The plane's apiserver flags with another policy, port and log, and no etcd.

    `-v=4` makes it log a line once the policy is loaded, before it looks for etcd.
    """
    policy = folder / "policy.yaml"
    policy.write_text(text)
    swap = {"--secure-port=": f"--secure-port={free_port()}",
            "--etcd-servers=": f"--etcd-servers=http://127.0.0.1:{free_port()}",
            "--audit-policy-file=": f"--audit-policy-file={policy}",
            "--audit-log-path=": f"--audit-log-path={folder / 'audit.log'}"}
    argv = [next((new for flag, new in swap.items() if arg.startswith(flag)), arg)
            for arg in plane.cluster.apiserver_argv()] + ["-v=4"]
    return Proc("kube-apiserver", argv, folder / "kube-apiserver.log").start(), policy


@pytest.mark.parametrize("name", REFUSED)
def test_what_parse_policy_calls_refused_stops_the_real_apiserver(
        plane: Plane, name: str, tmp_path: Path) -> None:
    text = REFUSED[name]
    assert parse_policy(text).refused
    proc, policy = _apiserver_with(plane, text, tmp_path)
    try:
        wait_for(lambda: not proc.alive(), 60, f"the apiserver to refuse {name}")
    finally:
        proc.stop(timeout=10)
    assert proc.returncode() not in (None, 0)
    log = proc.tail(200)
    assert "loading audit policy file" in log and str(policy) in log


ACCEPTED = {
    # The old example's `stages:` is ignored, with a warning.
    "an unknown key": (HEAD + "rules:\n- level: Metadata\n  stages: [ResponseComplete]\n",
                       ["rules[0].stages"]),
    "a duplicate key": (HEAD + "rules:\n- level: Metadata\n  level: None\n",
                        ["rules[0].level"]),
    "no kind": ("apiVersion: audit.k8s.io/v1\nrules:\n- level: None\n", []),
    "every group": (HEAD + "rules:\n- level: Metadata\n  resources: [{group: '*'}]\n", []),
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_what_parse_policy_accepts_the_real_apiserver_loads(
        plane: Plane, name: str, tmp_path: Path) -> None:
    text, ignored = ACCEPTED[name]
    doc = parse_policy(text)
    assert doc.policy is not None and [p.path for p in doc.problems] == ignored
    proc, _ = _apiserver_with(plane, text, tmp_path)
    try:
        wait_for(lambda: "Load audit policy rules success" in proc.tail(400), 60,
                 f"the apiserver to load {name}")
    finally:
        proc.kill()  # it waits for an etcd that is not there: nothing to shut down
    log = proc.tail(400)
    assert "loading audit policy file" not in log
    assert ("falling back to lenient decoding" in log) is bool(ignored)


def test_a_generated_policy_with_every_group_is_loaded(plane: Plane, tmp_path: Path) -> None:
    """`group: "*"`, for a custom resource of unknown group, is accepted by v1.37."""
    need = Need("widgets", (Target("widgets", frozenset({"patch"})),))
    text = generate(Needs((need,)), any_group=True)
    assert '- group: "*"' in text
    proc, _ = _apiserver_with(plane, text, tmp_path)
    try:
        wait_for(lambda: "Load audit policy rules success" in proc.tail(400), 60,
                 "the apiserver to load the policy")
    finally:
        proc.kill()
