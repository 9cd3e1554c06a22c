#!/usr/bin/env bash
# rivet image-format benchmark: one generated GPT disk image, as raw, as qcow2
# and as compressed qcow2 (qemu-img convert -O qcow2 [-c]), served by a private
# nginx on 127.0.0.1 and written to one loop-device target by rivet (streaming,
# and --temp-file) and by ironic-python-agent 13.0.0 (prepare_image).
#
# Usage (as root):  bench/formats.sh [--write-results] [--help]
# Environment:      see bench/README.md (SIZE_MIB, RUNS, TARGETS, BENCH_DIR,
#                   RIVET, SKIP_RIVET, SKIP_RIVET_TEMPFILE, SKIP_IPA, ...)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$SCRIPT_DIR/lib.sh"
LOG_TAG=formats

SKIP_RIVET_TEMPFILE=${SKIP_RIVET_TEMPFILE:-0}
SKIP_IPA_RAW=${SKIP_IPA_RAW:-0}
COMPRESSIBLE=${COMPRESSIBLE:-0.25}    # share of the payload that is text
DU_INTERVAL=${DU_INTERVAL:-0.2}       # tmp-dir sampling period, seconds
read -r -a TARGETS <<<"${TARGETS:-disk}"
# The compressed rows (raw.gz, raw.xz, raw.zst, raw.zst by pzstd, qcow2.zst)
# run with the others; FORMATS="raw rawgz rawxz rawzst rawpzst qcow2zst"
# HEADING="## Compressed images" runs only them (with raw for the "time ÷ rivet
# raw" column) into their own section.
read -r -a FORMATS <<<"${FORMATS:-raw qcow2 qcow2c rawgz rawxz rawzst rawpzst qcow2zst}"
HEADING=${HEADING:-"## Image formats"}
XZ_OPTS=${XZ_OPTS:-"-T0 -3"}   # several blocks (3 x the 4 MiB dictionary each)
NPROC=$(nproc)                 # pzstd's threads; the CPU floor's divisor

