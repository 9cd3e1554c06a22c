#!/usr/bin/env bash
# rivet deploy benchmark: rivet vs. ironic-python-agent 13.0.0 vs. the limits
# (HTTP download, hashing, raw device write), on one generated GPT image served
# by a private nginx on 127.0.0.1, written to two loop-device targets.
#
# Usage (as root):  bench/run.sh [--write-results] [--help]
# Environment:      see bench/README.md (SIZE_MIB, RUNS, BENCH_DIR, RIVET,
#                   SKIP_RIVET, SKIP_IPA, WRITE_RESULTS, IPA_CALL, ...)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
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
IPA_CALL=${IPA_CALL:-prepare_image}   # or "stream" (see bench/ipa_stream.py)
export IPA_CALL
LOOP_DIRECT_IO=${LOOP_DIRECT_IO:-1}   # disk target: loop device with direct I/O
PYTHON=${PYTHON:-python3}
ALGOS=(sha256 sha512 md5)
TARGETS=(disk shm)

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

for arg in "$@"; do
    case "$arg" in
        --write-results) WRITE_RESULTS=1 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $arg" >&2; usage 2 ;;
    esac
done

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (loop devices, nginx, block writes)"
[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 8 ]] || die "SIZE_MIB must be an integer >= 8"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 ]] || die "RUNS must be an integer >= 1"
[[ $IPA_CALL == prepare_image || $IPA_CALL == stream ]] || die "IPA_CALL must be prepare_image or stream"

SIZE_BYTES=$((SIZE_MIB * 1024 * 1024))
TARGET_BYTES=$((SIZE_BYTES / 4 * 5))   # 2 GiB image -> 2.5 GiB device

# The image is on loopback: never go through a proxy.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost

# ------------------------------------------------------------------ tools
need_pkgs=()
need() {  # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2")
}
need sgdisk gdisk
need nginx nginx-light
[[ -x /usr/bin/time ]] || need_pkgs+=(time)
need curl curl
need openssl openssl
need parted parted        # IPA runs parted/partprobe after streaming
need partprobe parted
need hexdump bsdextrautils  # IPA's get_disk_identifier
need losetup mount
need blkdiscard util-linux
need blockdev util-linux
need lsblk util-linux
need "$PYTHON" python3
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

# ------------------------------------------------------------ workspace
mkdir -p "$BENCH_DIR"
chmod 0755 "$BENCH_DIR"
TMP=$(mktemp -d /tmp/rivet-bench.XXXXXX)
NGINX_PID=
declare -A T_FILE T_DEV T_DESC

