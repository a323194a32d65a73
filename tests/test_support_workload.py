"""The workload generator: deterministic, realistic, and its intended matches are detected."""

from __future__ import annotations

import collections
import hashlib
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from healert_webhook.detect import Detector
from healert_webhook.records import Stats
from healert_webhook.rules import RulesError, RuleSet, load_rules

from support import workload
from support.paths import ROOT, SEED_RULES

WORKLOAD = ROOT / "tests" / "support" / "workload.py"
KIB = 1024


def shipped_rules() -> RuleSet:
    """The packaged rules; before they are packaged, the repository's or the seed's file."""
    try:
        return load_rules(None)
    except (FileNotFoundError, RulesError):
        pass
    for candidate in (ROOT / "rules.yaml", SEED_RULES):
        if candidate.is_file():
            return load_rules(candidate)
    pytest.skip("no shipped rules.yaml found")


def rules_per_event(detector: Detector, events: list[Any]) -> dict[int, set[str]]:
    """Which rules fire on each event (by stream position)."""
    fired: dict[int, set[str]] = {}
    for index, event in enumerate(events):
        found = detector.detect([event], Stats())
        if found:
            fired[index] = {f.rule for f in found}
    return fired


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    first = workload.generate(800, match_ratio=0.05, seed=7)
    again = workload.generate(800, match_ratio=0.05, seed=7)
    other = workload.generate(800, match_ratio=0.05, seed=8)
    assert first.items == again.items
    assert first.expected == again.expected
    assert first.items != other.items


def test_exact_count_and_every_line_is_an_event() -> None:
    work = workload.generate(1500, match_ratio=0.01, seed=2)
    lines = list(work.lines())
    assert len(lines) == 1500
    for line in lines:
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        event = orjson.loads(line)
        assert list(event)[:4] == ["kind", "apiVersion", "level", "auditID"]
        assert event["kind"] == "Event" and event["apiVersion"] == "audit.k8s.io/v1"
        assert event["stage"] in ("ResponseStarted", "ResponseComplete")
        assert event["requestReceivedTimestamp"].endswith("Z")
        assert len(event["stageTimestamp"]) == len("2026-11-26T10:00:00.000000Z")
        assert event["stageTimestamp"] >= event["requestReceivedTimestamp"]


def test_eventlist_items_carry_no_kind_or_api_version() -> None:
    work = workload.generate(1000, match_ratio=0.01, seed=3)
    bodies = list(work.batches(400))
    assert len(bodies) == 3
    sizes = []
    for body in bodies:
        doc = orjson.loads(body)
        assert doc["kind"] == "EventList" and doc["apiVersion"] == "audit.k8s.io/v1"
        assert doc["metadata"] == {}
        sizes.append(len(doc["items"]))
        for item in doc["items"]:
            assert "kind" not in item and "apiVersion" not in item
    assert sizes == [400, 400, 200]


def test_levels_stages_and_object_sizes_are_realistic() -> None:
    work = workload.generate(4000, match_ratio=0.01, seed=4)
    levels: collections.Counter[str] = collections.Counter()
    stages: dict[str, list[str]] = collections.defaultdict(list)
    users = set()
    for item in work.items:
        event = orjson.loads(item)
        levels[event["level"]] += 1
        stages[event["auditID"]].append(event["stage"])
        users.add(event["user"].get("username", ""))
        if event["level"] == "RequestResponse":
            sizes = [len(orjson.dumps(event[key])) for key in ("requestObject", "responseObject")
                     if key in event]
            assert sizes, "a RequestResponse event without objects"
            assert max(sizes) >= 2 * KIB
            assert max(sizes) <= 50 * KIB
        else:
            assert "requestObject" not in event and "responseObject" not in event
    assert 0.05 < levels["RequestResponse"] / len(work.items) < 0.2
    # Long-running requests: ResponseStarted then ResponseComplete with the same auditID.
    pairs = [s for s in stages.values() if len(s) == 2]
    assert pairs and all(s == ["ResponseStarted", "ResponseComplete"] for s in pairs)
    assert all(s == ["ResponseComplete"] for s in stages.values() if len(s) == 1)
    assert any(u.startswith("system:node:") for u in users)
    assert any(u.startswith("system:serviceaccount:") for u in users)
    assert any(u.startswith("oidc:") for u in users)
    assert "system:admin" in users


