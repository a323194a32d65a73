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
from collections import Counter
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
from healert_webhook.fieldpass import FieldPass
from healert_webhook.outbox import Outbox
from healert_webhook.pipeline import Pipeline, gc_paused, make_detector
from healert_webhook.records import Stats
from healert_webhook.rules import DEFAULT_GITOPS, RuleSet, load_rules
from healert_webhook.sources import body as body_reading

from support import workload

MIB = 1024 * 1024
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "latest.json"
LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
# The load generator's TLS 1.3 suites in the apiserver's order (AES-128-GCM first).
APISERVER_TLS = Path(__file__).resolve().parent / "apiserver-tls.cnf"
ROTATED_NAME = "audit-2026-11-26T10-00-00.000.log"


@dataclass(frozen=True)
class Config:
    """Sizes and repetition counts of one benchmark mode (per stream)."""

    mode: str
    events: int            # events in the in-process and webhook workload
    reps: int              # repetitions of (b), (c)
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
# The streams (tests/support/workload.py), the headline first.
STREAMS = ("realistic", "small", "today")
TITLES = {
    "realistic": "realistic: ~1.1 KiB Metadata events, ~2.6% with objects (the headline)",
    "small": "small Metadata events (~800 B)",
    "today": "today's workload: 3.4 KiB events on average, 10% with 2-50 KiB objects",
}
# Ratios to the per-event floor measured around each row. On today's workload the
# target is no lower than today's code read (the run of 2026-12-01, docs/performance.md).
ISSUE_TARGETS = {"webhook_mtls": 1.0, "webhook_http": 1.3, "tail_catchup": 1.0}
TARGETS: dict[str, dict[str, float]] = {
    "realistic": ISSUE_TARGETS, "small": ISSUE_TARGETS,
    "today": {"webhook_mtls": 1.37, "webhook_http": 1.72, "tail_catchup": 1.51},
}
# Figures with an upper bound: ack p99 of Metadata-level batches in ms, steady-load RSS
# in MiB (the 60 MiB batch's is computed from its size).
LIMITS = {"realistic.ack_p99": 10.0, "today.ack_p99_metadata": 10.0,
          "realistic.rss_webhook": 100.0, "today.rss_webhook": 100.0}


class Report:
    """Figures (median, min, max of repetitions) and the sections that could not run."""

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, Any]] = {}
        self.unavailable: dict[str, str] = {}
        self.floors: dict[str, list[float]] = {}  # every floor measured, by stream

    def add(self, key: str, label: str, unit: str, values: list[float], *,
            floor: list[float] | None = None, ratio_to: str | None = None,
            pool: bool = True) -> None:
        """Record a figure `stream.name`; with `floor` (the per-event floor measured
        around it) its median's ratio to their median (and, with `pool`, the floors
        counted in the stream's floor figure), with `ratio_to` its ratio to that figure
        (a field pass to today's)."""
        fig: dict[str, Any] = {"label": label, "unit": unit,
                               "median": statistics.median(values), "min": min(values),
                               "max": max(values), "values": values}
        stream, _, name = key.partition(".")
        if floor:
            fig["floor"] = statistics.median(floor)
            fig["floor_values"] = floor
            fig["ratio"] = fig["median"] / fig["floor"]
            if pool:
                self.floors.setdefault(stream, []).extend(floor)
        elif ratio_to is not None and ratio_to in self.figures:
            fig["ratio_to"] = ratio_to
            fig["ratio"] = fig["median"] / self.figures[ratio_to]["median"]
        target = TARGETS.get(stream, {}).get(name)
        if target is not None and "ratio" in fig:
            fig["target"] = target
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


# --- the floor ---------------------------------------------------------------------------

def cpu_timed(func: Callable[[], object]) -> float:
    """CPU seconds of this process spent in `func`."""
    start = time.process_time()
    func()
    return time.process_time() - start


def loads_each(items: list[bytes]) -> None:
    """The floor: one orjson.loads per event."""
    loads = orjson.loads
    for item in items:
        loads(item)


