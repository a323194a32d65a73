"""Audit events in, friction events out. No I/O, no clock, no global state.

The index
---------
Enabled rules are compiled once into a three-level index, resource -> subresource ->
verb, built by `build_index`:

    by_resource: {resource: SubMap}      any_resource: SubMap   (rules naming no resource)
    SubMap  = ({subresource: VerbMap}, VerbMap for other subresources)
    VerbMap = ({verb: Leaf}, Leaf for other verbs)
    Leaf    = (candidate rules, True when every candidate has ignore_system) | None

A rule is a candidate for an event when the event's resource is one it names (or it names
none), its subresource is the one it names (or it names none) and not one it ignores, and
its verb is one it names (or it names none); `scope_failure` states the same per rule.
Subresource None and "" are the same key. Most audit events (controllers watching leases,
kubelets reading pods) find None after three dict lookups and cost nothing more.

The few that find candidates go through cheap filters settled once for all candidates:
the excluded namespaces (`Detector.excluded_namespaces`: the rules' global ones plus the
agent's own) and, when the leaf's flag says every candidate ignores system actors, an
internal authenticated user who impersonates nobody. Everything the index and these
filters decide is a field at a fixed place of the event (objectRef.resource,
objectRef.subresource, verb, user.username, impersonatedUser, objectRef.namespace), so a
byte-level pre-filter can be derived from them.

The slow path
-------------
Only candidates go through it: type checks, the actor (the person behind an access
proxy), each rule's own conditions in a fixed order (`CONDITION_ORDER`), entity
resolution and rendering. An event whose evaluation raises is counted as invalid
(`evaluation_error`) and sampled in `Stats.failures`; the rest of the batch goes on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from healert_webhook import audit
from healert_webhook.entity import Workload, entity_ref, resolve_workload
from healert_webhook.rules import GitOps, Rule, RuleSet

MAX_DESCRIPTION = 500
MAX_FIELD = 200
MAX_FAILURES = 20  # failure samples kept per `detect` call (and per merged Stats)
_MESSAGE = 200     # longest exception message kept in a failure sample
_EMPTY: dict[str, Any] = {}

# A leaf: the candidate rules and whether all of them ignore system actors; None if empty.
Leaf = tuple[tuple[Rule, ...], bool] | None
# resource -> (subresource -> (verb -> leaf, leaf for other verbs), other subresources)
VerbMap = tuple[dict[Any, Leaf], Leaf]
SubMap = tuple[dict[Any, VerbMap], VerbMap]

# Per-rule conditions in the order they are checked, from the broadest to the most
# specific. When no candidate fires, the event's skip reason is the failed condition of
# the candidate that got furthest in this order (the closest miss), first rule on a tie.
CONDITION_ORDER = ("system_actor", "namespace", "namespace_contains", "user", "group",
                   "user_agent", "response", "annotation", "gitops_controller", "gitops")
_RANK = {reason: rank for rank, reason in enumerate(CONDITION_ORDER)}


class Friction(NamedTuple):
    """One detection: its dedup key, the rule, the JSON body to POST to `/events`, and
    the audit ID of the request it came from (for the log; not stored or sent)."""

    key: str
    rule: str
    event: dict[str, Any]
    audit_id: str = ""


@dataclass
class Stats:
    """What one call of `Detector.detect` saw, for the metrics and the replay summary.

    `fixups` counts repairs made so that an event could still be delivered (a friction
    event whose time came from `stageTimestamp`, or was left to the backend). `failures`
    samples events whose evaluation raised: (auditID cleaned and cut, or '';
    "ExceptionType: message" cleaned and cut), at most `MAX_FAILURES`.
    """

    events: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    matched: Counter[tuple[str, str]] = field(default_factory=Counter)
    fixups: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def merge(self, other: Stats) -> None:
        """Add another Stats' counts to this one (failure samples stay bounded)."""
        self.events += other.events
        self.invalid.update(other.invalid)
        self.skipped.update(other.skipped)
        self.matched.update(other.matched)
        self.fixups.update(other.fixups)
        room = MAX_FAILURES - len(self.failures)
        if room > 0:
            self.failures.extend(other.failures[:room])


