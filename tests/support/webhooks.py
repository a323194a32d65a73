"""An in-process webhook with the agent's own uvicorn setup, and what tests need around it."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from healert_webhook import tls
from healert_webhook.auth import TokenAuth
from healert_webhook.backend_contract import older_than
from healert_webhook.config import Settings
from healert_webhook.detect import Detector
from healert_webhook.outbox import Outbox
from healert_webhook.pipeline import Pipeline
from healert_webhook.records import Stats
from healert_webhook.rules import parse_rules
from healert_webhook.sources.webhook import WebhookApp

from support.events import RULES
from support.pki import PKI, client_context
from support.servers import Running, serve_app

JSON = {"content-type": "application/json"}
TOKEN = "s3cret-token-1"


def make_pipeline(tmp_path: Path, text: str = RULES, outbox: Outbox | None = None
                  ) -> Pipeline:
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    return Pipeline.from_settings(Settings(rules_path=rules, state_dir=tmp_path / "state"),
                                  outbox)


class Hook:
    """A running webhook and what the tests need to talk to it."""

    def __init__(self, running: Running, app: WebhookApp, ctx: ssl.SSLContext | None,
                 pki: PKI | None) -> None:
        self.running = running
        self.app = app
        self.ctx = ctx
        self.pki = pki
        self.port = running.port
        scheme = "https" if ctx is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/audit"

    def client(self, *, cert: Path | str | None = "default", token: str | None = TOKEN,
               **kwargs: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        if self.pki is None:
            return httpx.Client(headers=headers, timeout=60, **kwargs)
        pem = self.pki.client() if cert == "default" else cert
        ctx = client_context(self.pki, pem if isinstance(pem, Path) else None)
        return httpx.Client(verify=ctx, headers=headers, timeout=60, **kwargs)


@contextlib.contextmanager
def webhook(tmp_path: Path, outbox: Any, pki: PKI | None, *, names: tuple[str, ...] = (),
            tokens: TokenAuth | str | None = "default", pipeline: Pipeline | None = None,
            max_body: int = 64 * 1024 * 1024) -> Iterator[Hook]:
    if tokens == "default":
        token_file = tmp_path / "tokens"
        token_file.write_text(f"# webhook tokens\n{TOKEN}\n")
        tokens = TokenAuth(token_file, None)
    ctx = None
    if pki is not None:
        ctx = tls.build_server_context(pki.server_cert, pki.server_key, pki.ca_file)
    executor = ThreadPoolExecutor(2)
    if pipeline is None:
        pipeline = make_pipeline(tmp_path, outbox=outbox)
    else:
        pipeline.outbox = outbox
    settings = Settings(webhook_path="/audit", max_body_bytes=max_body, tls_client_names=names)
    app = WebhookApp(settings, pipeline, executor,
                     tokens=tokens if isinstance(tokens, TokenAuth) else None)
    try:
        with serve_app(app, ctx) as running:
            yield Hook(running, app, ctx, pki)
    finally:
        executor.shutdown()


def queued(outbox: Outbox) -> list[Any]:
    return outbox.head(1_000_000)


def expected_keys(items: list[Any], text: str = RULES) -> set[str]:
    """The keys an independent Detector finds in `items` that the outbox must queue: all
    but those older than the backend's retention (the old real fixtures), set aside."""
    found = Detector(parse_rules(text)).detect(items, Stats())
    return {f.key for f in found if not older_than(f.event, 30.0)}
