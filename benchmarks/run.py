"""The project's benchmark: one command, one table, every figure measured in the same run.

    .venv/bin/python benchmarks/run.py            # full: 200 MiB tail, 5 repetitions
    .venv/bin/python benchmarks/run.py --quick    # a few minutes less
    .venv/bin/python benchmarks/run.py --tiny --output /tmp/x.json   # smoke test size

Each figure is the median of several repetitions, with min and max. Rates are per second
of CPU time of the process doing the work (this process for (a)/(b), the agent's process
tree for (c)/(e)), so the load generator on the other core does not flatter them. The
results go to benchmarks/results/latest.json; the previous file there is compared with.
See benchmarks/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import simdjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
sys.path.insert(2, str(Path(__file__).resolve().parent.parent / "tests"))

import procs
from procs import REPO, Unavailable

from healert_webhook import batches, prefilter
from healert_webhook.audit import batch_items
from healert_webhook.cluster.meta import Extractor
from healert_webhook.cluster.view import View
from healert_webhook.config import Settings
from healert_webhook.entity import LABEL_KEYS, name_rules
from healert_webhook.pipeline import Pipeline, gc_paused, make_detector
from healert_webhook.records import Stats
from healert_webhook.rules import DEFAULT_GITOPS, RuleSet, load_rules
from healert_webhook.sources import body as body_reading

from support import workload

MIB = 1024 * 1024
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "latest.json"
LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
ROTATED_NAME = "audit-2026-11-26T10-00-00.000.log"


@dataclass(frozen=True)
class Config:
    """Sizes and repetition counts of one benchmark mode."""

    mode: str
    events: int            # events in the in-process and webhook workload
    reps: int              # repetitions of (a), (b), (c)
    passes: int            # passes over the workload per webhook repetition
    connections: int       # load generator connections
    latency_batches: int   # batches per latency repetition, at 10 batches/s
    latency_reps: int
    tail_bytes: int
    tail_reps: int
    big_batch_bytes: int
    match_ratio: float = 0.01
    seed: int = 1
    batch: int = 400


MODES = {
    "full": Config("full", 40_000, 5, 2, 4, 300, 3, 200 * MIB, 3, 60 * MIB),
    "quick": Config("quick", 16_000, 3, 1, 4, 100, 2, 32 * MIB, 2, 60 * MIB),
    "tiny": Config("tiny", 2_000, 2, 1, 2, 10, 1, 2 * MIB, 1, 6 * MIB),
}
TARGETS = {"webhook_mtls": 1.5, "webhook_http": 2.0, "tail_catchup": 1.5}
# Figures with an upper bound: ack p99 of Metadata-level batches in ms,
# steady-load RSS in MiB.
LIMITS = {"ack_p99_metadata": 10.0, "rss_webhook": 100.0}


class Report:
    """Figures (median, min, max of repetitions) and the sections that could not run."""

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, Any]] = {}
        self.unavailable: dict[str, str] = {}

    def add(self, key: str, label: str, unit: str, values: list[float], *,
            ratio_to: str | None = None) -> None:
        """Record a figure; with `ratio_to`, also its median's ratio to that figure."""
        fig: dict[str, Any] = {"label": label, "unit": unit,
                               "median": statistics.median(values), "min": min(values),
                               "max": max(values), "values": values}
        if ratio_to is not None and ratio_to in self.figures:
            fig["ratio_to"] = ratio_to
            fig["ratio"] = fig["median"] / self.figures[ratio_to]["median"]
            if key in TARGETS:
                fig["target"] = TARGETS[key]
        if key in LIMITS:
            fig["limit"] = LIMITS[key]
        self.figures[key] = fig

    def section(self, name: str, func: Callable[[], None]) -> None:
        """Run a section; on failure record 'not available: <reason>' instead."""
        print(f"... {name}", file=sys.stderr, flush=True)
        try:
            func()
        except Unavailable as exc:
            self.unavailable[name] = str(exc)
        except Exception as exc:  # a benchmark row must not sink the whole table
            traceback.print_exc(file=sys.stderr)
            self.unavailable[name] = f"{type(exc).__name__}: {exc}"


