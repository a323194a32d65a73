"""`healert-webhook validate`: check a rules file and print what each rule matches.

Exit codes: 0 when the file is valid, `EXIT_CONFIG` (2) when it cannot be used, and 1 in
strict mode when it is valid but has warnings (a rule that can never fire, an old-format
rule that also counts exec sessions), so CI can refuse those too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from healert_webhook import exits
from healert_webhook.rules import RulesError, RuleSet, load_rules, resolve_rules_path

EXIT_OK = exits.OK
EXIT_WARNINGS = exits.FAILED  # strict mode only: valid, but a check failed
EXIT_CONFIG = exits.CONFIG


def run_validate(path: Path | None, strict: bool = False, *, out: TextIO | None = None,
                 err: TextIO | None = None) -> int:
    """Print one line per rule and the warnings; exit 0, 2 when invalid, 1 when strict
    and there are warnings. `out` and `err` default to stdout and stderr."""
    out = out or sys.stdout
    err = err or sys.stderr
    resolved = resolve_rules_path(path)
    try:
        ruleset = load_rules(resolved)
    except RulesError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=err)
        print(f"{exc.source}: invalid, {len(exc.problems)} problem(s)", file=err)
        return EXIT_CONFIG
    for warning in ruleset.warnings:
        print(f"warning: {warning}", file=err)
    for rule in ruleset.rules:
        print(rule.summary(), file=out)
    for line in _gitops_lines(ruleset):
        print(line, file=out)
    enabled = len(ruleset.enabled)
    ignored = ", ".join(sorted(ruleset.ignore_namespaces)) or "none"
    print(f"{ruleset.source}: valid, {len(ruleset.rules)} rules ({enabled} enabled); "
          f"namespaces ignored by every rule: {ignored}", file=out)
    if strict and ruleset.warnings:
        print(f"{ruleset.source}: {len(ruleset.warnings)} warning(s), refused in strict mode",
              file=err)
        return EXIT_WARNINGS
    return EXIT_OK


def _gitops_lines(ruleset: RuleSet) -> list[str]:
    """What counts as GitOps-managed, shown only when an enabled rule asks."""
    if not any(rule.gitops_managed is not None for rule in ruleset.enabled):
        return []
    gitops = ruleset.gitops
    return [
        "gitops-managed: annotations " + (", ".join(gitops.annotations) or "none")
        + "; labels " + (", ".join(gitops.labels) or "none")
        + "; field managers " + (", ".join(sorted(gitops.field_managers)) or "none"),
        "gitops controllers (never drift): " + (gitops.controllers.text().replace("|", ", ")
                                               or "none"),
    ]
