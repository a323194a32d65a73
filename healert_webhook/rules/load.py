"""Load, validate and compile rules.yaml.

The file format is the old Go agent's (a `config` block and a `rules` list) with additive
extensions: `enabled`, `points`, `config.gitops`, `ignore_subresources`,
`config_ignore_namespaces` (a rule that config.ignore_namespaces does not apply to; the
config is read before the rules, wherever the file puts it), and the conditions of
conditions.py. A file without them behaves as it did. Validation is strict
and reports every problem at once, each with file, line, rule and field; values the
apiserver never writes are warnings with the fix (lint.py), since such a rule loads but
never fires.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from healert_webhook.backend_contract import SEVERITIES, TYPE_LENGTH
from healert_webhook.backend_contract import TYPE as NAME_RE
from healert_webhook.filewatch import NotRegularFile, read_regular
from healert_webhook.rules import lint
from healert_webhook.rules.conditions import (
    BY_KEY,
    CONFIG_NAMESPACES,
    MATCH_KEYS,
    RULE_CONDITION_KEYS,
    SCOPE_KEYS,
    compile_checks,
    name_match,
)
from healert_webhook.rules.matchers import DEFAULT_GITOPS, GitOps
from healert_webhook.rules.model import (
    DEFAULT_DESCRIPTION,
    TOKEN_RE,
    TOKENS,
    Rule,
    RulesError,
    RuleSet,
    Superseded,
    compile_template,
)
from healert_webhook.rules.yamlnodes import (
    Node,
    Problems,
    compose,
    items,
    kind_of,
    line_of,
    read_bool,
    read_int,
    read_string,
    read_string_list,
)

TOP_KEYS = ("config", "rules")
CONFIG_KEYS = ("ignore_namespaces", "gitops")
GITOPS_KEYS = ("annotations", "labels", "field_managers", "controllers")
RULE_KEYS = ("name", "description", "severity", "workflow", *RULE_CONDITION_KEYS,
             "config_ignore_namespaces", "enabled", "points", "match")
MAX_RULES_BYTES = 4 * 1024 * 1024
CHECK_RULES = 256  # rules validated between looks whether a newer file is waiting
_TEXT_KEYS = ("name", "description", "severity", "workflow")


def _scope_value(ctx: Problems, key: str, node: Node, where: str) -> Any:
    if key in ("resources", "verbs", "ignore_subresources"):
        return read_string_list(ctx, node, where)
    return read_string(ctx, node, where)


def _parse_match(ctx: Problems, node: Node, where: str) -> dict[str, Any] | None:
    if not isinstance(node, yaml.MappingNode):
        ctx.error(node, where, f"expected a mapping of conditions, got {kind_of(node)}")
        return None
    out: dict[str, Any] = {}
    for key, value in items(ctx, node, where, MATCH_KEYS):
        path = f"{where}.{key}"
        if key in SCOPE_KEYS:
            out[key] = _scope_value(ctx, key, value, path)
            lint.warn_unaudited(ctx, key, value, path, out[key])
        else:
            out[key] = BY_KEY[key].read(ctx, key, value, path)
    if not node.value:
        ctx.error(node, where, "needs at least one condition (an empty match fires on "
                  "every request)")
    return out


def _parse_rule(ctx: Problems, index: int, node: Node,
                config_ignore: frozenset[str] = frozenset()) -> Rule | None:
    where = f"rules[{index}]"
    if not isinstance(node, yaml.MappingNode):
        ctx.error(node, where, f"expected a rule (a mapping), got {kind_of(node)}")
        return None
    for key_node, value_node in node.value:
        if getattr(key_node, "value", None) == "name" and isinstance(value_node, yaml.ScalarNode):
            where = f"rules[{index}] ({value_node.value})"
    before = ctx.errors
    got: dict[str, Any] = {}
    for key, value in items(ctx, node, where, RULE_KEYS):
        path = f"{where}.{key}"
        if key in _TEXT_KEYS:
            got[key] = read_string(ctx, value, path)
        elif key in ("enabled", "config_ignore_namespaces"):
            got[key] = read_bool(ctx, value, path)
        elif key == "points":
            got[key] = read_int(ctx, value, path)
            if got[key] is not None and not 1 <= got[key] <= 100:
                ctx.error(value, path, f"must be between 1 and 100, got {got[key]}")
        elif key == "match":
            got[key] = _parse_match(ctx, value, path)
        else:
            got[key] = BY_KEY[key].read(ctx, key, value, path)
        got[f"_{key}_node"] = value
    _check_rule_fields(ctx, node, where, got)
    if ctx.errors > before:
        return None
    rule = _build_rule(got, line_of(node), config_ignore)
    lint.warn_rule(ctx, got.get("_match_node"), where, rule)
    return rule


def _check_rule_fields(ctx: Problems, node: Node, where: str, got: dict[str, Any]) -> None:
    """Report missing and out-of-contract rule fields; warn about unknown tokens."""
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


def _build_rule(got: dict[str, Any], line: int, config_ignore: frozenset[str]) -> Rule:
    match = got["match"] or {}
    resources = set(match.get("resources") or ())
    if match.get("resource"):
        resources.add(match["resource"])
    verbs = set(match.get("verbs") or ())
    if match.get("verb"):
        verbs.add(match["verb"])
    description = got.get("description") or DEFAULT_DESCRIPTION
    values = {**match, **{key: got[key] for key in RULE_CONDITION_KEYS if key in got}}
    applies = got.get("config_ignore_namespaces") is not False
    values[CONFIG_NAMESPACES] = config_ignore if applies else frozenset()
    return Rule(
        name=str(got["name"]),
        description=description,
        severity=str(got["severity"]),
        workflow=got.get("workflow"),
        ignore_system=bool(got.get("ignore_system", False)),
        enabled=got.get("enabled", True) is not False,
        points=got.get("points"),
        resources=frozenset(resources) or None,
        subresource=match.get("subresource") or None,
        ignore_subresources=frozenset(match.get("ignore_subresources") or ()),
        verbs=frozenset(verbs) or None,
        template=compile_template(description),
        line=line,
        checks=compile_checks(values),
        config_namespaces=applies,
    )


def _parse_gitops(ctx: Problems, node: Node) -> GitOps:
    if not isinstance(node, yaml.MappingNode):
        ctx.error(node, "config.gitops", f"expected a mapping with {', '.join(GITOPS_KEYS)}, "
                  f"got {kind_of(node)}")
        return DEFAULT_GITOPS
    got: dict[str, Any] = {}
    for key, value in items(ctx, node, "config.gitops", GITOPS_KEYS):
        path = f"config.gitops.{key}"
        if key == "controllers":
            got[key] = name_match(ctx, value, path, include=False)
            continue
        got[key] = read_string_list(ctx, value, path)
        if key == "labels" and "app.kubernetes.io/instance" in (got[key] or ()):
            ctx.warn(value, path, "app.kubernetes.io/instance is set by Helm and others too: "
                     "it does not show that a GitOps tool manages the object")
    default = DEFAULT_GITOPS
    annotations, labels = got.get("annotations"), got.get("labels")
    managers, controllers = got.get("field_managers"), got.get("controllers")
    return GitOps(
        annotations=default.annotations if annotations is None else tuple(annotations),
        labels=default.labels if labels is None else tuple(labels),
        field_managers=default.field_managers if managers is None else frozenset(managers),
        controllers=default.controllers if controllers is None else controllers,
    )


def _parse_config(ctx: Problems, node: Node) -> tuple[list[str], GitOps]:
    ignore: list[str] = []
    gitops = DEFAULT_GITOPS
    if isinstance(node, yaml.MappingNode):
        for key, value in items(ctx, node, "config", CONFIG_KEYS):
            if key == "ignore_namespaces":
                ignore = read_string_list(ctx, value, f"config.{key}") or []
            else:
                gitops = _parse_gitops(ctx, value)
    elif not (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
        ctx.error(node, "config", f"expected a mapping, got {kind_of(node)}")
    return ignore, gitops


def _parse_rule_list(ctx: Problems, rules_node: Node,
                     superseded: Callable[[], bool] | None = None,
                     config_ignore: frozenset[str] = frozenset()) -> list[Rule]:
    if not isinstance(rules_node, yaml.SequenceNode):
        ctx.error(rules_node, "rules", f"expected a list of rules, got {kind_of(rules_node)}")
        return []
    rules: list[Rule] = []
    names: dict[str, int] = {}
    for index, rule_node in enumerate(rules_node.value):
        if superseded is not None and index % CHECK_RULES == 0 and superseded():
            raise Superseded
        rule = _parse_rule(ctx, index, rule_node, config_ignore)
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
    return rules


def parse_rules(text: str, source: str = "rules.yaml",
                superseded: Callable[[], bool] | None = None) -> RuleSet:
    """Validate rules text and compile it; raise RulesError listing the first problems
    (MAX_LISTED) and counting all. With `superseded`, raise Superseded as soon as it
    says a newer version of the file is waiting (it is asked every few thousand nodes)."""
    ctx = Problems(source)
    root = compose(text, source, MAX_RULES_BYTES, superseded)
    ignore: list[str] = []
    gitops = DEFAULT_GITOPS
    rules: list[Rule] = []
    seen_rules = False
    rules_node: Node | None = None
    for key, value in items(ctx, root, "top level", TOP_KEYS):
        if key == "config":
            ignore, gitops = _parse_config(ctx, value)
        else:
            seen_rules, rules_node = True, value
    if rules_node is not None:  # after the config, wherever the file puts it
        rules = _parse_rule_list(ctx, rules_node, superseded, frozenset(ignore))
    if not seen_rules:
        ctx.error(root, "top level", "missing 'rules' (the list of detection rules)")
    if ctx.errors:
        raise RulesError(source, ctx.problems, ctx.errors)
    return RuleSet(source=source, rules=tuple(rules), ignore_namespaces=frozenset(ignore),
                   warnings=tuple(ctx.warnings), gitops=gitops,
                   warnings_total=ctx.warnings_total)


def default_rules_text() -> str:
    """The rules shipped inside the package (a copy of the repository's rules.yaml)."""
    return resources.files("healert_webhook").joinpath("default_rules.yaml").read_text("utf-8")


def load_rules(path: Path | None, superseded: Callable[[], bool] | None = None,
               keep: Callable[[bytes], None] | None = None) -> RuleSet:
    """Read and compile a rules file (None: the packaged default rules); see
    `parse_rules` for `superseded`. Raises RulesError. `keep` is given the bytes of a
    file that loaded (exactly those that were read)."""
    if path is None:
        return parse_rules(default_rules_text(), "<packaged rules.yaml>")
    source = str(path)
    try:
        raw = read_regular(path, MAX_RULES_BYTES)  # a FIFO at the path never blocks us
    except NotRegularFile as exc:
        raise RulesError(source, [f"{source}: {exc.strerror}"]) from exc
    except OSError as exc:
        raise RulesError(source, [f"{source}: cannot read: {exc.strerror}"]) from exc
    if len(raw) > MAX_RULES_BYTES:
        raise RulesError(source, [f"{source}: larger than {MAX_RULES_BYTES} bytes"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RulesError(source, [f"{source}: not UTF-8 (byte {exc.start})"]) from exc
    ruleset = parse_rules(text, source, superseded)
    if keep is not None:
        keep(raw)
    return ruleset