# --- in-process sections ---------------------------------------------------------------

def cpu_timed(func: Callable[[], object]) -> float:
    """CPU seconds of this process spent in `func`."""
    start = time.process_time()
    func()
    return time.process_time() - start


def shipped_rules() -> RuleSet:
    """The repository's rules.yaml (what `serve` loads from the repo), else the packaged."""
    path = REPO / "rules.yaml"
    return load_rules(path if path.is_file() else None)


def loads_each(items: list[bytes]) -> None:
    """The floor: one orjson.loads per event."""
    loads = orjson.loads
    for item in items:
        loads(item)


def detect_batches(pipeline: Pipeline, bodies: list[bytes]) -> None:
    """What the webhook does per request, minus HTTP and the outbox: parse and detect
    with the cyclic GC paused, the parsed batch dropped before it runs again."""
    for body in bodies:
        with gc_paused():  # held across the parse too, as the webhook's worker does
            pipeline.evaluate_items(batch_items(orjson.loads(body)), "bench")


def evaluate_read(pipeline: Pipeline, bodies: list[bytes]) -> None:
    """The webhook's own path minus HTTP and the outbox: simdjson reads each body, the
    pre-filter rules out what it can, orjson parses the rest for detection."""
    for body in bodies:
        plan = batches.reading(body)
        if plan is None or body_reading.evaluate(pipeline, body, plan, "bench", len(body)) is None:
            raise Unavailable("simdjson did not read a workload body")


def ruled_out_share(pipeline: Pipeline, bodies: list[bytes]) -> float:
    """The share of the workload's events the pre-filter rules out, in percent."""
    reason = pipeline.rules.prefilter.reason
    total = ruled = 0
    for body in bodies:
        items = batch_items(prefilter.parse(body), simdjson.Object, simdjson.Array)
        total += len(items)
        ruled += sum(1 for item in items if reason(item) is not None)
        del items
    return 100.0 * ruled / max(total, 1)


def loads_bodies(bodies: list[bytes], pause: bool) -> None:
    """orjson.loads per 400-event body, with the cyclic GC running or paused."""
    loads = orjson.loads
    for body in bodies:
        if pause:
            with gc_paused():
                doc = loads(body)
                del doc
        else:
            loads(body)


def section_inprocess(rep: Report, cfg: Config, work: workload.Workload,
                      bodies: list[bytes]) -> None:
    """(a) the orjson floor and (b) parse + Pipeline.detect per 400-event batch."""
    n = len(work.items)
    loads_each(work.items)  # warm caches once
    floor = [n / cpu_timed(lambda: loads_each(work.items)) for _ in range(cfg.reps)]
    rep.add("floor", "(a) orjson.loads per event (floor)", "events/cpu-s", floor)
    # The same bytes as whole bodies: with the GC running, the tens of thousands of
    # objects a body makes trigger collections over the live tree; paused, they do not.
    whole = [n / cpu_timed(lambda: loads_bodies(bodies, False)) for _ in range(cfg.reps)]
    rep.add("floor_bodies", "    orjson.loads per 400-event body, GC on", "events/cpu-s",
            whole, ratio_to="floor")
    paused = [n / cpu_timed(lambda: loads_bodies(bodies, True)) for _ in range(cfg.reps)]
    rep.add("floor_bodies_paused", "    same, GC paused (as the webhook does)",
            "events/cpu-s", paused, ratio_to="floor")
    settings = Settings()
    pipeline = Pipeline(settings, make_detector(shipped_rules(), settings))
    detect_batches(pipeline, bodies)
    rates = [n / cpu_timed(lambda: detect_batches(pipeline, bodies)) for _ in range(cfg.reps)]
    rep.add("detect_inprocess", "(b) parse + detect, 400/batch, GC paused", "events/cpu-s",
            rates, ratio_to="floor")
    evaluate_read(pipeline, bodies)
    read = [n / cpu_timed(lambda: evaluate_read(pipeline, bodies)) for _ in range(cfg.reps)]
    rep.add("prefilter_inprocess", "(b) simdjson + pre-filter + parse the rest + detect",
            "events/cpu-s", read, ratio_to="floor")
    rep.add("ruled_out", "    events the pre-filter rules out without a parse", "%",
            [ruled_out_share(pipeline, bodies)])
    parsed = [batch_items(orjson.loads(body)) for body in bodies]
    detector = pipeline.detector

    def detect_with(chosen: Any, batches: list[Any], stats: Stats | None = None
                    ) -> Callable[[], None]:
        def run() -> None:
            for items in batches:
                chosen.detect(items, stats if stats is not None else Stats())
        return run

    only = [n / cpu_timed(detect_with(detector, parsed)) for _ in range(cfg.reps)]
    rep.add("detect_only", "    Detector.detect alone (pre-parsed)", "events/cpu-s", only)
    section_view(rep, cfg, parsed, detector, detect_with)


