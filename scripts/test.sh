#!/usr/bin/env bash
# The one test command: installs what the tests need on a fresh machine, then runs them all.
# Tests that use loop devices need root (CI runs as root; elsewhere they skip with a reason).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sgdisk >/dev/null || need+=(gdisk)
command -v blkid >/dev/null || need+=(util-linux)
command -v losetup >/dev/null || need+=(mount)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v ip >/dev/null || need+=(iproute2)
command -v isoinfo >/dev/null || need+=(genisoimage)
command -v mtype >/dev/null || need+=(mtools)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v pvcreate >/dev/null || need+=(lvm2)          # erase tests: an LVM PV to wipe
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)      # erase tests (optional there)
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs) # erase tests (optional there)
command -v efibootmgr >/dev/null || need+=(efibootmgr efivar) # boot tests cross-check with them
command -v partx >/dev/null || need+=(util-linux)
command -v xz >/dev/null || need+=(xz-utils)            # compressed-image tests
command -v zstd >/dev/null || need+=(zstd)
# tests/bootc_real.rs: the real podman (runc as its runtime), a registry with htpasswd auth,
# and a static busybox for the test image's rootfs.
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
[ -x /bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "test.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "test.sh: missing ${need[*]} (run as root to install them)" >&2
  fi
fi
# The VM lifecycle test (tests/vm_lifecycle.rs): QEMU + OVMF, dnsmasq, systemd-boot's UKI stub;
# ramdisk/build.sh installs what it needs itself. Bookworm's qemu-system-x86 cannot sit beside a
# newer (backports) qemu-utils: apt replaces it, so qemu-img is put back right after. A failure
# here only makes that test skip.
if [ "$(id -u)" = 0 ] && { ! command -v qemu-system-x86_64 >/dev/null || ! command -v dnsmasq >/dev/null ||
    [ ! -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || [ ! -f /usr/lib/systemd/boot/efi/linuxx64.efi.stub ]; }; then
  echo "test.sh: installing qemu-system-x86 ovmf dnsmasq-base systemd-boot-efi"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 ovmf dnsmasq-base systemd-boot-efi >/dev/null ||
    echo "test.sh: could not install the VM test's packages; it will skip" >&2
  command -v qemu-img >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils >/dev/null
fi

# Ironic's real conductor client (PyPI `ironic`) drives `rivet serve` in the agent tests.
RIVET_IRONIC_PYTHON="$(bash tests/ironic/setup.sh)/bin/python"
export RIVET_IRONIC_PYTHON

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# Unit tests of the library and binary, then every integration test; a total at the end.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -E '^test result:' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -E '^test result:' "$log" | awk '{s+=$6} END {print s+0}')
# The fuzz targets (nightly cargo-fuzz) must keep building: build them and run each for a few
# seconds on its corpus (tests/fuzz_corpus.rs replays the corpus on stable above). Without a
# nightly toolchain this is reported and skipped, never silently.
fuzz=skipped
if cargo +nightly --version >/dev/null 2>&1; then
  if bash scripts/fuzz-smoke.sh; then fuzz=passed; else fuzz=FAILED; status=1; fi
else
  echo "test.sh: no nightly toolchain: fuzz smoke run skipped (rustup toolchain install nightly)" >&2
fi
echo "rivet: $passed passed, $failed failed; fuzz smoke $fuzz"
exit "$status"