@pytest.mark.parametrize("ratio", [0.001, 0.01, 0.1])
def test_match_ratio_is_roughly_honoured(ratio: float) -> None:
    count = 20_000
    work = workload.generate(count, match_ratio=ratio, seed=5)
    share = len(work.expected) / count
    assert ratio * 0.6 <= share <= ratio * 1.5, share


def test_no_matches_when_ratio_is_zero() -> None:
    work = workload.generate(3000, match_ratio=0.0, seed=6)
    assert work.expected == []


def test_detector_finds_exactly_the_intended_matches() -> None:
    detector = Detector(shipped_rules())
    work = workload.generate(6000, match_ratio=0.05, seed=9)
    events = [orjson.loads(item) for item in work.items]
    fired = rules_per_event(detector, events)
    expected = {exp.index: exp for exp in work.expected}
    scenarios = {exp.scenario for exp in work.expected}
    assert scenarios == {"exec-websocket", "exec-spdy", "port-forward", "secret-get",
                         "deployment-patch", "deployment-scale", "bypass-annotation"}
    for index, exp in expected.items():
        assert events[index]["auditID"] == exp.audit_id
        assert events[index]["stage"] == exp.stage
        assert exp.rule in fired.get(index, set()), (exp, fired.get(index))
    unintended = {i: fired[i] for i in fired if i not in expected}
    assert unintended == {}, [work.items[i][:300] for i in list(unintended)[:3]]


def test_exec_over_websocket_and_spdy() -> None:
    work = workload.generate(8000, match_ratio=0.1, seed=10)
    verbs = collections.defaultdict(set)
    for exp in work.expected:
        event = orjson.loads(work.items[exp.index])
        verbs[exp.scenario].add(event["verb"])
        if exp.scenario.startswith("exec"):
            assert event["objectRef"]["subresource"] == "exec"
            assert event["responseStatus"]["code"] == 101
    assert verbs["exec-websocket"] == {"get"}
    assert verbs["exec-spdy"] == {"create"}
    assert verbs["port-forward"] <= {"get", "create"}


def test_bypass_annotation_is_in_the_response_object() -> None:
    work = workload.generate(8000, match_ratio=0.1, seed=11)
    bypass = [orjson.loads(work.items[e.index]) for e in work.expected
              if e.scenario == "bypass-annotation"]
    assert bypass
    for event in bypass:
        annotations = event["responseObject"]["metadata"]["annotations"]
        assert annotations["policy.admission.k8s.io/bypass"] == "true"


def test_large_batch_is_about_the_requested_size() -> None:
    body = workload.large_batch(4 * 1024 * 1024, items=40)
    doc = orjson.loads(body)
    assert len(doc["items"]) == 40
    assert 3.6 * 1024 * 1024 < len(body) < 4.4 * 1024 * 1024


def test_cli_writes_lines_eventlists_and_expected(tmp_path: Path) -> None:
    expected_path = tmp_path / "expected.json"
    run = subprocess.run(
        [sys.executable, str(WORKLOAD), "--events", "900",
         "--match-ratio", "0.1", "--seed", "1", "--format", "eventlist", "--batch", "400",
         "--expected", str(expected_path)],
        cwd=ROOT, capture_output=True, check=True, timeout=120)
    bodies = run.stdout.splitlines()
    assert [len(orjson.loads(b)["items"]) for b in bodies] == [400, 400, 100]
    expected = orjson.loads(expected_path.read_bytes())
    assert expected and {"index", "audit_id", "scenario", "rule", "stage"} <= set(expected[0])
    lines = subprocess.run(
        [sys.executable, str(WORKLOAD), "--events", "50", "--format",
         "lines"], cwd=ROOT, capture_output=True, check=True, timeout=120).stdout
    assert len(lines.splitlines()) == 50
    bad = subprocess.run(
        [sys.executable, str(WORKLOAD), "--match-ratio", "2"],
        check=False, cwd=ROOT, capture_output=True, timeout=120)
    assert bad.returncode == 2 and b"match-ratio" in bad.stderr


