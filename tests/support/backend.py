"""A stand-in for the Healert backend, run by uvicorn in its own process.

It answers as the real FastAPI backend's contract says:
- `GET /health`.
- `POST /events`: the bearer key (401), then field validation (422 with a FastAPI-shaped
  `{"detail": [...]}`), then a fixed-window rate limit per client IP that counts only
  requests that got this far (429 without Retry-After, body `{"error": "Rate limit
  exceeded: N per W"}`), then 200 `{"status": "ok"}`. The timestamp is stored verbatim
  (the backend's own "now" when absent), points are filled from the severity.
- `GET /events?limit=N` (1..500, default 100): the rows with the newest timestamp first,
  each with the backend's own `id`.
- `GET /friction/{entity_ref}`: `{entityRef, frictionScore, recentEvents, sources,
  fetchedAt}`, `recentEvents` being `{timestamp, actor, type, description, workflow}` of
  the entity whose timestamp, compared as a string, lies within the retention window,
  newest first, at most 500; 400 for an invalid entity_ref.
- Events older than the retention are deleted at start.
The window length and limit come from argv so tests run in seconds. Accepted events are
appended to a record file, so they survive the process being stopped and started again.

Control API on the same server (tests only):
  POST /_control {"mode": "ok|500|429|401|slow|hold_stored|hold_unstored|reset",
                  "latency": s, "latency_after": s, "reject_types": [...], "reads": bool}
     slow: sleep `latency` before recording and `latency_after` after (before answering);
     hold_stored: store the event, then hold the answer until released;
     hold_unstored: hold the request until released, then drop the connection, unstored;
     reject_types: answer 422 for these types (a stricter backend, for dead-letter tests)
     reads: false makes GET /friction answer 404, as a backend without it would
     retry_after: the Retry-After header of the 429 and 500 modes (429: "1" by default)
     answer_bytes: POST /events stores the event, then answers 200 with a body this long
     friction_bytes: GET /friction answers 200 with a body this long
     friction_raw: GET /friction answers 200 with exactly this text (e.g. "[" * 100000)
     (the long bodies are streamed in 1 MiB chunks, never built in memory)
  POST /_release   answer (or drop) every held request now
  GET /_accepted -> {"events": [...], "statuses": {code: n}, "max_in_window": n,
                     "held": n, "read_requests": n}

`run_backend(tmp_path, ...)` starts it as a subprocess and yields a `Backend` handle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
POINTS = {"high": 10, "medium": 6, "low": 3}
HALF_LIFE_DAYS = 7.0
RECENT_MAX = 500
ENTITY_REF = re.compile(r"^[a-zA-Z0-9_-]+:[a-zA-Z0-9_-]+/[a-zA-Z0-9_.-]+$")


# -- the server (runs in the subprocess) --------------------------------------------------

def cutoff(retention_days: float) -> str:
    """The oldest timestamp still inside the window, as the string the backend compares."""
    return (datetime.now(UTC) - timedelta(days=retention_days)).isoformat()


def score(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The backend's Friction Score of an entity's rows (points halving every 7 days)."""
    now = datetime.now(UTC)
    total = 0.0
    for row in rows:
        try:
            when = datetime.fromisoformat(row["timestamp"])
        except ValueError:
            when = now
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        age = max(0.0, (now - when).total_seconds() / 86400)
        total += row["points"] * 0.5 ** (age / HALF_LIFE_DAYS)
    value = min(100, round(total / 50 * 100))
    severity = "high" if value >= 70 else "medium" if value >= 40 else "low"
    return {"score": value, "severity": severity, "bypassCount": len(rows)}