# --- the index --------------------------------------------------------------------------
#
# Built from positions into the rule list, grouped once per level, so the work is the
# size of the index itself: each rule once under every resource, subresource and verb it
# names, and the rules that name none (of a level) once under every key the others name.
# Candidates stay in the rules' order: two position lists, each ascending, are merged.

def _leaf(rules: Sequence[Rule], at: Sequence[int]) -> Leaf:
    if not at:
        return None
    chosen = tuple(rules[i] for i in at)
    return chosen, all(rule.ignore_system for rule in chosen)


def _merged(general: list[int], named: list[int]) -> list[int]:
    """Two ascending position lists as one (sorted() merges two runs in linear time)."""
    if not named:
        return general
    return sorted(general + named) if general else named


def _verb_map(rules: Sequence[Rule], at: list[int]) -> VerbMap:
    general = [i for i in at if rules[i].verbs is None]
    named: dict[str, list[int]] = {}
    for i in at:
        for verb in rules[i].verbs or ():
            named.setdefault(verb, []).append(i)
    by_verb = {verb: _leaf(rules, _merged(general, found)) for verb, found in named.items()}
    return by_verb, _leaf(rules, general)


def _sub_map(rules: Sequence[Rule], at: list[int]) -> SubMap:
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
    by_sub[None] = by_sub[""] = _verb_map(rules, general)
    for sub in named.keys() | ignoring.keys():
        if sub in by_sub:
            continue
        skip = ignoring.get(sub, ())
        chosen = [i for i in _merged(general, named.get(sub, [])) if i not in skip]
        by_sub[sub] = _verb_map(rules, chosen)
    return by_sub, _verb_map(rules, general)


def build_index(rules: Sequence[Rule]) -> tuple[dict[Any, SubMap], SubMap]:
    """Index enabled rules by resource, subresource and verb (see the module docstring).

    The work is proportional to the index it builds (see above), not to the number of
    rules times the number of keys.
    """
    general = [i for i, rule in enumerate(rules) if rule.resources is None]
    named: dict[str, list[int]] = {}
    for i, rule in enumerate(rules):
        for res in rule.resources or ():
            named.setdefault(res, []).append(i)
    by_resource = {res: _sub_map(rules, _merged(general, found))
                   for res, found in named.items()}
    return by_resource, _sub_map(rules, general)


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


# --- one candidate event ----------------------------------------------------------------

class Candidate:
    """The fields of one candidate event the rule checks read, extracted once.

    What only some rules ask for (the user agent, the actor's groups, GitOps evidence,
    whether a GitOps controller wrote) is computed on first use.
    """

    __slots__ = ("_agent", "_controller", "_evidence", "_gitops", "_groups", "actor", "code",
                 "event", "name", "namespace", "resource", "scope_ns", "subresource", "verb")

    def __init__(self, event: dict[str, Any], ref: dict[str, Any], gitops: GitOps) -> None:
        self.event = event
        self.resource: str = ref.get("resource") or ""
        self.subresource: str = ref.get("subresource") or ""
        self.name: str = ref.get("name") or ""
        self.namespace: str = ref.get("namespace") or ""
        # A namespace's own events (create, delete) belong to it, for the exclusions.
        self.scope_ns = self.name if self.resource == "namespaces" and not self.namespace \
            else self.namespace
        self.verb: str = event["verb"]
        self.actor = audit.resolve_actor(event)
        self.code = audit.response_code(event)
        self._gitops = gitops
        self._agent: str | None = None
        self._groups: tuple[str, ...] | None = None
        self._controller: bool | None = None
        self._evidence: tuple[str | None] | None = None

    def agent(self) -> str:
        """The User-Agent, lower-cased."""
        if self._agent is None:
            self._agent = audit.user_agent(self.event).lower()
        return self._agent

    def groups(self) -> tuple[str, ...]:
        """The actor's groups."""
        if self._groups is None:
            self._groups = audit.actor_groups(self.event, self.actor)
        return self._groups

    def response(self) -> str | None:
        """`success`, `denied` or `error`; None without a response code."""
        return audit.response_class(self.code)

    def by_controller(self) -> bool:
        """True when a configured GitOps controller made (or impersonated for) the request."""
        if self._controller is None:
            match, actor = self._gitops.controllers, self.actor
            self._controller = match.matches(actor.authenticated) or match.matches(actor.name)
        return self._controller

    def gitops_evidence(self) -> str | None:
        """What marks the carried object as GitOps-managed, or None."""
        if self._evidence is None:
            gitops = self._gitops
            self._evidence = (audit.gitops_evidence(self.event, gitops.annotations,
                                                    gitops.labels, gitops.field_managers),)
        return self._evidence[0]


