"""Realistic, deterministic audit.k8s.io/v1 workloads for tests and benchmarks.

A real cluster's audit stream is mostly Kubernetes talking to itself: kubelets renewing
node leases, controllers watching and updating pods, endpoint slices and configmaps.
Humans are a small share, and bypasses (exec, port-forward, secret reads, direct
Deployment changes) a smaller one. This module produces such a stream from a seed, with
a chosen share of events built to match a shipped rule, and says which ones they are.

Events are serialized once, in the apiserver's field order, as EventList items (no
`kind`/`apiVersion`); `Workload.lines()` adds the two fields the log file carries.
Speed comes from shared, pre-built object bodies (spec, status, managedFields) that only
get a fresh metadata head per event: 200 MiB take a few seconds.

Three streams (`stream`): "today", the benchmark's first workload (`generate`: every audit
level, 3.4 KiB events on average, a tenth carrying 2-50 KiB objects; its bytes for a seed
never change, as tests and recorded figures depend on them); "realistic", what the
apiserver sends under a sane audit policy (`RecordedStream`: ~1 KiB Metadata events, a few
percent with objects); and "small" (~800 B Metadata events).

CLI: `python tests/support/workload.py --stream today|realistic|small --events N
--match-ratio 0.01 --seed 1 --format lines|eventlist --batch 400 > out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import heapq
import json
import math
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

if __package__ in (None, ""):  # run as a script: the tests folder holds `support`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.events import event_list

LINE_HEAD = b'{"kind":"Event","apiVersion":"audit.k8s.io/v1",'
BASE_TIME_US = 1_795_687_200 * 1_000_000  # 2026-11-26T10:00:00Z: fixed, never the clock
GENERATED_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
BYPASS_ANNOTATION = ("policy.admission.k8s.io/bypass", "true")

K8S_VERSION = "v1.30.4"
K8S_COMMIT = "a51b3b7"
NODE_COUNT = 24
APP_NAMESPACES = ("payments", "checkout", "catalog", "search", "identity", "orders",
                  "shipping", "notifications", "data-platform", "web")
APPS = ("api", "worker", "gateway", "db-proxy", "frontend", "scheduler", "cache")
SYSTEM_NAMESPACES = ("kube-system", "monitoring", "argocd", "cert-manager", "istio-system")
HUMANS = (
    ("oidc:jane@example.com", ("oidc:platform-team", "system:authenticated")),
    ("oidc:raj.patel@example.com", ("oidc:payments-devs", "system:authenticated")),
    ("oidc:li.wei@example.com", ("oidc:sre", "system:authenticated")),
    ("oidc:maria.garcia@example.com", ("oidc:checkout-devs", "system:authenticated")),
    ("kate", ("developers", "system:authenticated")),  # client certificate user
    ("ops-breakglass", ("system:masters", "system:authenticated")),
    ("system:admin", ("system:masters", "system:authenticated")),
)
KUBECTL_AGENTS = (
    "kubectl/v1.31.2 (darwin/arm64) kubernetes/5864a46",
    "kubectl/v1.30.5 (linux/amd64) kubernetes/74e84a9",
    "kubectl/v1.31.1 (windows/amd64) kubernetes/948afe5",
)
OLD_KUBECTL = "kubectl/v1.28.4 (linux/amd64) kubernetes/bae2c62"  # SPDY: create on pods/exec
_HEAD_BYTES = 700  # about what `_object` adds around a shared body
ALLOW_RBAC = 'RBAC: allowed by ClusterRoleBinding "{0}" of ClusterRole "{0}" to {1}'


@dataclass(frozen=True, slots=True)
class Expected:
    """An event built to match a shipped rule."""

    index: int       # position in the stream (0-based)
    audit_id: str
    scenario: str    # e.g. "exec-websocket"
    rule: str        # the shipped rule it is built to fire (others may fire too)
    stage: str


@dataclass
class Workload:
    """Serialized events (EventList item form) and the ones built to match."""

    items: list[bytes]
    expected: list[Expected] = field(default_factory=list)

    def lines(self) -> Iterator[bytes]:
        """Log-file lines: each item with kind/apiVersion first, newline-terminated."""
        for item in self.items:
            yield to_line(item)

    def line_bytes(self) -> bytes:
        """The whole stream as one audit log file's content."""
        return b"".join(self.lines())

    def batches(self, size: int = 400) -> Iterator[bytes]:
        """EventList request bodies of up to `size` items, ready to POST."""
        for start in range(0, len(self.items), size):
            yield event_list(self.items[start:start + size])

    def expected_ids(self) -> set[str]:
        """auditIDs of the requests built to match."""
        return {exp.audit_id for exp in self.expected}


def to_line(item: bytes) -> bytes:
    """An EventList item as an audit log line (kind/apiVersion first, as the apiserver)."""
    return LINE_HEAD + item[1:] + b"\n"


# --- small deterministic helpers -------------------------------------------------------

def _suffix(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(GENERATED_ALPHABET, k=length))


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


class _Clock:
    """Microsecond timestamps from a fixed base; the prefix is cached per minute."""

    def __init__(self) -> None:
        self.now = BASE_TIME_US
        self._minute = -1
        self._prefix = ""

    def fmt(self, micros: int) -> str:
        """RFC 3339 with microseconds, as the apiserver writes audit timestamps."""
        minute, rest = divmod(micros, 60_000_000)
        if minute != self._minute:
            when = datetime.datetime.fromtimestamp(minute * 60, tz=datetime.UTC)
            self._prefix = when.strftime("%Y-%m-%dT%H:%M:")
            self._minute = minute
        sec, us = divmod(rest, 1_000_000)
        return f"{self._prefix}{sec:02d}.{us:06d}Z"


def _go_duration(micros: int) -> str:
    if micros >= 60_000_000:
        minutes, rest = divmod(micros, 60_000_000)
        return f"{minutes}m{rest / 1e6:.6g}s"
    if micros >= 1_000_000:
        return f"{micros / 1e6:.9g}s"
    return f"{micros / 1e3:.6g}ms"


# --- object bodies (shared, pre-built) -------------------------------------------------

class _Body(NamedTuple):
    kind: str
    api_version: str
    annotations: dict[str, str]
    managed: list[Any]
    rest: dict[str, Any]   # spec/status or data, shared between events
    size: int              # serialized size of everything but the per-event head


def _env(rng: random.Random, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(count):
        name = f"{rng.choice(('APP', 'FEATURE', 'DB', 'CACHE', 'OTEL', 'JAVA'))}_{i}_" \
               f"{_suffix(rng, 6).upper()}"
        if i % 5 == 4:
            out.append({"name": name, "valueFrom": {"secretKeyRef": {
                "name": "app-credentials", "key": name.lower()}}})
        else:
            out.append({"name": name, "value": _suffix(rng, rng.randint(8, 60))})
    return out


def _container(rng: random.Random, name: str, env_count: int) -> dict[str, Any]:
    return {
        "name": name,
        "image": f"registry.example.com/{name}:{rng.randint(1, 9)}.{rng.randint(0, 40)}."
                 f"{rng.randint(0, 20)}",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
        "env": _env(rng, env_count),
        "resources": {"limits": {"memory": "512Mi"},
                      "requests": {"cpu": "250m", "memory": "256Mi"}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                          "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1,
                          "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"},
                           "timeoutSeconds": 1, "periodSeconds": 5, "successThreshold": 1,
                           "failureThreshold": 3},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}},
    }


