"""The README stays true: every setting and every metric the program has is documented."""

from __future__ import annotations

import re

from conftest import ROOT
from prometheus_client.metrics import MetricWrapperBase

from healert_webhook import metrics
from healert_webhook.config import OPTIONS

README = (ROOT / "README.md").read_text()


def test_every_environment_variable_is_documented() -> None:
    for option in OPTIONS:
        for name in option.env:
            assert f"`{name}`" in README, f"{name} missing from the README"


def test_every_flag_is_documented() -> None:
    for option in OPTIONS:
        if option.flag:
            assert f"`{option.flag}`" in README, f"{option.flag} missing from the README"


def test_every_metric_is_documented() -> None:
    names = [obj._name for obj in vars(metrics).values() if isinstance(obj, MetricWrapperBase)]
    assert len(names) > 20
    for name in names:
        assert re.search(rf"`{name}(_total|_info)?`", README), f"metric {name} missing from README"


def test_readme_starts_with_the_two_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", README, flags=re.S)
    assert blocks[0].startswith("python3 -m venv .venv") and "serve" in blocks[0]
    assert blocks[1].startswith("python3 -m venv .venv") and "pytest" in blocks[1]
    assert README.index(blocks[1]) < 600