FILLER_PODS = 100_000


def section_view(rep: Report, cfg: Config, parsed: list[Any], detector: Any,
                 detect_with: Callable[..., Callable[[], None]]) -> None:
    """Detection reading a view of the cluster that holds every object the events name
    (and their owners) among FILLER_PODS more, against the same detector without it, in
    the same heap (the collector's work grows with it), repetitions alternating. Only the
    events that fire a rule resolve; those the index rules out never reach the view."""
    n = sum(map(len, parsed))
    viewed = make_detector(shipped_rules(), Settings(), workload_view(parsed, FILLER_PODS))
    ruled = [[e for e in items if isinstance(detector.index.rule_out(e), str)]
             for items in parsed]
    count = sum(map(len, ruled))
    stats = Stats()
    rates: dict[str, list[float]] = {"plain": [], "view": [], "ruled": [], "ruled_view": []}
    for _ in range(cfg.reps):
        rates["plain"].append(n / cpu_timed(detect_with(detector, parsed)))
        rates["view"].append(n / cpu_timed(detect_with(viewed, parsed, stats)))
        rates["ruled"].append(count / cpu_timed(detect_with(detector, ruled)))
        rates["ruled_view"].append(count / cpu_timed(detect_with(viewed, ruled)))
    rep.add("detect_heap", f"    same, {FILLER_PODS:,} pods of a view in memory",
            "events/cpu-s", rates["plain"])
    rep.add("detect_only_view", "    same, reading the view", "events/cpu-s", rates["view"],
            ratio_to="detect_heap")
    rep.add("resolved", "    events whose entity was resolved (they fired)", "%",
            [100.0 * sum(stats.entities.values()) / max(stats.events, 1)])
    rep.add("detect_ruled_out", "    Detector.detect, ruled-out events only", "events/cpu-s",
            rates["ruled"])
    rep.add("detect_ruled_out_view", "    same, reading the view", "events/cpu-s",
            rates["ruled_view"], ratio_to="detect_ruled_out")


BACKSTAGE = "backstage.io/kubernetes-id"


def workload_view(parsed: list[Any], filler: int) -> View:
    """A view as the watches fill it: every pod and Deployment the events name, each pod
    with its ReplicaSet and Deployment (the Deployment's pod template naming its entity),
    and `filler` pods more, all listed and synced."""
    extractor = Extractor((*LABEL_KEYS, *DEFAULT_GITOPS.labels), DEFAULT_GITOPS.annotations)
    view = View(600.0, label_keys=extractor.label_keys,
                annotation_keys=extractor.annotation_keys)

    def put(resource: str, kind: str, meta: dict[str, Any], template: Any = None) -> None:
        record = extractor.record(kind, meta, template)
        if record is not None:
            view.put(resource, record)

    def owned(kind: str, name: str) -> list[dict[str, Any]]:
        return [{"apiVersion": "apps/v1", "kind": kind, "name": name, "controller": True}]

    def deployment(namespace: str, name: str) -> None:
        put("deployments", "Deployment", {"name": name, "namespace": namespace},
            {BACKSTAGE: f"{name}-service"})

    for items in parsed:
        for event in items:
            ref = event.get("objectRef") or {}
            namespace, name = ref.get("namespace") or "", ref.get("name") or ""
            if not name:
                continue
            if ref.get("resource") == "pods":
                owner = name_rules("pods", name).name
                replicaset = name.rsplit("-", 1)[0]
                deployment(namespace, owner)
                put("replicasets", "ReplicaSet", {"name": replicaset, "namespace": namespace,
                                                  "ownerReferences": owned("Deployment",
                                                                           owner)})
                put("pods", "Pod", {"name": name, "namespace": namespace,
                                    "ownerReferences": owned("ReplicaSet", replicaset)})
            elif ref.get("resource") == "deployments":
                deployment(namespace, name)
    for i in range(filler):
        put("pods", "Pod", {"name": f"filler-7d9f8b6c4d-{i:05d}", "namespace": f"ns-{i % 100}",
                            "ownerReferences": owned("ReplicaSet", "filler-7d9f8b6c4d")})
    for resource, store in view.stores.items():
        view.relisted(resource, store.keys())
        view.set_state(resource, True)
    return view