def rule_failure(rule: Rule, cand: Candidate) -> str | None:
    """The first of `rule`'s own conditions the candidate fails (see CONDITION_ORDER)."""
    if rule.ignore_system and cand.actor.internal:
        return "system_actor"
    scope_ns = cand.scope_ns
    if scope_ns and scope_ns in rule.ignore_namespaces:
        return "namespace"
    if rule.namespace_contains is not None and rule.namespace_contains not in scope_ns.lower():
        return "namespace_contains"
    if rule.refined:
        failure = _identity_failure(rule, cand)
        if failure is not None:
            return failure
    if rule.annotation is not None and not audit.has_annotation(cand.event, *rule.annotation):
        return "annotation"
    if rule.gitops_managed is not None:
        # The GitOps tool applying Git is never drift, whatever the object says.
        if cand.by_controller():
            return "gitops_controller"
        if (cand.gitops_evidence() is not None) is not rule.gitops_managed:
            return "gitops"
    return None


def _identity_failure(rule: Rule, cand: Candidate) -> str | None:
    """The user, group, user-agent and response conditions (`Rule.refined`)."""
    name = cand.actor.name
    if (rule.users is not None and not rule.users.matches(name)) \
            or (rule.ignore_users is not None and rule.ignore_users.matches(name)):
        return "user"
    if (rule.groups is not None and not rule.groups.any_of(cand.groups())) \
            or (rule.ignore_groups is not None and rule.ignore_groups.any_of(cand.groups())):
        return "group"
    if rule.user_agents is not None or rule.ignore_user_agents:
        agent = cand.agent()
        if (rule.user_agents is not None and not any(a in agent for a in rule.user_agents)) \
                or any(a in agent for a in rule.ignore_user_agents):
            return "user_agent"
    if rule.response is not None and cand.response() not in rule.response:
        return "response"
    return None


def decisive(failures: Iterable[str]) -> str:
    """The skip reason of an event no candidate fired on: the closest miss."""
    best = ""
    for reason in failures:
        if not best or _RANK.get(reason, -1) > _RANK.get(best, -1):
            best = reason
    return best or "no_rule"


class _Common(NamedTuple):
    shared: dict[str, Any]   # payload fields that do not depend on the rule
    tokens: dict[str, str]   # raw values of the description tokens
    suffix: str              # " (via <proxy>)" or " (as <user>)"
    actor: audit.Actor


