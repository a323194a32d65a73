"""The pre-filter changes nothing: every input gives the same friction events and the same
counts with it as with a full parse of every event.

Compared over every real fixture, generated workloads (as log lines and as EventList
bodies), and hostile but valid JSON: strings holding the very patterns of the fields,
nested objects with the same keys, reordered fields, escapes, bytes that are not UTF-8,
missing and mistyped fields, lines cut short. A field written twice is the one thing the
pre-filter reads differently (the first, not the last); replay parses every event, and
a test here shows it then decides as a full parse does.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healert_webhook import audit, batches
from healert_webhook.config import Settings
from healert_webhook.detect import Detector, rule_failure
from healert_webhook.index import scope_failure
from healert_webhook.pipeline import Pipeline
from healert_webhook.records import Evaluation, Stats
from healert_webhook.rules.conditions import decisive
from healert_webhook.sources import body as body_reading

from support import workload
from support.events import event_list, exec_event, noise_event, smuggling_event
from support.fixture_events import event_lines
from support.paths import ROOT


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """The shipped rules with every rule enabled: the most candidates, the least to rule
    out by mistake."""
    text = (ROOT / "rules.yaml").read_text().replace("enabled: false", "enabled: true")
    path = tmp_path_factory.mktemp("prefilter") / "rules.yaml"
    path.write_text(text)
    return Pipeline.from_settings(Settings(rules_path=path, k8s_namespace="healert-system"))


def full(pipeline: Pipeline, raws: Iterable[bytes]) -> tuple[list[Any], Stats]:
    """What a full parse of every item gives: (frictions, stats)."""
    stats = Stats()
    events = []
    bad = 0
    for raw in raws:
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if isinstance(item, dict):
            events.append(item)
        else:
            bad += 1
    found = pipeline.detector.detect(events, stats)
    stats.events += bad  # the pipeline counts non-events as audit events too
    return found, stats


def same(found: Evaluation, expected: tuple[list[Any], Stats]) -> None:
    frictions, stats = expected
    assert [(f.key, f.event) for f in found.frictions] == \
        [(f.key, f.event) for f in frictions]
    got = found.stats
    assert got.events + len([b for b in found.bad if b[1] != "blank"]) == stats.events
    assert (dict(got.skipped), dict(got.matched)) == (dict(stats.skipped),
                                                      dict(stats.matched))
    bad_reasons = {reason for _i, reason in found.bad}
    invalid = dict(got.invalid)
    for reason in bad_reasons:
        invalid.pop(reason, None)
    assert invalid == {k: v for k, v in stats.invalid.items() if k not in bad_reasons}


def as_lines(pipeline: Pipeline, raws: list[bytes]) -> None:
    same(pipeline.evaluate_items(raws, "prefilter-test"), full(pipeline, raws))


def read_body(pipeline: Pipeline, body: bytes, fields: bool | None = None
              ) -> Evaluation | None:
    """The webhook's reading of `body` (None: it must be parsed whole), by the reader
    the webhook chooses, or by the field pass (`fields`) or simdjson (not `fields`)."""
    plan, _cost = batches.plan(body)
    if plan is None:
        return None
    if fields is not None and plan.groups is None:
        plan = dataclasses.replace(plan, fields=fields)
    return body_reading.evaluate(pipeline, body, plan, "prefilter-test", 10_000)


def as_body(pipeline: Pipeline, items: list[bytes]) -> None:
    """The body of `items`, read as the webhook chooses and by each reader, decides as a
    full parse of each item."""
    body = (b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":['
            + b",".join(items) + b"]}\n")
    expected = full(pipeline, items)
    for fields in (None, True, False):
        found = read_body(pipeline, body, fields)
        assert found is not None  # small bodies are always read by one of the readers
        same(found, expected)


def fixture_lines(shared: Path) -> list[bytes]:
    """The shared fixtures' events and those a real v1.37 apiserver wrote."""
    recorded = ROOT / "tests" / "fixtures"
    return event_lines(shared, recorded / "apiserver-1.37", recorded / "apiserver-1.37-breadth")


def test_every_fixture_decides_alike(pipeline: Pipeline, fixtures_dir: Path) -> None:
    lines = fixture_lines(fixtures_dir)
    assert len(lines) > 100
    as_lines(pipeline, lines)
    real = [line for line in lines if line.startswith(b'{"kind":"Event"')]
    items = [line.replace(b'{"kind":"Event","apiVersion":"audit.k8s.io/v1",', b"{", 1)
             for line in real]
    as_body(pipeline, items)


