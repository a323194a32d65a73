"""A stand-in for the Healert backend (DESIGN §6), run by uvicorn in its own process.

It answers like the real FastAPI backend: `GET /health`; `POST /events` with a fixed-window
rate limit per client IP (429 with Retry-After), then the bearer key (401), then field
validation (422 with a FastAPI-shaped `{"detail": [...]}`), then 200. The window length and
limit come from argv so tests run in seconds. Accepted events are appended to a record file,
so they survive the process being stopped and started again ("backend down").

Control API on the same server (tests only):
  POST /_control {"mode": "ok|500|429|401|slow|reset", "latency": s, "latency_after": s,
                  "reject_types": [...]}
     slow: sleep `latency` before recording and `latency_after` after (before answering);
     reject_types: answer 422 for these types (a stricter backend, for dead-letter tests)
  GET /_accepted -> {"events": [...], "statuses": {code: n}, "max_in_window": n}

`run_backend(tmp_path, ...)` starts it as a subprocess and yields a `Backend` handle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


# -- the server (runs in the subprocess) --------------------------------------------------

def make_app(api_key: str | None, limit: int, window: float, record: Path) -> Any:
    """The Starlette app; state lives in this closure."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from healert_webhook import backend_contract

    accepted: list[dict[str, Any]] = []
    if record.exists():
        accepted.extend(json.loads(line) for line in record.read_text().splitlines() if line)
    out = record.open("a", encoding="utf-8")
    state: dict[str, Any] = {}
    windows: Counter[tuple[str, int]] = Counter()
    statuses: Counter[int] = Counter()

    def reset() -> None:
        state.update(mode="ok", latency=0.0, latency_after=0.0, reject_types=[],
                     max_in_window=0)
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
            retry = max(1, math.ceil((index + 1) * window - now))
            return answer(429, {"detail": f"Rate limit exceeded: {limit} per {window}s"},
                          {"Retry-After": str(retry)})
        return None

    async def events(request: Request) -> JSONResponse:
        mode = state["mode"]
        if mode == "500":
            return answer(500, {"detail": "Internal Server Error"})
        if mode == "429":
            return answer(429, {"detail": "Rate limit exceeded"}, {"Retry-After": "1"})
        limited = rate_limited(request)
        if limited is not None:
            return limited
        given = request.headers.get("authorization", "")
        if (api_key and given != f"Bearer {api_key}") or mode == "401":
            return answer(401, {"detail": "Invalid or missing API key"})
        try:
            event = json.loads(await request.body())
        except ValueError:
            return answer(422, {"detail": [{"loc": ["body"], "msg": "JSON decode error",
                                            "type": "json_invalid"}]})
        problems = backend_contract.validate(event)
        if problems:
            return answer(422, {"detail": [p.as_fastapi() for p in problems]})
        if event.get("type") in state["reject_types"]:
            return answer(422, {"detail": [{"loc": ["body", "type"], "type": "value_error",
                                            "msg": f"type {event['type']} not accepted"}]})
        if state["latency"]:
            await asyncio.sleep(state["latency"])
        accepted.append(event)
        out.write(json.dumps(event) + "\n")
        out.flush()
        if state["latency_after"]:
            await asyncio.sleep(state["latency_after"])
        return answer(200, {"status": "ok", "entity_ref": event["entity_ref"]})

    async def control(request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("mode") == "reset":
            reset()
            accepted.clear()
            out.truncate(0)
        elif "mode" in body:
            state["mode"] = body["mode"]
        for name in ("latency", "latency_after", "reject_types"):
            if name in body:
                state[name] = body[name]
        return JSONResponse({"ok": True})

    async def accepted_view(request: Request) -> JSONResponse:
        return JSONResponse({"events": accepted, "statuses": dict(statuses),
                             "max_in_window": state["max_in_window"]})

    return Starlette(routes=[
        Route("/health", health), Route("/events", events, methods=["POST"]),
        Route("/_control", control, methods=["POST"]), Route("/_accepted", accepted_view),
    ])


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
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(sock.getsockname()[1]))
    tmp.replace(args.port_file)
    app = make_app(args.key, args.limit, args.window, args.record)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
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

    def stop(self) -> None:
        """Stop the process (the backend is then "down": connections are refused)."""
        if self.proc is not None and self.proc.poll() is None:
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