parse_args "$@"
check_common
[[ $DU_INTERVAL =~ ^[0-9]*\.?[0-9]+$ ]] || die "DU_INTERVAL must be a number of seconds"
((${#TARGETS[@]})) || die "TARGETS is empty (use disk, shm or \"disk shm\")"
for t in "${TARGETS[@]}"; do
    [[ $t == disk || $t == shm ]] || die "unknown target '$t' in TARGETS (disk, shm)"
done
[[ $SKIP_RIVET == 1 && $SKIP_IPA == 1 ]] && die "SKIP_RIVET=1 and SKIP_IPA=1: nothing to measure"

# ------------------------------------------------------------------ tools
need_common_tools
need qemu-img qemu-utils  # makes the qcow2 images; IPA and rivet --temp-file run it
need wipefs util-linux    # IPA's destroy_disk_metadata (qcow2 path)
need fuser psmisc         # ... which first waits until no process holds the disk
need sha256sum coreutils
need xz xz-utils
need zstd zstd
need pzstd zstd
need curl curl
need openssl openssl
install_tools

# ------------------------------------------------------------ workspace
TMPD="$BENCH_DIR/tmp"   # temp dir of rivet --temp-file and of IPA (TMPDIR)
SAMPLER_PID=
# Empty the shared temp dir (IPA never deletes its downloaded image).
clean_tmpdir() {
    [[ -n $TMPD && -d $TMPD ]] && find "$TMPD" -mindepth 1 -delete 2>/dev/null
    return 0
}
cleanup_hook() {  # run first by lib.sh's cleanup
    stop_pid "$SAMPLER_PID"
    clean_tmpdir
}
wipe_hook() { clean_tmpdir; }  # run by wipe_target
make_workspace rivet-formats
mkdir -p "$TMPD"

mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }

IMAGE="$BENCH_DIR/fmt-${SIZE_MIB}M.raw"
SUMS="$IMAGE.sums.json"
declare -A IMG=([raw]="$IMAGE" [qcow2]="$BENCH_DIR/fmt-${SIZE_MIB}M.qcow2"
                [qcow2c]="$BENCH_DIR/fmt-${SIZE_MIB}M.c.qcow2"
                [rawgz]="$IMAGE.gz" [rawxz]="$IMAGE.xz" [rawzst]="$IMAGE.zst"
                [rawpzst]="$IMAGE.pzstd.zst"
                [qcow2zst]="$BENCH_DIR/fmt-${SIZE_MIB}M.qcow2.zst")
declare -A FMT_DESC=([raw]=raw [qcow2]="qcow2 (qemu-img convert -O qcow2)"
                     [qcow2c]="compressed qcow2 (qemu-img convert -O qcow2 -c)"
                     [rawgz]="raw.gz (gzip -6)" [rawxz]="raw.xz (xz $XZ_OPTS)"
                     [rawzst]="raw.zst (zstd -T0 -3)"
                     [rawpzst]="raw.zst by pzstd (pzstd -p $NPROC -3: several frames, each after a skippable frame)"
                     [qcow2zst]="qcow2.zst (the qcow2, zstd -T0 -3)")
# What each compressed format is decompressed with alone (and, reading stdin,
# in the chained pipeline), and what Ironic declares.
declare -A DECOMP=([rawgz]="gzip -dc" [rawxz]="xz -dc -T0" [rawzst]="zstd -dc"
                   [rawpzst]="pzstd -dc -p $NPROC" [qcow2zst]="zstd -dc")
declare -A DISK_FORMAT=([raw]=raw [qcow2]=qcow2 [qcow2c]=qcow2 [rawgz]=raw [rawxz]=raw
                        [rawzst]=raw [rawpzst]=raw [qcow2zst]=qcow2)
is_compressed() { [[ -n ${DECOMP[$1]:-} ]]; }
# space: each missing image (a qcow2 is at most about the raw size), the
# temp copy (at most one qcow2), and the disk target
need_disk=$(( SIZE_BYTES / 1024 ))
for f in "${FORMATS[@]}"; do
    [[ -f ${IMG[$f]} ]] || need_disk=$(( need_disk + SIZE_BYTES / 1024 ))
done
[[ " ${TARGETS[*]} " == *" disk "* ]] && need_disk=$(( need_disk + TARGET_BYTES / 1024 ))
(( $(free_kib "$BENCH_DIR") > need_disk + 65536 )) \
    || die "not enough space in $BENCH_DIR (need $((need_disk / 1024)) MiB)"
if [[ " ${TARGETS[*]} " == *" shm "* ]]; then
    (( $(free_kib "$SHM_DIR") > TARGET_BYTES / 1024 + 65536 )) \
        || die "not enough space in $SHM_DIR (need $((TARGET_BYTES / 1048576)) MiB)"
fi

# ---------------------------------------------------------- rivet, IPA
ensure_rivet
ensure_ipa_venv

# --------------------------------------------------------------- images
# The raw image: bench/run.sh's generator (GPT, ~30 % zero regions), with
# COMPRESSIBLE of the payload as text instead of random data, so that
# qcow2 -c has something to compress.  Kept and reused, like the qcow2 files.
if ! "$PYTHON" "$SCRIPT_DIR/benchlib.py" image-ok "$IMAGE" "$SIZE_MIB" "$COMPRESSIBLE"; then
    log "generating $SIZE_MIB MiB GPT image $IMAGE"
    rm -f "$IMAGE" "$SUMS" "${IMG[qcow2]}" "${IMG[qcow2c]}"
    "$PYTHON" "$SCRIPT_DIR/benchlib.py" genimage "$IMAGE" "$SIZE_MIB" "$COMPRESSIBLE"
else
    log "reusing image $IMAGE"
fi
make_qcow2() {  # make_qcow2 FORMAT [qemu-img convert options]
    local f=$1 out=${IMG[$1]}
    shift
    if [[ -f $out && $out -nt $IMAGE && -f $out.sha256 && ! $out -nt $out.sha256 ]]; then
        log "reusing $out"
        return
    fi
    log "making $out: qemu-img convert -f raw -O qcow2 $*"
    rm -f "$out" "$out.sha256"
    qemu-img convert -f raw -O qcow2 "$@" "$IMAGE" "$out.tmp" || die "qemu-img convert failed"
    local vs
    vs=$(qemu-img info -f qcow2 --output=json "$out.tmp" \
        | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    [[ $vs == "$SIZE_BYTES" ]] || die "$out.tmp: virtual size $vs, expected $SIZE_BYTES"
    mv "$out.tmp" "$out"
    sha256sum "$out" | cut -d' ' -f1 >"$out.sha256"
}
make_compressed() {  # make_compressed FORMAT SOURCE COMMAND...: SOURCE | COMMAND > IMG
    local f=$1 src=$2 out=${IMG[$1]}
    shift 2
    if [[ -f $out && $out -nt $src && -f $out.sha256 && ! $out -nt $out.sha256 ]]; then
        log "reusing $out"
        return
    fi
    log "making $out: $* < $src"
    "$@" <"$src" >"$out.tmp" || die "$* failed"
    mv "$out.tmp" "$out"
    sha256sum "$out" | cut -d' ' -f1 >"$out.sha256"
}
has_fmt() { [[ " ${FORMATS[*]} " == *" $1 "* ]]; }
{ has_fmt qcow2 || has_fmt qcow2zst; } && make_qcow2 qcow2
has_fmt qcow2c && make_qcow2 qcow2c -c
has_fmt rawgz && make_compressed rawgz "$IMAGE" gzip -6 -c
# shellcheck disable=SC2086
has_fmt rawxz && make_compressed rawxz "$IMAGE" xz -c $XZ_OPTS
has_fmt rawzst && make_compressed rawzst "$IMAGE" zstd -q -c -T0 -3
if has_fmt rawpzst; then
    make_compressed rawpzst "$IMAGE" pzstd -q -c -p "$NPROC" -3
    frames=$(zstd -lv "${IMG[rawpzst]}" 2>/dev/null | sed -n 's/^# Zstandard Frames: //p')
    FMT_DESC[rawpzst]="raw.zst by pzstd (pzstd -p $NPROC -3: ${frames:-several} frames, each after a skippable frame)"
fi
has_fmt qcow2zst && make_compressed qcow2zst "${IMG[qcow2]}" zstd -q -c -T0 -3
sha256_of_raw=$(sum_of sha256)
declare -A HASH DL URL
for f in "${FORMATS[@]}"; do
    chmod 0644 "${IMG[$f]}"
    if [[ $f == raw ]]; then HASH[$f]=$sha256_of_raw; else HASH[$f]=$(cat "${IMG[$f]}.sha256"); fi
    DL[$f]=$(stat -c %s "${IMG[$f]}")
done
ZERO_FRACTION=$(sum_of zero_fraction)
TEXT_FRACTION=$(sum_of compressible_fraction)
# keep the images hot in the page cache for every measurement
for f in "${FORMATS[@]}"; do cat "${IMG[$f]}"; done >/dev/null

# ---------------------------------------------------------------- nginx
start_nginx "$(basename "${IMG[raw]}")"
for f in "${FORMATS[@]}"; do URL[$f]="$NGINX_URL/$(basename "${IMG[$f]}")"; done
for f in "${FORMATS[@]}"; do
    len=$(content_length "${URL[$f]}")
    [[ $len == "${DL[$f]}" ]] || die "nginx at ${URL[$f]} does not serve ${IMG[$f]} (Content-Length '$len')"
done
log "nginx $NGINX_PID serving $NGINX_URL/"

# -------------------------------------------------------------- targets
T_FILE[disk]="$BENCH_DIR/fmt-disk.img"
T_FILE[shm]="$SHM_DIR/rivet-bench-fmt-target.img"
setup_targets "${TARGETS[@]}"

# Two tools of IPA's qcow2 path behave differently on this kind of machine
# than in an IPA ramdisk; IPA then gets wrappers first in its PATH ($TMP/shim):
# - fuser: destroy_disk_metadata first waits until `fuser DEVICE` prints
#   nothing at all.  Where some process's /proc/PID/fd cannot be read (a
#   sandbox's PID 1), psmisc fuser prints "Cannot stat file /proc/PID/fd/N:
#   Permission denied" for each of its fds, which IPA takes for a busy disk:
#   it retries for 20 s and fails.  The wrapper runs the real fuser and drops
#   only those lines; real users of the device are still reported.
# - udevadm: IPA runs `udevadm settle` around the write and fails with
#   FileNotFoundError when udevadm is missing.  With no udev daemon running
#   (no /run/udev/control) there is nothing to settle, so the stand-in just
#   exits 0.  It is only used when udevadm is missing.
SHIMS=()
IPA_ENV=()
fuser_err=
[[ $SKIP_IPA != 1 ]] && fuser_err=$(fuser "${T_DEV[${TARGETS[0]}]}" 2>&1 >/dev/null || true)
if grep -Eq '^Cannot stat file /proc/[0-9]+/fd/[0-9]+: Permission denied$' <<<"$fuser_err"; then
    mkdir -p "$TMP/shim"
    cat >"$TMP/shim/fuser" <<EOF
#!/bin/bash
# bench/formats.sh: the real fuser, without the "Cannot stat file
# /proc/PID/fd/N: Permission denied" lines of unreadable processes
{ err=\$($(command -v fuser) "\$@" 2>&1 >&3); rc=\$?; } 3>&1
[[ -n \$err ]] && grep -Ev '^Cannot stat file /proc/[0-9]+/fd/[0-9]+: Permission denied\$' <<<"\$err" >&2
exit \$rc
EOF
    chmod 0755 "$TMP/shim/fuser"
    SHIMS+=("fuser: psmisc \`fuser\` cannot read PID 1's fds here and says so on stderr, which IPA takes for a busy disk (it waits 20 s, then fails); IPA's fuser is a wrapper that drops only those \"Cannot stat file /proc/PID/fd/N: Permission denied\" lines")
    log "fuser cannot read some processes' fds here: IPA gets a fuser wrapper ($TMP/shim/fuser)"
fi
if [[ $SKIP_IPA != 1 ]] && ! command -v udevadm >/dev/null && [[ ! -e /run/udev/control ]]; then
    mkdir -p "$TMP/shim"
    printf '#!/bin/sh\n# bench/formats.sh: no udevadm and no udev daemon: nothing to settle\nexit 0\n' \
        >"$TMP/shim/udevadm"
    chmod 0755 "$TMP/shim/udevadm"
    SHIMS+=("udevadm: not installed and no udev daemon running; IPA's \`udevadm settle\` (which fails with FileNotFoundError when udevadm is missing) is a stand-in that exits 0")
    log "no udevadm and no udev daemon: IPA gets a udevadm stand-in that exits 0 ($TMP/shim/udevadm)"
fi
((${#SHIMS[@]})) && IPA_ENV=(PATH="$TMP/shim:$PATH")

# ------------------------------------------------------------ measuring
declare -A IPA_SELF_KIB   # IPA's python process alone (VmHWM), max per format

tmp_usage() { du -sb "$TMPD" 2>/dev/null | cut -f1; }

CLK_TCK=$(getconf CLK_TCK)
# CPU clock ticks (user+sys) that nginx's worker processes have used so far:
# the server shares this machine's CPUs with whatever downloads from it.
nginx_ticks() {
    local p sum=0 v kids=()
    [[ -n $NGINX_PID ]] && read -r -a kids <"/proc/$NGINX_PID/task/$NGINX_PID/children"
    for p in "${kids[@]}"; do
        v=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null) && sum=$((sum + v))
    done
    echo "$sum"
}

# measure LABEL -- COMMAND...: wall time (M_SECS), peak RSS (M_RSS,
# /usr/bin/time %M), CPU seconds user+sys of the command and of the children
# it waited for (M_CPU, /usr/bin/time %U + %S), nginx's workers' CPU seconds
# meanwhile (M_SRV), and the temp dir's peak and final size above its size
# before the command (du -sb every DU_INTERVAL s in the background, and once
# after the exit).
measure() {
    M_LOG="$TMP/log.$1"
    shift 2
    local t0 t1 base after srv0 srv1 box0 box1
    M_RC=0
    base=$(tmp_usage)
    srv0=$(nginx_ticks)
    box0=$(box_ticks)
    (
        trap - EXIT
        while :; do
            du -sb "$TMPD" 2>/dev/null | cut -f1
            sleep "$DU_INTERVAL"
        done
    ) >"$TMP/du" &
    SAMPLER_PID=$!
    t0=$(date +%s%N)
    /usr/bin/time -f '%e %M %U %S' -o "$TMP/time" env TMPDIR="$TMPD" "$@" \
        >"$M_LOG.out" 2>"$M_LOG.err" || M_RC=$?
    t1=$(date +%s%N)
    box1=$(box_ticks)
    srv1=$(nginx_ticks)
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=
    after=$(tmp_usage)
    # /usr/bin/time's %e has 10 ms resolution; the ns clock around it is used.
    M_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", (b - a) / 1e9 }')
    M_RSS=$(tail -n 1 "$TMP/time" | awk '{print $2}')
    [[ $M_RSS =~ ^[0-9]+$ ]] || M_RSS=-
    M_CPU=$(tail -n 1 "$TMP/time" | awk 'NF == 4 { printf "%.2f", $3 + $4 }')
    [[ $M_CPU =~ ^[0-9]+\.[0-9]+$ ]] || M_CPU=-
    M_SRV=$(awk -v a="$srv0" -v b="$srv1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz }')
    M_BOX=$(awk -v a="$box0" -v b="$box1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz }')
    M_PEAK=$( { cat "$TMP/du"; echo "$after"; } \
        | awk -v b="$base" '/^[0-9]+$/ { if ($1 - b > m) m = $1 - b } END { print m + 0 }')
    M_LEFT=$(( after > base ? after - base : 0 ))
}

# box_ticks: CPU time the whole machine spent busy so far (every CPU, every
# process and kernel thread: /proc/stat's first line without idle and iowait),
# in clock ticks. Around one command on an otherwise idle machine it counts
# what the command costs the machine, the kernel's share included (the loop
# device's worker, the socket's softirqs, nginx).
box_ticks() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# record RUN TARGET FMT KIND SECS RSS PEAK LEFT STATUS DL [CPU [SRV [BOX]]]:
# one TSV row; CPU, SRV and BOX (seconds: user+sys of the command, of nginx's
# workers meanwhile, and of the whole machine meanwhile) are "-" when not given.
record() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${@:1:10}" "${11:--}" "${12:--}" "${13:--}" >>"$RESULTS"
    local mbps=-
    [[ $5 != - ]] && mbps=$(awk -v s="$5" -v b="$SIZE_BYTES" 'BEGIN { printf "%.0f", b / 1e6 / s }')
    local pk=- rss=-
    [[ $7 != - ]] && pk=$(( $7 / 1048576 ))
    [[ $6 != - ]] && rss=$(( $6 / 1024 ))
    log "$(printf 'run %s/%s %-4s %-8s %-10s %8s s %6s MB/s %6s MiB RSS %6s s CPU  tmp peak %5s MiB  %s' \
        "$1" "$RUNS" "$2" "$3" "$4" "$5" "$mbps" "$rss" "${11:--}" "$pk" "$9")"
}

# IPA's own log line "... in N seconds" matching a sed pattern, or nothing
ipa_logged_secs() {
    sed -n "s/.*$1 in \([0-9.]*\) seconds.*/\1/p" "$M_LOG.err" "$M_LOG.out" | tail -n 1
}

write_and_check() {  # write_and_check RUN TARGET FMT KIND -- COMMAND...
    local run=$1 t=$2 f=$3 kind=$4
    wipe_target "$t"
    measure "$run.$t.$f.$kind" "${@:5}"
    local secs=$M_SECS status
    if [[ $kind == ipa && $M_RC == 0 ]]; then
        # IPA's own in-process time of prepare_image (see bench/ipa_stream.py)
        local js
        js=$(tail -n 1 "$M_LOG.out")
        secs=$("$PYTHON" -c 'import json,sys; print("%.4f" % json.loads(sys.argv[1])["seconds"])' "$js") \
            || { M_RC=99; secs=$M_SECS; }
        local self
        self=$("$PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1]).get("vmhwm_kib") or 0)' "$js" 2>/dev/null || echo 0)
        (( self > ${IPA_SELF_KIB[$f]:-0} )) && IPA_SELF_KIB[$f]=$self
    fi
    if [[ $M_RC != 0 ]]; then
        status="FAIL(exit $M_RC)"
        fail_log "$kind $f on $t"
    elif status=$(verify_target "$t"); then
        :
    else
        log "!!!!!!!! $kind $f on $t: exit 0 but the target does NOT hold the image: $status !!!!!!!!"
        FAILED=1
    fi
    record "$run" "$t" "$f" "$kind" "$secs" "$M_RSS" "$M_PEAK" "$M_LEFT" "$status" "${DL[$f]}" \
        "$M_CPU" "$M_SRV" "$M_BOX"
    if [[ $kind == ipa && $M_RC == 0 ]]; then
        # IPA's logged phases: raw: streaming (download, hash, write, checksum
        # check); qcow2: download to its temp file (with the checksum check),
        # then inspection + destroy_disk_metadata + qemu-img convert + rescan.
        local st
        if [[ $f == raw ]]; then
            st=$(ipa_logged_secs 'Image streamed onto device .*')
            [[ -n $st ]] && record "$run" "$t" "$f" ipa_stream "$(printf '%.4f' "$st")" - - - "$status" -
        else
            st=$(ipa_logged_secs 'Image downloaded from .*')
            [[ -n $st ]] && record "$run" "$t" "$f" ipa_dl "$(printf '%.4f' "$st")" - - - "$status" -
            st=$(ipa_logged_secs 'Image .* written to device .*')
            [[ -n $st ]] && record "$run" "$t" "$f" ipa_wr "$(printf '%.4f' "$st")" - - - "$status" -
        fi
    fi
    clean_tmpdir
}

rivet_cmd() {  # rivet_cmd FORMAT DEVICE [extra flags]: the command line
    local f=$1 dev=$2
    shift 2
    R_CMD=("$RIVET" deploy --url "${URL[$f]}" --device "$dev"
           --os-hash-algo sha256 --os-hash-value "${HASH[$f]}" "$@")
    is_compressed "$f" && R_CMD+=(--disk-format "${DISK_FORMAT[$f]}")
    return 0
}

# limit_status NAME: LIM_ST, the status word of a limit measured alone; a
# limit that failed is recorded as failed, not as a time.
limit_status() {
    LIM_ST="limit(rc 0)"
    if [[ $M_RC != 0 ]]; then
        fail_log "$1"
        LIM_ST="FAIL(exit $M_RC)"
    fi
}

# limit_rows RUN TARGET FMT DEVICE: each stage of a compressed deploy alone,
# then the tools chained (chain_row).
limit_rows() {
    local run=$1 t=$2 f=$3 dev=$4
    measure "$run.$t.$f.curl" -- curl -sS -o /dev/null "${URL[$f]}"
    limit_status "curl $f"
    record "$run" "$t" "$f" lim_curl "$M_SECS" "$M_RSS" - - "$LIM_ST" - "$M_CPU" "$M_SRV" "$M_BOX"
    measure "$run.$t.$f.dgst" -- openssl dgst -sha256 "${IMG[$f]}"
    limit_status "openssl dgst $f"
    record "$run" "$t" "$f" lim_dgst "$M_SECS" "$M_RSS" - - "$LIM_ST" - "$M_CPU" "$M_SRV" "$M_BOX"
    measure "$run.$t.$f.dec" -- sh -c "${DECOMP[$f]} '${IMG[$f]}' >/dev/null"
    limit_status "${DECOMP[$f]} $f"
    record "$run" "$t" "$f" lim_dec "$M_SECS" "$M_RSS" - - "$LIM_ST" - "$M_CPU" "$M_SRV" "$M_BOX"
    wipe_target "$t"
    measure "$run.$t.$f.dd" -- dd if="$IMAGE" of="$dev" bs=4M oflag=direct status=none
    limit_status "dd $f"
    record "$run" "$t" "$f" lim_dd "$M_SECS" "$M_RSS" - - "$LIM_ST" - "$M_CPU" "$M_SRV" "$M_BOX"
    chain_row "$run" "$t" "$f" "$dev"
}

# The limit tools as one pipeline doing the whole job, run by `bash -c`:
# $1 decompressor (word-split on purpose), $2 URL, $3 device, $4 digest file.
# openssl reads a FIFO that tee feeds and is waited for, so the time
# includes the digest; the exit status is 0 only if every part exited 0.
# shellcheck disable=SC2016  # expanded by that bash, not here
CHAIN_SH='
fifo=$4.fifo
rm -f "$fifo" && mkfifo "$fifo" || exit 90
openssl dgst -sha256 -r <"$fifo" >"$4" &
dgst=$!
curl -sS "$2" | tee "$fifo" | $1 | dd of="$3" bs=4M oflag=direct iflag=fullblock status=none
pipe="${PIPESTATUS[*]}"
wait "$dgst"
drc=$?
rm -f "$fifo"
echo "pipeline exit statuses: $pipe; openssl dgst: $drc"
[[ $pipe == "0 0 0 0" && $drc == 0 ]]
'

# chain_row RUN TARGET FMT DEVICE: curl | tee >(openssl dgst) | decompressor
# | dd, timed as one command; recorded as failed unless every part exited 0,
# the digest is the file's, and the target then holds the image.  Not for
# a qcow2 inside (qcow2.zst): no standard tool turns a qcow2 stream into a
# raw disk (qemu-img needs a seekable file), so there is no such chain.
chain_row() {
    local run=$1 t=$2 f=$3 dev=$4 st got
    [[ ${DISK_FORMAT[$f]} == raw ]] || return 0
    wipe_target "$t"
    rm -f "$TMP/chain.dgst"
    measure "$run.$t.$f.chain" -- bash -c "$CHAIN_SH" chain "${DECOMP[$f]}" "${URL[$f]}" \
        "$dev" "$TMP/chain.dgst"
    got=$(cut -d' ' -f1 "$TMP/chain.dgst" 2>/dev/null || true)
    if [[ $M_RC != 0 ]]; then
        st="FAIL(exit $M_RC: $(tail -n 1 "$M_LOG.out" 2>/dev/null | tr '\t' ' '))"
        fail_log "tools chained $f on $t"
    elif [[ $got != "${HASH[$f]}" ]]; then
        st="MISMATCH(digest)"
        log "!!!!!!!! tools chained $f on $t: openssl printed '$got', expected ${HASH[$f]} !!!!!!!!"
        FAILED=1
    elif ! st=$(verify_target "$t"); then
        log "!!!!!!!! tools chained $f on $t: the target does NOT hold the image: $st !!!!!!!!"
        FAILED=1
    fi
    record "$run" "$t" "$f" lim_chain "$M_SECS" "$M_RSS" - - "$st" - "$M_CPU" "$M_SRV" "$M_BOX"
}

clean_tmpdir
sizes=""
for f in "${FORMATS[@]}"; do sizes+="; $f $(mib "${DL[$f]}") MiB"; done
log "image: $SIZE_MIB MiB, ${ZERO_FRACTION} zero, ${TEXT_FRACTION} text$sizes; $RUNS run(s)"
log "temp dir (rivet --tmp-dir, IPA's TMPDIR): $TMPD"
for run in $(seq "$RUNS"); do
    for t in "${TARGETS[@]}"; do
        dev=${T_DEV[$t]}
        for f in "${FORMATS[@]}"; do
            if [[ $SKIP_RIVET != 1 ]]; then
                rivet_cmd "$f" "$dev"
                write_and_check "$run" "$t" "$f" rivet -- "${R_CMD[@]}"
                if [[ $f != raw && $SKIP_RIVET_TEMPFILE != 1 ]] && ! is_compressed "$f"; then
                    rivet_cmd "$f" "$dev" --temp-file --tmp-dir "$TMPD"
                    write_and_check "$run" "$t" "$f" rivet_tmp -- "${R_CMD[@]}"
                fi
            fi
            if is_compressed "$f"; then
                limit_rows "$run" "$t" "$f" "$dev"
                continue  # IPA cannot deploy these (see the notes)
            fi
            if [[ $SKIP_IPA != 1 && ! ($f == raw && $SKIP_IPA_RAW == 1) ]]; then
                write_and_check "$run" "$t" "$f" ipa -- env "${IPA_ENV[@]}" \
                    "$VENV/bin/python" "$SCRIPT_DIR/ipa_stream.py" \
                    --url "${URL[$f]}" --device "$dev" --os-hash-algo sha256 \
                    --os-hash-value "${HASH[$f]}" --disk-format "$([[ $f == raw ]] && echo raw || echo qcow2)"
            fi
        done
    done
done

# --------------------------------------------------------------- report
rivet_desc=skipped
if [[ $SKIP_RIVET != 1 ]]; then
    rivet_desc="$RIVET ($(git_desc), binary built $(date -u -r "$RIVET" '+%Y-%m-%d %H:%M UTC'))"
    [[ $SKIP_RIVET_TEMPFILE == 1 ]] && rivet_desc+="; --temp-file rows skipped"
fi
ipa_desc=skipped
[[ $SKIP_IPA != 1 ]] && ipa_desc="ironic-python-agent $IPA_VERSION (PyPI, venv $VENV, python $(venv_python_version), StandbyExtension.prepare_image; raw: disk_format raw + stream_raw_images; qcow2: disk_format qcow2)"
tmp_fs=$(findmnt -n -o FSTYPE,SOURCE -T "$TMPD" | awk '{print $1 " on " $2}')
ipa_self=""
for f in "${FORMATS[@]}"; do
    [[ -n ${IPA_SELF_KIB[$f]:-} ]] && ipa_self+="${ipa_self:+, }${f/qcow2c/qcow2 -c} $(awk -v k="${IPA_SELF_KIB[$f]}" 'BEGIN { printf "%.1f", k / 1024 }') MiB"
done

{
    echo "$HEADING"
    echo
    echo "Written by \`bench/formats.sh\`."
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(machine_desc)"
    echo "- image: $SIZE_MIB MiB ($SIZE_BYTES bytes, the virtual size of every format) raw GPT disk image, $(pct "$ZERO_FRACTION") % zero regions, $(pct "$TEXT_FRACTION") % compressible text, the rest random$(for f in "${FORMATS[@]}"; do [[ $f == raw ]] || printf '; as %s: %s MiB' "${FMT_DESC[$f]}" "$(mib "${DL[$f]}")"; done); $(qemu-img --version | head -n 1 | cut -d' ' -f1-3)"
    echo "- served by nginx $(nginx_version) (sendfile on) at 127.0.0.1; checksum: sha256 of the file as served"
    for t in "${TARGETS[@]}"; do
        echo "- target $t: ${T_DESC[$t]}, $((TARGET_BYTES / 1048576)) MiB, discarded before every write"
    done
    echo "- temp dir: $TMPD ($tmp_fs; rivet \`--tmp-dir\`, TMPDIR for every command), emptied before every command"
    echo "- page cache: images kept hot (read once before measuring, caches never dropped)"
    echo "- runs: $RUNS, median shown; MB/s = $SIZE_BYTES (virtual size) / 1e6 / seconds, for every format"
    echo "- rivet: $rivet_desc"
    echo "- IPA: $ipa_desc"
    for sh in "${SHIMS[@]}"; do
        echo "- on IPA's PATH: $sh"
    done
    echo
    failed_warning
    NPROC=$NPROC "$PYTHON" "$SCRIPT_DIR/benchlib.py" ftable "$RESULTS" "$SIZE_BYTES" "${TARGETS[@]}"
    echo
    echo "Notes: rivet's times are the wall-clock time of the whole process; IPA's is"
    echo "its prepare_image command measured inside the process (python start-up and"
    echo "imports, paid once at agent boot, excluded). IPA's qcow2 path downloads the"
    echo "image into TMPDIR, verifies it, inspects it, wipes the disk metadata, runs"
    echo "\`qemu-img convert -O host_device -t directsync -S 0 -W\`, then \`sync\` (which"
    echo "also flushes its temp file), partprobe and \`sgdisk -e\` (~1 s, sync + sleep)."
    echo "\"peak RSS\" is \`/usr/bin/time -f %M\`, the maximum over the runs. GNU time"
    echo "takes it from wait4()'s rusage; on Linux that is the larger of the process's"
    echo "own peak and the peak of the largest *single* descendant that was waited for"
    echo "(getrusage's RUSAGE_CHILDREN ru_maxrss is the largest child, not a sum, and"
    echo "the kernel carries it up the tree as each child is reaped). So for IPA's"
    echo "qcow2 path and rivet --temp-file it is max(agent, qemu-img), not their sum"
    echo "while both run (checked here: a 300 MiB child then a 100 MiB one gives 300;"
    echo "two concurrent 150 MiB children give 150). IPA's python process alone"
    echo "peaked at: ${ipa_self:-not measured} (VmHWM)."
    echo "\"temp file\": the peak of \`du -sb\` of the temp dir minus its size before the"
    echo "command, sampled every $DU_INTERVAL s during the command and once after it;"
    echo "yes = at least 1 MiB. \"left in tmp\": what was still there after the exit"
    echo "(IPA keeps its downloaded image as its cache; the script deletes it between"
    echo "commands, untimed). \"time ÷ rivet raw\": this row's time over rivet's raw"
    echo "time on the same target. \"speed-up over IPA\": IPA's time for the same image"
    echo "and target over this row's. \"written\": exact = the target's first $SIZE_MIB MiB"
    echo "are byte-identical to the raw image; ok(gpt-moved) = payload identical and the"
    echo "GPT identical except that its backup was moved to the end of the device"
    echo "(both rivet and IPA do that); UNFLUSHED = the data reached the backing file"
    echo "only after a flush."
    echo "\"CPU s\": user+sys seconds (\`/usr/bin/time\` %U + %S) of the command and of"
    echo "every child it waited for (rivet: all its threads and the tools it runs),"
    echo "median over the runs; \"nginx CPU s\": what nginx's workers used meanwhile"
    echo "(the server shares this machine's $NPROC CPUs; it is in no other figure)."
    decomps=""
    for f in "${FORMATS[@]}"; do
        is_compressed "$f" && decomps+="${decomps:+; }${FMT_DESC[$f]%% (*}: \`${DECOMP[$f]}\`"
    done
    if [[ -n $decomps ]]; then
        echo
        echo "Compressed images: rivet is given the compressed file's sha256 and the"
        echo "disk_format of the image inside (\`--disk-format raw\` or \`qcow2\`); it"
        echo "decompresses on its own thread while downloading, hashing and writing (no"
        echo "temporary file). The \"limit alone\" rows run each stage by itself on the same"
        echo "machine in the same run: curl of the compressed file from the same nginx,"
        echo "openssl dgst -sha256 of the compressed file (page cache), the decompressor"
        echo "($decomps) to /dev/null, and dd of the raw image inside to the target"
        echo "(bs=4M oflag=direct). IPA 13.0.0 has no decompression on this path: with"
        echo "disk_format raw and stream_raw_images it streams the compressed bytes to the"
        echo "disk as they are (the checksum matches, the disk holds a .gz/.xz/.zst file"
        echo "and does not boot); with disk_format qcow2 its format inspector sees no"
        echo "qcow2 header and refuses the image (\"Expected format was qcow2, but image"
        echo "was actually raw\"), so it has no row."
        echo
        echo "The second table puts rivet's time next to three bounds for the same file,"
        echo "all measured in this run, each with its time ÷ rivet's time (above 1: rivet"
        echo "is faster than the bound):"
        echo
        echo "- slowest stage alone: the longest of the four \"limit alone\" rows; the issue's"
        echo "  goal is rivet ≥ 0.9× of it."
        echo "- tools chained: the same tools as one pipeline doing the whole job,"
        echo "  \`curl -sS URL | tee FIFO | DECOMPRESSOR | dd of=DEV bs=4M oflag=direct"
        echo "  iflag=fullblock\` with \`openssl dgst -sha256 -r <FIFO\` waited for inside the"
        echo "  timed command; it counts only if every part exits 0, the digest is the"
        echo "  file's sha256 and the target then holds the image (\"written\" column)."
        echo "  qcow2.zst has no such row: no standard tool turns a qcow2 *stream* into a"
        echo "  raw disk (\`qemu-img convert\` needs a seekable file)."
        echo "- CPU floor: the four stages' CPU seconds added up, divided by the $NPROC CPUs"
        echo "  (\`nproc\`): no pipeline of these stages can finish sooner on this machine"
        echo "  (nor sooner than its slowest single-threaded stage; nginx's CPU is not in it)."
        echo "- machine CPU floor: the same with the whole machine's busy CPU seconds"
        echo "  during each stage alone (/proc/stat, every process and kernel thread): it adds"
        echo "  what the stages cost the kernel outside their own process (nginx, the socket's"
        echo "  softirqs, the loop device's worker copying into the target), which rivet's"
        echo "  deploy pays too; the honest bound on a machine of $NPROC CPUs."
    fi
} >"$REPORT"

echo
cat "$REPORT"
if [[ $WRITE_RESULTS == 1 ]]; then
    "$PYTHON" "$SCRIPT_DIR/benchlib.py" put-section "$SCRIPT_DIR/RESULTS.md" "$HEADING" "$REPORT"
    log "wrote the \"$HEADING\" section of $SCRIPT_DIR/RESULTS.md"
fi
exit_if_failed
