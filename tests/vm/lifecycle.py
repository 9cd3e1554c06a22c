#!/usr/bin/env python3
"""A whole node lifecycle under the real Ironic conductor, with rivet's ramdisk in a QEMU VM.

    python3 tests/vm/lifecycle.py --ramdisk DIR --venv IRONIC_VENV [--work DIR] [--until STAGE]

DIR holds rivet.kernel and rivet.initramfs (ramdisk/build.sh). Runs as root: it makes its own
network namespace (192.0.2.0/24 inside; nothing leaves it), runs dnsmasq, an image server and
Ironic (API + conductor, one process) there, and plays the node's BMC with QEMU + OVMF.

Stages: the ramdisk with a static ip= (it must reach Ironic without DHCP) -> enroll -> manage -> inspect
(in-band, through rivet's inventory) -> provide (cleaning; the disk must end up zeroed) -> deploy a
whole-disk image with a config drive -> active -> boot from disk through the boot entry rivet
wrote, which prints a marker and the node UUID from the config drive -> undeploy (cleaning) ->
available; then, with automated cleaning off for speed, a qcow2 deploy and a deploy with a wrong
checksum (deploy failed, nothing bootable left). --until heartbeat stops after the first
heartbeat; --no-clean turns cleaning off from the start (to exercise deploy without it);
--keep-going runs every stage even after one failed, and lists all that failed. Exit status 0 when every stage passed; otherwise the output says where it stopped.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import images  # noqa: E402
import netenv  # noqa: E402
from ironic import Ironic  # noqa: E402
from scenario import Scenario, Stop  # noqa: E402
from vm import OVMF_VARS  # noqa: E402

MAC = "52:54:00:a1:b2:c3"


class Events:
    """A timestamped log of what happened, printed as it goes and kept in events.log."""

    def __init__(self, path):
        self.t0 = time.monotonic()
        self.path = path
        self.lock = threading.Lock()
        self.last_heartbeat = None

    def now(self):
        return time.monotonic() - self.t0

    def add(self, msg, quiet=False):
        with self.lock:
            if msg == "heartbeat":
                self.last_heartbeat = time.monotonic()
            line = f"{self.now():7.1f}s  {msg}"
            with open(self.path, "a") as f:
                f.write(line + "\n")
            if not quiet:
                print(line, flush=True)


def outer(args):
    if os.geteuid() != 0:
        print("lifecycle.py: needs root (network namespace, tap, QEMU)", file=sys.stderr)
        return 2
    work = args.work or tempfile.mkdtemp(prefix="rivet-vm.")
    os.makedirs(work, exist_ok=True)
    ns = netenv.Netns(f"rivet-vm-{os.getpid()}")
    ns.create()
    try:
        cmd = ["ip", "netns", "exec", ns.name, sys.executable, os.path.abspath(__file__),
               "--inner", "--work", work, "--ramdisk", args.ramdisk, "--venv", args.venv,
               "--until", args.until, "--timeout", str(args.timeout)]
        if args.no_clean:
            cmd.append("--no-clean")
        if args.keep_going:
            cmd.append("--keep-going")
        try:
            return subprocess.run(cmd, timeout=args.timeout + 60).returncode
        except subprocess.TimeoutExpired:
            print(f"lifecycle.py: STOPPED: the whole run exceeded {args.timeout + 60} s; "
                  f"logs in {work}", flush=True)
            return 1
    finally:
        ns.destroy()


def build_images(args, work, events):
    """The instance images (raw + qcow2), the served files, the node's fresh disk."""
    www = os.path.join(work, "www")
    os.makedirs(www, exist_ok=True)
    for name in ("rivet.kernel", "rivet.initramfs"):
        dst = os.path.join(www, name)
        if not os.path.exists(dst):
            os.symlink(os.path.abspath(os.path.join(args.ramdisk, name)), dst)
    kver = images.unpack_ramdisk(os.path.join(args.ramdisk, "rivet.initramfs"),
                                 os.path.join(work, "ramdisk-tree"))
    initrd = os.path.join(work, "marker.initramfs")
    images.marker_initramfs(os.path.join(work, "ramdisk-tree"), kver, initrd)
    efi = os.path.join(work, "marker.efi")
    images.uki(os.path.join(args.ramdisk, "rivet.kernel"), initrd,
               "console=ttyS0 panic=-1 quiet", efi)
    raw = os.path.join(www, "disk.img")
    images.whole_disk_image(efi, raw)
    images.to_qcow2(raw, os.path.join(www, "disk.qcow2"))
    disk = os.path.join(work, "node-disk.raw")
    images.fresh_disk(disk, 256)
    shutil.rmtree(os.path.join(work, "ramdisk-tree"))
    events.add(f"images: {os.path.getsize(raw) >> 20} MiB whole-disk image "
               f"(UKI {os.path.getsize(efi) >> 20} MiB), kernel {kver}")
    return www, raw, disk


