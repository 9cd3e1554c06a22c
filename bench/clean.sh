#!/usr/bin/env bash
# rivet disk-erasure benchmark: rivet's erase engine (examples/erase_probe,
# release build) vs. ironic-python-agent 13.0.0's erase clean steps vs. dd,
# on loop devices over files in BENCH_DIR (direct I/O).
#
# Overwrite: one ERASE_MIB device; dd of zeroes (the limit), rivet's random
# pass, zero pass and full erase_devices, IPA's erase_devices (shred).
# Metadata: a GPT disk with PARTS partitions (ext4, vfat, swap, LVM PV in
# turn, made anew before every run); rivet's and IPA's erase_devices_metadata.
# Every erasing command runs in a mount namespace whose /dev holds only the
# bench's own loop devices.
#
# Usage (as root):  bench/clean.sh [--write-results] [--help]
# Environment:      ERASE_MIB (1024), PARTS (12), RUNS (3), BENCH_DIR,
#                   PROBE (erase_probe binary), SKIP_IPA, WRITE_RESULTS
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$SCRIPT_DIR/lib.sh"
LOG_TAG=clean

ERASE_MIB=${ERASE_MIB:-1024}
PARTS=${PARTS:-12}
PART_MIB=48
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_DIR/target}   # CARGO_TARGET_DIR=/work/main/target on the shared machine
PROBE=${PROBE:-$TARGET_DIR/release/examples/erase_probe}

parse_args "$@"
check_common
[[ $ERASE_MIB =~ ^[0-9]+$ && $ERASE_MIB -ge 64 && $((ERASE_MIB % 4)) == 0 ]] || die "ERASE_MIB must be a multiple of 4, >= 64"
[[ $PARTS =~ ^[0-9]+$ && $PARTS -ge 1 && $PARTS -le 60 ]] || die "PARTS must be 1..60"