class Detector:
    """Compiled rules plus the settings detection needs; immutable, safe to share."""

    def __init__(self, ruleset: RuleSet, *, entity_namespace: str = "default",
                 own_namespace: str | None = None) -> None:
        self.ruleset = ruleset
        self.rules = ruleset.enabled
        self.gitops = ruleset.gitops
        self.entity_namespace = entity_namespace
        excluded = set(ruleset.ignore_namespaces)
        if own_namespace:
            excluded.add(own_namespace)
        self.excluded_namespaces = frozenset(excluded)
        self._by_resource, self._any_resource = build_index(self.rules)

    @property
    def index(self) -> tuple[dict[Any, SubMap], SubMap]:
        """The compiled index (see the module docstring): by resource, and for the rest."""
        return self._by_resource, self._any_resource

    def leaf(self, resource: Any, subresource: Any, verb: Any) -> Leaf:
        """The index leaf for these objectRef fields and verb (None: no rule can match)."""
        subs, other_sub = self._by_resource.get(resource, self._any_resource)
        verbs, other_verb = subs.get(subresource, other_sub)
        return verbs.get(verb, other_verb)

    def detect(self, events: Iterable[Any], stats: Stats,
               received: float | None = None) -> list[Friction]:
        """Friction events for `events`, in order; never raises on any input.

        Counts go into `stats`. A request seen at two stages yields the same keys twice;
        the outbox (or replay) keeps the first. An event whose evaluation fails is
        counted as invalid (`evaluation_error`) and the others are evaluated as usual.
        `received` is the Unix time the source received the events (detection reads no
        clock): an event time further ahead of it than audit.FUTURE_SKEW is repaired.
        """
        by_resource = self._by_resource
        any_resource = self._any_resource
        excluded = self.excluded_namespaces
        human = audit.HUMAN_SYSTEM_USERS
        firing = audit.FIRING_STAGES
        out: list[Friction] = []
        n = no_rule = quiet = other_ns = internal = sampled = 0
        for event in events:
            n += 1
            try:
                try:
                    stage = event["stage"]
                    if stage not in firing:
                        if stage in audit.QUIET_STAGES:
                            quiet += 1
                        else:
                            self._invalid(event, stats)
                        continue
                    ref = event.get("objectRef")
                    if ref is None:
                        ref = _EMPTY
                    subs, other_sub = by_resource.get(ref.get("resource"), any_resource)
                    verbs, other_verb = subs.get(ref.get("subresource"), other_sub)
                    verb = event.get("verb")
                    leaf = verbs.get(verb, other_verb)
                    if leaf is None:
                        no_rule += 1
                        continue
                    if verb.__class__ is not str:
                        raise TypeError("verb")
                    # Cheap filters that settle most candidates before the slow path.
                    namespace = ref.get("namespace")
                    if namespace and namespace in excluded:
                        other_ns += 1
                        continue
                    if leaf[1]:
                        user = event.get("user")
                        username = user.get("username") if user else None
                        if (not username or (username[:7] == "system:"
                                             and username not in human)) \
                                and not event.get("impersonatedUser"):
                            internal += 1
                            continue
                except (KeyError, TypeError, AttributeError):
                    self._invalid(event, stats)
                    continue
                self._evaluate(event, ref, leaf, stats, out, received=received)
            except Exception as exc:  # one bad event never fails its batch
                sampled = _failed(stats, event, exc, sampled)
        stats.events += n
        _count_skips(stats, no_rule=no_rule, stage=quiet, namespace=other_ns,
                     system_actor=internal)
        return out

    @staticmethod
    def _invalid(event: Any, stats: Stats) -> None:
        stats.invalid[audit.invalid_reason(event) or "unusable"] += 1

    def candidate(self, event: dict[str, Any], ref: dict[str, Any]) -> Candidate:
        """The fields every rule check of this event reads."""
        return Candidate(event, ref, self.gitops)

    def event_skip(self, cand: Candidate, leaf: tuple[tuple[Rule, ...], bool]) -> str | None:
        """A reason that settles every candidate of the leaf at once (`namespace`, or
        `system_actor` when every candidate ignores system actors)."""
        if cand.scope_ns in self.excluded_namespaces:
            return "namespace"
        if leaf[1] and cand.actor.internal:
            return "system_actor"
        return None

    def _evaluate(self, event: dict[str, Any], ref: dict[str, Any],
                  leaf: tuple[tuple[Rule, ...], bool], stats: Stats,
                  out: list[Friction], *, received: float | None) -> None:
        reason = audit.invalid_reason(event)
        if reason is not None:
            stats.invalid[reason] += 1
            return
        cand = self.candidate(event, ref)
        skip = self.event_skip(cand, leaf)
        if skip is not None:
            stats.skipped[skip] += 1
            return
        matched: list[Rule] = []
        failures: list[str] = []
        for rule in leaf[0]:
            failure = rule_failure(rule, cand)
            if failure is None:
                matched.append(rule)
            else:
                failures.append(failure)
        if not matched:
            stats.skipped[decisive(failures)] += 1
            return
        found, fixup = self.frictions(cand, matched, received)
        if not found:
            stats.skipped["no_name"] += 1
            return
        if fixup is not None:
            stats.fixups[fixup] += 1
        out.extend(found)
        for rule in matched:
            stats.matched[(rule.name, rule.severity)] += 1

    def workload(self, cand: Candidate) -> Workload:
        """The workload the candidate's object belongs to ('' when it names none)."""
        return resolve_workload(cand.resource or None, cand.name,
                                audit.carried_metadata(cand.event))

    def frictions(self, cand: Candidate, rules: Sequence[Rule],
                  received: float | None = None) -> tuple[list[Friction], str | None]:
        """The friction events of `rules` for this event, and the timestamp fix-up made
        (`received`: see `detect`).

        Empty when the event names no object: there is no entity to charge.
        """
        workload = self.workload(cand).name
        if not workload:
            return [], None
        common, fixup = self._common(cand, workload, received)
        return [self._friction(cand.event, common, rule) for rule in rules], fixup

    def _common(self, cand: Candidate, workload: str,
                received: float | None) -> tuple[_Common, str | None]:
        """What every rule's friction event for this audit event shares, computed once."""
        namespace = cand.namespace
        cluster_scoped = not namespace or cand.resource == "namespaces"
        shared: dict[str, Any] = {
            "entity_ref": entity_ref(self.entity_namespace if cluster_scoped else namespace,
                                     workload),
            "service": audit.clean_text(workload, MAX_FIELD),
        }
        actor = cand.actor
        if actor.name:
            shared["actor"] = audit.clean_text(actor.name, MAX_FIELD)
        if not cluster_scoped:
            shared["namespace"] = audit.clean_text(namespace, MAX_FIELD)
        timestamp, fixup = audit.event_timestamp(cand.event, received)
        if timestamp is not None:
            shared["timestamp"] = timestamp
        code = cand.code
        tokens = {
            "actor": actor.name or "unknown",
            "resource": cand.resource,
            "name": cand.name or _carried_name(cand.event),
            "namespace": namespace or "-",
            "verb": cand.verb,
            "subresource": cand.subresource,
            "code": str(code) if code is not None else "",
            "workload": workload,
        }
        if actor.proxy:
            suffix = f" (via {audit.clean_text(actor.proxy, MAX_FIELD)})"
        elif actor.as_user:
            suffix = f" (as {audit.clean_text(actor.as_user, MAX_FIELD)})"
        else:
            suffix = ""
        return _Common(shared, tokens, suffix, actor), fixup

    @staticmethod
    def _friction(event: dict[str, Any], common: _Common, rule: Rule) -> Friction:
        payload: dict[str, Any] = {"entity_ref": common.shared["entity_ref"],
                                   "type": rule.name, "severity": rule.severity}
        payload.update(common.shared)
        payload["description"] = _describe(rule, common)
        if rule.workflow:
            payload["workflow"] = audit.clean_text(rule.workflow, MAX_FIELD)
        if rule.points is not None:
            payload["points"] = rule.points
        actor = common.actor
        key = audit.dedup_key(event, actor.authenticated, common.tokens["verb"], rule.name,
                              actor.impersonated)
        audit_id = event.get("auditID")
        return Friction(key, rule.name, payload,
                        audit.clean_text(audit_id, MAX_FIELD) if isinstance(audit_id, str) else "")


