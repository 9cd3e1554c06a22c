#!/usr/bin/env bash
# Writes the seed inputs of fuzz/corpus/<target>/ (seed-* files) with the same tools the tests
# read disks back with. Run once; the corpus (seeds plus what runs found) is kept in git.
set -euo pipefail
cd "$(dirname "$0")"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
c=corpus
mkdir -p $c/{qcow2,partition_tables,checksum_file,config_drive_image,config_drive_string,image_info,cmdline,compressed}

# qcow2: a 64 KiB disk with two data clusters, plain (512-byte clusters) and compressed.
truncate -s 64K "$t/raw"
head -c 4096 /dev/urandom | dd of="$t/raw" bs=4096 seek=2 conv=notrunc status=none
head -c 4096 /dev/urandom | dd of="$t/raw" bs=4096 seek=10 conv=notrunc status=none
qemu-img convert -f raw -O qcow2 -o cluster_size=512 "$t/raw" $c/qcow2/seed-512
qemu-img convert -c -f raw -O qcow2 -o cluster_size=4096 "$t/raw" $c/qcow2/seed-compressed

# Partition tables: a small GPT (sgdisk), an MBR with an extended partition (sfdisk).
truncate -s 48K $c/partition_tables/seed-gpt
sgdisk -a 1 -o -n 1:34:45 -n 2:46:60 $c/partition_tables/seed-gpt >/dev/null
truncate -s 64K $c/partition_tables/seed-mbr
printf 'label: dos\nstart=2, size=10, type=83\nstart=20, size=80, type=5\nstart=22, size=10, type=83\nstart=40, size=10, type=82\n' \
  | sfdisk -q $c/partition_tables/seed-mbr >/dev/null

# Checksum files: the first line is the image's name, the rest the file.
h=$(printf x | sha256sum | cut -d' ' -f1)
printf 'os.img\n%s  os.img\n' "$h" > $c/checksum_file/seed-gnu
printf 'os.img\n# c\nSHA256 (./os.img) = %s\n' "$h" > $c/checksum_file/seed-bsd
printf 'os.img\n%s\n' "$h" > $c/checksum_file/seed-bare

# Config drives: ISO 9660 as Nova/Ironic make them, and vfat.
mkdir -p "$t/cd/openstack/latest"
echo '{"uuid": "x"}' > "$t/cd/openstack/latest/meta_data.json"
genisoimage -quiet -R -J -V config-2 -o $c/config_drive_image/seed-iso "$t/cd"
mkfs.vfat -n CONFIG-2 -C $c/config_drive_image/seed-vfat 128 >/dev/null
mcopy -s -i $c/config_drive_image/seed-vfat "$t/cd/openstack" ::/
gzip -c $c/config_drive_image/seed-iso | base64 -w0 > $c/config_drive_string/seed-iso
gzip -c $c/config_drive_image/seed-vfat | base64 -w0 > $c/config_drive_string/seed-vfat

# image_info as Ironic sends it.
printf '%s' '{"id": "5b2d", "urls": ["http://h/os.img", "https://m/os.img"], "os_hash_algo": "sha512", "os_hash_value": "http://h/SHA512SUMS", "disk_format": "qcow2", "container_format": "bare", "stream_raw_images": true, "image_type": "whole-disk-image", "proxies": {"http": "http://p:3128"}, "no_proxy": "h,.local", "node_uuid": "n"}' > $c/image_info/seed-whole
printf '%s' '{"id": "p", "urls": ["http://h/root.img"], "checksum": "0123456789abcdef0123456789abcdef", "image_type": "partition", "root_mb": "10", "swap_mb": 0, "ephemeral_mb": null, "deploy_boot_mode": "uefi", "disk_label": "gpt", "preserve_ephemeral": "false", "proxies": null}' > $c/image_info/seed-partition

# Kernel command lines.
printf 'BOOT_IMAGE=/vmlinuz ipa-api-url=http://192.0.2.1:6385 ipa-insecure=1 ipa-agent-token=abc ipa-image-download-connection-timeout=30 quiet' > $c/cmdline/seed-ipa
printf 'ipa-listen="[::1]:9999" ipa-permitted-image-formats=raw,qcow2 ipa-unknown-option=x ipa-md5-enabled=yes' > $c/cmdline/seed-quoted

# Compressed images: a small GPT disk and a qcow2 in each codec, xz with several blocks, two
# concatenated gzip members, and a zstd stream behind a skippable frame (as pzstd writes).
cp $c/partition_tables/seed-gpt "$t/disk"
gzip -c "$t/disk" > $c/compressed/seed-gpt.gz
xz -c -T2 --block-size=16KiB "$t/disk" > $c/compressed/seed-gpt.xz
zstd -q -c "$t/disk" > $c/compressed/seed-gpt.zst
zstd -q -c $c/qcow2/seed-512 > $c/compressed/seed-qcow2.zst
{ gzip -c "$t/disk"; gzip -c "$t/disk"; } > $c/compressed/seed-two-members.gz
{ printf '\x50\x2a\x4d\x18\x04\x00\x00\x00abcd'; zstd -q -c "$t/disk"; } > $c/compressed/seed-skippable.zst
