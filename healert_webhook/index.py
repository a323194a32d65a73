"""The rule index: from five fields of an event, the rules that may match it, or why none.

Enabled rules are compiled once into a three-level index, resource -> subresource ->
verb, built by `build_index`:

    by_resource: {resource: SubMap}      any_resource: SubMap   (rules naming no resource)
    SubMap  = ({subresource: VerbMap}, VerbMap for other subresources)
    VerbMap = ({verb: Leaf}, Leaf for other verbs)
    Leaf    = (candidate rules, True when every candidate has ignore_system,
               {namespace of config.ignore_namespaces: (the candidates that still look
                in it, True when all of those have ignore_system)} | None) | None

A rule is a candidate for an event when the event's resource is one it names (or it names
none), its subresource is the one it names (or it names none) and not one it ignores, and
its verb is one it names (or it names none); `scope_failure` states the same per rule.
Subresource None and "" are the same key. Most audit events (controllers watching leases,
kubelets reading pods) find None after three dict lookups and cost nothing more.

`Index.rule_out` is detection's fast path, the one place it is written: the stage, the
index, then two cheap filters settled once for all candidates, the excluded namespaces
(the rules' global ones plus the agent's own) and, when the leaf's flag says every
candidate ignores system actors, an internal user who impersonates nobody. A rule can
opt out of the global namespaces (`config_ignore_namespaces: false`, Argo CD's
Applications live in its own namespace): a leaf holding such rules maps each global
namespace to those of them that still look in it (not in their own ignore_namespaces);
a namespace mapped to none, and the agent's own, settle the leaf at once as before, and
otherwise the other rules skip the namespace one by one (their `namespace` check). One
dict look-up more, on excluded namespaces only. It reads the
event through `.get`, so it decides alike on a parsed event (a dict) and on simdjson's
reading of one (prefilter.py); everything it reads is a field at a fixed place of the
event (stage, verb, objectRef.resource, .subresource, .namespace, user.username,
impersonatedUser).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from healert_webhook.audit import FIRING_STAGES, QUIET_STAGES, is_internal_actor
from healert_webhook.rules import Rule
from healert_webhook.rules.conditions import IgnoreNamespaces

# The rules that may match, whether all of them ignore system actors, and per namespace of
# config.ignore_namespaces the same for those that still look in it (None when no
# candidate opts out of config.ignore_namespaces).
Opted = tuple[tuple[Rule, ...], bool]
Match = tuple[tuple[Rule, ...], bool, dict[str, Opted] | None]
Leaf = Match | None  # None: no rule can match
# resource -> (subresource -> (verb -> leaf, leaf for other verbs), other subresources)
VerbMap = tuple[dict[Any, Leaf], Leaf]
SubMap = tuple[dict[Any, VerbMap], VerbMap]
_EMPTY: dict[str, Any] = {}
SKIP_REASONS = ("stage", "no_rule", "namespace", "system_actor")  # what rule_out answers


class Undecidable(Exception):
    """A field the fast path reads is not of a type it can decide on (the event must be
    looked at in full: detection counts it as invalid)."""


def _impersonation(event: Any) -> Any:
    return event.get("impersonatedUser")


# --- the index --------------------------------------------------------------------------
#
# Built from positions into the rule list, grouped once per level, so the work is the
# size of the index itself: each rule once under every resource, subresource and verb it
# names, and the rules that name none (of a level) once under every key the others name.
# Candidates stay in the rules' order: two position lists, each ascending, are merged.

def own_ignored(rule: Rule) -> frozenset[str]:
    """The namespaces a rule's own `ignore_namespaces` names."""
    check = rule.check("namespace")
    return check.names if isinstance(check, IgnoreNamespaces) else frozenset()