@pytest.mark.parametrize("seed,ratio", [(1, 0.01), (7, 0.2), (13, 0.5)])
def test_generated_workloads_decide_alike(pipeline: Pipeline, seed: int, ratio: float) -> None:
    work = workload.generate(3000, match_ratio=ratio, seed=seed)
    lines = [line.rstrip(b"\n") for line in work.lines()]
    as_lines(pipeline, lines)
    for body in work.batches(400):
        expected = full(pipeline, [orjson.dumps(i) for i in orjson.loads(body)["items"]])
        for fields in (None, True, False):
            found = read_body(pipeline, body, fields)
            assert found is not None
            same(found, expected)


def test_a_large_body_is_read_in_groups_and_decides_alike(pipeline: Pipeline) -> None:
    work = workload.generate(3000, match_ratio=0.2, seed=3)
    body = event_list(work.items)
    plan = batches.reading(body, size=256 * 1024)
    assert plan is not None and plan.groups is not None and len(plan.groups) > 10
    found = body_reading.evaluate(pipeline, body, plan, "prefilter-test", 10_000)
    assert found is not None
    same(found, full(pipeline, work.items))


def test_most_of_a_realistic_stream_is_ruled_out_unparsed(pipeline: Pipeline) -> None:
    work = workload.generate(4000, match_ratio=0.01, seed=5)
    lines = [line.rstrip(b"\n") for line in work.lines()]
    prefilter = pipeline.rules.prefilter
    ruled = sum(1 for line in lines if prefilter.skip(line) is not None)
    assert ruled / len(lines) > 0.95


def test_an_object_shaped_like_events_adds_and_hides_none(pipeline: Pipeline) -> None:
    body = event_list([smuggling_event(), exec_event(1, tag="real")])
    assert body.count(b'},{"level":"') == 3  # one real boundary, two inside the object
    found = read_body(pipeline, body)  # read as JSON: the boundaries inside are no cuts
    assert found is not None
    assert [f.event["actor"] for f in found.frictions] == ["alice@example.com"]
    assert found.stats.events == 2


def _forced(body: bytes, fields: bool) -> batches.Reading:
    plan = batches.reading(body)
    assert plan is not None and plan.groups is None
    return dataclasses.replace(plan, fields=fields)


def evaluate_by(pipeline: Pipeline, body: bytes, fields: bool, most: int = 10_000,
                allowance: int | None = None) -> Evaluation | None:
    """`body_reading.evaluate` with the field pass (`fields`) or simdjson reading."""
    return body_reading.evaluate(pipeline, body, _forced(body, fields), "prefilter-test",
                                 most, allowance=allowance)


NOT_READ = {
    "not UTF-8 in an event": event_list([noise_event(1), exec_event(2)]).replace(
        b"alice", b"al\xffce", 1),
    "not UTF-8 outside the events": event_list([noise_event(1)]).replace(
        b'"metadata":{}', b'"metadata":{"x":"\xc0"}', 1),
    "cut short": event_list([noise_event(1), exec_event(2)])[:-30],
    "deeper than orjson goes": event_list([noise_event(1)])[:-2] + b',' + b"[" * 1100
    + b"]" * 1100 + b"]}",
    "a byte order mark": b"\xef\xbb\xbf" + event_list([noise_event(1)]),
    "a number out of range as the kind": b'{"kind":1e400,"items":[]}',
    "a number out of range as the items": b'{"kind":"EventList","items":-1e999}',
    "a number out of range alone": b" 1e400",
}


@pytest.mark.parametrize("name", sorted(NOT_READ))
@pytest.mark.parametrize("fields", [True, False])
def test_a_body_orjson_refuses_is_left_to_the_whole_parse_by_either_reader(
        pipeline: Pipeline, name: str, fields: bool) -> None:
    """Neither reader decides a body orjson refuses: the whole parse answers it (400,
    bad_json) as before the field pass."""
    body = NOT_READ[name]
    assert evaluate_by(pipeline, body, fields) is None
    with pytest.raises(body_reading.BadBody) as refused:
        body_reading.parse_body(body)
    assert refused.value.reason == "bad_json"


