#!/usr/bin/env bash
# Check tests/ironic/drive_agent.py against the real IPA 13.0.0 REST API
# (tests/ironic/ipa_reference_agent.py, simulated hardware).  This tests the
# test driver, not rivet.  Prints "N passed, N failed"; exits non-zero on any
# failure.  Needs both venvs: bash tests/ironic/setup.sh --with-ipa
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venvs=$(bash "$here/setup.sh" --with-ipa) || { echo "setup.sh failed" >&2; exit 1; }
IRONIC_PY=$(echo "$venvs" | sed -n 1p)/bin/python
IPA_PY=$(echo "$venvs" | sed -n 2p)/bin/python
tmp=$(mktemp -d)
PORT=$("$IRONIC_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TOKEN=$("$IRONIC_PY" -c 'import secrets; print(secrets.token_urlsafe(32))')

"$IPA_PY" "$here/ipa_reference_agent.py" --port "$PORT" --token "$TOKEN" \
    --write-delay 1.5 --lifetime 600 >"$tmp/agent.out" 2>"$tmp/agent.err" &
agent_pid=$!
cleanup() { kill "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
    grep -q listening "$tmp/agent.out" 2>/dev/null && break
    sleep 0.1
done
grep -q listening "$tmp/agent.out" || { echo "reference agent did not start" >&2; cat "$tmp/agent.err" >&2; exit 1; }

echo '{"id": "img-ok", "urls": ["http://127.0.0.1:9/img"], "disk_format": "raw"}' >"$tmp/ok.json"
echo '{"id": "fail-dl", "urls": ["http://127.0.0.1:9/img"]}' >"$tmp/fail.json"

pass=0; fail=0
run() {  # run NAME EXPECTED_RC ARGS...
    local name=$1 want=$2; shift 2
    local got
    "$IRONIC_PY" "$here/drive_agent.py" --agent-url "http://127.0.0.1:$PORT" \
        --token "$TOKEN" --timeout 60 --poll-interval 0.3 "$@" >"$tmp/out" 2>"$tmp/err"
    got=$?
    if [ "$got" = "$want" ]; then
        pass=$((pass + 1)); echo "ok   $name"
    else
        fail=$((fail + 1)); echo "FAIL $name (exit $got, want $want)"
        cat "$tmp/out" "$tmp/err"
    fi
}
run deploy_steps          0 --scenario deploy_steps
run partition_uuids_empty 0 --scenario partition_uuids
run deploy                0 --scenario deploy --image-info "$tmp/ok.json"
run partition_uuids       0 --scenario partition_uuids
run sync                  0 --scenario sync
run collect_logs          0 --scenario collect_logs
run deploy_fail_expected  0 --scenario deploy --image-info "$tmp/fail.json" --expect-failure ImageDownloadError
run deploy_fail_unexpected 1 --scenario deploy --image-info "$tmp/fail.json"
run version_mismatch      0 --scenario deploy --image-info "$tmp/ok.json" --deploy-version '{"generic_hardware_manager": "0.9"}' --expect-failure VersionMismatch
run busy                  0 --scenario busy --image-info "$tmp/ok.json"
run bad_token             0 --scenario bad_token
run stub_node_deploy      0 --scenario deploy --image-info "$tmp/ok.json" --node-impl stub
run power_off             0 --scenario power_off
run dead_port             3 --scenario sync --agent-url http://127.0.0.1:9
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
