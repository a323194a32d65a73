"""The benchmark runs end to end in its tiny configuration and reports every row.

No timing is asserted: only that each section produced its figures on each stream (or
said plainly why it could not), that ratios divide by the floor measured around them,
that the table was printed and that a second run compares with the first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run.py"
FIGURE_KEYS = {"label", "unit", "median", "min", "max", "values"}
STREAMS = ("realistic", "small", "today")
IN_PROCESS = {"floor_bodies", "floor_bodies_paused", "detect_inprocess", "prefilter_inprocess",
              "ruled_out", "detect_only", "fields_prefilter_line", "fields_msgspec_line",
              "fields_prefilter_body", "fields_msgspec_body", "store_first", "store_resent"}
SECTION_FIGURES = {
    "(c)/(d)/(f) webhook HTTP": {"webhook_http", "rss_webhook"},
    "(c) webhook HTTPS": {"webhook_mtls"},
    "(e) tail catch-up": {"tail_floor", "tail_catchup", "tail_mib_cpu", "tail_mib_wall"},
}
LATENCY = {"realistic": {"ack_p50", "ack_p99", "ack_max"},
           "today": {"ack_p99", "ack_p99_metadata"}}


def run_tiny(output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUN), "--tiny", "--output", str(output), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=900, check=False)


def test_tiny_benchmark_writes_table_and_results(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    first = run_tiny(output)
    assert first.returncode == 0, first.stderr[-2000:]
    results = json.loads(output.read_text())
    assert results["mode"] == "tiny" and results["schema"] == 2
    assert {"cpu_model", "cores", "python"} <= set(results["machine"])
    assert set(results["workloads"]) == set(STREAMS)
    assert all(about["events"] == 2000 for about in results["workloads"].values())
    figures, unavailable = results["figures"], results["unavailable"]
    assert next(iter(figures)).startswith("realistic.")  # the headline first
    for key, fig in figures.items():
        assert set(fig) >= FIGURE_KEYS, key
        assert fig["min"] <= fig["median"] <= fig["max"], key
        assert fig["median"] > 0, key
    for stream in STREAMS:
        rows = {key.partition(".")[2] for key in figures if key.startswith(f"{stream}.")}
        assert IN_PROCESS | {"floor"} <= rows, (stream, unavailable)
        for section, keys in SECTION_FIGURES.items():
            wanted = keys | (LATENCY.get(stream, set()) if "HTTP" in section else set())
            # Each section either measured all its rows or says why it could not.
            assert wanted <= rows or unavailable.get(f"{stream}: {section}"), (stream, section)
        # A ratio divides by the floor measured before, between and after the repetitions.
        detect = figures[f"{stream}.detect_inprocess"]
        assert len(detect["floor_values"]) == len(detect["values"]) + 1
        assert detect["ratio"] == detect["median"] / detect["floor"]
        field_pass = figures[f"{stream}.fields_msgspec_line"]
        assert field_pass["ratio_to"] == f"{stream}.fields_prefilter_line"
        assert field_pass["ratio"] > 0
    targets = {key: fig["target"] for key, fig in figures.items() if "target" in fig}
    assert targets.get("realistic.webhook_mtls") == 1.0
    assert targets.get("small.webhook_http") == 1.3 or "small: (c)/(d)/(f) webhook HTTP" \
        in unavailable
    assert 50 < figures["today.ruled_out"]["median"] <= 100  # the workload is mostly noise
    assert {"batch.rss_idle", "batch.rss_big_batch"} <= set(figures) or \
        unavailable.get("(f) large batch RSS")
    assert "== realistic" in first.stdout and "(a) orjson.loads per event" in first.stdout
    assert "compared with the previous run" not in first.stdout

    second = run_tiny(output, "--streams", "small", "--skip", "webhook,tls,tail,bigbatch")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "compared with the previous run" in second.stdout
    assert set(json.loads(output.read_text())["workloads"]) == {"small"}


def test_conflicting_sizes_are_refused() -> None:
    bad = subprocess.run([sys.executable, str(RUN), "--tiny", "--quick"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "not allowed with" in bad.stderr


def test_stack_breakdown_measures_each_server() -> None:
    """benchmarks/stack.py serves the same load from its three servers and tells them
    apart: the bare socket spends less per event than the whole agent."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "stack.py"),
                           "--events", "4000", "--rounds", "1", "--passes", "2",
                           "--stream", "realistic"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    per_event = {}
    for line in done.stdout.splitlines():
        name, _, rest = line.partition(" server CPU per event ")
        if rest:
            per_event[name.strip()] = float(rest.split()[0])
    assert set(per_event) == {"socket", "stack", "agent"}, done.stdout
    assert per_event["socket"] < per_event["agent"], done.stdout
    assert "the events beyond the stack" in done.stdout
    # The budget: the plain-HTTP target of the realistic stream, and a running sum of
    # the parts that any reading of its events pays, the socket's taken from above.
    lines = done.stdout.splitlines()
    floor = float(lines[0].split()[-2])
    budget = next(line for line in lines if line.startswith("budget at the target"))
    assert "(1.30x the floor)" in budget, budget
    assert abs(float(budget.split()[-4]) - floor / 1.3) < 0.011, done.stdout
    sums = [float(line.rpartition("(sum ")[2].rstrip(")")) for line in lines if "(sum " in line]
    parts = [float(line.split(" us ")[0].split()[-1]) for line in lines if "(sum " in line]
    assert len(parts) == 4 and parts[0] == per_event["socket"], done.stdout
    assert all(part > 0 for part in parts[1:]), done.stdout
    assert abs(sums[-1] - sum(parts)) < 0.025, done.stdout
    shares = [line for line in lines if line.startswith("  candidates ")]
    assert len(shares) == 3 and all("%)" in line and "us each)" in line for line in shares), \
        done.stdout
