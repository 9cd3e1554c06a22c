#!/bin/bash
# Builds the rivet deploy ramdisk: DIR/rivet.kernel + DIR/rivet.initramfs (IPA's names, so they
# drop in as a node's deploy_kernel / deploy_ramdisk) and DIR/kernel-version.
#
#   bash ramdisk/build.sh --out DIR [--rivet PATH] [--compress zstd|xz] [--level N] [--cache DIR] [--keep-tree]
#
#   --rivet PATH   use this rivet binary instead of `cargo build --release` (debug info is stripped)
#   --cache DIR    keep the downloaded kernel packages in DIR and reuse them while current
#   --level N      compression level (default 19; 9 packs ~10x faster for ~12% more bytes)
#
# Run as root on Debian 12 from a clone of rivet; it needs only Debian's package mirrors and
# crates.io. Everything comes from Debian packages: the kernel (linux-image-amd64 and the
# versioned package it depends on, unpacked, never installed), busybox-static, the CA bundle,
# and the few tools rivet still runs, copied with their shared libraries. rivet itself is the
# release build of this tree (or --rivet PATH).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out="" rivet_bin="" compress=zstd level=19 keep=0 cache=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --rivet) rivet_bin=$2; shift 2 ;;
        --compress) compress=$2; shift 2 ;;
        --level) level=$2; shift 2 ;;
        --cache) cache=$2; shift 2 ;;
        --keep-tree) keep=1; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$out" ] || { echo "build.sh: --out DIR is required" >&2; exit 2; }
case "$compress" in zstd|xz) ;; *) echo "build.sh: --compress zstd or xz" >&2; exit 2 ;; esac
say() { echo "build.sh: $*" >&2; }

# Host packages whose files go into the image (tools + libraries are copied from the host, so
# what ldd finds is what runs), and the ones the build itself uses.
host_packages=(busybox-static ca-certificates qemu-utils dosfstools e2fsprogs util-linux
               kmod cpio zstd xz-utils binutils)
missing=()
for p in "${host_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -n "$cache" ]; then mkdir -p "$cache" && cache=$(cd "$cache" && pwd); fi
work=$(mktemp -d /tmp/rivet-ramdisk.XXXXXX)
cleanup() { if [ "$keep" = 1 ]; then say "tree kept in $work/root"; else rm -rf "$work"; fi; }
trap cleanup EXIT
root=$work/root

# --- the kernel: Debian's meta package names the versioned one ------------------------------
mkdir -p "$work/deb"
# download PKG: into $work/deb, through the cache when there is one
download() {
    local file
    file=$(apt-get download --print-uris "$1" | awk 'NR == 1 {print $2}')
    [ -n "$file" ] || { say "apt knows no package $1"; exit 1; }
    if [ -n "$cache" ] && [ -f "$cache/$file" ]; then
        cp "$cache/$file" "$work/deb/"
    else
        (cd "$work/deb" && apt-get download -q "$1" 2>&1 | grep -v unsandboxed >&2 || true)
        [ -f "$work/deb/$file" ] || { say "cannot download $1"; exit 1; }
        if [ -n "$cache" ]; then mkdir -p "$cache" && cp "$work/deb/$file" "$cache/"; fi
    fi
}
download linux-image-amd64
meta=$(ls "$work"/deb/linux-image-amd64_*.deb)
kpkg=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -1)
[ -n "$kpkg" ] || { say "cannot find the kernel package linux-image-amd64 depends on"; exit 1; }
download "$kpkg"
dpkg-deb -x "$work"/deb/"$kpkg"_*.deb "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
kdeb_version=$(dpkg-deb -f "$work"/deb/"$kpkg"_*.deb Version)
say "kernel $kver (package $kpkg $kdeb_version)"
grep -q "^CONFIG_RD_${compress^^}=y" "$work/kernel/boot/config-$kver" \
    || { say "this kernel cannot unpack a $compress initramfs"; exit 1; }

# --- rivet ------------------------------------------------------------------------------------
if [ -z "$rivet_bin" ]; then
    say "cargo build --release"
    (cd "$repo" && cargo build --release --quiet --bin rivet)
    rivet_bin=${CARGO_TARGET_DIR:-$repo/target}/release/rivet
fi
[ -x "$rivet_bin" ] || { say "no rivet binary at $rivet_bin"; exit 1; }

# --- the tree: merged /usr like Debian 12 ------------------------------------------------------
mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,etc,dev,proc,sys,run,tmp,root,var}
ln -s usr/bin "$root/bin"; ln -s usr/sbin "$root/sbin"; ln -s usr/lib "$root/lib"; ln -s usr/lib64 "$root/lib64"
ln -s ../run "$root/var/run"
chmod 1777 "$root/tmp"
# The kernel opens /dev/console for init before devtmpfs is mounted.
mknod -m 600 "$root/dev/console" c 5 1
mknod -m 666 "$root/dev/null" c 1 3

