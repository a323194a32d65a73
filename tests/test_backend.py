"""backend.py: the backend's answers read with caps, and Retry-After read strictly."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import httpx

from healert_webhook.backend import Answer, classify, parse_retry_after


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("999999") == 3600.0
    # ASCII digits only: str.isdigit() also takes these, and float() refuses them
    for text in ("\u00b2", "\u0661\u0662", "\uff17", "-1", "1.5", "9" * 5000,
                 "Wed, 21 Oct 99999 07:28:00 GMT", "Mon, 32 Foo 2026 99:99:99 GMT"):
        assert parse_retry_after(text) is None, text
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28.0 <= (parse_retry_after(date, now) or 0) <= 31.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0


def test_answers_are_read_up_to_a_cap_compressed_or_not() -> None:
    """A real loopback server answers 64 MiB, plain and as a 64 KiB gzip bomb: each is
    read up to the cap, and memory holds the cap, not the answer."""
    import gzip
    import tracemalloc

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    from healert_webhook.backend import fetch

    from support.servers import serve_app

    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), 9)
    small = gzip.compress(b'{"status": "ok"}')

    async def plain(_: Any) -> StreamingResponse:
        async def body() -> Any:
            chunk = b"x" * (64 * 1024)  # small chunks: the server's share stays small
            for _ in range(1024):
                yield chunk
        return StreamingResponse(body())

    def gzipped(data: bytes) -> Any:
        async def answer(_: Any) -> Response:
            return Response(data, headers={"Content-Encoding": "gzip"})
        return answer

    app = Starlette(routes=[Route("/plain", plain), Route("/bomb", gzipped(bomb)),
                            Route("/small", gzipped(small))])
    cap = 1024 * 1024

    async def main(port: int) -> tuple[list[Any], int]:
        async with httpx.AsyncClient() as client:  # made first: its TLS setup takes MiBs
            small_answer = await fetch(client, "GET", f"http://127.0.0.1:{port}/small",
                                       limit=cap, timeout=20)
            tracemalloc.start()
            try:
                answers = [await fetch(client, "GET", f"http://127.0.0.1:{port}{path}",
                                       limit=cap, timeout=20) for path in ("/plain", "/bomb")]
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        return [small_answer, *answers], peak

    with serve_app(app) as running:
        (small_answer, *long_answers), peak = asyncio.run(main(running.port))
    assert small_answer.complete and small_answer.body == b'{"status": "ok"}'
    for answer in long_answers:
        assert (answer.complete, len(answer.body)) == (False, cap)
    assert peak < 5 * cap, peak  # the cap, its copy and a chunk; the server's share too


def test_a_refusal_kept_and_logged_never_holds_an_echoed_token_or_terminal_controls() -> None:
    # A backend (or a proxy before it) that echoes the request's Authorization header in
    # its 422: the answer is kept with the dead letter and logged, so it is masked and its
    # control characters escaped where it is read, once for every reader.
    body = b'{"detail":"bad","headers":{"authorization":"Bearer s3cr3t-key"}}\x1b[2J\nforged'
    outcome = classify(Answer(422, httpx.Headers(), body, True))
    assert outcome.kind == "rejected" and outcome.answer is not None
    assert "s3cr3t-key" not in outcome.answer and "Bearer ***" in outcome.answer
    assert "\x1b" not in outcome.answer and "\n" not in outcome.answer
