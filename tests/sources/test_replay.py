"""`healert-webhook replay` over real fixtures, every input format, and hostile files."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from support.events import exec_ws, port_forward, secret_get
from support.paths import ROOT

EXPECTED = ROOT / "tests" / "expected" / "fixtures-replay.jsonl"


def replay(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "healert_webhook", "replay", *args],
                          input=stdin, capture_output=True, timeout=120, check=False,
                          env=env, cwd=cwd)


def frictions(done: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in done.stdout.splitlines()]


def line(event: dict[str, Any]) -> bytes:
    """A log-file line: log lines carry kind and apiVersion, webhook items do not."""
    return orjson.dumps({"kind": "Event", "apiVersion": "audit.k8s.io/v1", **event}) + b"\n"


def fixture_files(root: Path) -> list[str]:
    files = sorted(
        [str(p) for p in (root / "falco-k8s_audit").glob("*.json")]
        + [str(p) for p in (root / "crowdsec-hub").iterdir()]
        + [str(root / name) for name in ("audit2rbac-demo.log",
                                          "test-infra-logviewer-gce-scale.ndjson",
                                          "kube-audit-log-tool-single-event.json")])
    return files


def test_all_fixtures_replay_to_the_expected_friction_events(fixtures_dir: Path) -> None:
    done = replay(*fixture_files(fixtures_dir), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    expected = [json.loads(text) for text in EXPECTED.read_text().splitlines()]
    assert frictions(done) == expected
    summary = done.stderr.decode()
    assert summary.startswith("replay: 95 lines, 95 audit events, 0 invalid lines, "
                              "1 invalid events, 5 friction events")
    assert "invalid events: missing_stage: 1" in summary  # fal_01_003.json is {"kind": 0}


def test_fixtures_with_every_rule_enabled_give_backend_valid_events(
        fixtures_dir: Path, tmp_path: Path) -> None:
    rules = (ROOT / "rules.yaml").read_text().replace("enabled: false", "enabled: true")
    (tmp_path / "rules.yaml").write_text(rules)
    done = replay(*fixture_files(fixtures_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = frictions(done)
    kinds = {f["type"] for f in found}
    assert {"rbac-change", "namespace-creation", "kubectl-attach", "configmap-drift",
            "secret-deletion"} <= kinds
    refs = {f["entity_ref"] for f in found}
    # The ClusterRole system:kube-aggregator has a colon the backend refuses.
    assert "component:default/system-kube-aggregator" in refs
    for event in found:
        assert_backend_valid(event)


def assert_backend_valid(event: dict[str, Any]) -> None:
    """The backend's field rules (backend_contract.py)."""
    import re

    assert 3 <= len(event["entity_ref"]) <= 200
    assert re.fullmatch(r"[a-zA-Z0-9_-]+:[a-zA-Z0-9_-]+/[a-zA-Z0-9_.-]+", event["entity_ref"])
    assert 3 <= len(event["type"]) <= 50
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*[a-z0-9]", event["type"])
    assert event["severity"] in ("high", "medium", "low")
    for key in ("actor", "service", "namespace", "workflow"):
        assert len(event.get(key, "")) <= 200
    assert len(event.get("description", "")) <= 500
    assert len(event.get("timestamp", "")) <= 40
    assert set(event) <= {"entity_ref", "type", "severity", "actor", "service", "namespace",
                          "workflow", "description", "points", "timestamp"}


