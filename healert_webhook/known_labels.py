"""Every label value the agent can write, exported at 0 from the start.

A labelled series appears only when its first child is created: a dashboard panel would
read "No data" and an `increase()` alert would miss the first event (an increase needs a
sample before it). So when the agent starts, every known label combination is created at
0 — the sources it runs, the answers it can give, every skip, invalid and repair reason,
every delivery outcome. (The pipeline creates every enabled rule's (rule, severity) when it
loads a rule set.)
Label values decided at run time outside these sets (an HTTP status the backend invents)
still appear on their first use.
"""

from __future__ import annotations

from collections.abc import Iterable

from healert_webhook import metrics
from healert_webhook.audit import FIXUPS, INVALID_REASONS
from healert_webhook.backend import OUTCOME_LABELS
from healert_webhook.index import SKIP_REASONS
from healert_webhook.outbox.schema import ERROR_REASONS
from healert_webhook.rules.conditions import CONDITION_ORDER
from healert_webhook.tls import HANDSHAKE_REASONS

# What reading a body, a line or a document can find that is no audit event.
NOT_EVENTS = ("bad_json", "not_an_object", "truncated_line", "bad_shape", "evaluation_error",
              "unusable")
SKIPS = (*SKIP_REASONS, *CONDITION_ORDER, "no_name")
WEBHOOK_ANSWERS = ("200", "400", "401", "403", "404", "405", "408", "413", "415", "431",
                   "499", "500", "503")
TOKEN_REASONS = ("missing_token", "bad_token", "client_name")
DEAD_LETTER_LABELS = ("contract", "expired", "undecodable", "error", "http_422")
TAIL_ROTATIONS = ("rename", "truncate", "replaced")
TAIL_SKIPS = ("too_long", "bad_gzip", "bad_json", "not_an_object", "truncated_line")


def zero(sources: Iterable[str], listeners: Iterable[str]) -> None:
    """Create every known series of an agent running `sources` (webhook, tail) behind
    `listeners` (webhook, ops)."""
    sources = tuple(sources)
    for source in sources:
        for metric in (metrics.AUDIT_EVENTS, metrics.RULED_OUT_EVENTS, metrics.DUPLICATES):
            metric.labels(source)
        for reason in (*INVALID_REASONS, *NOT_EVENTS):
            metrics.INVALID_EVENTS.labels(source, reason)
        for reason in SKIPS:
            metrics.SKIPPED_EVENTS.labels(source, reason)
        for fixup in FIXUPS:
            metrics.EVENT_FIXUPS.labels(source, fixup)
    for listener in listeners:
        metrics.CONNECTIONS_OPEN.labels(listener)
        for cap in ("max_connections", "max_handshakes"):
            metrics.CONNECTIONS_REFUSED.labels(listener, cap)
    if "webhook" in sources:
        _zero_webhook()
    if "tail" in sources:
        _zero_tail()
    _zero_delivery()


def _zero_webhook() -> None:
    for code in WEBHOOK_ANSWERS:
        metrics.WEBHOOK_REQUESTS.labels(code)
    for path in ("items", "whole"):
        metrics.WEBHOOK_PARSES.labels(path)
    for reason in (*TOKEN_REASONS, *HANDSHAKE_REASONS):
        metrics.WEBHOOK_AUTH_FAILURES.labels(reason)
    for result in ("loaded", "refused"):
        metrics.TLS_CERT_RELOADS.labels(result)


def _zero_tail() -> None:
    for kind in TAIL_ROTATIONS:
        metrics.TAIL_ROTATIONS.labels(kind)
    for reason in TAIL_SKIPS:
        metrics.TAIL_SKIPPED.labels(reason)


def _zero_delivery() -> None:
    for result in ("success", "failure"):
        metrics.RULES_RELOADS.labels(result)
    for reason in (*ERROR_REASONS, "replaced"):
        metrics.OUTBOX_WRITE_ERRORS.labels(reason)
    for label in DEAD_LETTER_LABELS:
        metrics.DEAD_LETTERED.labels(label)
    for label in OUTCOME_LABELS:
        metrics.FORWARD_ATTEMPTS.labels(label)
    for result in ("delivered", "resent", "unverifiable"):
        metrics.FORWARD_RECONCILED.labels(result)
