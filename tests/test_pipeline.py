"""The pipeline every source feeds: parse once, detect, store, count and log, alike."""

from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from healert_webhook.config import Settings
from healert_webhook.logs import Limiter
from healert_webhook.outbox import Outbox
from healert_webhook.pipeline import Pipeline, RuleReloads, gc_paused
from healert_webhook.records import Checkpoint
from healert_webhook.sources.tail import _line_offsets

from support.events import as_log_line, exec_event, noise_event, two_rules


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def make_pipeline(tmp_path: Path, outbox: Outbox | None, rules: str | None = None) -> Pipeline:
    path = None
    if rules is not None:
        path = tmp_path / "rules.yaml"
        path.write_text(rules)
    return Pipeline.from_settings(Settings(rules_path=path), outbox)


def test_line_offsets_of_bad_lines() -> None:
    block = b"".join(line + b"\n" for line in [b'{"a":1}', b"", b"[1]", b"{nope"])
    assert _line_offsets(block, [2, 3], 100) == [100 + 8 + 1, 100 + 8 + 1 + 4]


def test_a_bad_item_never_fails_its_batch_and_every_item_is_counted(
        tmp_path: Path, outbox: Outbox) -> None:
    pipeline = make_pipeline(tmp_path, outbox)
    good = orjson.dumps(exec_event(1, tag="pipe"))
    before = {reason: sample("healert_invalid_events_total", source="unit", reason=reason)
              for reason in ("bad_json", "not_an_object")}
    events_before = sample("healert_audit_events_total", source="unit")
    found, stored = pipeline.process([b"{", good, b"7", b"", noise_event(1)], "unit")
    assert [f.rule for f in found.frictions] == ["kubectl-exec"]
    assert stored.stored == 1
    assert found.bad == [(0, "bad_json"), (2, "not_an_object"), (3, "blank")]
    assert sample("healert_audit_events_total", source="unit") - events_before == 4
    for reason, old in before.items():
        assert sample("healert_invalid_events_total", source="unit", reason=reason) - old == 1


def limiters_over() -> None:
    """End every log limiter's interval: what an earlier test logged (a batch of 400
    events stored through the webhook) no longer counts against this one's lines."""
    for limiter in list(Limiter._all):
        limiter._started = {key: 0.0 for key in limiter._started}
    Limiter.flush_all()


def test_store_counts_duplicates_and_logs_each_friction_stored_once(
        tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    pipeline = make_pipeline(tmp_path, outbox, two_rules("pl"))
    limiters_over()
    batch = [exec_event(i, tag="dup") for i in range(3)]
    before = sample("healert_duplicates_suppressed_total", source="unit")
    with caplog.at_level(logging.INFO, logger="healert_webhook.pipeline"):
        first = pipeline.process(batch, "unit")[1]
        again = pipeline.process(batch, "unit")[1]  # the apiserver resent the batch
    assert (first.stored, first.duplicates) == (6, 0)
    assert (again.stored, again.duplicates) == (0, 6)
    assert sample("healert_duplicates_suppressed_total", source="unit") - before == 6
    stored = [r.__dict__ for r in caplog.records if r.getMessage() == "friction stored"]
    assert len(stored) == 6  # one per friction event stored, none for the duplicates
    assert all(line["actor"] == "alice@example.com"
               and line["entity"].startswith("component:payments/") for line in stored)
    ids = {event["auditID"] for event in batch}
    assert {line["auditID"] for line in stored} == ids  # which request
    assert {line["rule"] for line in stored} == {"pl-one", "pl-two"}
    # one request at two stages: two friction events of one key, one row, one line
    started = {**exec_event(9, tag="dup"), "stage": "ResponseStarted"}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="healert_webhook.pipeline"):
        twice = pipeline.process([started, exec_event(9, tag="dup")], "unit")[1]
    assert (twice.stored, twice.duplicates) == (2, 2)
    assert len([r for r in caplog.records if r.getMessage() == "friction stored"]) == 2


def test_the_checkpoint_is_stored_with_the_frictions(tmp_path: Path, outbox: Outbox) -> None:
    pipeline = make_pipeline(tmp_path, outbox)
    cp = Checkpoint("tail:/x", "/x", 1, 2, 300, "0:00")
    pipeline.process([orjson.dumps(exec_event(9, tag="cp"))], "unit", cp)
    assert outbox.load_checkpoint("tail:/x") == cp
    assert len(outbox.head(10)) == 1
    # nothing found and no checkpoint: no transaction at all
    assert pipeline.store([], "unit").stored == 0


