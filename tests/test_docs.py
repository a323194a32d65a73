"""The docs stay true: every setting and metric is documented; the README keeps its shape."""

from __future__ import annotations

import re

from prometheus_client.metrics import MetricWrapperBase

from healert_webhook import metrics
from healert_webhook.config import OPTIONS

from support.paths import ROOT

README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def test_every_environment_variable_is_documented() -> None:
    for option in OPTIONS:
        for name in option.env:
            assert f"`{name}`" in CONFIGURATION, f"{name} missing from docs/configuration.md"


def test_every_flag_is_documented() -> None:
    for option in OPTIONS:
        if option.flag:
            assert f"`{option.flag}`" in CONFIGURATION, \
                f"{option.flag} missing from docs/configuration.md"


def test_every_metric_is_documented() -> None:
    names = [obj._name for obj in vars(metrics).values() if isinstance(obj, MetricWrapperBase)]
    assert len(names) > 20
    for name in names:
        assert re.search(rf"`{name}(_total|_info)?`", CONFIGURATION), \
            f"metric {name} missing from docs/configuration.md"


def test_readme_starts_with_the_two_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", README, flags=re.S)
    assert blocks[0].startswith("python3 -m venv .venv") and "serve" in blocks[0]
    assert blocks[1].startswith("python3 -m venv .venv") and "pytest" in blocks[1]
    assert README.index(blocks[1]) < 600


def test_readme_is_short() -> None:
    assert len(README.splitlines()) <= 250


def test_relative_links_point_at_files() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_every_setting_name_the_package_writes_is_a_setting() -> None:
    """Names are written once, in config.OPTIONS; messages take them from there (a
    docstring may name one too, and then it must exist)."""
    known = {name for option in OPTIONS for name in option.env}
    for path in (ROOT / "healert_webhook").rglob("*.py"):
        for name in re.findall(r"\b(?:HEALERT|K8S)_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
            if path.name == "config.py" or name in known:
                continue
            raise AssertionError(f"{path.relative_to(ROOT)} names {name}, which is no setting")


def test_every_rule_condition_is_documented_where_rules_are_written() -> None:
    """The condition table (rules/conditions.py) is what a rule can say: each key is in
    docs/rules.md and in rules.yaml's own header, each skip reason in docs/rules.md."""
    from healert_webhook.rules.conditions import CONDITION_ORDER, MATCH_KEYS, RULE_CONDITION_KEYS

    rules_doc = (ROOT / "docs" / "rules.md").read_text()
    header = (ROOT / "rules.yaml").read_text().split("\nconfig:")[0]
    for key in (*MATCH_KEYS, *RULE_CONDITION_KEYS):
        assert re.search(rf"\b{key}\b", rules_doc), f"{key} missing from docs/rules.md"
        assert re.search(rf"\b{key}\b", header), f"{key} missing from rules.yaml's header"
    for reason in CONDITION_ORDER:
        assert f"`{reason}`" in rules_doc, f"skip reason {reason} missing from docs/rules.md"
