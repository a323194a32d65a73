"""Every setting of the agent, read from flags and environment and validated once.

Each setting has one `Option` row: its command-line flag, the environment variables that
may set it (the first one set wins; the old Go agent's names are listed too), a parser and
a default. The CLI builds its flags from these rows, so `--help`, the README table and the
program cannot disagree about names or defaults.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from healert_webhook.entity import CATALOG_NAMESPACES, LABEL_KEYS
from healert_webhook.filewatch import read_regular
from healert_webhook.logs import redact_urls

DEFAULT_STATE_DIR = "./state"
LOCAL_RULES = Path("rules.yaml")


class ConfigError(ValueError):
    """A setting has a value the agent cannot use; the message names the setting."""


def parse_bool(text: str) -> bool:
    """Parse a boolean written as 1/0, true/false, yes/no or on/off."""
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse `host:port` (IPv6 as `[::1]:8443`) into a (host, port) pair."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", port  # noqa: S104 - listening on all interfaces is the default


def parse_positive_int(text: str) -> int:
    """Parse an integer greater than zero."""
    value = int(text.strip())
    if value <= 0:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return value


def parse_positive_float(text: str) -> float:
    """Parse a number greater than zero."""
    value = float(text.strip())
    if not value > 0:
        raise ValueError(f"expected a positive number, got {text!r}")
    return value


def parse_choice(*choices: str) -> Callable[[str], str]:
    """Return a parser that accepts one of `choices` (case-insensitive)."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return value

    return parse


