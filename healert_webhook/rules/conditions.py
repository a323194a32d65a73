"""The conditions a rule can state, one row each: the only place a condition is defined.

A row says which YAML keys state the condition, how each key's value is read and
checked, how the values compile into the rule's `Check`, the skip reasons it gives (a
detection that fails it is counted under that reason), and the lowest audit level at
which it can be decided (what the audit policy must record for it), without and with
the agent's view of the cluster (which holds the metadata of workloads: a condition
that reads only that needs no body when the view runs). The check itself
says whether a candidate event passes, explains a failure, and summarises itself for
`validate`. The order of the rows is the order checks are tried, from the broadest to
the most specific: when no rule fires, an event's skip reason is the failure of the
rule that got furthest (the closest miss). Adding a condition is adding a row here (and
a field to Candidate when it reads a new part of the event).

What the detector's index settles (resource, subresource, verb) is a rule's scope, not
a condition: see SCOPE_KEYS and load.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml

from healert_webhook import audit
from healert_webhook.cluster.kinds import BY_RESOURCE
from healert_webhook.rules import fields
from healert_webhook.rules.matchers import NameMatch
from healert_webhook.rules.model import Check, shown
from healert_webhook.rules.names import resource_hint
from healert_webhook.rules.yamlnodes import (
    BOOL,
    INT,
    STR,
    Node,
    Problems,
    items,
    kind_of,
    read_bool,
    read_one_or_more,
    read_string,
    read_string_list,
)

if TYPE_CHECKING:
    from healert_webhook.rules.candidate import Candidate

# The lowest audit level at which a condition can be decided.
METADATA, REQUEST, REQUEST_RESPONSE = "Metadata", "Request", "RequestResponse"
# The resources the view of the cluster watches (and holds the GitOps keys of).
WATCHED_RESOURCES = frozenset(BY_RESOURCE)


def _carried_level(verbs: frozenset[str] | None) -> str:
    """The level that shows the object a rule on `verbs` reads: a create's, update's or
    patch's request states what it sets; for anything else only the answer shows it."""
    return REQUEST if verbs and verbs <= fields.WRITES else REQUEST_RESPONSE
Reader = Callable[[Problems, str, Node, str], Any]


@dataclass(frozen=True)
class Condition:
    """One row of the table (see the module docstring)."""

    keys: tuple[str, ...]  # the YAML keys that state it
    read: Reader  # (problems, key, value node, where) -> the key's value, None if unusable
    make: Callable[[Mapping[str, Any]], Check | None]  # the keys' values -> the check
    reasons: tuple[str, ...]  # skip reasons, in the order tried
    level: str  # the lowest audit level that shows what it reads
    on_rule: bool = False  # its keys sit on the rule itself, not under `match`
    level_with_view: str = ""  # the same with the view of the cluster ('': as `level`)

    def needs(self, view: bool) -> str:
        """The lowest audit level that decides it, with the view of the cluster or not."""
        return (self.level_with_view or self.level) if view else self.level


def _who(cand: Candidate) -> str:
    return shown(cand.actor.name) if cand.actor.name else "(nobody)"


def _names(match: NameMatch | None) -> str:
    return match.text().replace("|", ", ") if match is not None else ""


# --- the checks ---------------------------------------------------------------------------

class SystemActor(Check):
    """`ignore_system: true`: Kubernetes' own actors never fire the rule."""

    __slots__ = ()
    reasons = ("system_actor",)

    def failure(self, cand: Candidate) -> str | None:
        """`system_actor` when the actor is internal."""
        return "system_actor" if cand.actor.internal else None

    def explain(self, reason: str, cand: Candidate) -> str:
        """Who the internal actor is."""
        return f"the actor {_who(cand)} is internal and the rule has ignore_system: true"

    def summary(self) -> str:
        """Nothing: `validate` shows the actors in a column of its own."""
        return ""


