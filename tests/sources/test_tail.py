"""The file-tail source: real files, real rotations, a real SQLite outbox, real processes.

Every scenario writes a real audit log (lines from tests/support/auditlog.py), runs the real
Tailer with the real Pipeline (packaged rules) and the real Outbox, and compares the
friction events in the outbox with those the Pipeline finds in-process over the lines that
were written: each expected event must be there, once, and nothing else.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from prometheus_client import REGISTRY

from healert_webhook.config import Settings
from healert_webhook.outbox import Outbox
from healert_webhook.pipeline import Pipeline, make_detector
from healert_webhook.records import Checkpoint, Friction, OutboxError, StoreResult
from healert_webhook.rules import load_rules
from healert_webhook.sources import tailfiles
from healert_webhook.sources.tail import Tailer

from support import auditlog

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent
WRITER = Path(auditlog.__file__)
SEED = 11


# -- helpers -----------------------------------------------------------------------------


def make_settings(tmp_path: Path, log: Path, **kw: object) -> Settings:
    values: dict[str, object] = {"state_dir": tmp_path / "state", "audit_log_path": log,
                                 "tail_poll_interval": 0.02, "tail_from": "start"}
    values.update(kw)
    return Settings(**values)  # type: ignore[arg-type]


def make_pipeline(settings: Settings, outbox: Outbox | None = None) -> Pipeline:
    return Pipeline(settings, make_detector(load_rules(None), settings), outbox)


def expected_keys(settings: Settings, lines: list[bytes]) -> list[str]:
    """The friction keys the Pipeline finds in `lines`, first occurrence of each."""
    events = [orjson.loads(line) for line in lines]
    found = make_pipeline(settings).evaluate_items(events, "test").frictions
    return list(dict.fromkeys(f.key for f in found))


def queued_keys(outbox: Outbox) -> list[str]:
    return [row.key for row in outbox.head(limit=10**7)]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def lines_of(start: int, count: int) -> list[bytes]:
    return [auditlog.make_line(SEED, i) for i in range(start, start + count)]


def get_lines(start: int, count: int, user: str, resource: str, namespace: str,
              name: str) -> list[bytes]:
    """`count` lines of `user` getting `resource` objects called `<name>-<i>`."""
    out = []
    for i in range(start, start + count):
        event = orjson.loads(auditlog.make_line(SEED, i))
        event.update(verb="get", stage="ResponseComplete", user={"username": user},
                     objectRef={"resource": resource, "namespace": namespace,
                                "name": f"{name}-{i}", "apiVersion": "v1"})
        out.append(orjson.dumps(event) + b"\n")
    return out


def friction_lines(start: int, count: int) -> list[bytes]:
    """`count` lines that each yield a friction event (secret gets by a human)."""
    return get_lines(start, count, "alice@example.com", "secrets", "payments", "db")


def quiet_lines(start: int, count: int) -> list[bytes]:
    """`count` lines no rule matches (a controller reading config maps)."""
    return get_lines(start, count, "system:serviceaccount:kube-system:reader", "configmaps",
                     "kube-system", "cm")


def rotate_compressed(log_path: Path, name: str, new: list[bytes]) -> None:
    """Rotate as lumberjack does with compression: rename the file to `name`, start the
    new one with `new`, compress the renamed one and delete it."""
    rotated = log_path.with_name(name)
    os.rename(log_path, rotated)
    log_path.write_bytes(b"".join(new))
    with open(rotated, "rb") as src, gzip.open(f"{rotated}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    rotated.unlink()


class Running:
    """A Tailer following a file in a thread, on a real outbox file."""

    def __init__(self, settings: Settings, outbox: Outbox | None = None) -> None:
        self.settings = settings
        self.outbox = outbox or Outbox(settings.outbox_path)
        self.tailer = Tailer(settings, make_pipeline(settings, self.outbox))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.tailer.run, args=(self.stop,), daemon=True)

    def checkpoint(self) -> Checkpoint | None:
        return self.outbox.load_checkpoint(self.tailer.source)

    def wait_keys(self, keys: list[str], timeout: float = 20.0) -> None:
        wait_for(lambda: set(queued_keys(self.outbox)) >= set(keys), "friction events",
                 timeout)

    def wait_offset(self, path: Path, offset: int) -> None:
        def at() -> bool:
            cp = self.checkpoint()
            return cp is not None and cp.offset == offset and Path(cp.path) == path
        wait_for(at, f"checkpoint at {path}:{offset}")


@contextmanager
def running(settings: Settings, outbox: Outbox | None = None) -> Iterator[Running]:
    run = Running(settings, outbox)
    run.thread.start()
    try:
        yield run
    finally:
        run.stop.set()
        run.thread.join(10)
        assert not run.thread.is_alive(), "the tailer did not stop"


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    (tmp_path / "audit").mkdir()
    return tmp_path / "audit" / "audit.log"


# -- following a file ------------------------------------------------------------------


def test_follows_lines_and_checkpoints_the_end(tmp_path: Path, log_path: Path) -> None:
    written = lines_of(0, 400)
    log_path.write_bytes(b"".join(written))
    settings = make_settings(tmp_path, log_path)
    keys = expected_keys(settings, written)
    assert len(keys) > 20
    with running(settings) as run:
        run.wait_keys(keys)
        more = lines_of(400, 200)
        append(log_path, b"".join(more))
        keys = expected_keys(settings, written + more)
        run.wait_keys(keys)
        run.wait_offset(log_path, log_path.stat().st_size)
        assert run.tailer.ready() is None
        assert sorted(queued_keys(run.outbox)) == sorted(keys)


def test_tail_from_end_reads_only_new_lines(tmp_path: Path, log_path: Path) -> None:
    old = friction_lines(0, 10)
    log_path.write_bytes(b"".join(old))
    settings = make_settings(tmp_path, log_path, tail_from="end")
    with running(settings) as run:
        run.wait_offset(log_path, log_path.stat().st_size)  # the first checkpoint, at once
        new = friction_lines(10, 5)
        append(log_path, b"".join(new))
        run.wait_keys(expected_keys(settings, new))
        assert sorted(queued_keys(run.outbox)) == sorted(expected_keys(settings, new))


def test_waits_for_a_missing_directory_then_reads_the_new_file_whole(tmp_path: Path) -> None:
    log_path = tmp_path / "later" / "audit.log"
    settings = make_settings(tmp_path, log_path, tail_from="end")
    with running(settings) as run:
        wait_for(lambda: "does not exist" in (run.tailer.ready() or ""), "not ready")
        assert str(log_path.parent) in (run.tailer.ready() or "")
        log_path.parent.mkdir()
        wait_for(lambda: "no such file" in (run.tailer.ready() or ""), "no such file")
        written = friction_lines(0, 8) + lines_of(8, 50)
        log_path.write_bytes(b"".join(written))
        # tail_from=end does not apply: the file did not exist when we started
        run.wait_keys(expected_keys(settings, written))
        wait_for(lambda: run.tailer.ready() is None, "ready")


def test_half_written_line_waits_for_its_newline(tmp_path: Path, log_path: Path) -> None:
    first, second = friction_lines(0, 2)
    settings = make_settings(tmp_path, log_path)
    log_path.write_bytes(first + second[:50])
    bad_before = metric("healert_invalid_events_total", source="tail", reason="bad_json")
    with running(settings) as run:
        run.wait_offset(log_path, len(first))
        # the first line is stored; the half line cannot be, whenever we look
        assert queued_keys(run.outbox) == expected_keys(settings, [first])
        append(log_path, second[50:])
        run.wait_keys(expected_keys(settings, [first, second]))
        run.wait_offset(log_path, len(first) + len(second))
    assert metric("healert_invalid_events_total", source="tail",
                  reason="bad_json") == bad_before


def test_invalid_lines_are_counted_and_logged_with_offsets(
        tmp_path: Path, log_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = friction_lines(0, 2)
    bad_json = b'{"kind":"Event", broken\n'
    array = b"[1,2,3]\n"
    content = good[0] + bad_json + array + b"\n" + good[1]
    log_path.write_bytes(content)
    settings = make_settings(tmp_path, log_path)
    before = metric("healert_invalid_events_total", source="tail", reason="bad_json")
    before_obj = metric("healert_invalid_events_total", source="tail", reason="not_an_object")
    with caplog.at_level(logging.WARNING, logger="healert_webhook.sources.tail"), \
            running(settings) as run:
        run.wait_keys(expected_keys(settings, good))
        run.wait_offset(log_path, len(content))
    assert metric("healert_invalid_events_total", source="tail", reason="bad_json") == before + 1
    assert metric("healert_invalid_events_total", source="tail",
                  reason="not_an_object") == before_obj + 1
    text = caplog.text
    assert f"line at offset {len(good[0])} skipped: not JSON" in text
    assert f"line at offset {len(good[0]) + len(bad_json)} skipped: JSON but not an object" \
        in text


def test_lines_are_decided_from_their_fields_as_a_full_parse_reads_them(
        tmp_path: Path, log_path: Path) -> None:
    """The tail decides each line with the field pass: a field written twice is read as
    orjson reads it (the last), and a line that is not UTF-8 is never ruled out, but
    counted and logged as before."""
    twice = orjson.loads(friction_lines(0, 1)[0])
    twice = {"stage": "RequestReceived", **{k: v for k, v in twice.items() if k != "stage"}}
    repeated = orjson.dumps(twice)[:-1] + b',"stage":"ResponseComplete"}\n'
    not_utf8 = quiet_lines(1, 1)[0].replace(b"kube-system", b"kube-\xffsystem", 1)
    content = b"".join(quiet_lines(2, 50)) + repeated + not_utf8 + b"".join(quiet_lines(60, 50))
    log_path.write_bytes(content)
    settings = make_settings(tmp_path, log_path)
    keys = expected_keys(settings, [repeated])
    assert len(keys) == 1  # a full parse reads the last stage: a person's secret get
    before = metric("healert_invalid_events_total", source="tail", reason="bad_json")
    with running(settings) as run:
        run.wait_keys(keys)
        run.wait_offset(log_path, len(content))
        assert queued_keys(run.outbox) == keys
    assert metric("healert_invalid_events_total", source="tail", reason="bad_json") == before + 1


def test_line_longer_than_the_limit_is_skipped_without_holding_it(
        tmp_path: Path, log_path: Path) -> None:
    before, after = friction_lines(0, 2)
    # A valid event that would match a rule if it were parsed: 20 MiB of padding.
    huge_event = orjson.loads(friction_lines(2, 1)[0])
    huge_event["requestObject"] = {"data": "x" * (20 * 1024 * 1024)}
    huge = orjson.dumps(huge_event) + b"\n"
    with open(log_path, "wb") as f:
        f.write(before)
        f.write(huge)
        f.write(after)
    size = len(before) + len(huge) + len(after)
    del huge, huge_event
    settings = make_settings(tmp_path, log_path)  # the default 16 MiB limit
    assert settings.tail_max_line_bytes == 16 * 1024 * 1024
    skipped = metric("healert_tail_lines_skipped_total", reason="too_long")
    tracemalloc.start()
    try:
        with running(settings) as run:
            run.wait_offset(log_path, size)
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sorted(queued_keys(run.outbox)) == sorted(expected_keys(settings, [before, after]))
    assert metric("healert_tail_lines_skipped_total", reason="too_long") == skipped + 1
    assert peak < 20 * 1024 * 1024, f"peak {peak} bytes: the 20 MiB line was held whole"


# -- rotation --------------------------------------------------------------------------


def test_rename_rotation_reads_the_old_file_to_its_end(tmp_path: Path, log_path: Path) -> None:
    settings = make_settings(tmp_path, log_path)
    first = lines_of(0, 100)
    log_path.write_bytes(b"".join(first))
    renames = metric("healert_tail_rotations_total", kind="rename")
    with running(settings) as run:
        run.wait_keys(expected_keys(settings, first))
        tail_of_old = friction_lines(100, 5)
        append(log_path, b"".join(tail_of_old))
        rotated = log_path.with_name("audit-2026-11-26T10-00-00.000.log")
        os.rename(log_path, rotated)
        new = friction_lines(105, 5) + lines_of(110, 20)
        log_path.write_bytes(b"".join(new))
        run.wait_keys(expected_keys(settings, first + tail_of_old + new))
        run.wait_offset(log_path, log_path.stat().st_size)
        assert sorted(queued_keys(run.outbox)) == sorted(
            expected_keys(settings, first + tail_of_old + new))
    assert metric("healert_tail_rotations_total", kind="rename") == renames + 1


def test_rotated_file_gzipped_and_deleted_is_read_through_the_open_descriptor(
        tmp_path: Path, log_path: Path) -> None:
    # A long poll interval leaves the tailer behind the writer: the old file is renamed,
    # compressed and deleted before the tailer looks again (it holds the descriptor).
    settings = make_settings(tmp_path, log_path, tail_poll_interval=1.0)
    first = friction_lines(0, 3)
    log_path.write_bytes(b"".join(first))
    with running(settings) as run:
        run.wait_keys(expected_keys(settings, first))
        rest = friction_lines(3, 4)
        append(log_path, b"".join(rest))
        new = friction_lines(7, 3)
        rotate_compressed(log_path, "audit-2026-11-26T10-00-00.000.log", new)
        everything = expected_keys(settings, first + rest + new)
        run.wait_keys(everything)
        assert sorted(queued_keys(run.outbox)) == sorted(everything)


def test_file_opened_empty_then_compressed_away_keeps_the_generations_after_it(
        tmp_path: Path, log_path: Path) -> None:
    # The tailer opens the followed file while it is empty (nothing to fingerprint), then
    # sleeps. Meanwhile that file fills with lines that store nothing (so no checkpoint
    # fingerprints it), is rotated, compressed and deleted; the next file fills and is
    # rotated too. Waking, the tailer must know its file again as the .gz, and read the
    # generation after it before the new followed file.
    settings = make_settings(tmp_path, log_path, tail_poll_interval=0.5)
    log_path.write_bytes(b"")
    with running(settings) as run:
        run.wait_offset(log_path, 0)  # opened, checkpointed at 0, then asleep
        time.sleep(0.1)
        first = quiet_lines(0, 20)
        append(log_path, b"".join(first))
        second = friction_lines(20, 4)
        rotate_compressed(log_path, "audit-2026-11-26T10-00-00.000.log", second)
        os.rename(log_path, log_path.with_name("audit-2026-11-26T10-00-01.000.log"))
        third = friction_lines(24, 3)
        log_path.write_bytes(b"".join(third))
        everything = expected_keys(settings, first + second + third)
        run.wait_keys(everything)
        run.wait_offset(log_path, log_path.stat().st_size)
        assert sorted(queued_keys(run.outbox)) == sorted(everything)


@pytest.mark.parametrize("created", [True, False], ids=["new-file-there", "path-missing"])
def test_rotation_between_looking_for_generations_and_opening_the_file(
        tmp_path: Path, log_path: Path, created: bool) -> None:
    # After a rotated file, the tailer looks for newer generations, finds none and opens
    # the followed path. A rotation in between hands it the file after the one it should
    # read next, or no file at all (renamed, not created yet). No real schedule lands a
    # rotation between those two system calls on demand, so the test does it: the first
    # time the tailer opens the followed file, the file is rotated just before (a real
    # rename on disk, and the new file created before or after the open).
    settings = make_settings(tmp_path, log_path)
    first = friction_lines(0, 3)
    log_path.write_bytes(b"".join(first))
    with running(settings) as run:
        run.wait_keys(expected_keys(settings, first))
        second, third = friction_lines(3, 3), friction_lines(6, 3)
        open_live = run.tailer._open_live

        def rotate_then_open(offset: int) -> tailfiles.Stream | None:
            run.tailer._open_live = open_live  # type: ignore[method-assign]
            wait_for(log_path.exists, "the next followed file")
            os.rename(log_path, log_path.with_name("audit-2026-11-26T10-00-01.000.log"))
            if created:
                log_path.write_bytes(b"".join(third))
            stream = open_live(offset)
            if not created:
                assert stream is None
                log_path.write_bytes(b"".join(third))
            return stream

        run.tailer._open_live = rotate_then_open  # type: ignore[method-assign]
        os.rename(log_path, log_path.with_name("audit-2026-11-26T10-00-00.000.log"))
        log_path.write_bytes(b"".join(second))
        everything = expected_keys(settings, first + second + third)
        run.wait_keys(everything)
        run.wait_offset(log_path, log_path.stat().st_size)
        assert sorted(queued_keys(run.outbox)) == sorted(everything)


def test_copy_truncate_starts_again_at_zero(tmp_path: Path, log_path: Path) -> None:
    settings = make_settings(tmp_path, log_path)
    first = friction_lines(0, 6)
    log_path.write_bytes(b"".join(first))
    truncations = metric("healert_tail_rotations_total", kind="truncate")
    with running(settings) as run:
        run.wait_offset(log_path, log_path.stat().st_size)
        shutil.copyfile(log_path, log_path.with_name("audit.log.1"))
        with open(log_path, "r+b") as f:
            f.truncate(0)
        new = friction_lines(6, 2)
        append(log_path, b"".join(new))
        run.wait_keys(expected_keys(settings, first + new))
        run.wait_offset(log_path, log_path.stat().st_size)
        assert sorted(queued_keys(run.outbox)) == sorted(expected_keys(settings, first + new))
        ino = os.stat(log_path).st_ino
        checkpoint = run.checkpoint()
        assert checkpoint is not None and checkpoint.ino == ino
    assert metric("healert_tail_rotations_total", kind="truncate") == truncations + 1


def test_unterminated_last_line_of_a_rotated_file_is_counted_invalid(
        tmp_path: Path, log_path: Path) -> None:
    settings = make_settings(tmp_path, log_path)
    good = friction_lines(0, 2)
    cut = friction_lines(2, 1)[0][:-30]  # the apiserver died mid-write
    log_path.write_bytes(b"".join(good) + cut)
    truncated = metric("healert_invalid_events_total", source="tail", reason="truncated_line")
    with running(settings) as run:
        run.wait_offset(log_path, len(b"".join(good)))
        os.rename(log_path, log_path.with_name("audit-2026-11-26T10-00-00.000.log"))
        new = friction_lines(3, 2)
        log_path.write_bytes(b"".join(new))
        run.wait_keys(expected_keys(settings, good + new))
        run.wait_offset(log_path, len(b"".join(new)))
        assert sorted(queued_keys(run.outbox)) == sorted(expected_keys(settings, good + new))
    assert metric("healert_invalid_events_total", source="tail",
                  reason="truncated_line") == truncated + 1


def test_restart_resumes_inside_a_gzipped_rotation_then_newer_files(
        tmp_path: Path, log_path: Path) -> None:
    settings = make_settings(tmp_path, log_path)
    part1 = lines_of(0, 60)
    log_path.write_bytes(b"".join(part1))
    with running(settings) as run:
        run.wait_offset(log_path, log_path.stat().st_size)
    # While stopped: the file grows, is rotated and compressed; another generation
    # follows, rotated but not compressed; then the current file.
    part2 = lines_of(60, 60)
    append(log_path, b"".join(part2))
    gen1 = log_path.with_name("audit-2026-11-26T10-00-00.000.log")
    os.rename(log_path, gen1)
    with open(gen1, "rb") as src, gzip.open(f"{gen1}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    gen1.unlink()
    part3 = lines_of(120, 60)
    log_path.write_bytes(b"".join(part3))
    os.rename(log_path, log_path.with_name("audit-2026-11-26T10-00-09.000.log"))
    part4 = lines_of(180, 60)
    log_path.write_bytes(b"".join(part4))
    # An older generation that must not be read again.
    log_path.with_name("audit-2026-11-25T10-00-00.000.log").write_bytes(
        b"".join(friction_lines(1000, 5)))
    everything = expected_keys(settings, part1 + part2 + part3 + part4)
    with running(settings) as run:
        run.wait_keys(everything)
        run.wait_offset(log_path, log_path.stat().st_size)
        assert sorted(queued_keys(run.outbox)) == sorted(everything)


# -- failures around us -----------------------------------------------------------------


class FailingOutbox(Outbox):
    """The real outbox whose first `failures` stores fail, as on a full disk (a full disk
    cannot be provoked portably in a test; the failure is injected, the rest is real)."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    def store(self, frictions: Sequence[Friction],
              checkpoint: Checkpoint | None = None) -> StoreResult:
        if self.failures > 0 and checkpoint is not None and frictions:
            self.failures -= 1
            raise OutboxError("database or disk is full", "disk_full")
        return super().store(frictions, checkpoint)


