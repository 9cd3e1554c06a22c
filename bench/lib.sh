# shellcheck shell=bash
# Shared parts of bench/run.sh and bench/formats.sh; not run on its own.
#
# A script sets SCRIPT_DIR (this directory) and `set -euo pipefail`, sources
# this file, sets LOG_TAG (the "[tag]" of its log lines) and its own
# variables, then calls the functions below in the order of its steps.  The
# script provides IMAGE (the raw image a target is checked against) and SUMS
# (its .sums.json), T_FILE[disk] and T_FILE[shm] (the targets' backing
# files), and may define two hooks: cleanup_hook (first thing on exit) and
# wipe_hook (in wipe_target, just before its final sync).

# ----------------------------------------------------- shared variables
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)

SIZE_MIB=${SIZE_MIB:-2048}
RUNS=${RUNS:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/rivet-bench}
SHM_DIR=${SHM_DIR:-/dev/shm}
RIVET_DEFAULT="$REPO_DIR/target/release/rivet"
RIVET=${RIVET:-$RIVET_DEFAULT}
SKIP_RIVET=${SKIP_RIVET:-0}
SKIP_IPA=${SKIP_IPA:-0}
WRITE_RESULTS=${WRITE_RESULTS:-0}
IPA_VERSION=13.0.0
LOOP_DIRECT_IO=${LOOP_DIRECT_IO:-1}   # disk target: loop device with direct I/O
PYTHON=${PYTHON:-python3}
VENV="$BENCH_DIR/ipa-venv"
LOG_TAG=bench
NGINX_PID=
need_pkgs=()
declare -A T_FILE=() T_DEV=() T_DESC=()

# ------------------------------------------------ arguments and checks
# The script's header comment (line 2 up to the first line that is not a
# comment), without the "# ".
usage() {
    awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"
    exit "${1:-0}"
}

parse_args() {
    local arg
    for arg in "$@"; do
        case "$arg" in
            --write-results) WRITE_RESULTS=1 ;;
            -h|--help) usage 0 ;;
            *) echo "unknown argument: $arg" >&2; usage 2 ;;
        esac
    done
}

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }

# The checks every script makes, then SIZE_BYTES, TARGET_BYTES and a
# proxy-free environment.
check_common() {
    [[ $EUID -eq 0 ]] || die "must run as root (loop devices, nginx, block writes)"
    [[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 8 ]] || die "SIZE_MIB must be an integer >= 8"
    [[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 ]] || die "RUNS must be an integer >= 1"

    SIZE_BYTES=$((SIZE_MIB * 1024 * 1024))
    TARGET_BYTES=$((SIZE_BYTES * 5 / 4))   # 2 GiB image -> 2.5 GiB device

    # The images are on loopback: never go through a proxy.
    unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
    export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost
}

# ------------------------------------------------------------------ tools
need() {  # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2")
}

# What both scripts use; each adds its own with `need` before install_tools.
need_common_tools() {
    need sgdisk gdisk
    need nginx nginx-light
    [[ -x /usr/bin/time ]] || need_pkgs+=(time)
    need curl curl
    need parted parted        # IPA runs parted/partprobe after writing
    need partprobe parted
    need hexdump bsdextrautils  # IPA's get_disk_identifier
    need losetup mount
    need blkdiscard util-linux
    need blockdev util-linux
    need lsblk util-linux
    need "$PYTHON" python3
}