def _carried_name(event: dict[str, Any]) -> str:
    """The name of the carried object, else its generateName: a create whose name the
    apiserver generates has none in objectRef."""
    meta = audit.carried_metadata(event) or _EMPTY
    for key in ("name", "generateName"):
        value = meta.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _count_skips(stats: Stats, **counts: int) -> None:
    for reason, count in counts.items():
        if count:
            stats.skipped[reason] += count


def _failed(stats: Stats, event: Any, exc: Exception, sampled: int) -> int:
    """Count an event whose evaluation raised; sample it while fewer than MAX_FAILURES.

    The sample keeps the auditID and the exception for the log, never the input itself.
    Returns how many failures this call has sampled.
    """
    stats.invalid["evaluation_error"] += 1
    if sampled < MAX_FAILURES and len(stats.failures) < MAX_FAILURES:
        sampled += 1
        message = audit.clean_text(str(exc), _MESSAGE)
        stats.failures.append((audit.failure_id(event),
                               f"{type(exc).__name__}: {message}" if message
                               else type(exc).__name__))
    return sampled


def _describe(rule: Rule, common: _Common) -> str:
    """The rule's template filled in, escaped and cut to the backend's limit."""
    parts = []
    for literal, token in rule.template:
        parts.append(literal)
        if token is not None:
            parts.append(audit.clean_text(common.tokens[token], MAX_FIELD))
    return audit.clean_text("".join(parts) + common.suffix, MAX_DESCRIPTION)
