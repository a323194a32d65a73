"""`serve` and `tail` with a view of the cluster: how they find it, what they say, and that
ingest never waits for it.

The real agent runs as a subprocess. The apiserver here is one that does not answer (a
closed loopback port): what an agent does with a cluster that is there is proven against
the real kube-apiserver by conformance/tests/test_55_entity_wiring.py.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import yaml

from healert_webhook import exits
from healert_webhook.outbox import Outbox

from support.agent import JSON, ROOT, Agent, metric, readyz, serve_args
from support.events import event_list, exec_ws
from support.servers import wait_for


def now() -> str:
    """The request time of an event made now (the outbox sets aside old ones)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig whose current context points at `server` with a token."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server,
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "secret-token-1234"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return path


def run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "healert_webhook", *args], cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})},
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_kubeconfig_that_cannot_be_used_is_a_configuration_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("clusters: [\n")
    for args, env, says in (
            (["--kubeconfig", str(tmp_path / "missing")], {},
             "HEALERT_KUBECONFIG: no such file"),
            ([], {"KUBECONFIG": str(broken)}, f"HEALERT_KUBECONFIG {broken} cannot be used")):
        for command in ("serve", "tail"):
            extra = ["--audit-log", str(tmp_path / "audit.log")] if command == "tail" else []
            done = run_cli(tmp_path, command, "--state-dir", "state", *extra, *args, env=env)
            assert done.returncode == exits.CONFIG, done.stderr
            assert says in done.stderr, done.stderr
            assert not (tmp_path / "state" / "outbox.db").exists()  # nothing was started


def test_serve_takes_batches_while_the_cluster_does_not_answer(tmp_path: Path) -> None:
    config = kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{closed_port()}")
    agent = Agent(serve_args("state", "--kubeconfig", str(config)), tmp_path)
    try:
        hook, ops = agent.ports()
        agent.wait_line(rf"cluster view through kubeconfig {config} \(context c\)")
        for method in ("label", "owner", "namespace", "name"):
            assert metric(ops, "healert_entity_resolutions_total", method=method) == 0
        answer = httpx.post(f"http://127.0.0.1:{hook}/audit", headers=JSON, timeout=30,
                            content=event_list([exec_ws(audit_id="while-down", received=now())]))
        assert answer.status_code == 200
        wait_for(lambda: metric(ops, "healert_cluster_view_errors_total",
                                resource="pods") > 0, timeout=30, what="a failed list")
        ready = readyz(ops)
        assert ready.status_code == 200, ready.text
        line = ready.text.splitlines()[-1]
        assert line.startswith("cluster view: not synced: pods (ConnectError"), ready.text
        assert "127.0.0.1" not in line and "secret-token" not in ready.text
        assert metric(ops, "healert_cluster_view_synced", resource="pods") == 0
        assert metric(ops, "healert_entity_resolutions_total", method="name") == 1
        agent.wait_line(r"friction stored rule=kubectl-exec actor=\S+ "
                        r"entity=component:payments/payments-api entity_by=name ")
        assert "secret-token" not in agent.output()
        assert agent.stop(timeout=30) == 0
    finally:
        agent.kill()
    box = Outbox(tmp_path / "state" / "outbox.db")
    try:
        assert [row.event["entity_ref"] for row in box.head(10)] == \
            ["component:payments/payments-api"]
    finally:
        box.close()


def test_tail_runs_the_view_too_and_off_runs_none(tmp_path: Path) -> None:
    config = kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{closed_port()}")
    log = tmp_path / "audit.log"
    log.write_bytes(orjson.dumps({"kind": "Event", "apiVersion": "audit.k8s.io/v1",
                                  **exec_ws(audit_id="tailed", received=now())}) + b"\n")
    common = ["--state-dir", "state", "--ops-listen", "127.0.0.1:0", "--audit-log", str(log),
              "--from", "start"]
    # KUBECONFIG is a list, as kubectl reads it: the first file that exists.
    tail = Agent(["tail", *common], tmp_path,
                 env={"KUBECONFIG": f"{tmp_path / 'absent'}:{config}"})
    try:
        ops = int(tail.wait_line(r"ops listener on http://127\.0\.0\.1:(\d+)").group(1))
        wait_for(lambda: "cluster view: not synced" in readyz(ops).text, timeout=30,
                 what="the view's line in /readyz")
        tail.wait_line(r"friction stored rule=kubectl-exec .* entity_by=name ")
        assert tail.stop(timeout=30) == 0
    finally:
        tail.kill()
    off = Agent(["tail", *common], tmp_path,
                env={"KUBECONFIG": str(config), "HEALERT_CLUSTER_VIEW": "off"})
    try:
        ops = int(off.wait_line(r"ops listener on http://127\.0\.0\.1:(\d+)").group(1))
        off.wait_line(r"cluster view: off \(HEALERT_CLUSTER_VIEW=off\)")
        assert "cluster view" not in readyz(ops).text
        assert metric(ops, "healert_cluster_view_synced") == 0
        assert "healert_cluster_view_synced{" not in httpx.get(
            f"http://127.0.0.1:{ops}/metrics", timeout=10).text
        assert off.stop(timeout=30) == 0
    finally:
        off.kill()