def inner(args):
    work = args.work
    events = Events(os.path.join(work, "events.log"))
    ironic = Ironic(args.venv, work)
    sc = httpd = dnsmasq = None
    try:
        www, raw, disk = build_images(args, work, events)
        httpd = netenv.start_http(www, 8080, os.path.join(work, "http.log"))
        dnsmasq = netenv.start_dnsmasq(work)
        ironic.start()
        events.add("ironic: API and conductor up")
        vars_file = os.path.join(work, "OVMF_VARS.fd")
        shutil.copy(OVMF_VARS, vars_file)
        sc = Scenario(ironic, events, work=work, www=www, raw=raw, disk=disk, mac=MAC,
                      vars_file=vars_file, ramdisk=args.ramdisk, until=args.until,
                      deadline=time.monotonic() + args.timeout, clean=not args.no_clean,
                      keep_going=args.keep_going)
        sc.run()
        ok = True
    except Stop as e:
        events.add(f"STOPPED at {sc.where if sc else 'setup'}: {e}")
        ok = False
    except Exception as e:  # a harness failure: say so just as clearly
        events.add(f"STOPPED at {sc.where if sc else 'setup'} (harness error): {e!r}")
        ok = False
    finally:
        if sc:
            sc.shutdown()
        ironic.stop()
        if dnsmasq:
            dnsmasq.terminate()
        if httpd:
            httpd.shutdown()
    if sc:
        sc.print_table()
    if ok:  # keep the logs, drop the disks and image copies (hundreds of MiB)
        for name in ("node-disk.raw", "www", "tftpboot", "httpboot", "images", "master_images",
                     "marker.efi", "marker.initramfs"):
            path = os.path.join(work, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.unlink(path)
    print(("\nrivet VM lifecycle: PASSED" if ok else
           f"\nrivet VM lifecycle: STOPPED at {sc.where if sc else 'setup'}"), flush=True)
    print(f"logs: {work}/events.log, serial consoles {work}/serial-*.log, "
          f"Ironic {work}/ironic.log, dnsmasq {work}/dnsmasq.log", flush=True)
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ramdisk", required=True, help="directory with rivet.kernel, rivet.initramfs")
    p.add_argument("--venv", required=True, help="the Ironic venv (tests/ironic/setup.sh)")
    p.add_argument("--work", help="where logs and disks go (default: a new temp dir)")
    p.add_argument("--until", choices=["heartbeat", "all"], default="all")
    p.add_argument("--no-clean", action="store_true",
                   help="turn the node's automated cleaning off (to reach deploy without it)")
    p.add_argument("--keep-going", action="store_true",
                   help="after a failed stage, put the node back to available and go on")
    p.add_argument("--timeout", type=int, default=840, help="seconds for the whole run")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.ramdisk = os.path.abspath(args.ramdisk)
    sys.exit(inner(args) if args.inner else outer(args))


if __name__ == "__main__":
    main()
