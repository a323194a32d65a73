"""Every Prometheus metric of the agent, defined in one place.

Labels are bounded sets (status codes, rule names, reasons, sources): never namespaces,
entities or users, whose cardinality an attacker or a busy cluster controls.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

from healert_webhook import __version__
from healert_webhook.config import env
from healert_webhook.entity import METHODS

BUILD_INFO = Info("healert_build", "Version of the running agent")
BUILD_INFO.info({"version": __version__})

# Ingest (all sources)
AUDIT_EVENTS = Counter(
    "healert_audit_events_total", "Audit events received", ["source"])
INVALID_EVENTS = Counter(
    "healert_invalid_events_total", "Audit events or lines skipped as malformed",
    ["source", "reason"])
SKIPPED_EVENTS = Counter(
    "healert_skipped_events_total",
    "Well-formed audit events that produced no friction event, by reason", ["source", "reason"])
RULED_OUT_EVENTS = Counter(
    "healert_events_ruled_out_total",
    "Audit events ruled out from the few fields the rules decide on, never parsed whole "
    "(also counted in healert_skipped_events_total)", ["source"])
FRICTION_EVENTS = Counter(
    "healert_friction_events_total", "Friction events detected", ["rule", "severity"])
EVENT_FIXUPS = Counter(
    "healert_event_fixups_total",
    "Friction events repaired so that they could still be delivered (a timestamp taken "
    "from stageTimestamp, or left to the backend), by source and repair", ["source", "fixup"])
DUPLICATES = Counter(
    "healert_duplicates_suppressed_total",
    "Friction events not stored because the same request was already seen", ["source"])

# Rules
RULES_LOADED = Gauge("healert_rules_loaded", "Rules enabled in the active rule set")
RULES_RELOADS = Counter(
    "healert_rules_reloads_total", "Rule reloads by result (success, failure)", ["result"])
RULES_FILE_INVALID = Gauge(
    "healert_rules_file_invalid",
    "1 while the configured rules file cannot be used: the agent runs on the last rules "
    "that loaded (or the packaged ones)")

# Webhook
WEBHOOK_REQUESTS = Counter(
    "healert_webhook_requests_total", "Webhook requests by HTTP status code", ["code"])
WEBHOOK_DURATION = Histogram(
    "healert_webhook_request_duration_seconds", "Time from request start to answer",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))
WEBHOOK_BODY_BYTES = Histogram(
    "healert_webhook_body_bytes", "Size of webhook request bodies",
    buckets=(1024, 16384, 131072, 1048576, 4194304, 16777216, 67108864))
WEBHOOK_PARSES = Counter(
    "healert_webhook_parses_total",
    "Webhook bodies by how they were read: by simdjson, events parsed as needed (items), "
    "or parsed whole by orjson (whole)",
    ["path"])
WEBHOOK_BUSY = Counter(
    "healert_webhook_busy_total",
    "Webhook requests answered 503 because too many bodies were in memory at once")
WEBHOOK_AUTH_FAILURES = Counter(
    "healert_webhook_auth_failures_total", "Webhook requests refused by authentication",
    ["reason"])

# Connections (both listeners): what the gate in front of each listener admits and refuses
CONNECTIONS_OPEN = Gauge(
    "healert_connections_open", "Open connections, by listener", ["listener"])
CONNECTIONS_REFUSED = Counter(
    "healert_connections_refused_total",
    "Connections closed at once because a cap was reached, by listener and cap",
    ["listener", "reason"])
HANDSHAKES_IN_PROGRESS = Gauge(
    "healert_tls_handshakes_in_progress", "TLS handshakes under way on the webhook listener")
HANDSHAKE_TIMEOUTS = Counter(
    "healert_tls_handshake_timeouts_total",
    "TLS handshakes abandoned because the peer did not finish within the deadline")

# Outbox
OUTBOX_DEPTH = Gauge("healert_outbox_depth", "Friction events waiting to be delivered")
OUTBOX_OLDEST_AGE = Gauge(
    "healert_outbox_oldest_age_seconds", "Age of the oldest friction event waiting")
OUTBOX_FULL = Gauge(
    "healert_outbox_full",
    f"1 while stores are refused because the queue is at {env('outbox_max_events')}")
OUTBOX_WRITE_ERRORS = Counter(
    "healert_outbox_write_errors_total", "Failed outbox transactions, by reason", ["reason"])
DEAD_LETTERS = Gauge("healert_dead_letters", "Friction events parked as dead letters")
DEAD_LETTERED = Counter(
    "healert_dead_lettered_total", "Friction events moved to the dead letters, by reason",
    ["reason"])

# Forwarder
FORWARD_ATTEMPTS = Counter(
    "healert_forward_attempts_total", "Delivery attempts by outcome", ["outcome"])
FORWARD_DURATION = Histogram(
    "healert_forward_duration_seconds", "Duration of delivery requests to the backend",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
FORWARD_PAUSED = Gauge(
    "healert_forward_paused", "1 while deliveries are paused because the backend refused the key")

# Tail
TAIL_BYTES = Counter("healert_tail_bytes_read_total", "Bytes read from audit log files")
TAIL_LINES = Counter("healert_tail_lines_read_total", "Lines read from audit log files")
TAIL_LAG = Gauge("healert_tail_lag_bytes", "Bytes between the checkpoint and the end of the file")
TAIL_ROTATIONS = Counter(
    "healert_tail_rotations_total", "Log rotations followed, by kind", ["kind"])
TAIL_SKIPPED = Counter(
    "healert_tail_lines_skipped_total", "Audit log lines skipped, by reason", ["reason"])
TAIL_CHECKPOINT_AGE = Gauge(
    "healert_tail_checkpoint_age_seconds", "Seconds since the tail checkpoint last advanced")

# Requests whose answer was lost (agent killed, timeout) and that are sent again.
FORWARD_RECONCILED = Counter(
    "healert_forward_reconciled_total",
    "Events whose answer was lost, settled by reading the backend: delivered (it had it), "
    "resent (it had not), unverifiable (the read could not tell; resent)", ["result"])
FORWARD_UNCERTAIN_RESENDS = Counter(
    "healert_forward_uncertain_resends_total",
    "Friction events sent again after a request whose answer was lost (possible duplicates)")

# Cluster view (cluster/): watches of the workloads' metadata. Labels: the watched
# resources (a fixed set), reasons and results (fixed sets).
CLUSTER_SYNCED = Gauge(
    "healert_cluster_view_synced",
    "1 while the resource has been listed and its watch is current, by resource",
    ["resource"])
CLUSTER_OBJECTS = Gauge(
    "healert_cluster_view_objects", "Objects held in the cluster view, by resource",
    ["resource"])
CLUSTER_TOMBSTONES = Gauge(
    "healert_cluster_view_tombstones",
    f"Deleted objects the view keeps for {env('cluster_tombstone_window')} seconds")
CLUSTER_FETCHED_OWNERS = Gauge(
    "healert_cluster_view_fetched_owners",
    "Owners of kinds not watched (CRDs such as Argo Rollouts) fetched by GET and kept")
CLUSTER_RELISTS = Counter(
    "healert_cluster_view_lists_total",
    "Full lists of a resource, by why: start, expired (410 Gone: the watch's version was "
    "compacted away), error (listing failed before)", ["resource", "reason"])
CLUSTER_WATCH_ERRORS = Counter(
    "healert_cluster_view_errors_total",
    "Failed lists or watches, retried after a backoff, by resource and reason "
    "(forbidden, unauthorized, http_5xx, timeout, transport, bad_answer, empty_watch, other)",
    ["resource", "reason"])
CLUSTER_WATCH_EVENTS = Counter(
    "healert_cluster_view_events_total",
    "Watch events applied to the view, by resource and type (added, modified, deleted, "
    "bookmark)", ["resource", "type"])
CLUSTER_OWNER_FETCHES = Counter(
    "healert_cluster_view_owner_fetches_total",
    "GETs of owners of kinds not watched, by result (fetched, not_found, forbidden, "
    "unknown_kind, error, queue_full)", ["result"])
# Hardening of the delivery side: nothing from the backend, the key file or the clock ends it
API_KEY_INVALID = Gauge(
    "healert_api_key_invalid",
    "1 while the API key file holds what cannot be used as a key (the key loaded before "
    "stays in use)")
FORWARD_ERRORS = Counter(
    "healert_forward_errors_total",
    "Unexpected errors in the forwarder: row (one event's delivery; it backs off and is "
    "set aside after repeated failures) or loop (the forwarder itself backs off)", ["where"])
FORWARD_RECONCILE_READS = Counter(
    "healert_forward_reconcile_reads_total",
    "Reads of GET /friction for events whose answer was lost, by result: found, missing, "
    "unverifiable, no_endpoint, error", ["result"])
FORWARD_AWAITING_READ = Gauge(
    "healert_forward_awaiting_read",
    "Events whose answer was lost that wait for GET /friction to answer before they may be "
    "sent again")
DEAD_LETTERS_PRUNED = Counter(
    "healert_dead_letters_pruned_total",
    f"Dead letters deleted by the bounds: age ({env('dead_letter_max_age_days')}) or count "
    f"({env('dead_letter_max_events')}); their keys still stop a late duplicate", ["reason"])

# Every label of these is known: shown at 0 from the start, not after the first increment.
for _where in ("row", "loop"):
    FORWARD_ERRORS.labels(_where)
for _result in ("found", "missing", "unverifiable", "no_endpoint", "error"):
    FORWARD_RECONCILE_READS.labels(_result)
for _reason in ("age", "count"):
    DEAD_LETTERS_PRUNED.labels(_reason)
# Files the agent reads: what it refused or skipped in them.
TAIL_NOT_REGULAR = Gauge(
    "healert_tail_not_regular_file",
    "1 while the followed audit log path is no regular file (a FIFO, a device, a "
    "directory...): the tail never blocks on it and waits for a regular file there")
TAIL_NUL_BYTES = Counter(
    "healert_tail_nul_bytes_skipped_total",
    "NUL bytes skipped in audit log files: no event holds one; a crash of the writer "
    "leaves runs of them where data was to be")
# The webhook's serving certificate (TLS listeners only)
TLS_CERT_EXPIRY = Gauge(
    "healert_tls_certificate_expiry_timestamp_seconds",
    "When the serving certificate in use expires (Unix time); 0 when the webhook has no TLS")
TLS_CERT_RELOADS = Counter(
    "healert_tls_certificate_reloads_total",
    "Replacements of the serving certificate: loaded, or refused (the one in use kept; "
    "counted once per change of the files or of the reason)", ["result"])

# Entity resolution: which way each friction-yielding event's entity was found.
ENTITY_RESOLUTIONS = Counter(
    "healert_entity_resolutions_total",
    "Audit events charged to an entity, by how the entity was found: label (an entity "
    "label on the object, up its owners or on a controller's pod template), owner (the top "
    "owner's name), namespace (the entity the namespace declares), name (the name rules: "
    "no view of the cluster, or it could not answer)", ["method"])
for _method in METHODS:
    ENTITY_RESOLUTIONS.labels(_method)