def test_outbox_failure_pauses_the_tail_until_it_stores(tmp_path: Path, log_path: Path) -> None:
    settings = make_settings(tmp_path, log_path)
    written = friction_lines(0, 5)
    log_path.write_bytes(b"".join(written))
    outbox = FailingOutbox(settings.outbox_path, failures=2)
    with running(settings, outbox) as run:
        wait_for(lambda: "outbox" in (run.tailer.ready() or ""), "not ready")
        run.wait_keys(expected_keys(settings, written))
        run.wait_offset(log_path, log_path.stat().st_size)
        wait_for(lambda: run.tailer.ready() is None, "ready again")


def test_permission_denied_names_owner_and_our_uid(tmp_path: Path) -> None:
    # As on a control-plane node: the file is 0600 in a 0700 directory owned by root.
    top = Path(tempfile.mkdtemp(prefix="healert-perm-"))  # every parent reachable
    os.chmod(top, 0o755)
    directory = top / "audit"
    directory.mkdir(mode=0o700)
    log_path = directory / "audit.log"
    log_path.write_bytes(b"".join(lines_of(0, 3)))
    log_path.chmod(0o600)
    try:
        _check_permission_message(directory, log_path)
    finally:
        shutil.rmtree(top)


def _check_permission_message(directory: Path, log_path: Path) -> None:
    if os.geteuid() != 0:
        log_path.chmod(0o000)
        with pytest.raises(PermissionError) as info:
            tailfiles.open_stream(log_path, live=True)
        message = tailfiles.explain_open_error(log_path, info.value)
        assert f"owner uid {os.geteuid()}" in message
        assert "mode 0000" in message
        return
    # As root, the reader runs as another uid in a real subprocess: it imports as root
    # (the interpreter lives under /root), then drops to uid/gid 65534 before opening.
    code = ("import os, sys; from pathlib import Path\n"
            "from healert_webhook.sources import tailfiles\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "p = Path(sys.argv[1])\n"
            "try:\n    tailfiles.open_stream(p, live=True)\nexcept OSError as e:\n"
            "    print(tailfiles.explain_open_error(p, e))\n")
    out = subprocess.run([sys.executable, "-c", code, str(log_path)], check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                         text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert f"directory {directory} has mode 0700 and owner uid 0" in out.stdout
    assert "running as uid 65534" in out.stdout


# -- kill -9 while a writer writes and rotates ------------------------------------------


def tailer_env(tmp_path: Path, log_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEALERT_", "RULES_"))}
    env.update(PYTHONPATH=str(ROOT), AUDIT_LOG_PATH=str(log_path),
               HEALERT_STATE_DIR=str(tmp_path / "state"), HEALERT_TAIL_FROM="start",
               HEALERT_TAIL_POLL_INTERVAL="0.02", HEALERT_LOG_LEVEL="warning",
               HEALERT_OPS_LISTEN="127.0.0.1:0")
    return env


def start_tailer(tmp_path: Path, env: dict[str, str], n: int) -> subprocess.Popen[bytes]:
    # cwd without a rules.yaml: the packaged rules are used
    with open(tmp_path / f"tailer-{n}.log", "wb") as stderr:
        return subprocess.Popen([sys.executable, "-m", "healert_webhook", "tail"],
                                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=stderr)


def catch_up_report(outbox: Outbox, source: str, size: int, expected: list[str],
                    tmp_path: Path) -> str:
    """Why a tailer did not catch up: where it stands, what is missing, what the tailers
    logged (only warnings, but for the last one)."""
    missing = set(expected) - set(queued_keys(outbox))
    logs = "".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
                   for log in sorted(tmp_path.glob("tailer-*.log")) if log.stat().st_size)
    return (f"the tail did not catch up: checkpoint {outbox.load_checkpoint(source)}, "
            f"log size {size}, {len(missing)} of {len(expected)} friction keys missing\n"
            f"{logs}")


def test_sigkill_at_random_moments_loses_and_repeats_nothing(
        tmp_path: Path, log_path: Path, long_run: bool) -> None:
    # Rotations here are rename and rename+gzip (lumberjack's). Copy-truncate is left out
    # on purpose: lines written between a dead tailer's last read and the truncation exist
    # only in the copy, so no tailer can promise them (its own test is above).
    lines = 12_000 if long_run else 4_000
    kills = 60 if long_run else 22
    rng = random.Random(5)
    env = tailer_env(tmp_path, log_path)
    settings = make_settings(tmp_path, log_path)
    outbox = Outbox(settings.outbox_path)
    source = f"tail:{log_path}"
    # The first line is there before the first tailer starts (tail from the start), and
    # that tailer records its first checkpoint before the writer goes on: from then on,
    # every restart has a checkpoint to resume from.
    log_path.write_bytes(auditlog.make_line(SEED, 0))
    first = start_tailer(tmp_path, env, -1)
    try:
        wait_for(lambda: outbox.load_checkpoint(source) is not None, "a first checkpoint")
    finally:
        first.kill()
        first.wait()
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), "--path", str(log_path), "--seed", str(SEED),
         "--first", "1", "--lines", str(lines), "--rate", "500", "--rotate-bytes", "40000",
         "--rotate", "rename,gzip"], env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE)
    killed = 0
    try:
        while killed < kills:
            proc = start_tailer(tmp_path, env, killed)
            time.sleep(rng.uniform(0.05, 0.6))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            killed += 1
        out, _ = writer.communicate(timeout=60)
        assert writer.returncode == 0 and int(out) == lines
    finally:
        if writer.poll() is None:
            writer.kill()
    written = auditlog.generate(SEED, lines)
    expected = expected_keys(settings, written)
    assert len(expected) > 300
    final = start_tailer(tmp_path, {**env, "HEALERT_LOG_LEVEL": "info"}, killed)
    final_log = tmp_path / f"tailer-{killed}.log"
    try:
        wait_for(lambda: b"resumes in" in final_log.read_bytes(), "the last tailer to start")
        size = log_path.stat().st_size

        def caught_up() -> bool:
            cp = outbox.load_checkpoint(source)
            return (cp is not None and cp.offset == size and Path(cp.path) == log_path
                    and len(queued_keys(outbox)) >= len(expected))

        try:
            wait_for(caught_up, "the tail to catch up", timeout=60)
        except AssertionError:
            raise AssertionError(catch_up_report(outbox, source, size, expected,
                                                 tmp_path)) from None
        final.send_signal(signal.SIGTERM)
        assert final.wait(20) == 0
        got = queued_keys(outbox)
        assert len(got) == len(expected)
        assert sorted(got) == sorted(expected)
        assert len(list(log_path.parent.glob("*.gz"))) > 3  # compressed rotations happened
        assert len(list(log_path.parent.glob("audit-*.log"))) > 3  # renamed ones too
    finally:
        if final.poll() is None:
            final.kill()
        outbox.close()
