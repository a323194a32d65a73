"""Security checks as tests, against the real `serve` process over mTLS.

Secrets (the backend API key, the webhook token) never appear in logs, metrics, error
answers, /readyz or `--help`; user-controlled strings cannot forge log lines in text or
JSON format; no endpoint reveals configuration; plain HTTP on a non-loopback address,
TLS below 1.2 and client certificates from another CA are refused.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from support.agent import JSON, Agent, metric, serve_args
from support.backend import run_backend
from support.events import exec_event
from support.paths import ROOT
from support.pki import CLIENT_NAME, client_context, handshake_error, make_pki
from support.servers import wait_for

API_KEY = "sk-live-APIKEY-5f1d9c0e7b3a4"
TOKEN = "wh-TOKEN-8c2e4a6b0d1f3"
LINE_START = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z (DEBUG|INFO|WARNING|"
                        r"ERROR|CRITICAL) ")
FORGED_USER = "eve\n2026-11-26T10:00:00.000Z ERROR healert_webhook: forged \x1b[31mred\x1b[0m"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_stay_secret_and_logs_cannot_be_forged(tmp_path: Path, fmt: str) -> None:
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "tokens").write_text(TOKEN + "\n")
    with run_backend(tmp_path, api_key="the-backend-wants-another-key") as backend:
        agent = Agent(serve_args(
            "state", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--tls-client-ca", str(pki.ca_file), "--tls-client-names", CLIENT_NAME,
            "--webhook-token-file", "tokens", "--log-format", fmt, "--log-level", "debug"),
            tmp_path, {"HEALERT_API_KEY": API_KEY, "HEALERT_BACKEND_URL": backend.url,
                       "HEALERT_FORWARD_RATE": "6000", "HEALERT_BACKOFF_BASE": "0.05",
                       "HEALERT_BACKOFF_MAX": "0.2", "HEALERT_FORWARD_PROBE_INTERVAL": "0.3"})
        try:
            seen = _scenario(agent, pki, backend.url)
            assert agent.stop() == 0
        finally:
            agent.kill()
    # without a backend the agent logs every queued event, the forged user name included
    embedded = Agent(serve_args("state", "--log-format", fmt), tmp_path,
                     {"HEALERT_API_KEY": API_KEY, "HEALERT_WEBHOOK_TOKEN": TOKEN})
    try:
        embedded.wait_line("forge")
        assert embedded.stop() == 0
    finally:
        embedded.kill()
    output = agent.output() + embedded.output()
    for text in [output, *seen]:
        assert API_KEY not in text and TOKEN not in text
    lines = output.splitlines()
    assert "\x1b" not in output  # no raw escape reaches a terminal
    if fmt == "json":
        records = [orjson.loads(line) for line in lines]  # every line one whole record
        assert any("forged" in str(r.get("actor", "")) for r in records), \
            "the user name is logged, as the detection's actor field"
    else:
        assert all(LINE_START.match(line) for line in lines), \
            [line for line in lines if not LINE_START.match(line)][:3]
        assert any("forged" in line for line in lines), "the escaped user name is logged"


def _scenario(agent: Agent, pki: object, backend_url: str) -> list[str]:
    """Good and bad requests, delivery failures; returns every answer and page seen."""
    port, ops = agent.ports()
    url = f"https://127.0.0.1:{port}/audit"
    ctx = client_context(pki, pki.client())  # type: ignore[arg-type]
    seen: list[str] = []
    forged = exec_event(1, tag="forge", user=FORGED_USER)
    forged["requestURI"] += "\r\n2026-11-26T10:00:00.000Z INFO forged: uri"
    with httpx.Client(verify=ctx, timeout=30) as c:
        auth = {"authorization": f"Bearer {TOKEN}"}
        for headers, body in (
                ({**JSON, **auth}, orjson.dumps([forged])),
                ({**JSON, **auth}, b"{not json " + TOKEN.encode()),
                ({**JSON, "authorization": f"Bearer {TOKEN}x"}, b"[]"),
                ({**JSON, "authorization": API_KEY}, b"[]"),
                ({"content-type": "text/plain", **auth}, b"[]")):
            answer = c.post(url, content=body, headers=headers)
            seen.append(answer.text)
            assert answer.status_code in (200, 400, 401, 415)
        for path in ("/audit", "/", "/metrics", "/readyz", "/config", "/../etc/passwd"):
            answer = c.get(f"https://127.0.0.1:{port}{path}", headers=auth)
            seen.append(answer.text)
            assert answer.status_code in (404, 405)
    # the backend refuses the key: deliveries pause; nothing about the key is shown
    wait_for(lambda: metric(ops, "healert_forward_paused") == 1, what="paused on the key")
    for path in ("/metrics", "/readyz", "/healthz", "/audit", "/", "/config", "/debug"):
        answer = httpx.get(f"http://127.0.0.1:{ops}{path}", timeout=10)
        seen.append(answer.text)
        assert answer.status_code in (200, 404, 503)
    def paused_page() -> str | None:  # between its probes (every 0.3 s here) it is paused
        page = httpx.get(f"http://127.0.0.1:{ops}/readyz", timeout=10).text
        return page if "deliveries paused" in page else None

    ready = wait_for(paused_page, what="/readyz saying deliveries are paused")
    for private in (backend_url, "tokens", "server.key", str(agent.log_path.parent)):
        assert private not in ready, private
        assert private not in httpx.get(f"http://127.0.0.1:{ops}/metrics", timeout=10).text
    for command in ("serve", "check-backend", "outbox", "replay", "tail"):
        done = subprocess.run([sys.executable, "-m", "healert_webhook", command, "--help"],
                              env={**os.environ, "PYTHONPATH": str(ROOT),
                                   "HEALERT_API_KEY": API_KEY, "HEALERT_WEBHOOK_TOKEN": TOKEN},
                              capture_output=True, text=True, check=False)
        seen.append(done.stdout + done.stderr)
    return seen


def test_transport_refusals(tmp_path: Path) -> None:
    """Plain HTTP on a non-loopback address; TLS 1.1; a client certificate from another CA."""
    plain = Agent(["serve", "--listen", "0.0.0.0:0", "--ops-listen", "127.0.0.1:0",
                   "--state-dir", "state"], tmp_path)
    assert plain.proc.wait(30) == 2
    assert "HEALERT_INSECURE_HTTP" in plain.output()
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")
    agent = Agent(serve_args("state2", "--tls-cert", str(pki.server_cert), "--tls-key",
                             str(pki.server_key), "--tls-client-ca", str(pki.ca_file)),
                  tmp_path)
    try:
        port, ops = agent.ports()
        assert handshake_error(port, client_context(pki, pki.client(),
                                                    maximum=ssl.TLSVersion.TLSv1_1))
        assert handshake_error(port, client_context(pki, other.client()))
        assert handshake_error(port, client_context(pki, pki.client())) is None
        wait_for(lambda: metric(ops, "healert_webhook_auth_failures_total",
                                reason="untrusted_client_cert") >= 1, what="counted")
        assert agent.stop() == 0
    finally:
        agent.kill()