def _fields_for(containers: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for cont in containers:
        env: dict[str, Any] = {f'k:{{"name":"{e["name"]}"}}': {".": {}, "f:name": {}, "f:value": {}}
               for e in cont["env"]}
        spec[f'k:{{"name":"{cont["name"]}"}}'] = {
            ".": {}, "f:env": {".": {}, **env}, "f:image": {}, "f:imagePullPolicy": {},
            "f:name": {}, "f:ports": {".": {}}, "f:resources": {".": {}}}
    return {"f:spec": {"f:template": {"f:spec": {"f:containers": spec}}}}


def _pod_spec(rng: random.Random, env_count: int) -> dict[str, Any]:
    # Draw the sidecar choice first: `_sized` replays the same random state with a growing
    # env_count, so the size only grows with env_count when the shape stays the same.
    sidecar = rng.random() < 0.4
    containers = [_container(rng, "app", env_count)]
    if sidecar:
        containers.append(_container(rng, "sidecar", max(2, env_count // 4)))
    return {
        "volumes": [{"name": "config", "configMap": {"name": "app-config",
                                                     "defaultMode": 420}}],
        "containers": containers,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "app",
        "serviceAccount": "app",
        "securityContext": {"runAsUser": 10001, "fsGroup": 10001},
        "schedulerName": "default-scheduler",
        "enableServiceLinks": True,
    }


def _managed(manager: str, operation: str, fields: dict[str, Any],
             subresource: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"manager": manager, "operation": operation, "apiVersion": "v1",
                             "time": "2026-11-20T08:14:03Z", "fieldsType": "FieldsV1",
                             "fieldsV1": fields}
    if subresource:
        entry["subresource"] = subresource
    return entry


def _deployment_body(rng: random.Random, env_count: int) -> _Body:
    template = _pod_spec(rng, env_count)
    fields = _fields_for(template["containers"])
    spec = {
        "replicas": rng.choice((2, 3, 4, 6)),
        "selector": {"matchLabels": {"app.kubernetes.io/instance": "app"}},
        "template": {"metadata": {"creationTimestamp": None,
                                  "labels": {"app.kubernetes.io/instance": "app"}},
                     "spec": template},
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
        "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
    }
    status = {"observedGeneration": 7, "replicas": spec["replicas"],
              "updatedReplicas": spec["replicas"], "readyReplicas": spec["replicas"],
              "availableReplicas": spec["replicas"], "conditions": [
                  {"type": "Available", "status": "True",
                   "lastUpdateTime": "2026-11-20T08:15:11Z",
                   "lastTransitionTime": "2026-11-20T08:15:11Z",
                   "reason": "MinimumReplicasAvailable",
                   "message": "Deployment has minimum availability."},
                  {"type": "Progressing", "status": "True",
                   "lastUpdateTime": "2026-11-20T08:15:11Z",
                   "lastTransitionTime": "2026-11-20T08:14:03Z",
                   "reason": "NewReplicaSetAvailable",
                   "message": "ReplicaSet has successfully progressed."}]}
    annotations = {"deployment.kubernetes.io/revision": str(rng.randint(1, 40)),
                   "argocd.argoproj.io/tracking-id": "app:apps/Deployment:app"}
    managed = [_managed("argocd-controller", "Apply", fields),
               _managed("kube-controller-manager", "Update",
                        {"f:status": {"f:conditions": {}, "f:replicas": {}}}, "status")]
    rest = {"spec": spec, "status": status}
    return _Body("Deployment", "apps/v1", annotations, managed, rest, 0)


def _pod_body(rng: random.Random, env_count: int) -> _Body:
    spec = _pod_spec(rng, env_count)
    spec["nodeName"] = f"ip-10-0-{rng.randint(0, 3)}-{rng.randint(2, 250)}." \
                       "eu-west-1.compute.internal"
    statuses = [{"name": c["name"], "state": {"running": {
        "startedAt": "2026-11-20T08:14:09Z"}}, "lastState": {}, "ready": True,
        "restartCount": 0, "image": c["image"], "imageID": f"{c['image']}@sha256:"
        f"{rng.getrandbits(256):064x}", "containerID": f"containerd://{rng.getrandbits(256):064x}",
        "started": True} for c in spec["containers"]]
    status = {"phase": "Running", "conditions": [
        {"type": t, "status": "True", "lastProbeTime": None,
         "lastTransitionTime": "2026-11-20T08:14:09Z"}
        for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                  "PodScheduled")],
        "hostIP": "10.0.1.17", "podIP": f"10.1.{rng.randint(0, 255)}.{rng.randint(2, 250)}",
        "startTime": "2026-11-20T08:14:03Z", "containerStatuses": statuses,
        "qosClass": "Burstable"}
    managed = [_managed("kube-controller-manager", "Update", _fields_for(spec["containers"])),
               _managed("kubelet", "Update", {"f:status": {"f:conditions": {}}}, "status")]
    return _Body("Pod", "v1", {"kubectl.kubernetes.io/restartedAt": "2026-11-19T17:02:44Z"},
                 managed, {"spec": spec, "status": status}, 0)


def _configmap_body(rng: random.Random, env_count: int) -> _Body:
    data: dict[str, str] = {}
    for i in range(max(1, env_count // 8)):
        lines = [f"{_suffix(rng, 8)}.{_suffix(rng, 6)}={_suffix(rng, rng.randint(4, 40))}"
                 for _ in range(40)]
        data[f"application-{i}.properties"] = "\n".join(lines) + "\n"
    fields: dict[str, Any] = {"f:data": {f"f:{key}": {} for key in data}}
    return _Body("ConfigMap", "v1", {}, [_managed("kubectl-client-side-apply", "Update", fields)],
                 {"data": data}, 0)


_BODY_MAKERS: dict[str, Callable[[random.Random, int], _Body]] = {
    "deployments": _deployment_body, "pods": _pod_body, "configmaps": _configmap_body}


def _sized(rng: random.Random, resource: str, target: int) -> _Body:
    """Grow the env/data count until the body reaches `target` serialized bytes."""
    maker = _BODY_MAKERS[resource]
    count = 4
    while True:
        state = rng.getstate()
        body = maker(rng, count)
        size = len(orjson.dumps({"a": body.annotations, "m": body.managed, **body.rest}))
        if size >= target or count > 4000:
            return body._replace(size=size)
        rng.setstate(state)
        count = max(count + 1, int(count * target / max(size, 1)) + 1)


# --- the generator ---------------------------------------------------------------------

@dataclass
class _Req:
    """One request being written: the fields that vary per event."""

    verb: str
    uri: str
    user: dict[str, Any]
    ips: list[str]
    agent: str
    ref: dict[str, Any] | None
    code: int
    reason: str = ""
    level: str = "Metadata"
    request_object: Any = None
    response_object: Any = None
    long_running: bool = False
    extra_annotations: dict[str, str] | None = None


class Generator:
    """An endless, seeded stream of serialized audit events.

    `match_ratio` is the share of events built to match a shipped rule; `object_kib` the
    size range of the objects RequestResponse events carry.
    """

    def __init__(self, seed: int = 1, match_ratio: float = 0.01, *,
                 object_kib: tuple[float, float] = (2.0, 50.0), pool_size: int = 12) -> None:
        if not 0.0 <= match_ratio <= 1.0:
            raise ValueError(f"match_ratio must be within 0..1, got {match_ratio}")
        self.rng = random.Random(seed)
        self.clock = _Clock()
        self.match_ratio = match_ratio
        self.nodes = [f"ip-10-0-{i % 4}-{17 + i * 7}.eu-west-1.compute.internal"
                      for i in range(NODE_COUNT)]
        self.node_ips = [f"10.0.{i % 4}.{17 + i * 7}" for i in range(NODE_COUNT)]
        self.pods = {ns: [self._pod_name(ns, app) for app in APPS for _ in range(3)]
                     for ns in APP_NAMESPACES + SYSTEM_NAMESPACES}
        lo, hi = object_kib
        self.bodies = {res: [self._pool_body(res, lo, hi) for _ in range(pool_size)]
                       for res in _BODY_MAKERS}
        self.rv = 48_211_907
        self.pending: list[tuple[int, int, bytes, Expected | None]] = []
        self.index = 0
        self.seq = 0
        self.force_rr = False
        bg = [(w, f) for w, f, _ in self._background()]
        mt = [(w, f) for w, f, _ in self._matching()]
        self.bg_weights, self.bg_funcs = [w for w, _ in bg], [f for _, f in bg]
        self.mt_weights, self.mt_funcs = [w for w, _ in mt], [f for _, f in mt]
        self.p_match = self._scenario_probability()

    # -- setup

    def _pod_name(self, ns: str, app: str) -> str:
        return f"{ns}-{app}-{_suffix(self.rng, 10)}-{_suffix(self.rng, 5)}"

    def _pool_body(self, resource: str, lo_kib: float, hi_kib: float) -> _Body:
        # Log-uniform sizes: most objects are a few KiB, some are tens of KiB. The body
        # leaves room for the per-event metadata head (name, uid, labels, owners).
        total = math.exp(self.rng.uniform(math.log(lo_kib * 1024 * 1.08),
                                          math.log(hi_kib * 1024 * 0.92)))
        return _sized(self.rng, resource, max(256, int(total) - _HEAD_BYTES))

    def _background(self) -> list[tuple[float, Callable[[], list[_Req]], float]]:
        """(weight, builder, events per scenario) of the ordinary traffic."""
        return [
            (30, self._node_lease, 1), (10, self._leader_lease, 1), (6, self._kubelet_get, 1),
            (6, self._watch, 2), (5, self._controller_list, 1), (6, self._endpointslice, 1),
            (4, self._node_status, 1), (3.5, self._pod_status, 1),
            (2, self._deployment_status, 1), (2, self._operator_configmap, 1),
            (1, self._replicaset_create_pod, 1), (1, self._argocd_sync, 1),
            (4, self._human_read, 1), (0.5, self._human_logs, 1),
            (0.5, self._human_apply_configmap, 1), (0.2, self._human_list_secrets, 1),
            (0.1, self._auth_failure, 1),
        ]

    def _matching(self) -> list[tuple[float, Callable[[], list[_Req]], float]]:
        return [
            (3, self._exec_websocket, 2), (1, self._exec_spdy, 2), (1.5, self._port_forward, 2),
            (1.5, self._secret_get, 1), (1.5, self._deployment_patch, 1),
            (1, self._deployment_scale, 1), (0.5, self._bypass_patch, 1),
        ]

    def _scenario_probability(self) -> float:
        """P(scenario is a match) so that the share of *events* is `match_ratio`."""
        def mean_events(rows: list[tuple[float, Any, float]]) -> float:
            return sum(w * n for w, _, n in rows) / sum(w for w, _, _ in rows)

        a, b, r = mean_events(self._matching()), mean_events(self._background()), \
            self.match_ratio
        return r * b / (a - r * a + r * b) if r < 1 else 1.0

    # -- the stream

    def __iter__(self) -> Iterator[tuple[bytes, Expected | None]]:
        return self

    def __next__(self) -> tuple[bytes, Expected | None]:
        while not (self.pending and self.pending[0][0] <= self.index):
            self._scenario()  # every scenario queues at least one event due now
        return self._emit_pending()

    def take(self, count: int) -> Workload:
        """The next `count` events; long-running requests opened are closed within them."""
        work = Workload([])
        end = self.index + count
        while self.index < end:
            left = end - self.index
            if left <= len(self.pending) + 2:
                # Close what is open while room is left; fill with one-event requests.
                if not self.pending:
                    for req in self._node_lease():
                        self._write(req, "", "")
                item, exp = self._emit_pending()
            else:
                item, exp = next(self)
            work.items.append(item)
            if exp is not None:
                work.expected.append(exp)
        return work

    def _emit_pending(self) -> tuple[bytes, Expected | None]:
        _, _, item, exp = heapq.heappop(self.pending)
        if exp is not None:
            exp = dataclasses.replace(exp, index=self.index)
        self.index += 1
        return item, exp

    def _scenario(self) -> None:
        rng = self.rng
        matching = rng.random() < self.p_match
        if matching:
            func = rng.choices(self.mt_funcs, self.mt_weights)[0]
        else:
            func = rng.choices(self.bg_funcs, self.bg_weights)[0]
        scenario, rule = ("", "")
        if matching:
            scenario, rule = _SCENARIO_RULES[func.__name__]
        for req in func():
            self._write(req, scenario, rule)

    def _write(self, req: _Req, scenario: str, rule: str) -> None:
        rng = self.rng
        self.clock.now += rng.randint(20, 400)
        audit_id = _uuid(rng)
        received = self.clock.now
        self.seq += 2
        seq = self.seq
        if req.long_running:
            started = received + rng.randint(2_000, 40_000)
            head = self._event(req, audit_id, "ResponseStarted", received=received,
                               stage_at=started, code=101 if req.code == 101 else 200,
                               latency=None)
            exp = Expected(0, audit_id, scenario, rule, "ResponseStarted") if rule else None
            heapq.heappush(self.pending, (self.index, seq, head, exp))
            done = started + rng.randint(1_000_000, 900_000_000)
            latency = {"apiserver.latency.k8s.io/total": _go_duration(done - received)}
            tail = self._event(req, audit_id, "ResponseComplete", received=received,
                               stage_at=done, code=req.code, latency=latency)
            exp = Expected(0, audit_id, scenario, rule, "ResponseComplete") if rule else None
            heapq.heappush(self.pending, (self.index + rng.randint(1, 1500), seq + 1, tail,
                                          exp))
            return
        done = received + rng.randint(400, 30_000)
        item = self._event(req, audit_id, "ResponseComplete", received=received, stage_at=done,
                           code=req.code, latency=None)
        exp = Expected(0, audit_id, scenario, rule, "ResponseComplete") if rule else None
        heapq.heappush(self.pending, (self.index, seq, item, exp))

    def _event(self, req: _Req, audit_id: str, stage: str, *, received: int, stage_at: int,
               code: int, latency: dict[str, str] | None) -> bytes:
        fmt = self.clock.fmt
        event: dict[str, Any] = {"level": req.level, "auditID": audit_id, "stage": stage,
                                 "requestURI": req.uri, "verb": req.verb, "user": req.user,
                                 "sourceIPs": req.ips, "userAgent": req.agent}
        if req.ref is not None:
            event["objectRef"] = req.ref
        status: dict[str, Any] = {"metadata": {}, "code": code}
        if code >= 400:
            status = {"metadata": {}, "status": "Failure", "message": req.reason,
                      "reason": "Unauthorized" if code == 401 else "Forbidden", "code": code}
        event["responseStatus"] = status
        if req.request_object is not None and stage == "ResponseComplete":
            event["requestObject"] = req.request_object
        if req.response_object is not None and stage == "ResponseComplete":
            event["responseObject"] = req.response_object
        event["requestReceivedTimestamp"] = fmt(received)
        event["stageTimestamp"] = fmt(stage_at)
        if code != 401:
            annotations = {"authorization.k8s.io/decision": "allow",
                           "authorization.k8s.io/reason": req.reason}
            if latency:
                annotations.update(latency)
            if req.extra_annotations:
                annotations.update(req.extra_annotations)
            event["annotations"] = annotations
        return orjson.dumps(event)

    # -- building blocks

    def _next_rv(self) -> str:
        self.rv += self.rng.randint(1, 40)
        return str(self.rv)

    def _node(self) -> tuple[str, str]:
        i = self.rng.randrange(NODE_COUNT)
        return self.nodes[i], self.node_ips[i]

    def _kubelet(self, node: str) -> dict[str, Any]:
        return {"username": f"system:node:{node}",
                "groups": ["system:nodes", "system:authenticated"]}

    def _sa(self, ns: str, name: str, *, bound: bool = False) -> dict[str, Any]:
        user: dict[str, Any] = {
            "username": f"system:serviceaccount:{ns}:{name}",
            "uid": _uuid(self.rng),
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                       "system:authenticated"]}
        if bound:
            node = self._node()[0]
            user["extra"] = {
                "authentication.kubernetes.io/credential-id": [f"JTI={_uuid(self.rng)}"],
                "authentication.kubernetes.io/node-name": [node],
                "authentication.kubernetes.io/node-uid": [_uuid(self.rng)],
                "authentication.kubernetes.io/pod-name": [f"{name}-{_suffix(self.rng, 5)}"],
                "authentication.kubernetes.io/pod-uid": [_uuid(self.rng)]}
        return user

    def _human(self) -> tuple[dict[str, Any], list[str], str]:
        name, groups = self.rng.choice(HUMANS)
        user: dict[str, Any] = {"username": name}
        if name.startswith("oidc:"):
            user["uid"] = f"{self.rng.getrandbits(64):016x}"
        user["groups"] = list(groups)  # after uid, as the apiserver writes them
        ip = f"203.0.113.{self.rng.randint(2, 250)}"
        return user, [ip, "10.0.0.5"], self.rng.choice(KUBECTL_AGENTS)

    def _ref(self, resource: str, ns: str | None, name: str | None, *, group: str = "",
             version: str = "v1", sub: str | None = None, uid: bool = False,
             rv: bool = False) -> dict[str, Any]:
        ref: dict[str, Any] = {"resource": resource}
        if ns:
            ref["namespace"] = ns
        if name:
            ref["name"] = name
        if uid:
            ref["uid"] = _uuid(self.rng)
        if group:
            ref["apiGroup"] = group
        ref["apiVersion"] = version
        if rv:
            ref["resourceVersion"] = self._next_rv()
        if sub:
            ref["subresource"] = sub
        return ref

    def _app(self, system: bool = False) -> tuple[str, str, str]:
        """A namespace, an app (Deployment) name and one of its pods."""
        ns = self.rng.choice(SYSTEM_NAMESPACES if system else APP_NAMESPACES)
        pod = self.rng.choice(self.pods[ns])
        deploy = pod.rsplit("-", 2)[0]
        return ns, deploy, pod

    def _object(self, resource: str, ns: str, name: str, *,
                extra_annotations: dict[str, str] | None = None) -> dict[str, Any]:
        body = self.rng.choice(self.bodies[resource])
        annotations = body.annotations
        if extra_annotations:
            annotations = {**annotations, **extra_annotations}
        app = name.rsplit("-", 2)[0] if resource == "pods" else name
        meta: dict[str, Any] = {
            "name": name, "namespace": ns, "uid": _uuid(self.rng),
            "resourceVersion": self._next_rv(), "creationTimestamp": "2026-11-20T08:14:03Z",
            "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": ns,
                       "app.kubernetes.io/managed-by": "argocd"}}
        if resource == "deployments":
            meta["generation"] = 7
        if annotations:
            meta["annotations"] = annotations
        if resource == "pods":
            rs = name.rsplit("-", 1)[0]
            meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                        "name": rs, "uid": _uuid(self.rng),
                                        "controller": True, "blockOwnerDeletion": True}]
        meta["managedFields"] = body.managed
        return {"kind": body.kind, "apiVersion": body.api_version, "metadata": meta,
                **body.rest}

    def _rr(self) -> bool:
        return self.force_rr or self.rng.random() < 0.97

    # -- background scenarios (system actors and harmless humans)

    def _node_lease(self) -> list[_Req]:
        node, ip = self._node()
        uri = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}" \
              "?timeout=10s"
        ref = self._ref("leases", "kube-node-lease", node, group="coordination.k8s.io",
                        uid=True, rv=True)
        return [_Req("update", uri, self._kubelet(node), [ip],
                     f"kubelet/{K8S_VERSION} (linux/amd64) kubernetes/{K8S_COMMIT}", ref, 200)]

    def _leader_lease(self) -> list[_Req]:
        comp = self.rng.choice(("kube-controller-manager", "kube-scheduler",
                                "cloud-controller-manager"))
        verb = self.rng.choice(("get", "update", "update"))
        uri = f"/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{comp}" \
              "?timeout=5s"
        ref = self._ref("leases", "kube-system", comp, group="coordination.k8s.io",
                        uid=verb == "update", rv=verb == "update")
        reason = ALLOW_RBAC.format(f"system:{comp}", f'User "system:{comp}"')
        return [_Req(verb, uri, {"username": f"system:{comp}",
                                 "groups": ["system:authenticated"]}, ["10.0.0.10"],
                     f"{comp}/{K8S_VERSION} (linux/amd64) kubernetes/{K8S_COMMIT}/"
                     "leader-election", ref, 200, reason)]

    def _kubelet_get(self) -> list[_Req]:
        node, ip = self._node()
        ns, _, pod = self._app(self.rng.random() < 0.3)
        resource = self.rng.choice(("pods", "pods", "configmaps", "secrets"))
        name = pod if resource == "pods" else self.rng.choice(
            ("app-config", "kube-root-ca.crt", "app-credentials"))
        uri = f"/api/v1/namespaces/{ns}/{resource}/{name}"
        return [_Req("get", uri, self._kubelet(node), [ip],
                     f"kubelet/{K8S_VERSION} (linux/amd64) kubernetes/{K8S_COMMIT}",
                     self._ref(resource, ns, name), 200)]

    def _watch(self) -> list[_Req]:
        resource, group = self.rng.choice((("pods", ""), ("configmaps", ""),
                                           ("endpointslices", "discovery.k8s.io"),
                                           ("deployments", "apps"), ("secrets", "")))
        ns = self.rng.choice(SYSTEM_NAMESPACES + APP_NAMESPACES)
        base = f"/apis/{group}/v1" if group else "/api/v1"
        secs = self.rng.randint(300, 600)
        uri = f"{base}/namespaces/{ns}/{resource}?allowWatchBookmarks=true&resourceVersion=" \
              f"{self._next_rv()}&timeout={secs // 60}m{secs % 60}s&timeoutSeconds={secs}" \
              "&watch=true"
        user = self._sa(self.rng.choice(SYSTEM_NAMESPACES), self.rng.choice(
            ("prometheus-operator", "argocd-application-controller", "cert-manager",
             "istiod")), bound=True)
        return [_Req("watch", uri, user, ["10.1.7.33"],
                     "Go-http-client/2.0" if self.rng.random() < 0.3 else
                     "operator/v0.77.1 (linux/amd64) kubernetes/$Format",
                     self._ref(resource, ns, None, group=group), 200, "RBAC: allowed by "
                     'ClusterRoleBinding "operator" of ClusterRole "operator" to '
                     'ServiceAccount "operator/monitoring"', long_running=True)]

    def _controller_list(self) -> list[_Req]:
        resource = self.rng.choice(("pods", "nodes", "services", "endpointslices"))
        group = "discovery.k8s.io" if resource == "endpointslices" else ""
        base = f"/apis/{group}/v1" if group else "/api/v1"
        uri = f"{base}/{resource}?limit=500&resourceVersion=0"
        return [_Req("list", uri, self._sa("kube-system", "coredns", bound=True),
                     ["10.1.0.12"], "coredns/v1.11.3 (linux/amd64) kubernetes/$Format",
                     self._ref(resource, None, None, group=group), 200, ALLOW_RBAC.format(
                         "system:coredns", 'ServiceAccount "coredns/kube-system"'))]

    def _endpointslice(self) -> list[_Req]:
        ns, deploy, _ = self._app(self.rng.random() < 0.3)
        name = f"{deploy}-{_suffix(self.rng, 5)}"
        uri = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{name}"
        ctl = "endpointslice-controller"
        return [_Req("update", uri, {"username": f"system:serviceaccount:kube-system:{ctl}",
                                     "uid": "5b4c7d1e-9a0e-4d7b-a1f2-0c3e8d6f2b11",
                                     "groups": ["system:serviceaccounts",
                                                "system:serviceaccounts:kube-system",
                                                "system:authenticated"]},
                     ["10.0.0.10"], f"kube-controller-manager/{K8S_VERSION} (linux/amd64) "
                     f"kubernetes/{K8S_COMMIT}/system:serviceaccount:kube-system:{ctl}",
                     self._ref("endpointslices", ns, name, group="discovery.k8s.io",
                               uid=True, rv=True), 200,
                     ALLOW_RBAC.format(f"system:controller:{ctl}",
                                       f'ServiceAccount "{ctl}/kube-system"'))]

    def _node_status(self) -> list[_Req]:
        node, ip = self._node()
        uri = f"/api/v1/nodes/{node}/status?timeout=10s"
        return [_Req("patch", uri, self._kubelet(node), [ip],
                     f"kubelet/{K8S_VERSION} (linux/amd64) kubernetes/{K8S_COMMIT}",
                     self._ref("nodes", None, node, sub="status"), 200)]

    def _pod_status(self) -> list[_Req]:
        node, ip = self._node()
        ns, _, pod = self._app(self.rng.random() < 0.3)
        rr = self._rr()
        req = _Req("patch", f"/api/v1/namespaces/{ns}/pods/{pod}/status", self._kubelet(node),
                   [ip], f"kubelet/{K8S_VERSION} (linux/amd64) kubernetes/{K8S_COMMIT}",
                   self._ref("pods", ns, pod, sub="status"), 200)
        if rr:
            req.level = "RequestResponse"
            req.request_object = {"metadata": {"uid": _uuid(self.rng)}, "status": {
                "$setElementOrder/conditions": [{"type": "Ready"}, {"type": "ContainersReady"}],
                "conditions": [{"lastTransitionTime": "2026-11-26T09:59:58Z", "status": "True",
                                "type": "Ready"}]}}
            req.response_object = self._object("pods", ns, pod)
        return [req]

    def _deployment_status(self) -> list[_Req]:
        ns, deploy, _ = self._app()
        ctl = "deployment-controller"
        req = _Req("update", f"/apis/apps/v1/namespaces/{ns}/deployments/{deploy}/status",
                   self._sa("kube-system", ctl), ["10.0.0.10"],
                   f"kube-controller-manager/{K8S_VERSION} (linux/amd64) kubernetes/"
                   f"{K8S_COMMIT}/system:serviceaccount:kube-system:{ctl}",
                   self._ref("deployments", ns, deploy, group="apps", sub="status"), 200,
                   ALLOW_RBAC.format(f"system:controller:{ctl}",
                                     f'ServiceAccount "{ctl}/kube-system"'))
        if self._rr():
            obj = self._object("deployments", ns, deploy)
            req.level, req.request_object, req.response_object = "RequestResponse", obj, obj
        return [req]

    def _operator_configmap(self) -> list[_Req]:
        ns = self.rng.choice(("monitoring", "istio-system", *APP_NAMESPACES[:3]))
        name = self.rng.choice(("prometheus-rules", "istio-ca-root-cert", "app-config"))
        req = _Req("update", f"/api/v1/namespaces/{ns}/configmaps/{name}",
                   self._sa("monitoring", "prometheus-operator", bound=True), ["10.1.3.44"],
                   "PrometheusOperator/0.77.1", self._ref("configmaps", ns, name, uid=True,
                                                          rv=True), 200)
        if self._rr():
            obj = self._object("configmaps", ns, name)
            req.level, req.request_object, req.response_object = "RequestResponse", obj, obj
        return [req]

    def _replicaset_create_pod(self) -> list[_Req]:
        ns, deploy, _ = self._app()
        pod = self._pod_name(ns, deploy.split("-", 1)[1]) if "-" in deploy else deploy
        ctl = "replicaset-controller"
        req = _Req("create", f"/api/v1/namespaces/{ns}/pods", self._sa("kube-system", ctl),
                   ["10.0.0.10"], f"kube-controller-manager/{K8S_VERSION} (linux/amd64) "
                   f"kubernetes/{K8S_COMMIT}/system:serviceaccount:kube-system:{ctl}",
                   self._ref("pods", ns, pod), 201,
                   extra_annotations={"pod-security.kubernetes.io/enforce-policy":
                                      "restricted:latest"})
        if self._rr():
            obj = self._object("pods", ns, pod)
            req.level, req.request_object, req.response_object = "RequestResponse", obj, obj
        return [req]

    def _argocd_sync(self) -> list[_Req]:
        ns, deploy, _ = self._app()
        req = _Req("patch", f"/apis/apps/v1/namespaces/{ns}/deployments/{deploy}?"
                   "fieldManager=argocd-controller&force=true",
                   self._sa("argocd", "argocd-application-controller", bound=True),
                   ["10.1.9.4"], "argocd-application-controller/v0.0.0 (linux/amd64) "
                   "kubernetes/$Format", self._ref("deployments", ns, deploy, group="apps"),
                   200)
        if self._rr():
            req.level = "RequestResponse"
            req.request_object = {"spec": {"replicas": 3}}
            req.response_object = self._object("deployments", ns, deploy)
        return [req]

    def _human_read(self) -> list[_Req]:
        user, ips, agent = self._human()
        ns, deploy, pod = self._app()
        choice = self.rng.randrange(5)
        if choice == 0:
            return [_Req("list", f"/api/v1/namespaces/{ns}/pods?limit=500", user, ips, agent,
                         self._ref("pods", ns, None), 200)]
        if choice == 1:  # kubectl describe pod: get the pod, then its events
            return [_Req("get", f"/api/v1/namespaces/{ns}/pods/{pod}", user, ips, agent,
                         self._ref("pods", ns, pod), 200),
                    _Req("list", f"/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject"
                         f".name%3D{pod}%2CinvolvedObject.namespace%3D{ns}&limit=500", user,
                         ips, agent, self._ref("events", ns, None), 200)]
        if choice == 2:
            return [_Req("get", f"/apis/apps/v1/namespaces/{ns}/deployments/{deploy}", user,
                         ips, agent, self._ref("deployments", ns, deploy, group="apps"), 200)]
        if choice == 3:
            return [_Req("get", f"/apis/apps/v1/namespaces/{ns}/deployments/{deploy}/scale",
                         user, ips, agent, self._ref("deployments", ns, deploy, group="apps",
                                                     sub="scale"), 200)]
        return [_Req("list", "/api/v1/nodes?limit=500", user, ips, agent,
                     self._ref("nodes", None, None), 200)]

    def _human_logs(self) -> list[_Req]:
        user, ips, agent = self._human()
        ns, _, pod = self._app()
        return [_Req("get", f"/api/v1/namespaces/{ns}/pods/{pod}/log?container=app&follow="
                     "true&tailLines=100", user, ips, agent,
                     self._ref("pods", ns, pod, sub="log"), 200)]

    def _human_apply_configmap(self) -> list[_Req]:
        user, ips, agent = self._human()
        ns = self.rng.choice(APP_NAMESPACES)
        name = "app-config"
        req = _Req("patch", f"/api/v1/namespaces/{ns}/configmaps/{name}?fieldManager="
                   "kubectl-client-side-apply&fieldValidation=Strict", user, ips, agent,
                   self._ref("configmaps", ns, name), 200)
        if self._rr():
            obj = self._object("configmaps", ns, name)
            req.level, req.request_object, req.response_object = "RequestResponse", \
                {"data": obj["data"]}, obj
        return [req]

    def _human_list_secrets(self) -> list[_Req]:
        user, ips, agent = self._human()
        ns = self.rng.choice(APP_NAMESPACES)
        return [_Req("list", f"/api/v1/namespaces/{ns}/secrets?limit=500", user, ips, agent,
                     self._ref("secrets", ns, None), 200)]

    def _auth_failure(self) -> list[_Req]:
        return [_Req("get", "/api/v1/namespaces/default/pods?limit=500", {},
                     [f"198.51.100.{self.rng.randint(2, 250)}"], "curl/8.5.0", None, 401,
                     "Unauthorized")]

    # -- matching scenarios (one shipped rule each, by a human, in an app namespace)

    def _exec(self, verb: str, agent: str | None) -> list[_Req]:
        user, ips, default_agent = self._human()
        ns, _, pod = self._app()
        uri = f"/api/v1/namespaces/{ns}/pods/{pod}/exec?command=%2Fbin%2Fsh&container=app" \
              "&stdin=true&stdout=true&tty=true"
        return [_Req(verb, uri, user, ips, agent or default_agent,
                     self._ref("pods", ns, pod, sub="exec"), 101, long_running=True)]

    def _exec_websocket(self) -> list[_Req]:
        return self._exec("get", None)

    def _exec_spdy(self) -> list[_Req]:
        return self._exec("create", OLD_KUBECTL)

    def _port_forward(self) -> list[_Req]:
        user, ips, agent = self._human()
        ns, _, pod = self._app()
        websocket = self.rng.random() < 0.7
        return [_Req("get" if websocket else "create",
                     f"/api/v1/namespaces/{ns}/pods/{pod}/portforward", user, ips,
                     agent if websocket else OLD_KUBECTL,
                     self._ref("pods", ns, pod, sub="portforward"), 101, long_running=True)]

    def _secret_get(self) -> list[_Req]:
        user, ips, agent = self._human()
        ns = self.rng.choice(APP_NAMESPACES)
        name = self.rng.choice(("db-credentials", "jwt-signing-key", "stripe-api-key"))
        return [_Req("get", f"/api/v1/namespaces/{ns}/secrets/{name}", user, ips, agent,
                     self._ref("secrets", ns, name), 200)]

    def _deployment_patch(self) -> list[_Req]:
        user, ips, agent = self._human()
        ns, deploy, _ = self._app()
        req = _Req("patch", f"/apis/apps/v1/namespaces/{ns}/deployments/{deploy}?"
                   "fieldManager=kubectl-set", user, ips, agent,
                   self._ref("deployments", ns, deploy, group="apps"), 200,
                   level="RequestResponse")
        req.request_object = {"spec": {"template": {"spec": {"containers": [
            {"image": f"registry.example.com/{deploy}:hotfix-{self.rng.randint(1, 99)}",
             "name": "app"}]}}}}
        req.response_object = self._object("deployments", ns, deploy)
        return [req]

    def _deployment_scale(self) -> list[_Req]:
        user, ips, agent = self._human()
        ns, deploy, _ = self._app()
        return [_Req("update", f"/apis/apps/v1/namespaces/{ns}/deployments/{deploy}/scale",
                     user, ips, agent, self._ref("deployments", ns, deploy, group="apps",
                                                 sub="scale"), 200)]

    def _bypass_patch(self) -> list[_Req]:
        user, ips, agent = self._human()
        ns, deploy, _ = self._app()
        key, value = BYPASS_ANNOTATION
        req = _Req("patch", f"/apis/apps/v1/namespaces/{ns}/deployments/{deploy}?"
                   "fieldManager=kubectl-annotate", user, ips, agent,
                   self._ref("deployments", ns, deploy, group="apps"), 200,
                   level="RequestResponse")
        req.request_object = {"metadata": {"annotations": {key: value}}}
        req.response_object = self._object("deployments", ns, deploy,
                                           extra_annotations={key: value})
        return [req]