class Floor:
    """`orjson.loads` of each event on its own, per CPU-second of this process: measured
    before and after every repetition of a row, because this machine's speed wanders by
    up to a third within minutes and a ratio must divide by the floor of its moment.

    `items` are the events' bytes, or chunks of log lines (`lines` True) parsed a line
    at a time, as the tail reads them.
    """

    def __init__(self, items: list[bytes], lines: bool = False) -> None:
        self.items = items
        self.lines = lines
        self.count = sum(chunk.count(b"\n") for chunk in items) if lines else len(items)
        self._parse()  # warm caches once

    def _parse(self) -> None:
        if not self.lines:
            loads_each(self.items)
            return
        loads = orjson.loads
        for chunk in self.items:
            for line in chunk.splitlines():
                loads(line)

    def once(self) -> float:
        """One measurement, events per CPU-second."""
        return self.count / cpu_timed(self._parse)

    def around(self, reps: int, rep: Callable[[], float]) -> tuple[list[float], list[float]]:
        """`rep()` `reps` times with the floor measured before, between and after:
        (the row's values, the floors)."""
        floors, values = [self.once()], []
        for _ in range(reps):
            values.append(rep())
            floors.append(self.once())
        return values, floors


# --- in-process sections -----------------------------------------------------------------

def shipped_rules() -> RuleSet:
    """The repository's rules.yaml (what `serve` loads from the repo), else the packaged."""
    path = REPO / "rules.yaml"
    return load_rules(path if path.is_file() else None)


def detect_batches(pipeline: Pipeline, bodies: list[bytes]) -> None:
    """What the webhook does per request, minus HTTP and the outbox: parse and detect
    with the cyclic GC paused, the parsed batch dropped before it runs again."""
    for body in bodies:
        with gc_paused():  # held across the parse too, as the webhook's worker does
            pipeline.evaluate_items(batch_items(orjson.loads(body)), "bench")


def evaluate_read(pipeline: Pipeline, bodies: list[bytes]) -> None:
    """The webhook's own path minus HTTP and the outbox: the field pass (small events) or
    simdjson (large ones) reads each body and rules out what it can, orjson parses the
    rest for detection."""
    for body in bodies:
        plan = batches.reading(body)
        if plan is None or body_reading.evaluate(pipeline, body, plan, "bench", len(body)) is None:
            raise Unavailable("the webhook's reading did not take a workload body")


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


def per_event_us(count: int, func: Callable[[], object]) -> float:
    """CPU microseconds per event of one call of `func` over `count` events."""
    return cpu_timed(func) / count * 1e6


def prefilter_lines(pass_: prefilter.Prefilter, lines: list[bytes]) -> None:
    """simdjson's field pass on log lines (the tail's before the msgspec field pass):
    simdjson reads each, its fields are read through pysimdjson's objects and decided."""
    parse, reason, obj = prefilter.parse, pass_.reason, simdjson.Object
    for line in lines:
        doc = parse(line)
        if doc.__class__ is obj:
            reason(doc)
        del doc


def fieldpass_lines(pass_: FieldPass, lines: list[bytes]) -> None:
    """The msgspec field pass on log lines (`FieldPass.reason`)."""
    reason = pass_.reason
    for line in lines:
        reason(line)


def prefilter_bodies(pass_: prefilter.Prefilter, bodies: list[bytes]) -> None:
    """Today's field pass on webhook bodies: simdjson reads each body, each item's fields
    are read through pysimdjson's objects and decided, candidates are written out."""
    reason = pass_.reason
    for body in bodies:
        items = batch_items(prefilter.parse(body), simdjson.Object, simdjson.Array)
        for item in items:
            if reason(item) is None:
                item.mini  # noqa: B018 - the candidate's bytes, for orjson
        del items


def fieldpass_bodies(pass_: FieldPass, bodies: list[bytes]) -> None:
    """The msgspec field pass on webhook bodies as the webhook runs it (`sort_body`): the
    body split into its items' bytes, each item's fields decoded and decided, the skip
    reasons counted once a body; a candidate's bytes are its item's."""
    for body in bodies:
        pass_.sort_body(body, len(body), Counter())


