"""`healert-webhook replay`: run the rules over historic audit logs and print what fires.

Each friction event is printed as one JSON line on stdout (the body the backend would
receive); a summary goes to stderr. With `--forward` the events are also queued in the
outbox, deduplicated by key. `--explain` says why each event fired or did not instead
(commands/explain.py). Reading the files is sources/replay.py's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import orjson

from healert_webhook import exits
from healert_webhook.commands import explain
from healert_webhook.commands.base import Settable
from healert_webhook.config import ConfigError, Settings
from healert_webhook.outbox import Outbox
from healert_webhook.pipeline import Pipeline
from healert_webhook.records import Friction, StoreResult
from healert_webhook.sources.replay import SOURCE, ReplayResult, replay_paths

NAME = "replay"
HELP = "run the rules over historic audit logs and print friction events"
GROUPS: tuple[str, ...] = ("rules", "detect", "lines", "outbox")


def add_arguments(parser: argparse.ArgumentParser, add_settings: Settable) -> None:
    """The files, and how to replay them."""
    add_settings(parser)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="JSON-lines logs (.gz too), EventList or Event files; - for stdin")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--forward", action="store_true",
                      help="also queue the friction events in the outbox for delivery "
                           "(deduplicated against what was already sent)")
    mode.add_argument("--dry-run", action="store_true",
                      help="only print friction events (the default)")
    mode.add_argument("--explain", action="store_true",
                      help="print, for each event, every candidate rule and why it fired or "
                           "not, the entity and where its name came from")
    parser.add_argument("--audit-id", default=None, metavar="ID",
                        help="--explain: only the event(s) with this auditID")
    parser.add_argument("--user", default=None, metavar="NAME",
                        help="--explain: only events made by (or as) this user")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Replay, or explain, the files of `args`."""
    if args.explain:
        return explain.run_explain(settings, args.paths, audit_id=args.audit_id,
                                   user=args.user, out=sys.stdout)
    if args.audit_id is not None or args.user is not None:
        raise ConfigError("--audit-id and --user go with --explain")
    return run_replay(settings, args.paths, forward=args.forward)


def summary_lines(result: ReplayResult) -> list[str]:
    """The human summary printed on stderr after a replay."""
    report, stats = result.report, result.stats
    invalid_lines = sum(report.invalid.values())
    lines = [f"replay: {report.lines} lines, {stats.events} audit events, "
             f"{invalid_lines} invalid lines, {sum(stats.invalid.values())} invalid events, "
             f"{result.printed} friction events ({result.duplicates} duplicates suppressed)"]
    lines += [f"  invalid line {example}" for example in report.examples]
    if report.nul_bytes:
        lines.append(f"  skipped {report.nul_bytes} NUL bytes (left by a crash of the "
                     "writer?); the events after them were read")
    if invalid_lines > len(report.examples):
        lines.append(f"  ... and {invalid_lines - len(report.examples)} more invalid lines")
    for reason, count in sorted(stats.invalid.items()):
        lines.append(f"  invalid events: {reason}: {count}")
    for (rule, severity), count in sorted(stats.matched.items()):
        lines.append(f"  rule {rule} ({severity}): {count}")
    if stats.skipped:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(stats.skipped.items()))
        lines.append(f"  no friction: {skipped}")
    lines += [f"  cannot read {failure}" for failure in result.failed_files]
    return lines


def forward_lines(result: ReplayResult, retention_days: float) -> list[str]:
    """What `--forward` did with the friction events it found."""
    return [f"  forwarded: {result.queued} queued for delivery, {result.already_known} "
            f"already queued or delivered, {result.set_aside} set aside as older than the "
            f"backend's retention ({retention_days:g} days; `outbox dead` lists them)"]


def run_replay(settings: Settings, paths: Sequence[str], *, forward: bool) -> int:
    """Replay `paths`: OK, or FAILED when a file could not be read.

    Raises RulesError for an unusable rules file, OutboxError when `--forward` cannot
    open the outbox.
    """
    outbox = Outbox.from_settings(settings) if forward else None
    try:
        pipeline = Pipeline.from_settings(settings, outbox)
        out = sys.stdout.buffer

        def emit(friction: Friction) -> None:
            out.write(orjson.dumps(friction.event) + b"\n")

        def store(found: list[Friction]) -> StoreResult:
            return pipeline.store(found, SOURCE)

        try:
            result = replay_paths(pipeline, paths, emit, settings.tail_max_line_bytes,
                                  store if outbox is not None else None)
        finally:
            out.flush()
    finally:
        if outbox is not None:
            outbox.close()
    lines = summary_lines(result)
    if outbox is not None:
        lines += forward_lines(result, settings.backend_retention_days)
    for line in lines:
        print(line, file=sys.stderr)
    return exits.FAILED if result.failed_files else exits.OK
