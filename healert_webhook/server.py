"""Wiring: listeners, lifecycle, signals and reloads for `serve` and `tail`.

One process, one event loop (uvloop), two uvicorn servers: the webhook (HTTPS, or plain
HTTP on loopback) and the ops listener. Their own signal handling is switched off; the
agent installs one set of handlers:

* SIGTERM / SIGINT: stop accepting, let in-flight batches finish (their stores complete),
  stop the tailer and the forwarder, close the outbox, exit 0.
* SIGHUP: reload rules, server certificate and token file now.

With a view of the cluster (HEALERT_CLUSTER_VIEW=auto and a kubeconfig or the pod's
service account), its watches run on a thread of their own from start to shutdown;
detection reads it, /readyz's body shows its state, nothing waits for it.

The rules file, the certificate pair and the token file are also polled once a second
(stat, then a content hash) and reloaded when they change on disk. Rules load on a worker
of their own (`RuleReloads`: the newest version wins). Every file access of the watcher
runs on a daemon thread, so a file that would block a read can stall at most its own
reload, never the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import resource
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import uvicorn

from healert_webhook import __version__, connections, exits, known_labels, logs, protocol, tls
from healert_webhook.auth import TokenAuth, TokenError
from healert_webhook.config import ConfigError, Settings, check_webhook, env
from healert_webhook.filewatch import FileWatch
from healert_webhook.forward import Forwarder
from healert_webhook.ops import Health, make_ops_app
from healert_webhook.outbox import Outbox, exclusive
from healert_webhook.pipeline import Pipeline, RuleReloads, log_warnings
from healert_webhook.records import OutboxError
from healert_webhook.sources.tail import Tailer
from healert_webhook.sources.webhook import WebhookApp

if TYPE_CHECKING:
    from healert_webhook.cluster.connect import Connection
    from healert_webhook.cluster.runner import ClusterView

log = logging.getLogger(__name__)
KEEP_ALIVE = 90.0  # above the apiserver's 75 s idle timeout: we never close first
GRACE = 20.0  # in-flight batches get this long after SIGTERM (Kubernetes gives 30 s)
PART_STOP = 4.0  # tailer and forwarder each get this long to stop
WATCH_INTERVAL = 1.0
STORE_THREADS = 2  # SQLite serialises writers; a second thread overlaps one fsync
# Prometheus, probes and an operator's curl: a few at a time. Capped on its own, so a
# flood on the webhook port cannot take the ops listener's descriptors, nor the reverse;
# at the cap a connection not being answered is closed for room (OpsHttpProtocol).
OPS_MAX_CONNECTIONS = 64
# Descriptors kept for everything but connections: the outbox and its WAL, the audit log,
# rotated files, certificate reloads, the backend client, threads' pipes.
FD_RESERVE = 64
BACKLOG = 2048
# A surge pod whose predecessor (an earlier version) holds the ports without SO_REUSEPORT
# waits for it: the DaemonSet deletes the old pod minReadySeconds after the new one looks
# ready, and the old one takes up to its grace period (30 s) to stop.
PREDECESSOR_WAIT = 90.0
PREDECESSOR_POLL = 0.1


T = TypeVar("T")


class StartupError(ConfigError):
    """The agent cannot start (a port, the state directory, a certificate); exit code 2."""


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to the agent (two servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Install nothing: `Agent` owns SIGTERM, SIGINT and SIGHUP."""
        yield


