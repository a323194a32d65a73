"""Load, validate and compile rules.yaml.

The file format is the old Go agent's (a `config` block and a `rules` list) with additive
extensions: `enabled`, `points`, and the match field `ignore_subresources`. Validation is
strict and reports every problem at once, each with file, line, rule and field, because a
typo such as `resouce:` would otherwise silently widen a rule to every resource.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from healert_webhook.backend_contract import SEVERITIES, TYPE_LENGTH
from healert_webhook.backend_contract import TYPE as NAME_RE

TOKENS = ("actor", "resource", "name", "namespace", "verb", "subresource", "code", "workload")
TOKEN_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
KNOWN_VERBS = frozenset({
    "get", "list", "watch", "create", "update", "patch", "delete", "deletecollection",
    "proxy", "connect", "post", "put", "head", "options",
})
DEFAULT_DESCRIPTION = "{verb} on {resource}/{name} (ns:{namespace}) by {actor}"
TOP_KEYS = ("config", "rules")
CONFIG_KEYS = ("ignore_namespaces",)
RULE_KEYS = ("name", "description", "severity", "workflow", "ignore_system", "enabled",
             "points", "match")
MATCH_KEYS = ("resource", "resources", "subresource", "ignore_subresources", "verb", "verbs",
              "annotation", "namespace_contains", "ignore_namespaces")
MAX_RULES_BYTES = 4 * 1024 * 1024


class RulesError(Exception):
    """The rules file cannot be used; `problems` lists every reason, one line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(problems))
        self.source = source
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule: match sets are frozensets, the template is pre-split."""

    name: str
    description: str
    severity: str
    workflow: str | None
    ignore_system: bool
    enabled: bool
    points: int | None
    resources: frozenset[str] | None
    subresource: str | None
    ignore_subresources: frozenset[str]
    verbs: frozenset[str] | None
    annotation: tuple[str, str] | None
    namespace_contains: str | None
    ignore_namespaces: frozenset[str]
    template: tuple[tuple[str, str | None], ...]
    line: int

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
        if self.annotation:
            parts.append(f"annotation={self.annotation[0]}={self.annotation[1]}")
        if self.namespace_contains:
            parts.append(f"namespace~{self.namespace_contains}")
        if self.ignore_namespaces:
            parts.append("not-namespace=" + "|".join(sorted(self.ignore_namespaces)))
        actors = "humans" if self.ignore_system else "all actors"
        state = "enabled " if self.enabled else "disabled"
        return (f"{state} {self.name:<26} {self.severity:<6} {self.workflow or '-':<9} "
                f"{actors:<10} {' '.join(parts) or 'any request'}")


@dataclass(frozen=True)
class RuleSet:
    """A validated rules file: every rule (enabled or not) and the global exclusions."""

    source: str
    rules: tuple[Rule, ...]
    ignore_namespaces: frozenset[str]
    warnings: tuple[str, ...] = field(default=())

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


# --- YAML with line numbers -------------------------------------------------------------

class _Ctx:
    """Collects problems with the file name and the line of the node they concern."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._problems: list[tuple[int, str]] = []
        self._warnings: list[tuple[int, str]] = []

    def error(self, node: yaml.Node | None, where: str, message: str) -> None:
        line = _line(node)
        self._problems.append((line, f"{self.source}:{line}: {where}: {message}"))

    def warn(self, node: yaml.Node | None, where: str, message: str) -> None:
        line = _line(node)
        self._warnings.append((line, f"{self.source}:{line}: {where}: {message}"))

    @property
    def problems(self) -> list[str]:
        """Every error so far, in file order."""
        return [text for _, text in sorted(self._problems, key=lambda item: item[0])]

    @property
    def warnings(self) -> list[str]:
        """Every warning so far, in file order."""
        return [text for _, text in sorted(self._warnings, key=lambda item: item[0])]


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:null":
        return "nothing (null)"
    if node.tag == "tag:yaml.org,2002:bool":
        return "a boolean"
    if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        return "a number"
    return "a string"


def _items(ctx: _Ctx, node: yaml.MappingNode, where: str,
           allowed: tuple[str, ...]) -> Iterator[tuple[str, yaml.Node]]:
    """Yield (key, value node) pairs, reporting unknown and duplicate keys."""
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str):
            ctx.error(key_node, where, "keys must be plain names")
            continue
        if key in seen:
            ctx.error(key_node, f"{where}.{key}", "duplicate key")
            continue
        seen.add(key)
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            ctx.error(key_node, f"{where}.{key}",
                      f"unknown key{hint}; allowed: {', '.join(allowed)}")
            continue
        yield key, value_node


def _string(ctx: _Ctx, node: yaml.Node, where: str) -> str | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
        return str(node.value)
    hint = " (write a single value, or use the plural field for a list)" \
        if isinstance(node, yaml.SequenceNode) else ""
    ctx.error(node, where, f"expected a string, got {_kind(node)}{hint}")
    return None