class IgnoreNamespaces(Check):
    """`ignore_namespaces`, and config.ignore_namespaces unless the rule opts out of it
    (`config_ignore_namespaces: false`): the rule skips these namespaces (exact names).

    The detector's index settles config.ignore_namespaces for every rule at once, except
    where a rule that opts out is a candidate too: then each rule asks here.
    """

    __slots__ = ("config", "names")
    reasons = ("namespace",)

    def __init__(self, names: frozenset[str], config: frozenset[str] = frozenset()) -> None:
        self.names, self.config = names, config

    def failure(self, cand: Candidate) -> str | None:
        """`namespace` when the event's namespace is one of them."""
        scope = cand.scope_ns
        return "namespace" if scope and (scope in self.names or scope in self.config) \
            else None

    def explain(self, reason: str, cand: Candidate) -> str:
        """Which namespace, and which list holds it."""
        where = "the rule's ignore_namespaces" if cand.scope_ns in self.names \
            else "config.ignore_namespaces"
        return f"namespace {shown(cand.scope_ns)} is in {where}"

    def summary(self) -> str:
        """`not-namespace=a|b` (the rule's own; validate shows the config's apart)."""
        return "not-namespace=" + "|".join(sorted(self.names)) if self.names else ""


class NamespaceContains(Check):
    """`namespace_contains`: a case-insensitive part of the namespace's name."""

    __slots__ = ("part",)
    reasons = ("namespace_contains",)

    def __init__(self, part: str) -> None:
        self.part = part.lower()

    def failure(self, cand: Candidate) -> str | None:
        """`namespace_contains` when the namespace lacks the part."""
        return None if self.part in cand.scope_ns.lower() else "namespace_contains"

    def explain(self, reason: str, cand: Candidate) -> str:
        """The namespace and the part it lacks."""
        return f"namespace {shown(cand.scope_ns)} does not contain {self.part!r}"

    def summary(self) -> str:
        """`namespace~part`."""
        return f"namespace~{self.part}"


class Users(Check):
    """`users` / `ignore_users`: the actor is (is not) one of these names or prefixes."""

    __slots__ = ("exclude", "include")
    reasons = ("user",)

    def __init__(self, include: NameMatch | None, exclude: NameMatch | None) -> None:
        self.include, self.exclude = include, exclude

    def failure(self, cand: Candidate) -> str | None:
        """`user` when the actor is not included, or is excluded."""
        name = cand.actor.name
        if (self.include is not None and not self.include.matches(name)) \
                or (self.exclude is not None and self.exclude.matches(name)):
            return "user"
        return None

    def explain(self, reason: str, cand: Candidate) -> str:
        """Which list the actor failed."""
        if self.include is not None and not self.include.matches(cand.actor.name):
            return f"the actor {_who(cand)} is not one of users {_names(self.include)}"
        return f"the actor {_who(cand)} is in ignore_users {_names(self.exclude)}"

    def summary(self) -> str:
        """`user=a|b not-user=c*`."""
        return _pair("user", self.include, self.exclude)


class Groups(Check):
    """`groups` / `ignore_groups`: one of the actor's groups is (none is) one of these."""

    __slots__ = ("exclude", "include")
    reasons = ("group",)

    def __init__(self, include: NameMatch | None, exclude: NameMatch | None) -> None:
        self.include, self.exclude = include, exclude

    def failure(self, cand: Candidate) -> str | None:
        """`group` when no group is included, or one is excluded."""
        groups = cand.groups()
        if (self.include is not None and not self.include.any_of(groups)) \
                or (self.exclude is not None and self.exclude.any_of(groups)):
            return "group"
        return None

    def explain(self, reason: str, cand: Candidate) -> str:
        """The actor's groups and the list they failed."""
        groups = ", ".join(shown(g) for g in cand.groups()) or "(none)"
        if self.include is not None and not self.include.any_of(cand.groups()):
            return f"none of the actor's groups ({groups}) is in groups {_names(self.include)}"
        return f"the actor's groups ({groups}) meet ignore_groups {_names(self.exclude)}"

    def summary(self) -> str:
        """`group=a not-group=b`."""
        return _pair("group", self.include, self.exclude)


def _pair(label: str, include: NameMatch | None, exclude: NameMatch | None) -> str:
    parts = []
    if include is not None:
        parts.append(f"{label}={include.text()}")
    if exclude is not None:
        parts.append(f"not-{label}={exclude.text()}")
    return " ".join(parts)


