"""The durable queue between detection and delivery (see queue.py)."""

from healert_webhook.outbox.files import exclusive, forward_lock_path, move_aside, quick_check
from healert_webhook.outbox.queue import (
    EXPIRED,
    UNDECODABLE,
    DeadLetter,
    Outbox,
    OutboxStats,
    Queued,
)
from healert_webhook.outbox.schema import SCHEMA_VERSION, OutboxCorrupt, error_reason

__all__ = ["EXPIRED", "SCHEMA_VERSION", "UNDECODABLE", "DeadLetter", "Outbox", "OutboxCorrupt",
           "OutboxStats", "Queued", "error_reason", "exclusive", "forward_lock_path",
           "move_aside", "quick_check"]