_SCENARIO_RULES = {
    "_exec_websocket": ("exec-websocket", "kubectl-exec"),
    "_exec_spdy": ("exec-spdy", "kubectl-exec"),
    "_port_forward": ("port-forward", "port-forward"),
    "_secret_get": ("secret-get", "emergency-access"),
    "_deployment_patch": ("deployment-patch", "config-drift"),
    "_deployment_scale": ("deployment-scale", "config-drift"),
    "_bypass_patch": ("bypass-annotation", "pipeline-skip"),
}


def generate(events: int, *, match_ratio: float = 0.01, seed: int = 1,
             object_kib: tuple[float, float] = (2.0, 50.0)) -> Workload:
    """`events` serialized audit events and the ones built to match (see `Generator`)."""
    gen = Generator(seed, match_ratio, object_kib=object_kib)
    return gen.take(events)


def large_batch(target_bytes: int, items: int = 400, *, seed: int = 1) -> bytes:
    """One EventList body of `items` RequestResponse events totalling ~`target_bytes`.

    Each event carries the same object twice (request and response), so the object size is
    chosen as half of each event's share.
    """
    per_object = target_bytes / items / 2 / 1024 * 1.035  # minus the event envelope
    gen = Generator(seed, 0.0, object_kib=(per_object * 0.97, per_object * 1.03), pool_size=4)
    gen.force_rr = True
    out: list[bytes] = []
    while len(out) < items:
        for req in gen._deployment_status():
            gen._write(req, "", "")
        out.append(gen._emit_pending()[0])
    return event_list(out)


