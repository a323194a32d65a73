"""The command line: each command's own flags, short errors, one table of exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from healert_webhook import exits
from healert_webhook.cli import build_parser, main, settings_from_args
from healert_webhook.outbox import Outbox
from healert_webhook.records import Friction

from support.events import as_log_line, exec_event
from support.paths import ROOT


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEALERT_")}
    clean["PYTHONPATH"] = str(ROOT)
    clean.update(env or {})
    return subprocess.run([sys.executable, "-m", "healert_webhook", *args], cwd=cwd or ROOT,
                          env=clean, capture_output=True, text=True, check=False, timeout=60)


def test_subcommands_list_only_their_own_flags() -> None:
    validate = run("validate", "--help").stdout
    assert "--rules" in validate
    for foreign in ("--listen", "--state-dir", "--backend-url", "--ops-listen"):
        assert foreign not in validate
    check = run("check-backend", "--help").stdout
    assert "--backend-url" in check and "--forward-timeout" in check
    assert "--state-dir" not in check and "--rules" not in check
    replay = run("replay", "--help").stdout
    assert "--max-line-bytes" in replay and "--ops-listen" not in replay


def test_outbox_actions_have_their_own_help() -> None:
    status = run("outbox", "status", "--help").stdout
    assert "usage: healert-webhook outbox status" in status
    assert "--yes" not in status and "--corrupt" not in status
    purge = run("outbox", "purge", "--help").stdout
    assert "--corrupt" in purge and "--yes" in purge and "--dead" in purge


def test_argparse_errors_are_one_line_and_a_hint() -> None:
    bad = run("serve", "--listen", "nowhere")
    assert bad.returncode == exits.CONFIG
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 2, bad.stderr
    assert "expected HOST:PORT" in lines[0]
    assert "healert-webhook serve --help" in lines[1]
    unknown = run("replay", "--no-such-flag", "x.log")
    assert unknown.returncode == exits.CONFIG and len(unknown.stderr.strip().splitlines()) == 2


def test_serve_tail_is_a_flag_over_the_audit_log_setting() -> None:
    parser = build_parser()
    given = settings_from_args(parser.parse_args(["serve", "--tail", "/var/log/a.log"]))
    assert given.audit_log_path == Path("/var/log/a.log")
    os.environ["AUDIT_LOG_PATH"] = "/var/log/from-env.log"
    try:
        bare = parser.parse_args(["serve", "--tail"])
        assert bare.tail is True
        assert settings_from_args(bare).audit_log_path == Path("/var/log/from-env.log")
        assert parser.parse_args(["serve"]).tail is None
    finally:
        del os.environ["AUDIT_LOG_PATH"]


def test_a_bad_value_for_another_command_does_not_stop_this_one(tmp_path: Path) -> None:
    done = run("validate", env={"HEALERT_LISTEN": "nowhere", "HEALERT_FORWARD_RATE": "-1"})
    assert done.returncode == exits.OK, done.stderr


def test_the_same_port_for_both_listeners_is_a_configuration_error(tmp_path: Path) -> None:
    done = run("serve", "--listen", "127.0.0.1:18555", "--ops-listen", "127.0.0.1:18555",
               "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    assert done.returncode == exits.CONFIG
    assert "Traceback" not in done.stderr
    assert "give each its own port" in done.stderr


def test_a_port_in_use_is_a_configuration_error(tmp_path: Path) -> None:
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("serve", "--listen", f"127.0.0.1:{port}", "--ops-listen", "127.0.0.1:0",
                   "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    assert done.returncode == exits.CONFIG
    assert "Traceback" not in done.stderr and f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_a_broken_rules_file_is_reported_alike_by_the_commands_that_stop_on_it(
        tmp_path: Path) -> None:
    """replay and validate stop on it (exit 2, every problem listed); serve and tail run
    on the last good rules instead (tests/reliability/test_rules_start.py)."""
    rules = tmp_path / "bad.yaml"
    rules.write_text("rules:\n  - name: Bad_Name\n    severity: urgent\n")
    outputs = []
    for args in (("replay", os.devnull, "--rules", str(rules)), ("validate", str(rules))):
        done = run(*args, cwd=tmp_path)
        assert done.returncode == exits.CONFIG, (args, done.stderr)
        assert f"rules file {rules} is invalid (3 problem(s)):" in done.stderr
        outputs.append([line for line in done.stderr.splitlines() if line.startswith("  ")])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 3


def test_retry_dead_with_an_unknown_key_fails(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    box = Outbox(tmp_path / "state" / "outbox.db")
    box.store([Friction("k" * 32, "kubectl-exec", {"entity_ref": "component:a/b",
                                                   "type": "kubectl-exec",
                                                   "severity": "high"})])
    box.dead_letter(box.head(1)[0].seq, status=422, reason="test")
    box.close()
    state = ["--state-dir", str(tmp_path / "state")]
    assert main(["outbox", "retry-dead", "nope", *state]) == exits.FAILED
    assert "no dead letter with key nope" in capsys.readouterr().out
    assert main(["outbox", "retry-dead", "k" * 32, *state]) == exits.OK
    assert "requeued 1" in capsys.readouterr().out


def test_help_names_the_exit_codes() -> None:
    text = run("--help").stdout
    for code, meaning in exits.TABLE:
        assert f"  {code}  {meaning}" in text


@pytest.mark.parametrize("command", [("replay", "--explain"), ("replay",)])
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path,
                                                           command: tuple[str, ...]) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(as_log_line(exec_event(i, tag="pipe")) + b"\n"
                             for i in range(3000)))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEALERT_")}
    clean["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "healert_webhook", *command, str(log)],
                            cwd=tmp_path, env=clean, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(200)  # what `| head -c 200` reads, then it is gone
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == exits.PIPE_CLOSED, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
