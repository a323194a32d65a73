"""Defects found by review in the file sources, each shown by a test that failed before
its fix (see the commit that adds it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from support.events import exec_ws, port_forward, secret_get


def _line(event: dict[str, Any], version: str) -> bytes:
    return orjson.dumps({"kind": "Event", "apiVersion": f"audit.k8s.io/{version}",
                         **event}) + b"\n"


def test_replay_of_a_crashed_v1beta1_log_loses_no_whole_event(tmp_path: Path) -> None:
    # Old dumps are v1beta1 (DESIGN §4), written by the same Go encoder: a torn write
    # followed on the same line by the restarted writer's whole event must give that
    # event, as the tail does (reading.EVENT_START covers both versions).
    whole = [_line(event, "v1beta1") for event in (exec_ws(), secret_get(), port_forward())]
    log = tmp_path / "crashed-v1beta1.log"
    log.write_bytes(whole[0][:150] + whole[0] + whole[1][:90] + whole[1] + whole[2])
    done = subprocess.run([sys.executable, "-m", "healert_webhook", "replay", str(log)],
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    types = [orjson.loads(line)["type"] for line in done.stdout.splitlines()]
    assert types == ["kubectl-exec", "emergency-access", "port-forward"], done.stderr
    assert done.stderr.decode().count("truncated_line") == 2