@pytest.mark.parametrize("body", [b"1", b'"an event"', b"null", b'{"items":{"a":1}}',
                                  b'{"kind":"EventList","items":"x"}', b" true ",
                                  b'{"items":100000000000000000000000}'])
def test_a_body_that_is_no_batch_gets_the_same_answer_from_either_reader(
        pipeline: Pipeline, body: bytes) -> None:
    """Whoever answers (the reader, or the whole parse when the reader leaves it), the
    answer is the same 400."""
    answers = []
    for fields in (True, False):
        with pytest.raises(body_reading.BadBody) as refused:
            if evaluate_by(pipeline, body, fields) is None:
                body_reading.parse_body(body)
        answers.append((str(refused.value), refused.value.reason))
    assert answers[0] == answers[1]
    with pytest.raises(body_reading.BadBody) as whole:
        body_reading.parse_body(body)
    assert answers[0] == (str(whole.value), whole.value.reason)


@pytest.mark.parametrize("fields", [True, False])
def test_too_many_events_are_refused_before_any_is_evaluated(pipeline: Pipeline,
                                                             fields: bool) -> None:
    body = event_list([exec_event(i) for i in range(5)])
    with pytest.raises(batches.TooManyItems) as refused:
        evaluate_by(pipeline, body, fields, most=4)
    assert refused.value.count == 5


@pytest.mark.parametrize("fields", [True, False])
def test_a_large_candidate_asks_for_its_share_before_it_is_parsed(pipeline: Pipeline,
                                                                   fields: bool) -> None:
    from healert_webhook.prefilter import NeedsMore

    big = exec_event(1, tag="big")
    big["requestObject"] = {"spec": [{"a": 1}] * (batches.SMALL_CANDIDATE // 4)}
    body = event_list([noise_event(i) for i in range(50)] + [big])
    need = batches.estimate(orjson.dumps(big))
    allowance = batches.candidate_reserve(_forced(body, fields))
    with pytest.raises(NeedsMore) as more:
        evaluate_by(pipeline, body, fields, allowance=allowance)
    assert more.value.size == need - allowance
    found = evaluate_by(pipeline, body, fields, allowance=need)
    assert found is not None and len(found.frictions) == 1 and found.stats.events == 51


def test_a_number_beyond_a_double_in_a_small_event_body_costs_that_event_only(
        pipeline: Pipeline) -> None:
    """`1e400` is JSON that orjson refuses. simdjson refuses the whole body with it
    (the whole parse then answers 400 and the batch is lost); the field pass skips what
    no decision reads unconverted, so an event ruled out is counted as such, and a
    candidate holding it is counted bad_json alone: the other events are evaluated."""
    noise = orjson.dumps(noise_event(1))[:-1] + b',"requestObject":{"n":1e400}}'
    exec_ = orjson.dumps(exec_event(2, tag="far"))[:-1] + b',"requestObject":{"n":1e400}}'
    body = event_list([noise, exec_, exec_event(3)])
    found = read_body(pipeline, body)  # as the webhook reads it: by the field pass
    assert found is not None
    assert [f.event["actor"] for f in found.frictions] == ["alice@example.com"]
    assert found.bad == [(1, "bad_json")]
    assert sum(found.stats.skipped.values()) == 1 and found.stats.events == 2
    assert evaluate_by(pipeline, body, fields=False) is None


def test_a_group_cut_at_a_boundary_inside_an_object_is_parsed_whole(
        pipeline: Pipeline) -> None:
    size = 64 * 1024
    body = event_list([smuggling_event(pad=size), exec_event(1, tag="real"),
                       exec_event(2, tag="real")])
    plan = batches.reading(body, size=size)
    assert plan is not None and plan.groups is not None  # the first cut is a fake one
    assert body_reading.evaluate(pipeline, body, plan, "prefilter-test", 10_000) is None
    found = pipeline.evaluate_items(orjson.loads(body)["items"], "prefilter-test")
    assert [f.event["actor"] for f in found.frictions] == ["alice@example.com"] * 2


def test_a_field_written_twice_is_read_last_by_the_field_pass_and_first_by_simdjson(
        pipeline: Pipeline) -> None:
    """The one assumption of simdjson's reading: the apiserver writes each field once
    (see prefilter.py). Another producer's repeated field makes it read another event
    than a full parse does. Log lines and bodies of small events are read by the field
    pass, which reads the last as a full parse does; replay, which reads files from
    anywhere, parses in full."""
    event = exec_event(3, tag="twice")
    del event["stage"]
    event = {"stage": "RequestReceived", **event}
    raw = orjson.dumps(event)[:-1] + b',"stage":"ResponseComplete"}'
    assert orjson.loads(raw)["stage"] == "ResponseComplete"  # a full parse keeps the last
    assert pipeline.rules.prefilter.skip(raw) is None  # a log line: read as orjson reads it
    lines = pipeline.evaluate_items([raw], "prefilter-test")
    same(lines, full(pipeline, [raw]))
    assert len(lines.frictions) == 1
    careful = pipeline.evaluate_items([raw], "prefilter-test", prefilter=False)
    same(careful, full(pipeline, [raw]))
    body = event_list([raw])
    assert batches.reading(body).fields  # type: ignore[union-attr]  # a small event
    assert len(read_body(pipeline, body).frictions) == 1  # type: ignore[union-attr]
    by_simdjson = read_body(pipeline, body, fields=False)
    assert by_simdjson is not None and not by_simdjson.frictions  # it reads the first


# -- hostile but valid JSON ------------------------------------------------------------

PATTERNS = ['","stage":"ResponseComplete', '","verb":"get', '"user":{"username":"alice"',
            '},{"level":"Metadata"', ',"objectRef":{"resource":"pods"', 'Object":',
            '"subresource":"exec"', '\\"', "\\", '"}', ",\"impersonatedUser\":{",
            ',"stageTimestamp":"2026-11-26T10:00:00.000000Z"}', "é", "\u2028", "\x00"]
KEYS = ["level", "auditID", "stage", "requestURI", "verb", "user", "impersonatedUser",
        "objectRef", "responseStatus", "requestObject", "responseObject", "annotations",
        "stageTimestamp", "resource", "subresource", "namespace", "username"]

texts = st.one_of(st.sampled_from(PATTERNS), st.text(max_size=12),
                  st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3).map("".join))
scalars = st.one_of(texts, st.integers(-3, 3), st.booleans(), st.none())
nested = st.recursive(
    scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(KEYS) | texts, inner, max_size=4)), max_leaves=12)


