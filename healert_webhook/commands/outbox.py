"""`healert-webhook outbox status|list|dead|retry-dead|purge`: inspect and repair the queue.

What an operator runs when delivery is stuck: each action prints plain text (or JSON with
`--json`) and answers OK, or FAILED when it refused (purge without --yes) or failed (the
message is on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from healert_webhook import exits
from healert_webhook.backend import excerpt
from healert_webhook.backend_contract import ANSWER_MAX
from healert_webhook.commands.base import Settable
from healert_webhook.config import Settings
from healert_webhook.outbox import Outbox, exclusive, move_aside, quick_check
from healert_webhook.records import OutboxError

NAME = "outbox"
HELP = "inspect and repair the delivery queue"
GROUPS: tuple[str, ...] = ("outbox",)
JSON_HELP = "print JSON"
MAX_LIMIT = 2**63 - 1  # SQLite's largest integer


def row_count(text: str) -> int:
    """A --limit: a whole number of rows, at least 1 (SQLite reads a negative LIMIT as none)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_LIMIT}, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser, add_settings: Settable) -> None:
    """The actions, each with its own flags and the outbox settings."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True,
                                    parser_class=type(parser))
    status = actions.add_parser("status", help="depth, oldest event, in flight, dead letters",
                                description="Show the outbox's depth, oldest event, events "
                                            "in flight and dead letters.")
    status.add_argument("--json", action="store_true", help=JSON_HELP)
    listing = actions.add_parser("list", help="the oldest queued events",
                                 description="List the oldest queued friction events.")
    listing.add_argument("--limit", type=row_count, default=20, help="most rows shown (20)")
    listing.add_argument("--json", action="store_true", help=JSON_HELP)
    dead = actions.add_parser("dead", help="dead letters with their reasons",
                              description="List dead letters (events the backend or the "
                                          "contract refused, or set aside) with reasons.")
    dead.add_argument("--limit", type=row_count, default=1000, help="most rows shown (1000)")
    dead.add_argument("--json", action="store_true", help=JSON_HELP)
    retry = actions.add_parser("retry-dead", help="requeue dead letters after fixing the cause",
                               description="Move dead letters back to the end of the queue.")
    retry.add_argument("keys", nargs="*", help="only these dedup keys (default: all)")
    retry.add_argument("--json", action="store_true", help=JSON_HELP)
    purge = actions.add_parser("purge", help="delete the queue, the dead letters, or move a "
                                             "corrupt file aside",
                               description="Delete every queued event (or dead letter), or "
                                           "move a corrupt outbox file aside.")
    purge.add_argument("--dead", action="store_true", help="the dead letters, not the queue")
    purge.add_argument("--corrupt", action="store_true",
                       help="move a corrupt outbox file aside (refused while an agent holds "
                            "it, or when the file is healthy)")
    purge.add_argument("--yes", action="store_true", help="really do it")
    purge.add_argument("--json", action="store_true", help=JSON_HELP)
    for action in (status, listing, dead, retry, purge):
        add_settings(action)


def _age(created: float | None) -> str:
    if created is None:
        return "-"
    seconds = max(0.0, time.time() - created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _emit(as_json: bool, data: Any, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(data, default=str))
    else:
        for line in lines:
            print(line)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """The action of `args` on the configured outbox."""
    return outbox_command(settings, args.action, args)


def outbox_command(settings: Settings, action: str, args: Any) -> int:
    """`outbox status|list|dead|retry-dead|purge`; `args` may carry `json`, `limit`,
    `keys`, `yes`, `dead` and `corrupt` (missing attributes take their defaults)."""
    path = settings.outbox_path
    if action == "purge" and getattr(args, "corrupt", False):
        return _purge_corrupt(settings, args)
    if not path.exists() and action in ("status", "list", "dead"):
        print(f"no outbox at {path} yet: nothing queued")
        return exits.OK
    try:
        box = Outbox.from_settings(settings)
    except OutboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exits.FAILED
    try:
        handler = _ACTIONS.get(action)
        if handler is None:
            print(f"error: unknown outbox action {action!r}", file=sys.stderr)
            return exits.FAILED
        return handler(box, args)
    except OutboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exits.FAILED
    finally:
        box.close()


def _status(box: Outbox, args: Any) -> int:
    stats = box.stats()
    data = {"path": str(box.path), "depth": stats.depth, "oldest_created": stats.oldest_created,
            "in_flight": stats.in_flight, "dead_letters": stats.dead,
            "delivered_remembered": stats.delivered_remembered}
    _emit(getattr(args, "json", False), data, [
        f"outbox            {box.path}",
        f"queued            {stats.depth}",
        f"oldest            {_age(stats.oldest_created)}",
        f"in flight         {stats.in_flight}",
        f"dead letters      {stats.dead}",
        f"delivered (dedup) {stats.delivered_remembered}",
    ])
    return exits.OK


def _list(box: Outbox, args: Any) -> int:
    rows = box.head(int(getattr(args, "limit", None) or 20))
    data = [{"seq": r.seq, "key": r.key, "rule": r.rule, "created": r.created,
             "attempts": r.attempts, "last_error": r.last_error, "event": r.event}
            for r in rows]
    lines = [f"{r.seq:>8} {r.key} {r.rule:<24} {r.event.get('entity_ref', '?')} "
             f"age {_age(r.created)} attempts {r.attempts}"
             + (f" last error: {r.last_error}" if r.last_error else "") for r in rows]
    _emit(getattr(args, "json", False), data, lines or ["queue empty"])
    return exits.OK


def _dead(box: Outbox, args: Any) -> int:
    letters = box.dead_letters(int(getattr(args, "limit", None) or 1000))
    # Rows dead-lettered by an earlier version hold the backend's answer as it came: a
    # token it echoed is masked and control characters escaped before they reach a
    # terminal or a script (what is stored now is so already: this leaves it as it is).
    answers = [excerpt(d.answer.encode(), limit=ANSWER_MAX) if d.answer else d.answer
               for d in letters]
    data = [{"key": d.key, "rule": d.rule, "status": d.status, "reason": d.reason,
             "answer": answer, "dead_at": d.dead_at, "event": d.event}
            for d, answer in zip(letters, answers, strict=True)]
    lines = []
    for d, answer in zip(letters, answers, strict=True):
        status = f"HTTP {d.status}" if d.status is not None else "not sent"
        lines.append(f"{d.key} {d.rule} {d.event.get('entity_ref', '?')} ({status}, "
                     f"{_age(d.dead_at)} ago): {d.reason}")
        if answer:
            lines.append(f"    backend said: {answer[:300]}")
    _emit(getattr(args, "json", False), data, lines or ["no dead letters"])
    return exits.OK


def _retry_dead(box: Outbox, args: Any) -> int:
    keys = getattr(args, "keys", None) or None
    unknown = box.not_dead(keys) if keys is not None else []
    if keys is not None:
        keys = [key for key in keys if key not in unknown]
    moved = box.retry_dead(keys) if keys is None or keys else 0
    _emit(getattr(args, "json", False), {"requeued": moved, "unknown": unknown},
          [f"requeued {moved} dead letter(s) at the end of the queue"]
          + [f"error: no dead letter with key {key}" for key in unknown])
    return exits.FAILED if unknown else exits.OK


def _purge(box: Outbox, args: Any) -> int:
    dead = bool(getattr(args, "dead", False))
    stats = box.stats()
    what = f"{stats.dead} dead letter(s)" if dead else f"{stats.depth} queued event(s)"
    if not getattr(args, "yes", False):
        print(f"would delete {what} from {box.path}; run again with --yes to do it",
              file=sys.stderr)
        return exits.FAILED
    count = box.purge(dead=dead)
    _emit(getattr(args, "json", False), {"purged": count, "dead": dead},
          [f"deleted {count} {'dead letter(s)' if dead else 'queued event(s)'}"])
    return exits.OK


def _purge_corrupt(settings: Settings, args: Any) -> int:
    """Move a corrupt outbox aside, but never one in use or one that is healthy."""
    path = settings.outbox_path
    if not path.exists():
        _emit(getattr(args, "json", False), {"moved": []}, [f"nothing at {path}"])
        return exits.OK
    lock = exclusive(path)
    if lock is None:
        print(f"error: {path} is open in another process (an agent, `replay --forward` or "
              "an `outbox` command): stop it first; nothing was moved", file=sys.stderr)
        return exits.FAILED
    try:
        check = quick_check(path)
        if check == "ok":
            print(f"error: {path} is not corrupt (quick_check: ok); nothing was moved. To "
                  "delete the queued events instead, run `outbox purge --yes`",
                  file=sys.stderr)
            return exits.FAILED
        if not getattr(args, "yes", False):
            print(f"would move {path} (quick_check: {check[:200]}) and its -wal/-shm files "
                  "aside; run again with --yes", file=sys.stderr)
            return exits.FAILED
        moved = move_aside(path)
    finally:
        lock.close()
    _emit(getattr(args, "json", False), {"moved": [str(p) for p in moved]},
          [f"moved {p}" for p in moved])
    return exits.OK


_ACTIONS: dict[str, Callable[[Outbox, Any], int]] = {
    "status": _status, "list": _list, "dead": _dead, "retry-dead": _retry_dead,
    "purge": _purge,
}
