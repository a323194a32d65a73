"""The `healert-webhook` command: parse flags into Settings and run a subcommand.

Flags are generated from config.OPTIONS, so every flag has an environment variable of the
same meaning and the same default, and `--help` shows both.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from healert_webhook import __version__
from healert_webhook.config import OPTIONS, ConfigError, Option, Settings, build_settings

GROUPS: dict[str, tuple[str, ...]] = {
    "serve": ("common", "delivery", "webhook", "ops", "tail"),
    "tail": ("common", "delivery", "ops", "tail"),
    "replay": ("common", "delivery", "ops"),
    "validate": ("common",),
    "check-backend": ("delivery", "ops"),
    "outbox": ("delivery", "ops"),
}


def _default_text(option: Option) -> str:
    default = option.default
    if default is None:
        return "unset"
    if isinstance(default, tuple) and len(default) == 2 and isinstance(default[1], int):
        return f"{default[0]}:{default[1]}"
    if isinstance(default, tuple):
        return ",".join(default) or "none"
    return str(default)


def _add_options(parser: argparse.ArgumentParser, groups: tuple[str, ...]) -> None:
    for group in groups:
        section = parser.add_argument_group(f"{group} settings")
        for option in OPTIONS:
            if option.group != group:
                continue
            env = " or ".join(option.env)
            text = f"{option.help} [env {env}; default {_default_text(option)}]"
            if option.flag is None:
                continue
            if option.parse.__name__ == "parse_bool":
                section.add_argument(option.flag, dest=option.name, action="store_const",
                                     const=True, default=None, help=text)
            else:
                section.add_argument(option.flag, dest=option.name, default=None,
                                     type=_typed(option), metavar=option.name.upper(),
                                     help=text)


def _typed(option: Option) -> Any:
    def parse(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parse.__name__ = option.name
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="healert-webhook",
        description="Detect platform bypasses in Kubernetes audit events and deliver them "
                    "to Healert as friction events.",
        epilog="Secrets are read from the environment or files, never from flags: "
               "HEALERT_API_KEY or HEALERT_API_KEY_FILE, HEALERT_WEBHOOK_TOKEN_FILE.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="receive audit events from the apiserver webhook")
    serve.add_argument("--tail", dest="tail_path", type=Path, default=None, metavar="PATH",
                       help="also follow this audit log file in the same process")
    _add_options(serve, GROUPS["serve"])

    tail = sub.add_parser("tail", help="follow the audit log file (DaemonSet mode)")
    _add_options(tail, GROUPS["tail"])

    replay = sub.add_parser(
        "replay", help="run the rules over historic audit logs and print friction events")
    replay.add_argument("paths", nargs="+", metavar="PATH",
                        help="JSON-lines logs (.gz too), EventList or Event files; - for stdin")
    mode = replay.add_mutually_exclusive_group()
    mode.add_argument("--forward", action="store_true",
                      help="also queue the friction events in the outbox for delivery "
                           "(deduplicated against what was already sent)")
    mode.add_argument("--dry-run", action="store_true",
                      help="only print friction events (the default)")
    _add_options(replay, GROUPS["replay"])

    validate = sub.add_parser("validate", help="check a rules file and summarise its rules")
    validate.add_argument("path", nargs="?", type=Path, default=None,
                          help="rules file (default: RULES_PATH, ./rules.yaml, or packaged)")
    _add_options(validate, GROUPS["validate"])

    check = sub.add_parser(
        "check-backend", help="check the backend's health and the API key; exit 0 ok, 1 "
        "configuration, 2 unreachable, 3 key refused, 4 test event refused")
    check.add_argument("--send-test", action="store_true",
                       help="also send one real test event (type healert-webhook-test, "
                            "1 point on component:default/healert-webhook)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    _add_options(check, GROUPS["check-backend"])

    outbox = sub.add_parser("outbox", help="inspect and repair the delivery queue")
    outbox.add_argument("action", choices=("status", "list", "dead", "retry-dead", "purge"))
    outbox.add_argument("keys", nargs="*", help="retry-dead: only these dedup keys (default: all)")
    outbox.add_argument("--limit", type=int, default=None,
                        help="list/dead: most rows shown (default 20 / 1000)")
    outbox.add_argument("--dead", action="store_true",
                        help="purge: the dead letters instead of the queue")
    outbox.add_argument("--corrupt", action="store_true",
                        help="purge: move a corrupt outbox file aside (stop the agent first)")
    outbox.add_argument("--yes", action="store_true", help="purge: really do it")
    outbox.add_argument("--json", action="store_true", help="print JSON")
    _add_options(outbox, GROUPS["outbox"])
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags, falling back to the environment, then defaults."""
    overrides = {opt.name: getattr(args, opt.name, None) for opt in OPTIONS}
    return build_settings(overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"healert-webhook: configuration error: {exc}", file=sys.stderr)
        return 2
    return _run(args, settings)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    if command == "validate":
        from healert_webhook.validate import run_validate
        return run_validate(args.path if args.path is not None else settings.rules_path)
    if command == "replay":
        from healert_webhook.sources.replay import run_replay
        return run_replay(settings, args.paths, forward=args.forward)
    if command == "serve":
        from healert_webhook.server import run_serve
        return run_serve(settings, args.tail_path)
    if command == "tail":
        from healert_webhook.server import run_tail
        return run_tail(settings)
    if command == "check-backend":
        from healert_webhook.delivery_cli import check_backend
        return check_backend(settings, args.send_test, as_json=args.json)
    from healert_webhook.delivery_cli import outbox_command
    return outbox_command(settings, args.action, args)


if __name__ == "__main__":
    sys.exit(main())