def section_inprocess(rep: Report, cfg: Config, stream: str, work: workload.Workload,
                      bodies: list[bytes], floor: Floor) -> None:
    """(b) parse + detect per 400-event batch, today's path, and the field passes."""
    n = len(work.items)
    key = f"{stream}."

    def row(name: str, label: str, func: Callable[[], object]) -> None:
        func()  # warm
        values, floors = floor.around(cfg.reps, lambda: n / cpu_timed(func))
        rep.add(key + name, label, "events/cpu-s", values, floor=floors)

    row("floor_bodies", "    orjson.loads per 400-event body, GC on",
        lambda: loads_bodies(bodies, False))
    row("floor_bodies_paused", "    same, GC paused (as the webhook does)",
        lambda: loads_bodies(bodies, True))
    settings = Settings()
    pipeline = Pipeline(settings, make_detector(shipped_rules(), settings))
    row("detect_inprocess", "(b) parse + detect, 400/batch, GC paused",
        lambda: detect_batches(pipeline, bodies))
    row("prefilter_inprocess", "(b) the webhook's reading + parse the rest + detect",
        lambda: evaluate_read(pipeline, bodies))
    rep.add(key + "ruled_out", "    events the pre-filter rules out without a parse", "%",
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
    rep.add(key + "detect_only", "    Detector.detect alone (pre-parsed)", "events/cpu-s", only)
    section_view(rep, cfg, key, parsed, detector, detect_with)
    section_fieldpass(rep, cfg, stream, work, bodies, pipeline)
    section_store(rep, cfg, stream, pipeline, bodies, n)


def store_all(pipeline: Pipeline, batches_of: list[list[Any]]) -> None:
    """Store each batch's friction events, as the webhook stores a body's."""
    for frictions in batches_of:
        pipeline.store(frictions, "bench")


def section_store(rep: Report, cfg: Config, stream: str, pipeline: Pipeline,
                  bodies: list[bytes], n: int) -> None:
    """What storing each body's friction events costs, per event of the stream: the
    first time (a synced commit a body, as for every batch the apiserver sends), and
    resent (answered from the outbox's memory of the keys it committed, as the (c)
    rows' passes after the first are)."""
    found = [body_reading.evaluate(pipeline, body, batches.reading(body) or
                                   batches.plan(body)[0], "bench", len(body))
             for body in bodies]
    batches_of = [f.frictions for f in found if f is not None]
    first, again = [], []
    for _ in range(cfg.reps):
        with tempfile.TemporaryDirectory(prefix="healert-store-") as tmp:
            outbox = Outbox(Path(tmp) / "outbox.db", Settings())
            try:
                storing = Pipeline(Settings(), pipeline.detector, outbox)
                first.append(per_event_us(n, lambda p=storing: store_all(p, batches_of)))
                again.append(per_event_us(n, lambda p=storing: store_all(p, batches_of)))
            finally:
                outbox.close()
    rep.add(f"{stream}.store_first", "store: each body's friction events, first time",
            "us/event", first)
    rep.add(f"{stream}.store_resent", "    same, the bodies resent (the outbox's memory)",
            "us/event", again)


def section_fieldpass(rep: Report, cfg: Config, stream: str, work: workload.Workload,
                      bodies: list[bytes], pipeline: Pipeline) -> None:
    """The cost per event of deciding from the five fields: today's (simdjson's reading
    through pysimdjson) and the msgspec field pass (healert_webhook/fieldpass.py), on log
    lines and on webhook bodies; the ratio is the field pass's cost to today's."""
    n = len(work.items)
    lines = [line.rstrip(b"\n") for line in work.lines()]
    today = pipeline.rules.prefilter
    fast = FieldPass(pipeline.detector.index)
    rows: list[tuple[str, str, Callable[[], object], str | None]] = [
        ("fields_prefilter_line", "field pass by simdjson, per line (before)",
         lambda: prefilter_lines(today, lines), None),
        ("fields_msgspec_line", "    msgspec field pass, per line (the tail)",
         lambda: fieldpass_lines(fast, lines), "fields_prefilter_line"),
        ("fields_prefilter_body", "field pass by simdjson, per body",
         lambda: prefilter_bodies(today, bodies), None),
        ("fields_msgspec_body", "    msgspec field pass, per body (small events)",
         lambda: fieldpass_bodies(fast, bodies), "fields_prefilter_body"),
    ]
    for name, label, func, compared in rows:
        func()  # warm (and fill the field pass's cache, as a running agent has)
        with gc_paused():
            values = [per_event_us(n, func) for _ in range(cfg.reps)]
        rep.add(f"{stream}.{name}", label, "us/event", values,
                ratio_to=f"{stream}.{compared}" if compared else None)


FILLER_PODS = 100_000


def section_view(rep: Report, cfg: Config, key: str, parsed: list[Any], detector: Any,
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
    rep.add(key + "detect_heap", f"    same, {FILLER_PODS:,} pods of a view in memory",
            "events/cpu-s", rates["plain"])
    rep.add(key + "detect_only_view", "    same, reading the view", "events/cpu-s", rates["view"],
            ratio_to=key + "detect_heap")
    rep.add(key + "resolved", "    events whose entity was resolved (they fired)", "%",
            [100.0 * sum(stats.entities.values()) / max(stats.events, 1)])
    rep.add(key + "detect_ruled_out", "    Detector.detect, ruled-out events only", "events/cpu-s",
            rates["ruled"])
    rep.add(key + "detect_ruled_out_view", "    same, reading the view", "events/cpu-s",
            rates["ruled_view"], ratio_to=key + "detect_ruled_out")


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
    env = None
    if pki is not None:
        argv += ["--cafile", str(pki.ca), "--client-cert", str(pki.client_cert),
                 "--client-key", str(pki.client_key)]
        env = {**os.environ, "OPENSSL_CONF": str(APISERVER_TLS)}  # the apiserver's suites
    run = subprocess.run(argv + mode_args, capture_output=True, check=False, timeout=1800,
                         env=env)
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
                       pki: procs.PKI | None, floor: Floor) -> None:
    """Events per server CPU-second over `reps` loadgen runs (after one warm-up pass),
    with the floor measured before, between and after them."""
    args = ["throughput", "--connections", str(cfg.connections)]
    loadgen(url, bodies_file, [*args, "--passes", "1"], pki)
    per_wall: list[float] = []

    def one() -> float:
        before = procs.cpu_seconds(agent.pid)
        result = loadgen(url, bodies_file, [*args, "--passes", str(cfg.passes)], pki)
        spent = procs.cpu_seconds(agent.pid) - before
        per_wall.append(events * cfg.passes / result["wall_s"])
        return events * cfg.passes / max(spent, 1e-3)

    per_cpu, floors = floor.around(cfg.reps, one)
    rep.add(key, label, "events/cpu-s", per_cpu, floor=floors)
    rep.add(f"{key}_wall", "    same, per wall-clock second", "events/s", per_wall)


def ack_latencies(url: str, bodies_file: Path, cfg: Config) -> list[float]:
    """Ack latencies (ms) of `latency_batches` batches posted at 10 a second."""
    result = loadgen(url, bodies_file, ["rate", "--per-second", "10", "--count",
                                        str(cfg.latency_batches)])
    return sorted(result["latencies_ms"])


def p99(latencies: list[float]) -> float:
    """The 99th percentile of sorted latencies."""
    return latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]