def bind(host: str, port: int, outbox: Path | None = None, *,
         wait: float = PREDECESSOR_WAIT) -> socket.socket:
    """A listening TCP socket for `host:port` (port 0: the kernel picks one).

    A fixed port is bound with SO_REUSEPORT, so that the agent replacing this one can
    listen on it before this one stops (a DaemonSet's surge pod on the host network;
    the kernel then spreads new connections over both). Only an agent of the same
    outbox may share it: when another process already listens there, the port is taken
    only if `outbox` is open in another process; anything else is "address in use".
    A predecessor that holds the port without SO_REUSEPORT (an earlier version) is
    waited for, up to `wait` seconds, so its surge replacement takes over when it stops.
    """
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        shared = port != 0 and hasattr(socket, "SO_REUSEPORT")
        if shared and _listened_on(family, addr) and not _in_use(outbox):
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _bind_after_predecessor(sock, addr, f"{host}:{port}",
                                wait if shared else 0.0, outbox)
        sock.listen(BACKLOG)  # now, so a port in use is a clear error before anything runs
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def _bind_after_predecessor(sock: socket.socket, addr: Any, where: str, wait: float,
                            outbox: Path | None) -> None:
    """Bind; while an agent of the same outbox holds the address without sharing it,
    retry until it lets go or `wait` seconds pass (then the bind's error stands)."""
    deadline = time.monotonic() + wait
    announced = False
    while True:
        try:
            sock.bind(addr)
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline \
                    or not _in_use(outbox):
                raise
            if not announced:
                log.warning("%s is held by another agent of the outbox %s that does not "
                            "share it (an earlier version); waiting up to %.0f s for it "
                            "to stop", where, outbox, wait)
                announced = True
        time.sleep(PREDECESSOR_POLL)


def _listened_on(family: int, addr: Any) -> bool:
    """True when some socket already holds `addr` (a bind without SO_REUSEPORT fails)."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _in_use(outbox: Path | None) -> bool:
    """True while another process has the outbox at `outbox` open (creates nothing)."""
    if outbox is None or not outbox.exists():
        return False
    try:
        handle = exclusive(outbox)
    except OSError:
        return False
    if handle is None:
        return True
    handle.close()
    return False


def _url(scheme: str, sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def uvicorn_config(app: Any, *, http: Any) -> uvicorn.Config:
    """The uvicorn setup both listeners share; TLS is the gate's (connections.py)."""
    return uvicorn.Config(
        app, loop="uvloop", http=http, ws="none", lifespan="off", log_config=None,
        access_log=False, server_header=False, timeout_keep_alive=int(KEEP_ALIVE),
        timeout_graceful_shutdown=int(GRACE), backlog=BACKLOG)


def make_server(app: Any, http: type[protocol.GuardedHttpProtocol],
                gate: connections.Gate) -> _Server:
    """A uvicorn server for `app` whose connections pass `gate` first."""
    return _Server(uvicorn_config(app, http=gate.factory(http)))


@dataclasses.dataclass
class Webhook:
    """The webhook listener's parts, built before the loop starts."""

    sock: socket.socket
    app: WebhookApp
    ctx: ssl.SSLContext | None
    certs: tls.CertReloader | None
    tokens: TokenAuth | None
    gate: connections.Gate

    def auth_mode(self) -> str:
        """How requests are authenticated, for the start-up summary (no secrets)."""
        modes = []
        if self.ctx is not None and self.ctx.verify_mode == ssl.CERT_REQUIRED:
            modes.append("client certificates" + (" (names allow-listed)"
                                                  if self.app.client_names else ""))
        if self.tokens is not None:
            modes.append(f"bearer tokens ({len(self.tokens.tokens)} accepted)")
        return " + ".join(modes) or "NONE (any client may post)"