cleanup() {
    local rc=$?
    set +e
    if [[ -n $NGINX_PID ]]; then
        kill "$NGINX_PID" 2>/dev/null
        wait "$NGINX_PID" 2>/dev/null
    fi
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
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_kib() { df -Pk "$1" | awk 'NR==2 {print $4}'; }
IMAGE="$BENCH_DIR/image-${SIZE_MIB}M.raw"
SUMS="$IMAGE.sums.json"
need_disk=$(( TARGET_BYTES / 1024 ))
[[ -f $IMAGE ]] || need_disk=$(( need_disk + SIZE_BYTES / 1024 ))
(( $(free_kib "$BENCH_DIR") > need_disk + 65536 )) \
    || die "not enough space in $BENCH_DIR (need $((need_disk / 1024)) MiB)"
(( $(free_kib "$SHM_DIR") > TARGET_BYTES / 1024 + 65536 )) \
    || die "not enough space in $SHM_DIR (need $((TARGET_BYTES / 1048576)) MiB)"

# ---------------------------------------------------------------- rivet
if [[ $SKIP_RIVET != 1 ]]; then
    if [[ ! -x $RIVET ]]; then
        [[ $RIVET == "$RIVET_DEFAULT" ]] || die "RIVET=$RIVET is not an executable"
        command -v cargo >/dev/null || die "$RIVET missing and cargo not found"
        log "building rivet: cargo build --release"
        (cd "$REPO_DIR" && cargo build --release) || die "cargo build --release failed"
        [[ -x $RIVET ]] || die "cargo build did not produce $RIVET"
    fi
fi

# ------------------------------------------------------------------ IPA
VENV="$BENCH_DIR/ipa-venv"
if [[ $SKIP_IPA != 1 ]]; then
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
fi

# ---------------------------------------------------------------- image
if ! "$PYTHON" "$SCRIPT_DIR/benchlib.py" image-ok "$IMAGE" "$SIZE_MIB"; then
    log "generating $SIZE_MIB MiB GPT image $IMAGE"
    rm -f "$IMAGE" "$SUMS"
    "$PYTHON" "$SCRIPT_DIR/benchlib.py" genimage "$IMAGE" "$SIZE_MIB"
else
    log "reusing image $IMAGE"
fi
chmod 0644 "$IMAGE"
sum_of() { "$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$SUMS" "$1"; }
declare -A HASH
for a in "${ALGOS[@]}"; do HASH[$a]=$(sum_of "$a"); done
ZERO_FRACTION=$(sum_of zero_fraction)
# keep the image hot in the page cache for every measurement
cat "$IMAGE" >/dev/null

# ---------------------------------------------------------------- nginx
mkdir -p "$TMP/nginx"
PORT=$("$PYTHON" "$SCRIPT_DIR/benchlib.py" freeport)
cat >"$TMP/nginx/nginx.conf" <<EOF
# private nginx for bench/run.sh; workers run as root so that they can read
# the image wherever BENCH_DIR is
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
URL="http://127.0.0.1:$PORT/$(basename "$IMAGE")"
for _ in $(seq 50); do
    curl -sf -o /dev/null -I "$URL" && break
    kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited: $(cat "$TMP/nginx/error.log")"
    sleep 0.1
done
len=$(curl -sfI "$URL" | tr -d '\r' | awk 'tolower($1)=="content-length:" {print $2}')
[[ $len == "$SIZE_BYTES" ]] || die "nginx at $URL does not serve the image (Content-Length '$len')"
log "nginx $NGINX_PID serving $URL"

# -------------------------------------------------------------- targets
T_FILE[disk]="$BENCH_DIR/disk.img"
T_FILE[shm]="$SHM_DIR/rivet-bench-target.img"
for t in "${TARGETS[@]}"; do
    rm -f "${T_FILE[$t]}"
    truncate -s "$TARGET_BYTES" "${T_FILE[$t]}"
done
dio_args=()
[[ $LOOP_DIRECT_IO == 1 ]] && dio_args=(--direct-io=on)
T_DEV[disk]=$(losetup -f --show "${dio_args[@]}" "${T_FILE[disk]}" 2>/dev/null || true)
if [[ -z ${T_DEV[disk]} && ${#dio_args[@]} -gt 0 ]]; then
    log "losetup --direct-io=on failed on $BENCH_DIR; using a buffered loop device"
    T_DEV[disk]=$(losetup -f --show "${T_FILE[disk]}")
fi
[[ -n ${T_DEV[disk]} ]] || die "losetup failed for ${T_FILE[disk]}"
T_DEV[shm]=$(losetup -f --show "${T_FILE[shm]}") || die "losetup failed for ${T_FILE[shm]}"
disk_dio=$(losetup -n -O DIO "${T_DEV[disk]}" | tr -d ' ')
T_DESC[disk]="loop over file on $(findmnt -n -o FSTYPE -T "$BENCH_DIR") ($BENCH_DIR), direct-io=$([[ $disk_dio == 1 ]] && echo on || echo off)"
T_DESC[shm]="loop over file on tmpfs ($SHM_DIR, RAM)"
for t in "${TARGETS[@]}"; do log "target $t: ${T_DEV[$t]} = ${T_DESC[$t]}"; done

# Before every write: discard the device (so a write that does nothing cannot
# pass the check with the previous run's data; also drops the loop device's
# page cache), then re-allocate the backing file.  Not timed.
wipe_target() {
    local t=$1
    if ! blkdiscard -f "${T_DEV[$t]}" 2>/dev/null && ! blkdiscard "${T_DEV[$t]}" 2>/dev/null; then
        dd if=/dev/zero of="${T_DEV[$t]}" bs=4M count=$(( (SIZE_BYTES + 4194303) / 4194304 )) \
            oflag=direct status=none
    fi
    fallocate -l "$TARGET_BYTES" "${T_FILE[$t]}" 2>/dev/null || true
    sync
}

# ------------------------------------------------------------ measuring
RESULTS="$TMP/results.tsv"
: >"$RESULTS"
FAILED=0

# measure RUN TARGET KIND ALGO -- COMMAND...  (wall time and peak RSS)
measure() {
    local run=$1 target=$2 kind=$3 algo=$4
    shift 5
    M_LOG="$TMP/log.$run.$target.$kind.$algo"
    local t0 t1
    M_RC=0
    t0=$(date +%s%N)
    /usr/bin/time -f '%e %M' -o "$TMP/time" "$@" >"$M_LOG.out" 2>"$M_LOG.err" || M_RC=$?
    t1=$(date +%s%N)
    # /usr/bin/time's %e has 10 ms resolution; the same wall time is also
    # taken in ns around it, and that one is used.
    M_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", (b - a) / 1e9 }')
    M_RSS=$(tail -n 1 "$TMP/time" | awk '{print $2}')
    [[ $M_RSS =~ ^[0-9]+$ ]] || M_RSS=-
}

record() {  # record RUN TARGET KIND ALGO SECS RSS STATUS
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"
    local mbps=-
    [[ $5 != - ]] && mbps=$(awk -v s="$5" -v b="$SIZE_BYTES" 'BEGIN { printf "%.0f", b / 1e6 / s }')
    log "$(printf 'run %s/%s %-5s %-9s %-7s %8s s %6s MB/s %8s KiB  %s' \
        "$1" "$RUNS" "$2" "$3" "$4" "$5" "$mbps" "$6" "$7")"
}

fail_log() {
    log "---- $1 failed (exit $M_RC); last lines of its output:"
    tail -n 15 "$M_LOG.out" "$M_LOG.err" >&2 || true
    FAILED=1
}

verify_target() {  # prints the check word; non-zero on mismatch
    "$PYTHON" "$SCRIPT_DIR/benchlib.py" verify "$IMAGE" "$SUMS" "${T_FILE[$1]}" "${T_DEV[$1]}"
}

write_and_check() {  # write_and_check RUN TARGET KIND ALGO -- COMMAND...
    local run=$1 t=$2 kind=$3 algo=$4
    wipe_target "$t"
    measure "$@"
    local secs=$M_SECS status
    if [[ $kind == ipa && $M_RC == 0 ]]; then
        # IPA's own in-process time of the command (see bench/ipa_stream.py)
        secs=$(tail -n 1 "$M_LOG.out" | "$PYTHON" -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["seconds"])') \
            || { M_RC=99; secs=$M_SECS; }
    fi
    if [[ $M_RC != 0 ]]; then
        status="FAIL(exit $M_RC)"
        fail_log "$kind $algo on $t"
    elif status=$(verify_target "$t"); then
        :
    else
        log "!!!!!!!! $kind $algo on $t: exit 0 but the target does NOT hold the image: $status !!!!!!!!"
        FAILED=1
    fi
    record "$run" "$t" "$kind" "$algo" "$secs" "$M_RSS" "$status"
    if [[ $kind == ipa && $M_RC == 0 ]]; then
        # IPA logs the time of its streaming phase (connect, download, hash,
        # write, close, checksum check) before the GPT fix-up and the
        # partition checks; keep it as an informative extra row.
        local st
        st=$(sed -n 's/.*Image streamed onto device .* in \([0-9.]*\) seconds.*/\1/p' "$M_LOG.err" "$M_LOG.out" | tail -n 1)
        if [[ -n $st ]]; then
            record "$run" "$t" ipastream "$algo" "$(printf '%.4f' "$st")" - "$status"
        fi
    fi
}

log "image: $SIZE_MIB MiB, ${ZERO_FRACTION} zero; $RUNS run(s); page cache kept hot"
for run in $(seq "$RUNS"); do
    measure "$run" - curl - -- curl -s -f -o /dev/null -w '%{size_download}' "$URL"
    st=ok
    if [[ $M_RC != 0 ]]; then st="FAIL(exit $M_RC)"; fail_log curl
    elif [[ $(cat "$M_LOG.out") != "$SIZE_BYTES" ]]; then st="FAIL(short)"; FAILED=1; fi
    record "$run" - curl - "$M_SECS" "$M_RSS" "$st"

    for a in "${ALGOS[@]}"; do
        measure "$run" - dgst "$a" -- openssl dgst "-$a" "$IMAGE"
        st=ok
        if [[ $M_RC != 0 ]]; then st="FAIL(exit $M_RC)"; fail_log "openssl dgst -$a"
        elif ! grep -qi "= ${HASH[$a]}\$" "$M_LOG.out"; then st="FAIL(wrong hash)"; FAILED=1; fi
        record "$run" - dgst "$a" "$M_SECS" "$M_RSS" "$st"
    done

    for t in "${TARGETS[@]}"; do
        dev=${T_DEV[$t]}
        write_and_check "$run" "$t" dd - -- dd if="$IMAGE" of="$dev" bs=4M oflag=direct
        for a in "${ALGOS[@]}"; do
            if [[ $SKIP_RIVET != 1 ]]; then
                write_and_check "$run" "$t" rivet "$a" -- "$RIVET" deploy --url "$URL" \
                    --device "$dev" --os-hash-algo "$a" --os-hash-value "${HASH[$a]}"
            fi
            if [[ $SKIP_IPA != 1 ]]; then
                write_and_check "$run" "$t" ipa "$a" -- "$VENV/bin/python" "$SCRIPT_DIR/ipa_stream.py" \
                    --call "$IPA_CALL" --url "$URL" --device "$dev" \
                    --os-hash-algo "$a" --os-hash-value "${HASH[$a]}"
            fi
        done
    done
done

# --------------------------------------------------------------- report
sha_ni=no
grep -qw sha_ni /proc/cpuinfo && sha_ni=yes
model=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
rivet_desc=skipped
if [[ $SKIP_RIVET != 1 ]]; then
    rivet_desc="$RIVET ($(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo 'no git commit'))"
fi
ipa_desc=skipped
[[ $SKIP_IPA != 1 ]] && ipa_desc="ironic-python-agent $IPA_VERSION (PyPI, venv $VENV, python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'), StandbyExtension.$([[ $IPA_CALL == stream ]] && echo _stream_raw_image_onto_device || echo prepare_image))"

REPORT="$TMP/report.md"
{
    echo "# rivet deploy benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs, $model, SHA-NI: $sha_ni, RAM $mem, kernel $(uname -r)"
    echo "- image: $SIZE_MIB MiB ($SIZE_BYTES bytes) raw GPT disk image, random data with $(awk -v z="$ZERO_FRACTION" 'BEGIN{printf "%.0f", z*100}') % zero regions, served by nginx $("$NGINX" -v 2>&1 | sed 's|.*/||') (sendfile on) at 127.0.0.1"
    echo "- targets: disk = ${T_DESC[disk]}; shm = ${T_DESC[shm]}; both $((TARGET_BYTES / 1048576)) MiB, discarded before every write"
    echo "- page cache: image kept hot (read once before measuring, caches never dropped)"
    echo "- runs: $RUNS, median shown; MB/s = $SIZE_BYTES / 1e6 / seconds; peak RSS = max over runs (/usr/bin/time %M)"
    echo "- rivet: $rivet_desc"
    echo "- IPA: $ipa_desc"
    echo "- $(openssl version), $(curl --version | head -n 1 | cut -d' ' -f1-2)"
    echo
    if [[ $FAILED != 0 ]]; then
        echo "**WARNING: some commands failed or did not leave the image on the target;"
        echo "see the \"written\" column (their speeds are left out).**"
        echo
    fi
    "$PYTHON" "$SCRIPT_DIR/benchlib.py" table "$RESULTS" "$SIZE_BYTES" "${TARGETS[@]}"
    echo
    echo "Notes: times are wall-clock of the whole command, except IPA, whose time is"
    echo "its $IPA_CALL command measured inside the process (python start-up and"
    echo "import, paid once at agent boot, excluded; its RSS includes them). IPA's"
    echo "prepare_image also runs parted, partprobe, lsblk, hexdump and \`sgdisk -e\`"
    echo "(moves the backup GPT to the end of the device), and sgdisk alone takes"
    echo "~1 s: it calls sync() and sleeps 1 s before asking the kernel to re-read"
    echo "the table; the \"of which\" rows are IPA's own log of its streaming phase."
    echo "\"rivet / IPA\" is rivet's speed over IPA's (same algorithm, same target);"
    echo "\"÷ slowest limit\" is the speed over that of the slowest of curl, openssl"
    echo "dgst (same algorithm) and dd (same target). \"written\": exact = the target's"
    echo "first $SIZE_MIB MiB are byte-identical to the image; ok(gpt-moved) = payload"
    echo "identical and the GPT identical except that its backup was moved to the end"
    echo "of the device (what IPA does with sgdisk -e); UNFLUSHED = the data reached"
    echo "the backing file only after a flush, i.e. not before the command exited."
} >"$REPORT"

echo
cat "$REPORT"
if [[ $WRITE_RESULTS == 1 ]]; then
    # keeps the "## Image formats" section that bench/formats.sh writes
    "$PYTHON" "$SCRIPT_DIR/benchlib.py" put-head "$SCRIPT_DIR/RESULTS.md" "## Image formats" "$REPORT"
    log "wrote $SCRIPT_DIR/RESULTS.md"
fi
if [[ $FAILED != 0 ]]; then
    log "SOME MEASUREMENTS FAILED OR DID NOT WRITE THE IMAGE (see the 'written' column)"
    exit 1
fi
