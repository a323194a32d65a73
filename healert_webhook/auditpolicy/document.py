"""The audit.k8s.io/v1 Policy document: read it as the apiserver does, and say what is wrong.

The apiserver decodes the file strictly first; when that fails only because of unknown or
duplicate keys it logs a warning and decodes it again leniently, so such a key is ignored
and the policy loads without it (the classic: `stages:` where `omitStages:` was meant).
Any other decoding error, a validation error, or a policy without rules, and it refuses to
start. Every problem here says which of the two it is, with the field path the apiserver
uses (`rules[6].omitStages[0]`, counted from 0) and the policy rule (counted from 1).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import yaml

API_VERSION = "audit.k8s.io/v1"
KIND = "Policy"
STAGES = ("RequestReceived", "ResponseStarted", "ResponseComplete", "Panic")
POLICY_KEYS = ("apiVersion", "kind", "metadata", "rules", "omitStages", "omitManagedFields")
RULE_KEYS = ("level", "users", "userGroups", "verbs", "resources", "namespaces",
             "nonResourceURLs", "omitStages", "omitManagedFields")
GROUP_RESOURCES_KEYS = ("group", "resources", "resourceNames")
# ObjectMeta's fields: `metadata` is accepted for the API machinery's sake and unused.
METADATA_KEYS = ("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion",
                 "generation", "creationTimestamp", "deletionTimestamp",
                 "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences",
                 "finalizers", "managedFields")
# A lowercase RFC 1123 subdomain, as API group names must be.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_DNS_SUBDOMAIN_MAX = 253
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                      r"(Z|[+-][0-9]{2}:[0-9]{2})")
# Walking a document visits each value once per reference to it: without YAML aliases
# that is at most one visit per character, with them it can be the square of the file
# size. Past this many visits beyond the file's length, it is aliasing run wild (which
# the apiserver's YAML reader refuses as well).
MAX_NODES = 200_000


class Level(IntEnum):
    """An audit level; a higher one records everything a lower one does."""

    NONE = 0
    METADATA = 1
    REQUEST = 2
    REQUEST_RESPONSE = 3

    @property
    def text(self) -> str:
        """The level as the policy and the audit event spell it."""
        return _LEVEL_TEXT[self]

    @classmethod
    def from_text(cls, text: str) -> Level | None:
        """The level of that spelling, or None for anything else."""
        return _TEXT_LEVEL.get(text)


_LEVEL_TEXT = {Level.NONE: "None", Level.METADATA: "Metadata", Level.REQUEST: "Request",
               Level.REQUEST_RESPONSE: "RequestResponse"}
_TEXT_LEVEL = {text: level for level, text in _LEVEL_TEXT.items()}


class ProblemKind(StrEnum):
    """What the apiserver does about a problem."""

    REFUSED = "refused"   # it does not start
    IGNORED = "ignored"   # it warns in its log and goes on without that part


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy document."""

    kind: ProblemKind
    path: str            # the apiserver's field path; "" for the document as a whole
    message: str
    rule: int | None = None  # the policy rule it is in, counted from 1

    def __str__(self) -> str:
        where = f"policy rule {self.rule} ({self.path})" if self.rule else self.path
        prefix = f"{where}: " if where else ""
        effect = ("the apiserver refuses to start" if self.kind is ProblemKind.REFUSED
                  else "the apiserver ignores it")
        return f"{prefix}{self.message}; {effect}"


@dataclass(frozen=True)
class GroupResources:
    """Resources of one API group; `group` "" is the core group only, "*" every group."""

    group: str = ""
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class PolicyRule:
    """One rule of a policy; an empty tuple means "any"."""

    level: Level
    users: tuple[str, ...] = ()
    user_groups: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ()
    resources: tuple[GroupResources, ...] = ()
    namespaces: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()
    omit_stages: tuple[str, ...] = ()
    omit_managed_fields: bool | None = None  # None: the policy's default


