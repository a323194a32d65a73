"""`healert-webhook validate`: check a rules file and print what each rule matches.

Exit codes: 0 when the file is valid, and 1 in strict mode when it is valid but has
warnings (a rule that can never fire, an old-format rule that also counts exec sessions),
so CI can refuse those too. A file that cannot be used raises RulesError, which the
command line reports like every command does (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from healert_webhook import exits
from healert_webhook.auditpolicy.document import Level
from healert_webhook.auditpolicy.needs import rule_level
from healert_webhook.commands.base import Settable
from healert_webhook.config import Settings, env
from healert_webhook.pipeline import gc_paused
from healert_webhook.rules import RuleSet, load_rules

NAME = "validate"
HELP = "check a rules file and summarise its rules"
GROUPS: tuple[str, ...] = ("rules",)


def add_arguments(parser: argparse.ArgumentParser, add_settings: Settable) -> None:
    """The file, and whether warnings fail."""
    add_settings(parser)
    parser.add_argument("path", nargs="?", type=Path, default=None,
                        help=f"rules file (default: {env('rules_path')}, ./rules.yaml, or "
                             "packaged)")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit 1) on warnings too, for CI")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Validate the file of `args` (else the configured one)."""
    return run_validate(args.path if args.path is not None else settings.rules_path,
                        strict=args.strict)


def run_validate(path: Path | None, strict: bool = False, *, out: TextIO | None = None,
                 err: TextIO | None = None) -> int:
    """Print one line per rule and the warnings; exit 0, or 1 when strict and there are
    warnings; raise RulesError when the file (None: the packaged rules) cannot be used.
    `out` and `err` default to stdout and stderr."""
    out = out or sys.stdout
    err = err or sys.stderr
    with gc_paused():  # as the agent loads them (a big file: half the time)
        ruleset = load_rules(path)
    for warning in ruleset.warning_lines():  # the first few, and a count of the rest
        print(f"warning: {warning}", file=err)
    for rule in ruleset.rules:
        print(rule.summary(), file=out)
    for line in _policy_lines(ruleset, path):
        print(line, file=out)
    for line in _gitops_lines(ruleset):
        print(line, file=out)
    for line in _level_lines(ruleset):
        print(line, file=out)
    enabled = len(ruleset.enabled)
    ignored = ", ".join(sorted(ruleset.ignore_namespaces)) or "none"
    print(f"{ruleset.source}: valid, {len(ruleset.rules)} rules ({enabled} enabled); "
          f"namespaces ignored by every rule: {ignored}", file=out)
    if strict and ruleset.warnings:
        print(f"{ruleset.source}: {ruleset.warning_count} warning(s), refused in strict mode",
              file=err)
        return exits.FAILED
    return exits.OK


def _policy_lines(ruleset: RuleSet, path: Path | None) -> list[str]:
    """What the audit policy must record beyond Metadata, shown only when a rule needs it."""
    wanted = []
    for rule in ruleset.enabled:
        level = rule_level(rule, cluster_view=False)
        if level > Level.METADATA:
            with_view = rule_level(rule, cluster_view=True)
            note = f" ({with_view.text} with the cluster view)" if with_view < level else ""
            wanted.append(f"{rule.name} needs {level.text}{note}")
    if not wanted:
        return []
    command = "healert-webhook policy" + (f" --rules {path}" if path is not None else "")
    return [f"audit policy: {', '.join(wanted)}: `{command}` writes the policy these rules "
            f"need, `{command} --check FILE` checks yours"]


def _gitops_lines(ruleset: RuleSet) -> list[str]:
    """What counts as GitOps-managed, shown only when an enabled rule asks."""
    if not any(rule.check("gitops") is not None for rule in ruleset.enabled):
        return []
    gitops = ruleset.gitops
    return [
        "gitops-managed: annotations " + (", ".join(gitops.annotations) or "none")
        + "; labels " + (", ".join(gitops.labels) or "none")
        + "; field managers " + (", ".join(sorted(gitops.field_managers)) or "none"),
        "gitops controllers (never drift): " + (gitops.controllers.text().replace("|", ", ")
                                               or "none"),
    ]


def _level_lines(ruleset: RuleSet) -> list[str]:
    """What each enabled rule that reads a request's or an answer's body needs of the
    audit policy (a rule starved of it never fires: the skip reason says so)."""
    return [f"audit level: {rule.name}: {need}" for rule in ruleset.enabled
            for check in rule.checks if (need := check.need())]
