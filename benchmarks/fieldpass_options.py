"""The field pass's options, measured on the same events: µs per event, in one run.

    .venv/bin/python benchmarks/fieldpass_options.py [--events 20000]

For each stream (tests/support/workload.py): today's pass (simdjson's read, the fields
through pysimdjson's objects, `rule_out`), msgspec decoding only the deciding fields
(healert_webhook/fieldpass.py's Struct) or skipping everything, the decision through
`rule_out` on the fields against the cached one, and for webhook bodies the ways of
getting each item's fields and the candidates' bytes; where it is built, the optional
native scanner (healert_webhook/nativescan.py) reading the same lines and bodies, and
its fields decided by the cached decision. The best of 7 repetitions, with the cyclic GC
paused; docs/performance.md has a run (`HEALERT_NATIVE=off` leaves the native rows out).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
sys.path.insert(2, str(Path(__file__).resolve().parent.parent / "tests"))

import run

from healert_webhook import fieldpass, prefilter
from healert_webhook.config import Settings
from healert_webhook.nativescan import native
from healert_webhook.pipeline import Pipeline, gc_paused, make_detector

from support import workload


class _Nothing(msgspec.Struct, gc=False):
    """No field: msgspec skips the whole event."""


class _Items(msgspec.Struct, gc=False):
    """A body whose items' fields are decoded in one pass."""

    items: list[fieldpass._Fields] = []


def best(count: int, func: Callable[[], object], reps: int = 7) -> float:
    """The least CPU µs per event of `reps` calls of `func` over `count` events."""
    func()
    with gc_paused():
        return min(run.per_event_us(count, func) for _ in range(reps))


def options(pipeline: Pipeline, work: workload.Workload) -> list[tuple[str, float]]:
    """(what, µs per event) for one stream."""
    n = len(work.items)
    lines = [line.rstrip(b"\n") for line in work.lines()]
    bodies = list(work.batches(400))
    today = pipeline.rules.prefilter
    fast = fieldpass.FieldPass(pipeline.detector.index)
    decode = fieldpass._read_known_fields
    skip_all = msgspec.json.Decoder(_Nothing).decode
    whole = msgspec.json.Decoder(_Items).decode
    decoded = [decode(line) for line in lines]
    exact, decide = fast._exact, fast._decide

    def decisions_then_simdjson() -> None:
        for body in bodies:
            candidates = [i for i, fields in enumerate(whole(body).items)
                          if decide(fields) is None]
            if candidates:
                items = prefilter.parse(body)["items"]
                for i in candidates:
                    items[i].mini  # noqa: B018 - the candidate's bytes
                del items

    rows: list[tuple[str, Callable[[], Any]]] = [
        ("today: simdjson, fields through its objects, rule_out (a line)",
         lambda: run.prefilter_lines(today, lines)),
        ("msgspec decoding only the deciding fields (a line)",
         lambda: [decode(line) for line in lines]),
        ("msgspec skipping the whole event (a line)", lambda: [skip_all(line) for line in lines]),
        ("the decision: rule_out on the decoded fields", lambda: [exact(f) for f in decoded]),
        ("the decision: cached per combination", lambda: [decide(f) for f in decoded]),
        ("msgspec field pass, a line (FieldPass.reason)",
         lambda: run.fieldpass_lines(fast, lines)),
        ("today, a body: simdjson, fields, candidates' bytes (mini)",
         lambda: run.prefilter_bodies(today, bodies)),
        ("msgspec, a body: split into items, each item's fields (FieldPass.split)",
         lambda: run.fieldpass_bodies(fast, bodies)),
        ("msgspec, a body: every item's fields in one pass, simdjson for candidates",
         decisions_then_simdjson),
    ]
    if native is not None:
        rows += native_rows(fast, lines, bodies)
    return [(what, best(n, func)) for what, func in rows]


def native_rows(fast: fieldpass.FieldPass, lines: list[bytes], bodies: list[bytes]
                ) -> list[tuple[str, Callable[[], Any]]]:
    """The native scanner's rows: its reading alone, and its fields decided as
    nativescan.py says they plug into the field pass."""
    assert native is not None
    scan_line, scan_body, decide = native.scan_line, native.scan_body, fast._decide
    fields_of, user_of, ref_of = fieldpass._Fields, fieldpass._User, fieldpass._Ref

    def decided(found: Any) -> Any:
        stage, verb, resource, subresource, namespace, username, impersonated = found
        return decide(fields_of(stage, verb, user_of(username), impersonated,
                                ref_of(resource, subresource, namespace)))

    # the cheap way in (nativescan.py): answers looked up by fields[:5], the user's part
    # (a second answer for internal actors) left out
    answers = {found[:5]: decided(found) for found in map(scan_line, lines)}
    looked_up = answers.get

    def simdjson_reads() -> None:
        for line in lines:
            prefilter.parse(line)  # each result dropped before the next parse

    return [
        ("simdjson reading a line, nothing read from it (a native read's cost)",
         simdjson_reads),
        ("native scanner, a line (scan_line)", lambda: [scan_line(line) for line in lines]),
        ("native scanner, a line, then an answer looked up by fields[:5]",
         lambda: [looked_up(scan_line(line)[:5]) for line in lines]),
        ("native scanner, a line, then the cached decision",
         lambda: [decided(scan_line(line)) for line in lines]),
        ("native scanner, a body: items' bounds and fields (scan_body)",
         lambda: [scan_body(body) for body in bodies]),
        ("native scanner, a body, then each item's cached decision",
         lambda: [[decided(found) if found is not None else None
                           for _, _, found in scan_body(body)] for body in bodies]),
    ]


def main(argv: list[str] | None = None) -> int:
    """Measure and print the options, stream by stream."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args(argv)
    settings = Settings()
    pipeline = Pipeline(settings, make_detector(run.shipped_rules(), settings))
    results = {name: options(pipeline, workload.stream(name, args.events))
               for name in run.STREAMS}
    print(f"{'us per event':<74} " + " ".join(f"{name:>10}" for name in results))
    for index, (what, _) in enumerate(results[run.STREAMS[0]]):
        print(f"{what:<74} " + " ".join(f"{rows[index][1]:>10.2f}" for rows in results.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