def make_app(api_key: str | None, limit: int, window: float, record: Path,
             retention_days: float = 30.0) -> Any:
    """The Starlette app; state lives in this closure."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from healert_webhook import backend_contract

    def load(path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    stored = record.with_name(record.stem + "-rows.jsonl")  # as stored: id, stamps, points
    accepted = load(record)  # as sent
    oldest = cutoff(retention_days)
    rows = [row for row in load(stored) if row["timestamp"] >= oldest]  # retention at start
    out = record.open("a", encoding="utf-8")
    out_rows = stored.open("a", encoding="utf-8")
    state: dict[str, Any] = {}
    windows: Counter[tuple[str, int]] = Counter()
    statuses: Counter[int] = Counter()
    release = asyncio.Event()

    def reset() -> None:
        state.update(mode="ok", latency=0.0, latency_after=0.0, reject_types=[],
                     max_in_window=0, held=0, read_requests=0, reads=True,
                     retry_after=None, answer_bytes=0, friction_bytes=0, friction_raw=None)
        windows.clear()
        statuses.clear()

    reset()

    def answer(code: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
        statuses[code] += 1
        return JSONResponse(body, status_code=code, headers=headers)

    async def health(request: Request) -> JSONResponse:
        auth = "enabled" if api_key else "disabled (no HEALERT_API_KEY)"
        return JSONResponse({"status": "ok", "version": "test-1.0", "auth": auth})

    def rate_limited(request: Request) -> JSONResponse | None:
        now = time.time()
        index = int(now // window)
        ip = request.client.host if request.client else "?"
        windows[(ip, index)] += 1
        count = windows[(ip, index)]
        state["max_in_window"] = max(state["max_in_window"], min(count, limit + 1))
        if count > limit:
            period = "1 minute" if window == 60 else f"{window:g} seconds"
            return answer(429, {"error": f"Rate limit exceeded: {limit} per {period}"})
        return None

    def keep(event: dict[str, Any]) -> dict[str, Any]:
        """Store an accepted event as the backend does; the record file keeps it."""
        accepted.append(event)
        row = {**event, "id": (rows[-1]["id"] + 1) if rows else 1}
        if row.get("timestamp") is None:  # null is absent to the backend's optional fields
            row["timestamp"] = datetime.now(UTC).isoformat()
        if row.get("points") is None:
            row["points"] = POINTS[event["severity"]]
        rows.append(row)
        out.write(json.dumps(event) + "\n")
        out.flush()
        out_rows.write(json.dumps(row) + "\n")
        out_rows.flush()
        return row

    async def hold(request: Request) -> None:
        state["held"] += 1
        try:
            await release.wait()
        finally:
            state["held"] -= 1

    async def events(request: Request) -> Response:
        mode = state["mode"]
        retry_after = state["retry_after"]
        if mode == "500":
            return answer(500, {"detail": "Internal Server Error"},
                          None if retry_after is None else {"Retry-After": retry_after})
        if mode == "429":
            return answer(429, {"detail": "Rate limit exceeded"},
                          {"Retry-After": "1" if retry_after is None else retry_after})
        given = request.headers.get("authorization", "")
        if (api_key and given != f"Bearer {api_key}") or mode == "401":
            return answer(401, {"detail": "Invalid or missing API key"})
        try:
            event = json.loads(await _body(request))
        except ValueError:
            return answer(422, {"detail": [{"loc": ["body"], "msg": "JSON decode error",
                                            "type": "json_invalid"}]})
        problems = backend_contract.validate(event)
        if problems:
            return answer(422, {"detail": [p.as_fastapi() for p in problems]})
        if event.get("type") in state["reject_types"]:
            return answer(422, {"detail": [{"loc": ["body", "type"], "type": "value_error",
                                            "msg": f"type {event['type']} not accepted"}]})
        limited = rate_limited(request)
        if limited is not None:
            return limited
        if mode == "hold_unstored":
            await hold(request)
            request.scope["extensions"]["healert.transport"].abort()  # no answer at all
            return Response(status_code=500)  # never reaches the client
        if state["latency"]:
            await asyncio.sleep(state["latency"])
        keep(event)
        if mode == "hold_stored":
            await hold(request)
        if state["latency_after"]:
            await asyncio.sleep(state["latency_after"])
        if state["answer_bytes"]:
            statuses[200] += 1
            return long_answer(state["answer_bytes"])
        return answer(200, {"status": "ok", "entity_ref": event["entity_ref"]})

    def long_answer(size: int) -> StreamingResponse:
        """200 with a `size`-byte JSON-looking body, made 1 MiB at a time as it is sent."""
        head = b'{"status": "ok", "pad": "'
        chunk = b"x" * (1024 * 1024)

        async def body() -> Any:
            yield head
            left = size - len(head)
            while left > 0:
                yield chunk[:left]
                left -= len(chunk)

        return StreamingResponse(body(), media_type="application/json",
                                 headers={"Content-Length": str(max(size, len(head)))})

    async def list_events(request: Request) -> JSONResponse:
        state["read_requests"] += 1
        try:
            count = int(request.query_params.get("limit", "100"))
        except ValueError:
            count = 0
        if not 1 <= count <= RECENT_MAX:
            return JSONResponse({"detail": "limit must be 1..500"}, status_code=422)
        newest = sorted(rows, key=lambda r: r["timestamp"], reverse=True)[:count]
        fields = ("id", "entity_ref", "type", "severity", "actor", "service", "namespace",
                  "workflow", "description", "timestamp", "points")
        return JSONResponse([{f: row.get(f) for f in fields} for row in newest])

    async def friction(request: Request) -> Response:
        state["read_requests"] += 1
        if not state["reads"]:  # an older backend, without the read endpoints
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        if state["friction_bytes"]:
            return long_answer(state["friction_bytes"])
        if state["friction_raw"] is not None:
            return Response(state["friction_raw"], media_type="application/json")
        ref = request.path_params["entity_ref"]
        if not ENTITY_REF.match(ref) or len(ref) > 200:
            return JSONResponse({"detail": "invalid entity_ref"}, status_code=400)
        oldest = cutoff(retention_days)
        mine = [row for row in rows if row["entity_ref"] == ref and row["timestamp"] >= oldest]
        mine.sort(key=lambda r: r["timestamp"], reverse=True)
        recent = [{f: row.get(f) for f in ("timestamp", "actor", "type", "description",
                                            "workflow")} for row in mine[:RECENT_MAX]]
        return JSONResponse({"entityRef": ref, "frictionScore": score(mine),
                             "recentEvents": recent, "sources": ["healert-webhook"],
                             "fetchedAt": datetime.now(UTC).isoformat()})

    async def control(request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("mode") == "reset":
            reset()
            accepted.clear()
            rows.clear()
            out.truncate(0)
            out_rows.truncate(0)
        elif "mode" in body:
            state["mode"] = body["mode"]
        for name in ("latency", "latency_after", "reject_types", "reads", "retry_after",
                     "answer_bytes", "friction_bytes", "friction_raw"):
            if name in body:
                state[name] = body[name]
        return JSONResponse({"ok": True})

    async def release_held(request: Request) -> JSONResponse:
        release.set()
        await asyncio.sleep(0.05)
        release.clear()
        return JSONResponse({"ok": True})

    async def accepted_view(request: Request) -> JSONResponse:
        return JSONResponse({"events": accepted, "statuses": dict(statuses),
                             "max_in_window": state["max_in_window"], "held": state["held"],
                             "read_requests": state["read_requests"]})

    return Starlette(routes=[
        Route("/health", health), Route("/events", events, methods=["POST"]),
        Route("/events", list_events, methods=["GET"]),
        Route("/friction/{entity_ref:path}", friction, methods=["GET"]),
        Route("/_control", control, methods=["POST"]),
        Route("/_release", release_held, methods=["POST"]),
        Route("/_accepted", accepted_view),
    ])


def _transport_protocol() -> Any:
    """uvicorn's protocol, telling the app its connection (so a test can drop it) and the
    request's body as it arrived, even when the client has gone away since."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class WithTransport(HttpToolsProtocol):  # type: ignore[misc]
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope["extensions"] = {"healert.transport": self.transport,
                                        "healert.body": bytearray()}

        def on_body(self, body: bytes) -> None:
            self.scope["extensions"]["healert.body"] += body
            super().on_body(body)

    return WithTransport