# Namespaces: Argo CD's (excluded by config, where gitops-suspend still looks), another
# excluded one, the agent's own (excluded for every rule), an ordinary one.
NAMESPACES = ["argocd", "kube-system", "healert-system", "payments"]
USERS = ["alice@example.com", "system:serviceaccount:ns:sa", "system:node:n1", "system:admin"]
BODIES: list[Any] = [
    {"spec": {"syncPolicy": {"automated": None}}}, {"spec": {"suspend": True}},
    [{"op": "remove", "path": "/spec/syncPolicy/automated"}],
    {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": None}}},
    {"metadata": {"annotations": {"kustomize.toolkit.fluxcd.io/reconcile": "disabled"}}},
    {"apiVersion": "v1", "kind": "Service", "spec": {"type": "NodePort"}}, None,
]


def write_event(rng: random.Random) -> dict[str, Any]:
    """A person's or a controller's write that the content rules may match, in a
    namespace that may be excluded for some rules or all."""
    ns = rng.choice(NAMESPACES)
    resource = rng.choice(["applications", "kustomizations", "namespaces", "services",
                           "configmaps", "deployments", "policyexceptions"])
    name = ns if resource == "namespaces" else f"obj-{rng.randrange(5)}"
    event = exec_event(rng.randrange(1000), user=rng.choice(USERS), ns=ns)
    event.update(verb=rng.choice(["patch", "update", "create", "delete", "get"]),
                 requestURI=f"/apis/x/v1/namespaces/{ns}/{resource}/{name}",
                 objectRef={"resource": resource, "namespace": ns, "name": name},
                 responseStatus={"code": rng.choice([200, 201, 403, 404])})
    body = rng.choice(BODIES)
    if body is not None:
        event["level"] = "Request"
        event["requestObject"] = body
    return event


def base_event(rng: random.Random) -> dict[str, Any]:
    pick = rng.random()
    if pick < 0.3:
        return noise_event(rng.randrange(1000))
    if pick < 0.6:
        return write_event(rng)
    event = exec_event(rng.randrange(1000), user=rng.choice(
        ["alice@example.com", "system:serviceaccount:ns:sa", "system:node:n1", "system:admin"]))
    if rng.random() < 0.3:
        event["impersonatedUser"] = {"username": rng.choice(["bob", "system:x"])}
    return event


@st.composite
def hostile_events(draw: st.DrawFn) -> bytes:
    rng = random.Random(draw(st.integers(0, 2**32)))
    event = base_event(rng)
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["top", "user", "objectRef", "requestObject",
                                      "responseObject", "annotations"]))
        key = draw(st.sampled_from(KEYS) | texts)
        value = draw(nested)
        if where == "top":
            event[key] = value
        elif where in ("user", "objectRef", "annotations") and isinstance(
                event.get(where), dict):
            event[where][key] = value if where != "annotations" else str(value)
        else:
            event[where] = {key: value, "spec": draw(nested)}
    keys = list(event)
    if draw(st.booleans()):
        rng.shuffle(keys)  # another producer's field order
    ordered = {k: event[k] for k in keys}
    if draw(st.booleans()):
        raw = json.dumps(ordered, separators=(",", ":"), ensure_ascii=True).encode()
    else:
        raw = orjson.dumps(ordered)
    if draw(st.integers(0, 9)) == 0:  # bytes that are not UTF-8, in a string
        raw = raw.replace(b"Metadata", b"Meta\xffdata", 1).replace(b'"get"', b'"g\xc0t"', 1)
    if draw(st.integers(0, 9)) == 0:
        raw = raw[:draw(st.integers(1, max(1, len(raw) - 1)))]  # a line cut short
    return raw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_events(), min_size=1, max_size=8))
