"""The `healert-webhook` commands: one module each, with NAME, HELP, GROUPS (the settings
groups it takes), add_arguments(parser) and run(settings, args) -> exit code."""

from healert_webhook.commands import check_backend, outbox, policy, replay, serve, tail, validate
from healert_webhook.commands.base import Command

COMMANDS: tuple[Command, ...] = (serve, tail, replay, validate, policy, check_backend, outbox)