async def _body(request: Any) -> bytes:
    """The request's body. A client that sent it whole and then went away (killed, or
    given up on a frozen backend) still gets it handled, as a server busy or stopped
    while the request waited in its socket does when it gets to it: uvicorn itself would
    drop it."""
    from starlette.requests import ClientDisconnect

    try:
        return bytes(await request.body())
    except ClientDisconnect:
        return bytes(request.scope["extensions"]["healert.body"])


def serve(argv: list[str]) -> None:
    """Entry point of the subprocess."""
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--key", default=None)
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--retention-days", type=float, default=30.0)
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(sock.getsockname()[1]))
    tmp.replace(args.port_file)
    app = make_app(args.key, args.limit, args.window, args.record, args.retention_days)
    # Connections are kept longer than any test freezes the process: on waking, a request
    # that waited in an idle connection is handled, not dropped by an expired keep-alive
    # timer (uvloop runs timers before reading), which is the worst case for duplicates.
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                            http=_transport_protocol(), timeout_keep_alive=300)
    uvicorn.Server(config).run(sockets=[sock])


# -- the test-side handle ------------------------------------------------------------------

class Backend:
    """Start, stop, steer and inspect the backend subprocess."""

    def __init__(self, tmp_path: Path, api_key: str | None, limit: int,
                 window: float) -> None:
        self.dir = tmp_path / "backend"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.api_key = api_key
        self.limit = limit
        self.window = window
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL (what HEALERT_BACKEND_URL would hold)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start the process (on the previous port after a stop) and wait for /health."""
        port_file = self.dir / "port"
        port_file.unlink(missing_ok=True)
        argv = [sys.executable, str(Path(__file__).resolve()), "--port", str(self.port),
                "--port-file", str(port_file), "--record", str(self.dir / "accepted.jsonl"),
                "--limit", str(self.limit), "--window", str(self.window)]
        if self.api_key:
            argv += ["--key", self.api_key]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        log = (self.dir / "server.log").open("ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend exited: {(self.dir / 'server.log').read_text()}")
            if port_file.exists():
                self.port = int(port_file.read_text())
                try:
                    if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.02)
        raise RuntimeError("backend did not start")

    def freeze(self) -> None:
        """SIGSTOP: the process stops while its kernel still accepts connections and
        buffers requests, which it handles (and stores) when thawed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: a frozen backend runs again."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the process (the backend is then "down": connections are refused)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def control(self, **settings: Any) -> None:
        """POST /_control."""
        httpx.post(self.url + "/_control", json=settings, timeout=5.0).raise_for_status()

    def release(self) -> None:
        """POST /_release: answer (or drop) the held requests."""
        httpx.post(self.url + "/_release", timeout=5.0).raise_for_status()

    def friction(self, entity_ref: str) -> httpx.Response:
        """GET /friction/{entity_ref}, as the agent reads it."""
        return httpx.get(f"{self.url}/friction/{entity_ref}", timeout=5.0)

    def view(self) -> dict[str, Any]:
        """GET /_accepted."""
        result: dict[str, Any] = httpx.get(self.url + "/_accepted", timeout=5.0).json()
        return result

    def accepted(self) -> list[dict[str, Any]]:
        """Accepted events, in the order the backend took them (survives restarts)."""
        path = self.dir / "accepted.jsonl"
        if not path.exists():
            return []
        text = path.read_text()
        lines = text.split("\n")[:-1]  # a line still being written has no newline yet
        return [json.loads(line) for line in lines if line]

    def statuses(self) -> dict[int, int]:
        """Answer counts by status code since the last (re)start or reset."""
        return {int(k): v for k, v in self.view()["statuses"].items()}


@contextmanager
def run_backend(tmp_path: Path, api_key: str | None = "test-key", limit: int = 60,
                window: float = 60.0) -> Iterator[Backend]:
    """Run the test backend in a subprocess for the duration of the block."""
    backend = Backend(tmp_path, api_key, limit, window)
    backend.start()
    try:
        yield backend
    finally:
        backend.stop()


if __name__ == "__main__":
    serve(sys.argv[1:])