def section_webhook(rep: Report, cfg: Config, stream: str, tmp: Path, bodies_file: Path,
                    events: int, floor: Floor) -> None:
    """(c) plain HTTP end to end, (d) ack latency (the realistic stream, and today's
    batches as they are and at Metadata level), (f) peak RSS under that load."""
    agent = procs.start_server(tmp / f"http-{stream}")
    key = f"{stream}."
    try:
        url = server_url(agent, False)
        measure_throughput(rep, cfg, agent, url, bodies_file, events, key + "webhook_http",
                           "(c) webhook HTTP end to end (server CPU)", None, floor)
        if stream == "realistic":
            runs = [ack_latencies(url, bodies_file, cfg) for _ in range(cfg.latency_reps)]
            rep.add(key + "ack_p50", "(d) ack latency p50, 400/batch @10/s", "ms",
                    [statistics.median(lat) for lat in runs])
            rep.add(key + "ack_p99", "(d) ack latency p99", "ms", [p99(lat) for lat in runs])
            rep.add(key + "ack_max", "(d) ack latency max", "ms", [lat[-1] for lat in runs])
        if stream == "today":
            runs = [ack_latencies(url, bodies_file, cfg) for _ in range(cfg.latency_reps)]
            rep.add(key + "ack_p99", "(d) ack latency p99, 400/batch @10/s", "ms",
                    [p99(lat) for lat in runs])
            meta_file = bodies_file.with_name("bodies-metadata.json")
            meta_file.write_bytes(metadata_bodies(bodies_file.read_bytes()))
            meta = [ack_latencies(url, meta_file, cfg) for _ in range(cfg.latency_reps)]
            rep.add(key + "ack_p99_metadata", "(d) same at Metadata level (objects dropped)",
                    "ms", [p99(lat) for lat in meta])
        rep.add(key + "rss_webhook", "(f) peak RSS of serve during (c)+(d)", "MiB",
                [procs.peak_rss_mib(agent.pid)])
    finally:
        agent.stop()