def test_a_flood_of_detections_is_logged_with_a_summary(
        tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    pipeline = make_pipeline(tmp_path, outbox)
    limiters_over()
    with caplog.at_level(logging.INFO, logger="healert_webhook.pipeline"):
        pipeline.process([exec_event(i, tag="flood") for i in range(300)], "unit")
        limiters_over()
    messages = [r.getMessage() for r in caplog.records]
    shown = [m for m in messages if m.startswith("friction stored")]
    assert 0 < len(shown) < 300
    summary = [m for m in messages if "more friction events stored" in m]
    assert summary and int(summary[0].split()[0]) == 300 - len(shown)


def test_gc_pause_is_shared_by_threads_and_restores_what_it_found() -> None:
    assert gc.isenabled()
    inside = threading.Event()
    leave = threading.Event()

    def other() -> None:
        with gc_paused():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=other)
    with gc_paused():
        thread.start()
        inside.wait(10)
    assert not gc.isenabled()  # the other thread still evaluates its batch
    leave.set()
    thread.join(10)
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()


def test_reload_keeps_the_old_rules_when_the_new_file_is_broken(tmp_path: Path) -> None:
    pipeline = make_pipeline(tmp_path, None, two_rules("old"))
    before = pipeline.detector
    (tmp_path / "rules.yaml").write_text("rules: [ {name: X")
    assert pipeline.reload() is False
    assert pipeline.detector is before
    (tmp_path / "rules.yaml").write_text(two_rules("new"))
    assert pipeline.reload() is True
    assert {rule.name for rule in pipeline.detector.rules} == {"new-one", "new-two"}


# --- reloads on their own worker: the newest file wins ---------------------------

HUGE_BROKEN = "rules:\n" + "- 1\n" * 1_000_000  # 4 MiB: seconds to read


def test_a_fixed_file_arriving_during_a_slow_reload_is_applied_and_the_slow_one_dropped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pipeline = make_pipeline(tmp_path, None, two_rules("old"))
    reloads = RuleReloads(pipeline)
    failures = sample("healert_rules_reloads_total", result="failure")
    path = tmp_path / "rules.yaml"
    path.write_text(HUGE_BROKEN)
    with caplog.at_level(logging.INFO, logger="healert_webhook.pipeline"):
        reloads.request()
        wait_for_log(caplog, "loading rules from")  # the worker is reading the huge file
        path.write_text(two_rules("fixed"))
        reloads.request()
        assert reloads.wait(60)
    assert {rule.name for rule in pipeline.detector.rules} == {"fixed-one", "fixed-two"}
    assert "abandoned: a newer version is waiting" in caplog.text
    assert "rules reload failed" not in caplog.text  # the huge file's problems: never
    assert sample("healert_rules_reloads_total", result="failure") == failures


def test_an_older_file_is_never_applied_after_a_newer_one(tmp_path: Path) -> None:
    pipeline = make_pipeline(tmp_path, None, two_rules("old"))
    reloads = RuleReloads(pipeline)
    path = tmp_path / "rules.yaml"
    applied: list[str] = []
    real_reload = pipeline.reload

    def reload(superseded: Any = None) -> bool:
        version = path.read_text()[:40]
        done = real_reload(superseded)
        if done:
            applied.append(version)
        return done

    pipeline.reload = reload  # type: ignore[method-assign]  # records what was applied
    for n in range(20):  # requests faster than loads: each overtakes the one before
        # replaced whole, as a ConfigMap update does: a reader never sees half a file
        staged = tmp_path / "rules.yaml.new"
        staged.write_text(two_rules(f"v{n}") + "# padding\n" * (20_000 if n % 2 else 0))
        staged.replace(path)
        reloads.request()
    assert reloads.wait(120)
    assert {rule.name for rule in pipeline.detector.rules} == {"v19-one", "v19-two"}
    versions = [int(text.split("name: v")[1].split("-")[0]) for text in applied]
    assert versions == sorted(versions) and versions[-1] == 19


def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in caplog.text:
        assert time.monotonic() < deadline, f"no log line with {text!r}"
        time.sleep(0.005)


# --- a crashed writer's torn lines ------------------------------------------------

def log_line(n: int, tag: str = "r") -> bytes:
    return as_log_line(exec_event(n, tag=tag))


def audit_ids(found: list[dict[str, Any]]) -> list[str]:
    return [event["auditID"].split("-")[1] for event in found]


def test_the_pipeline_evaluates_recovered_events_and_lists_the_junk(tmp_path: Path) -> None:
    pipeline = make_pipeline(tmp_path, None)
    lines = [log_line(1)[:120] + log_line(2), log_line(3)[:60] + b"\0", b"{broken",
             log_line(4) + log_line(5)]
    found = pipeline.evaluate_items(lines, "test")
    assert sorted(f.audit_id.split("-")[1] for f in found.frictions) == [
        "00000002", "00000004", "00000005"]
    assert found.bad == [(0, "truncated_line"), (1, "truncated_line"), (2, "bad_json")]