def test_formats_gzip_eventlist_pretty_event_and_stdin(tmp_path: Path) -> None:
    plain = tmp_path / "audit.log"
    plain.write_bytes(line(exec_ws()))
    rotated = tmp_path / "audit-2026-11-26T10-00-00.000.log.gz"
    rotated.write_bytes(gzip.compress(line(port_forward())))
    eventlist = tmp_path / "batch.json"
    eventlist.write_bytes(orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
                                        "metadata": {}, "items": [secret_get()]}))
    pretty = tmp_path / "event.json"
    pretty.write_text(json.dumps({"kind": "Event", **secret_get(name="api-token")}, indent=2))
    array = tmp_path / "array.json"
    array.write_bytes(orjson.dumps([secret_get(name="tls-key")]))
    done = replay(str(plain), str(rotated), str(eventlist), str(pretty), str(array), "-",
                  stdin=line(secret_get(name="from-stdin")))
    assert done.returncode == 0, done.stderr
    described = [f["description"] for f in frictions(done)]
    assert described == [
        "kubectl exec on pods/payments-api-7d9f8b6c4-xkj2p (ns:payments, container:-, "
        "command:-) by oidc:jane@example.com",
        "kubectl port-forward to pods/postgres-0 (ns:payments) by oidc:jane@example.com",
        "Direct secret access: db-credentials in payments by oidc:jane@example.com",
        "Direct secret access: api-token in payments by oidc:jane@example.com",
        "Direct secret access: tls-key in payments by oidc:jane@example.com",
        "Direct secret access: from-stdin in payments by oidc:jane@example.com",
    ]


def test_same_request_at_two_stages_prints_once(tmp_path: Path) -> None:
    started = exec_ws(audit_id="abc")
    complete = dict(started, stage="ResponseComplete")
    path = tmp_path / "audit.log"
    path.write_bytes(line(started) + line(complete) + line(started))
    done = replay(str(path))
    assert len(frictions(done)) == 1
    assert b"(2 duplicates suppressed)" in done.stderr


def test_hostile_lines_are_counted_with_their_place_and_never_crash(tmp_path: Path) -> None:
    good = line(exec_ws())
    path = tmp_path / "audit.log"
    path.write_bytes(
        good
        + good[: len(good) // 2] + b"\n"                      # truncated line
        + b"\xff\xfe not utf-8 \xc3\x28\n"                    # invalid UTF-8
        + b"[" * 100_000 + b"\n"                              # nesting far too deep
        + b'{"a": "' + b"x" * (10 * 1024 * 1024) + b'"}\n'   # a 10 MiB line (valid JSON)
        + b"12345\n"                                          # JSON, but not an event
        + line({**exec_ws(), "verb": 7})                      # wrong field type
        + line(exec_ws(user="eve\n\x1b[2J forged"))           # control chars in the user
        + b"\n\n"                                             # blank lines are not errors
        + line(exec_ws(pod="web-0"))[:-1]                     # last line without newline
    )
    done = replay(str(path))
    assert done.returncode == 0
    found = frictions(done)
    assert len(found) == 3
    assert found[1]["actor"] == "eve\\n\\x1b[2J forged"
    summary = done.stderr.decode()
    assert "invalid line " + str(path) + ":2: bad_json" in summary
    assert f"invalid line {path}:3: bad_json" in summary
    assert f"invalid line {path}:4: bad_json" in summary
    assert f"invalid line {path}:6: not_an_event" in summary
    assert "4 invalid lines" in summary
    assert "invalid events: missing_stage: 1" in summary  # the 10 MiB {"a": ...} object
    assert "invalid events: bad_verb: 1" in summary


def test_line_over_the_limit_is_skipped_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b'{"x": "' + b"y" * (3 * 1024 * 1024) + b'"}\n' + line(exec_ws()))
    env = {"HEALERT_TAIL_MAX_LINE_BYTES": str(1024 * 1024), "PATH": "/usr/bin:/bin"}
    done = replay(str(path), env=env)
    assert done.returncode == 0, done.stderr
    assert len(frictions(done)) == 1
    assert f"invalid line {path}:1: line_too_long" in done.stderr.decode()