# --- the stream a sane audit policy records ---------------------------------------------

RECENT_VERSION = "v1.37.2"
RECENT_COMMIT = "f4e0b2c"
POD_NETWORK = "10.244"
# Operators that run in their own namespace, with their pods' bound tokens.
OPERATORS = (("argocd", "argocd-application-controller", "argocd-application-controller/"
              "v0.0.0 (linux/amd64) kubernetes/$Format"),
             ("cert-manager", "cert-manager", "cert-manager-controller/v1.16.1 (linux/amd64) "
              "cert-manager/d6a5c6ba2f6f1e0f1c6d7f4b3a2e1d0c9b8a7f6e"),
             ("monitoring", "kube-state-metrics", "kube-state-metrics/v2.14.0 (linux/amd64) "
              "kubernetes/$Format"),
             ("external-secrets", "external-secrets", "external-secrets/v0.10.4 (linux/amd64) "
              "kubernetes/$Format"),
             ("istio-system", "istiod", "pilot-discovery/1.24.1"))
# What the sane policy records of a Secret read: the request, never the Secret.
WEBHOOK_MUTATION = ('{"configuration":"istio-sidecar-injector","webhook":'
                    '"rev.namespace.sidecar-injector.istio.io","mutated":true}')


class RecordedStream(Generator):
    """What an apiserver under a sane audit policy (this project's own) sends: ~1 KiB
    Metadata-level events, people's writes of Services and Ingresses with their objects
    (a few percent of events; ConfigMaps and service accounts' writes stay at Metadata),
    and as many bypasses as `Generator` makes for the same `match_ratio`.

    Shaped like the recorded v1.37 events (tests/fixtures/apiserver-1.37): operators and
    controllers acting with bound service-account tokens (`user.extra`: the credential
    id and, for a pod's token, its node's and pod's names and uids), kubelets requesting
    those tokens, the authorizer's annotations, real user agents, pod and node source
    IPs. The policy records no lease renewals, no reads by service accounts or nodes (but
    of Secrets) and no status writes by kube-system's controllers, so none are here.

    `small` is the other stream the issue measures (~765 B): the same requests without
    objects or admission annotations, made with tokens that carry only a name and groups
    (no uid, no `user.extra`) and authorized without a reason.
    """

    def __init__(self, seed: int = 1, match_ratio: float = 0.01, *, small: bool = False,
                 object_kib: tuple[float, float] = (1.5, 12.0)) -> None:
        self.small = small
        super().__init__(seed, match_ratio, object_kib=object_kib, pool_size=6)

    def _background(self) -> list[tuple[float, Callable[[], list[_Req]], float]]:
        return [
            (20, self._token_request, 1), (4, self._operator_secret_get, 1),
            (5, self._access_review, 1), (5, self._custom_status, 1),
            (2, self._operator_configmap, 1), (2, self._external_secret_update, 1),
            (1.5, self._argocd_sync, 1), (2, self._replicaset_create_pod, 1),
            (3, self._garbage_collection, 1), (1, self._autoscale, 1),
            (1, self._webhook_ca_patch, 1), (9, self._human_read, 1),
            (0.6, self._human_logs, 1), (0.5, self._human_apply_configmap, 1),
            (1.5, self._human_apply_service, 1),
            (0.2, self._human_list_secrets, 1), (0.1, self._auth_failure, 1),
        ]

    def _rr(self) -> bool:
        # The policy records ConfigMaps and writes by service accounts at Metadata level.
        return self.force_rr

    def _human_apply_service(self) -> list[_Req]:
        """A person's `kubectl apply` of a Service or an Ingress: the policy records its
        objects (without managedFields)."""
        user, ips, agent = self._human()
        ns, deploy, _ = self._app()
        ingress = self.rng.random() < 0.4
        resource, group = ("ingresses", "networking.k8s.io") if ingress else ("services", "")
        base = f"/apis/{group}/v1" if group else "/api/v1"
        req = _Req("patch", f"{base}/namespaces/{ns}/{resource}/{deploy}?fieldManager="
                   "kubectl-client-side-apply&fieldValidation=Strict", user, ips, agent,
                   self._ref(resource, ns, deploy, group=group), 200)
        if self.small:
            return [req]
        spec = self._ingress_spec(ns, deploy) if ingress else self._service_spec(deploy)
        last = orjson.dumps({"apiVersion": f"{group}/v1" if group else "v1",
                             "kind": "Ingress" if ingress else "Service",
                             "metadata": {"name": deploy, "namespace": ns}, "spec": spec})
        applied = {"kubectl.kubernetes.io/last-applied-configuration": last.decode() + "\n"}
        req.level = "RequestResponse"
        req.request_object = {"metadata": {"annotations": applied}, "spec": spec}
        req.response_object = {
            "kind": "Ingress" if ingress else "Service",
            "apiVersion": f"{group}/v1" if group else "v1",
            "metadata": {"name": deploy, "namespace": ns, "uid": _uuid(self.rng),
                         "resourceVersion": self._next_rv(),
                         "creationTimestamp": "2026-11-20T08:14:03Z",
                         "labels": {"app.kubernetes.io/name": deploy,
                                    "app.kubernetes.io/part-of": ns},
                         "annotations": applied},
            "spec": spec, "status": {"loadBalancer": {}}}
        return [req]

    def _service_spec(self, app: str) -> dict[str, Any]:
        ports = [{"name": name, "protocol": "TCP", "port": port, "targetPort": name}
                 for name, port in (("http", 80), ("metrics", 9090), ("grpc", 9000))
                 [:self.rng.randint(1, 3)]]
        return {"ports": ports, "selector": {"app.kubernetes.io/name": app},
                "clusterIP": f"10.96.{self.rng.randint(0, 255)}.{self.rng.randint(2, 250)}",
                "type": "ClusterIP", "sessionAffinity": "None", "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"}

    def _ingress_spec(self, ns: str, app: str) -> dict[str, Any]:
        host = f"{app}.{ns}.example.com"
        return {"ingressClassName": "nginx", "tls": [{"hosts": [host],
                                                      "secretName": f"{app}-tls"}],
                "rules": [{"host": host, "http": {"paths": [
                    {"path": path, "pathType": "Prefix", "backend": {"service": {
                        "name": app, "port": {"name": "http"}}}}
                    for path in ("/", "/api", "/static")[:self.rng.randint(1, 3)]]}}]}

    def _sa(self, ns: str, name: str, *, bound: bool = False) -> dict[str, Any]:
        if self.small:  # a token that says nothing but who
            user = super()._sa(ns, name)
            del user["uid"]
            return user
        # A pod's projected token is bound to the pod and its node; a controller of the
        # controller-manager requests its own, bound to nothing but its id.
        user = super()._sa(ns, name, bound=bound or ns != "kube-system")
        user.setdefault("extra", {"authentication.kubernetes.io/credential-id":
                                  [f"JTI={_uuid(self.rng)}"]})
        return user

    def _kubelet(self, node: str) -> dict[str, Any]:
        return self._certified(super()._kubelet(node))

    def _human(self) -> tuple[dict[str, Any], list[str], str]:
        user, ips, agent = super()._human()
        if not user["username"].startswith("oidc:"):
            user = self._certified(user)
        return user, ips, agent

    def _certified(self, user: dict[str, Any]) -> dict[str, Any]:
        """A client certificate's user: since v1.30 the apiserver names the certificate."""
        if self.small:
            return user
        digest = hashlib.sha256(user["username"].encode()).hexdigest()
        return {**user, "extra": {"authentication.kubernetes.io/credential-id":
                                  [f"X509SHA256={digest}"]}}

    def _reason(self, binding: str, user: dict[str, Any]) -> str:
        """The RBAC authorizer's reason for a service account (none in the small stream)."""
        if self.small:
            return ""
        ns, name = user["username"].split(":")[2:]
        return ALLOW_RBAC.format(binding, f'ServiceAccount "{name}/{ns}"')

    def _pod_ip(self) -> str:
        return f"{POD_NETWORK}.{self.rng.randint(0, 23)}.{self.rng.randint(2, 250)}"

    def _operator(self) -> tuple[dict[str, Any], list[str], str]:
        ns, name, agent = self.rng.choice(OPERATORS)
        return self._sa(ns, name, bound=True), [self._pod_ip()], agent

    def _controller(self, name: str) -> tuple[dict[str, Any], list[str], str]:
        return (self._sa("kube-system", name), ["10.0.0.10"],
                f"kube-controller-manager/{RECENT_VERSION} (linux/amd64) kubernetes/"
                f"{RECENT_COMMIT}/system:serviceaccount:kube-system:{name}")

    def _token_request(self) -> list[_Req]:
        node, ip = self._node()
        ns, deploy, _ = self._app(self.rng.random() < 0.4)
        sa = self.rng.choice(("default", deploy.split("-", 1)[-1], "app"))
        return [_Req("create", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
                     self._kubelet(node), [ip], f"kubelet/{RECENT_VERSION} (linux/amd64) "
                     f"kubernetes/{RECENT_COMMIT}", self._ref("serviceaccounts", ns, sa,
                                                               sub="token"), 201)]

    def _operator_secret_get(self) -> list[_Req]:
        user, ips, agent = self._operator()
        ns = self.rng.choice(APP_NAMESPACES + SYSTEM_NAMESPACES)
        name = self.rng.choice(("argocd-repo-creds", "tls-ingress", "app-credentials",
                                "webhook-server-cert"))
        sa = user["username"].rsplit(":", 1)[1]
        return [_Req("get", f"/api/v1/namespaces/{ns}/secrets/{name}", user, ips, agent,
                     self._ref("secrets", ns, name), 200, self._reason(f"{sa}-secrets", user))]

    def _access_review(self) -> list[_Req]:
        kind = self.rng.choice(("tokenreviews", "subjectaccessreviews"))
        group = "authentication.k8s.io" if kind == "tokenreviews" else "authorization.k8s.io"
        ns, sa = self.rng.choice((("monitoring", "kube-rbac-proxy"),
                                  ("kube-system", "metrics-server")))
        user = self._sa(ns, sa, bound=True)
        return [_Req("create", f"/apis/{group}/v1/{kind}", user, [self._pod_ip()],
                     f"{sa}/v0.18.0 (linux/amd64) kubernetes/$Format",
                     self._ref(kind, None, None, group=group), 201,
                     self._reason(f"system:auth-delegator:{sa}", user))]

    def _custom_status(self) -> list[_Req]:
        user, ips, agent = self._operator()
        resource, group = self.rng.choice((("applications", "argoproj.io"),
                                           ("certificates", "cert-manager.io"),
                                           ("certificaterequests", "cert-manager.io"),
                                           ("externalsecrets", "external-secrets.io")))
        ns, deploy, _ = self._app(self.rng.random() < 0.3)
        verb = self.rng.choice(("update", "patch"))
        req = _Req(verb, f"/apis/{group}/v1/namespaces/{ns}/{resource}/{deploy}/status",
                   user, ips, agent, self._ref(resource, ns, deploy, group=group,
                                               uid=True, rv=True, sub="status"), 200,
                   self._reason(user["username"].rsplit(":", 1)[1], user))
        if self.rng.random() < 0.05:  # a slow write: the apiserver adds its latencies
            req.extra_annotations = {
                "apiserver.latency.k8s.io/etcd": f"{self.rng.randint(400, 900)}.1ms",
                "apiserver.latency.k8s.io/total": f"{self.rng.randint(510, 990)}.2ms"}
        return [req]

    def _external_secret_update(self) -> list[_Req]:
        ns = self.rng.choice(APP_NAMESPACES)
        name = self.rng.choice(("db-credentials", "stripe-api-key", "app-credentials"))
        user = self._sa("external-secrets", "external-secrets", bound=True)
        return [_Req("update", f"/api/v1/namespaces/{ns}/secrets/{name}", user,
                     [self._pod_ip()], "external-secrets/v0.10.4 (linux/amd64) "
                     "kubernetes/$Format", self._ref("secrets", ns, name, uid=True, rv=True),
                     200, self._reason("external-secrets-controller", user))]

    def _garbage_collection(self) -> list[_Req]:
        ns, _, pod = self._app(self.rng.random() < 0.3)
        user, ips, agent = self._controller("generic-garbage-collector")
        reason = self._reason("system:controller:generic-garbage-collector", user)
        if self.rng.random() < 0.5:
            rs = pod.rsplit("-", 1)[0]
            return [_Req("delete", f"/apis/apps/v1/namespaces/{ns}/replicasets/{rs}", user,
                         ips, agent, self._ref("replicasets", ns, rs, group="apps"), 200,
                         reason)]
        return [_Req("delete", f"/api/v1/namespaces/{ns}/pods/{pod}", user, ips, agent,
                     self._ref("pods", ns, pod), 200, reason)]

    def _autoscale(self) -> list[_Req]:
        ns, deploy, _ = self._app()
        user, ips, agent = self._controller("horizontal-pod-autoscaler")
        return [_Req("update", f"/apis/apps/v1/namespaces/{ns}/deployments/{deploy}/scale",
                     user, ips, agent, self._ref("deployments", ns, deploy, group="apps",
                                                 sub="scale"), 200,
                     self._reason("system:controller:horizontal-pod-autoscaler", user))]

    def _webhook_ca_patch(self) -> list[_Req]:
        name = self.rng.choice(("cert-manager-webhook", "istio-validator-istio-system",
                                "external-secrets-webhook"))
        kind = self.rng.choice(("validatingwebhookconfigurations",
                                "mutatingwebhookconfigurations"))
        group = "admissionregistration.k8s.io"
        user = self._sa("cert-manager", "cert-manager-cainjector", bound=True)
        return [_Req("patch", f"/apis/{group}/v1/{kind}/{name}?fieldManager=cert-manager-"
                     "cainjector&force=true", user, [self._pod_ip()],
                     "cainjector/v1.16.1 (linux/amd64) cert-manager/d6a5c6ba2f6f",
                     self._ref(kind, None, name, group=group), 200,
                     self._reason("cert-manager-cainjector", user))]

    def _replicaset_create_pod(self) -> list[_Req]:
        reqs = super()._replicaset_create_pod()
        for req in reqs if not self.small else ():
            req.extra_annotations = {**(req.extra_annotations or {}),
                                     "mutation.webhook.admission.k8s.io/round_0_index_0":
                                     WEBHOOK_MUTATION}
        return reqs


