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
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$SCRIPT_DIR/lib.sh"
LOG_TAG=bench

IPA_CALL=${IPA_CALL:-prepare_image}   # or "stream" (see bench/ipa_stream.py)
export IPA_CALL
ALGOS=(sha256 sha512 md5)
TARGETS=(disk shm)

parse_args "$@"
check_common
[[ $IPA_CALL == prepare_image || $IPA_CALL == stream ]] || die "IPA_CALL must be prepare_image or stream"

# ------------------------------------------------------------------ tools
need_common_tools
need openssl openssl
install_tools

# ------------------------------------------------------------ workspace
make_workspace rivet-bench

IMAGE="$BENCH_DIR/image-${SIZE_MIB}M.raw"
SUMS="$IMAGE.sums.json"
need_disk=$(( TARGET_BYTES / 1024 ))
[[ -f $IMAGE ]] || need_disk=$(( need_disk + SIZE_BYTES / 1024 ))
(( $(free_kib "$BENCH_DIR") > need_disk + 65536 )) \
    || die "not enough space in $BENCH_DIR (need $((need_disk / 1024)) MiB)"
(( $(free_kib "$SHM_DIR") > TARGET_BYTES / 1024 + 65536 )) \
    || die "not enough space in $SHM_DIR (need $((TARGET_BYTES / 1048576)) MiB)"

# ---------------------------------------------------------- rivet, IPA
ensure_rivet
ensure_ipa_venv

# ---------------------------------------------------------------- image
if ! "$PYTHON" "$SCRIPT_DIR/benchlib.py" image-ok "$IMAGE" "$SIZE_MIB"; then
    log "generating $SIZE_MIB MiB GPT image $IMAGE"
    rm -f "$IMAGE" "$SUMS"
    "$PYTHON" "$SCRIPT_DIR/benchlib.py" genimage "$IMAGE" "$SIZE_MIB"
else
    log "reusing image $IMAGE"
fi
chmod 0644 "$IMAGE"
declare -A HASH
for a in "${ALGOS[@]}"; do HASH[$a]=$(sum_of "$a"); done
ZERO_FRACTION=$(sum_of zero_fraction)
# keep the image hot in the page cache for every measurement
cat "$IMAGE" >/dev/null

# ---------------------------------------------------------------- nginx
start_nginx "$(basename "$IMAGE")"
URL="$NGINX_URL/$(basename "$IMAGE")"
len=$(content_length "$URL")
[[ $len == "$SIZE_BYTES" ]] || die "nginx at $URL does not serve the image (Content-Length '$len')"
log "nginx $NGINX_PID serving $URL"

# -------------------------------------------------------------- targets
T_FILE[disk]="$BENCH_DIR/disk.img"
T_FILE[shm]="$SHM_DIR/rivet-bench-target.img"
setup_targets "${TARGETS[@]}"

# ------------------------------------------------------------ measuring
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
rivet_desc=skipped
if [[ $SKIP_RIVET != 1 ]]; then
    rivet_desc="$RIVET ($(git_desc))"
fi
ipa_desc=skipped
[[ $SKIP_IPA != 1 ]] && ipa_desc="ironic-python-agent $IPA_VERSION (PyPI, venv $VENV, python $(venv_python_version), StandbyExtension.$([[ $IPA_CALL == stream ]] && echo _stream_raw_image_onto_device || echo prepare_image))"

{
    echo "# rivet deploy benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(machine_desc)"
    echo "- image: $SIZE_MIB MiB ($SIZE_BYTES bytes) raw GPT disk image, random data with $(pct "$ZERO_FRACTION") % zero regions, served by nginx $(nginx_version) (sendfile on) at 127.0.0.1"
    echo "- targets: disk = ${T_DESC[disk]}; shm = ${T_DESC[shm]}; both $((TARGET_BYTES / 1048576)) MiB, discarded before every write"
    echo "- page cache: image kept hot (read once before measuring, caches never dropped)"
    echo "- runs: $RUNS, median shown; MB/s = $SIZE_BYTES / 1e6 / seconds; peak RSS = max over runs (/usr/bin/time %M)"
    echo "- rivet: $rivet_desc"
    echo "- IPA: $ipa_desc"
    echo "- $(openssl version), $(curl --version | head -n 1 | cut -d' ' -f1-2)"
    echo
    failed_warning
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
exit_if_failed
