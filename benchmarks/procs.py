"""Process helpers for the benchmark: start the agent, read its CPU time and peak memory.

CPU time comes from /proc/<pid>/stat (utime + stime of the process, its reaped children
and its live descendants), so a figure is "events per second of the server's own CPU",
independent of how busy the load generator keeps the other core.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
# Settings the agent reads from the environment: a developer's shell must not leak in.
AGENT_ENV_PREFIXES = ("HEALERT_", "RULES_PATH", "AUDIT_LOG_PATH", "K8S_NAMESPACE",
                      "ENTITY_NAMESPACE", "KUBECONFIG", "KUBERNETES_SERVICE_HOST")
# ...but the benchmark's own switch goes through: `HEALERT_NATIVE=off benchmarks/run.py`
# measures every row, the servers' and the tailer's too, without the native scanner.
PASSED_THROUGH = ("HEALERT_NATIVE",)


class Unavailable(Exception):
    """A section cannot run here (a command missing or failing); the reason says why."""


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat_fields(int(entry))[1]) == pid:
                    kids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return kids


def cpu_seconds(pid: int) -> float:
    """utime+stime of `pid`, its waited-for children and its live descendants."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    # stat fields 14-17 (utime stime cutime cstime) are at offsets 11-14 from field 3.
    total = sum(int(x) for x in fields[11:15]) / TICKS
    return total + sum(cpu_seconds(kid) for kid in _children(pid))


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of `pid` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise Unavailable(f"no VmHWM in /proc/{pid}/status")


def agent_env() -> dict[str, str]:
    """The environment for agent subprocesses: source tree importable, no stray settings."""
    env = {k: v for k, v in os.environ.items()
           if k in PASSED_THROUGH or not k.startswith(AGENT_ENV_PREFIXES)}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def rules_args() -> list[str]:
    """`--rules` for the repository's rules.yaml, else nothing (the packaged rules)."""
    path = REPO / "rules.yaml"
    return ["--rules", str(path)] if path.is_file() else []


@dataclass
class Agent:
    """A running `python -m healert_webhook ...` subprocess."""

    proc: subprocess.Popen[bytes]
    ops_port: int
    log_path: Path
    port: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The agent's process id."""
        return self.proc.pid

    def log_tail(self, lines: int = 8) -> str:
        """The last lines the agent wrote, for an 'unavailable' reason."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET an ops endpoint; (0, b"") when it does not answer."""
        url = f"http://127.0.0.1:{self.ops_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (OSError, urllib.error.URLError):
            return 0, b""

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll /readyz until 200; raise Unavailable if the agent exits or never gets ready."""
        deadline = time.monotonic() + timeout
        last = (0, b"")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"agent exited with code {self.proc.returncode}: "
                                  f"{self.log_tail()}")
            last = self.get("/readyz", timeout=2.0)
            if last[0] == 200:
                return
            time.sleep(0.1)
        raise Unavailable(f"agent not ready after {timeout:.0f}s (last /readyz "
                          f"{last[0]} {last[1][:200]!r}): {self.log_tail()}")

    def metric(self, name: str, labels: str) -> float | None:
        """One sample of a Prometheus metric from /metrics, e.g. labels 'source="tail"'."""
        code, body = self.get("/metrics")
        if code != 200:
            return None
        prefix = f"{name}{{{labels}}} ".encode()
        for line in body.splitlines():
            if line.startswith(prefix):
                return float(line[len(prefix):])
        return None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def start_agent(command: str, workdir: Path, args: list[str]) -> Agent:
    """Start `python -m healert_webhook <command>` with a state dir under `workdir`."""
    state = workdir / "state"
    state.mkdir(parents=True, exist_ok=True)
    ops_port = free_port()
    log_path = workdir / f"{command}.log"
    argv = [sys.executable, "-m", "healert_webhook", command, "--state-dir", str(state),
            "--ops-listen", f"127.0.0.1:{ops_port}", "--log-level", "warning",
            *rules_args(), *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=workdir, env=agent_env(), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Agent(proc, ops_port, log_path)


def start_server(workdir: Path, pki: PKI | None = None) -> Agent:
    """The webhook server (`serve`) on a free loopback port, ready to take batches: plain
    HTTP, or with `pki` over TLS requiring the apiserver's client certificate."""
    port = free_port()
    if pki is None:
        args = ["--listen", f"127.0.0.1:{port}", "--insecure-http"]
    else:
        args = ["--listen", f"127.0.0.1:{port}", "--tls-cert", str(pki.server_cert),
                "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca),
                "--tls-client-names", CLIENT_NAME]
    agent = start_agent("serve", workdir, args)
    agent.port = port
    try:
        agent.wait_ready()
    except Unavailable:
        agent.stop()
        raise
    return agent


CLIENT_NAME = "kube-apiserver-audit"


@dataclass(frozen=True)
class PKI:
    """The files `certs/gen-certs.sh` writes: what both ends of the mTLS link use."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def mtls_pki(workdir: Path) -> PKI:
    """A CA, the server's certificate for 127.0.0.1 and the apiserver's client
    certificate, made by the project's own `certs/gen-certs.sh` (openssl)."""
    if shutil.which("openssl") is None:
        raise Unavailable("the openssl command is not installed")
    out = workdir / "pki"
    run = subprocess.run(
        ["bash", str(REPO / "certs" / "gen-certs.sh"), "--out", str(out), "--san", "IP:127.0.0.1",
         "--client-cn", CLIENT_NAME, "--days", "2"],
        capture_output=True, check=False, timeout=120)
    if run.returncode != 0:
        raise Unavailable(f"gen-certs.sh failed: {run.stderr.decode(errors='replace')[-300:]}")
    return PKI(out / "ca.crt", out / "server.crt", out / "server.key",
               out / "apiserver-client.crt", out / "apiserver-client.key")
