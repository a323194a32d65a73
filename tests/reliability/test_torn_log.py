"""A crash of the log's writer, as the real `tail` process meets it.

The apiserver writes each event as one line in one write(). When it (or the node) dies
mid-write, the file keeps a torn line without its newline, and the restarted writer
appends its next lines right after it; a filesystem that had already extended the file
leaves a run of NUL bytes instead (of any length), and the next event follows them.
Before, the tail read the torn part (or the NULs) and the next whole event as one line,
which did not parse, and lost that event. Must hold: every whole event after the junk is
detected, once; the junk is counted and logged (once per run, not per byte or line); and a
tailer killed while the torn line is all there is resumes and decides the same.
"""

from __future__ import annotations

import signal
from pathlib import Path

import orjson

from support.agent import Agent, metric
from support.events import exec_event
from support.servers import wait_for


def line(n: int, tag: str) -> bytes:
    """An audit log line of an exec by a person: one friction event each."""
    event = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", **exec_event(n, tag=tag)}
    return orjson.dumps(event) + b"\n"


def torn(n: int, tag: str, keep: float = 0.6) -> bytes:
    """The first part of a line, as a write cut short by a crash leaves it."""
    whole = line(n, tag)
    return whole[: int(len(whole) * keep)]


def start_tail(tmp_path: Path, log: Path) -> tuple[Agent, int]:
    agent = Agent(["tail", "--audit-log", str(log), "--from", "start", "--state-dir", "state",
                   "--ops-listen", "127.0.0.1:0", "--poll-interval", "0.05"], tmp_path)
    ops = int(agent.wait_line(r"ops listener on http://127\.0\.0\.1:(\d+)").group(1))
    return agent, ops


def execs(ops: int) -> float:
    return metric(ops, "healert_friction_events_total", rule="kubectl-exec")


def append(log: Path, data: bytes) -> None:
    with log.open("ab") as out:
        out.write(data)


def test_every_whole_event_after_torn_lines_and_nul_runs_is_read(
        tmp_path: Path, agents: list[Agent]) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(line(0, "a"))
    agent, ops = start_tail(tmp_path, log)
    agents.append(agent)
    wait_for(lambda: execs(ops) == 1, timeout=30, what="the first line")
    expected = 1
    # 1. a torn line, then the restarted writer's lines
    append(log, torn(1, "b"))
    append(log, line(2, "b") + line(3, "b"))
    expected += 2
    wait_for(lambda: execs(ops) == expected, timeout=30, what="the lines after a torn one")
    # 2. a whole event that lost only its newline, then the next one
    append(log, line(4, "c")[:-1] + line(5, "c"))
    expected += 2
    wait_for(lambda: execs(ops) == expected, timeout=30, what="an event without newline")
    # 3. NULs where a line was to be, then lines; more NULs than the longest line read
    append(log, b"\0" * 65536 + line(6, "d"))
    append(log, torn(7, "d") + b"\0" * 3_000_000 + line(8, "d") + line(9, "d"))
    expected += 3
    wait_for(lambda: execs(ops) == expected, timeout=30, what="the lines after the NULs")
    # 4. two torn lines in a row, then one
    append(log, torn(10, "e", 0.3) + torn(11, "e", 0.8) + line(12, "e"))
    expected += 1
    wait_for(lambda: execs(ops) == expected, timeout=30, what="the line after two torn")
    wait_for(lambda: metric(ops, "healert_tail_lag_bytes") == 0, timeout=30,
             what="the checkpoint at the end")
    assert metric(ops, "healert_tail_nul_bytes_skipped_total") == 65536 + 3_000_000
    assert metric(ops, "healert_invalid_events_total", source="tail",
                  reason="truncated_line") == 3  # torn 1, 7 and 10+11 (one piece of junk)
    output = agent.output()
    assert output.count("NUL bytes") == 2  # one line per run, however long
    print(f"torn log: {expected} of {expected} whole events detected after 4 torn writes "
          f"and 2 NUL runs ({65536 + 3_000_000} bytes); 3 truncated_line, 2 log lines "
          f"for the NULs")
    assert agent.stop() == 0
    assert execs_in_outbox(tmp_path) == expected


def test_a_tailer_killed_at_the_torn_line_resumes_and_loses_nothing(
        tmp_path: Path, agents: list[Agent]) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(line(0, "k") + torn(1, "k"))
    first, ops = start_tail(tmp_path, log)
    agents.append(first)
    wait_for(lambda: execs(ops) == 1, timeout=30, what="the line before the torn one")
    wait_for(lambda: metric(ops, "healert_tail_checkpoint_age_seconds") == 0, timeout=30,
             what="the checkpoint before the torn line")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    append(log, b"\0" * 4096 + line(2, "k") + line(3, "k"))  # the writer came back
    second, ops = start_tail(tmp_path, log)
    agents.append(second)
    wait_for(lambda: execs(ops) == 2, timeout=30, what="the lines after the torn one")
    wait_for(lambda: metric(ops, "healert_tail_lag_bytes") == 0, timeout=30,
             what="the checkpoint at the end")
    assert second.stop() == 0
    assert execs_in_outbox(tmp_path) == 3  # each once: the outbox holds their keys


def execs_in_outbox(tmp_path: Path) -> int:
    from healert_webhook.outbox import Outbox

    box = Outbox(tmp_path / "state" / "outbox.db")
    try:
        return sum(1 for row in box.head(1000) if row.rule == "kubectl-exec")
    finally:
        box.close()