def section_webhook_tls(rep: Report, cfg: Config, stream: str, tmp: Path,
                        bodies_file: Path, events: int, floor: Floor) -> None:
    """(c) the production path: TLS with the apiserver's client certificate required and
    its name checked (certificates from certs/gen-certs.sh), the load generator asking for
    the apiserver's TLS 1.3 suites."""
    workdir = tmp / f"https-{stream}"
    workdir.mkdir()
    pki = procs.mtls_pki(workdir)
    agent = procs.start_server(workdir, pki)
    try:
        measure_throughput(rep, cfg, agent, server_url(agent, True), bodies_file, events,
                           f"{stream}.webhook_mtls",
                           "(c) webhook HTTPS + client certificate (server CPU)", pki, floor)
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
        size = len(body) / MIB
        LIMITS["batch.rss_big_batch"] = 2 * size + 100
        rep.add("batch.rss_idle", "(f) peak RSS of serve at start", "MiB", [idle])
        rep.add("batch.rss_big_batch", f"(f) peak RSS, {size:.0f} MiB batch", "MiB",
                [procs.peak_rss_mib(agent.pid)])
    finally:
        agent.stop()


# --- tail section ----------------------------------------------------------------------

def log_chunks(cfg: Config, stream: str = "today") -> list[bytes]:
    """Whole-line chunks of a stream (another seed than the webhook's) adding up to at
    least `tail_bytes`: 500 events each, ~1.7 MiB of today's workload."""
    gen = workload.generator(stream, cfg.seed + 1, cfg.match_ratio)
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


def tail_once(tmp: Path, name: str, chunks: list[bytes], lines: int) -> tuple[float, float]:
    """One catch-up: (CPU seconds of the tailer, wall seconds) for all the lines."""
    agent, path = start_tail_agent(tmp / name)
    try:
        before = procs.cpu_seconds(agent.pid)
        start = time.perf_counter()
        write_with_rotation(path, chunks)
        wait_tail_lines(agent, lines, max(120.0, sum(map(len, chunks)) / MIB * 3))
        return procs.cpu_seconds(agent.pid) - before, time.perf_counter() - start
    finally:
        agent.stop()


def section_tail(rep: Report, cfg: Config, stream: str, tmp: Path) -> None:
    """(e) tail catch-up over a rotated log, against orjson.loads per line of it measured
    before, between and after the catch-ups."""
    chunks = log_chunks(cfg, stream)
    floor = Floor(chunks, lines=True)
    size = sum(map(len, chunks)) / MIB
    mib_cpu, mib_wall = [], []
    runs = iter(range(cfg.tail_reps))

    def one() -> float:
        cpu, wall = tail_once(tmp, f"tail-{stream}-{next(runs)}", chunks, floor.count)
        mib_cpu.append(size / max(cpu, 1e-3))
        mib_wall.append(size / wall)
        return floor.count / max(cpu, 1e-3)

    per_cpu, floors = floor.around(cfg.tail_reps, one)
    rep.add(f"{stream}.tail_floor", f"(e) orjson.loads per line, {size:.0f} MiB log",
            "lines/cpu-s", floors)
    rep.add(f"{stream}.tail_catchup", "(e) tail catch-up with rotation", "lines/cpu-s",
            per_cpu, floor=floors, pool=False)
    rep.add(f"{stream}.tail_mib_cpu", "    same, MiB per tailer CPU-second", "MiB/cpu-s",
            mib_cpu)
    rep.add(f"{stream}.tail_mib_wall", "    same, MiB per wall-clock second", "MiB/s",
            mib_wall)


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
            "usable_cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(),
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "platform": platform.platform(), "orjson": orjson.__version__}


