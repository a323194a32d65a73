"""filewatch.py against real files, FIFOs and sockets on disk."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from healert_webhook.filewatch import FileWatch, NotRegularFile, open_regular, read_regular


def _in_thread(func, *args):  # type: ignore[no-untyped-def]
    """Run `func` in a daemon thread; the result, or the thread still running (blocked)."""
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(_call(func, *args)), daemon=True)
    thread.start()
    thread.join(5)
    return thread.is_alive(), out


def _call(func, *args):  # type: ignore[no-untyped-def]
    try:
        return func(*args)
    except OSError as exc:
        return exc


def test_reads_a_regular_file_up_to_one_byte_past_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"0123456789")
    assert read_regular(path, 100) == b"0123456789"
    assert read_regular(path, 4) == b"01234"  # limit + 1: the caller sees it is too long


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "key"
    os.mkfifo(fifo)
    blocked, out = _in_thread(read_regular, fifo, 100)
    assert not blocked, "opening a FIFO without a writer blocked"
    assert isinstance(out[0], NotRegularFile)
    assert "FIFO" in str(out[0]) and str(fifo) in str(out[0])


def test_a_directory_and_a_socket_are_named_for_what_they_are(tmp_path: Path) -> None:
    with pytest.raises(NotRegularFile, match="a directory"):
        open_regular(tmp_path)
    sock_path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(OSError, match=r"socket|No such device"):
            open_regular(sock_path)


def test_a_watched_file_turned_into_a_fifo_is_no_change_and_never_blocks(
        tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("a\n")
    watch = FileWatch(path)
    path.unlink()
    os.mkfifo(path)
    blocked, out = _in_thread(watch.changed)
    assert not blocked and out == [False]
    path.unlink()
    path.write_text("b\n")
    assert watch.changed()


def test_a_same_size_rewrite_within_one_mtime_tick_is_still_noticed(tmp_path: Path) -> None:
    """FileWatch's docstring promises that its hash catches an in-place rewrite that kept
    the size within one mtime tick, but the hash was only taken when the stat signature
    changed: a second write landing in the tick of the first (coarse timestamps: a few ms
    on ext4, 2 s on FAT) was never reloaded. The shared tick is made here with utime."""
    path = tmp_path / "rules.yaml"
    path.write_text("rules: []  # one\n")
    tick = path.stat()
    watch = FileWatch(path)  # read in the same tick as the write
    path.write_text("rules: []  # two\n")  # same size, same tick
    os.utime(path, ns=(tick.st_atime_ns, tick.st_mtime_ns))
    assert watch.changed()
    assert not watch.changed()  # and once only
