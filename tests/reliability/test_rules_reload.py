"""Big and broken rules files reloaded by the real `serve` process.

A rules file of a million problems (4 MiB, the most a file may hold) used to take a
minute to reject and logged one line per problem; a fixed file written meanwhile waited
for all of it. Here: the huge file is being read when the fixed one is written and
SIGHUP sent; the fixed file must be applied without the huge one's verdict ever coming
first (it is abandoned), and when the huge file is loaded on its own, the log lists its
first problems and counts the rest.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx

from support.agent import JSON, Agent, metric, serve_args
from support.events import event_list, exec_event, two_rules
from support.servers import wait_for

HUGE_BROKEN = "rules:\n" + "- 1\n" * 1_000_000
LISTED = 50


def put(path: Path, text: str) -> None:
    """Replace the file at once, as a ConfigMap update or an editor's save does: the
    agent's watcher hashes the file every few seconds, and a 4 MiB file written in place
    could be hashed, then loaded, half written (a quick failure of its own, logged before
    the fixed file's turn)."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    os.replace(staged, path)


def reload_lines(output: str) -> list[str]:
    """The log lines about rule reloads, in order."""
    return [line for line in output.splitlines()
            if "rules reload" in line or "rules reloaded" in line or "rules load of" in line]


def test_a_fixed_file_written_during_a_slow_reload_wins_and_problems_are_capped(
        tmp_path: Path, agents: list[Agent]) -> None:
    rules = tmp_path / "rules.yaml"
    put(rules, two_rules("old"))
    agent = Agent(serve_args("state", "--rules", str(rules)), tmp_path)
    agents.append(agent)
    port, ops = agent.ports()

    put(rules, HUGE_BROKEN)
    agent.proc.send_signal(signal.SIGHUP)
    # The load of the huge file has started (or, before this fix, is under way).
    wait_for(lambda: agent.output().count("loading rules from") >= 1
             or "SIGHUP received" in agent.output(), timeout=30, what="the huge file read")
    put(rules, two_rules("fixed"))
    fixed_at = time.monotonic()
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "rules reloaded" in agent.output(), timeout=180,
             what="the fixed file applied")
    applied_after = time.monotonic() - fixed_at
    lines = reload_lines(agent.output())
    first = next(i for i, line in enumerate(lines) if "rules reloaded" in line)
    assert not any("rules reload failed" in line for line in lines[:first]), lines[:5]
    assert "2 enabled" in lines[first]
    body = event_list([exec_event(1, tag="fixed")])
    assert httpx.post(f"http://127.0.0.1:{port}/audit", content=body, headers=JSON,
                      timeout=30).status_code == 200
    assert metric(ops, "healert_friction_events_total", rule="fixed-one") == 1

    # The huge file on its own: refused, its first problems listed, the rest counted.
    mark = len(agent.output())
    put(rules, HUGE_BROKEN)
    huge_at = time.monotonic()
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "more problem(s)" in agent.output()[mark:], timeout=180,
             what="the huge file refused")
    refused_after = time.monotonic() - huge_at
    time.sleep(1.0)  # any straggler line would be written by now
    failed = [line for line in agent.output()[mark:].splitlines()
              if "rules reload failed" in line]
    assert len(failed) == LISTED + 1
    assert re.search(r"\.\.\. and 999950 more problem\(s\)", failed[-1])
    assert metric(ops, "healert_rules_reloads_total", result="failure") == 1
    assert metric(ops, "healert_friction_events_total", rule="fixed-one") == 1
    print(f"rules reload: the fixed file applied {applied_after:.2f} s after it was written "
          f"during the huge file's load (abandoned); the huge file alone refused in "
          f"{refused_after:.2f} s with {len(failed)} log lines")
    assert agent.stop() == 0