def fmt(value: float) -> str:
    """Numbers for the table: thousands separators, 3 significant digits below 100."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def verdict(fig: dict[str, Any]) -> str:
    """The ratio column: the ratio, and the target or limit it meets or misses."""
    if "ratio" in fig:
        text = f"{fig['ratio']:.2f}"
        if "floor" in fig:
            text += f" of {fmt(fig['floor'])}"
        if "target" in fig:
            ok = "ok" if fig["ratio"] >= fig["target"] else "BELOW"
            text += f" (target {fig['target']:.2f}: {ok})"
        return text
    if "limit" in fig:
        ok = "ok" if fig["median"] < fig["limit"] else "ABOVE"
        return f"(limit {fmt(fig['limit'])}: {ok})"
    return ""


def print_table(results: dict[str, Any]) -> None:
    """The one table, a part per stream: figure, median, min, max, unit, and its ratio to
    the floor measured around it (or to today's field pass), with targets and limits."""
    mach = results["machine"]
    print(f"\nhealert-webhook benchmark ({results['mode']}), {mach['cpu_model']}, "
          f"{mach['cores']} cores, Python {mach['python']}, orjson {mach['orjson']}, "
          f"rules {results['rules']}")
    loads = [results.get("load_at_start"), mach.get("load_average")]
    print(f"{results['started']} to {results['finished']}; load average (1, 5, 15 min) at "
          "start and end: " + ", then ".join(
              "/".join(f"{x:.1f}" for x in load) for load in loads if load))
    head = f"{'figure':<52} {'median':>11} {'min':>11} {'max':>11}  {'unit':<13} ratio"
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, fig in results["figures"].items():
        groups.setdefault(key.partition(".")[0], []).append(fig)
    for group, figs in groups.items():
        about = results["workloads"].get(group)
        title = TITLES.get(group, "the large batch")
        print(f"\n== {title}")
        if about:
            print(f"   {about['events']} events, {about['mib']:.1f} MiB, "
                  f"{about['mean_bytes']:.0f} B on average, match ratio "
                  f"{about['match_ratio']}; ratios against the per-event floor measured "
                  "around each row")
        print(head)
        print("-" * len(head))
        for fig in figs:
            print(f"{fig['label']:<52} {fmt(fig['median']):>11} {fmt(fig['min']):>11} "
                  f"{fmt(fig['max']):>11}  {fig['unit']:<13} {verdict(fig)}")
    for name, reason in results["unavailable"].items():
        print(f"{name:<52} not available: {reason}")


def previous_figure(previous: dict[str, Any], key: str) -> dict[str, Any] | None:
    """`key`'s figure in a previous results file (today's workload had no prefix in the
    files before the streams, schema 1)."""
    figures = previous.get("figures", {})
    if key in figures:
        return figures[key]  # type: ignore[no-any-return]
    stream, _, name = key.partition(".")
    if previous.get("schema", 1) == 1 and stream in ("today", "batch"):
        return figures.get(name)  # type: ignore[no-any-return]
    return None


def print_comparison(previous: dict[str, Any], results: dict[str, Any]) -> None:
    """Median now against the previous results file, figure by figure."""
    print(f"\ncompared with the previous run ({previous.get('finished', '?')}, "
          f"{previous.get('mode', '?')} mode, {previous.get('machine', {}).get('cpu_model')})")
    for key, fig in results["figures"].items():
        old = previous_figure(previous, key)
        if not old or not old.get("median"):
            continue
        change = (fig["median"] - old["median"]) / old["median"] * 100.0
        ratios = ""
        if "ratio" in fig and "ratio" in old:
            ratios = f"   ratio {old['ratio']:.2f} -> {fig['ratio']:.2f}"
        print(f"{key:<34} {fmt(old['median']):>11} -> {fmt(fig['median']):>11} "
              f"{fig['unit']:<13} {change:+.1f}%{ratios}")


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
    parser.add_argument("--streams", default=",".join(STREAMS),
                        help=f"comma-separated streams to measure: {','.join(STREAMS)}")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: "
                        "inprocess,webhook,tls,tail,bigbatch")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of (b) on today's workload and exit")
    args = parser.parse_args(argv)
    args.streams = [s.strip() for s in args.streams.split(",") if s.strip()]
    unknown = set(args.streams) - set(STREAMS)
    if unknown or not args.streams:
        parser.error(f"--streams takes some of {','.join(STREAMS)}")
    return args