def _opted(chosen: tuple[Rule, ...], namespaces: frozenset[str]) -> dict[str, Opted] | None:
    """Per namespace, the candidates that look in it although config.ignore_namespaces
    names it (None when no candidate opts out)."""
    opted = [rule for rule in chosen if not rule.config_namespaces]
    if not opted:
        return None
    found: dict[str, Opted] = {}
    for namespace in namespaces:
        looking = tuple(rule for rule in opted if namespace not in own_ignored(rule))
        if looking:
            found[namespace] = (looking, all(rule.ignore_system for rule in looking))
    return found


def _leaf(rules: Sequence[Rule], at: Sequence[int], namespaces: frozenset[str]) -> Leaf:
    if not at:
        return None
    chosen = tuple(rules[i] for i in at)
    return chosen, all(rule.ignore_system for rule in chosen), _opted(chosen, namespaces)


def _merged(general: list[int], named: list[int]) -> list[int]:
    """Two ascending position lists as one (sorted() merges two runs in linear time)."""
    if not named:
        return general
    return sorted(general + named) if general else named


def _verb_map(rules: Sequence[Rule], at: list[int], namespaces: frozenset[str]) -> VerbMap:
    general = [i for i in at if rules[i].verbs is None]
    named: dict[str, list[int]] = {}
    for i in at:
        for verb in rules[i].verbs or ():
            named.setdefault(verb, []).append(i)
    by_verb = {verb: _leaf(rules, _merged(general, found), namespaces)
               for verb, found in named.items()}
    return by_verb, _leaf(rules, general, namespaces)


def _sub_map(rules: Sequence[Rule], at: list[int], namespaces: frozenset[str]) -> SubMap:
    general = [i for i in at if rules[i].subresource is None]
    named: dict[Any, list[int]] = {}
    ignoring: dict[Any, set[int]] = {}
    for i in at:
        rule = rules[i]
        if rule.subresource is not None:
            named.setdefault(rule.subresource, []).append(i)
        for sub in rule.ignore_subresources:
            ignoring.setdefault(sub, set()).add(i)
    by_sub: dict[Any, VerbMap] = {}
    # None and "" are the same subresource: one map serves both keys.
    by_sub[None] = by_sub[""] = _verb_map(rules, general, namespaces)
    for sub in named.keys() | ignoring.keys():
        if sub in by_sub:
            continue
        skip = ignoring.get(sub, ())
        chosen = [i for i in _merged(general, named.get(sub, [])) if i not in skip]
        by_sub[sub] = _verb_map(rules, chosen, namespaces)
    return by_sub, _verb_map(rules, general, namespaces)


def build_index(rules: Sequence[Rule], namespaces: frozenset[str] = frozenset()
                ) -> tuple[dict[Any, SubMap], SubMap]:
    """Index enabled rules by resource, subresource and verb (see the module docstring);
    `namespaces` are config.ignore_namespaces (less the agent's own), for the rules that
    opt out of them.

    The work is proportional to the index it builds (see above), not to the number of
    rules times the number of keys.
    """
    general = [i for i, rule in enumerate(rules) if rule.resources is None]
    named: dict[str, list[int]] = {}
    for i, rule in enumerate(rules):
        for res in rule.resources or ():
            named.setdefault(res, []).append(i)
    by_resource = {res: _sub_map(rules, _merged(general, found), namespaces)
                   for res, found in named.items()}
    return by_resource, _sub_map(rules, general, namespaces)


def scope_failure(rule: Rule, resource: str | None, subresource: str | None,
                  verb: str) -> str | None:
    """Why `rule` is not a candidate for this resource, subresource and verb, or None.

    The same decision the index makes, stated per rule (`resource`, `subresource` or
    `verb`), for explanations.
    """
    sub = subresource or None
    if rule.resources is not None and resource not in rule.resources:
        return "resource"
    if (rule.subresource is not None and rule.subresource != sub) \
            or sub in rule.ignore_subresources:
        return "subresource"
    if rule.verbs is not None and verb not in rule.verbs:
        return "verb"
    return None



