#!/usr/bin/env bash
# The RAM a bootc deploy's `podman pull` takes in a ramdisk-like setup: podman's container
# store (/var/lib/containers) and its temporary directory both on tmpfs, as on IPA's (and
# rivet's) ramdisk where the root file system is RAM. Builds a ~SIZE_MIB image of random
# (incompressible) data, pushes it to a docker-registry on 127.0.0.1, then pulls it in a private
# mount namespace whose store and TMPDIR are fresh tmpfs mounts, sampling their use and
# podman's peak RSS. Prints a Markdown table for bench/RESULTS.md. Root; podman, runc,
# docker-registry installed (scripts/test.sh installs them).
#
#   SIZE_MIB   image payload (default 500)
#   WORK       scratch directory on disk (default /var/tmp/rivet-bench-bootc; removed at the end)
set -euo pipefail
SIZE_MIB=${SIZE_MIB:-500}
WORK=${WORK:-/var/tmp/rivet-bench-bootc}
rm -rf "$WORK"; mkdir -p "$WORK"/{reg,build/run,build/tmp,rootfs}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { [ -n "${reg_pid:-}" ] && kill "$reg_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

cat >"$WORK/reg.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $WORK/reg}}
http: {addr: 127.0.0.1:$port}
EOF
docker-registry serve "$WORK/reg.yml" >"$WORK/reg.log" 2>&1 & reg_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

conf() { # $1 = dir, $2 = graphroot
  cat >"$1/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$1/run/events.log"
tmp_dir = "$1/run/libpod"
EOF
  printf 'unqualified-search-registries = []\n[[registry]]\nlocation = "127.0.0.1:%s"\ninsecure = true\n' "$port" >"$1/registries.conf"
  printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s/run/storage"\n' "$2" "$1" >"$1/storage.conf"
  echo '{"auths": {}}' >"$1/auth.json"
  echo "CONTAINERS_CONF=$1/containers.conf CONTAINERS_REGISTRIES_CONF=$1/registries.conf CONTAINERS_STORAGE_CONF=$1/storage.conf REGISTRY_AUTH_FILE=$1/auth.json"
}
benv=$(conf "$WORK/build" "$WORK/build/store")
ref=127.0.0.1:$port/rivet/bootc-bench:1
# One layer (podman import), random data in four files.
for i in 1 2 3 4; do
  mkdir -p "$WORK/rootfs/l$i"
  head -c $((SIZE_MIB * 1048576 / 4)) /dev/urandom >"$WORK/rootfs/l$i/blob"
done
tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
env $benv TMPDIR="$WORK/build/tmp" unshare --mount --propagation private -- sh -c \
  "podman import -q '$WORK/rootfs.tar' '$ref' >/dev/null && podman push -q '$ref'"
rm -rf "$WORK/rootfs" "$WORK/rootfs.tar" "$WORK/build"
image_bytes=$(du -sb "$WORK/reg" | cut -f1)

# The pull, ramdisk-like: store and TMPDIR on tmpfs; sample their use every 0.2 s.
mkdir -p "$WORK/ram"
M=/var/tmp/rivet-bench-bootc-mnt
penv=$(conf "$WORK/ram" $M/store)
mkdir -p /var/tmp/rivet-bench-bootc-mnt
cat >"$WORK/pull.sh" <<EOF
set -e
mount -t tmpfs -o size=8g rivet-bench-store /var/tmp/rivet-bench-bootc-mnt
mkdir -p /var/tmp/rivet-bench-bootc-mnt/store /var/tmp/rivet-bench-bootc-mnt/tmp
export TMPDIR=/var/tmp/rivet-bench-bootc-mnt/tmp
( while :; do u=\$(df -B1 --output=used /var/tmp/rivet-bench-bootc-mnt | awk 'NR>1{s+=\$1} END{print s}'); echo \$u; sleep 0.2; done ) >"$WORK/samples" &
s=\$!
/usr/bin/time -f '%M' -o "$WORK/rss" podman pull -q "$ref" >/dev/null
sleep 0.3; kill \$s
df -B1 --output=used /var/tmp/rivet-bench-bootc-mnt | awk 'NR>1{s+=\$1} END{print s}' >"$WORK/final"
EOF
t0=$(date +%s.%N)
env $penv unshare --mount --propagation private -- sh "$WORK/pull.sh"
t1=$(date +%s.%N)
rmdir /var/tmp/rivet-bench-bootc-mnt 2>/dev/null || true
peak=$(sort -n "$WORK/samples" | tail -1)
final=$(cat "$WORK/final")
rss=$(cat "$WORK/rss")
mib() { awk -v b="$1" 'BEGIN{printf "%.0f", b/1048576}'; }
echo "| image in the registry | pull s | tmpfs at the end | tmpfs peak (sampled 0.2 s) | podman peak RSS | peak RAM ÷ image |"
echo "|---:|---:|---:|---:|---:|---:|"
echo "| $(mib "$image_bytes") MiB | $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') | $(mib "$final") MiB | $(mib "$peak") MiB | $(awk -v k="$rss" 'BEGIN{printf "%.0f", k/1024}') MiB | $(awk -v p="$peak" -v r="$rss" -v i="$image_bytes" 'BEGIN{printf "%.2f", (p + r*1024)/i}') |"
