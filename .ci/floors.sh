#!/usr/bin/env bash
# The declared dependency floors work: install exactly the minimum of every runtime
# dependency in pyproject.toml (`pkg>=X` installed as `pkg==X`) in a new venv, then the
# package without its dependencies, and run the agent end to end on loopback:
#   serve over TLS with client certificates; a kubectl exec EventList POSTed over mTLS is
#   answered 200 and queued (`outbox list --json`); a client without a certificate is
#   refused; /metrics and /readyz answer; SIGTERM stops it with 0; then `validate`,
#   `replay` and `check-backend` against a closed port (its exit code 3).
# Then the tests most sensitive to those libraries run on them (FLOORS_TESTS="paths..."
# chooses others, FLOORS_TESTS= none). Exits non-zero on any failure. Standalone:
# `.ci/floors.sh` (pip's cache keeps reruns fast; FLOORS_KEEP=1 keeps the temporary
# directory; FLOORS_PINS="pkg==v ..." tries other versions instead of pyproject's floors).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
started=$SECONDS
python=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/healert-floors.XXXXXX")
cleanup() {
  if [ "${FLOORS_KEEP:-0}" = 1 ]; then echo "floors: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
fail() { echo "floors: FAILED: $*" >&2; exit 1; }

# pyproject's floors, as exact pins ("uvicorn[standard]>=0.36" -> "uvicorn[standard]==0.36").
mapfile -t pins < <("$python" - <<'PY'
import re, tomllib
with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
for dep in deps:
    found = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?)\s*>=\s*([^,;\s]+)\s*", dep)
    if found is None:
        raise SystemExit(f"floors: {dep!r} is not 'name>=minimum': no floor to test")
    print(f"{found[1]}=={found[2]}")
PY
)
[ "${#pins[@]}" -gt 0 ] || fail "no dependencies read from pyproject.toml"
if [ -n "${FLOORS_PINS:-}" ]; then read -r -a pins <<<"$FLOORS_PINS"; fi
echo "floors: installing ${pins[*]}"

"$python" -m venv "$work/venv"
venv="$work/venv/bin"
"$venv/pip" install -q --disable-pip-version-check "${pins[@]}" \
  || fail "the floors do not install together"
"$venv/pip" install -q --disable-pip-version-check --no-deps -e "$repo"
if [ -z "${FLOORS_PINS:-}" ]; then  # other pins may well be below what pyproject declares
  "$venv/pip" check >/dev/null || { "$venv/pip" check; fail "pip check"; }
fi
echo "floors: installed after $((SECONDS - started)) s"

# Certificates: the project's own script when openssl is there, else trustme (venv only).
pki="$work/pki"
if command -v openssl >/dev/null; then
  certs/gen-certs.sh --out "$pki" --san IP:127.0.0.1 --san DNS:localhost >/dev/null
else
  "$venv/pip" install -q --disable-pip-version-check trustme
  "$venv/python" - "$pki" <<'PY'
import pathlib, sys, trustme
out = pathlib.Path(sys.argv[1]); out.mkdir(mode=0o700)
ca = trustme.CA()
ca.cert_pem.write_to_path(str(out / "ca.crt"))
server = ca.issue_cert("127.0.0.1", "localhost")
server.private_key_pem.write_to_path(str(out / "server.key"))
server.cert_chain_pems[0].write_to_path(str(out / "server.crt"))
client = ca.issue_cert("kube-apiserver-audit", common_name="kube-apiserver-audit")
client.private_key_pem.write_to_path(str(out / "apiserver-client.key"))
client.cert_chain_pems[0].write_to_path(str(out / "apiserver-client.crt"))
PY
fi

# The agent, as the node-local mode runs it: mTLS, client names allow-listed.
cd "$work"
"$venv/python" - "$work" "$repo" <<'PY' || { cat "$work/agent.log" >&2; fail "serve"; }
"""Start serve, POST a kubectl exec over mTLS, check the answers and metrics, stop it."""
import os, re, signal, ssl, subprocess, sys, time
import httpx

work, repo = sys.argv[1], sys.argv[2]
pki = os.path.join(work, "pki")
log = os.path.join(work, "agent.log")
env = {k: v for k, v in os.environ.items() if not k.startswith("HEALERT_")}
with open(log, "wb") as out:
    agent = subprocess.Popen(
        [os.path.join(work, "venv/bin/healert-webhook"), "serve",
         "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0",
         "--state-dir", os.path.join(work, "state"), "--rules", os.path.join(repo, "rules.yaml"),
         "--tls-cert", os.path.join(pki, "server.crt"),
         "--tls-key", os.path.join(pki, "server.key"),
         "--tls-client-ca", os.path.join(pki, "ca.crt"),
         "--tls-client-names", "kube-apiserver-audit"],
        stdout=out, stderr=subprocess.STDOUT, env=env)