def _string_list(ctx: _Ctx, node: yaml.Node, where: str) -> list[str] | None:
    if not isinstance(node, yaml.SequenceNode):
        hint = " (write it as a list: '- value')" if isinstance(node, yaml.ScalarNode) else ""
        ctx.error(node, where, f"expected a list of strings, got {_kind(node)}{hint}")
        return None
    values: list[str] = []
    for index, item in enumerate(node.value):
        value = _string(ctx, item, f"{where}[{index}]")
        if value is not None:
            if not value.strip():
                ctx.error(item, f"{where}[{index}]", "empty string")
            values.append(value)
    return values


def _bool(ctx: _Ctx, node: yaml.Node, where: str) -> bool | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
        return bool(yaml.safe_load(node.value))
    ctx.error(node, where, f"expected true or false, got {_kind(node)}")
    return None


def _int(ctx: _Ctx, node: yaml.Node, where: str) -> int | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int":
        return int(yaml.safe_load(node.value))
    ctx.error(node, where, f"expected a whole number, got {_kind(node)}")
    return None


# --- validation -------------------------------------------------------------------------

def _parse_match(ctx: _Ctx, node: yaml.Node, where: str) -> dict[str, Any] | None:
    if not isinstance(node, yaml.MappingNode):
        ctx.error(node, where, f"expected a mapping of conditions, got {_kind(node)}")
        return None
    out: dict[str, Any] = {}
    for key, value in _items(ctx, node, where, MATCH_KEYS):
        path = f"{where}.{key}"
        if key in ("resources", "verbs", "ignore_namespaces", "ignore_subresources"):
            out[key] = _string_list(ctx, value, path)
        else:
            out[key] = _string(ctx, value, path)
        got = out[key]
        if key == "annotation" and got is not None:
            akey, sep, aval = got.partition("=")
            if not sep or not akey.strip():
                ctx.error(value, path, f"expected \"key=value\", got {got!r}")
                out[key] = None
            else:
                out[key] = (akey.strip(), aval.strip())
        if key in ("verb", "verbs") and got is not None:
            for verb in [got] if isinstance(got, str) else got:
                if verb not in KNOWN_VERBS:
                    ctx.warn(value, path, f"verb {verb!r} is not one the apiserver audits")
    if not node.value:
        ctx.error(node, where, "needs at least one condition (an empty match fires on "
                  "every request)")
    return out


def _parse_rule(ctx: _Ctx, index: int, node: yaml.Node) -> Rule | None:
    where = f"rules[{index}]"
    if not isinstance(node, yaml.MappingNode):
        ctx.error(node, where, f"expected a rule (a mapping), got {_kind(node)}")
        return None
    for key_node, value_node in node.value:
        if getattr(key_node, "value", None) == "name" and isinstance(value_node, yaml.ScalarNode):
            where = f"rules[{index}] ({value_node.value})"
    before = len(ctx._problems)
    got: dict[str, Any] = {}
    for key, value in _items(ctx, node, where, RULE_KEYS):
        path = f"{where}.{key}"
        if key in ("name", "description", "severity", "workflow"):
            got[key] = _string(ctx, value, path)
        elif key in ("ignore_system", "enabled"):
            got[key] = _bool(ctx, value, path)
        elif key == "points":
            got[key] = _int(ctx, value, path)
            if got[key] is not None and not 1 <= got[key] <= 100:
                ctx.error(value, path, f"must be between 1 and 100, got {got[key]}")
        else:
            got[key] = _parse_match(ctx, value, path)
        got[f"_{key}_node"] = value
    name = got.get("name")
    if "name" not in got:
        ctx.error(node, where, "missing 'name'")
    elif name is not None and not (TYPE_LENGTH[0] <= len(name) <= TYPE_LENGTH[1]
                                   and NAME_RE.match(name)):
        ctx.error(got["_name_node"], f"{where}.name",
                  f"{name!r} is not a name the backend accepts: 3-50 characters of a-z, 0-9 "
                  "and '-', starting and ending with a letter or digit")
    severity = got.get("severity")
    if "severity" not in got:
        ctx.error(node, where, "missing 'severity' (high, medium or low)")
    elif severity is not None and severity not in SEVERITIES:
        ctx.error(got["_severity_node"], f"{where}.severity",
                  f"{severity!r} is not one of high, medium, low")
    workflow = got.get("workflow")
    if workflow is not None and not 1 <= len(workflow) <= 200:
        ctx.error(got["_workflow_node"], f"{where}.workflow", "must be 1-200 characters")
    if "match" not in got:
        ctx.error(node, where, "missing 'match' (the conditions the rule fires on)")
    description = got.get("description") or DEFAULT_DESCRIPTION
    for token in TOKEN_RE.findall(description):
        if token not in TOKENS:
            ctx.warn(got.get("_description_node"), f"{where}.description",
                     f"unknown token {{{token}}} is printed as is; known: "
                     + " ".join("{" + t + "}" for t in TOKENS))
    if len(ctx._problems) > before:
        return None
    match = got["match"] or {}
    resources = set(match.get("resources") or ())
    if match.get("resource"):
        resources.add(match["resource"])
    verbs = set(match.get("verbs") or ())
    if match.get("verb"):
        verbs.add(match["verb"])
    contains = match.get("namespace_contains")
    return Rule(
        name=str(name),
        description=description,
        severity=str(severity),
        workflow=workflow,
        ignore_system=bool(got.get("ignore_system", False)),
        enabled=got.get("enabled", True) is not False,
        points=got.get("points"),
        resources=frozenset(resources) or None,
        subresource=match.get("subresource") or None,
        ignore_subresources=frozenset(match.get("ignore_subresources") or ()),
        verbs=frozenset(verbs) or None,
        annotation=match.get("annotation"),
        namespace_contains=contains.lower() if contains else None,
        ignore_namespaces=frozenset(match.get("ignore_namespaces") or ()),
        template=compile_template(description),
        line=_line(node),
    )


