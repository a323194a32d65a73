"""`healert-webhook validate`: check a rules file and print what each rule matches."""

from __future__ import annotations

import sys
from pathlib import Path

from healert_webhook.rules import RulesError, load_rules, resolve_rules_path


def run_validate(path: Path | None) -> int:
    """Print one line per rule and exit 0, or print every problem and exit 1."""
    resolved = resolve_rules_path(path)
    try:
        ruleset = load_rules(resolved)
    except RulesError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{exc.source}: invalid, {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    for warning in ruleset.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for rule in ruleset.rules:
        print(rule.summary())
    enabled = len(ruleset.enabled)
    ignored = ", ".join(sorted(ruleset.ignore_namespaces)) or "none"
    print(f"{ruleset.source}: valid, {len(ruleset.rules)} rules ({enabled} enabled); "
          f"namespaces ignored by every rule: {ignored}")
    return 0
