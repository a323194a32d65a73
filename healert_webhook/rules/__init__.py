"""Detection rules: the file's model, its conditions, reading and checking it."""

from healert_webhook.rules.load import MAX_RULES_BYTES, default_rules_text, load_rules, parse_rules
from healert_webhook.rules.matchers import DEFAULT_GITOPS, GitOps, NameMatch
from healert_webhook.rules.model import (
    MAX_LISTED,
    TOKENS,
    Rule,
    RulesError,
    RuleSet,
    Superseded,
)

__all__ = ["DEFAULT_GITOPS", "MAX_LISTED", "MAX_RULES_BYTES", "TOKENS", "GitOps", "NameMatch",
           "Rule", "RuleSet", "RulesError", "Superseded", "default_rules_text", "load_rules",
           "parse_rules"]