# apt-get installs whatever `need` found missing; sets NGINX.
install_tools() {
    if [[ $SKIP_IPA != 1 ]] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        need_pkgs+=(python3-venv)
    fi
    if ((${#need_pkgs[@]})); then
        mapfile -t need_pkgs < <(printf '%s\n' "${need_pkgs[@]}" | sort -u)
        log "installing missing packages: ${need_pkgs[*]}"
        command -v apt-get >/dev/null || die "apt-get not found; install ${need_pkgs[*]} by hand"
        apt-get update -qq || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null \
            || die "apt-get install ${need_pkgs[*]} failed"
    fi
    NGINX=$(command -v nginx)
}

# ------------------------------------------------------------ workspace
# make_workspace PREFIX: BENCH_DIR, the private temp dir TMP
# (/tmp/PREFIX.XXXXXX), RESULTS, REPORT and FAILED, and the exit trap.
make_workspace() {
    mkdir -p "$BENCH_DIR"
    chmod 0755 "$BENCH_DIR"
    TMP=$(mktemp -d "/tmp/$1.XXXXXX")
    RESULTS="$TMP/results.tsv"
    : >"$RESULTS"
    # shellcheck disable=SC2034  # written by the script
    REPORT="$TMP/report.md"
    FAILED=0
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

stop_pid() {  # kill and reap a background job, if there is one
    if [[ -n $1 ]]; then
        kill "$1" 2>/dev/null
        wait "$1" 2>/dev/null
    fi
}

cleanup() {
    local rc=$?
    set +e
    if declare -F cleanup_hook >/dev/null; then cleanup_hook; fi
    stop_pid "$NGINX_PID"
    local t
    for t in "${!T_DEV[@]}"; do
        [[ -n ${T_DEV[$t]} ]] && losetup -d "${T_DEV[$t]}" 2>/dev/null
    done
    for t in "${!T_FILE[@]}"; do
        rm -f "${T_FILE[$t]}"
    done
    rm -rf "$TMP"
    exit "$rc"
}

free_kib() { df -Pk "$1" | awk 'NR==2 {print $4}'; }
pct() { awk -v z="$1" 'BEGIN { printf "%.0f", z * 100 }'; }

# ------------------------------------------------------- rivet and IPA
# Builds rivet (cargo build --release) only if the default binary is missing.
ensure_rivet() {
    [[ $SKIP_RIVET != 1 ]] || return 0
    if [[ ! -x $RIVET ]]; then
        [[ $RIVET == "$RIVET_DEFAULT" ]] || die "RIVET=$RIVET is not an executable"
        command -v cargo >/dev/null || die "$RIVET missing and cargo not found"
        log "building rivet: cargo build --release"
        (cd "$REPO_DIR" && cargo build --release) || die "cargo build --release failed"
        [[ -x $RIVET ]] || die "cargo build did not produce $RIVET"
    fi
}

# ironic-python-agent IPA_VERSION from PyPI in VENV (made once, then reused).
ensure_ipa_venv() {
    [[ $SKIP_IPA != 1 ]] || return 0
    local have
    have=$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("ironic-python-agent"))' 2>/dev/null || true)
    if [[ $have != "$IPA_VERSION" ]]; then
        log "installing ironic-python-agent==$IPA_VERSION into $VENV (one-time)"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV" || die "python3 -m venv $VENV failed"
        "$VENV/bin/pip" install -q --disable-pip-version-check \
            "ironic-python-agent==$IPA_VERSION" || die "pip install ironic-python-agent==$IPA_VERSION failed"
    fi
    "$VENV/bin/python" -c 'from ironic_python_agent import config; from ironic_python_agent.extensions import standby' \
        || die "ironic-python-agent does not import in $VENV"
}

# sum_of KEY: a value from the image's .sums.json (a hex digest, zero_fraction, ...)
sum_of() { "$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$SUMS" "$1"; }

# ---------------------------------------------------------------- nginx
# start_nginx FILE: a private nginx serving BENCH_DIR on a free port of
# 127.0.0.1 (sets PORT, NGINX_URL, NGINX_PID); waits until it serves FILE.
start_nginx() {
    local probe=$1
    mkdir -p "$TMP/nginx"
    PORT=$("$PYTHON" "$SCRIPT_DIR/benchlib.py" freeport)
    NGINX_URL="http://127.0.0.1:$PORT"
    cat >"$TMP/nginx/nginx.conf" <<EOF
# private nginx for bench/$(basename "$0"); workers run as root so that they can
# read the images wherever BENCH_DIR is
user root;
worker_processes auto;
error_log $TMP/nginx/error.log warn;
pid $TMP/nginx/nginx.pid;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    types { }
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server {
        listen 127.0.0.1:$PORT;
        root $BENCH_DIR;
        location / { }
    }
}
EOF
    "$NGINX" -t -q -e "$TMP/nginx/error.log" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" \
        || die "nginx config test failed: $(cat "$TMP/nginx/error.log")"
    "$NGINX" -e "$TMP/nginx/error.log" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' &
    NGINX_PID=$!
    local _
    for _ in $(seq 50); do
        curl -sf -o /dev/null -I "$NGINX_URL/$probe" && break
        kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited: $(cat "$TMP/nginx/error.log")"
        sleep 0.1
    done
}

content_length() {  # content_length URL: the Content-Length nginx sends
    curl -sfI "$1" | tr -d '\r' | awk 'tolower($1)=="content-length:" {print $2}'
}

# -------------------------------------------------------------- targets
# setup_targets TARGET...: a loop device over a fresh TARGET_BYTES file
# T_FILE[TARGET] for each (disk: direct I/O unless LOOP_DIRECT_IO=0 or
# unsupported); sets T_DEV and T_DESC.
setup_targets() {
    local t disk_dio dio_args=()
    [[ $LOOP_DIRECT_IO == 1 ]] && dio_args=(--direct-io=on)
    for t in "$@"; do
        rm -f "${T_FILE[$t]}"
        truncate -s "$TARGET_BYTES" "${T_FILE[$t]}"
        if [[ $t == disk ]]; then
            T_DEV[disk]=$(losetup -f --show "${dio_args[@]}" "${T_FILE[disk]}" 2>/dev/null || true)
            if [[ -z ${T_DEV[disk]} && ${#dio_args[@]} -gt 0 ]]; then
                log "losetup --direct-io=on failed on $BENCH_DIR; using a buffered loop device"
                T_DEV[disk]=$(losetup -f --show "${T_FILE[disk]}")
            fi
            [[ -n ${T_DEV[disk]} ]] || die "losetup failed for ${T_FILE[disk]}"
            disk_dio=$(losetup -n -O DIO "${T_DEV[disk]}" | tr -d ' ')
            T_DESC[disk]="loop over file on $(findmnt -n -o FSTYPE -T "$BENCH_DIR") ($BENCH_DIR), direct-io=$([[ $disk_dio == 1 ]] && echo on || echo off)"
        else
            T_DEV[shm]=$(losetup -f --show "${T_FILE[shm]}") || die "losetup failed for ${T_FILE[shm]}"
            T_DESC[shm]="loop over file on tmpfs ($SHM_DIR, RAM)"
        fi
        log "target $t: ${T_DEV[$t]} = ${T_DESC[$t]}"
    done
}

# Before every write: discard the device (so a write that does nothing cannot
# pass the check with the previous run's data; also drops the loop device's
# page cache), then re-allocate the backing file, then the script's
# wipe_hook if it has one.  Not timed.
wipe_target() {
    local t=$1
    if ! blkdiscard -f "${T_DEV[$t]}" 2>/dev/null && ! blkdiscard "${T_DEV[$t]}" 2>/dev/null; then
        dd if=/dev/zero of="${T_DEV[$t]}" bs=4M count=$(( (SIZE_BYTES + 4194303) / 4194304 )) \
            oflag=direct status=none
    fi
    fallocate -l "$TARGET_BYTES" "${T_FILE[$t]}" 2>/dev/null || true
    if declare -F wipe_hook >/dev/null; then wipe_hook; fi
    sync
}

# ------------------------------------------------------------ measuring
fail_log() {
    log "---- $1 failed (exit $M_RC); last lines of its output:"
    tail -n 15 "$M_LOG.out" "$M_LOG.err" >&2 || true
    FAILED=1
}

verify_target() {  # prints the check word; non-zero on mismatch
    "$PYTHON" "$SCRIPT_DIR/benchlib.py" verify "$IMAGE" "$SUMS" "${T_FILE[$1]}" "${T_DEV[$1]}"
}

# --------------------------------------------------------------- report
machine_desc() {
    local sha_ni=no model mem
    grep -qw sha_ni /proc/cpuinfo && sha_ni=yes
    model=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
    mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
    echo "$(nproc) CPUs, $model, SHA-NI: $sha_ni, RAM $mem, kernel $(uname -r)"
}

git_desc() { git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo 'no git commit'; }
venv_python_version() { "$VENV/bin/python" -c 'import platform; print(platform.python_version())'; }
nginx_version() { "$NGINX" -v 2>&1 | sed 's|.*/||'; }

failed_warning() {  # the report's warning, when something failed
    if [[ $FAILED != 0 ]]; then
        echo "**WARNING: some commands failed or did not leave the image on the target;"
        echo "see the \"written\" column (their speeds are left out).**"
        echo
    fi
}

exit_if_failed() {
    if [[ $FAILED != 0 ]]; then
        log "SOME MEASUREMENTS FAILED OR DID NOT WRITE THE IMAGE (see the 'written' column)"
        exit 1
    fi
}