# --- webhook sections ------------------------------------------------------------------

def loadgen(url: str, bodies_file: Path, mode_args: list[str],
            pki: procs.PKI | None = None) -> dict[str, Any]:
    """Run benchmarks/loadgen.py in its own process (with `pki`, as the apiserver over
    mTLS); its JSON result."""
    argv = [sys.executable, str(LOADGEN), "--url", url, "--bodies", str(bodies_file)]
    if pki is not None:
        argv += ["--cafile", str(pki.ca), "--client-cert", str(pki.client_cert),
                 "--client-key", str(pki.client_key)]
    run = subprocess.run(argv + mode_args, capture_output=True, check=False, timeout=1800)
    if run.returncode != 0:
        raise Unavailable(f"loadgen failed: {run.stderr.decode(errors='replace')[-400:]}")
    result: dict[str, Any] = json.loads(run.stdout.splitlines()[-1])
    bad = {code: count for code, count in result["status"].items()
           if not code.startswith("2")}
    if bad:
        raise Unavailable(f"server answered non-2xx: {bad} of {result['requests']}")
    return result


def metadata_bodies(data: bytes) -> bytes:
    """The same batches at Metadata level: request/response objects dropped."""
    out = []
    for line in data.split(b"\n"):
        if line:
            doc = orjson.loads(line)
            for item in doc["items"]:
                item.pop("requestObject", None)
                item.pop("responseObject", None)
                item["level"] = "Metadata"
            out.append(orjson.dumps(doc))
    return b"\n".join(out) + b"\n"


def server_url(agent: procs.Agent, tls: bool) -> str:
    """The webhook URL of a started server."""
    return f"{'https' if tls else 'http'}://127.0.0.1:{agent.port}/audit"


def measure_throughput(rep: Report, cfg: Config, agent: procs.Agent, url: str,
                       bodies_file: Path, events: int, key: str, label: str,
                       pki: procs.PKI | None) -> None:
    """Events per server CPU-second over `reps` loadgen runs (after one warm-up pass)."""
    args = ["throughput", "--connections", str(cfg.connections)]
    loadgen(url, bodies_file, [*args, "--passes", "1"], pki)
    per_cpu, per_wall = [], []
    for _ in range(cfg.reps):
        before = procs.cpu_seconds(agent.pid)
        result = loadgen(url, bodies_file, [*args, "--passes", str(cfg.passes)], pki)
        spent = procs.cpu_seconds(agent.pid) - before
        per_cpu.append(events * cfg.passes / max(spent, 1e-3))
        per_wall.append(events * cfg.passes / result["wall_s"])
    rep.add(key, label, "events/cpu-s", per_cpu, ratio_to="floor")
    rep.add(f"{key}_wall", "    same, per wall-clock second", "events/s", per_wall)