class Agent:
    """Everything `serve` or `tail` runs; `run()` returns the exit code."""

    def __init__(self, settings: Settings, pipeline: Pipeline, outbox: Outbox, *,
                 ops_sock: socket.socket, webhook: Webhook | None,
                 tailer: Tailer | None, executor: ThreadPoolExecutor,
                 cluster: ClusterView | None = None) -> None:
        self.settings = settings
        self.cluster = cluster
        self.pipeline = pipeline
        self.outbox = outbox
        self.ops_sock = ops_sock
        self.ops_gate = connections.Gate("ops", connections.Limits(OPS_MAX_CONNECTIONS), None)
        self.webhook = webhook
        self.tailer = tailer
        self.executor = executor
        self.forwarder = Forwarder(settings, outbox)
        path = settings.rules_path
        self.rules_watch = FileWatch(path) if path is not None else None
        self.rule_reloads = RuleReloads(pipeline)
        self.health = Health(outbox=outbox, forwarder=self.forwarder, tailer=tailer,
                             rules=pipeline,
                             certificate=webhook.certs if webhook is not None else None,
                             cluster=cluster, webhook_expected=webhook is not None)
        self.stop = asyncio.Event()
        self.hup = asyncio.Event()
        self.exit_code = exits.OK

    async def run(self) -> int:
        """Start every part, wait for a stop signal, shut down in order."""
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        if self.cluster is not None:  # returns at once: the first lists run on its thread
            await asyncio.to_thread(self.cluster.start)
        fwd_stop = asyncio.Event()
        fwd_task = asyncio.create_task(self.forwarder.run(fwd_stop), name="forwarder")
        fwd_task.add_done_callback(self._part_ended)
        tail_stop = threading.Event()
        tail_thread = self._start_tailer(loop, tail_stop)
        ops = make_server(make_ops_app(self.health), protocol.OpsHttpProtocol, self.ops_gate)
        ops_task = asyncio.create_task(ops.serve(sockets=[self.ops_sock]), name="ops")
        web, web_task = self._start_webhook()
        watcher = asyncio.create_task(self._watch(), name="reloads")
        await self._await_started(ops, web)
        await self.stop.wait()

        log.info("stopping: finishing in-flight batches")
        self.health.stopping = True
        if web is not None and web_task is not None and self.webhook is not None:
            self.webhook.gate.abort_handshakes()
            await self._stop_server(web, web_task)
        tail_stop.set()
        if tail_thread is not None:
            await asyncio.to_thread(tail_thread.join, PART_STOP)
        fwd_stop.set()
        await self._stop_task(fwd_task)
        await self._stop_server(ops, ops_task)
        watcher.cancel()
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop, PART_STOP)
        await asyncio.to_thread(self.executor.shutdown, True)
        await asyncio.to_thread(self.outbox.close)
        log.info("stopped")
        return self.exit_code

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self.hup.set)

    def _on_stop_signal(self, name: str) -> None:
        log.info("%s received: shutting down", name)
        self.stop.set()

    def _fail(self, message: str) -> None:
        """A part died: log it and stop the agent with a failure exit code."""
        if not self.stop.is_set():
            log.error("%s; stopping", message)
            self.exit_code = exits.FAILED
            self.stop.set()

    def _part_ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self.stop.is_set():
            return
        exc = task.exception()
        self._fail(f"{task.get_name()} ended unexpectedly"
                   + (f": {type(exc).__name__}: {exc}" if exc else ""))

    def _start_tailer(self, loop: asyncio.AbstractEventLoop,
                      tail_stop: threading.Event) -> threading.Thread | None:
        tailer = self.tailer
        if tailer is None:
            return None

        def follow() -> None:
            try:
                tailer.run(tail_stop)
            except Exception as exc:
                log.exception("tailer failed")
                loop.call_soon_threadsafe(self._fail, f"tailer failed: {exc}")
                return
            if not tail_stop.is_set():
                loop.call_soon_threadsafe(self._fail, "tailer ended unexpectedly")

        thread = threading.Thread(target=follow, name="tailer", daemon=True)
        thread.start()
        return thread

    def _start_webhook(self) -> tuple[_Server | None, asyncio.Task[None] | None]:
        if self.webhook is None:
            return None, None
        http = protocol.PeerInfoProtocol if self.webhook.ctx is not None else \
            protocol.GuardedHttpProtocol
        server = make_server(self.webhook.app, http, self.webhook.gate)
        task = asyncio.create_task(server.serve(sockets=[self.webhook.sock]), name="webhook")
        return server, task

    async def _await_started(self, ops: _Server, web: _Server | None) -> None:
        servers = [ops] + ([web] if web is not None else [])
        while not all(s.started for s in servers) and not self.stop.is_set():
            await asyncio.sleep(0.02)
        if self.stop.is_set():
            return
        log.info("ops listener on %s", _url("http", self.ops_sock))
        if self.webhook is not None:
            scheme = "https" if self.webhook.ctx is not None else "http"
            log.info("webhook listener on %s%s (auth: %s)", _url(scheme, self.webhook.sock),
                     self.settings.webhook_path, self.webhook.auth_mode())
            self.health.webhook_up = True
        self._log_summary()

    def _log_summary(self) -> None:
        """One line that says how this agent runs (what an operator checks first)."""
        settings = self.settings
        mode = "+".join(part for part, on in (("webhook", self.webhook is not None),
                                              ("tail", self.tailer is not None)) if on)
        rules = self.pipeline.detector.ruleset
        backend = logs.shown_url(settings.backend_url) or \
            "none (events are kept in the outbox and logged)"
        key = (f"from {env('api_key_file')}" if settings.api_key_file is not None else
               f"from {env('api_key')}" if settings.api_key else "none")
        tail = f"; tail {self.tailer.path}" if self.tailer is not None else ""
        view = (f"through {self.cluster.connection.source}" if self.cluster is not None
                else "off (entities from the events alone)")
        log.info("healert-webhook %s started (pid %d): mode %s; rules %s, %d of %d enabled; "
                 "outbox %s; backend %s, key %s; cluster view %s%s", __version__, os.getpid(),
                 mode, rules.source, len(rules.enabled), len(rules.rules), self.outbox.path,
                 backend, key, view, tail)

    async def _stop_server(self, server: _Server, task: asyncio.Task[None]) -> None:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), GRACE + 2)
        except TimeoutError:
            server.force_exit = True
            await self._stop_task(task)
        except (Exception, SystemExit) as exc:
            log.error("listener failed while stopping: %s", exc)

    @staticmethod
    async def _stop_task(task: asyncio.Task[Any]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(task), PART_STOP)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception as exc:
            log.error("%s failed: %s", task.get_name(), exc)

    async def _watch(self) -> None:
        """Poll the watched files once a second; SIGHUP reloads at once."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hup.wait(), WATCH_INTERVAL)
            force = self.hup.is_set()
            self.hup.clear()
            if force:
                log.info("SIGHUP received: reloading rules, certificate, tokens and the API key")
            try:
                await self.reload(force)
            except Exception:  # the watcher must survive anything a file can do
                log.exception("reload failed")
            logs.Limiter.flush_all()

    async def reload(self, force: bool = False) -> None:
        """Reload what changed on disk (everything when `force`). Rules load on their
        own worker (the newest version wins); this returns without waiting for them."""
        watch = self.rules_watch
        if force or (watch is not None and await off_loop(watch.changed)):
            self.rule_reloads.request()
        await off_loop(self.forwarder.keys.reload, force)
        if self.webhook is None:
            return
        certs = self.webhook.certs
        if certs is not None and await off_loop(certs.pending, force):
            certs.apply()  # on the loop thread: no handshake runs while the context changes
        if self.webhook.tokens is not None:
            await off_loop(self.webhook.tokens.reload, force)


async def off_loop(call: Callable[..., T], *args: Any) -> T:
    """`call(*args)` on a daemon thread of its own, awaited.

    Unlike `asyncio.to_thread`, whose pool threads are joined when the loop and the
    interpreter end, a call that never returns (a read of a file that blocks) cannot hold
    up the exit: nothing waits for this thread once the caller is cancelled.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(setter: Callable[[Any], None], value: Any) -> None:
        def settle() -> None:
            if not future.done():
                setter(value)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits now
            loop.call_soon_threadsafe(settle)

    def run() -> None:
        try:
            result = call(*args)
        except Exception as exc:
            deliver(future.set_exception, exc)
        else:
            deliver(future.set_result, result)

    threading.Thread(target=run, name="reload", daemon=True).start()
    return await future


