"""The real `serve` process started with a rules file that cannot be used.

It used to exit 2: a bad rules ConfigMap crash-looped the receiver at the next restart,
rollout or reboot while the apiserver dropped its batches. Now it always starts and takes
events: on the last rules that loaded (kept in the state directory), else on the packaged
ones, and says so (an ERROR line, /readyz's body, healert_rules_file_invalid) until the
file is fixed, which the watcher then applies.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from support.agent import JSON, Agent, metric, readyz, serve_args
from support.events import event_list, exec_event, two_rules
from support.servers import wait_for

BROKEN = "rules:\n  - name: Bad_Name\n    severity: urgent\n"


def post_exec(port: int, n: int) -> None:
    body = event_list([exec_event(n, tag="start")])
    answer = httpx.post(f"http://127.0.0.1:{port}/audit", content=body, headers=JSON, timeout=30)
    assert answer.status_code == 200


def test_a_broken_rules_file_at_start_runs_on_the_last_good_rules(
        tmp_path: Path, agents: list[Agent]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(two_rules("kept"))
    args = serve_args("state", "--rules", str(rules))
    first = Agent(args, tmp_path)
    agents.append(first)
    _port, ops = first.ports()
    assert metric(ops, "healert_rules_file_invalid") == 0
    assert first.stop() == 0
    assert (tmp_path / "state" / "rules.last-good.yaml").read_text() == two_rules("kept")

    rules.write_text(BROKEN)  # a bad ConfigMap, then a restart
    second = Agent(args, tmp_path)
    agents.append(second)
    port, ops = second.ports()  # it started
    assert "cannot be used" in second.output() and "running on the last rules" in second.output()
    assert metric(ops, "healert_rules_file_invalid") == 1
    ready = readyz(ops)
    assert ready.status_code == 200, ready.text  # it takes events: ready
    assert "warning: rules file" in ready.text and "last rules that loaded" in ready.text
    post_exec(port, 1)
    wait_for(lambda: metric(ops, "healert_friction_events_total", rule="kept-one") == 1,
             what="detected by the last good rules")

    rules.write_text(two_rules("fixed"))
    second.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: metric(ops, "healert_rules_file_invalid") == 0, what="the fix applied")
    assert "warning" not in readyz(ops).text
    post_exec(port, 2)
    wait_for(lambda: metric(ops, "healert_friction_events_total", rule="fixed-one") == 1,
             what="detected by the fixed rules")
    assert (tmp_path / "state" / "rules.last-good.yaml").read_text() == two_rules("fixed")


def test_a_broken_rules_file_with_nothing_kept_runs_on_the_packaged_rules(
        tmp_path: Path, agents: list[Agent]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(BROKEN)
    agent = Agent(serve_args("state", "--rules", str(rules)), tmp_path)
    agents.append(agent)
    port, ops = agent.ports()
    assert "running on the packaged rules" in agent.output()
    assert "packaged rules" in readyz(ops).text
    post_exec(port, 3)
    wait_for(lambda: metric(ops, "healert_friction_events_total", rule="kubectl-exec") == 1,
             what="detected by the packaged rules")
    assert metric(ops, "healert_rules_file_invalid") == 1
