"""Warnings about rules that load but are likely not what was meant.

A rule naming `pod` (the apiserver writes `pods`), `GET` or `exec` as a verb, or a pod
write that also counts exec sessions loads and runs, but never fires or fires on the
wrong requests: each gets a warning with the fix, which `validate` prints and
`validate --strict` refuses.
"""

from __future__ import annotations

import difflib
from typing import Any

from healert_webhook.audit import HUMAN_SYSTEM_USERS
from healert_webhook.rules.conditions import ObjectFields, Users
from healert_webhook.rules.model import Rule
from healert_webhook.rules.names import SUBRESOURCE_FIXES, resource_hint
from healert_webhook.rules.yamlnodes import Node, Problems

# The verbs the apiserver writes into audit events: the request verbs of resource
# requests, and the lower-case HTTP methods of non-resource requests (/healthz, /metrics).
KNOWN_VERBS = frozenset({
    "get", "list", "watch", "create", "update", "patch", "delete", "deletecollection",
    "proxy", "post", "put", "head", "options",
})
# Requests of these verbs name no single object, so they are never charged to an entity.
NAMELESS_VERBS = frozenset({"list", "watch", "deletecollection"})
# Subresources older kubectl sends as `create` on pods; a drift rule on pods should not
# count them (they are exec, attach and port-forward sessions, reported by their own rules).
SESSION_SUBRESOURCES = ("exec", "attach", "portforward")
_SUBRESOURCE_VERBS = frozenset({"exec", "attach", "portforward", "port-forward", "log",
                                "logs", "scale", "status", "eviction", "ephemeralcontainers"})


def verb_hint(verb: str) -> str:
    """What to write instead of a verb the apiserver never audits (may be '')."""
    lower = verb.lower()
    if lower in KNOWN_VERBS:
        return f" (verbs are lower case: {lower!r})"
    if lower in _SUBRESOURCE_VERBS:
        sub = SUBRESOURCE_FIXES.get(lower, lower)
        return (f" ({verb!r} is a subresource: write subresource: {sub} and leave the verb "
                "out; kubectl sends it as get, or create from older clients)")
    if lower == "connect":
        return (" (exec, attach and port-forward are audited as get, or create from older "
                "kubectl: leave the verb out)")
    close = difflib.get_close_matches(lower, sorted(KNOWN_VERBS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def warn_unaudited(ctx: Problems, key: str, node: Node, where: str, got: Any) -> None:
    """Warn about resources, subresources and verbs the apiserver never writes."""
    if got is None:
        return
    for value in [got] if isinstance(got, str) else got:
        if key in ("resource", "resources"):
            hint = resource_hint(value)
            if hint is not None:
                ctx.warn(node, where, f"resource {value!r} is never audited: {hint}")
        elif key in ("verb", "verbs"):
            if value not in KNOWN_VERBS:
                ctx.warn(node, where, f"verb {value!r} is not one the apiserver audits"
                         + verb_hint(value))
            elif value in NAMELESS_VERBS:
                ctx.warn(node, where, f"verb {value!r}: such requests name no object, so "
                         "they are never charged to an entity (skipped as no_name)")
        else:
            fix = SUBRESOURCE_FIXES.get(value.lower(), value.lower())
            if fix != value:
                ctx.warn(node, where, f"subresource {value!r} is never audited: the "
                         f"apiserver writes {fix!r}")


def warn_rule(ctx: Problems, node: Node | None, where: str, rule: Rule) -> None:
    """Every warning about a whole rule (its parts were checked as they were read)."""
    _warn_sessions(ctx, node, where, rule)
    _warn_unreachable_users(ctx, node, where, rule)
    _warn_absent_on_create(ctx, node, where, rule)


def _warn_sessions(ctx: Problems, node: Node | None, where: str, rule: Rule) -> None:
    """Warn when a rule on pod writes also counts exec, attach and port-forward sessions.

    Older kubectl sends them as `create` on pods/exec, pods/attach and pods/portforward,
    so a rule on `create` of pods without a subresource fires on each of them too. That
    is what the old agent's config-drift did, and an unchanged file keeps doing it.
    """
    if rule.resources is None or "pods" not in rule.resources or rule.subresource \
            or rule.verbs is None or "create" not in rule.verbs:
        return
    missing = [sub for sub in SESSION_SUBRESOURCES if sub not in rule.ignore_subresources]
    if not missing:
        return
    spoken = {"exec": "exec", "attach": "attach", "portforward": "port-forward"}
    names = [spoken[sub] for sub in missing]
    sessions = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    fix = ", ".join([*sorted(rule.ignore_subresources), *missing])
    ctx.warn(node, f"{where}.match", f"also fires on every kubectl {sessions} that older "
             "kubectl sends as 'create' on pods (as the old agent did; an unchanged file "
             f"keeps that); to count only changes to pods, add under match: "
             f"ignore_subresources: [{fix}]")


def _warn_unreachable_users(ctx: Problems, node: Node | None, where: str,
                            rule: Rule) -> None:
    """Warn when `users` names only internal identities that ignore_system skips."""
    check = rule.check("user")
    users = check.include if isinstance(check, Users) else None
    if not rule.ignore_system or users is None or not (users.exact or users.prefixes):
        return
    names = [*users.exact, *users.prefixes]
    if all(name.startswith("system:") and name not in HUMAN_SYSTEM_USERS for name in names):
        ctx.warn(node, f"{where}.match.users", "names only internal identities, which "
                 "ignore_system: true skips: the rule never fires (set ignore_system: false)")


def _warn_absent_on_create(ctx: Problems, node: Node | None, where: str, rule: Rule) -> None:
    """Warn when `present: false` can meet a create: a create states the whole object, so
    every object created without the field matches (not only a removal)."""
    check = rule.check("object")
    if not isinstance(check, ObjectFields) or (rule.verbs is not None
                                               and "create" not in rule.verbs):
        return
    absent = [test.path.text for test in check.tests
              if test.path is not None and test.want is False]
    if absent:
        ctx.warn(node, f"{where}.match.object", f"present: false ({', '.join(absent)}) "
                 "matches every object created without the field, not only its removal: "
                 "give the rule verbs without create (verbs: [update, patch])")