class UserAgent(Check):
    """`user_agent_contains` / `ignore_user_agent_contains`, case-insensitive."""

    __slots__ = ("exclude", "include")
    reasons = ("user_agent",)

    def __init__(self, include: tuple[str, ...] | None, exclude: tuple[str, ...]) -> None:
        self.include, self.exclude = include, exclude

    def failure(self, cand: Candidate) -> str | None:
        """`user_agent` when the agent holds none of the parts, or one it must not."""
        agent = cand.agent()
        if (self.include is not None and not any(a in agent for a in self.include)) \
                or any(a in agent for a in self.exclude):
            return "user_agent"
        return None

    def explain(self, reason: str, cand: Candidate) -> str:
        """The user agent and the parts it failed."""
        agent = shown(audit.user_agent(cand.event))
        if self.include is not None and not any(a in cand.agent() for a in self.include):
            return f"user agent {agent} contains none of " + ", ".join(self.include)
        return f"user agent {agent} contains one of " + ", ".join(self.exclude)

    def summary(self) -> str:
        """`agent~kubectl not-agent~argocd`."""
        parts = []
        if self.include:
            parts.append("agent~" + "|".join(self.include))
        if self.exclude:
            parts.append("not-agent~" + "|".join(self.exclude))
        return " ".join(parts)


class Response(Check):
    """`response`: the class of the apiserver's answer (success, denied, error).

    Without `response` (classes None) every answer counts except 404 Not Found: such a
    request concerned no object, so it read, changed or entered nothing (kubectl's wait
    after a delete reads the object until it answers 404). A rule that names `error`
    counts them.
    """

    __slots__ = ("classes",)
    reasons = ("response",)

    def __init__(self, classes: frozenset[str] | None) -> None:
        self.classes = classes

    def failure(self, cand: Candidate) -> str | None:
        """`response` when the answer is of another class, or missing; by default, when
        it is 404."""
        if self.classes is None:
            return "response" if cand.code == NOT_FOUND else None
        return None if cand.response() in self.classes else "response"

    def explain(self, reason: str, cand: Candidate) -> str:
        """The code, its class, and the classes asked for."""
        if self.classes is None:
            return ("the response 404 Not Found concerns no object: nothing was read, "
                    "changed or entered (a rule whose response names error counts these)")
        code = cand.code if cand.code is not None else "(none)"
        return (f"the response {code} is {cand.response() or 'missing'}, not "
                + " or ".join(sorted(self.classes)))

    def summary(self) -> str:
        """`response=denied|error` ('' for the default)."""
        return "" if self.classes is None else "response=" + "|".join(sorted(self.classes))


NOT_FOUND = 404
ANY_FOUND = Response(None)  # the default of every rule without `response`


class Annotation(Check):
    """`annotation: key=value` on the audit event, on the object it carries, or set by
    the JSON patch it carries (at Request, `kubectl patch --type=json` states only its
    operations: the annotation it adds is in no object)."""

    __slots__ = ("key", "level", "tokens", "value")
    reasons = ("annotation",)

    def __init__(self, key: str, value: str, verbs: frozenset[str] | None = None) -> None:
        self.key, self.value = key, value
        self.tokens: tuple[fields.Token, ...] = ("metadata", "annotations", key)
        self.level = _carried_level(verbs)

    def failure(self, cand: Candidate) -> str | None:
        """`annotation` when neither the event nor its object has it."""
        event = cand.event
        if audit.has_annotation(event, self.key, self.value):
            return None
        ops = event.get("requestObject")
        if isinstance(ops, list) and event.get("verb") == "patch":
            made = fields.json_patch(ops, self.tokens)
            if isinstance(made, list) and self.value in made:
                return None
        return "annotation"

    def explain(self, reason: str, cand: Candidate) -> str:
        """What was looked for, and where."""
        return f"no annotation {self.key}={self.value} on the event or the object it carries"

    def summary(self) -> str:
        """`annotation=key=value`."""
        return f"annotation={self.key}={self.value}"