def line(pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(log, errors="replace") as f:
            found = re.search(pattern, f.read())
        if found:
            return found
        if agent.poll() is not None:
            raise SystemExit(f"serve exited {agent.returncode} before logging {pattern!r}")
        time.sleep(0.1)
    raise SystemExit(f"serve did not log {pattern!r} within 60 s")


try:
    ops = int(line(r"ops listener on http://127\.0\.0\.1:(\d+)")[1])
    hook = line(r"webhook listener on (https://127\.0\.0\.1:\d+/audit) "
                r"\(auth: client certificates")[1]
    with open(os.path.join(repo, "docs/examples/exec-eventlist.json"), "rb") as f:
        body = f.read()
    assert b"EventList" in body and b'"exec"' in body
    headers = {"Content-Type": "application/json"}
    tls = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
    tls.load_cert_chain(os.path.join(pki, "apiserver-client.crt"),
                        os.path.join(pki, "apiserver-client.key"))
    with httpx.Client(verify=tls, timeout=30) as client:
        answer = client.post(hook, content=body, headers=headers)
    assert answer.status_code == 200, (answer.status_code, answer.text)
    anonymous = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
    try:
        with httpx.Client(verify=anonymous, timeout=30) as client:
            refused = client.post(hook, content=body, headers=headers)
    except httpx.TransportError:
        pass  # refused at the handshake, as it must be
    else:
        raise SystemExit(f"a client without a certificate got HTTP {refused.status_code}")
    metrics = httpx.get(f"http://127.0.0.1:{ops}/metrics", timeout=30).text
    assert re.search(r'^healert_friction_events_total\{rule="kubectl-exec",.*\} 1\.0$',
                     metrics, re.M), "healert_friction_events_total of the exec is not 1"
    ready = httpx.get(f"http://127.0.0.1:{ops}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    agent.send_signal(signal.SIGTERM)
    code = agent.wait(60)
    assert code == 0, f"serve exited {code} on SIGTERM"
finally:
    if agent.poll() is None:
        agent.kill()
        agent.wait()
print("floors: serve over mTLS: the exec answered 200 and counted, a client without a "
      "certificate refused, stopped with 0")
PY
grep -q "Traceback" "$work/agent.log" && { cat "$work/agent.log" >&2; fail "traceback in the log"; }

listed=$("$venv/healert-webhook" outbox list --json --state-dir "$work/state")
"$venv/python" -c '
import json, sys
rows = json.loads(sys.argv[1])
assert [r["rule"] for r in rows] == ["kubectl-exec"], rows
assert rows[0]["event"]["entity_ref"].startswith("component:"), rows[0]
' "$listed" || fail "outbox list --json: $listed"

"$venv/healert-webhook" validate "$repo/rules.yaml" >/dev/null || fail "validate"
replayed=$("$venv/healert-webhook" replay "$repo/docs/examples/exec-eventlist.json" \
  2>"$work/replay.err") || { cat "$work/replay.err" >&2; fail "replay"; }
grep -q "kubectl-exec" <<<"$replayed" || fail "replay found no exec: $replayed"

# A port nothing listens on: bound, then closed again.
closed=$("$venv/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
set +e
env -u HEALERT_API_KEY -u HEALERT_API_KEY_FILE "$venv/healert-webhook" check-backend \
  --backend-url "http://127.0.0.1:$closed" >"$work/check.out" 2>&1
code=$?
set -e
[ "$code" = 3 ] || { cat "$work/check.out" >&2; fail "check-backend exited $code, not 3"; }

echo "floors: the commands work after $((SECONDS - started)) s"

# The tests of what depends most on these libraries' behaviour: TLS and connection floods
# (uvloop), hostile bodies (orjson's depth limit, the httptools protocol), TLS files and
# handshakes, the ops listener (starlette, prometheus-client). The test tools come on top,
# constrained so that nothing installed above moves.
if [ -n "${FLOORS_TESTS-x}" ]; then
  "$venv/pip" freeze --exclude-editable >"$work/constraints.txt"
  "$venv/pip" install -q --disable-pip-version-check -c "$work/constraints.txt" \
    pytest pytest-timeout hypothesis trustme || fail "test tools do not install beside the floors"
  cd "$repo"
  read -r -a tests <<<"${FLOORS_TESTS:-tests/reliability/test_connections.py \
    tests/reliability/test_hostile_input.py tests/test_tls.py tests/test_ops.py \
    tests/test_prefilter.py tests/test_batches.py}"
  "$venv/python" -m pytest -q -p no:cacheprovider "${tests[@]}" || fail "tests at the floors"
fi

echo "floors: ok (${pins[*]}) in $((SECONDS - started)) s"
