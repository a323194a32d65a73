"""What the package declares: dependency floors that `.ci/floors.sh` can test, every
third-party module it imports covered by a declared dependency, the version written once.

The floors themselves are tested by `.ci/floors.sh` (CI runs it after this suite): it
installs exactly the declared minimums in a new venv and runs the agent end to end.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata

import healert_webhook

from support.paths import ROOT

PACKAGE = ROOT / "healert_webhook"
FLOOR = re.compile(r"([A-Za-z0-9_.\-]+)(\[[^\]]+\])?>=([0-9][0-9A-Za-z.]*)")
# Used through uvicorn's modules but by our code directly: protocol.py subclasses the
# httptools protocol, so its parser's behaviour is ours to pin.
USED_THROUGH_UVICORN = {"httptools"}


def project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        data = tomllib.load(f)["project"]
    assert isinstance(data, dict)
    return data


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floors() -> dict[str, str]:
    """{distribution: minimum} of the runtime dependencies."""
    found = {}
    for dep in project()["dependencies"]:  # type: ignore[attr-defined]
        match = FLOOR.fullmatch(dep.replace(" ", ""))
        assert match, f"{dep!r}: .ci/floors.sh needs every dependency as name>=minimum"
        found[normalise(match[1])] = match[3]
    return found


def imported_modules() -> set[str]:
    """Top-level names of every module the package imports, stdlib and itself left out."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"healert_webhook"}


def test_every_dependency_has_a_floor_and_no_ceiling() -> None:
    declared = floors()
    assert {"starlette", "uvicorn", "orjson", "httpx", "pyyaml",
            "prometheus-client"} <= set(declared)
    for dep in project()["dependencies"]:  # type: ignore[attr-defined]
        assert "<" not in dep and "==" not in dep, f"{dep!r}: a ceiling breaks upgrades"


def test_every_imported_module_comes_from_a_declared_dependency() -> None:
    declared = set(floors())
    providers = metadata.packages_distributions()
    modules = imported_modules() | USED_THROUGH_UVICORN
    assert {"uvicorn", "starlette", "uvloop", "httpx", "orjson", "yaml"} <= modules
    undeclared = {module: providers.get(module) for module in modules
                  if not {normalise(d) for d in providers.get(module, [])} & declared}
    assert undeclared == {}, "imported but not in pyproject's dependencies"


def test_the_installed_versions_meet_the_floors() -> None:
    for name, floor in floors().items():
        installed = metadata.version(name)
        assert _key(installed) >= _key(floor), f"{name} {installed} is below its floor {floor}"


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.partition("+")[0])[:3])


def test_the_version_is_written_once() -> None:
    version = project()["version"]
    assert healert_webhook.__version__ == metadata.version("healert-webhook") == version
    literal = re.compile(rf"['\"]{re.escape(str(version))}['\"]")
    holding = [p.name for p in PACKAGE.rglob("*.py") if literal.search(p.read_text())]
    assert holding == [], "the package reads its version from its metadata"


def test_ci_runs_the_floors_after_the_tests_and_before_conformance() -> None:
    run = (ROOT / ".ci" / "run").read_text()
    script = ROOT / ".ci" / "floors.sh"
    assert script.stat().st_mode & 0o111, "floors.sh must be executable"
    tests, floors_at = run.index("bash -c \"$test_cmd\""), run.index("\n.ci/floors.sh")
    assert tests < floors_at < run.index("conformance/ci.sh")
    assert "set -euo pipefail" in script.read_text()


def test_the_changelog_has_an_unreleased_section() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## Unreleased\n\n- ", text, re.M)
