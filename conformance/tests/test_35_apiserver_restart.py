"""The apiserver stopped and started again, and an agent started while it is down.

`ControlPlane.restart_apiserver` stops the apiserver (SIGTERM: it flushes its audit
buffers) and starts it again on the same port with the same certificates and etcd. Both
agents keep running; the controller-manager reconnects by itself. Every request audited
before the stop reaches both agents once, the cluster's objects are still there, and the
controllers go on working. Then the webhook agent is restarted while the apiserver is down:
it is up before the apiserver answers, and receives what the apiserver audits once it does.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from conformance.harness import objects
from conformance.harness.cluster import ControlPlane
from conformance.harness.env import Environment
from conformance.harness.load import get_many
from conformance.harness.procs import wait_for
from conformance.harness.runner import Runner, is_marker

pytestmark = pytest.mark.timeout(600)

READS = 40
READ_PATH = "/api/v1/namespaces/shop/secrets/checkout-stripe"
DOWN_SECONDS = 5.0


def _reads_by_alice(rows: dict[str, dict[str, Any]]) -> int:
    return sum(1 for r in rows.values() if r["rule"] == "emergency-access"
               and r["event"].get("actor") == "alice"
               and "checkout-stripe" in str(r["event"].get("entity_ref")))


def _answers(cp: ControlPlane) -> bool:
    try:
        return cp.admin_client().get("/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_restart_loses_nothing_and_the_cluster_goes_on(env: Environment,
                                                        runner: Runner) -> None:
    """Requests made before the stop reach both agents once; state and controllers survive."""
    cp = env.cluster
    serve_before, tail_before = runner.sync()
    uid = cp.get_json("conformance-admin", "-n", "payments", "deployment",
                      "payments-api")["metadata"]["uid"]
    load = get_many(cp, "alice", READ_PATH, READS)
    assert load.codes == {200: READS}, (load.codes, load.errors[:3])
    port = cp.port
    stopped, answering = cp.restart_apiserver(DOWN_SECONDS)
    assert answering - stopped >= DOWN_SECONDS
    assert cp.port == port and _answers(cp)
    serve, tail = runner.sync(timeout=180)
    assert _reads_by_alice(serve) - _reads_by_alice(serve_before) == READS
    assert _reads_by_alice(tail) - _reads_by_alice(tail_before) == READS
    assert cp.get_json("conformance-admin", "-n", "payments", "deployment",
                       "payments-api")["metadata"]["uid"] == uid
    # The controller-manager, up all along, serves a new Deployment.
    cp.kubectl(ControlPlane.BOOTSTRAP, "create", "-f", "-",
               stdin=json.dumps(objects.deployment("payments", "after-restart")))
    assert cp.wait_for_pod_of("payments", "Deployment", "after-restart", timeout=180)
    assert cp.controller_manager is not None and cp.controller_manager.alive()
    cp.kubectl(ControlPlane.BOOTSTRAP, "-n", "payments", "delete", "deployment",
               "after-restart", "--wait=false")


def test_agent_started_before_the_apiserver_answers(env: Environment, runner: Runner) -> None:
    """The webhook agent restarted while the apiserver is down receives what is audited
    once the apiserver is back."""
    cp = env.cluster
    runner.sync()
    try:
        assert cp.stop_apiserver() == 0, "the apiserver did not exit by itself on SIGTERM"
        assert not _answers(cp)
        agent = env.agents.restart_serve()
        time.sleep(2)
        assert agent.proc.alive() and not _answers(cp)
    finally:
        cp.start_apiserver()
    serve_before, _ = runner.sync(timeout=180)
    load = get_many(cp, "alice", READ_PATH, 5)
    assert load.codes == {200: 5}
    serve, _ = runner.sync(timeout=180)
    assert _reads_by_alice(serve) - _reads_by_alice(serve_before) == 5
    assert not [r for k, r in serve.items() if k not in serve_before and not is_marker(r)
                and r["event"].get("actor") != "alice"]
    wait_for(lambda: cp.controller_manager is not None and cp.controller_manager.alive(), 5,
             "the controller-manager")
