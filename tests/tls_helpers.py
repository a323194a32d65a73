"""Helpers of the webhook/server/ops suites: a test PKI, TLS clients, audit events, servers.

Certificates are real, made with `trustme` per test in a tmp dir: a CA, the webhook's
server certificate for 127.0.0.1/localhost, client certificates for the apiserver, and a
second, unrelated CA for "certificate from another CA" cases. Audit events come from
/work/shared/fixtures plus a generator of realistic exec / port-forward / noise events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import trustme

FIXTURES = Path(os.environ.get("HEALERT_FIXTURES", "/work/shared/fixtures"))

CLIENT_NAME = "kube-apiserver-audit"


@dataclass
class PKI:
    """Files of one test PKI."""

    dir: Path
    ca: trustme.CA
    ca_file: Path  # the CA bundle clients trust and the server checks clients against
    server_cert: Path  # server certificate chain (PEM)
    server_key: Path

    def client(self, name: str = CLIENT_NAME, *, ca: trustme.CA | None = None) -> Path:
        """A client certificate (CN and DNS SAN `name`) with its key, in one PEM file."""
        leaf = (ca or self.ca).issue_cert(name, common_name=name)
        path = self.dir / f"client-{name}-{id(leaf)}.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
        return path

    def reissue_server(self, common_name: str) -> None:
        """Replace the server certificate and key in place (what cert-manager does)."""
        leaf = self.ca.issue_cert("127.0.0.1", "localhost", common_name=common_name)
        leaf.private_key_pem.write_to_path(str(self.server_key))
        leaf.cert_chain_pems[0].write_to_path(str(self.server_cert))
        for extra in leaf.cert_chain_pems[1:]:
            extra.write_to_path(str(self.server_cert), append=True)


def make_pki(directory: Path, server_cn: str = "healert-webhook-1") -> PKI:
    """A CA and a server certificate for 127.0.0.1 and localhost under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_file = directory / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    pki = PKI(directory, ca, ca_file, directory / "server.crt", directory / "server.key")
    pki.reissue_server(server_cn)
    return pki


