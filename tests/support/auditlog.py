"""A stand-in kube-apiserver audit log writer: realistic lines, real rotations.

Run as a script (the tail tests start it as a subprocess) or import `make_line` /
`generate` to recompute exactly what a run wrote: line `i` of seed `s` is always the same
bytes, and every line has its own auditID.

    python tests/support/auditlog.py --path DIR/audit.log --seed 7 --lines 5000 \
        --rate 1000 --rotate-bytes 65536 --rotate rename,gzip

Rotations, like the apiserver's lumberjack logger and logrotate:
  rename    close, rename to `audit-<UTC stamp>.log`, create a new file (lumberjack)
  gzip      the same, then compress the renamed file to `.gz` and delete it
            (`--audit-log-compress`)
  truncate  copy the file to `audit.log.1` and truncate it in place (copytruncate)
Each line is written with one write(2) on an O_APPEND descriptor, as the apiserver does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import os
import random
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

HUMANS = ("alice@example.com", "bob@example.com", "oncall@example.com", "system:admin")
NAMESPACES = ("payments", "checkout", "search-production", "web")
WORKLOADS = ("payments-api", "checkout-worker", "search-indexer", "web-frontend")
NODES = ("ip-10-0-1-17", "ip-10-0-2-33", "ip-10-0-3-91")
STAMP_FORMAT = "%Y-%m-%dT%H-%M-%S"


def _pod(rng: random.Random, workload: str) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    hash_ = "".join(rng.choice(alphabet) for _ in range(9))
    return f"{workload}-{hash_}-{''.join(rng.choice(alphabet) for _ in range(5))}"


def _base(rng: random.Random, i: int) -> dict[str, Any]:
    received = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.UTC) + dt.timedelta(milliseconds=i)
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "stage": "ResponseComplete",
        "sourceIPs": [f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"],
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": received.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "stageTimestamp": (received + dt.timedelta(milliseconds=3)).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"),
        "annotations": {"authorization.k8s.io/decision": "allow",
                        "authorization.k8s.io/reason": ""},
    }


def _lease(rng: random.Random, event: dict[str, Any]) -> None:
    node = rng.choice(NODES)
    event.update(
        verb="update",
        requestURI=f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}",
        user={"username": f"system:node:{node}", "groups": ["system:nodes"]},
        userAgent="kubelet/v1.30.2 (linux/amd64) kubernetes/3968350",
        objectRef={"resource": "leases", "namespace": "kube-node-lease", "name": node,
                   "apiGroup": "coordination.k8s.io", "apiVersion": "v1"})


def _controller_read(rng: random.Random, event: dict[str, Any]) -> None:
    ns = rng.choice(NAMESPACES)
    resource = rng.choice(("pods", "secrets", "configmaps", "endpoints"))
    event.update(
        verb=rng.choice(("get", "list", "watch")),
        requestURI=f"/api/v1/namespaces/{ns}/{resource}?limit=500",
        user={"username": "system:serviceaccount:kube-system:replicaset-controller",
              "uid": "5b0c7c1e-7f4b-4c59-9d8e-1c2f3a4b5c6d",
              "groups": ["system:serviceaccounts", "system:authenticated"]},
        userAgent="kube-controller-manager/v1.30.2 (linux/amd64) kubernetes/3968350",
        objectRef={"resource": resource, "namespace": ns, "apiVersion": "v1"})


def _human(rng: random.Random) -> dict[str, Any]:
    return {"username": rng.choice(HUMANS), "groups": ["developers", "system:authenticated"]}


def _exec(rng: random.Random, event: dict[str, Any]) -> None:
    ns = rng.choice((*NAMESPACES, "kube-system"))  # kube-system is ignored by the rules
    pod = _pod(rng, rng.choice(WORKLOADS))
    websocket = rng.random() < 0.5  # kubectl >= 1.30 execs over WebSocket: verb get
    event.update(
        verb="get" if websocket else "create",
        stage=rng.choice(("ResponseStarted", "ResponseComplete", "RequestReceived")),
        requestURI=f"/api/v1/namespaces/{ns}/pods/{pod}/exec?command=sh&stdin=true&tty=true",
        user=_human(rng),
        userAgent="kubectl/v1.31.0 (linux/amd64) kubernetes/9edcffc",
        objectRef={"resource": "pods", "namespace": ns, "name": pod, "apiVersion": "v1",
                   "subresource": "exec"},
        responseStatus={"metadata": {}, "code": 101})


def _secret_get(rng: random.Random, event: dict[str, Any]) -> None:
    ns = rng.choice(NAMESPACES)
    name = rng.choice(("db-credentials", "stripe-api-key", "tls-cert"))
    event.update(
        verb="get",
        requestURI=f"/api/v1/namespaces/{ns}/secrets/{name}",
        user=_human(rng),
        userAgent="kubectl/v1.31.0 (linux/amd64) kubernetes/9edcffc",
        objectRef={"resource": "secrets", "namespace": ns, "name": name, "apiVersion": "v1"})


def _patch(rng: random.Random, event: dict[str, Any]) -> None:
    ns = rng.choice(NAMESPACES)
    name = rng.choice(WORKLOADS)
    event.update(
        verb="patch",
        requestURI=f"/apis/apps/v1/namespaces/{ns}/deployments/{name}?fieldManager=kubectl",
        user=_human(rng),
        userAgent="kubectl/v1.31.0 (linux/amd64) kubernetes/9edcffc",
        objectRef={"resource": "deployments", "namespace": ns, "name": name,
                   "apiGroup": "apps", "apiVersion": "v1"})


def _port_forward(rng: random.Random, event: dict[str, Any]) -> None:
    ns = rng.choice(NAMESPACES)
    pod = f"{rng.choice(('postgres', 'redis'))}-{rng.randrange(3)}"
    event.update(
        verb="get", stage="ResponseStarted",
        requestURI=f"/api/v1/namespaces/{ns}/pods/{pod}/portforward",
        user=_human(rng),
        userAgent="kubectl/v1.31.0 (linux/amd64) kubernetes/9edcffc",
        objectRef={"resource": "pods", "namespace": ns, "name": pod, "apiVersion": "v1",
                   "subresource": "portforward"},
        responseStatus={"metadata": {}, "code": 101})


# (weight, builder): mostly system noise, like a real cluster
KINDS = ((55, _lease), (25, _controller_read), (7, _exec), (6, _secret_get), (4, _patch),
         (3, _port_forward))
_WEIGHTS = [w for w, _ in KINDS]


def make_line(seed: int, i: int) -> bytes:
    """Line `i` of the log for `seed`, newline included; always the same bytes."""
    rng = random.Random(f"{seed}:{i}")
    event = _base(rng, i)
    builder = rng.choices([b for _, b in KINDS], weights=_WEIGHTS)[0]
    builder(rng, event)
    return orjson.dumps(event) + b"\n"


def generate(seed: int, count: int) -> list[bytes]:
    """The first `count` lines for `seed`."""
    return [make_line(seed, i) for i in range(count)]


class Writer:
    """Appends lines to `path` and rotates it like the apiserver (or logrotate)."""

    def __init__(self, path: Path, rotate_bytes: int, kinds: list[str], seed: int) -> None:
        self.path = path
        self.rotate_bytes = rotate_bytes
        self.kinds = kinds
        self.rng = random.Random(seed)
        self.written = 0  # bytes in the current file
        self.last_stamp = ""
        self.fd = self._create()

    def _create(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, line: bytes) -> None:
        """One write(2) per line, then rotate when the file is big enough."""
        os.write(self.fd, line)
        self.written += len(line)
        if self.kinds and self.written >= self.rotate_bytes:
            self.rotate(self.rng.choice(self.kinds))

    def rotated_name(self) -> Path:
        """`<stem>-<UTC time with ms><ext>`, strictly increasing like the real names."""
        now = dt.datetime.now(dt.UTC)
        stamp = now.strftime(STAMP_FORMAT) + f".{now.microsecond // 1000:03d}"
        while stamp <= self.last_stamp:
            now += dt.timedelta(milliseconds=1)
            stamp = now.strftime(STAMP_FORMAT) + f".{now.microsecond // 1000:03d}"
        self.last_stamp = stamp
        stem, ext = os.path.splitext(self.path.name)
        return self.path.with_name(f"{stem}-{stamp}{ext}")

    def rotate(self, kind: str) -> None:
        """Rotate by `kind`: rename, gzip or truncate."""
        if kind == "truncate":
            shutil.copyfile(self.path, self.path.with_name(self.path.name + ".1"))
            os.ftruncate(self.fd, 0)
        else:
            os.close(self.fd)
            target = self.rotated_name()
            os.rename(self.path, target)
            self.fd = self._create()
            if kind == "gzip":
                with open(target, "rb") as src, gzip.open(f"{target}.gz", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.unlink(target)
        self.written = 0

    def close(self) -> None:
        """Close the current file."""
        os.close(self.fd)


def main(argv: list[str] | None = None) -> int:
    """Write lines `--first`..`--lines`-1 at `--rate` lines/s, rotating as asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--first", type=int, default=0, help="index of the first line")
    parser.add_argument("--rate", type=float, default=0.0, help="lines per second, 0: no pause")
    parser.add_argument("--rotate-bytes", type=int, default=64 * 1024)
    parser.add_argument("--rotate", default="rename,gzip",
                        help="comma-separated kinds picked at random: rename,gzip,truncate")
    args = parser.parse_args(argv)
    kinds = [k for k in args.rotate.split(",") if k]
    args.path.parent.mkdir(parents=True, exist_ok=True)
    writer = Writer(args.path, args.rotate_bytes, kinds, args.seed)
    started = time.monotonic()
    for n, i in enumerate(range(args.first, args.lines)):
        writer.write(make_line(args.seed, i))
        if args.rate > 0:
            delay = started + (n + 1) / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    writer.close()
    print(args.lines, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