# ------------------------------------------------------------------ tools
need shred coreutils
need wipefs util-linux
need partx util-linux
need unshare util-linux
need blkid util-linux
need sfdisk fdisk
need sgdisk gdisk          # IPA: sgdisk -Z
need hdparm hdparm         # IPA: _ata_erase (hdparm -I) before shredding
need fuser psmisc          # IPA: waits until no process holds the disk
need mkfs.ext4 e2fsprogs
need mkfs.vfat dosfstools
need pvcreate lvm2
need losetup mount
need lsblk util-linux
need "$PYTHON" python3
[[ $SKIP_IPA != 1 ]] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 && need_pkgs+=(python3-venv)
if ((${#need_pkgs[@]})); then
    log "installing missing packages: ${need_pkgs[*]}"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null \
        || die "apt-get install ${need_pkgs[*]} failed"
fi
export LVM_SUPPRESS_FD_WARNINGS=1

# Before lib.sh's cleanup detaches the loop devices: a loop device keeps its
# BLKPG partitions after it is detached, so drop them first.
cleanup_hook() { [[ -n ${T_DEV[meta]:-} ]] && partx -d "${T_DEV[meta]}" >/dev/null 2>&1; return 0; }
make_workspace rivet-clean
ensure_ipa_venv
if [[ ! -x $PROBE ]]; then
    log "building erase_probe: cargo build --release --example erase_probe"
    (cd "$REPO_DIR" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --example erase_probe) \
        || die "cargo build failed"
fi

# IPA's destroy_disk_metadata waits until `fuser DEV` prints nothing; where a
# process's fds cannot be read (a sandbox's PID 1) psmisc fuser says so on
# stderr and IPA waits 20 s, then fails.  As in bench/formats.sh, IPA then
# gets a wrapper that drops only those lines (real users are still reported).
SHIMS=()
IPA_PATH=$PATH
fuser_err=$(fuser /dev/null 2>&1 >/dev/null || true)
if grep -Eq '^Cannot stat file /proc/[0-9]+/fd/[0-9]+: Permission denied$' <<<"$fuser_err"; then
    mkdir -p "$TMP/shim"
    cat >"$TMP/shim/fuser" <<SHIM
#!/bin/bash
# bench/clean.sh: the real fuser, without "Cannot stat file /proc/PID/fd/N: Permission denied"
{ err=\$($(command -v fuser) "\$@" 2>&1 >&3); rc=\$?; } 3>&1
[[ -n \$err ]] && grep -Ev '^Cannot stat file /proc/[0-9]+/fd/[0-9]+: Permission denied\$' <<<"\$err" >&2
exit \$rc
SHIM
    chmod 0755 "$TMP/shim/fuser"
    IPA_PATH="$TMP/shim:$PATH"
    SHIMS+=("fuser: a wrapper dropping psmisc's \"Cannot stat file /proc/PID/fd/N: Permission denied\" lines (PID 1's fds are unreadable here; IPA would take them for a busy disk)")
fi

# in_private_dev "DEV..." CMD...: CMD in a private mount namespace whose /dev
# holds only those block devices (same numbers) plus null, zero, urandom, shm.
in_private_dev() {
    local devs=$1 d mm script
    shift
    script='set -e; mount -t tmpfs -o mode=0755,size=1m rivet-bench-dev /dev'
    script+='; mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 666 /dev/urandom c 1 9'
    script+='; mkdir /dev/shm; mount -t tmpfs -o size=16m shm /dev/shm'
    for d in $devs; do
        mm=$(stat -c '%t %T' "$d")
        script+="; mknod -m 600 $d b $((16#${mm% *})) $((16#${mm#* }))"
    done
    unshare --mount --propagation private -- sh -c "$script; exec \"\$@\"" sh "$@"
}

now() { date +%s.%N; }

# measure ROW_ID DEVS BYTES CMD...: runs CMD (in the private /dev), records
# its wall-clock time, or IPA's in-process "seconds" when CMD prints it.
measure() {
    local id=$1 devs=$2 bytes=$3 t0 t1 out rc secs
    shift 3
    t0=$(now)
    set +e
    out=$(in_private_dev "$devs" "$@" 2>"$TMP/last.err")
    rc=$?
    set -e
    t1=$(now)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
    if [[ $id == ipa* && $rc == 0 ]]; then
        secs=$("$PYTHON" -c 'import json,sys; print("%.4f" % json.loads(sys.stdin.read().strip().splitlines()[-1])["seconds"])' <<<"$out")
    fi
    if [[ $rc != 0 ]]; then
        log "---- $id failed (exit $rc): $out"
        tail -n 15 "$TMP/last.err" >&2
        FAILED=1
        secs=NaN
    fi
    printf '%s\t%s\t%s\n' "$id" "$secs" "$bytes" >>"$RESULTS"
}

# ------------------------------------------------------------ overwrite
OW_FILE="$BENCH_DIR/clean-overwrite.img"
META_FILE="$BENCH_DIR/clean-metadata.img"
T_FILE[ow]=$OW_FILE
T_FILE[meta]=$META_FILE
OW_BYTES=$((ERASE_MIB * 1048576))
rm -f "$OW_FILE" "$META_FILE"
fallocate -l "$OW_BYTES" "$OW_FILE"
T_DEV[ow]=$(losetup -f --show --direct-io=on "$OW_FILE")
OW=${T_DEV[ow]}
OW_DIO=$(losetup -n -O DIO "$OW" | tr -d ' ')
log "overwrite target $OW: $ERASE_MIB MiB over $OW_FILE (direct-io=$OW_DIO)"

# Untimed, before every command: the file fully written, so that no command
# pays for block allocation or unwritten-extent conversion another did not.
OW_COUNT=$((ERASE_MIB / 4))
prefill() { dd if=/dev/zero of="$OW" bs=4M count="$OW_COUNT" oflag=direct status=none; }

IPA_PY="$VENV/bin/python"
for run in $(seq "$RUNS"); do
    log "overwrite run $run/$RUNS"
    prefill; measure dd "$OW" "$OW_BYTES" dd if=/dev/zero of="$OW" bs=4M count="$OW_COUNT" oflag=direct status=none
    prefill; measure ddsync "$OW" "$OW_BYTES" dd if=/dev/zero of="$OW" bs=4M count="$OW_COUNT" oflag=direct conv=fsync status=none
    prefill; measure rv_random "$OW" "$OW_BYTES" "$PROBE" devices --no-secure-erase --no-zeroize "$OW"
    prefill; measure rv_zerow "$OW" "$OW_BYTES" "$PROBE" devices --no-secure-erase --iterations 0 --zero-writes "$OW"
    prefill; measure rv_default "$OW" $((2 * OW_BYTES)) "$PROBE" devices "$OW"
    prefill; measure rv_default_w "$OW" $((2 * OW_BYTES)) "$PROBE" devices --zero-writes "$OW"
    if [[ $SKIP_IPA != 1 ]]; then
        prefill; measure ipa_random "$OW" "$OW_BYTES" env PATH="$IPA_PATH" "$IPA_PY" "$SCRIPT_DIR/ipa_erase.py" --step erase_devices --no-zeroize --disk "$OW"
        prefill; measure ipa_default "$OW" $((2 * OW_BYTES)) env PATH="$IPA_PATH" "$IPA_PY" "$SCRIPT_DIR/ipa_erase.py" --step erase_devices --disk "$OW"
    fi
done
# The last command (IPA's or rivet's default) zeroized: check it.
if cmp -s -n "$OW_BYTES" "$OW" /dev/zero; then OW_CHECK="all zero"; else OW_CHECK="NOT ZERO"; FAILED=1; fi
losetup -d "$OW"; T_DEV[ow]=
rm -f "$OW_FILE"

# ------------------------------------------------------------- metadata
META_BYTES=$(( (PARTS * PART_MIB + 2) * 1048576 ))
truncate -s "$META_BYTES" "$META_FILE"
T_DEV[meta]=$(losetup -f --show --direct-io=on "$META_FILE")
META=${T_DEV[meta]}
FS_CYCLE=(ext4 vfat swap lvm)

# A fresh layout: GPT, PARTS kernel partitions (partx, BLKPG), a filesystem
# or label on each.  Untimed.
make_layout() {
    local i script="label: gpt"$'\n' p
    partx -d "$META" >/dev/null 2>&1 || true
    blkdiscard -f "$META" 2>/dev/null || dd if=/dev/zero of="$META" bs=1M count=$((META_BYTES / 1048576)) oflag=direct status=none
    for ((i = 1; i <= PARTS; i++)); do script+="size=${PART_MIB}MiB"$'\n'; done
    sfdisk -q --no-reread --no-tell-kernel "$META" <<<"$script"
    partx -a "$META"
    for ((i = 1; i <= PARTS; i++)); do
        p="${META}p$i"
        for _ in $(seq 50); do [[ -b $p ]] && break; sleep 0.02; done
        case ${FS_CYCLE[$(( (i - 1) % 4 ))]} in
            ext4) mkfs.ext4 -q -F "$p" ;;
            vfat) mkfs.vfat "$p" >/dev/null ;;
            swap) mkswap "$p" >/dev/null ;;
            lvm) pvcreate -q -ff -y "$p" >/dev/null ;;
        esac
    done
    blockdev --flushbufs "$META"
}

