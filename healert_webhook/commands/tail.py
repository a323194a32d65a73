"""`healert-webhook tail`: follow the apiserver's audit log file."""

from __future__ import annotations

import argparse

from healert_webhook.commands.base import Settable
from healert_webhook.config import Settings

NAME = "tail"
HELP = "follow the audit log file"
GROUPS: tuple[str, ...] = ("rules", "detect", "tail", "backend", "delivery", "outbox",
                           "cluster", "ops")


def add_arguments(parser: argparse.ArgumentParser, add_settings: Settable) -> None:
    """No arguments beyond the settings."""
    add_settings(parser)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the agent's tail until a stop signal."""
    from healert_webhook.server import run_agent  # the server's imports only when serving

    return run_agent(settings, webhook=False, tail=True)