def section_webhook(rep: Report, cfg: Config, tmp: Path, bodies_file: Path,
                    events: int) -> None:
    """(c) plain HTTP end to end, (d) ack latency, (f) peak RSS under that load."""
    agent = procs.start_server(tmp / "http")
    try:
        url = server_url(agent, False)
        measure_throughput(rep, cfg, agent, url, bodies_file, events, "webhook_http",
                           "(c) webhook HTTP end to end (server CPU)", None)
        p50, p99, worst = [], [], []
        for _ in range(cfg.latency_reps):
            result = loadgen(url, bodies_file, ["rate", "--per-second", "10", "--count",
                                                str(cfg.latency_batches)])
            lat = sorted(result["latencies_ms"])
            p50.append(statistics.median(lat))
            p99.append(lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))])
            worst.append(lat[-1])
        rep.add("ack_p50", "(d) ack latency p50, 400/batch @10/s", "ms", p50)
        rep.add("ack_p99", "(d) ack latency p99", "ms", p99)
        rep.add("ack_max", "(d) ack latency max", "ms", worst)
        # The targets assume ~1 KiB Metadata-level events (the workload averages 3.4 KiB).
        meta_file = bodies_file.with_name("bodies-metadata.json")
        meta_file.write_bytes(metadata_bodies(bodies_file.read_bytes()))
        meta99 = []
        for _ in range(cfg.latency_reps):
            result = loadgen(url, meta_file, ["rate", "--per-second", "10", "--count",
                                              str(cfg.latency_batches)])
            lat = sorted(result["latencies_ms"])
            meta99.append(lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))])
        rep.add("ack_p99_metadata", "(d) ack latency p99, Metadata-level events", "ms",
                meta99)
        rep.add("rss_webhook", "(f) peak RSS of serve during (c)+(d)", "MiB",
                [procs.peak_rss_mib(agent.pid)])
    finally:
        agent.stop()


def section_webhook_tls(rep: Report, cfg: Config, tmp: Path, bodies_file: Path,
                        events: int) -> None:
    """(c) the production path: TLS with the apiserver's client certificate required and
    its name checked (certificates from certs/gen-certs.sh)."""
    workdir = tmp / "https"
    workdir.mkdir()
    pki = procs.mtls_pki(workdir)
    agent = procs.start_server(workdir, pki)
    try:
        measure_throughput(rep, cfg, agent, server_url(agent, True), bodies_file, events,
                           "webhook_mtls", "(c) webhook HTTPS + client certificate (server CPU)",
                           pki)
    finally:
        agent.stop()


def section_big_batch(rep: Report, cfg: Config, tmp: Path) -> None:
    """(f) peak RSS of a fresh server taking one very large batch (twice)."""
    body = workload.large_batch(cfg.big_batch_bytes, seed=cfg.seed)
    bodies_file = tmp / "big.json"
    bodies_file.write_bytes(body + b"\n")
    agent = procs.start_server(tmp / "big")
    try:
        idle = procs.peak_rss_mib(agent.pid)
        loadgen(server_url(agent, False), bodies_file,
                ["throughput", "--connections", "1", "--passes", "2"])
        rep.add("rss_idle", "(f) peak RSS of serve at start", "MiB", [idle])
        rep.add("rss_big_batch", f"(f) peak RSS, {len(body) / MIB:.0f} MiB batch", "MiB",
                [procs.peak_rss_mib(agent.pid)])
    finally:
        agent.stop()


# --- tail section ----------------------------------------------------------------------

def log_chunks(cfg: Config) -> list[bytes]:
    """Whole-line chunks of ~1-2 MiB adding up to at least `tail_bytes`."""
    gen = workload.Generator(cfg.seed + 1, cfg.match_ratio)
    chunks: list[bytes] = []
    total = 0
    while total < cfg.tail_bytes:
        chunk = gen.take(500).line_bytes()
        chunks.append(chunk)
        total += len(chunk)
    return chunks


def write_with_rotation(path: Path, chunks: list[bytes]) -> None:
    """Write the chunks; halfway, rotate as lumberjack does (rename, new file)."""
    half = len(chunks) // 2
    out = open(path, "ab")  # noqa: SIM115 - reopened at the rotation below
    try:
        for index, chunk in enumerate(chunks):
            if index == half and index > 0:
                out.close()
                os.rename(path, path.parent / ROTATED_NAME)
                out = open(path, "ab")  # noqa: SIM115
            out.write(chunk)
            out.flush()
    finally:
        out.close()