@dataclass(frozen=True)
class Policy:
    """A policy the apiserver would load."""

    rules: tuple[PolicyRule, ...]
    omit_stages: tuple[str, ...] = ()
    omit_managed_fields: bool = False


@dataclass(frozen=True)
class PolicyDocument:
    """A parsed document: the policy in effect (None if refused) and every problem."""

    policy: Policy | None
    problems: tuple[Problem, ...]

    @property
    def refused(self) -> bool:
        """True when the apiserver would not start with this document."""
        return self.policy is None


class _Mapping(dict[Any, Any]):
    """A YAML mapping that remembers the keys it saw twice."""

    duplicates: list[str]


class _Loader(yaml.SafeLoader):
    """The safe loader, resolving plain scalars as the apiserver's YAML reader does.

    Duplicate keys stay visible instead of silently last-wins; a date stays the text it
    is (the apiserver turns it into a string); y, Y, n and N are booleans (YAML 1.1 as the
    apiserver reads it), so a verb written `n` is the boolean false there too.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Mapping:
    loader.flatten_mapping(node)
    result = _Mapping()
    result.duplicates = []
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            result.duplicates.append(str(key))
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_TRUE = frozenset({"y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"})


def _construct_bool(loader: _Loader, node: yaml.ScalarNode) -> bool:
    return loader.construct_scalar(node) in _TRUE


_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"),
                              list("yYnN"))
_Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


class _TooLarge(Exception):
    """The document has more nodes than any policy needs."""


class _Reader:
    """Walks the decoded document once, collecting problems and building the policy."""

    def __init__(self, budget: int) -> None:
        self.problems: list[Problem] = []
        self.rule: int | None = None
        self.nodes = 0
        self.budget = budget

    def add(self, kind: ProblemKind, path: str, message: str) -> None:
        self.problems.append(Problem(kind, path, message, self.rule))

    def refuse(self, path: str, message: str) -> None:
        self.add(ProblemKind.REFUSED, path, message)

    def visit(self) -> None:
        self.nodes += 1
        if self.nodes > self.budget:
            raise _TooLarge

    def mapping(self, value: Any, path: str,
                known: tuple[str, ...] | None) -> dict[str, Any] | None:
        """The mapping at `path` with its unknown (not in `known`, unless that is None)
        and duplicate keys reported; None when it is no mapping."""
        self.visit()
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.refuse(path, f"expected a mapping, got {_kind(value)}")
            return None
        for key in getattr(value, "duplicates", ()):
            self.add(ProblemKind.IGNORED, _join(path, key),
                     "duplicate key: only its last value is used")
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if known is None or (name in known and isinstance(key, str)):
                out[name] = item
            else:
                self.add(ProblemKind.IGNORED, _join(path, name), "unknown key" + _hint(name, known))
        return out

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        """A list of strings; null is empty and a null item is "" (as Go decodes them)."""
        self.visit()
        if value is None:
            return ()
        if not isinstance(value, list):
            self.refuse(path, f"expected a list of strings, got {_kind(value)}")
            return ()
        out: list[str] = []
        for index, item in enumerate(value):
            self.visit()
            if item is None:
                out.append("")
            elif isinstance(item, str):
                out.append(item)
            else:
                self.refuse(f"{path}[{index}]", f"expected a string, got {_kind(item)}")
        return tuple(out)

    def string(self, value: Any, path: str) -> str:
        self.visit()
        if value is None:
            return ""
        if not isinstance(value, str):
            self.refuse(path, f"expected a string, got {_kind(value)}")
            return ""
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        self.visit()
        if value is None or isinstance(value, bool):
            return value
        self.refuse(path, f"expected true or false, got {_kind(value)}")
        return None


def parse_policy(text: str) -> PolicyDocument:
    """Read a Policy (YAML or JSON) the way the apiserver does, with every problem found."""
    reader = _Reader(MAX_NODES + len(text))
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        reader.refuse("", f"not valid YAML or JSON: {_one_line(exc)}")
        return PolicyDocument(None, tuple(reader.problems))
    except (TypeError, ValueError, RecursionError) as exc:
        reader.refuse("", f"cannot be decoded: {_one_line(exc)}")
        return PolicyDocument(None, tuple(reader.problems))
    if len([doc for doc in docs if doc is not None]) > 1:
        reader.add(ProblemKind.IGNORED, "", "the file holds several YAML documents and the "
                   "apiserver reads only the first")
    try:
        policy = _read_policy(reader, docs[0] if docs else None)
    except _TooLarge:
        reader.problems.clear()
        reader.rule = None
        reader.refuse("", "YAML aliases expand to far more values than the file holds")
        policy = None
    refused = any(p.kind is ProblemKind.REFUSED for p in reader.problems)
    return PolicyDocument(None if refused else policy, tuple(reader.problems))


def _read_policy(reader: _Reader, doc: Any) -> Policy | None:
    if not isinstance(doc, dict):
        reader.refuse("", f"expected a Policy object, got {_kind(doc)}")
        return None
    top = reader.mapping(doc, "", POLICY_KEYS)
    if top is None:
        return None
    _read_type(reader, top)
    _read_metadata(reader, top.get("metadata"))
    omit_stages = _read_stages(reader, top.get("omitStages"), "omitStages")
    omit_managed = reader.boolean(top.get("omitManagedFields"), "omitManagedFields")
    raw_rules = top.get("rules")
    if raw_rules is not None and not isinstance(raw_rules, list):
        reader.refuse("rules", f"expected a list of rules, got {_kind(raw_rules)}")
        return None
    rules: list[PolicyRule] = []
    for index, raw in enumerate(raw_rules or []):
        reader.rule = index + 1
        rule = _read_rule(reader, raw, f"rules[{index}]")
        if rule is not None:
            rules.append(rule)
    reader.rule = None
    if not raw_rules:
        reader.refuse("rules", "the policy has no rules")
    return Policy(tuple(rules), omit_stages, bool(omit_managed))


def _read_metadata(reader: _Reader, value: Any) -> None:
    """Accepted for the API machinery's sake and unused; its types are still decoded."""
    meta = reader.mapping(value, "metadata", METADATA_KEYS)
    for key, item in (meta or {}).items():
        path = f"metadata.{key}"
        if key in ("labels", "annotations"):
            for name, text in (reader.mapping(item, path, None) or {}).items():
                reader.string(text, f"{path}.{name}")
        elif key == "finalizers":
            reader.strings(item, path)
        elif key in ("generation", "deletionGracePeriodSeconds"):
            if item is not None and (isinstance(item, bool) or not isinstance(item, int)):
                reader.refuse(path, f"expected a whole number, got {_kind(item)}")
        elif key in ("ownerReferences", "managedFields"):
            if item is not None and not isinstance(item, list):
                reader.refuse(path, f"expected a list, got {_kind(item)}")
        elif key in ("creationTimestamp", "deletionTimestamp"):
            if reader.string(item, path) and not _RFC3339.fullmatch(item):
                reader.refuse(path, f"{item!r} is not an RFC 3339 time")
        else:
            reader.string(item, path)