def test_hostile_but_valid_json_decides_alike(pipeline: Pipeline, raws: list[bytes]) -> None:
    as_lines(pipeline, raws)
    whole = [raw for raw in raws if _is_json(raw)]
    if whole:
        as_body(pipeline, whole)


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


# -- the index against every rule decided one by one -----------------------------------

def one_by_one(detector: Detector, event: dict[str, Any]) -> tuple[list[str], str]:
    """What every enabled rule says of a parsed event, each on its own, without the
    index: (the rules that fire, the skip reason when none does). The reference the
    index's fast path (one decision for all rules) must equal, opted-out rules included."""
    if audit.invalid_reason(event) is not None or event["stage"] not in audit.FIRING_STAGES:
        return [], "stage" if event.get("stage") in audit.QUIET_STAGES else "invalid"
    cand = detector.candidate(event)
    own = detector.index.always
    config = detector.ruleset.ignore_namespaces
    fired: list[str] = []
    failures: list[str] = []
    for rule in detector.rules:
        if scope_failure(rule, cand.resource or None, cand.subresource or None,
                         cand.verb) is not None:
            continue
        scope = cand.scope_ns
        if scope in own or (rule.config_namespaces and scope in config):
            failures.append("namespace")
        elif rule.ignore_system and cand.actor.internal:
            failures.append("system_actor")
        elif (failure := rule_failure(rule, cand)) is not None:
            failures.append(failure)
        else:
            fired.append(rule.name)
    if fired and not detector.workload(cand).name:
        return [], "no_name"
    if fired:
        return fired, ""
    return [], decisive(failures) if failures else "no_rule"


def decided(detector: Detector, event: dict[str, Any]) -> tuple[list[str], str]:
    stats = Stats()
    found = detector.detect([event], stats)
    if stats.invalid:
        return [], "invalid"
    return [f.rule for f in found], next(iter(stats.skipped), "")


def test_the_fast_path_decides_as_each_rule_would(pipeline: Pipeline,
                                                  fixtures_dir: Path) -> None:
    detector = pipeline.detector
    assert any(not rule.config_namespaces for rule in detector.rules)
    events = [orjson.loads(line) for line in fixture_lines(fixtures_dir)]
    rng = random.Random(26)
    events += [base_event(rng) for _ in range(3000)]
    for event in events:
        if isinstance(event, dict) and "auditID" in event:
            assert decided(detector, event) == one_by_one(detector, event), event


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_events(), min_size=1, max_size=4))
def test_hostile_events_decide_as_each_rule_would(pipeline: Pipeline,
                                                  raws: list[bytes]) -> None:
    for raw in raws:
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("stage"), str) \
                and audit.invalid_reason(event) is None:
            assert decided(pipeline.detector, event) == one_by_one(pipeline.detector, event)