def start_tail_agent(workdir: Path) -> tuple[procs.Agent, Path]:
    """`tail --from start` on a new, empty audit log under `workdir`, once it is ready."""
    logdir = workdir / "log"
    logdir.mkdir(parents=True)
    path = logdir / "audit.log"
    path.touch(mode=0o600)
    agent = procs.start_agent("tail", workdir, ["--audit-log", str(path), "--from", "start",
                                                "--poll-interval", "0.05"])
    try:
        agent.wait_ready()
    except BaseException:
        agent.stop()
        raise
    return agent, path


def wait_tail_lines(agent: procs.Agent, lines: int, timeout: float) -> None:
    """Wait until the tailer counted `lines` audit events; Unavailable if it cannot."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = agent.metric("healert_audit_events_total", 'source="tail"')
        if seen is not None and seen >= lines:
            return
        if agent.proc.poll() is not None:
            raise Unavailable(f"tail exited with {agent.proc.returncode}: {agent.log_tail()}")
        time.sleep(0.25)  # each poll renders /metrics: the tailer's CPU
    raise Unavailable(f"tail saw {seen} of {lines} lines before the deadline: "
                      f"{agent.log_tail()}")


def tail_once(tmp: Path, index: int, chunks: list[bytes], lines: int) -> tuple[float, float]:
    """One catch-up: (CPU seconds of the tailer, wall seconds) for all the lines."""
    agent, path = start_tail_agent(tmp / f"tail{index}")
    try:
        before = procs.cpu_seconds(agent.pid)
        start = time.perf_counter()
        write_with_rotation(path, chunks)
        wait_tail_lines(agent, lines, max(120.0, sum(map(len, chunks)) / MIB * 3))
        return procs.cpu_seconds(agent.pid) - before, time.perf_counter() - start
    finally:
        agent.stop()


def section_tail(rep: Report, cfg: Config, tmp: Path) -> None:
    """(e) tail catch-up over a rotated log, against orjson.loads per line of it."""
    chunks = log_chunks(cfg)
    lines = sum(chunk.count(b"\n") for chunk in chunks)
    size = sum(map(len, chunks)) / MIB

    def floor_pass() -> None:
        loads = orjson.loads
        for chunk in chunks:
            for line in chunk.splitlines():
                loads(line)

    floor = [lines / cpu_timed(floor_pass) for _ in range(cfg.reps)]
    rep.add("tail_floor", f"(e) orjson.loads per line, {size:.0f} MiB log", "lines/cpu-s",
            floor)
    per_cpu, mib_cpu, mib_wall = [], [], []
    for index in range(cfg.tail_reps):
        cpu, wall = tail_once(tmp, index, chunks, lines)
        per_cpu.append(lines / max(cpu, 1e-3))
        mib_cpu.append(size / max(cpu, 1e-3))
        mib_wall.append(size / wall)
    rep.add("tail_catchup", "(e) tail catch-up with rotation", "lines/cpu-s", per_cpu,
            ratio_to="tail_floor")
    rep.add("tail_mib_cpu", "    same, MiB per tailer CPU-second", "MiB/cpu-s", mib_cpu)
    rep.add("tail_mib_wall", "    same, MiB per wall-clock second", "MiB/s", mib_wall)


# --- output ----------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model, "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "platform": platform.platform(), "orjson": orjson.__version__}


def fmt(value: float) -> str:
    """Numbers for the table: thousands separators, 3 significant digits below 100."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def print_table(results: dict[str, Any]) -> None:
    """The one table: figure, median, min, max, unit, ratio to its floor and target."""
    mach = results["machine"]
    print(f"\nhealert-webhook benchmark ({results['mode']}), {mach['cpu_model']}, "
          f"{mach['cores']} cores, Python {mach['python']}, orjson {mach['orjson']}")
    print(f"workload: {results['workload']['events']} events, "
          f"{results['workload']['mib']:.1f} MiB, match ratio "
          f"{results['workload']['match_ratio']}, rules {results['rules']}")
    head = f"{'figure':<44} {'median':>11} {'min':>11} {'max':>11}  {'unit':<13} ratio"
    print(head)
    print("-" * len(head))
    for fig in results["figures"].values():
        ratio = ""
        if "ratio" in fig:
            ratio = f"{fig['ratio']:.2f}"
            if "target" in fig:
                ok = "ok" if fig["ratio"] >= fig["target"] else "BELOW"
                ratio += f" (target {fig['target']:.2f}: {ok})"
        elif "limit" in fig:
            ok = "ok" if fig["median"] < fig["limit"] else "ABOVE"
            ratio = f"(limit {fmt(fig['limit'])}: {ok})"
        print(f"{fig['label']:<44} {fmt(fig['median']):>11} {fmt(fig['min']):>11} "
              f"{fmt(fig['max']):>11}  {fig['unit']:<13} {ratio}")
    for name, reason in results["unavailable"].items():
        print(f"{name:<44} not available: {reason}")


