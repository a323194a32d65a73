"""Starting `serve`: a refused configuration leaves nothing behind, and the agent that
replaces a running one can share its ports (a DaemonSet's surge pod on the host network).

The agents are the real command in subprocesses on loopback; the port-sharing rules of
`server.bind` are also checked in process against real sockets and a real outbox.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from healert_webhook import server
from healert_webhook.outbox import Outbox

from support.agent import Agent, metric
from support.events import RULES, event_list, exec_event
from support.pki import PKI, make_pki
from support.servers import wait_for


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """Agents a test started; killed at the end whatever happened."""
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.kill()


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_to_exit(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Agent:
    agent = Agent(list(args), tmp_path, env=env)
    agent.proc.wait(60)
    return agent


# -- a refused start creates nothing -------------------------------------------------------


def _plain_http_elsewhere(tmp_path: Path, pki: PKI) -> list[str]:
    return ["--listen", "0.0.0.0:0"]


def _a_key_that_is_no_key(tmp_path: Path, pki: PKI) -> list[str]:
    return ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.ca_file)]


def _a_missing_token_file(tmp_path: Path, pki: PKI) -> list[str]:
    return ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--webhook-token-file", str(tmp_path / "no-such-tokens")]


def _a_missing_client_ca(tmp_path: Path, pki: PKI) -> list[str]:
    return ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--tls-client-ca", str(tmp_path / "no-such-ca.crt")]


@pytest.mark.parametrize("mistake", [_plain_http_elsewhere, _a_key_that_is_no_key,
                                     _a_missing_token_file, _a_missing_client_ca],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_refused_configuration_creates_no_state(tmp_path: Path, pki: PKI,
                                                  mistake: object) -> None:
    """Exit 2 with the reason, and no ./state, no outbox.db: nothing to clean up."""
    assert callable(mistake)
    agent = run_to_exit(tmp_path, "serve", "--listen", "127.0.0.1:0",
                        "--ops-listen", "127.0.0.1:0", *mistake(tmp_path, pki))
    assert agent.proc.returncode == 2, agent.output()
    assert "configuration error" in agent.output()
    assert not (tmp_path / "state").exists(), agent.output()


@pytest.mark.parametrize("listener", ["webhook", "ops"])
def test_a_port_in_use_creates_no_state(tmp_path: Path, listener: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"webhook": "127.0.0.1:0", "ops": "127.0.0.1:0", listener: f"127.0.0.1:{port}"}
        agent = run_to_exit(tmp_path, "serve", "--listen", ports["webhook"],
                            "--ops-listen", ports["ops"])
    assert agent.proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in agent.output()
    assert not (tmp_path / "state").exists()


def test_a_tail_with_a_bad_key_file_creates_no_state(tmp_path: Path) -> None:
    agent = run_to_exit(tmp_path, "tail", "--audit-log", str(tmp_path / "audit.log"),
                        "--ops-listen", "127.0.0.1:0",
                        env={"HEALERT_API_KEY_FILE": str(tmp_path / "no-such-key")})
    assert agent.proc.returncode == 2
    assert "no-such-key" in agent.output()
    assert not (tmp_path / "state").exists()


# -- the successor shares the ports ------------------------------------------------------------


def _serve(tmp_path: Path, state: str, webhook: int, ops: int, log: str) -> Agent:
    (tmp_path / "rules.yaml").write_text(RULES)
    return Agent(["serve", "--rules", "rules.yaml", "--state-dir", state,
                  "--listen", f"127.0.0.1:{webhook}", "--ops-listen", f"127.0.0.1:{ops}"],
                 tmp_path, log_name=log)


def _post(port: int, index: int) -> int:
    body = event_list([exec_event(index, tag="surge")])
    return httpx.post(f"http://127.0.0.1:{port}/audit", content=body, timeout=30,
                      headers={"content-type": "application/json"}).status_code


def test_a_successor_on_the_same_outbox_shares_both_ports(
        tmp_path: Path, agents: list[Agent]) -> None:
    """Old and new agent listen at once; the old one stops; nothing is refused meanwhile."""
    webhook, ops = free_port(), free_port()
    old = _serve(tmp_path, "state", webhook, ops, "old.log")
    agents.append(old)
    old.wait_line("webhook listener on")
    new = _serve(tmp_path, "state", webhook, ops, "new.log")
    agents.append(new)
    new.wait_line("webhook listener on")
    codes = [_post(webhook, i) for i in range(20)]
    assert old.stop() == 0
    codes += [_post(webhook, i) for i in range(20, 40)]
    assert codes == [200] * 40
    assert metric(ops, "healert_audit_events_total", source="webhook") >= 20, "the new one"
    assert new.stop() == 0
    box = Outbox(tmp_path / "state" / "outbox.db")
    try:
        assert len(box.head(1000)) == 40, "every batch stored once in the one outbox"
    finally:
        box.close()


def test_an_agent_of_another_outbox_is_refused_the_port(
        tmp_path: Path, agents: list[Agent]) -> None:
    """Two agents of different state directories on one port would split the apiserver's
    batches between two outboxes: the second gets "address in use", as before."""
    webhook = free_port()
    first = _serve(tmp_path, "state-a", webhook, 0, "a.log")
    agents.append(first)
    first.wait_line("webhook listener on")
    second = _serve(tmp_path, "state-b", webhook, 0, "b.log")
    agents.append(second)
    assert second.proc.wait(60) == 2
    assert f"cannot listen on 127.0.0.1:{webhook}" in second.output()
    assert not (tmp_path / "state-b").exists()
    wait_for(first.alive, what="the first agent still running")


def test_bind_shares_only_with_an_agent_of_the_same_outbox(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.db"
    port = free_port()
    first = server.bind("127.0.0.1", port, path)
    try:
        with pytest.raises(server.StartupError, match="in use"):
            server.bind("127.0.0.1", port, path)  # no process has that outbox open
        with pytest.raises(server.StartupError, match="in use"):
            server.bind("127.0.0.1", port)
        box = Outbox(path)  # another holder of the outbox, as the running agent is
        try:
            second = server.bind("127.0.0.1", port, path)
            second.close()
        finally:
            box.close()
    finally:
        first.close()


def test_bind_never_shares_with_a_listener_without_the_option(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    try:
        with socket.socket() as foreign:
            foreign.bind(("127.0.0.1", 0))
            foreign.listen()
            port = foreign.getsockname()[1]
            with pytest.raises(server.StartupError, match="in use"):
                server.bind("127.0.0.1", port, path, wait=0.2)  # waited for, never shared
    finally:
        box.close()


def test_an_ephemeral_port_is_never_shared(tmp_path: Path) -> None:
    sock = server.bind("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    finally:
        sock.close()
    sock = server.bind("127.0.0.1", free_port())
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    finally:
        sock.close()


# -- a predecessor that does not share: an earlier version ---------------------------------


def _plain_listener(port: int) -> socket.socket:
    """A listener without SO_REUSEPORT, as an agent before it had one bound its ports."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