def client_context(pki: PKI, client_pem: Path | None = None, *,
                   maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client context trusting the test CA, presenting `client_pem` if given."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    if client_pem is not None:
        ctx.load_cert_chain(str(client_pem))
    if maximum is not None:
        with warnings.catch_warnings():  # old versions are deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = maximum
        ctx.set_ciphers("ALL:@SECLEVEL=0")  # let an old-version client even try
    return ctx


def server_common_name(port: int, ctx: ssl.SSLContext) -> str:
    """Open a NEW connection and return the CN of the certificate the server presents."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        cert = conn.getpeercert()
    assert cert is not None
    for rdn in cert["subject"]:
        for attr, value in rdn:
            if attr == "commonName":
                return str(value)
    raise AssertionError("server certificate has no CN")


def handshake_error(port: int, ctx: ssl.SSLContext) -> BaseException | None:
    """Connect, finish the handshake and send one request; the error seen, or None.

    With TLS 1.3 a server that refuses the client certificate says so after the client
    considers the handshake done, so the error can arrive on the first read.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = conn.recv(1024)
            if not data:
                return ConnectionResetError("closed without an answer")
    except (ssl.SSLError, OSError) as exc:
        return exc
    return None


# -- audit events ----------------------------------------------------------------------

RULES = """\
rules:
  - name: kubectl-exec
    description: "{actor} opened a shell in {name}"
    severity: high
    ignore_system: true
    match:
      resource: pods
      subresource: exec
      verbs: [create, get]
  - name: port-forward
    description: "{actor} port-forwarded to {name}"
    severity: medium
    ignore_system: true
    match:
      resource: pods
      subresource: portforward
      verbs: [create, get]
"""


def two_rules(prefix: str) -> str:
    """A rules file whose two rules both match every exec: `<prefix>-one`, `<prefix>-two`."""
    return "rules:\n" + "".join(
        f"  - name: {prefix}-{n}\n    severity: low\n    match:\n"
        f"      resource: pods\n      subresource: exec\n" for n in ("one", "two"))


def exec_event(i: int, *, sub: str = "exec", verb: str = "get", tag: str = "a",
               user: str = "alice@example.com", ns: str = "payments",
               pod: str = "payments-api-7d9f8b6c4-xkj2p", pad: int = 0) -> dict[str, Any]:
    """A kubectl exec (WebSocket era: verb get) or port-forward, as the webhook sends it."""
    event: dict[str, Any] = {
        "level": "Metadata", "auditID": f"{tag}-{i:08d}-4c1d-9a3e-5b6f7d8e9f00",
        "stage": "ResponseComplete",
        "requestURI": f"/api/v1/namespaces/{ns}/pods/{pod}/{sub}?command=sh&stdin=true&tty=true",
        "verb": verb,
        "user": {"username": user, "groups": ["oidc:developers", "system:authenticated"]},
        "sourceIPs": ["10.20.30.40"], "userAgent": "kubectl/v1.31.2 (linux/amd64)",
        "objectRef": {"resource": "pods", "namespace": ns, "name": pod, "apiVersion": "v1",
                      "subresource": sub},
        "responseStatus": {"metadata": {}, "code": 101},
        "requestReceivedTimestamp": f"2026-11-26T10:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}Z",
        "stageTimestamp": f"2026-11-26T10:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}Z",
        "annotations": {"authorization.k8s.io/decision": "allow",
                        "authorization.k8s.io/reason": ""},
    }
    if pad:  # RequestResponse-sized events: the object travels along
        event["level"] = "RequestResponse"
        event["responseObject"] = {"kind": "Status", "blob": "x" * pad}
    return event


def noise_event(i: int) -> dict[str, Any]:
    """A kubelet renewing its lease: the bulk of real audit traffic, matching no rule."""
    return {
        "level": "Metadata", "auditID": f"n-{i:08d}", "stage": "ResponseComplete",
        "requestURI": f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/node-{i}",
        "verb": "update", "user": {"username": f"system:node:node-{i % 7}"},
        "objectRef": {"resource": "leases", "namespace": "kube-node-lease",
                      "name": f"node-{i % 7}", "apiGroup": "coordination.k8s.io"},
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": "2026-11-26T10:00:00.000000Z",
    }


def fixture_events() -> list[Any]:
    """Every event in the shared fixtures (JSON lines and single-event files), as items.

    Webhook items carry no kind/apiVersion, so those are dropped; the malformed fixture
    (`{"kind": 0}`) stays in: a bad item must not fail its batch.
    """
    events: list[Any] = []
    for path in sorted(FIXTURES.rglob("*")):
        if path.suffix not in {".json", ".log", ".ndjson"}:
            continue
        text = path.read_text(encoding="utf-8")
        try:
            docs = [orjson.loads(text)]
        except orjson.JSONDecodeError:
            docs = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        for doc in docs:
            if isinstance(doc, dict) and "auditID" in doc:
                doc.pop("kind", None)
                doc.pop("apiVersion", None)
            events.append(doc)
    return events


def event_list(items: list[Any]) -> bytes:
    """An EventList body exactly as the apiserver sends it."""
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
                         "metadata": {}, "items": items})


def batch_of_400(tag: str = "a") -> tuple[list[Any], int]:
    """400 items: the fixtures, 100 exec/port-forward by people, kubelet noise.

    Returns the items and how many of them are people's exec/port-forward (all detected).
    """
    items = fixture_events()
    mine = [exec_event(i, sub="exec" if i % 2 else "portforward", verb="get" if i % 3 else
                       "create", tag=tag) for i in range(100)]
    items += mine
    items += [noise_event(i) for i in range(400 - len(items))]
    assert len(items) == 400
    return items, len(mine)


# -- in-process servers ----------------------------------------------------------------


@dataclass
class Running:
    """A uvicorn server running in a background thread on an ephemeral loopback port."""

    port: int
    server: Any
    thread: threading.Thread


@contextlib.contextmanager
def serve_app(app: Any, ctx: ssl.SSLContext | None = None, *, protocol: Any = None,
              keep_alive: float | None = None) -> Iterator[Running]:
    """Serve `app` with the agent's own uvicorn setup (uvloop, httptools, its protocol).

    `protocol` and `keep_alive` replace the agent's protocol class and idle timeout, so
    timeouts of tens of seconds can be tested in one or two.
    """
    from healert_webhook import server as srv
    from healert_webhook import tls

    sock = srv.bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    if protocol is None:
        protocol = tls.PeerInfoProtocol if ctx is not None else tls.GuardedHttpProtocol
    config = srv._uvicorn_config(app, http=protocol, ctx=ctx)
    if keep_alive is not None:
        config.timeout_keep_alive = keep_alive  # type: ignore[assignment]
    server = srv._Server(config)

    def run() -> None:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="server start")
    try:
        yield Running(port, server, thread)
    finally:
        server.should_exit = True
        thread.join(30)


def wait_for(check: Callable[[], Any], *, timeout: float = 20.0, what: str = "condition"
             ) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def sample(name: str, **labels: str) -> float:
    """The current value of a metric sample in this process (0 when absent)."""
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0