def _build_webhook(settings: Settings, pipeline: Pipeline,
                   executor: ThreadPoolExecutor) -> Webhook:
    check_webhook(settings)
    ctx = certs = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        try:
            ctx = tls.build_server_context(settings.tls_cert, settings.tls_key,
                                           settings.tls_client_ca)
        except tls.TLSConfigError as exc:
            raise StartupError(str(exc)) from exc
        certs = tls.CertReloader(ctx, settings.tls_cert, settings.tls_key)
    try:
        tokens = TokenAuth.from_settings(settings)
    except TokenError as exc:
        raise StartupError(str(exc)) from exc
    if tokens is None and settings.tls_client_ca is None:
        log.warning("the webhook accepts requests without authentication: set "
                    f"{env('tls_client_ca')} or {env('webhook_token_file')}")
    app = WebhookApp(settings, pipeline, executor, tokens=tokens)
    limits = connections.Limits(connection_cap(settings.max_connections),
                                settings.max_handshakes, settings.handshake_timeout)
    sock = bind(*settings.listen, settings.outbox_path)
    return Webhook(sock=sock, app=app, ctx=ctx, certs=certs, tokens=tokens,
                   gate=connections.Gate("webhook", limits, ctx))


def connection_cap(wanted: int) -> int:
    """The webhook's connection cap, kept below the descriptor limit.

    The soft limit is raised to the hard one first (the usual 1024 is a default, not a
    decision); what is left after the ops listener's share and a reserve bounds the
    webhook, so a connection flood can never make accept() fail on either listener.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    room = soft - OPS_MAX_CONNECTIONS - FD_RESERVE
    if wanted > room:
        log.warning(f"{env('max_connections')}=%d is more than the %d descriptors this process "
                    "may spare for connections (limit %d): using %d", wanted, room, soft,
                    max(room, 1))
        return max(room, 1)
    return wanted


def _open_outbox(settings: Settings) -> Outbox:
    try:
        return Outbox.from_settings(settings)
    except OutboxError as exc:
        raise StartupError(str(exc)) from exc


def cluster_connection(settings: Settings) -> Connection | None:
    """How to reach the cluster for the view, or None (off, or nothing configured).

    A kubeconfig that is named but cannot be used raises ConfigError (exit 2).
    """
    if settings.cluster_view == "off":
        return None
    from healert_webhook.cluster.connect import find  # lightkube only when it may be used

    return find(settings.cluster_view, settings.kubeconfig)


def cluster_view(settings: Settings, connection: Connection | None,
                 pipeline: Pipeline) -> ClusterView | None:
    """The view of the cluster (not started), read by `pipeline` from now on; None when
    there is no connection."""
    if connection is None:
        log.info("cluster view: off (%s=%s%s); entities are found from the events alone",
                 env("cluster_view"), settings.cluster_view,
                 "" if settings.cluster_view == "off" else
                 f", no kubeconfig named in {env('kubeconfig')} and no service account")
        return None
    from healert_webhook.cluster.runner import ClusterView

    gitops = pipeline.detector.ruleset.gitops
    view = ClusterView(connection, settings.cluster_tombstone_window,
                       label_keys=(*settings.entity_label_keys, *gitops.labels),
                       annotation_keys=gitops.annotations)
    pipeline.use_view(view.view)
    return view


def build_agent(settings: Settings, *, webhook: bool, tail: bool) -> Agent:
    """Build every part (raises ConfigError or RulesError); nothing runs yet.

    Everything that can refuse the configuration (the key file, the rules, the webhook's
    TLS and tokens, the ports) is checked before the state directory and the outbox are
    created, so a start that fails leaves nothing behind.
    """
    # A configured key file that cannot be used is a configuration error (exit 2, the
    # file named): not "no key" now and a 401 later. So is a kubeconfig named for the
    # view of the cluster that cannot be used.
    settings.read_api_key()
    connection = cluster_connection(settings)
    pipeline = Pipeline.for_agent(settings)
    log_warnings(pipeline.detector.ruleset)
    cluster = cluster_view(settings, connection, pipeline)
    executor = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="pipeline")
    opened: list[socket.socket] = []
    outbox: Outbox | None = None
    try:
        hook = _build_webhook(settings, pipeline, executor) if webhook else None
        if hook is not None:
            opened.append(hook.sock)
        ops_sock = bind(*settings.ops_listen, settings.outbox_path)
        opened.append(ops_sock)
        outbox = _open_outbox(settings)
        pipeline.outbox = outbox
        pipeline.keep_last_good()  # the state directory exists now: nothing was refused
        tailer = Tailer(settings, pipeline) if tail else None
        known_labels.zero([name for name, on in (("webhook", webhook), ("tail", tail)) if on],
                          ["ops", "webhook"] if webhook else ["ops"])
    except BaseException:
        for sock in opened:
            sock.close()
        if outbox is not None:
            outbox.close()
        executor.shutdown()
        raise
    return Agent(settings, pipeline, outbox, ops_sock=ops_sock, webhook=hook, tailer=tailer,
                 executor=executor, cluster=cluster)


def run_agent(settings: Settings, *, webhook: bool, tail: bool) -> int:
    """`serve` (the webhook, and the tail with --tail) or `tail`: run until a stop signal.

    Returns the exit code; raises ConfigError or RulesError when it cannot start.
    """
    logs.setup(settings.log_format, settings.log_level)
    agent = build_agent(settings, webhook=webhook, tail=tail)
    # uvicorn's loop setup, done once for both servers.
    loop_factory = uvicorn_config(None, http="httptools").get_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(agent.run())