def measure_stream(rep: Report, cfg: Config, stream: str, skip: set[str], tmp: Path
                   ) -> dict[str, Any]:
    """Every section of one stream; what its workload is."""
    work = workload.stream(stream, cfg.events, match_ratio=cfg.match_ratio, seed=cfg.seed)
    bodies = list(work.batches(cfg.batch))
    bodies_file = tmp / f"bodies-{stream}.json"
    bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
    floor = Floor(work.items)
    events = len(work.items)
    sections: list[tuple[str, str, Callable[[], None]]] = [
        ("inprocess", "(b) in-process",
         lambda: section_inprocess(rep, cfg, stream, work, bodies, floor)),
        ("webhook", "(c)/(d)/(f) webhook HTTP",
         lambda: section_webhook(rep, cfg, stream, tmp, bodies_file, events, floor)),
        ("tls", "(c) webhook HTTPS",
         lambda: section_webhook_tls(rep, cfg, stream, tmp, bodies_file, events, floor)),
        ("tail", "(e) tail catch-up", lambda: section_tail(rep, cfg, stream, tmp)),
    ]
    for name, title, func in sections:
        if name in skip:
            rep.unavailable[f"{stream}: {title}"] = "skipped (--skip)"
        else:
            rep.section(f"{stream}: {title}", func)
    size = sum(map(len, work.items))
    return {"events": events, "mib": size / MIB, "mean_bytes": size / max(events, 1),
            "match_ratio": cfg.match_ratio, "expected_matches": len(work.expected),
            "seed": cfg.seed, "batch": cfg.batch}


def main(argv: list[str] | None = None) -> int:
    """Run every section of every stream, print the table (and comparison), write the
    results JSON."""
    args = parse_args(argv)
    base = MODES["tiny" if args.tiny else "quick" if args.quick else "full"]
    cfg = Config(**{**asdict(base), "match_ratio": args.match_ratio})
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.profile:
        work = workload.generate(cfg.events, match_ratio=cfg.match_ratio, seed=cfg.seed)
        profile_detection(cfg, list(work.batches(cfg.batch)))
        return 0
    rep = Report()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_at_start = os.getloadavg()  # other work on the machine skews latencies most
    workloads: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="healert-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for stream in args.streams:
            workloads[stream] = measure_stream(rep, cfg, stream, skip, tmp)
        if "bigbatch" in skip:
            rep.unavailable["(f) large batch RSS"] = "skipped (--skip)"
        else:
            rep.section("(f) large batch RSS", lambda: section_big_batch(rep, cfg, tmp))
    for stream, floors in rep.floors.items():  # every floor of a stream, for its drift
        rep.figures[f"{stream}.floor"] = {
            "label": "(a) orjson.loads per event, every floor measured", "unit": "events/cpu-s",
            "median": statistics.median(floors), "min": min(floors), "max": max(floors),
            "values": floors}
    results = {
        "schema": 2, "mode": cfg.mode, "started": started, "load_at_start": load_at_start,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
        "config": asdict(cfg), "rules": shipped_rules().source, "workloads": workloads,
        "figures": ordered(rep.figures, args.streams), "unavailable": rep.unavailable,
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


# The rows of a stream in the order the table shows them (the headline rows first).
ORDER = ("floor", "webhook_mtls", "webhook_mtls_wall", "webhook_http", "webhook_http_wall",
         "tail_catchup", "tail_floor", "tail_mib_cpu", "tail_mib_wall", "ack_p50", "ack_p99",
         "ack_max", "ack_p99_metadata", "rss_webhook", "detect_inprocess",
         "prefilter_inprocess", "ruled_out", "detect_only", "floor_bodies",
         "floor_bodies_paused", "fields_prefilter_line", "fields_msgspec_line",
         "fields_prefilter_body", "fields_msgspec_body", "rss_idle", "rss_big_batch")


def ordered(figures: dict[str, Any], streams: list[str]) -> dict[str, Any]:
    """The figures grouped by stream (in `streams`' order, the batch last), each group in
    ORDER."""
    groups = [*streams, "batch"]

    def rank(key: str) -> tuple[int, int]:
        group, _, name = key.partition(".")
        return (groups.index(group) if group in groups else len(groups),
                ORDER.index(name) if name in ORDER else len(ORDER))

    return {key: figures[key] for key in sorted(figures, key=rank)}


if __name__ == "__main__":
    sys.exit(main())
