"""The images the test deploys and the disk it starts from.

The instance image is a whole-disk GPT image whose ESP holds a unified kernel image (Debian's
kernel from the ramdisk + systemd-boot's EFI stub + a tiny initramfs). That initramfs prints a
marker with the node UUID it reads from the config drive, then powers off: booting it proves
the image was written, the config drive was written, and the firmware found the boot entry."""

import gzip
import hashlib
import os
import shutil
import subprocess

MIB = 1 << 20
MARKER = "RIVET-VM-MARKER"
STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
OLD_DATA = b"RIVET-VM-OLD-DATA-" * 227  # 4086 bytes, written all over the fresh disk

MARKER_INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r ko; do insmod "$ko"; done < /modules.load
echo "@MARKER@ booted from disk, kernel $(uname -r) at $(cut -d' ' -f1 /proc/uptime) s"
dev=""
for i in $(seq 50); do
    dev=$(findfs LABEL=config-2 2>/dev/null) && break
    usleep 200000
done
mkdir -p /mnt
uuid=none
if [ -n "$dev" ] && { mount -o ro -t iso9660 "$dev" /mnt || mount -o ro -t vfat "$dev" /mnt; }; then
    uuid=$(grep -o '"uuid": *"[^"]*"' /mnt/openstack/latest/meta_data.json | cut -d'"' -f4)
fi
echo "@MARKER@ uuid=$uuid configdrive=${dev:-none}"
sync
poweroff -f
"""


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def unpack_ramdisk(initramfs, dest):
    """The rivet ramdisk's tree (its busybox and kernel modules are reused for the marker)."""
    os.makedirs(dest, exist_ok=True)
    data = subprocess.run(["zstd", "-dc", initramfs], check=True, capture_output=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=data, cwd=dest, check=True)
    kver = os.listdir(os.path.join(dest, "usr/lib/modules"))[0]
    return kver


def marker_initramfs(tree, kver, out):
    """busybox + virtio/iso9660/vfat modules + MARKER_INIT, as a gzip'd newc cpio."""
    root = out + ".d"
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "mnt", "lib/modules"):
        os.makedirs(os.path.join(root, d))
    shutil.copy2(os.path.join(tree, "usr/bin/busybox"), os.path.join(root, "bin/busybox"))
    applets = run([os.path.join(root, "bin/busybox"), "--list"]).stdout.decode().split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", a))
    deps = run(["modprobe", "-d", tree, "-S", kver, "--show-depends", "-a",
                "virtio_pci", "virtio_blk", "isofs", "vfat", "nls_cp437", "nls_ascii"]).stdout
    order = []
    for line in deps.decode().splitlines():
        parts = line.split()
        if parts and parts[0] == "insmod" and parts[1] not in order:
            order.append(parts[1])
    load = []
    for ko in order:
        name = os.path.basename(ko)
        shutil.copy2(ko, os.path.join(root, "lib/modules", name))
        load.append(f"/lib/modules/{name}")
    with open(os.path.join(root, "modules.load"), "w") as f:
        f.write("\n".join(load) + "\n")
    with open(os.path.join(root, "init"), "w") as f:
        f.write(MARKER_INIT.replace("@MARKER@", MARKER))
    os.chmod(os.path.join(root, "init"), 0o755)
    os.mknod(os.path.join(root, "dev/console"), 0o600 | 0o020000, os.makedev(5, 1))
    names = run(["find", ".", "-mindepth", "1"], cwd=root).stdout
    cpio = run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], input=names, cwd=root).stdout
    with open(out, "wb") as f:
        f.write(gzip.compress(cpio, 6))
    shutil.rmtree(root)


def uki(kernel, initrd, cmdline, out):
    """A unified kernel image with systemd-boot's stub (objcopy: Debian 12 has no ukify)."""
    work = out + ".parts"
    os.makedirs(work, exist_ok=True)
    with open(f"{work}/cmdline", "w") as f:
        f.write(cmdline)
    with open(f"{work}/osrel", "w") as f:
        f.write('NAME="rivet test OS"\nID=rivet-test\nPRETTY_NAME="rivet VM test marker"\n')
    run(["objcopy",
         "--add-section", f".osrel={work}/osrel", "--change-section-vma", ".osrel=0x20000",
         "--add-section", f".cmdline={work}/cmdline", "--change-section-vma", ".cmdline=0x30000",
         "--add-section", f".linux={kernel}", "--change-section-vma", ".linux=0x2000000",
         "--add-section", f".initrd={initrd}", "--change-section-vma", ".initrd=0x3000000",
         STUB, out])
    shutil.rmtree(work)


def whole_disk_image(efi_binary, out, size_mib=48, esp_mib=40):
    """GPT: an ESP with EFI/BOOT/BOOTX64.EFI, then a small data partition."""
    esp = out + ".esp"
    for p in (out, esp):
        if os.path.exists(p):
            os.unlink(p)
    run(["truncate", "-s", f"{size_mib}M", out])
    run(["sgdisk", "-n", f"1:2048:+{esp_mib}M", "-t", "1:ef00", "-c", "1:EFI System",
         "-n", "2:0:0", "-t", "2:8300", "-c", "2:root", out])
    run(["mkfs.vfat", "-n", "ESP", "-C", esp, str(esp_mib * 1024)])
    run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"])
    run(["mcopy", "-i", esp, efi_binary, "::/EFI/BOOT/BOOTX64.EFI"])
    with open(esp, "rb") as src, open(out, "r+b") as dst:
        dst.seek(MIB)
        shutil.copyfileobj(src, dst)
        dst.seek((1 + esp_mib) * MIB)
        dst.write(b"rivet test root partition\n" * 100)
    os.unlink(esp)


def to_qcow2(raw, out):
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out])


def fresh_disk(path, size_mib):
    """The node's disk before cleaning: a partition table and data everywhere."""
    if os.path.exists(path):
        os.unlink(path)
    run(["truncate", "-s", f"{size_mib}M", path])
    run(["sgdisk", "-n", "1:2048:0", "-t", "1:8300", "-c", "1:old data", path])
    with open(path, "r+b") as f:
        for off in range(MIB, size_mib * MIB - MIB, 8 * MIB):
            f.seek(off)
            f.write(OLD_DATA * 16)


def nonzero_ranges(path, limit=5):
    """Where the file still holds non-zero bytes (up to `limit` MiB-granular ranges)."""
    found = []
    with open(path, "rb") as f:
        off = 0
        zero = bytes(MIB)
        while len(found) < limit:
            chunk = f.read(MIB)
            if not chunk:
                break
            if chunk != zero[:len(chunk)]:
                found.append(off // MIB)
            off += len(chunk)
    return found


def partition_table(path):
    """'gpt', 'mbr' or None: what the firmware would find on the disk."""
    with open(path, "rb") as f:
        head = f.read(1024)
        f.seek(-512, os.SEEK_END)
        tail = f.read(512)
    if head[512:520] == b"EFI PART" or tail[:8] == b"EFI PART":
        return "gpt"
    if head[510:512] == b"\x55\xaa":
        return "mbr"
    return None


def same_bytes(disk, image, start, length):
    with open(disk, "rb") as a, open(image, "rb") as b:
        a.seek(start)
        b.seek(start)
        return a.read(length) == b.read(length)
