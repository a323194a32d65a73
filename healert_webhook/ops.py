"""The ops listener: /metrics for Prometheus, /healthz (alive), /readyz (can take work).

Ready means: outbox writable, webhook listener up (when serving), its serving
certificate within its validity (with TLS) and the tailer following (when tailing);
rules are always loaded, an agent without them does not start. An expired or not yet
valid certificate fails every apiserver handshake, so the webhook takes no work then:
unready says so on the pod, and takes a Service-mode replica out of the endpoints while
another may still serve. The forwarder's state and the view of the cluster's are shown
in /readyz's body but never make the agent unready: a backend outage must not take the
webhook out of the apiserver's reach, the outbox exists to ride it out, and ingest never
waits for the cluster (entities fall back to the name rules meanwhile). No endpoint
shows configuration, paths of secrets, URLs or keys.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from healert_webhook import metrics

# Forwarder status keys that may be shown; anything else (the backend URL, an error text
# that may quote it) stays hidden.
SHOWN_STATUS = ("state", "reason", "delivered")
PAUSED_STATES = ("paused", "locked")


class Writable(Protocol):
    """The outbox's readiness check (blocking)."""

    def writable(self) -> str | None:
        """None when writes work, else the reason."""
        ...


class StatusSource(Protocol):
    """The forwarder's status (for the /readyz body only)."""

    def status(self) -> dict[str, object]:
        """A small dict describing delivery (paused, reason, ...)."""
        ...


class Describable(Protocol):
    """The view of the cluster's state (for the /readyz body only)."""

    def describe(self) -> str:
        """One line: synced, or what is not and why (no URL, no secret)."""
        ...


class ReadySource(Protocol):
    """A part's readiness check: the tailer's, the serving certificate's."""

    def ready(self) -> str | None:
        """None when ready (following the file, a valid certificate), else the reason."""
        ...


class NoteSource(Protocol):
    """Something that may be wrong without making the agent unready."""

    def note(self) -> str | None:
        """None when all is well, else one line for /readyz's body."""
        ...


@dataclass
class Health:
    """What /readyz looks at; server.py fills it in as parts start and stop."""

    outbox: Writable | None = None
    forwarder: StatusSource | None = None
    tailer: ReadySource | None = None
    certificate: ReadySource | None = None
    rules: NoteSource | None = None
    cluster: Describable | None = None
    webhook_expected: bool = False
    webhook_up: bool = False
    stopping: bool = False

    def problems(self) -> list[str]:
        """Why the agent is not ready (empty when it is). Blocking: run in a thread."""
        out: list[str] = []
        if self.stopping:
            out.append("shutting down")
        if self.outbox is None:
            out.append("outbox not open")
        else:
            reason = self.outbox.writable()
            if reason:
                out.append(reason)
        if self.webhook_expected and not self.webhook_up:
            out.append("webhook listener not up")
        if self.certificate is not None:
            reason = self.certificate.ready()
            if reason:
                out.append(reason)
        if self.tailer is not None:
            reason = self.tailer.ready()
            if reason:
                out.append(f"tail: {reason}")
        return out

    def warnings(self) -> list[str]:
        """What is wrong without keeping the agent from taking events (the rules file)."""
        note = self.rules.note() if self.rules is not None else None
        return [f"warning: {note}"] if note else []

    def delivery(self) -> str:
        """One line about deliveries, without configuration or secrets."""
        if self.forwarder is None:
            return "deliveries: not running"
        try:
            status = self.forwarder.status()
        except Exception as exc:  # status is informative only; never fail /readyz on it
            return f"deliveries: status unavailable ({type(exc).__name__})"
        return format_status(status)

    def cluster_view(self) -> str | None:
        """One line about the view of the cluster, or None when it does not run."""
        if self.cluster is None:
            return None
        try:
            return self.cluster.describe()
        except Exception as exc:  # informative only, as delivery()
            return f"cluster view: state unavailable ({type(exc).__name__})"


def format_status(status: dict[str, object]) -> str:
    """Render the forwarder's status as one line, showing only known harmless keys."""
    if status.get("state") in PAUSED_STATES or status.get("paused"):
        reason = status.get("reason")
        return f"deliveries paused: {reason if isinstance(reason, str) else 'see the logs'}"
    parts = [f"{key}={status[key]}" for key in SHOWN_STATUS
             if key in status and isinstance(status[key], str | int | float | bool | None)]
    return "deliveries: " + (" ".join(parts) if parts else "running")


def make_ops_app(health: Health) -> Starlette:
    """The ops ASGI app serving /metrics, /healthz and /readyz."""

    async def metrics_endpoint(_: Request) -> Response:
        # Rendering walks every metric: keep it off the loop that answers the webhook.
        data = await asyncio.to_thread(generate_latest, REGISTRY)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        problems = await asyncio.to_thread(health.problems)
        lines = [f"not ready: {p}" for p in problems] if problems else ["ready"]
        lines.extend(health.warnings())
        lines.append(health.delivery())
        view = health.cluster_view()
        if view is not None:
            lines.append(view)
        return PlainTextResponse("\n".join(lines) + "\n", status_code=503 if problems else 200)

    _ = metrics  # every metric is registered by importing the module
    return Starlette(routes=[
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ])
