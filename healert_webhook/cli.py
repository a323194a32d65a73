"""The `healert-webhook` command: parse flags into Settings and run a subcommand.

Flags are generated from config.OPTIONS, so every flag has an environment variable of the
same meaning and the same default, and `--help` shows both. Each command offers only the
settings it uses, and reads only those from the environment. Every failure that means
"fix the configuration" ends here, printed once, with exit code 2 (see exits.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from healert_webhook import __version__, exits
from healert_webhook.config import OPTIONS, ConfigError, Option, Settings, build_settings
from healert_webhook.records import OutboxError
from healert_webhook.rules import RulesError

PROG = "healert-webhook"
# Which groups of settings (Option.group) each command takes.
COMMAND_GROUPS: dict[str, tuple[str, ...]] = {
    "serve": ("rules", "detect", "webhook", "tail", "backend", "delivery", "outbox", "ops"),
    "tail": ("rules", "detect", "tail", "backend", "delivery", "outbox", "ops"),
    "replay": ("rules", "detect", "lines", "outbox"),
    "validate": ("rules",),
    "check-backend": ("backend",),
    "outbox": ("outbox",),
}
# The tail's line limit is also replay's; it is listed once under "tail settings".
GROUP_ALIASES = {"lines": "tail"}


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and a hint, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        """Print `prog: error: message` and where to find help; exit 2."""
        self.exit(exits.CONFIG, f"{self.prog}: error: {message}\n"
                  f"Run '{self.prog} --help' for usage.\n")


def _default_text(option: Option) -> str:
    default = option.default
    if option.shown_default is not None:
        return option.shown_default
    if default is None:
        return "unset"
    if isinstance(default, tuple) and len(default) == 2 and isinstance(default[1], int):
        return f"{default[0]}:{default[1]}"
    if isinstance(default, tuple):
        return ",".join(default) or "none"
    return str(default)


def _typed(option: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parse.__name__ = option.name  # argparse names the option in its error message
    return parse


def options_for(command: str) -> list[Option]:
    """The settings `command` uses, in table order."""
    groups = COMMAND_GROUPS[command]
    return [opt for opt in OPTIONS
            if opt.group in groups or GROUP_ALIASES.get(opt.group) in groups]


def _add_options(parser: argparse.ArgumentParser, command: str) -> None:
    sections: dict[str, Any] = {}
    for option in options_for(command):
        if option.flag is None:
            continue  # secrets: environment or files only
        group = GROUP_ALIASES.get(option.group, option.group)
        if group not in sections:
            sections[group] = parser.add_argument_group(f"{group} settings")
        text = (f"{option.help} [env {' or '.join(option.env)}; "
                f"default {_default_text(option)}]")
        if option.parse.__name__ == "parse_bool":
            sections[group].add_argument(option.flag, dest=option.name, action="store_const",
                                         const=True, default=None, help=text)
        else:
            sections[group].add_argument(option.flag, dest=option.name, default=None,
                                         type=_typed(option), metavar=option.name.upper(),
                                         help=text)


def _command(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text,
                                                     description=help_text)
    parser.set_defaults(command=name)
    return parser


def _add_outbox(sub: Any) -> None:
    outbox = _command(sub, "outbox", "inspect and repair the delivery queue")
    actions = outbox.add_subparsers(dest="action", metavar="ACTION", required=True,
                                    parser_class=Parser)
    json_help = "print JSON"
    status = actions.add_parser("status", help="depth, oldest event, in flight, dead letters",
                                description="Show the outbox's depth, oldest event, events "
                                            "in flight and dead letters.")
    status.add_argument("--json", action="store_true", help=json_help)
    listing = actions.add_parser("list", help="the oldest queued events",
                                 description="List the oldest queued friction events.")
    listing.add_argument("--limit", type=int, default=20, help="most rows shown (20)")
    listing.add_argument("--json", action="store_true", help=json_help)
    dead = actions.add_parser("dead", help="dead letters with their reasons",
                              description="List dead letters (events the backend or the "
                                          "contract refused, or set aside) with reasons.")
    dead.add_argument("--limit", type=int, default=1000, help="most rows shown (1000)")
    dead.add_argument("--json", action="store_true", help=json_help)
    retry = actions.add_parser("retry-dead", help="requeue dead letters after fixing the cause",
                               description="Move dead letters back to the end of the queue.")
    retry.add_argument("keys", nargs="*", help="only these dedup keys (default: all)")
    retry.add_argument("--json", action="store_true", help=json_help)
    purge = actions.add_parser("purge", help="delete the queue, the dead letters, or move a "
                                             "corrupt file aside",
                               description="Delete every queued event (or dead letter), or "
                                           "move a corrupt outbox file aside.")
    purge.add_argument("--dead", action="store_true", help="the dead letters, not the queue")
    purge.add_argument("--corrupt", action="store_true",
                       help="move a corrupt outbox file aside (refused while an agent holds "
                            "it, or when the file is healthy)")
    purge.add_argument("--yes", action="store_true", help="really do it")
    purge.add_argument("--json", action="store_true", help=json_help)
    for action in (status, listing, dead, retry, purge):
        _add_options(action, "outbox")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = Parser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Detect platform bypasses in Kubernetes audit events and deliver them "
                    "to Healert as friction events.",
        epilog="Secrets are read from the environment or files, never from flags:\n"
               "HEALERT_API_KEY or HEALERT_API_KEY_FILE, HEALERT_WEBHOOK_TOKEN(_FILE).\n\n"
               "exit codes (every command):\n"
               + "\n".join(f"  {code}  {text}" for code, text in exits.TABLE))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND", required=True, parser_class=Parser)

    serve = _command(sub, "serve", "receive audit events from the apiserver's webhook")
    serve.add_argument("--tail", dest="tail", nargs="?", const=True, default=None,
                       type=Path, metavar="PATH",
                       help="also follow an audit log file in the same process: PATH, or "
                            "AUDIT_LOG_PATH / --audit-log when PATH is left out")
    _add_options(serve, "serve")

    tail = _command(sub, "tail", "follow the audit log file")
    _add_options(tail, "tail")

    replay = _command(sub, "replay",
                      "run the rules over historic audit logs and print friction events")
    replay.add_argument("paths", nargs="+", metavar="PATH",
                        help="JSON-lines logs (.gz too), EventList or Event files; - for stdin")
    mode = replay.add_mutually_exclusive_group()
    mode.add_argument("--forward", action="store_true",
                      help="also queue the friction events in the outbox for delivery "
                           "(deduplicated against what was already sent)")
    mode.add_argument("--dry-run", action="store_true",
                      help="only print friction events (the default)")
    mode.add_argument("--explain", action="store_true",
                      help="print, for each event, every candidate rule and why it fired or "
                           "not, the entity and where its name came from")
    replay.add_argument("--audit-id", default=None, metavar="ID",
                        help="--explain: only the event(s) with this auditID")
    replay.add_argument("--user", default=None, metavar="NAME",
                        help="--explain: only events made by (or as) this user")
    _add_options(replay, "replay")

    validate = _command(sub, "validate", "check a rules file and summarise its rules")
    validate.add_argument("path", nargs="?", type=Path, default=None,
                          help="rules file (default: RULES_PATH, ./rules.yaml, or packaged)")
    validate.add_argument("--strict", action="store_true",
                          help="fail (exit 1) on warnings too, for CI")
    _add_options(validate, "validate")

    check = _command(sub, "check-backend", "check the backend's health and the API key")
    check.add_argument("--send-test", action="store_true",
                       help="also send one real test event (type healert-webhook-test, "
                            "1 point on component:default/healert-webhook)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    _add_options(check, "check-backend")

    _add_outbox(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags, falling back to the environment, then defaults.

    Only the settings the command uses are read, so a bad value meant for another
    command cannot stop this one.
    """
    used = options_for(args.command)
    overrides = {opt.name: getattr(args, opt.name, None) for opt in used}
    tail = getattr(args, "tail", None)
    if isinstance(tail, Path):  # `serve --tail PATH` is --audit-log PATH plus tailing
        overrides["audit_log_path"] = tail.expanduser()
    return build_settings(overrides, names=[opt.name for opt in used])