def test_no_test_or_tool_names_a_path_of_one_machine() -> None:
    """Paths are found relative to the repository (tests/support/paths.py), so a clone
    anywhere runs the same tests."""
    absolute = re.compile(r"""["'](/work|/root|/home|/Users)/""")
    for folder in ("tests", "benchmarks", "conformance"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if absolute.search(line) and "absolute.search" not in line:
                    raise AssertionError(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")


# -- the streams beside today's ---------------------------------------------------------

def test_todays_stream_keeps_its_bytes() -> None:
    """Today's workload is what the recorded figures and the tests were measured on: the
    streams added beside it must not change one byte of it for a seed."""
    work = workload.generate(2000, match_ratio=0.05, seed=1)
    digest = hashlib.sha256(b"".join(work.items)).hexdigest()
    assert digest == "00aa3097dadc159b507ba0acfd7fde4c1283c7f0127767002b8aea9dfd536dfd"
    assert workload.stream("today", 2000, match_ratio=0.05, seed=1).items == work.items


def _levels_and_sizes(items: list[bytes]) -> tuple[float, list[int]]:
    """(share of events carrying objects, sizes of the Metadata-level events)."""
    bodies, sizes = 0, []
    for item in items:
        event = orjson.loads(item)
        if "requestObject" in event or "responseObject" in event:
            bodies += 1
        else:
            assert event["level"] == "Metadata"
            sizes.append(len(item))
    return bodies / len(items), sizes


def test_realistic_stream_is_shaped_like_the_recorded_events() -> None:
    work = workload.stream("realistic", 6000, seed=3)
    body_share, sizes = _levels_and_sizes(work.items)
    assert 0.01 < body_share < 0.05  # people's writes with their objects
    assert 900 < statistics.mean(sizes) < 1300  # ~1 KiB Metadata events
    users = [orjson.loads(item)["user"] for item in work.items]
    bound = [u for u in users if u.get("username", "").startswith("system:serviceaccount:")]
    assert bound and all("authentication.kubernetes.io/credential-id" in u["extra"]
                         for u in bound)
    pods = [u for u in bound if "authentication.kubernetes.io/pod-name" in u["extra"]]
    assert len(pods) > len(bound) / 2  # most are pods' projected tokens
    assert {"authentication.kubernetes.io/node-name", "authentication.kubernetes.io/pod-uid"} \
        <= set(pods[0]["extra"])
    kubelets = [u for u in users if u.get("username", "").startswith("system:node:")]
    assert kubelets and all(u["extra"]["authentication.kubernetes.io/credential-id"][0]
                            .startswith("X509SHA256=") for u in kubelets)


def test_small_stream_is_small_metadata_events() -> None:
    work = workload.stream("small", 6000, seed=3)
    body_share, sizes = _levels_and_sizes(work.items)
    assert body_share < 0.005  # only the bypasses that must show their object
    assert 700 < statistics.mean(sizes) < 850
    assert not any("extra" in orjson.loads(item)["user"] for item in work.items)


@pytest.mark.parametrize("name", ["realistic", "small"])
def test_streams_match_exactly_as_built(name: str) -> None:
    detector = Detector(shipped_rules())
    work = workload.stream(name, 6000, match_ratio=0.05, seed=9)
    assert workload.stream(name, 6000, match_ratio=0.05, seed=9).items == work.items
    events = [orjson.loads(item) for item in work.items]
    fired = rules_per_event(detector, events)
    expected = {exp.index: exp for exp in work.expected}
    assert 0.03 < len(expected) / len(events) < 0.08
    for index, exp in expected.items():
        assert events[index]["auditID"] == exp.audit_id
        assert exp.rule in fired.get(index, set()), (exp, fired.get(index))
    unintended = {i: fired[i] for i in fired if i not in expected}
    assert unintended == {}, [work.items[i][:300] for i in list(unintended)[:3]]


def test_unknown_stream_is_refused() -> None:
    with pytest.raises(ValueError, match="no stream"):
        workload.stream("huge", 10)


def test_cli_writes_the_other_streams() -> None:
    run = subprocess.run(
        [sys.executable, str(WORKLOAD), "--stream", "small", "--events", "300", "--format",
         "lines"], cwd=ROOT, capture_output=True, check=True, timeout=120)
    lines = run.stdout.splitlines()
    assert len(lines) == 300 and all(orjson.loads(line)["kind"] == "Event" for line in lines)