def parse_list(text: str) -> tuple[str, ...]:
    """Parse a comma-separated list, dropping blanks."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_label_keys(text: str) -> tuple[str, ...]:
    """Label keys in order, comma-separated: at least one, no blanks inside a key."""
    keys = parse_list(text)
    if not keys:
        raise ValueError("expected at least one label key")
    for key in keys:
        if any(c.isspace() for c in key):
            raise ValueError(f"a label key holds no whitespace: {key!r}")
    return keys


def parse_proxies(text: str) -> tuple[str, ...]:
    """Access proxy identities, comma-separated: `user:NAME`, `group:NAME` or a bare NAME
    (a user name)."""
    names = parse_list(text)
    for name in names:
        kind, sep, rest = name.partition(":")
        if sep and kind in ("user", "group") and not rest:
            raise ValueError(f"{name!r} names no {kind}")
    return names


def parse_path(text: str) -> Path:
    """Parse a filesystem path (`~` expanded)."""
    return Path(text.strip()).expanduser()


def parse_path_list(text: str) -> tuple[Path, ...]:
    """Parse one path or a KUBECONFIG-style list of them (separated by os.pathsep)."""
    return tuple(Path(part.strip()).expanduser() for part in text.split(os.pathsep)
                 if part.strip())


@dataclass(frozen=True)
class Option:
    """One setting: where it comes from, how it is parsed, what it defaults to."""

    name: str
    flag: str | None  # None: environment only (secrets never go on a command line)
    env: tuple[str, ...]
    parse: Callable[[str], Any]
    default: Any
    help: str
    secret: bool = False
    group: str = "detect"  # which commands take it: see cli.COMMAND_GROUPS
    shown_default: str | None = None  # how --help and the docs describe a computed default
    # Computed when neither a flag nor the environment gave a value (None: use `default`).
    fallback: Callable[[], Any] | None = None


OPTIONS: tuple[Option, ...] = (
    # detection
    Option("rules_path", "--rules", ("RULES_PATH",), parse_path, None,
           "detection rules file", group="rules",
           fallback=lambda: LOCAL_RULES if LOCAL_RULES.is_file() else None,
           shown_default="./rules.yaml if present, else the packaged rules"),
    Option("entity_namespace", "--entity-namespace", ("ENTITY_NAMESPACE",), str, "default",
           "catalog namespace for cluster-scoped objects"),
    Option("k8s_namespace", "--k8s-namespace", ("K8S_NAMESPACE",), str, None,
           "the agent's own namespace, never reported"),
    Option("entity_label_keys", "--entity-label-keys", ("HEALERT_ENTITY_LABEL_KEYS",),
           parse_label_keys, LABEL_KEYS,
           "label keys naming an object's catalog entity, tried in order, comma-separated"),
    Option("catalog_namespace", "--catalog-namespace", ("HEALERT_CATALOG_NAMESPACE",),
           parse_choice(*CATALOG_NAMESPACES), CATALOG_NAMESPACES[0],
           "the namespace of entity refs: kubernetes (the object's own; ENTITY_NAMESPACE "
           "for cluster-scoped objects) or entity-namespace (ENTITY_NAMESPACE for all)"),
    Option("access_proxies", "--access-proxies", ("HEALERT_ACCESS_PROXIES",), parse_proxies,
           (), "access proxies that are no service account, whose impersonated user is "
           "the actor: user names (or user:NAME) and group:NAME, comma-separated"),
    # read by nativescan.py when imported, so the environment only
    Option("native_scanner", None, ("HEALERT_NATIVE",), parse_choice("on", "off"), "on",
           "the optional native field scanner, where it was built; off: the pure one"),
    # the backend
    Option("backend_url", "--backend-url", ("HEALERT_BACKEND_URL",), str, None,
           "Healert backend base URL (unset: keep events in the outbox and log them)",
           group="backend"),
    Option("api_key", None, ("HEALERT_API_KEY",), str, None,
           "bearer key for the backend (environment only; prefer the key file)",
           secret=True, group="backend"),
    Option("api_key_file", "--api-key-file", ("HEALERT_API_KEY_FILE",), parse_path, None,
           "file holding the backend bearer key", group="backend"),
    Option("forward_timeout", "--forward-timeout", ("HEALERT_FORWARD_TIMEOUT",),
           parse_positive_float, 10.0, "seconds one request to the backend may take in all",
           group="backend"),
    # the outbox
    Option("state_dir", "--state-dir", ("HEALERT_STATE_DIR",), parse_path,
           Path(DEFAULT_STATE_DIR), "outbox database and checkpoints", group="outbox",
           shown_default="./state locally, /var/lib/healert in the image"),
    Option("outbox_max_events", "--outbox-max-events", ("HEALERT_OUTBOX_MAX_EVENTS",),
           parse_positive_int, 100_000,
           "most queued events; a batch that would exceed it is refused (503), none evicted",
           group="outbox"),
    Option("dedup_window", "--dedup-window", ("HEALERT_DEDUP_WINDOW",), parse_positive_float,
           86_400.0, "seconds a delivered event's key is remembered", group="outbox"),
    Option("dead_letter_max_age_days", "--dead-letter-max-age-days",
           ("HEALERT_DEAD_LETTER_MAX_AGE_DAYS",), parse_positive_float, 30.0,
           "days a dead letter is kept (past the backend's retention, a retried one could "
           "never count)", group="outbox"),
    Option("dead_letter_max_events", "--dead-letter-max-events",
           ("HEALERT_DEAD_LETTER_MAX_EVENTS",), parse_positive_int, 100_000,
           "most dead letters kept; the oldest go first", group="outbox"),
    Option("backend_retention_days", "--backend-retention-days",
           ("HEALERT_BACKEND_RETENTION_DAYS",), parse_positive_float, 30.0,
           "days the backend keeps events; older ones are set aside, never sent",
           group="outbox"),
    # delivery
    Option("forward_rate", "--forward-rate", ("HEALERT_FORWARD_RATE",), parse_positive_float,
           60.0, "most events per minute sent to the backend", group="delivery"),
    Option("backoff_base", "--backoff-base", ("HEALERT_BACKOFF_BASE",), parse_positive_float,
           1.0, "first retry delay in seconds", group="delivery"),
    Option("backoff_max", "--backoff-max", ("HEALERT_BACKOFF_MAX",), parse_positive_float,
           300.0, "longest retry delay in seconds", group="delivery"),
    Option("forward_probe_interval", "--forward-probe-interval",
           ("HEALERT_FORWARD_PROBE_INTERVAL",), parse_positive_float, 60.0,
           "seconds between probes while deliveries are paused", group="delivery"),
    Option("forward_poll_interval", "--forward-poll-interval",
           ("HEALERT_FORWARD_POLL_INTERVAL",), parse_positive_float, 1.0,
           "seconds between checks for events queued by other processes", group="delivery"),
    Option("forward_uncertain_max_wait", "--forward-uncertain-max-wait",
           ("HEALERT_FORWARD_UNCERTAIN_MAX_WAIT",), parse_positive_float, 21_600.0,
           "seconds a send whose answer was lost waits for GET /friction to tell whether "
           "the backend has it, before it is sent again unverified", group="delivery"),
    # webhook
    Option("listen", "--listen", ("HEALERT_LISTEN",), parse_hostport,
           ("0.0.0.0", 8443),  # noqa: S104 - the apiserver connects from outside the pod
           "webhook listener HOST:PORT", group="webhook"),
    Option("webhook_path", "--webhook-path", ("HEALERT_WEBHOOK_PATH",), str, "/audit",
           "webhook URL path", group="webhook"),
    Option("tls_cert", "--tls-cert", ("HEALERT_TLS_CERT",), parse_path, None,
           "server certificate chain (PEM)", group="webhook"),
    Option("tls_key", "--tls-key", ("HEALERT_TLS_KEY",), parse_path, None,
           "server private key (PEM)", group="webhook"),
    Option("tls_client_ca", "--tls-client-ca", ("HEALERT_TLS_CLIENT_CA",), parse_path, None,
           "CA bundle; when set, client certificates are required", group="webhook"),
    Option("tls_client_names", "--tls-client-names", ("HEALERT_TLS_CLIENT_NAMES",), parse_list,
           (), "allowed client certificate names (CN or DNS SAN), comma-separated",
           group="webhook", shown_default="any"),
    Option("webhook_token_file", "--webhook-token-file", ("HEALERT_WEBHOOK_TOKEN_FILE",),
           parse_path, None, "file of accepted bearer tokens, one per line", group="webhook"),
    Option("webhook_token", None, ("HEALERT_WEBHOOK_TOKEN",), str, None,
           "an accepted bearer token (environment only; the token file allows rotation)",
           secret=True, group="webhook"),
    Option("insecure_http", "--insecure-http", ("HEALERT_INSECURE_HTTP",), parse_bool, False,
           "allow plain HTTP on a non-loopback address", group="webhook"),
    Option("max_body_bytes", "--max-body-bytes", ("HEALERT_MAX_BODY_BYTES",),
           parse_positive_int, 64 * 1024 * 1024, "webhook body limit in bytes", group="webhook"),
    Option("max_inflight_bytes", "--max-inflight-bytes", ("HEALERT_MAX_INFLIGHT_BYTES",),
           parse_positive_int, 256 * 1024 * 1024,
           "memory that request bodies being read, parsed and evaluated may take at once",
           group="webhook"),
    Option("max_batch_items", "--max-batch-items", ("HEALERT_MAX_BATCH_ITEMS",),
           parse_positive_int, 10_000, "most events in one webhook batch (413 above it)",
           group="webhook"),
    Option("webhook_body_timeout", "--body-timeout", ("HEALERT_WEBHOOK_BODY_TIMEOUT",),
           parse_positive_float, 30.0,
           "seconds a request head or body may take to arrive (408 after)", group="webhook"),
    Option("handshake_timeout", "--handshake-timeout", ("HEALERT_TLS_HANDSHAKE_TIMEOUT",),
           parse_positive_float, 5.0,
           "seconds a client may take to finish the TLS handshake", group="webhook"),
    Option("max_handshakes", "--max-handshakes", ("HEALERT_MAX_HANDSHAKES",),
           parse_positive_int, 128,
           "TLS handshakes in progress at once; connections over it are closed at once",
           group="webhook"),
    Option("max_connections", "--max-connections", ("HEALERT_MAX_CONNECTIONS",),
           parse_positive_int, 512,
           "open webhook connections at once; connections over it are closed at once",
           group="webhook"),
    # tail
    Option("audit_log_path", "--audit-log", ("AUDIT_LOG_PATH",), parse_path,
           Path("/var/log/kubernetes/audit/audit.log"), "audit log file to follow",
           group="tail"),
    Option("tail_from", "--from", ("HEALERT_TAIL_FROM",), parse_choice("end", "start"), "end",
           "where to start when no checkpoint exists", group="tail"),
    Option("tail_max_line_bytes", "--max-line-bytes", ("HEALERT_TAIL_MAX_LINE_BYTES",),
           parse_positive_int, 16 * 1024 * 1024, "longest audit log line read",
           group="lines"),
    Option("tail_poll_interval", "--poll-interval", ("HEALERT_TAIL_POLL_INTERVAL",),
           parse_positive_float, 0.1, "seconds between checks for new lines", group="tail"),
    # the cluster view (cluster/): watches of the workloads' metadata
    Option("cluster_view", "--cluster-view", ("HEALERT_CLUSTER_VIEW",),
           parse_choice("auto", "off"), "auto",
           "watch the cluster's workloads (auto: when a kubeconfig is named or the pod has "
           "a service account token; off: never)", group="cluster"),
    Option("kubeconfig", "--kubeconfig", ("HEALERT_KUBECONFIG", "KUBECONFIG"),
           parse_path_list, (),
           "kubeconfig for the cluster view (a list: the first file that exists)",
           group="cluster", shown_default="unset: the pod's service account"),
    Option("cluster_tombstone_window", "--cluster-tombstone-window",
           ("HEALERT_CLUSTER_TOMBSTONE_WINDOW",), parse_positive_float, 600.0,
           "seconds a deleted object stays in the view, so late batches about it resolve",
           group="cluster"),
    # the ops listener and logging
    Option("ops_listen", "--ops-listen", ("HEALERT_OPS_LISTEN",), parse_hostport,
           ("0.0.0.0", 9090),  # noqa: S104 - Prometheus and kubelet probes connect from outside
           "ops listener HOST:PORT for /metrics, /healthz, /readyz", group="ops"),
    Option("log_format", "--log-format", ("HEALERT_LOG_FORMAT",), parse_choice("text", "json"),
           "text", "log line format", group="ops"),
    Option("log_level", "--log-level", ("HEALERT_LOG_LEVEL",),
           parse_choice("debug", "info", "warning", "error"), "info", "log level", group="ops"),
)

OPTIONS_BY_NAME: Mapping[str, Option] = {opt.name: opt for opt in OPTIONS}


def env(name: str) -> str:
    """The environment variable of option `name` (its first), as messages name it."""
    return OPTIONS_BY_NAME[name].env[0]


def default_of(name: str) -> Any:
    """The default of option `name`, from its row of OPTIONS."""
    return OPTIONS_BY_NAME[name].default


@dataclass(frozen=True)
class Settings:
    """The validated settings of one run. Secrets are kept out of `repr`.

    Every field has its row in OPTIONS, where its default is written (once).
    """

    rules_path: Path | None = default_of("rules_path")
    entity_namespace: str = default_of("entity_namespace")
    k8s_namespace: str | None = default_of("k8s_namespace")
    entity_label_keys: tuple[str, ...] = default_of("entity_label_keys")
    catalog_namespace: str = default_of("catalog_namespace")
    access_proxies: tuple[str, ...] = default_of("access_proxies")
    native_scanner: str = default_of("native_scanner")  # validated here, used by nativescan
    backend_url: str | None = default_of("backend_url")
    api_key: str | None = field(default=default_of("api_key"), repr=False)
    api_key_file: Path | None = default_of("api_key_file")
    state_dir: Path = default_of("state_dir")
    forward_rate: float = default_of("forward_rate")
    outbox_max_events: int = default_of("outbox_max_events")
    dedup_window: float = default_of("dedup_window")
    backend_retention_days: float = default_of("backend_retention_days")
    dead_letter_max_age_days: float = default_of("dead_letter_max_age_days")
    dead_letter_max_events: int = default_of("dead_letter_max_events")
    forward_uncertain_max_wait: float = default_of("forward_uncertain_max_wait")
    backoff_base: float = default_of("backoff_base")
    backoff_max: float = default_of("backoff_max")
    forward_probe_interval: float = default_of("forward_probe_interval")
    forward_poll_interval: float = default_of("forward_poll_interval")
    forward_timeout: float = default_of("forward_timeout")
    listen: tuple[str, int] = default_of("listen")
    webhook_path: str = default_of("webhook_path")
    tls_cert: Path | None = default_of("tls_cert")
    tls_key: Path | None = default_of("tls_key")
    tls_client_ca: Path | None = default_of("tls_client_ca")
    tls_client_names: tuple[str, ...] = default_of("tls_client_names")
    webhook_token_file: Path | None = default_of("webhook_token_file")
    webhook_token: str | None = field(default=default_of("webhook_token"), repr=False)
    insecure_http: bool = default_of("insecure_http")
    max_body_bytes: int = default_of("max_body_bytes")
    max_inflight_bytes: int = default_of("max_inflight_bytes")
    max_batch_items: int = default_of("max_batch_items")
    webhook_body_timeout: float = default_of("webhook_body_timeout")
    handshake_timeout: float = default_of("handshake_timeout")
    max_handshakes: int = default_of("max_handshakes")
    max_connections: int = default_of("max_connections")
    cluster_view: str = default_of("cluster_view")
    kubeconfig: tuple[Path, ...] = default_of("kubeconfig")
    cluster_tombstone_window: float = default_of("cluster_tombstone_window")
    ops_listen: tuple[str, int] = default_of("ops_listen")
    audit_log_path: Path = default_of("audit_log_path")
    tail_from: str = default_of("tail_from")
    tail_max_line_bytes: int = default_of("tail_max_line_bytes")
    tail_poll_interval: float = default_of("tail_poll_interval")
    log_format: str = default_of("log_format")
    log_level: str = default_of("log_level")

    @property
    def outbox_path(self) -> Path:
        """Path of the SQLite outbox database inside the state directory."""
        return self.state_dir / "outbox.db"

    @property
    def last_good_rules_path(self) -> Path:
        """The last rules file that loaded, kept in the state directory: what the agent
        runs on when it starts with an invalid one."""
        return self.state_dir / "rules.last-good.yaml"

    def read_api_key(self) -> str | None:
        """Return the backend key: the key file's first line wins over HEALERT_API_KEY.

        The key is checked as it is loaded, so that a bad one is one clear error here and
        not an exception in every request: a UTF-8 BOM and the whitespace around it are
        stripped, and a key that is not printable ASCII without spaces, or a file that
        cannot be read (missing, not a regular file, not UTF-8), raises ConfigError
        naming the file. The message never quotes the key.
        """
        if self.api_key_file is not None:
            where = f"HEALERT_API_KEY_FILE {self.api_key_file}"
            try:
                raw = read_regular(self.api_key_file, API_KEY_FILE_MAX)
            except OSError as exc:
                raise ConfigError(f"{where}: {exc.strerror or exc}") from exc
            if len(raw) > API_KEY_FILE_MAX:
                raise ConfigError(f"{where}: larger than {API_KEY_FILE_MAX} bytes, which "
                                  "no key is")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start + 1}); save "
                                  "the key as plain ASCII") from exc
            lines = text.removeprefix("\ufeff").strip().splitlines()
            return _checked_key(lines[0].strip() if lines else "", where)
        return _checked_key((self.api_key or "").removeprefix("\ufeff").strip(),
                            "HEALERT_API_KEY")


API_KEY_FILE_MAX = 64 * 1024  # a bearer key is tens of bytes: a larger file is no key file


def _checked_key(key: str, where: str) -> str | None:
    """`key` when it can go into an Authorization header (None when empty), else
    ConfigError naming `where` and the position of the first bad character (not it)."""
    for position, char in enumerate(key, 1):
        if not "!" <= char <= "~":
            kind = ("a space" if char == " " else "a non-ASCII character"
                    if not char.isascii() else "a control character")
            raise ConfigError(f"{where}: character {position} of the key is {kind}; a key "
                              "is printable ASCII without spaces (save it as plain ASCII "
                              "text)")
    return key or None


def _from_env(option: Option, environ: Mapping[str, str]) -> tuple[str, str] | None:
    for name in option.env:
        value = environ.get(name)
        if value is not None and value != "":
            return name, value
    return None


def build_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    names: Sequence[str] | None = None,
) -> Settings:
    """Build Settings from already-parsed flag values, then the environment, then defaults.

    `overrides` maps option names to values parsed from flags (None means "not given").
    Every problem is collected and raised together as one ConfigError.
    """
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    values: dict[str, Any] = {}
    errors: list[str] = []
    wanted = set(names) if names is not None else {f.name for f in fields(Settings)}
    for option in OPTIONS:
        if option.name not in wanted:
            continue
        given = overrides.get(option.name)
        if given is not None:
            values[option.name] = given
            continue
        found = _from_env(option, environ)
        if found is None:
            if option.fallback is not None:
                values[option.name] = option.fallback()
            continue
        env_name, raw = found
        try:
            values[option.name] = option.parse(raw)
        except ValueError as exc:
            shown = "(hidden)" if option.secret else repr(raw)
            detail = str(exc) if not option.secret else "invalid value"
            errors.append(f"{env_name}={shown}: {detail}")
    if errors:
        raise ConfigError("; ".join(errors))
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    problems: list[str] = []
    if (settings.tls_cert is None) != (settings.tls_key is None):
        problems.append("HEALERT_TLS_CERT and HEALERT_TLS_KEY must be given together")
    if settings.tls_client_ca is not None and settings.tls_cert is None:
        problems.append("HEALERT_TLS_CLIENT_CA needs HEALERT_TLS_CERT and HEALERT_TLS_KEY")
    if not settings.webhook_path.startswith("/"):
        problems.append(f"HEALERT_WEBHOOK_PATH must start with '/': {settings.webhook_path!r}")
    if settings.backend_url is not None and not settings.backend_url.startswith(
        ("http://", "https://")
    ):
        shown = redact_urls(settings.backend_url)  # never its credentials
        problems.append(f"HEALERT_BACKEND_URL must start with http:// or https://: {shown!r}")
    elif settings.backend_url is not None and (wrong := url_problem(settings.backend_url)):
        problems.append(f"HEALERT_BACKEND_URL {wrong}")
    if settings.max_inflight_bytes < settings.max_body_bytes:
        problems.append("HEALERT_MAX_INFLIGHT_BYTES must not be below HEALERT_MAX_BODY_BYTES: "
                        "a body of the largest size accepted could never be taken")
    if settings.backoff_max < settings.backoff_base:
        problems.append("HEALERT_BACKOFF_MAX must not be below HEALERT_BACKOFF_BASE")
    if problems:
        raise ConfigError("; ".join(problems))


def url_problem(url: str) -> str | None:
    """Why `url` cannot be requested (no host, a port that is none), else None.

    The answer never quotes the URL: what broke it is often a password written raw, whose
    '/', '?' or '#' ends the host part early, so no masking could find it.
    """
    unusable = ("cannot be requested: its host and port cannot be read (the value is not "
                "shown; it may hold a password). A user name or password in it must "
                "percent-encode '/', '?', '#' and '@' (%2F, %3F, %23, %40)")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is no number, or out of range
    except ValueError:
        return unusable
    # An '@' after the host part is a user info cut short by a raw '/', '?' or '#'.
    after_host = url.partition("://")[2][len(parts.netloc):]
    if not parts.hostname or port == 0 or "@" in after_host:
        return unusable
    return None


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_webhook(settings: Settings) -> None:
    """The policies that apply when the webhook listens; raise ConfigError naming the fix.

    Plain HTTP is refused off loopback (audit events carry who did what, and anyone on the
    network could post forged ones), and a client-name allow-list needs client
    certificates to check names against.
    """
    problems: list[str] = []
    host = settings.listen[0]
    if settings.tls_cert is None and not is_loopback(host) and not settings.insecure_http:
        problems.append(
            f"refusing to serve the webhook over plain HTTP on {host}, which is not a "
            "loopback address: set HEALERT_TLS_CERT and HEALERT_TLS_KEY, or "
            "HEALERT_INSECURE_HTTP=true to accept it")
    if settings.tls_client_names and settings.tls_client_ca is None:
        problems.append("HEALERT_TLS_CLIENT_NAMES needs HEALERT_TLS_CLIENT_CA")
    if settings.listen == settings.ops_listen and settings.listen[1] != 0:
        problems.append(f"HEALERT_LISTEN and HEALERT_OPS_LISTEN are both "
                        f"{settings.listen[0]}:{settings.listen[1]}: give each its own port")
    if problems:
        raise ConfigError("; ".join(problems))