def parse_rules(text: str, source: str = "rules.yaml") -> RuleSet:
    """Validate rules text and compile it; raise RulesError listing every problem."""
    ctx = _Ctx(source)
    if len(text) > MAX_RULES_BYTES:
        raise RulesError(source, [f"{source}: larger than {MAX_RULES_BYTES} bytes"])
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        place = f"{mark.line + 1}:{mark.column + 1}" if mark is not None else "1"
        raise RulesError(source, [f"{source}:{place}: invalid YAML: {exc.problem}"]) from exc
    except yaml.YAMLError as exc:
        raise RulesError(source, [f"{source}: invalid YAML: {exc}"]) from exc
    if root is None:
        raise RulesError(source, [f"{source}:1: the file is empty; it needs a 'rules' list"])
    if not isinstance(root, yaml.MappingNode):
        raise RulesError(source, [f"{source}:{_line(root)}: expected a mapping with 'config' "
                                  f"and 'rules', got {_kind(root)}"])
    ignore: list[str] = []
    rules: list[Rule] = []
    rules_node: yaml.Node | None = None
    for key, value in _items(ctx, root, "top level", TOP_KEYS):
        if key == "config":
            if isinstance(value, yaml.MappingNode):
                for ckey, cvalue in _items(ctx, value, "config", CONFIG_KEYS):
                    ignore = _string_list(ctx, cvalue, f"config.{ckey}") or []
            elif not (isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null")):
                ctx.error(value, "config", f"expected a mapping, got {_kind(value)}")
        else:
            rules_node = value
    if rules_node is None:
        ctx.error(root, "top level", "missing 'rules' (the list of detection rules)")
    elif not isinstance(rules_node, yaml.SequenceNode):
        ctx.error(rules_node, "rules", f"expected a list of rules, got {_kind(rules_node)}")
    else:
        names: dict[str, int] = {}
        for index, rule_node in enumerate(rules_node.value):
            rule = _parse_rule(ctx, index, rule_node)
            if rule is None:
                continue
            if rule.name in names:
                ctx.error(rule_node, f"rules[{index}] ({rule.name}).name",
                          f"duplicate name; first used by rules[{names[rule.name]}]")
                continue
            names[rule.name] = index
            rules.append(rule)
        if not rules_node.value:
            ctx.warn(rules_node, "rules", "the list is empty: nothing will be detected")
    if ctx.problems:
        raise RulesError(source, ctx.problems)
    return RuleSet(source=source, rules=tuple(rules), ignore_namespaces=frozenset(ignore),
                   warnings=tuple(ctx.warnings))


def default_rules_text() -> str:
    """The rules shipped inside the package (a copy of the repository's rules.yaml)."""
    return resources.files("healert_webhook").joinpath("default_rules.yaml").read_text("utf-8")


def resolve_rules_path(configured: Path | None) -> Path | None:
    """The file to load: the configured path, else ./rules.yaml, else None (packaged)."""
    if configured is not None:
        return configured
    local = Path("rules.yaml")
    return local if local.is_file() else None


def load_rules(path: Path | None) -> RuleSet:
    """Read and compile a rules file (None: the packaged default rules)."""
    if path is None:
        return parse_rules(default_rules_text(), "<packaged rules.yaml>")
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RulesError(source, [f"{source}: cannot read: {exc.strerror}"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RulesError(source, [f"{source}: not UTF-8 (byte {exc.start})"]) from exc
    return parse_rules(text, source)