class Index:
    """The compiled index of a rule set and the namespaces no rule reports: `excluded`
    (config.ignore_namespaces and the agent's own), of which `always` (the agent's own)
    holds for the rules that opt out of the config's too."""

    def __init__(self, rules: Sequence[Rule], excluded_namespaces: frozenset[str],
                 always: frozenset[str] = frozenset()) -> None:
        self.by_resource, self.any_resource = build_index(rules, excluded_namespaces - always)
        self.excluded = excluded_namespaces
        self.always = always

    def excluded_for(self, namespace: str, leaf: Match, internal: bool) -> str | None:
        """The skip reason an excluded `namespace` settles for every candidate of `leaf`
        (`namespace`, or `system_actor` when only opting-out rules ignoring an
        `internal` actor are left), or None when some rule must still be tried."""
        opted = leaf[2]
        looking = opted.get(namespace) if opted is not None else None
        if looking is None:
            return "namespace"
        if internal and looking[1]:
            # The others skip the namespace, these the actor: the closest miss of
            # conditions.decisive is the namespace when both failed.
            return "namespace" if len(looking[0]) < len(leaf[0]) else "system_actor"
        return None

    def leaf(self, resource: Any, subresource: Any, verb: Any) -> Leaf:
        """The leaf for these objectRef fields and verb (None: no rule can match)."""
        subs, other_sub = self.by_resource.get(resource, self.any_resource)
        verbs, other_verb = subs.get(subresource, other_sub)
        return verbs.get(verb, other_verb)

    def rule_out(self, event: Any,
                 impersonation: Callable[[Any], Any] = _impersonation) -> str | Match:
        """Detection's fast path for one event (see the module docstring): the skip
        reason (`stage`, `no_rule`, `namespace`, `system_actor`), or the leaf of rules
        that may match. `event` is a dict or anything read alike (`.get`, `[...]`); an
        objectRef that is not a dict needs `as_dict()`. `impersonation` reads
        `impersonatedUser` (a reader may have a cheaper way for an absent key).

        Raises Undecidable when a field is of a type it cannot decide on.
        """
        try:
            stage = event["stage"]
            if stage not in FIRING_STAGES:
                if stage in QUIET_STAGES:
                    return "stage"
                raise Undecidable("stage")
            ref = event.get("objectRef")
            if ref is None:
                ref = _EMPTY
            elif ref.__class__ is not dict:
                ref = ref.as_dict()
            verb = event.get("verb")
            if verb.__class__ is not str and verb is not None \
                    and not isinstance(verb, int | float):
                # a list or an object, which a parsed event cannot be looked up by (a
                # reader's proxy of one could): detection says it is invalid
                raise Undecidable("verb")
            subs, other_sub = self.by_resource.get(ref.get("resource"), self.any_resource)
            verbs, other_verb = subs.get(ref.get("subresource"), other_sub)
            leaf = verbs.get(verb, other_verb)
            if leaf is None:
                return "no_rule"
            if verb.__class__ is not str:
                raise Undecidable("verb")
            namespace = ref.get("namespace")
            # When excluded, the rules the namespace does not settle: the skip reason of
            # an internal actor then (the others skip the namespace, these the actor: the
            # closest miss of conditions.decisive is the namespace when both failed).
            internal_skip = "system_actor"
            if namespace and namespace in self.excluded:
                opted = leaf[2]
                looking = opted.get(namespace) if opted is not None else None
                if looking is None:
                    return "namespace"
                if not looking[1]:
                    return leaf  # a rule looking here counts internal actors too
                if len(looking[0]) < len(leaf[0]):
                    internal_skip = "namespace"
            elif not leaf[1]:
                return leaf
            # Every rule left skips internal actors (inline: most events end here).
            user = event.get("user")
            username = user.get("username") if user else None
            if not username:
                internal = True  # no user: a failed authentication
            elif username.__class__ is str:
                internal = is_internal_actor(username)
            else:
                raise Undecidable("username")
            if internal and not impersonation(event):
                return internal_skip
        except (KeyError, TypeError, AttributeError) as exc:
            raise Undecidable(type(exc).__name__) from None
        return leaf