@pytest.mark.timeout(120)
def test_a_successor_waits_for_a_predecessor_that_does_not_share(
        tmp_path: Path, agents: list[Agent]) -> None:
    """The first surge onto a new version: the old agent holds the ports without
    SO_REUSEPORT. The new one waits (it does not exit, which would stall the rollout),
    and takes the ports once the old one lets go."""
    webhook = free_port()
    box = Outbox(tmp_path / "state" / "outbox.db")  # the old agent's open outbox
    old = _plain_listener(webhook)
    try:
        new = _serve(tmp_path, "state", webhook, 0, "new.log")
        agents.append(new)
        new.wait_line("does not share it .an earlier version.; waiting up to")
        assert new.alive() and "webhook listener on" not in new.output()
    finally:
        old.close()  # the DaemonSet deleted the old pod
        box.close()
    new.wait_line("webhook listener on")
    assert _post(webhook, 1) == 200


def test_bind_waits_only_as_long_as_it_is_told(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    port = free_port()
    box = Outbox(path)
    old = _plain_listener(port)
    try:
        with pytest.raises(server.StartupError, match="in use"):
            server.bind("127.0.0.1", port, path, wait=0.3)
        closed = threading.Event()

        def stop_the_old_one() -> None:
            closed.set()
            old.close()

        timer = threading.Timer(0.3, stop_the_old_one)
        timer.start()
        sock = server.bind("127.0.0.1", port, path, wait=60)
        assert closed.is_set(), "bound only once the old listener let go"
        sock.close()
        timer.join()
    finally:
        old.close()
        box.close()


@pytest.mark.timeout(30)
def test_bind_never_waits_for_a_stranger(tmp_path: Path) -> None:
    """A listener that is no agent of this outbox: "address in use" at once, as before."""
    port = free_port()
    with _plain_listener(port), pytest.raises(server.StartupError, match="in use"):
        server.bind("127.0.0.1", port, tmp_path / "outbox.db", wait=3600)
