"""How the view reaches the apiserver: in a pod, the service account; elsewhere a kubeconfig.

The configuration is read by lightkube (kubeconfig contexts, client certificates,
tokens, token files re-read on 401, exec credential plugins), which also builds the
HTTP client. Precedence, as client-go's: a kubeconfig named by `--kubeconfig`,
`HEALERT_KUBECONFIG` or `KUBECONFIG` (a list: the first file that exists), else the
pod's service account. `~/.kube/config` is never read unless named: an agent must not
pick up a person's credentials by accident.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx2
from lightkube.config.client_adapter import AsyncClient, ConnectionParams
from lightkube.config.kubeconfig import SERVICE_ACCOUNT, KubeConfig, SingleConfig
from lightkube.core.exceptions import ConfigError as KubeConfigError

from healert_webhook.config import ConfigError, env

MODES = ("auto", "off")


@dataclass(frozen=True)
class Connection:
    """A usable configuration and where it came from (for the start-up log line)."""

    config: SingleConfig
    source: str

    @property
    def server(self) -> str:
        """The apiserver's URL."""
        return str(self.config.cluster.server)

    def client(self, connect_timeout: float = 10.0) -> httpx2.AsyncClient:
        """A new HTTP client for the apiserver (the caller closes it)."""
        timeout = httpx2.Timeout(connect_timeout, read=30.0)
        return AsyncClient(self.config, ConnectionParams(timeout=timeout))


def in_cluster(environ: Mapping[str, str], account: Path) -> bool:
    """True in a pod with a service account token mounted."""
    return bool(environ.get("KUBERNETES_SERVICE_HOST")) and (account / "token").is_file()


def find(mode: str, kubeconfig: Sequence[Path], environ: Mapping[str, str] | None = None,
         account: Path = Path(SERVICE_ACCOUNT)) -> Connection | None:
    """The connection to use, or None (the view is off, or nothing is configured).

    A kubeconfig that is named but cannot be used is a configuration error.
    """
    environ = os.environ if environ is None else environ
    if mode == "off":
        return None
    if kubeconfig:
        path = next((p for p in kubeconfig if p.is_file()), None)
        if path is None:
            names = ", ".join(str(p) for p in kubeconfig)
            raise ConfigError(f"{env('kubeconfig')}: no such file: {names}")
        try:
            config = KubeConfig.from_file(path).get()
        except Exception as exc:  # YAML, schema (msgspec) and lightkube errors alike
            raise ConfigError(f"{env('kubeconfig')} {path} cannot be used: "
                              f"{_why(exc)}") from exc
        if config is None:
            raise ConfigError(f"{env('kubeconfig')} {path}: no current context")
        return Connection(config, f"kubeconfig {path} (context {config.context_name})")
    if in_cluster(environ, account):
        try:
            config = KubeConfig.from_service_account(account).get()
        except (KubeConfigError, KeyError, OSError) as exc:
            raise ConfigError(f"the pod's service account cannot be used: {_why(exc)}") \
                from exc
        if config is None:  # pragma: no cover - from_service_account always sets one
            return None
        return Connection(config, "the pod's service account")
    return None


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

