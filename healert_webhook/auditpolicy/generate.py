"""Write the audit policy that gives each detection rule what it needs and drops the rest.

The policy is built from the top down, since the first matching rule decides:

1. Nothing for non-resource URLs (health checks, discovery, OpenAPI, /metrics,
   /version) and for known noise (leases, lease candidates, Events): no rule is about
   them, and they are the bulk of all requests. Nothing in the namespaces every
   detection rule skips.
2. One block per kind of identity the policy can tell apart, each ending in a rule that
   drops the rest of what that identity does: access proxies named in the needs, GitOps
   controllers and other named automation, control-plane components, nodes, anonymous
   requests, kube-system's service accounts (the built-in controllers), other service
   accounts. Each block keeps what the needs ask of that identity, if anything.
3. Everyone else (people) gets what the needs ask, and a final rule drops the rest.

Within a block, Secrets, token requests and reviews and ConfigMaps come first and never
above Metadata; then the other rules, highest level first, so that a request wanted by
several detection rules gets the highest level any of them needs. `omitStages:
[RequestReceived]` and `omitManagedFields: true` hold policy-wide; a rule that feeds a
detection rule reading managed fields sets `omitManagedFields: false`.

Impersonation. The policy sees the identity that authenticated, never the one it
impersonates: an access proxy's requests for a person look like its own service
account's. So when the needs name the proxies (`Needs.proxies`), their requests get a
block of their own with everything the people get, and every other service account is
dropped. When they do not, every service account outside kube-system could be a proxy:
those accounts are kept for the verbs and resources the people's rules need, at the same
level. That is the cost of not naming the proxies: operators' own writes to those
resources are recorded too (at the level the people's rules need, which for a rule that
reads objects means their bodies). kube-system's service accounts, nodes and
control-plane components are never proxies and are dropped either way.

Custom resources. A detection rule names a resource by its plural only. For a built-in
one the group is known; for another, the target must name its group, or the caller
allows `group: "*"` (every group), which only recent apiservers accept (v1.37 does;
releases from before late 2025 refuse to start on it); otherwise generation fails and
says which rule and resource need a group.
"""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from healert_webhook.auditpolicy import builtin
from healert_webhook.auditpolicy.document import API_VERSION, KIND, Level
from healert_webhook.auditpolicy.needs import ANY, Actor, Needs, Target

# Control-plane components that authenticate as themselves (kubeadm, k3s).
CONTROL_PLANE_USERS = ("system:apiserver", "system:k3s-controller", "system:k3s-supervisor",
                       "system:kube-controller-manager", "system:kube-proxy",
                       "system:kube-scheduler")
NODES, ANONYMOUS = "system:nodes", "system:unauthenticated"
SERVICE_ACCOUNTS, KUBE_SYSTEM_ACCOUNTS = ("system:serviceaccounts",
                                          "system:serviceaccounts:kube-system")
# A group whose members also belong to others (a selector on those would catch them too).
_IMPLIED_GROUPS = {KUBE_SYSTEM_ACCOUNTS: (SERVICE_ACCOUNTS,)}
_WRAP = 92


class GenerateError(ValueError):
    """The needs cannot be written as a policy; the message says what to change."""


