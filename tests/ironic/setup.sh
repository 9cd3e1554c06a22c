#!/usr/bin/env bash
# Create (or reuse) the Python venv that holds the real Ironic conductor code
# used by tests/ironic/drive_agent.py, and print its path on stdout.
#
#   RIVET_IRONIC_VENV   venv path          (default /var/tmp/rivet-ironic-venv)
#   RIVET_IRONIC_SPEC   pip requirement    (default ironic==39.0.0, the newest
#                                           release that installs on Python 3.11)
#   RIVET_PYTHON        interpreter        (default python3)
#
# Option --with-ipa also creates ${RIVET_IPA_VENV:-/var/tmp/rivet-ipa-venv} with
# ironic-python-agent==13.0.0 (used by ipa_reference_agent.py, which serves the
# real IPA 13.0.0 REST API so drive_agent.py can be checked against it); its path
# is printed on a second line.
#
# All pip output goes to stderr so that callers can do
#   VENV=$(bash tests/ironic/setup.sh)
set -euo pipefail

IRONIC_VENV=${RIVET_IRONIC_VENV:-/var/tmp/rivet-ironic-venv}
IRONIC_SPEC=${RIVET_IRONIC_SPEC:-ironic==39.0.0}
IPA_VENV=${RIVET_IPA_VENV:-/var/tmp/rivet-ipa-venv}
IPA_SPEC=${RIVET_IPA_SPEC:-ironic-python-agent==13.0.0}
PY=${RIVET_PYTHON:-python3}

with_ipa=0
for arg in "$@"; do
    case "$arg" in
        --with-ipa) with_ipa=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

# make_venv DIR SPEC IMPORT_CHECK
make_venv() {
    local dir=$1 spec=$2 check=$3
    # Reuse the venv when it already has the package importable.
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "$check" >/dev/null 2>&1; then
        return 0
    fi
    # A venv without pip (half-created) is rebuilt from scratch.
    if [ -d "$dir" ] && [ ! -x "$dir/bin/pip" ]; then
        rm -rf "$dir"
    fi
    if [ ! -x "$dir/bin/python" ]; then
        "$PY" -m venv "$dir" >&2
    fi
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$spec" >&2
    "$dir/bin/python" -c "$check" >&2
}

make_venv "$IRONIC_VENV" "$IRONIC_SPEC" \
    'import warnings; warnings.simplefilter("ignore"); import ironic.conf; from ironic.drivers.modules import agent_client'
echo "$IRONIC_VENV"

if [ "$with_ipa" = 1 ]; then
    make_venv "$IPA_VENV" "$IPA_SPEC" \
        'from ironic_python_agent import config; config.populate_config(); from ironic_python_agent.api import app; from ironic_python_agent.extensions import deploy'
    echo "$IPA_VENV"
fi