# What blkid still finds on the disk and on each old partition range.
meta_check() {
    local left=0 i r
    blkid -p "$META" >/dev/null 2>&1 && left=$((left + 1))
    for ((i = 1; i <= PARTS; i++)); do
        r=$(losetup -f --show -o $(( (1 + (i - 1) * PART_MIB) * 1048576 )) --sizelimit $((PART_MIB * 1048576)) "$META_FILE")
        blkid -p "$r" >/dev/null 2>&1 && left=$((left + 1))
        losetup -d "$r"
    done
    echo "$left"
}

part_nodes() { local i; for ((i = 1; i <= PARTS; i++)); do printf ' %sp%d' "$META" "$i"; done; }
META_LEFT=()
for run in $(seq "$RUNS"); do
    log "metadata run $run/$RUNS"
    make_layout
    measure rv_meta "$META $(part_nodes)" "$META_BYTES" "$PROBE" metadata "$META"
    META_LEFT+=("rivet:$(meta_check)")
    if [[ $SKIP_IPA != 1 ]]; then
        make_layout
        # shellcheck disable=SC2046
        measure ipa_meta "$META $(part_nodes)" "$META_BYTES" env PATH="$IPA_PATH" "$IPA_PY" "$SCRIPT_DIR/ipa_erase.py" \
            --step erase_devices_metadata --disk "$META" $(for n in $(part_nodes); do printf -- '--partition %s ' "$n"; done)
        META_LEFT+=("ipa:$(meta_check)")
    fi
done
partx -d "$META" >/dev/null 2>&1 || true