def print_rules_error(exc: RulesError) -> None:
    """The one report of a rules file that cannot be used: the first problems, one per
    line, and a count of the rest."""
    print(f"{PROG}: rules file {exc.source} is invalid "
          f"({exc.total} problem(s)):", file=sys.stderr)
    for problem in exc.lines():
        print(f"  {problem}", file=sys.stderr)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    if command == "validate":
        from healert_webhook.validate import run_validate
        return run_validate(args.path if args.path is not None else settings.rules_path,
                            strict=args.strict)
    if command == "replay" and args.explain:
        from healert_webhook.explain import run_explain
        return run_explain(settings, args.paths, audit_id=args.audit_id, user=args.user,
                           out=sys.stdout)
    if command == "replay":
        if args.audit_id is not None or args.user is not None:
            raise ConfigError("--audit-id and --user go with --explain")
        from healert_webhook.sources.replay import run_replay
        return run_replay(settings, args.paths, forward=args.forward)
    if command in ("serve", "tail"):
        from healert_webhook.server import run_agent
        return run_agent(settings, webhook=command == "serve",
                         tail=command == "tail" or args.tail is not None)
    if command == "check-backend":
        from healert_webhook.delivery_cli import check_backend
        return check_backend(settings, args.send_test, as_json=args.json)
    from healert_webhook.delivery_cli import outbox_command
    return outbox_command(settings, args.action, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args, settings_from_args(args))
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
    except RulesError as exc:
        print_rules_error(exc)
    except OutboxError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exits.FAILED
    return exits.CONFIG


if __name__ == "__main__":
    sys.exit(main())