class GitOpsManaged(Check):
    """`gitops_managed`: the object is (is not) managed by a GitOps tool; a write by a
    GitOps controller itself is the tool applying Git and never matches."""

    __slots__ = ("level_with_view", "managed")
    reasons = ("gitops_controller", "gitops")

    def __init__(self, managed: bool, resources: frozenset[str] | None = None) -> None:
        self.managed = managed
        # The view holds the GitOps keys of the kinds it watches only: of any other, the
        # event must carry the whole object ('': as the row says).
        self.level_with_view = "" if resources and resources <= WATCHED_RESOURCES \
            else REQUEST_RESPONSE

    def failure(self, cand: Candidate) -> str | None:
        """`gitops_controller` for the tool's own write, `gitops` when the evidence
        disagrees with what the rule asks."""
        if cand.by_controller():
            return "gitops_controller"
        return None if (cand.gitops_evidence() is not None) is self.managed else "gitops"

    def explain(self, reason: str, cand: Candidate) -> str:
        """Who wrote, or what the object shows (or that the event carries no object)."""
        if reason == "gitops_controller":
            return (f"written by the GitOps controller {shown(cand.actor.authenticated)}: "
                    "applying Git is not drift")
        evidence = cand.gitops_evidence()
        if evidence is not None:
            return f"the object is GitOps-managed ({evidence})"
        return cand.gitops_unseen() or ("the object carries none of the GitOps annotations, "
                                        "labels or field managers")

    def summary(self) -> str:
        """`gitops-managed=yes|no`."""
        return f"gitops-managed={'yes' if self.managed else 'no'}"

    def need(self) -> str:
        """The whole object: a patch's request is only the patch."""
        return ("log updates and patches of these objects at RequestResponse (the resulting "
                "object shows who manages it; a patch's request is only the patch)")

    def fired(self, cand: Candidate) -> str:
        """What a firing adds to its explanation: the evidence, when it asks for one."""
        return f"; the object is GitOps-managed ({cand.gitops_evidence()})" \
            if self.managed else ""


class FieldTest(NamedTuple):
    """One test of the `object` condition: the field at `path` is present (`want` True),
    absent (False) or equal to one of `values` (`want` None), on objects of `resources`
    (None: any). Without a path the test holds for any object of `resources`."""

    path: fields.Path | None
    want: bool | None
    values: tuple[Any, ...]
    resources: frozenset[str] | None

    def holds(self, found: list[Any]) -> bool:
        """Whether the values found at the path pass the test (any of them, for [])."""
        if self.want is not None:
            return bool(found) is self.want
        return any(_same(value, wanted) for value in found for wanted in self.values)

    def text(self) -> str:
        """`spec.type in [NodePort, LoadBalancer]`, as `validate` and explain show it."""
        on = "|".join(sorted(self.resources or ()))
        if self.path is None:
            return f"any {on}"
        if self.want is not None:
            said = f"{self.path.text} {'present' if self.want else 'absent'}"
        elif len(self.values) == 1:
            said = f"{self.path.text}={_scalar(self.values[0])}"
        else:
            said = f"{self.path.text} in [" + ", ".join(map(_scalar, self.values)) + "]"
        return f"{said} on {on}" if on else said