# --------------------------------------------------------------- report
median() { awk -F'\t' -v id="$1" '$1 == id && $2 != "NaN" { print $2 }' "$RESULTS" | sort -g \
    | awk '{ v[NR] = $1 } END { if (NR == 0) print "NaN"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
bytes_of() { awk -F'\t' -v id="$1" '$1 == id { print $3; exit }' "$RESULTS"; }
left_of() { local tool=$1 n=0 e; for e in "${META_LEFT[@]}"; do [[ ${e%%:*} == "$tool" ]] && n=$((n + ${e#*:})); done; echo "$n"; }

row() {  # row ID LABEL: median seconds, MB/s written, and that over dd's
    local m b
    m=$(median "$1")
    [[ $m == NaN ]] && return 0
    b=$(bytes_of "$1")
    awk -v l="$2" -v s="$m" -v b="$b" -v ddm="$(median dd)" -v ob="$OW_BYTES" \
        'BEGIN { r = b / 1e6 / s; d = ob / 1e6 / ddm; printf "| %s | %.3f | %.0f | %.2f |\n", l, s, r, r / d }'
}

{
    echo "## Disk erasure"
    echo
    echo "Written by \`bench/clean.sh\`."
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(machine_desc); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- overwrite target: loop over a $ERASE_MIB MiB file on $(findmnt -n -o FSTYPE -T "$BENCH_DIR") ($BENCH_DIR), direct-io=$OW_DIO, written in full (untimed) before every command"
    echo "- metadata target: loop (direct-io) over a $((META_BYTES / 1048576)) MiB GPT disk with $PARTS partitions of $PART_MIB MiB (ext4, vfat, swap, LVM PV in turn), kernel partitions added with partx, remade before every run"
    echo "- every command runs in a private mount namespace whose /dev holds only the bench's loop devices"
    echo "- runs: $RUNS, median shown; MB/s = bytes written / 1e6 / seconds"
    echo "- rivet: $PROBE ($(git_desc)), the erase engine through its example driver"
    [[ $SKIP_IPA != 1 ]] && echo "- IPA: ironic-python-agent $IPA_VERSION (PyPI, python $(venv_python_version)), GenericHardwareManager steps driven by bench/ipa_erase.py, time measured in-process"
    for s in "${SHIMS[@]}"; do echo "- on IPA's PATH: $s"; done
    echo
    echo "| overwrite ($ERASE_MIB MiB) | s (median) | MB/s written | ÷ dd MB/s |"
    echo "|---|---:|---:|---:|"
    row dd "dd if=/dev/zero bs=4M oflag=direct (limit)"
    row ddsync "dd ... oflag=direct conv=fsync"
    row rv_random "rivet random pass (AES-CTR, O_DIRECT 4 MiB, fdatasync)"
    row rv_zerow "rivet zero pass by O_DIRECT writes"
    row rv_default "rivet erase_devices as Ironic asks (hdparm check, random + zero pass; zeroes by BLKZEROOUT)"
    row rv_default_w "rivet erase_devices, zero pass by writes"
    row ipa_random "IPA erase_devices, zeroize off (hdparm, smartctl, shred -n 1)"
    row ipa_default "IPA erase_devices as Ironic asks (hdparm, smartctl, shred --zero -n 1)"
    echo
    echo "After the last overwrite command the device read back: $OW_CHECK."
    echo
    echo "| metadata ($PARTS partitions) | s (median) | signatures left (all runs) |"
    echo "|---|---:|---:|"
    printf '| rivet erase_devices_metadata | %.3f | %s |\n' "$(median rv_meta)" "$(left_of rivet)"
    [[ $SKIP_IPA != 1 ]] && printf '| IPA erase_devices_metadata (wipefs, dd, sgdisk -Z, fuser per device) | %.3f | %s |\n' "$(median ipa_meta)" "$(left_of ipa)"
    echo
    echo "\"signatures left\": blkid -p on the disk and on a loop device over each old"
    echo "partition range after each run, summed over the runs."
} >"$REPORT"

cat "$REPORT"
if [[ $WRITE_RESULTS == 1 ]]; then
    "$PYTHON" - "$REPO_DIR/bench/RESULTS.md" "$REPORT" <<'PY'
import re, sys
path, report = sys.argv[1], open(sys.argv[2]).read().rstrip() + "\n"
text = open(path).read()
m = re.search(r"^## Disk erasure\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
text = text[:m.start()] + report + "\n" + text[m.end():] if m else text.rstrip() + "\n\n" + report
open(path, "w").write(text)
PY
    log "wrote the section to bench/RESULTS.md"
fi
exit_if_failed