# copy_path SRC: copies a host file to the same path in the tree (following symlinks for the
# content, recreating the symlink name), with /bin, /sbin, /lib under /usr as on the host.
copy_path() {
    local src=$1 dst real
    dst=$(realpath -s "$src"); dst=${dst/#\/bin\//\/usr\/bin\/}; dst=${dst/#\/sbin\//\/usr\/sbin\/}
    dst=${dst/#\/lib\//\/usr\/lib\/}; dst=${dst/#\/lib64\//\/usr\/lib64\/}
    [ -e "$root$dst" ] && return 0
    real=$(readlink -f "$src")
    mkdir -p "$(dirname "$root$dst")"
    cp -L --preserve=mode "$real" "$root$dst"
}
# copy_libs BIN: every library ldd resolves for BIN, and the dynamic loader.
copy_libs() {
    local lib
    for lib in $(ldd "$1" 2>/dev/null | awk '/=>/ {print $3} /^\t\// {print $1}'); do
        if [ -e "$lib" ]; then copy_path "$lib"; fi
    done
}

install -m 755 "$rivet_bin" "$root/usr/bin/rivet"
objcopy --strip-debug "$root/usr/bin/rivet"   # a debug build carries ~100 MB of DWARF
copy_libs "$rivet_bin"
# Tools rivet runs: qemu-img (formats it does not stream), prlimit (caps qemu-img's memory),
# mkfs.vfat / mkswap / mkfs.ext4 (partition images), losetup (partition devices over a loop),
# blkid (the ESP's UUID), lsblk (system logs).
tools=(qemu-img prlimit losetup blkid lsblk mkswap mkfs.vfat mkfs.fat mke2fs mkfs.ext4 mkfs.ext3)
for t in "${tools[@]}"; do
    p=$(command -v "$t") || { say "tool $t not found on the build host"; exit 1; }
    copy_path "$p"
    copy_libs "$p"
done
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/"

# busybox: everything else (sh, mount, ip, udhcpc, modprobe, hwclock, ...). Its links never
# shadow a real tool copied above.
cp /bin/busybox "$root/usr/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ -e "$root/usr/bin/$applet" ] || [ -e "$root/usr/sbin/$applet" ] || ln -s busybox "$root/usr/bin/$applet"
done
# poweroff/reboot: busybox's applets would signal PID 1; rivet expects them to act.
for a in poweroff reboot; do
    rm -f "$root/usr/bin/$a"
    printf '#!/bin/sh\n# rivet ramdisk: flush disks, then %s at once (there are no services to stop).\nsync\nexec /bin/busybox %s -f\n' "$a" "$a" > "$root/usr/sbin/$a"
    chmod 755 "$root/usr/sbin/$a"
done

# CA certificates: rivet's HTTPS client (Ironic, image servers) trusts the system bundle.
mkdir -p "$root/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"

# --- kernel modules: the listed ones and their dependencies -----------------------------------
depmod -b "$work/kernel" "$kver"
mods=$(sed -e 's/#.*//' -e '/^ *$/d' "$here/modules.txt")
kdir=$work/kernel/lib/modules/$kver
mkdir -p "$root/usr/lib/modules/$kver"
for m in $mods; do
    deps=$(modprobe -d "$work/kernel" -S "$kver" --show-depends "$m" 2>&1) \
        || { say "module $m: $deps"; exit 1; }
    for ko in $(echo "$deps" | awk '$1 == "insmod" {print $2}'); do
        rel=${ko#"$kdir"/}
        mkdir -p "$(dirname "$root/usr/lib/modules/$kver/$rel")"
        cp "$ko" "$root/usr/lib/modules/$kver/$rel"
    done
done
cp "$kdir"/modules.builtin "$kdir"/modules.builtin.modinfo "$kdir"/modules.order "$root/usr/lib/modules/$kver/"
# busybox modprobe reads /lib/modules/<release>/modules.{dep,alias}; /lib is a link to usr/lib.
depmod -b "$root" "$kver"

# --- init and its files -----------------------------------------------------------------------
install -m 755 "$here/init" "$root/init"
mkdir -p "$root/etc/udhcpc"
install -m 755 "$here/udhcpc.script" "$root/etc/udhcpc/default.script"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\ndisk:x:6:\n' > "$root/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$root/etc/hosts"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
printf 'rivet-ramdisk\n' > "$root/etc/hostname"
: > "$root/etc/resolv.conf"
rivet_version=$("$rivet_bin" --version 2>/dev/null || echo rivet)
{
    echo "rivet=$rivet_version"
    echo "kernel=$kver"
    echo "kernel_package=$kpkg $kdeb_version"
    echo "busybox=$(dpkg-query -W -f='${Version}' busybox-static)"
    echo "qemu-utils=$(dpkg-query -W -f='${Version}' qemu-utils)"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$root/etc/rivet-ramdisk-release"

# --- pack -------------------------------------------------------------------------------------
# zstd by default: xz packs ~10% smaller, but unpacks ~7x slower, which is seconds at boot.
cp "$work/kernel/boot/vmlinuz-$kver" "$out/rivet.kernel"
find "$root" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +
case "$compress" in
    zstd) comp=(zstd -q "-$level" -T0 --stdout) ;;
    xz) comp=(xz "-$(( level > 9 ? 9 : level ))" --check=crc32 -T0 --stdout) ;;   # the kernel's xz accepts only crc32
esac
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) \
    > "$work/initramfs.cpio"
"${comp[@]}" "$work/initramfs.cpio" > "$out/rivet.initramfs"
echo "$kver" > "$out/kernel-version"

ksize=$(stat -c %s "$out/rivet.kernel"); isize=$(stat -c %s "$out/rivet.initramfs")
usize=$(stat -c %s "$work/initramfs.cpio")
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
say "kernel version: $kver"
say "rivet.kernel    $(mib "$ksize")"
say "rivet.initramfs $(mib "$isize") ($compress; $(mib "$usize") unpacked)"
say "together        $(mib $((ksize + isize))) (budget 64 MiB)"
echo "$kver"
if [ $((ksize + isize)) -gt $((64 << 20)) ]; then
    say "over the 64 MiB budget"; exit 1
fi
