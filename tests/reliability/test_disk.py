"""Disk trouble under the outbox: a full state directory, a read-only one, a corrupt file.

Full uses a real 4 MiB tmpfs mounted as the state directory (needs root, as in the dev
container; skipped otherwise), filled by a filler file, then freed. Read-only uses
`chattr +i` on the live outbox files (a tmpfs with open files cannot be remounted
read-only, and root ignores chmod), then `chattr -i`. The agent must answer 503 +
Retry-After without storing any part of the refused batch, say so on /readyz and in
/metrics, and take the same batch once space returns.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from healert_webhook.outbox import Outbox

from support.agent import JSON, Agent, metric, readyz, serve_args
from support.events import exec_event
from support.paths import ROOT
from support.servers import wait_for


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def batch(tag: str, events: int = 200) -> bytes:
    return orjson.dumps([exec_event(i, tag=tag, pad=300) for i in range(events)])


def depth(state: Path) -> int:
    box = Outbox(state / "outbox.db")
    try:
        return box.stats().depth
    finally:
        box.close()


def test_full_then_freed(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "state", "4m") as state:
        agent = Agent(serve_args(str(state)), tmp_path)
        try:
            port, ops = agent.ports()
            url = f"http://127.0.0.1:{port}/audit"
            client = httpx.Client(timeout=30)
            assert client.post(url, content=batch("first"), headers=JSON).status_code == 200
            taken = 1  # batches answered 200
            filler = state / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                with contextlib.suppress(OSError):
                    while True:  # ENOSPC ends it: the disk is full
                        os.write(fd, b"\0" * 4096)
            finally:
                os.close(fd)
            full = batch("full")
            answer = client.post(url, content=full, headers=JSON)
            for n in range(20):  # the WAL may still have room for a batch or two
                if answer.status_code != 200:
                    break
                taken += 1
                full = batch(f"full{n}")
                answer = client.post(url, content=full, headers=JSON)
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "5"
            assert metric(ops, "healert_outbox_write_errors_total", reason="disk_full") >= 1
            not_ready = readyz(ops)
            assert not_ready.status_code == 503 and "disk_full" in not_ready.text
            stored_before = depth(state) if _can_open(state) else None
            filler.unlink()  # space returns
            answer = client.post(url, content=full, headers=JSON)  # the apiserver's retry
            assert answer.status_code == 200, answer.text
            taken += 1
            wait_for(lambda: readyz(ops).status_code == 200, what="ready again")
            if stored_before is not None:  # all of the refused batch, none before
                assert depth(state) == stored_before + 200

            client.close()
            assert agent.stop() == 0
        finally:
            agent.kill()
        assert depth(state) == 200 * taken  # every batch answered 200, whole, once


def test_read_only_then_writable(tmp_path: Path) -> None:
    """`chattr +i` (root ignores chmod; a busy tmpfs cannot be remounted read-only) on the
    outbox file, its WAL and its directory under a running agent, then `chattr -i`."""
    agent = Agent(serve_args(), tmp_path)
    state = tmp_path / "state"
    files: list[Path] = []
    try:
        port, ops = agent.ports()
        url = f"http://127.0.0.1:{port}/audit"
        client = httpx.Client(timeout=30)
        assert client.post(url, content=batch("rw"), headers=JSON).status_code == 200
        # Not the -shm file: SQLite memory-maps it, and a write fault on a mapping of an
        # immutable file is SIGBUS, which kills any process using WAL (seen: exit 135).
        files = [state, state / "outbox.db", state / "outbox.db-wal"]
        os.sync()  # written-back pages fault again on the next write, as in a long run
        done = subprocess.run(["chattr", "+i", *map(str, files)], capture_output=True,
                              check=False)
        if done.returncode != 0:
            pytest.skip(f"chattr +i unavailable: {done.stderr.decode().strip()}")
        try:
            ro = client.post(url, content=batch("ro"), headers=JSON)
            assert ro.status_code == 503, ro.text
            errors = sum(metric(ops, "healert_outbox_write_errors_total", reason=r)
                         for r in ("read_only", "io", "other"))
            assert errors >= 1
            assert readyz(ops).status_code == 503
        finally:
            subprocess.run(["chattr", "-i", *map(str, files)], check=False)
        assert client.post(url, content=batch("ro"), headers=JSON).status_code == 200
        wait_for(lambda: readyz(ops).status_code == 200, what="ready once writable")
        client.close()
        assert agent.stop() == 0
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], check=False, capture_output=True)
        agent.kill()
    assert depth(state) == 400


def _can_open(state: Path) -> bool:
    try:
        depth(state)
    except Exception:
        return False
    return True


def test_corrupt_outbox_gives_a_clear_error_and_the_recovery_command_works(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    Outbox(state / "outbox.db").close()
    with (state / "outbox.db").open("r+b") as f:  # keep the header, smash the pages
        f.seek(100)
        f.write(os.urandom(8192))
    agent = Agent(serve_args(), tmp_path)
    assert agent.proc.wait(30) == 2
    out = agent.output()
    assert "corrupt" in out and "healert-webhook outbox purge --corrupt" in out, out
    assert "Traceback" not in out
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "healert_webhook", "outbox", "purge",
                           "--corrupt", "--yes", "--state-dir", "state"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert list(state.glob("outbox.db.corrupt-*")), "the corrupt file is kept for salvage"
    again = Agent(serve_args(), tmp_path)
    try:
        again.ports()
        assert readyz(again.ports()[1]).status_code == 200
        assert again.stop() == 0
    finally:
        again.kill()
