"""What every command module offers the command line (cli.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Protocol

from healert_webhook.config import Settings

# Adds a command's settings (flags generated from config.OPTIONS) to a parser.
Settable = Callable[[argparse.ArgumentParser], None]


class Command(Protocol):
    """A command: its name, help, the groups of settings it takes, its flags, its run."""

    NAME: str
    HELP: str
    GROUPS: tuple[str, ...]

    def add_arguments(self, parser: argparse.ArgumentParser, add_settings: Settable) -> None:
        """Add the command's own arguments; call `add_settings` on each parser that takes
        the command's settings."""

    def run(self, settings: Settings, args: argparse.Namespace) -> int:
        """Run the command; the exit code (exits.py)."""
