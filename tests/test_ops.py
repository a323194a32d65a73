"""The ops app on a real uvicorn server: /healthz, /readyz reasons, /metrics, no secrets."""

from __future__ import annotations

from pathlib import Path

import httpx

from healert_webhook import metrics
from healert_webhook.config import Settings
from healert_webhook.forward import Forwarder
from healert_webhook.ops import Health, format_status, make_ops_app
from healert_webhook.outbox import Outbox

from support.servers import serve_app


class NotFollowing:
    """Stands in for a Tailer whose file is missing (the real one needs a thread and time)."""

    def ready(self) -> str | None:
        return "audit log /var/log/audit.log does not exist"


class PausedForwarder:
    """Stands in for a Forwarder the backend refused the key to; it also carries config
    values that must never be shown."""

    def status(self) -> dict[str, object]:
        return {"state": "paused", "reason": "backend refused the key (401)",
                "backend": "https://healert.internal:8443", "api_key": "hk_live_secret"}


def test_ready_with_real_outbox_and_forwarder(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    settings = Settings(state_dir=tmp_path, backend_url="https://healert.internal:8443")
    health = Health(outbox=box, forwarder=Forwarder(settings, box),
                    webhook_expected=True, webhook_up=True)
    try:
        with serve_app(make_ops_app(health)) as running:
            base = f"http://127.0.0.1:{running.port}"
            alive = httpx.get(base + "/healthz")
            assert (alive.status_code, alive.text) == (200, "ok\n")
            ready = httpx.get(base + "/readyz")
            assert ready.status_code == 200
            assert ready.text.splitlines()[0] == "ready"
            assert "healert.internal" not in ready.text
            health.webhook_up = False
            down = httpx.get(base + "/readyz")
            assert down.status_code == 503
            assert "not ready: webhook listener not up" in down.text
            assert httpx.post(base + "/readyz").status_code == 405
    finally:
        box.close()


def test_not_ready_reasons_and_paused_deliveries(tmp_path: Path) -> None:
    health = Health(outbox=None, forwarder=PausedForwarder(), tailer=NotFollowing())
    with serve_app(make_ops_app(health)) as running:
        answer = httpx.get(f"http://127.0.0.1:{running.port}/readyz")
    assert answer.status_code == 503
    lines = answer.text.splitlines()
    assert "not ready: outbox not open" in lines
    assert "not ready: tail: audit log /var/log/audit.log does not exist" in lines
    assert "deliveries paused: backend refused the key (401)" in lines
    assert "hk_live_secret" not in answer.text and "healert.internal" not in answer.text


def test_paused_deliveries_alone_do_not_make_it_unready(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    health = Health(outbox=box, forwarder=PausedForwarder())
    try:
        with serve_app(make_ops_app(health)) as running:
            answer = httpx.get(f"http://127.0.0.1:{running.port}/readyz")
    finally:
        box.close()
    assert answer.status_code == 200
    assert "deliveries paused" in answer.text


def test_metrics_change_as_counted() -> None:
    with serve_app(make_ops_app(Health())) as running:
        url = f"http://127.0.0.1:{running.port}/metrics"

        def value() -> float:
            for line in httpx.get(url).text.splitlines():
                if line.startswith('healert_webhook_requests_total{code="299"}'):
                    return float(line.split()[-1])
            return 0.0

        before = value()
        metrics.WEBHOOK_REQUESTS.labels("299").inc(3)
        answer = httpx.get(url)
        assert answer.headers["content-type"].startswith("text/plain")
        assert value() == before + 3


def test_format_status_shows_only_harmless_keys() -> None:
    line = format_status({"state": "sending", "delivered": 4, "backend": "https://x",
                          "last_error": "POST https://x failed"})
    assert line == "deliveries: state=sending delivered=4"
    assert format_status({"state": "locked", "reason": None}) == \
        "deliveries paused: see the logs"