def _read_type(reader: _Reader, top: dict[str, Any]) -> None:
    # The apiserver decodes into a Policy, so it does without `kind` but not `apiVersion`.
    api_version, kind = top.get("apiVersion"), top.get("kind")
    if not api_version:
        reader.refuse("apiVersion", f"apiVersion is missing (apiVersion: {API_VERSION})")
    elif api_version != API_VERSION:
        reader.refuse("apiVersion", f"{api_version!r} is not served: only {API_VERSION} is "
                      "(v1alpha1 and v1beta1 were removed)")
    if kind and kind != KIND:
        reader.refuse("kind", f"{kind!r} is not a {KIND}")


def _read_stages(reader: _Reader, value: Any, path: str) -> tuple[str, ...]:
    stages = reader.strings(value, path)
    for index, stage in enumerate(stages):
        if stage not in STAGES:
            reader.refuse(f"{path}[{index}]", f"{stage!r} is not a stage: allowed stages are "
                          + ",".join(STAGES) + _hint(stage, STAGES))
    return stages


def _read_rule(reader: _Reader, raw: Any, path: str) -> PolicyRule | None:
    fields = reader.mapping(raw, path, RULE_KEYS)
    if fields is None:
        return None
    level = _read_level(reader, fields.get("level"), f"{path}.level")
    urls = reader.strings(fields.get("nonResourceURLs"), f"{path}.nonResourceURLs")
    for index, url in enumerate(urls):
        _check_url(reader, url, f"{path}.nonResourceURLs[{index}]")
    resources = _read_resources(reader, fields.get("resources"), f"{path}.resources")
    namespaces = reader.strings(fields.get("namespaces"), f"{path}.namespaces")
    if urls and (resources or namespaces):
        reader.refuse(f"{path}.nonResourceURLs",
                      "rules cannot apply to both regular resources and non-resource URLs")
    return PolicyRule(
        level=level if level is not None else Level.NONE,
        users=reader.strings(fields.get("users"), f"{path}.users"),
        user_groups=reader.strings(fields.get("userGroups"), f"{path}.userGroups"),
        verbs=reader.strings(fields.get("verbs"), f"{path}.verbs"),
        resources=resources,
        namespaces=namespaces,
        non_resource_urls=urls,
        omit_stages=_read_stages(reader, fields.get("omitStages"), f"{path}.omitStages"),
        omit_managed_fields=reader.boolean(fields.get("omitManagedFields"),
                                           f"{path}.omitManagedFields"),
    )