def _same(value: Any, wanted: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0."""
    if isinstance(value, bool) or isinstance(wanted, bool):
        return value is wanted
    if isinstance(value, int | float) and isinstance(wanted, int | float):
        return value == wanted
    return isinstance(value, str) and value == wanted


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return shown(value, 60) if isinstance(value, str) else str(value)


def _found(values: list[Any]) -> str:
    """Up to three values found, each shown bounded (never a formatted copy of input)."""
    said = [_scalar(v) if isinstance(v, str | int | float) else
            "(a mapping)" if isinstance(v, dict) else "(a list)" for v in values[:3]]
    return ", ".join(said) + (f" and {len(values) - 3} more" if len(values) > 3 else "")


class ObjectFields(Check):
    """`object`: a field of the object the event is about is present, absent, equal to a
    value or one of values, or the object is of some resources (any of several tests);
    see rules/fields.py for what the event shows of the object and when a patch leaves a
    field as it was."""

    __slots__ = ("level", "resources", "tests", "verbs")
    reasons = ("object_missing", "object")

    def __init__(self, tests: tuple[FieldTest, ...], verbs: frozenset[str] | None,
                 resources: frozenset[str] | None = None) -> None:
        self.tests, self.verbs, self.resources = tests, verbs, resources
        # A test of resources alone reads no body.
        self.level = METADATA if all(test.path is None for test in tests) \
            else _carried_level(verbs)

    def failure(self, cand: Candidate) -> str | None:
        """`object_missing` when the event carries no object for any test that applies,
        `object` when no test holds."""
        applies = seen = False
        for test in self.tests:
            if test.resources is not None and cand.resource not in test.resources:
                continue
            if test.path is None:
                return None
            applies = True
            found = cand.bodies()
            if found is fields.NO_BODIES:
                continue
            seen = True
            values, _ = fields.seen(found, test.path.tokens)
            if isinstance(values, list) and test.holds(values):
                return None
        return "object_missing" if applies and not seen else "object"

    def explain(self, reason: str, cand: Candidate) -> str:
        """Why each test failed."""
        if reason == "object_missing":
            return f"the event carries no object (logged at Metadata level): {self.need()}"
        return "; ".join(self._why(test, cand) for test in self.tests)

    @staticmethod
    def _why(test: FieldTest, cand: Candidate) -> str:
        if test.resources is not None and cand.resource not in test.resources:
            return f"{test.text()}: {shown(cand.resource)} is not one of those"
        if test.path is None:
            return f"{test.text()}: holds"
        found = cand.bodies()
        if found is fields.NO_BODIES:
            return f"{test.text()}: the event carries no object"
        values, where = fields.seen(found, test.path.tokens)
        if values is None:
            return f"{test.text()}: the patch leaves {test.path.text} as it was"
        if isinstance(values, str):  # fields.UNKNOWN
            return (f"{test.text()}: the patch changes it in a way only the answer shows "
                    "(log this request at RequestResponse)")
        held = _found(values) if values else "absent"
        return f"{test.text()}: it is {held} in the {where}"

    def summary(self) -> str:
        """`object=spec.suspend=true on kustomizations or ...` (any of the tests)."""
        return "object=" + " or ".join(test.text() for test in self.tests)

    def need(self) -> str | None:
        """What the audit policy must record for this condition, in a sentence."""
        if self.level == METADATA:
            return None
        verbs = ", ".join(sorted(self.verbs)) if self.verbs else "every verb"
        kinds: set[str] = set()
        anywhere: list[str] = []
        for test in self.tests:
            if test.path is None:
                continue
            if test.resources or self.resources:
                kinds.update(test.resources or self.resources or ())
            else:
                anywhere.append(test.path.text)
        what = ", ".join(sorted(kinds))
        if anywhere:
            anything = f"any resource (for {', '.join(anywhere)})"
            what = f"{what} and {anything}" if what else anything
        if self.level == REQUEST:
            return (f"the audit policy must log {verbs} of {what} at Request or higher "
                    "(the request states what it sets; RequestResponse adds the resulting "
                    "object)")
        return (f"the audit policy must log {verbs} of {what} at RequestResponse (the "
                "object of a read or a delete is only in the answer)")


# --- reading the YAML values --------------------------------------------------------------

def read_names(ctx: Problems, key: str, node: Node, where: str) -> NameMatch | None:
    """Names and prefixes (`oidc:*`); an `ignore_` list may be empty, the others not."""
    return name_match(ctx, node, where, include=not key.startswith("ignore_"))


def name_match(ctx: Problems, node: Node, where: str, *, include: bool) -> NameMatch | None:
    """Names and prefixes (`oidc:*`); with `include`, an empty list is an error (it would
    match nobody)."""
    values = read_one_or_more(ctx, node, where)
    if values is None:
        return None
    if include and not values:
        ctx.error(node, where, "an empty list matches nobody; leave the field out instead")
    exact: set[str] = set()
    prefixes: set[str] = set()
    for value in values:
        star = value.find("*")
        if star == -1:
            exact.add(value)
        elif star != len(value) - 1:
            ctx.error(node, where, f"{value!r}: '*' may only end a name (a prefix such as "
                      "'oidc:*')")
        elif len(value) == 1:
            ctx.error(node, where, "'*' alone matches everyone; leave the field out instead")
        else:
            prefixes.add(value[:-1])
    return NameMatch(frozenset(exact), tuple(sorted(prefixes)))


def _read_response(ctx: Problems, key: str, node: Node, where: str) -> frozenset[str] | None:
    classes = ", ".join(audit.RESPONSE_CLASSES)
    if isinstance(node, yaml.ScalarNode) and node.tag == INT:
        ctx.error(node, where, f"takes a class of response, not a code: one or more of "
                  f"{classes} (success is 1xx-3xx, denied is 401 and 403, error any other "
                  "4xx or 5xx)")
        return None
    values = read_one_or_more(ctx, node, where)
    if values is None:
        return None
    for value in values:
        if value not in audit.RESPONSE_CLASSES:
            ctx.error(node, where, f"{value!r} is not one of {classes}")
    if not values:
        ctx.error(node, where, "an empty list matches no response; leave the field out")
    return frozenset(values)


def _read_annotation(ctx: Problems, key: str, node: Node,
                     where: str) -> tuple[str, str] | None:
    text = read_string(ctx, node, where)
    if text is None:
        return None
    akey, sep, aval = text.partition("=")
    if not sep or not akey.strip():
        ctx.error(node, where, f"expected \"key=value\", got {text!r}")
        return None
    return akey.strip(), aval.strip()


def _read_parts(ctx: Problems, key: str, node: Node, where: str) -> tuple[str, ...] | None:
    parts = read_one_or_more(ctx, node, where)
    return None if parts is None else tuple(part.lower() for part in parts)


def _read_list(ctx: Problems, key: str, node: Node, where: str) -> list[str] | None:
    return read_string_list(ctx, node, where)


def _read_string(ctx: Problems, key: str, node: Node, where: str) -> str | None:
    return read_string(ctx, node, where)


def _read_bool(ctx: Problems, key: str, node: Node, where: str) -> bool | None:
    return read_bool(ctx, node, where)


FLOAT, NULL = "tag:yaml.org,2002:float", "tag:yaml.org,2002:null"
_TEST_KEYS = ("path", "present", "equals", "in", "resources")
_SCALARS = yaml.constructor.SafeConstructor()
_SCALAR_TAGS: dict[str, Callable[[Any], Any]] = {
    STR: lambda node: node.value, BOOL: _SCALARS.construct_yaml_bool,
    INT: _SCALARS.construct_yaml_int, FLOAT: _SCALARS.construct_yaml_float}
# Maps whose values are always strings: a test of them against true or 1 never holds.
_STRING_MAPS = (("metadata", "labels"), ("metadata", "annotations"))


def _read_scalar(ctx: Problems, node: Node, where: str) -> tuple[bool, Any]:
    """(True, value) for a string, boolean or number; (False, None) reported."""
    if isinstance(node, yaml.ScalarNode):
        build = _SCALAR_TAGS.get(node.tag)
        if build is not None:
            return True, build(node)
        if node.tag == NULL:
            ctx.error(node, where, "null is no value to compare with; to test that the "
                      "field is absent write present: false")
            return False, None
    ctx.error(node, where, f"expected a string, a number or true/false, got {kind_of(node)}")
    return False, None


def _read_test(ctx: Problems, node: Node, where: str) -> FieldTest | None:
    """One test: `path` and one of `present`, `equals` and `in`, optionally `resources`;
    or `resources` alone."""
    if not isinstance(node, yaml.MappingNode):
        ctx.error(node, where, f"expected a test (a mapping with path and one of present, "
                  f"equals, in), got {kind_of(node)}")
        return None
    got: dict[str, Any] = {}
    nodes: dict[str, Node] = {}
    for key, value in items(ctx, node, where, _TEST_KEYS):
        nodes[key] = value
        path = f"{where}.{key}"
        if key == "path":
            got[key] = _read_path(ctx, value, path)
        elif key == "present":
            got[key] = read_bool(ctx, value, path)
        elif key == "equals":
            ok, scalar = _read_scalar(ctx, value, path)
            got[key] = (scalar,) if ok else None
        elif key == "in":
            got[key] = _read_scalars(ctx, value, path)
        else:
            got[key] = _read_resources(ctx, value, path)
    tests = [key for key in ("present", "equals", "in") if key in nodes]
    if "path" in nodes and len(tests) != 1:
        ctx.error(node, where, "needs exactly one of present, equals, in"
                  + (f" (got {', '.join(tests)})" if tests else ""))
        return None
    if "path" not in nodes and (tests or "resources" not in nodes):
        ctx.error(node, where, "missing 'path' (the field to test, e.g. spec.suspend; or "
                  "resources alone, for any object of those)")
        return None
    if any(got.get(key) is None for key in nodes):
        return None
    values: tuple[Any, ...] = got.get("equals") or got.get("in") or ()
    test = FieldTest(got.get("path"), got.get("present"), values, got.get("resources"))
    _warn_string_map(ctx, nodes.get("equals") or nodes.get("in"), where, test)
    return test


def _read_path(ctx: Problems, node: Node, where: str) -> fields.Path | None:
    text = read_string(ctx, node, where)
    if text is None:
        return None
    try:
        return fields.parse_path(text)
    except ValueError as exc:
        ctx.error(node, where, f"{text!r}: {exc}")
        return None


def _read_scalars(ctx: Problems, node: Node, where: str) -> tuple[Any, ...] | None:
    if not isinstance(node, yaml.SequenceNode):
        ctx.error(node, where, f"expected a list of values, got {kind_of(node)} (for one "
                  "value write equals)")
        return None
    values = []
    for index, item in enumerate(node.value):
        ok, value = _read_scalar(ctx, item, f"{where}[{index}]")
        if not ok:
            return None
        values.append(value)
    if not values:
        ctx.error(node, where, "an empty list matches no value; leave the test out")
        return None
    return tuple(values)


def _read_resources(ctx: Problems, node: Node, where: str) -> frozenset[str] | None:
    names = read_one_or_more(ctx, node, where)
    if names is None:
        return None
    if not names:
        ctx.error(node, where, "an empty list matches no object; leave the field out")
        return None
    for name in names:
        hint = resource_hint(name)
        if hint is not None:
            ctx.warn(node, where, f"resource {name!r} is never audited: {hint}")
    return frozenset(names)


def _warn_string_map(ctx: Problems, node: Node | None, where: str, test: FieldTest) -> None:
    """Labels and annotations hold strings: `equals: true` there never holds."""
    if node is None or test.path is None:
        return
    tokens = test.path.tokens
    if len(tokens) != 3 or tuple(tokens[:2]) not in _STRING_MAPS:
        return
    odd = [value for value in test.values if not isinstance(value, str)]
    if odd:
        ctx.warn(node, where, f"{tokens[1]} hold strings, so {_scalar(odd[0])} never "
                 f"matches: quote it ('\"{_scalar(odd[0])}\"')")


def _read_object(ctx: Problems, key: str, node: Node,
                 where: str) -> tuple[FieldTest, ...] | None:
    """One test or a list of tests (any of them holds)."""
    if isinstance(node, yaml.MappingNode):
        test = _read_test(ctx, node, where)
        return None if test is None else (test,)
    if not isinstance(node, yaml.SequenceNode):
        ctx.error(node, where, "expected a test (a mapping with path and one of present, "
                  f"equals, in) or a list of them, got {kind_of(node)}")
        return None
    tests = [_read_test(ctx, item, f"{where}[{index}]") for index, item in
             enumerate(node.value)]
    if not tests:
        ctx.error(node, where, "an empty list matches nothing; leave the field out")
    return None if not tests or None in tests else tuple(t for t in tests if t is not None)


# --- the table ------------------------------------------------------------------------------

SYSTEM_ACTOR = SystemActor()


# The key under which load.py hands a rule's compile the config's ignore_namespaces (empty
# when the rule opts out of them); no YAML key can be written so.
CONFIG_NAMESPACES = "config.ignore_namespaces"


def _ignored(values: Mapping[str, Any]) -> Check | None:
    names = frozenset(values.get("ignore_namespaces") or ())
    config = frozenset(values.get(CONFIG_NAMESPACES) or ())
    return IgnoreNamespaces(names, config) if names or config else None


def _response(values: Mapping[str, Any]) -> Check:
    classes = values.get("response")
    return ANY_FOUND if classes is None else Response(classes)


def _named(values: Mapping[str, Any], many: str, one: str) -> frozenset[str] | None:
    """What a rule's `many` list and `one` value name together (`verbs` and `verb`)."""
    names = set(values.get(many) or ())
    if values.get(one):
        names.add(values[one])
    return frozenset(names) or None


def _verbs(values: Mapping[str, Any]) -> frozenset[str] | None:
    return _named(values, "verbs", "verb")


def _resources(values: Mapping[str, Any]) -> frozenset[str] | None:
    return _named(values, "resources", "resource")


def _object(values: Mapping[str, Any]) -> Check | None:
    tests = values.get("object")
    if not tests:
        return None
    return ObjectFields(tests, _verbs(values), _resources(values))


def _gitops(values: Mapping[str, Any]) -> Check | None:
    managed = values.get("gitops_managed")
    return None if managed is None else GitOpsManaged(managed, _resources(values))


def _annotation(values: Mapping[str, Any]) -> Check | None:
    pair = values.get("annotation")
    if not pair:
        return None
    key, value = pair
    return Annotation(key, value, _verbs(values))


def _users(values: Mapping[str, Any]) -> Check | None:
    include, exclude = values.get("users"), values.get("ignore_users")
    return None if include is None and exclude is None else Users(include, exclude)


def _groups(values: Mapping[str, Any]) -> Check | None:
    include, exclude = values.get("groups"), values.get("ignore_groups")
    return None if include is None and exclude is None else Groups(include, exclude)


def _agents(values: Mapping[str, Any]) -> Check | None:
    include = values.get("user_agent_contains")
    exclude = values.get("ignore_user_agent_contains") or ()
    return None if include is None and not exclude else UserAgent(include, exclude)


def _one(key: str, build: Callable[[Any], Check]) -> Callable[[Mapping[str, Any]], Check | None]:
    """A `make` for a condition of one key: the check when the key has a value."""
    def make(values: Mapping[str, Any]) -> Check | None:
        value = values.get(key)
        return None if value is None or value == "" else build(value)
    return make


CONDITIONS: tuple[Condition, ...] = (
    Condition(("ignore_system",), _read_bool,
              lambda v: SYSTEM_ACTOR if v.get("ignore_system") else None,
              SystemActor.reasons, METADATA, on_rule=True),
    Condition(("ignore_namespaces",), _read_list, _ignored, IgnoreNamespaces.reasons,
              METADATA),
    Condition(("namespace_contains",), _read_string, _one("namespace_contains",
                                                          NamespaceContains),
              NamespaceContains.reasons, METADATA),
    Condition(("users", "ignore_users"), read_names, _users, Users.reasons, METADATA),
    Condition(("groups", "ignore_groups"), read_names, _groups, Groups.reasons, METADATA),
    Condition(("user_agent_contains", "ignore_user_agent_contains"), _read_parts, _agents,
              UserAgent.reasons, METADATA),
    Condition(("response",), _read_response, _response, Response.reasons, METADATA),
    # On the object: a create's or update's requestObject (Request), or the answer's
    # (its check's `level` says which, from the rule's verbs).
    Condition(("annotation",), _read_annotation, _annotation, Annotation.reasons, REQUEST),
    # The whole object: a patch's requestObject is only the patch. The view holds the
    # workloads' GitOps annotations, labels and field managers.
    Condition(("gitops_managed",), _read_bool, _gitops, GitOpsManaged.reasons,
              REQUEST_RESPONSE, level_with_view=METADATA),
    # A field of the object: the request states it for a create, update or patch
    # (Request); a read's or delete's object is only in the answer (its check's `level`).
    Condition(("object",), _read_object, _object, ObjectFields.reasons, REQUEST),
)

# The skip reasons of failed conditions, in the order they are tried.
CONDITION_ORDER: tuple[str, ...] = tuple(r for c in CONDITIONS for r in c.reasons)
RANK = {reason: rank for rank, reason in enumerate(CONDITION_ORDER)}
# What the index settles: these keys scope a rule to requests (see load.py).
SCOPE_KEYS = ("resource", "resources", "subresource", "ignore_subresources", "verb", "verbs")
MATCH_KEYS: tuple[str, ...] = SCOPE_KEYS + tuple(
    key for c in CONDITIONS if not c.on_rule for key in c.keys)
RULE_CONDITION_KEYS: tuple[str, ...] = tuple(key for c in CONDITIONS if c.on_rule
                                             for key in c.keys)
BY_KEY: dict[str, Condition] = {key: c for c in CONDITIONS for key in c.keys}


def compile_checks(values: Mapping[str, Any]) -> tuple[Check, ...]:
    """A rule's checks from its read condition values, in the table's order."""
    return tuple(check for condition in CONDITIONS
                 if (check := condition.make(values)) is not None)


def decisive(failures: list[str]) -> str:
    """The skip reason of an event no candidate fired on: the closest miss."""
    best = ""
    for reason in failures:
        if not best or RANK.get(reason, -1) > RANK.get(best, -1):
            best = reason
    return best or "no_rule"
