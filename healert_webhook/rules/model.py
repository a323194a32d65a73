"""What a rules file compiles into: rules, their settings, and the errors of a bad file.

A `Rule` holds its scope (resources, subresource, verbs: what the detector's index
settles) and its checks (the per-event conditions of conditions.py, in the order they
are tried). Everything here is immutable and shared by every thread that detects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from healert_webhook import tokens
from healert_webhook.rules.matchers import DEFAULT_GITOPS, GitOps
from healert_webhook.text import clean_text

if TYPE_CHECKING:
    from healert_webhook.rules.candidate import Candidate

TOKENS = tokens.TOKENS  # the names a description can use (tokens.py gives their values)
TOKEN_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
DEFAULT_DESCRIPTION = "{verb} on {resource}/{name} (ns:{namespace}) by {actor}"
# Problems and warnings listed one by one (in logs, `validate`, errors); the rest are only
# counted: a 4 MiB file can hold a million problems.
MAX_LISTED = 50


class RulesError(Exception):
    """The rules file cannot be used. `problems` lists the first MAX_LISTED reasons in
    file order, one line each; `total` counts them all."""

    def __init__(self, source: str, problems: list[str], total: int | None = None) -> None:
        self.source = source
        self.problems = problems
        self.total = len(problems) if total is None else total
        super().__init__(f"{source}: {self.total} problem(s):\n" + "\n".join(self.lines()))

    def lines(self) -> list[str]:
        """The listed problems, then one line counting those not listed (if any)."""
        return with_rest(self.problems, self.total, "problem")


class Superseded(Exception):
    """A load was abandoned because a newer version of the file is waiting."""


def with_rest(listed: Iterable[str], total: int, what: str) -> list[str]:
    """`listed`, then one line counting the `total` that were not listed (if any)."""
    out = list(listed)
    if total > len(out):
        out.append(f"... and {total - len(out)} more {what}(s), not listed (the first "
                   f"{len(out)} are, in file order)")
    return out


class Check:
    """One condition of one rule, compiled (see conditions.py): what it needs of an
    event, why an event fails it, and how that is said."""

    __slots__ = ()
    reasons: tuple[str, ...] = ()  # the skip reasons it can give, in the order tried

    def failure(self, cand: Candidate) -> str | None:
        """The reason the candidate fails this condition, or None when it holds."""
        raise NotImplementedError

    def explain(self, reason: str, cand: Candidate) -> str:
        """A sentence for a platform engineer: why the candidate failed (`reason`)."""
        raise NotImplementedError

    def summary(self) -> str:
        """What the condition asks, in `validate`'s one-line form (e.g. `user=alice`)."""
        raise NotImplementedError

    def need(self) -> str | None:
        """What the audit policy must record for this condition beyond Metadata, in a
        sentence for `validate`; None when Metadata shows what it reads."""
        return None


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule: its scope (settled by the detector's index), its checks (tried
    per candidate event, in conditions.py's order), and what its friction events say."""

    name: str
    description: str
    severity: str
    workflow: str | None
    ignore_system: bool  # also a check; the index reads it to skip internal actors early
    enabled: bool
    points: int | None
    resources: frozenset[str] | None
    subresource: str | None
    ignore_subresources: frozenset[str]
    verbs: frozenset[str] | None
    template: tuple[tuple[str, str | None], ...]
    line: int
    checks: tuple[Check, ...] = ()
    config_namespaces: bool = True  # config.ignore_namespaces applies (see index.py)

    def check(self, reason: str) -> Check | None:
        """The rule's check that can fail with `reason`, or None when it has none."""
        for check in self.checks:
            if reason in check.reasons:
                return check
        return None

    def summary(self) -> str:
        """One line describing what the rule matches, for `validate`."""
        parts = []
        if self.resources:
            parts.append("resource=" + "|".join(sorted(self.resources)))
        if self.subresource:
            parts.append(f"subresource={self.subresource}")
        if self.ignore_subresources:
            parts.append("not-subresource=" + "|".join(sorted(self.ignore_subresources)))
        if self.verbs:
            parts.append("verb=" + "|".join(sorted(self.verbs)))
        parts.extend(text for check in self.checks if (text := check.summary()))
        if not self.config_namespaces:
            parts.append("config.ignore_namespaces=off")
        actors = "humans" if self.ignore_system else "all actors"
        state = "enabled " if self.enabled else "disabled"
        return (f"{state} {self.name:<26} {self.severity:<6} {self.workflow or '-':<9} "
                f"{actors:<10} {' '.join(parts) or 'any request'}")


@dataclass(frozen=True)
class RuleSet:
    """A validated rules file: every rule (enabled or not) and the global settings."""

    source: str
    rules: tuple[Rule, ...]
    ignore_namespaces: frozenset[str]
    warnings: tuple[str, ...] = field(default=())  # the first MAX_LISTED, in file order
    gitops: GitOps = DEFAULT_GITOPS
    warnings_total: int = 0  # all of them (0: as many as listed)

    @property
    def warning_count(self) -> int:
        """How many warnings the file drew, listed or not."""
        return max(self.warnings_total, len(self.warnings))

    def warning_lines(self) -> list[str]:
        """The listed warnings, then one line counting those not listed (if any)."""
        return with_rest(self.warnings, self.warning_count, "warning")

    @property
    def enabled(self) -> tuple[Rule, ...]:
        """The rules that take part in detection."""
        return tuple(rule for rule in self.rules if rule.enabled)


def compile_template(text: str) -> tuple[tuple[str, str | None], ...]:
    """Split a description into (literal, token) pairs; unknown tokens stay literal."""
    parts: list[tuple[str, str | None]] = []
    pos = 0
    for found in TOKEN_RE.finditer(text):
        if found.group(1) not in TOKENS:
            continue
        parts.append((text[pos:found.start()], found.group(1)))
        pos = found.end()
    parts.append((text[pos:], None))
    return tuple(parts)


def shown(value: Any, limit: int = 200) -> str:
    """A value quoted in an explanation: cleaned and cut, or what it is when not a string."""
    if isinstance(value, str):
        return clean_text(value, limit) if value else "(none)"
    return "(none)" if value is None else f"(a {type(value).__name__})"
