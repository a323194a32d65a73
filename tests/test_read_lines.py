"""The tail's reading of a block of log lines by the native lines reader
(`Pipeline.read_lines`) against its reading of the same lines split out
(`Pipeline.read`): the same events in the same order, the same lines ruled out under
the same reasons, the same bad lines; lines over the limit are left out of both."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fieldpass import fixture_lines, hostile_events

from healert_webhook import nativescan
from healert_webhook.config import Settings
from healert_webhook.pipeline import Pipeline
from healert_webhook.sources.tail import _line_offsets

from support import workload
from support.events import exec_event, noise_event
from support.paths import ROOT

LONGEST = 4096


@pytest.fixture(scope="module")
def scanner() -> ModuleType:
    """The compiled module; the test skips when it was not built."""
    if nativescan.native is None:
        if nativescan.os.environ.get("HEALERT_REQUIRE_NATIVE"):
            pytest.fail(f"HEALERT_REQUIRE_NATIVE is set: {nativescan.STATUS}")
        pytest.skip(nativescan.STATUS)
    return nativescan.native


@pytest.fixture(scope="module")
def pipeline(scanner: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """Every rule of rules.yaml enabled, so that many kinds of events are candidates."""
    path = tmp_path_factory.mktemp("rules") / "all.yaml"
    path.write_text((ROOT / "rules.yaml").read_text().replace("enabled: false",
                                                              "enabled: true"))
    return Pipeline.from_settings(Settings(rules_path=path, k8s_namespace="healert-system"))


def by_split(pipeline: Pipeline, block: bytes) -> tuple[Any, ...]:
    """The tail's reading without the lines reader: split, long lines left out."""
    lines = block.split(b"\n")[:-1]
    kept = [i for i, line in enumerate(lines) if len(line) <= LONGEST]
    read = pipeline.read([lines[i] for i in kept])
    events = list(read.events)
    bad = [(kept[i], reason) for i, reason in read.bad]
    return (len(lines), events, sorted(bad), read.ruled_out,
            [i for i, line in enumerate(lines) if len(line) > LONGEST])


def by_lines(pipeline: Pipeline, block: bytes | memoryview) -> tuple[Any, ...]:
    found = pipeline.read_lines(block, LONGEST)
    assert found is not None
    count, read, too_long = found
    events = list(read.events)
    return count, events, sorted(read.bad), read.ruled_out, too_long


def read_alike(pipeline: Pipeline, lines: list[bytes]) -> Counter[str]:
    """Both readings of a block of `lines` (each a line: no newline inside), twice (the
    second time from the decisions cached by the first); what was ruled out."""
    block = b"".join(line + b"\n" for line in lines)
    expected = by_split(pipeline, block)
    assert by_lines(pipeline, block) == expected
    assert by_lines(pipeline, block) == expected
    # as the tail hands it over: a view of the chunk read, up to its last newline
    assert by_lines(pipeline, memoryview(block + b'{"partial')[:len(block)]) == expected
    return expected[3]


def test_the_streams_and_the_fixtures_are_read_alike(pipeline: Pipeline,
                                                     fixtures_dir: Path) -> None:
    for stream in workload.STREAMS:
        lines = [line.rstrip(b"\n") for line in
                 workload.stream(stream, 1500, match_ratio=0.05, seed=5).lines()]
        assert sum(read_alike(pipeline, lines).values()) > 1000
    fixtures = fixture_lines(fixtures_dir)
    assert sum(read_alike(pipeline, fixtures).values()) > 50


def test_bad_blank_torn_and_long_lines_are_read_alike(pipeline: Pipeline) -> None:
    good = [orjson.dumps(exec_event(n, tag="lines")) for n in range(3)]
    noise = orjson.dumps(noise_event(4))
    lines = [good[0], b"", b"   ", b"{nope", b"[1]", b"7", noise,
             good[1][:40],  # torn
             good[1][:60] + good[2],  # torn, then a whole event: resynchronised
             b"\xff" + noise, noise + b" \r", b'{"stage":"ResponseComplete","verb":1}',
             b"x" * (LONGEST + 1), noise[:-1] + b',"pad":"' + b"y" * LONGEST + b'"}',
             good[2]]
    read_alike(pipeline, lines)
    count, read, too_long = pipeline.read_lines(b"".join(x + b"\n" for x in lines), LONGEST)
    assert [event["auditID"] for event in read.events] == \
        [orjson.loads(good[0])["auditID"], orjson.loads(good[2])["auditID"]]
    assert count == len(lines) and too_long == [12, 13]
    # what follows the last newline is no line yet
    count, read, _ = pipeline.read_lines(good[0] + b"\n" + good[1], LONGEST)
    assert count == 1 and len(list(read.events)) == 1


def test_bad_lines_are_placed_by_their_offsets() -> None:
    block = b'{"a":1}\n\n[1]\n{nope\n'
    assert _line_offsets(block, [0, 2, 3], 100) == [100, 100 + 9, 100 + 13]


def test_more_lines_than_the_scanner_holds_are_split_the_pure_way(
        pipeline: Pipeline, scanner: ModuleType) -> None:
    assert scanner.decide_lines(b"\n" * (scanner.MAX_ITEMS + 1), {}, {}, 10) is None
    assert pipeline.read_lines(b"\n" * (scanner.MAX_ITEMS + 1), LONGEST) is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_events(), min_size=1, max_size=12), st.integers(0, 2**32))
def test_hostile_lines_are_read_alike(pipeline: Pipeline, events: list[bytes],
                                      seed: int) -> None:
    rng = random.Random(seed)
    lines = []
    for raw in events:
        line = raw
        if rng.random() < 0.3:  # a byte replaced or dropped, as a torn write leaves them
            at = rng.randrange(len(line))
            line = line[:at] + bytes([rng.randrange(1, 256)]) * rng.randrange(2) + line[at + 1:]
        lines.append(line.replace(b"\n", b" "))
    read_alike(pipeline, lines)