def print_comparison(previous: dict[str, Any], results: dict[str, Any]) -> None:
    """Median now against the previous results file, figure by figure."""
    print(f"\ncompared with the previous run ({previous.get('finished', '?')}, "
          f"{previous.get('mode', '?')} mode, {previous.get('machine', {}).get('cpu_model')})")
    for key, fig in results["figures"].items():
        old = previous.get("figures", {}).get(key)
        if not old or not old.get("median"):
            continue
        change = (fig["median"] - old["median"]) / old["median"] * 100.0
        print(f"{fig['label']:<44} {fmt(old['median']):>11} -> {fmt(fig['median']):>11} "
              f"{fig['unit']:<13} {change:+.1f}%")


def profile_detection(cfg: Config, bodies: list[bytes]) -> None:
    """cProfile of (b), top functions by own time."""
    settings = Settings()
    pipeline = Pipeline(settings, make_detector(shipped_rules(), settings))
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(cfg.reps):
        detect_batches(pipeline, bodies)
    profiler.disable()
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(25)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description="Run the benchmark and print one table.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions")
    size.add_argument("--tiny", action="store_true", help="smoke-test sizes (seconds)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"results JSON (default {DEFAULT_OUTPUT.relative_to(REPO)})")
    parser.add_argument("--match-ratio", type=float, default=0.01)
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: "
                        "webhook,tls,tail,bigbatch")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of (b) and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every section, print the table (and comparison), write the results JSON."""
    args = parse_args(argv)
    base = MODES["tiny" if args.tiny else "quick" if args.quick else "full"]
    cfg = Config(**{**asdict(base), "match_ratio": args.match_ratio})
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    work = workload.generate(cfg.events, match_ratio=cfg.match_ratio, seed=cfg.seed)
    bodies = list(work.batches(cfg.batch))
    if args.profile:
        profile_detection(cfg, bodies)
        return 0
    rep = Report()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    rep.section("(a)/(b) in-process", lambda: section_inprocess(rep, cfg, work, bodies))
    with tempfile.TemporaryDirectory(prefix="healert-bench-") as tmp_name:
        tmp = Path(tmp_name)
        bodies_file = tmp / "bodies.json"
        bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
        sections: list[tuple[str, str, Callable[[], None]]] = [
            ("webhook", "(c)/(d)/(f) webhook HTTP",
             lambda: section_webhook(rep, cfg, tmp, bodies_file, len(work.items))),
            ("tls", "(c) webhook HTTPS",
             lambda: section_webhook_tls(rep, cfg, tmp, bodies_file, len(work.items))),
            ("tail", "(e) tail catch-up", lambda: section_tail(rep, cfg, tmp)),
            ("bigbatch", "(f) large batch RSS", lambda: section_big_batch(rep, cfg, tmp)),
        ]
        for name, title, func in sections:
            if name in skip:
                rep.unavailable[title] = "skipped (--skip)"
            else:
                rep.section(title, func)
    results = {
        "schema": 1, "mode": cfg.mode, "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
        "config": asdict(cfg), "rules": shipped_rules().source,
        "workload": {"events": len(work.items), "mib": sum(map(len, work.items)) / MIB,
                     "match_ratio": cfg.match_ratio, "expected_matches": len(work.expected),
                     "seed": cfg.seed, "batch": cfg.batch},
        "figures": rep.figures, "unavailable": rep.unavailable,
    }
    print_table(results)
    previous = None
    if args.output.is_file():
        try:
            previous = json.loads(args.output.read_text())
        except (OSError, ValueError):
            previous = None
    if previous:
        print_comparison(previous, results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nresults written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
