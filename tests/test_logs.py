"""Log lines: one per record, control characters escaped, JSON when asked, no duplicates."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from healert_webhook import logs

from support.agent import JSON, Agent, forwarding_env, serve_args
from support.backend import run_backend
from support.events import event_list, exec_event
from support.servers import wait_for


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    """logs.setup rewires the root logger; give the other tests theirs back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def capture(fmt: str) -> io.StringIO:
    stream = io.StringIO()
    logs.setup(fmt, "debug", stream=stream)
    return stream


def test_text_escapes_injected_lines_and_folds_tracebacks() -> None:
    stream = capture("text")
    log = logging.getLogger("healert_webhook.test")
    log.warning("refused user %s", "mallory\n2026-01-01T00:00:00.000Z INFO forged: ok\x1b[2J")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("failed for %s", "uri")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "WARNING healert_webhook.test: refused user mallory\\n2026" in lines[0]
    assert "\\x1b[2J" in lines[0]
    assert " ERROR healert_webhook.test: failed for uri | Traceback" in lines[1]
    assert "ValueError: bad\\nthing" in lines[1]
    assert all(line.isascii() and line.isprintable() for line in lines)


def test_json_is_one_object_per_line_with_extra_fields() -> None:
    stream = capture("json")
    logging.getLogger("healert_webhook.test").info(
        "stored %d", 3, extra={"source": "webhook", "path": object()})
    (line,) = stream.getvalue().splitlines()
    doc = orjson.loads(line)
    assert doc["level"] == "INFO" and doc["logger"] == "healert_webhook.test"
    assert doc["msg"] == "stored 3" and doc["source"] == "webhook"
    assert doc["ts"].endswith("Z") and "T" in doc["ts"]
    assert isinstance(doc["path"], str)


def test_json_escapes_newlines_inside_values() -> None:
    stream = capture("json")
    logging.getLogger("x").error("user %s", "a\nb")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and orjson.loads(lines[0])["msg"] == "user a\nb"


def test_uvicorn_logs_once_through_our_handler_and_levels_apply() -> None:
    stream = io.StringIO()
    logs.setup("text", "warning", stream=stream)
    logging.getLogger("uvicorn.error").warning("from uvicorn")
    logging.getLogger("healert_webhook.x").info("hidden at warning level")
    logging.getLogger("uvicorn.access").info("GET /audit 200")  # access lines are off
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "from uvicorn" in lines[0]


def test_bad_format_arguments_do_not_lose_the_record() -> None:
    stream = capture("text")
    logging.getLogger("x").warning("%d items", "not a number")
    assert "items" in stream.getvalue()