@dataclass(frozen=True)
class _Selector:
    """Whose requests a policy rule applies to; both empty means everyone."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Class:
    """A kind of identity the policy can tell apart, and the actors it may stand for."""

    title: str
    selector: _Selector
    actors: frozenset[Actor]


@dataclass(frozen=True, order=True)
class _Req:
    """One target of one detection rule, as a class of identities must have it recorded."""

    rule: str
    key: str  # the target in full, as text: what orders and compares it
    level: Level
    managed_fields: bool
    target: Target = field(compare=False)


@dataclass
class _Rule:
    """A policy rule being put together."""

    level: Level
    comment: list[str]
    selector: _Selector = _Selector()
    verbs: tuple[str, ...] = ()
    resources: dict[str, set[str]] | None = None  # group -> entries; None: every resource
    keep_managed_fields: bool = False
    non_resource_urls: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    serves: set[str] = field(default_factory=set)  # the detection rules it is written for


def generate(needs: Needs, *, any_group: bool = False) -> str:
    """The audit.k8s.io/v1 Policy for these needs, as commented YAML (deterministic)."""
    _validate(needs, any_group)
    rules = [_non_resource_rule(), *_noise_rules(needs), *_skipped_namespaces(needs)]
    classes = _classes(needs)
    people = classes[-1]
    people_reqs = _reqs_for(needs, people)
    emitted = _emitted(needs, classes[:-1], people_reqs)
    for cls in _merged(emitted):
        rules += _block(cls, _reqs_for(needs, cls), any_group, last=False)
    accounts = classes[-2]
    if accounts not in emitted:
        # Their requests reach the people's rules: say so where it is decided.
        people = _Class(f"people, and {accounts.title}", people.selector, people.actors)
    rules += _block(people, people_reqs, any_group, last=True)
    return _render(needs, rules)


def _validate(needs: Needs, any_group: bool) -> None:
    problems = []
    for need in needs.needs:
        if need.level is Level.NONE:
            problems.append(f"{need.rule}: a need of level None asks for nothing")
        for target in need.targets:
            if target.resource != ANY and target.groups() is None and not any_group:
                problems.append(
                    f"{need.rule}: {target.resource!r} is not a built-in resource, so its "
                    "API group is unknown: name the group, or allow group \"*\" (every "
                    "group; apiservers older than late 2025 refuse to start on it)")
    if problems:
        raise GenerateError("; ".join(problems))


def _classes(needs: Needs) -> list[_Class]:
    system = frozenset({Actor.SYSTEM})
    unnamed_proxies = frozenset({Actor.PROXIED}) if not needs.proxies else frozenset()
    out = []
    if needs.proxies:
        out.append(_Class("access proxies (they act for people)",
                          _Selector(users=tuple(sorted(set(needs.proxies)))),
                          frozenset({Actor.PROXIED, Actor.SYSTEM})))
    if needs.automation:
        out.append(_Class("automation that never acts for a person (GitOps controllers)",
                          _Selector(users=tuple(sorted(set(needs.automation)))), system))
    out += [
        _Class("control-plane components", _Selector(users=CONTROL_PLANE_USERS), system),
        _Class("nodes (kubelets)", _Selector(groups=(NODES,)), system),
        _Class("anonymous requests", _Selector(groups=(ANONYMOUS,)), system),
        _Class("kube-system's service accounts (the built-in controllers)",
               _Selector(groups=(KUBE_SYSTEM_ACCOUNTS,)), system),
        _Class("service accounts" + (" (any of them may be an access proxy)"
                                     if unnamed_proxies else ""),
               _Selector(groups=(SERVICE_ACCOUNTS,)), system | unnamed_proxies),
        _Class("people", _Selector(),
               frozenset({Actor.PERSON, Actor.IMPERSONATING, Actor.SYSTEM}) | unnamed_proxies),
    ]
    return out


def _reqs_for(needs: Needs, cls: _Class) -> tuple[_Req, ...]:
    reqs = {_Req(need.rule, _target_key(target), need.level, need.managed_fields, target)
            for need in needs.needs if need.actors & cls.actors for target in need.targets}
    return tuple(sorted(reqs))


def _target_key(target: Target) -> str:
    subs = "any" if target.subresources is None else ",".join(sorted(target.subresources))
    return "|".join((target.resource, ",".join(sorted(target.verbs)), subs,
                     ",".join(sorted(target.excluded_subresources)), str(target.group)))


def _emitted(needs: Needs, classes: list[_Class],
             people_reqs: tuple[_Req, ...]) -> list[_Class]:
    """The classes that need a block of their own.

    A class that needs exactly what people need can go without one (its requests reach
    the people's rules), unless a later block would catch its members first.
    """
    kept: list[_Class] = []
    for cls in reversed(classes):
        same = _reqs_for(needs, cls) == people_reqs
        if not same or any(_catches(later, cls) for later in kept):
            kept.insert(0, cls)
    return kept


def _member_groups(cls: _Class) -> set[str]:
    groups = set(cls.selector.groups)
    for group in cls.selector.groups:
        groups.update(_IMPLIED_GROUPS.get(group, ()))
    for user in cls.selector.users:
        parts = user.split(":")
        if user.startswith("system:serviceaccount:") and len(parts) == 4:
            groups.update({SERVICE_ACCOUNTS, f"{SERVICE_ACCOUNTS}:{parts[2]}"})
        elif user.startswith("system:node:"):
            groups.add(NODES)
    return groups


def _catches(later: _Class, earlier: _Class) -> bool:
    """Whether `later`'s selector can match a member of `earlier`."""
    if set(later.selector.users) & set(earlier.selector.users):
        return True
    return bool(set(later.selector.groups) & _member_groups(earlier))


def _merged(classes: list[_Class]) -> list[_Class]:
    """Adjacent classes with one kind of selector and the same needs, as one."""
    out: list[_Class] = []
    for cls in classes:
        prev = out[-1] if out else None
        if prev is not None and prev.actors == cls.actors and (
                (prev.selector.users and cls.selector.users)
                or (prev.selector.groups and cls.selector.groups)):
            out[-1] = _Class(f"{prev.title}; {cls.title}",
                             _Selector(prev.selector.users + cls.selector.users,
                                       prev.selector.groups + cls.selector.groups),
                             prev.actors)
        else:
            out.append(cls)
    return out


# --- the rules of one block ------------------------------------------------------------

def _block(cls: _Class, reqs: Sequence[_Req], any_group: bool, last: bool) -> list[_Rule]:
    rules = _capped_rules(reqs, cls.selector) + _main_rules(reqs, cls.selector, any_group)
    what = "Everything else" if rules else "Everything they do"
    if last:
        rules.append(_Rule(Level.NONE, [f"{what}: no detection rule needs it."]))
    else:
        rules.append(_Rule(Level.NONE, [f"{what}: dropped, no detection rule needs it."],
                           selector=cls.selector))
    rules[0].comment = [f"--- {cls.title} ---", *rules[0].comment]
    return rules


def _groups(target: Target, any_group: bool) -> tuple[str, ...]:
    found = target.groups()
    if found is None:
        return ("*",) if any_group else ()
    return found


def _entries(target: Target, group: str) -> tuple[set[str], set[str]]:
    """The policy's resource entries for a target in a group: (ordinary, capped).

    "Any subresource" is spelled out for a built-in resource (its subresources are
    known, so exclusions and Secrets' neighbours are exact) and is `name/*` otherwise.
    """
    name = target.resource
    if target.subresources is not None:
        entries = {f"{name}/{sub}" if sub else name for sub in target.subresources}
    elif any(res.group == group for res in builtin.lookup(name)):
        entries = {name} | {f"{name}/{sub}" for sub in builtin.subresources(group, name)
                            if sub not in target.excluded_subresources}
    else:
        entries = {name, f"{name}/*"}
    capped = {entry for entry in entries if (group, entry) in builtin.CAPPED}
    return entries - capped, capped


def _capped_rules(reqs: Sequence[_Req], selector: _Selector) -> list[_Rule]:
    """Metadata for what the needs ask of Secrets and the like, then None for the rest."""
    wanted: dict[tuple[str, ...], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    asked: dict[tuple[str, ...], dict[str, Level]] = defaultdict(dict)  # the highest, by rule
    wildcard = False
    for req in reqs:
        verbs = tuple(sorted(req.target.verbs))
        if req.target.resource == ANY:
            wildcard = True
            found = set(builtin.CAPPED)
        else:
            found = {(group, entry) for group in req.target.groups() or ()
                     for entry in _entries(req.target, group)[1]}
        for group, entry in found:
            wanted[verbs][group].add(entry)
        if found:
            asked[verbs][req.rule] = max(req.level, asked[verbs].get(req.rule, req.level))
    names = {verbs: {rule + (f" (asks for {level.text})" if level > Level.METADATA else "")
                     for rule, level in by_rule.items()} for verbs, by_rule in asked.items()}
    rules = _without_shadowed([
        _Rule(Level.METADATA, [f"Needed by {_names(names[verbs])}: Metadata and never more, "
                               "so that no secret value reaches the audit trail."],
              selector, verbs, dict(wanted[verbs]), serves=set(asked[verbs]))
        for verbs in sorted(wanted)
    ])
    if wildcard:
        everything: dict[str, set[str]] = defaultdict(set)
        for group, entry in builtin.CAPPED:
            everything[group].add(entry)
        rules.append(_Rule(Level.NONE, ["Secrets, tokens and ConfigMaps: nothing more, "
                                        "whatever the rules below match."],
                           selector, (), dict(everything)))
    return rules


def _main_rules(reqs: Sequence[_Req], selector: _Selector, any_group: bool) -> list[_Rule]:
    by_key: dict[tuple[Level, bool, tuple[str, ...], bool], _Rule] = {}
    names: dict[tuple[Level, bool, tuple[str, ...], bool], set[str]] = defaultdict(set)
    for req in reqs:
        wildcard = req.target.resource == ANY
        entries = {} if wildcard else {
            group: ordinary for group in _groups(req.target, any_group)
            if (ordinary := _entries(req.target, group)[0])}
        if not wildcard and not entries:
            continue  # all of it capped above
        verbs = tuple(sorted(req.target.verbs))
        keep = req.managed_fields and req.level > Level.METADATA
        key = (req.level, keep, verbs, wildcard)
        rule = by_key.get(key)
        if rule is None:
            rule = by_key[key] = _Rule(req.level, [], selector, verbs,
                                       None if wildcard else {}, keep_managed_fields=keep)
        names[key].add(req.rule)
        for group, ordinary in entries.items():
            assert rule.resources is not None
            rule.resources.setdefault(group, set()).update(ordinary)
    rules = list(by_key.values())
    for key, rule in by_key.items():
        rule.comment = [_why(rule.level, rule.keep_managed_fields, names[key])]
        rule.serves = set(names[key])
    _raise_managed_fields(rules)
    rules.sort(key=lambda r: (-r.level, not r.keep_managed_fields, _render_rule(r)))
    return _without_shadowed(rules)


def _without_shadowed(rules: list[_Rule]) -> list[_Rule]:
    """Drop rules an earlier one matches entirely: it decides, at a level at least as high
    (rules come highest level first), and its comment names whom it serves too."""
    kept: list[_Rule] = []
    also: dict[int, set[str]] = defaultdict(set)
    for rule in rules:
        cover = next((earlier for earlier in kept if _covers(earlier, rule)), None)
        if cover is None:
            kept.append(rule)
        else:
            also[id(cover)] |= rule.serves
    for rule in kept:
        if more := also[id(rule)] - rule.serves:
            rule.comment.append(f"It also serves {_names(more)}.")
            rule.serves |= more
    return kept


def _covers(earlier: _Rule, later: _Rule) -> bool:
    if later.keep_managed_fields and not earlier.keep_managed_fields:
        return False
    if earlier.verbs and (not later.verbs or not set(later.verbs) <= set(earlier.verbs)):
        return False
    if earlier.resources is None:
        return True
    if later.resources is None:
        return False
    return all(entry in earlier.resources.get(group, set())
               for group, entries in later.resources.items() for entry in entries)


def _why(level: Level, managed_fields: bool, names: Iterable[str]) -> str:
    reason = {
        Level.METADATA: "who, what, when",
        Level.REQUEST: "the request body",
        Level.REQUEST_RESPONSE: "the object as written",
    }.get(level, "")
    extra = ", with its managed fields" if managed_fields else ""
    return f"Needed by {_names(names)}: {level.text} ({reason}{extra})."


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(set(names)))


def _raise_managed_fields(rules: list[_Rule]) -> None:
    """A rule keeping managed fields must not sit below another rule for the same requests.

    Rules go highest level first, so a request that one detection rule needs with
    managed fields and another at a higher level would get the higher level without
    them; such a rule is raised to the level of the highest one it overlaps.
    """
    for rule in rules:
        if not rule.keep_managed_fields:
            continue
        higher = [other for other in rules
                  if other is not rule and other.level > rule.level and _overlap(rule, other)]
        if higher:
            top = max(other.level for other in higher)
            rule.comment.append(f"Raised from {rule.level.text} to {top.text}: other rules "
                                "need some of these requests at that level.")
            rule.level = top


def _overlap(a: _Rule, b: _Rule) -> bool:
    if a.verbs and b.verbs and not set(a.verbs) & set(b.verbs):
        return False
    if a.resources is None or b.resources is None:
        return True
    for group, entries in a.resources.items():
        for other_group, others in b.resources.items():
            if (group in (other_group, "*") or other_group == "*") and any(
                    _entries_overlap(x, y) for x in entries for y in others):
                return True
    return False


def _entries_overlap(a: str, b: str) -> bool:
    base_a, _, sub_a = a.partition("/")
    base_b, _, sub_b = b.partition("/")
    if "*" not in (base_a, base_b) and base_a != base_b:
        return False
    return "*" in (sub_a, sub_b) or sub_a == sub_b


# --- the fixed rules ---------------------------------------------------------------------

def _non_resource_rule() -> _Rule:
    return _Rule(Level.NONE, [
        "--- noise: nothing any detection rule is about ---",
        "Non-resource URLs: health checks (/healthz, /livez, /readyz), discovery (/api,",
        "/apis), OpenAPI, /metrics and /version, polled all the time by every client.",
    ], non_resource_urls=("*",))


def _noise_rules(needs: Needs) -> list[_Rule]:
    """None for leases and Events, unless a need names them."""
    named = {(group, target.resource) for need in needs.needs for target in need.targets
             if target.resource != ANY for group in target.groups() or ()}
    resources: dict[str, set[str]] = defaultdict(set)
    for group, name in builtin.NOISE:
        if (group, name) not in named:
            resources[group].add(name)
    if not resources:
        return []
    return [_Rule(Level.NONE, [
        "Leases and lease candidates (leader election, node heartbeats) and Events",
        "(written by every controller for every change): the bulk of all writes.",
    ], resources=dict(resources))]


def _skipped_namespaces(needs: Needs) -> list[_Rule]:
    """None in the namespaces every detection rule skips (rules.yaml's ignore_namespaces)."""
    if not needs.needs:
        return []
    common = frozenset.intersection(*(need.ignore_namespaces for need in needs.needs))
    common -= {""}
    if not common:
        return []
    return [_Rule(Level.NONE, ["Namespaces every detection rule skips: nothing in them is "
                               "ever reported."], namespaces=tuple(sorted(common)))]


# --- YAML ------------------------------------------------------------------------------

def _render(needs: Needs, rules: list[_Rule]) -> str:
    lines = [*_header(needs), f"apiVersion: {API_VERSION}", f"kind: {KIND}",
             "# No rule fires on RequestReceived: the later stages say the same and more.",
             "omitStages: [\"RequestReceived\"]",
             "# Managed fields make bodies several times larger; kept only where a rule",
             "# reads them (omitManagedFields: false below).",
             "omitManagedFields: true", "rules:"]
    for number, rule in enumerate(rules, start=1):
        lines.append("")
        first = f"  # {number}. "
        for index, text in enumerate(rule.comment):
            lines += textwrap.wrap(text, _WRAP, break_on_hyphens=False,
                                   initial_indent=first if index == 0 else
                                   "  #    ", subsequent_indent="  #    ")
        lines += _render_rule(rule).splitlines()
    return "\n".join(lines) + "\n"


def _header(needs: Needs) -> list[str]:
    rules = sorted({need.rule for need in needs.needs})
    text = [
        "Audit policy generated by healert-webhook from its detection rules (`healert-webhook "
        "policy`): regenerate it when the rules change rather than editing it, and check a "
        "copy merged into another policy with `healert-webhook policy --check FILE`. The "
        "apiserver applies the FIRST rule that matches a request; a request no rule matches "
        "is not recorded.",
        "",
        "For the rules: " + (", ".join(rules) if rules else "(none)") + ".",
        *needs.notes,
        "The policy sees the identity that authenticated, not the one it impersonates: an",
        "access proxy acting for a person looks like the proxy's own service account.",
    ]
    if needs.proxies:
        text.append("The access proxies named: " + ", ".join(sorted(set(needs.proxies)))
                    + "; other service accounts are dropped.")
    else:
        text += ["No access proxy is named, so service accounts outside kube-system are",
                 "kept for what people's requests need (any of them may be a proxy)."]
    lines = [part for line in text
             for part in textwrap.wrap(line, _WRAP - 2, break_on_hyphens=False) or [""]]
    return [f"# {line}".rstrip() for line in lines] + [""]


def _render_rule(rule: _Rule) -> str:
    out = [f"  - level: {rule.level.text}"]
    if rule.keep_managed_fields:
        out.append("    omitManagedFields: false")
    if rule.selector.users:
        out += _list_lines("users", sorted(rule.selector.users), 4)
    if rule.selector.groups:
        out += _list_lines("userGroups", sorted(rule.selector.groups), 4)
    if rule.verbs:
        out += _list_lines("verbs", list(rule.verbs), 4)
    if rule.non_resource_urls:
        out += _list_lines("nonResourceURLs", list(rule.non_resource_urls), 4)
    if rule.namespaces:
        out += _list_lines("namespaces", list(rule.namespaces), 4)
    if rule.resources:
        out.append("    resources:")
        for group in sorted(rule.resources):
            out.append(f"      - group: {_quote(group)}")
            out += _list_lines("resources", sorted(rule.resources[group]), 8)
    return "\n".join(out)


def _list_lines(key: str, items: list[str], indent: int) -> list[str]:
    pad = " " * indent
    flow = f"{pad}{key}: [{', '.join(_quote(item) for item in items)}]"
    if len(flow) <= _WRAP:
        return [flow]
    return [f"{pad}{key}:", *(f"{pad}  - {_quote(item)}" for item in items)]


def _quote(text: str) -> str:
    # A JSON string is a YAML double-quoted scalar: no value is ever read as another type.
    return json.dumps(text)