def _read_level(reader: _Reader, value: Any, path: str) -> Level | None:
    text = reader.string(value, path)
    if not text:
        if value is None or isinstance(value, str):
            reader.refuse(path, "level is required")
        return None
    level = Level.from_text(text)
    if level is None:
        reader.refuse(path, f"unsupported level {text!r}: supported values are "
                      + ", ".join(_TEXT_LEVEL) + _hint(text, tuple(_TEXT_LEVEL)))
    return level


def _check_url(reader: _Reader, url: str, path: str) -> None:
    if url == "*":
        return
    if not url.startswith("/"):
        reader.refuse(path, f"{url!r}: non-resource URL rules must begin with a '/' character")
    if url and "*" in url[:-1]:
        reader.refuse(path, f"{url!r}: non-resource URL wildcards '*' must be the final "
                      "character of the rule")


def _read_resources(reader: _Reader, value: Any, path: str) -> tuple[GroupResources, ...]:
    reader.visit()
    if value is None:
        return ()
    if not isinstance(value, list):
        reader.refuse(path, f"expected a list of groups and resources, got {_kind(value)}")
        return ()
    out: list[GroupResources] = []
    for index, raw in enumerate(value):
        where = f"{path}[{index}]"
        fields = reader.mapping(raw, where, GROUP_RESOURCES_KEYS)
        if fields is None:
            continue
        group = reader.string(fields.get("group"), f"{where}.group")
        names = reader.strings(fields.get("resources"), f"{where}.resources")
        resource_names = reader.strings(fields.get("resourceNames"), f"{where}.resourceNames")
        if group and group != "*" and not is_group_name(group):
            # The apiserver names the list, not the item, in this one message.
            reader.refuse(f"{path}.group", f"{group!r} is not an API group name (a lower "
                          "case DNS subdomain, without a version: e.g. apps or "
                          "rbac.authorization.k8s.io)")
        if resource_names and not names:
            reader.refuse(f"{path}.resourceNames",
                          "using resourceNames requires at least one resource")
        out.append(GroupResources(group, names, resource_names))
    return tuple(out)


def is_group_name(group: str) -> bool:
    """Whether the apiserver takes `group` as an API group name (a lower-case DNS
    subdomain, without a version)."""
    return len(group) <= _DNS_SUBDOMAIN_MAX and _DNS_SUBDOMAIN.fullmatch(group) is not None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _hint(name: str, known: tuple[str, ...]) -> str:
    by_case = [k for k in known if k.lower() == name.lower()]
    close = by_case or difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]