def generator(name: str, seed: int = 1, match_ratio: float = 0.01) -> Generator:
    """The endless generator of one of STREAMS: "today" (`Generator`, as `generate`
    makes it), "realistic" or "small" (`RecordedStream`)."""
    if name == "today":
        return Generator(seed, match_ratio)
    if name not in STREAMS:
        raise ValueError(f"no stream {name!r}: one of {', '.join(STREAMS)}")
    return RecordedStream(seed, match_ratio, small=name == "small")


def stream(name: str, events: int, *, match_ratio: float = 0.01, seed: int = 1) -> Workload:
    """The first `events` of one of STREAMS (see `generator`)."""
    return generator(name, seed, match_ratio).take(events)


STREAMS = ("today", "realistic", "small")


# --- CLI -------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tests/support/workload.py",
        description="Write a realistic, seeded audit event workload to stdout.")
    parser.add_argument("--stream", choices=STREAMS, default="today",
                        help="today's mixed workload (3.4 KiB events on average), the "
                        "realistic stream of ~1 KiB Metadata events, or small events")
    parser.add_argument("--events", type=int, default=10_000, help="number of events")
    parser.add_argument("--match-ratio", type=float, default=0.01,
                        help="share of events built to match a shipped rule (0..1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--format", choices=("lines", "eventlist"), default="lines",
                        help="audit log lines, or EventList bodies one per line")
    parser.add_argument("--batch", type=int, default=400, help="items per EventList body")
    parser.add_argument("--expected", metavar="PATH",
                        help="also write the events built to match as JSON to PATH")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python tests/support/workload.py`."""
    args = _parser().parse_args(argv)
    if args.events < 0 or args.batch < 1 or not 0 <= args.match_ratio <= 1:
        print("error: --events >= 0, --batch >= 1 and 0 <= --match-ratio <= 1",
              file=sys.stderr)
        return 2
    work = stream(args.stream, args.events, match_ratio=args.match_ratio, seed=args.seed)
    out = sys.stdout.buffer
    if args.format == "lines":
        for line in work.lines():
            out.write(line)
    else:
        for body in work.batches(args.batch):
            out.write(body + b"\n")
    out.flush()
    if args.expected:
        with open(args.expected, "w", encoding="utf-8") as fh:
            json.dump([dataclasses.asdict(exp) for exp in work.expected], fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
