"""The `healert-webhook` command: parse flags into Settings and run a subcommand.

Flags are generated from config.OPTIONS, so every flag has an environment variable of the
same meaning and the same default, and `--help` shows both. Each command offers only the
settings it uses, and reads only those from the environment. Every failure that means
"fix the configuration" ends here, printed once, with exit code 2 (see exits.py).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from healert_webhook import __version__, exits
from healert_webhook.commands import COMMANDS
from healert_webhook.config import OPTIONS, ConfigError, Option, Settings, build_settings, env
from healert_webhook.records import OutboxError
from healert_webhook.rules import RulesError

PROG = "healert-webhook"
# The tail's line limit is also replay's; it is listed once under "tail settings".
GROUP_ALIASES = {"lines": "tail"}
BY_NAME = {command.NAME: command for command in COMMANDS}


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
    groups = BY_NAME[command].GROUPS
    return [opt for opt in OPTIONS
            if opt.group in groups or GROUP_ALIASES.get(opt.group) in groups]


def _add_options(parser: argparse.ArgumentParser, *, command: str) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = Parser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Detect platform bypasses in Kubernetes audit events and deliver them "
                    "to Healert as friction events.",
        epilog="Secrets are read from the environment or files, never from flags:\n"
               f"{env('api_key')} or {env('api_key_file')}, {env('webhook_token')}(_FILE).\n\n"
               "exit codes (every command):\n"
               + "\n".join(f"  {code}  {text}" for code, text in exits.TABLE))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND", required=True, parser_class=Parser)
    for command in COMMANDS:
        child = sub.add_parser(command.NAME, help=command.HELP, description=command.HELP)
        child.set_defaults(command=command.NAME)
        command.add_arguments(child, functools.partial(_add_options, command=command.NAME))
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return BY_NAME[args.command].run(settings_from_args(args), args)
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
    except RulesError as exc:
        print_rules_error(exc)
    except OutboxError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exits.FAILED
    except BrokenPipeError:
        return _reader_gone()
    return exits.CONFIG


def _reader_gone() -> int:
    """The output's reader closed the pipe (`| head`): stop without a word, as Unix tools
    do. What is still buffered for stdout goes nowhere, so the flush at exit cannot fail
    again and print a traceback."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return exits.PIPE_CLOSED


if __name__ == "__main__":
    sys.exit(main())