def test_missing_file_is_reported_and_others_still_replayed(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(line(exec_ws()))
    done = replay(str(tmp_path / "nope.log"), str(path))
    assert done.returncode == 1
    assert len(frictions(done)) == 1
    assert b"cannot read " + str(tmp_path / "nope.log").encode() in done.stderr


def test_corrupt_gzip_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit-1.log.gz"
    path.write_bytes(gzip.compress(line(exec_ws()) * 50)[:-30])
    done = replay(str(path))
    assert done.returncode == 1
    assert b"cannot read" in done.stderr


def test_broken_rules_file_stops_replay_with_every_problem(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text("rules:\n  - name: x\n")
    path = tmp_path / "audit.log"
    path.write_bytes(line(exec_ws()))
    done = replay(str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == b""
    assert b"missing 'severity'" in done.stderr


@pytest.mark.parametrize("first", [b"{\n", b'{"kind": "Event",\n'])
def test_broken_first_line_of_json_lines_is_not_a_document(tmp_path: Path,
                                                          first: bytes) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(first + line(exec_ws()) + line(secret_get()))
    done = replay(str(path))
    assert [f["type"] for f in frictions(done)] == ["kubectl-exec", "emergency-access"]
    assert f"invalid line {path}:1: bad_json".encode() in done.stderr


def test_torn_lines_and_nul_runs_of_a_crashed_writer_lose_no_whole_event(
        tmp_path: Path) -> None:
    events = [exec_ws(), port_forward(), secret_get()]
    whole = [line(event) for event in events]
    log = tmp_path / "crashed.log"
    log.write_bytes(whole[0][:150] + whole[0]                 # torn, then the writer's line
                    + whole[1][:90] + b"\0" * 5000 + whole[1]  # torn, NULs, the line
                    + whole[2][:-1] + b"\0" * 10 + b"\n")      # whole, NULs for its newline
    done = replay(str(log))
    assert done.returncode == 0, done.stderr
    assert [f["type"] for f in frictions(done)] == ["kubectl-exec", "port-forward",
                                                     "emergency-access"]
    err = done.stderr.decode()
    assert "2 invalid lines" in err
    assert err.count("truncated_line") == 2
    assert "skipped 5010 NUL bytes" in err


@pytest.mark.parametrize("count", [1, 3])
def test_an_eventlist_with_one_item_a_line_is_one_document(tmp_path: Path, count: int) -> None:
    """The tour's example: the EventList's head on a line, each item on its own line, the
    closing brackets on the last. Its lines do not each parse, the whole does."""
    items = [secret_get(name=f"item-{n}") for n in range(count)]
    path = tmp_path / "batch.json"
    path.write_bytes(b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},'
                     b'"items":[\n' + b",\n".join(orjson.dumps(i) for i in items) + b"\n]}\n")
    done = replay(str(path))
    assert done.returncode == 0, done.stderr
    assert [f["description"].split()[3] for f in frictions(done)] == [
        f"item-{n}" for n in range(count)]
    assert b" 0 invalid lines," in done.stderr, done.stderr


def test_the_tour_example_replays_as_one_event() -> None:
    done = replay(str(ROOT / "docs" / "examples" / "exec-eventlist.json"))
    assert done.returncode == 0, done.stderr
    assert [f["type"] for f in frictions(done)] == ["kubectl-exec"]
    assert b"0 invalid lines" in done.stderr, done.stderr


def _versioned_line(event: dict[str, Any], version: str) -> bytes:
    return orjson.dumps({"kind": "Event", "apiVersion": f"audit.k8s.io/{version}",
                         **event}) + b"\n"


def test_replay_of_a_crashed_v1beta1_log_loses_no_whole_event(tmp_path: Path) -> None:
    # Old dumps are v1beta1 (DESIGN §4), written by the same Go encoder: a torn write
    # followed on the same line by the restarted writer's whole event must give that
    # event, as the tail does (reading.EVENT_START covers both versions).
    whole = [_versioned_line(event, "v1beta1")
             for event in (exec_ws(), secret_get(), port_forward())]
    log = tmp_path / "crashed-v1beta1.log"
    log.write_bytes(whole[0][:150] + whole[0] + whole[1][:90] + whole[1] + whole[2])
    done = replay(str(log))
    assert done.returncode == 0, done.stderr
    assert [f["type"] for f in frictions(done)] == [
        "kubectl-exec", "emergency-access", "port-forward"], done.stderr
    assert done.stderr.decode().count("truncated_line") == 2
