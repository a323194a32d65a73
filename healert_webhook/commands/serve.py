"""`healert-webhook serve`: receive the apiserver's audit webhook (and follow the log too)."""

from __future__ import annotations

import argparse
from pathlib import Path

from healert_webhook.commands.base import Settable
from healert_webhook.config import Settings, env

NAME = "serve"
HELP = "receive audit events from the apiserver's webhook"
GROUPS: tuple[str, ...] = ("rules", "detect", "webhook", "tail", "backend", "delivery",
                           "outbox", "cluster", "ops")


def add_arguments(parser: argparse.ArgumentParser, add_settings: Settable) -> None:
    """--tail [PATH]: follow an audit log file in the same process."""
    add_settings(parser)
    parser.add_argument("--tail", dest="tail", nargs="?", const=True, default=None,
                        type=Path, metavar="PATH",
                        help="also follow an audit log file in the same process: PATH, or "
                             f"{env('audit_log_path')} / --audit-log when PATH is left out")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the agent until a stop signal: the webhook, and the tail with --tail."""
    from healert_webhook.server import run_agent  # the server's imports only when serving

    return run_agent(settings, webhook=True, tail=args.tail is not None)