def test_limiter_shows_the_first_lines_of_each_kind_then_says_how_many_more(
        caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("healert_webhook.limiter_test")
    limiter = logs.Limiter(logger, per_interval=3, interval=0.2, what="refusals")
    with caplog.at_level(logging.WARNING, logger="healert_webhook.limiter_test"):
        for n in range(10):
            limiter.warning("refused peer %d", n, key="no_client_cert")
        limiter.warning("refused peer x", key="tls_version")  # another kind: its own budget
        assert [r.getMessage() for r in caplog.records] == [
            "refused peer 0", "refused peer 1", "refused peer 2", "refused peer x"]
        limiter.flush()  # the interval is not over: nothing yet
        assert len(caplog.records) == 4
        import time
        time.sleep(0.25)
        logs.Limiter.flush_all()  # every limiter of the process: keep this logger's lines
        mine = [r for r in caplog.records if r.name == logger.name]
        summary = mine[-1].getMessage()
        assert summary.startswith("7 more refusals (no_client_cert) in the last 0 s")
        assert mine[-1].levelno == logging.WARNING
        limiter.warning("refused peer again", key="no_client_cert")  # a new interval
        assert caplog.records[-1].getMessage() == "refused peer again"


def test_the_http_clients_own_request_lines_stay_out_at_any_level() -> None:
    stream = capture("text")  # debug: the most that is ever shown
    for name in ("httpx", "httpcore.connection"):
        logging.getLogger(name).info('HTTP Request: POST http://u:pw@backend/events "200"')
        logging.getLogger(name).debug("send_request_headers.started")
    logging.getLogger("httpx").warning("a real problem")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "a real problem" in lines[0]


def test_a_delivery_line_carries_its_fields_in_both_formats() -> None:
    fields = {"key": "0" * 32, "rule": "kubectl-exec", "entity": "component:p/api",
              "status": 200}
    for fmt in ("text", "json"):
        stream = capture(fmt)
        logging.getLogger("healert_webhook.forward").info("friction event delivered",
                                                          extra=fields)
        (line,) = stream.getvalue().splitlines()
        if fmt == "json":
            doc = orjson.loads(line)
            assert {k: doc[k] for k in fields} == fields
        else:
            assert line.endswith("friction event delivered key=" + "0" * 32 +
                                 " rule=kubectl-exec entity=component:p/api status=200")


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:S3cret@10.0.0.5:8000/api", "http://user:***@10.0.0.5:8000/api"),
    ("https://S3cret@healert.example", "https://***@healert.example"),
    ("http://user:S3c@ret@host/", "http://user:***@host/"),
    ("http://[::1]:8000", "http://[::1]:8000"),
    ("http://healert:8000/", "http://healert:8000/"),
])
def test_a_url_is_shown_without_its_credentials(url: str, shown: str) -> None:
    assert logs.shown_url(url) == shown
    assert "S3c" not in logs.redact_urls(f"ConnectError: {url}/events failed")


def test_json_logs_of_the_agent_carry_what_a_detection_and_a_delivery_are_about(
        tmp_path: Path) -> None:
    """The real `serve` process with JSON logs: one batch of one exec, kept without a
    backend, then delivered to the test backend by a second agent on the same outbox."""
    event = exec_event(1, tag="json")
    with run_backend(tmp_path, api_key="log-key") as backend:
        agent = Agent(serve_args(), tmp_path, {"HEALERT_LOG_FORMAT": "json"})
        try:
            port, _ops = agent.ports()
            answer = httpx.post(f"http://127.0.0.1:{port}/audit", content=event_list([event]),
                                headers=JSON, timeout=30)
            assert answer.status_code == 200
            kept = _record(agent, "healert_webhook.events", "friction event")
        finally:
            assert agent.stop() == 0
        stored = _record(agent, "healert_webhook.pipeline", "friction stored")
        assert stored["rule"] == "kubectl-exec" and stored["actor"] == "alice@example.com"
        assert stored["auditID"] == event["auditID"] and stored["source"] == "webhook"
        assert stored["entity"] == "component:payments/payments-api"
        assert stored["key"] == kept["key"] and len(stored["key"]) == 32
        assert isinstance(kept["event"], dict)  # an object, not JSON inside a string
        assert kept["event"]["entity_ref"] == stored["entity"]
        env = {"HEALERT_LOG_FORMAT": "json",
               **forwarding_env(tmp_path, backend.url, "log-key")}
        second = Agent(serve_args(), tmp_path, env)
        try:
            second.ports()
            delivered = _record(second, "healert_webhook.forward", "friction event delivered")
        finally:
            second.stop()
    assert delivered["key"] == stored["key"] and delivered["status"] == 200
    assert '"status"' in delivered["answer"]  # what the backend answered
    assert not any(line.get("logger", "").startswith(("httpx", "httpcore"))
                   for line in _records(second))


def _records(agent: Agent) -> list[dict[str, Any]]:
    found = []
    for line in agent.output().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(line)
            if isinstance(doc, dict):
                found.append(doc)
    return found


def _record(agent: Agent, logger: str, msg: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((doc for doc in _records(agent)
                     if doc.get("logger") == logger and doc.get("msg") == msg), None)

    return wait_for(find, timeout=30, what=f"{logger}: {msg}")
