"""The lifecycle itself: each stage asks Ironic for a transition, waits for the node to get
there (the BMC thread boots and stops the VM meanwhile), checks the disk or the console, and
records how long it took. The first stage that fails raises Stop with the node's state and
last_error, and `where` names the stage."""

import contextlib
import os
import time

import images
from ironic import ApiError
from netenv import HOST_IP, TAP
from vm import Bmc, Vm

FAILED = {"clean failed", "deploy failed", "error", "inspect failed", "service failed"}


class Stop(Exception):
    pass


class Scenario:
    def __init__(self, ironic, events, *, work, www, raw, disk, mac, vars_file, ramdisk, until,
                 deadline, clean=True, keep_going=False):
        self.ironic, self.events = ironic, events
        self.work, self.www, self.raw, self.disk, self.mac = work, www, raw, disk, mac
        self.until, self.deadline, self.clean = until, deadline, clean
        self.keep_going = keep_going
        self.failures = []  # (stage, why) with keep_going
        self.vm = Vm(work, mac, disk, vars_file, TAP)
        self.kernel = os.path.join(ramdisk, "rivet.kernel")
        self.initrd = os.path.join(ramdisk, "rivet.initramfs")
        self.where = "setup"
        self.rows = []  # (stage, what, seconds, note)
        self.stages = []  # [name, start, end]
        self.bmc = None
        self.uuid = None

    # --- helpers ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name):
        self.where = name
        self.events.add(f"== {name}")
        t = time.monotonic()
        self.stages.append([name, t, None])
        try:
            yield
        finally:
            self.stages[-1][2] = time.monotonic()
        self.rows.append((name, "total", time.monotonic() - t, ""))

    def row(self, what, seconds, note=""):
        self.rows.append((self.where, what, seconds, note))

    def left(self, want):
        return max(5, min(want, self.deadline - time.monotonic()))

    def wait(self, targets, timeout, fail=FAILED):
        timeout = self.left(timeout)
        end = time.monotonic() + timeout
        n = {}
        while time.monotonic() < end:
            if self.bmc and self.bmc.error:
                raise Stop(f"the BMC thread failed: {self.bmc.error!r}")
            n = self.ironic.node(self.uuid)
            state = n["provision_state"]
            if state in targets:
                return n
            if state in fail:
                raise Stop(f"node went to '{state}': {n.get('last_error')}")
            time.sleep(1)
        raise Stop(f"node still '{n.get('provision_state')}' after {timeout:.0f} s (waiting for "
                   f"{'/'.join(targets)}); last_error: {n.get('last_error')}")

    def wait_for(self, what, pred, timeout):
        end = time.monotonic() + self.left(timeout)
        while time.monotonic() < end:
            if self.bmc and self.bmc.error:
                raise Stop(f"the BMC thread failed: {self.bmc.error!r}")
            got = pred()
            if got:
                return got
            n = self.ironic.node(self.uuid)
            if n["provision_state"] in FAILED:
                raise Stop(f"waiting for {what}, node went to '{n['provision_state']}': "
                           f"{n.get('last_error')}")
            time.sleep(1)
        n = self.ironic.node(self.uuid)
        raise Stop(f"no {what} within {timeout} s (node '{n['provision_state']}', "
                   f"last_error: {n.get('last_error')})")

    def boot_rows(self, boot, label):
        """VM power-on to rivet's lookup, with the kernel's own timestamps."""
        seen = boot["seen"]
        k = lambda m: seen[m]["groups"][0] if m in seen else "?"  # noqa: E731
        if "kernel" in seen:
            self.row(f"{label}: power-on -> kernel (firmware)",
                     seen["kernel"]["at"] - boot["started"])
        note = f"kernel: /init at {k('init')} s, lease at {k('lease')} s, rivet at {k('rivet_start')} s"
        if "lookup" in seen:
            self.row(f"{label}: power-on -> lookup", seen["lookup"]["at"] - boot["started"], note)

    def check_erased(self):
        left = images.nonzero_ranges(self.disk)
        if left:
            raise Stop(f"cleaning ended but the disk is not erased: non-zero data at MiB {left}")
        self.events.add("disk: all zeros")

    def set_image(self, path, fmt, checksum=None):
        url = f"http://{HOST_IP}:8080/{os.path.basename(path)}"
        self.ironic.patch(self.uuid, [
            {"op": "add", "path": "/instance_info/image_source", "value": url},
            {"op": "add", "path": "/instance_info/image_os_hash_algo", "value": "sha256"},
            {"op": "add", "path": "/instance_info/image_os_hash_value",
             "value": checksum or images.sha256(path)},
            {"op": "add", "path": "/instance_info/image_disk_format", "value": fmt},
        ])

    # --- stages ----------------------------------------------------------------------------
    def static_network(self):
        """The ramdisk with dracut's static ip= (empty interface: BOOTIF's NIC), no DHCP: it
        must reach Ironic from that address (a lookup for a node Ironic does not know yet)."""
        addr = "192.0.2.50"
        with self.stage("ramdisk with a static ip= and BOOTIF"):
            append = (f"console=ttyS0 ip={addr}::{HOST_IP}:255.255.255.0:rivet-static::none "
                      f"BOOTIF=01-{self.mac.replace(':', '-')} ipa-api-url=http://{HOST_IP}:6385")
            boot = self.vm.start("ramdisk-static", self.kernel, self.initrd, append)
            want = f"{addr} - GET /v1/lookup"
            end = time.monotonic() + self.left(180)
            with open(self.ironic.log, errors="replace") as log:
                seen = ""
                while want not in seen:
                    if time.monotonic() > end or not self.vm.running():
                        raise Stop(f"no lookup from {addr} (see {boot['serial']})")
                    seen = seen[-200:] + log.read()
                    time.sleep(0.5)
            self.row("power-on -> first lookup request", time.monotonic() - boot["started"])
            self.vm.stop()

    def run(self):
        ramdisk_url = f"http://{HOST_IP}:8080"
        self.static_network()
        with self.stage("enroll"):
            self.uuid = self.ironic.enroll("rivet-vm", self.mac, f"{ramdisk_url}/rivet.kernel",
                                           f"{ramdisk_url}/rivet.initramfs")
            self.events.add(f"node {self.uuid}, port {self.mac}")
            if not self.clean:
                self.no_automated_clean()
        bootif = "01-" + self.mac.replace(":", "-")
        append = (f"console=ttyS0 nofb nomodeset vga=normal ipa-api-url=http://{HOST_IP}:6385 "
                  f"BOOTIF={bootif}")
        self.bmc = Bmc(self.ironic, self.vm, self.uuid, (self.kernel, self.initrd), append,
                       self.events, os.path.join(self.work, "tftpboot"))
        self.bmc.start()
        with self.stage("manage"):
            self.ironic.provision(self.uuid, "manage")
            self.wait(["manageable"], 120)
        stages = [self.inspect, self.provide, self.deploy_and_boot, self.undeploy, self.deploy_qcow2,
                  self.deploy_wrong_checksum]
        for run in stages[1:2] if self.until == "heartbeat" else stages:
            try:
                run()
            except (Stop, ApiError) as e:
                if not self.keep_going:
                    raise
                self.failures.append((self.where, str(e)))
                self.events.add(f"FAILED {self.where}: {e}")
                self.recover()
        if self.failures:
            self.where = self.failures[0][0]
            raise Stop("; ".join(f"[{w}] {why}" for w, why in self.failures))

    def recover(self):
        """--keep-going: bring the node back to available, cleaning off, for the next stage."""
        self.where += " / recovering"
        self.clean = False
        n = self.ironic.node(self.uuid)
        state = n["provision_state"]
        if state in ("clean wait", "cleaning", "wait call-back", "deploying"):
            self.ironic.provision(self.uuid, "abort" if "clean" in state else "deleted")
            n = self.wait(["clean failed", "manageable", "available", "deploy failed"], 180,
                          fail=set())
            state = n["provision_state"]
        if n.get("maintenance"):
            self.ironic.request("DELETE", f"/v1/nodes/{self.uuid}/maintenance")
        self.no_automated_clean()
        if state == "clean failed":
            self.ironic.provision(self.uuid, "manage")
            state = self.wait(["manageable"], 120)["provision_state"]
        if state == "manageable":
            self.ironic.provision(self.uuid, "provide")
        elif state in ("deploy failed", "active", "wait call-back"):
            self.ironic.provision(self.uuid, "deleted")
        self.wait(["available"], 180)

    def first_heartbeat(self, label):
        since = time.monotonic()
        self.wait_for("VM boot", lambda: self.vm.last and self.vm.last["started"] >= since - 1
                      and self.vm.last["kind"] == "ramdisk", 120)
        boot = self.vm.last
        self.wait_for("first heartbeat", lambda: (self.events.last_heartbeat or 0) > boot["started"],
                      240)
        self.row(f"{label}: power-on -> first heartbeat",
                 self.events.last_heartbeat - boot["started"])
        self.boot_rows(boot, label)
        return boot

    def no_automated_clean(self):
        self.ironic.patch(self.uuid, [{"op": "add", "path": "/automated_clean",
                                       "value": False}])

    def inspect(self):
        """In-band inspection: Ironic boots the ramdisk with ipa-inspection-callback-url, rivet
        posts its inventory before lookup, Ironic's default hooks set cpu_arch and the ports."""
        with self.stage("inspect (agent, default hooks)"):
            since = time.monotonic()
            self.ironic.provision(self.uuid, "inspect")
            self.wait_for("VM boot", lambda: self.vm.last and self.vm.last["started"] >= since
                          and self.vm.last["kind"] == "ramdisk", 120)
            boot = self.vm.last
            n = self.wait(["manageable"], 300)
            self.row("ramdisk: power-on -> inspected", time.monotonic() - boot["started"])
            self.boot_rows(boot, "ramdisk")
            self.check_inventory(n)

    def check_inventory(self, node):
        """What Ironic stored is rivet's view of this VM, and the hooks applied it."""
        inv = self.ironic.get(f"/v1/nodes/{self.uuid}/inventory")["inventory"]
        macs = [i.get("mac_address") for i in inv.get("interfaces", [])]
        disks = {d["name"]: d for d in inv.get("disks", [])}
        problems = []
        if self.mac not in macs:
            problems.append(f"the node's NIC {self.mac} is not among the interfaces {macs}")
        vda = disks.get("/dev/vda")
        if not vda or vda.get("size") != os.path.getsize(self.disk):
            problems.append(f"/dev/vda of {os.path.getsize(self.disk)} bytes not in {disks}")
        cpu, mem = inv.get("cpu", {}), inv.get("memory", {})
        if cpu.get("count") != self.vm.cpus or cpu.get("architecture") != "x86_64":
            problems.append(f"cpu {cpu} is not {self.vm.cpus} x86_64 CPUs")
        if not 256 << 20 < (mem.get("total") or 0) <= self.vm.memory << 20:
            problems.append(f"memory {mem} does not fit a {self.vm.memory} MiB VM")
        if inv.get("boot", {}).get("current_boot_mode") != "uefi":
            problems.append(f"boot {inv.get('boot')} is not uefi (the VM runs OVMF)")
        vendor = inv.get("system_vendor", {}).get("manufacturer")
        if vendor != "QEMU":
            problems.append(f"system_vendor.manufacturer is {vendor!r}, not 'QEMU'")
        if node["properties"].get("cpu_arch") != "x86_64":
            problems.append(f"the architecture hook did not set cpu_arch: {node['properties']}")
        ports = self.ironic.get(f"/v1/ports?node_uuid={self.uuid}&fields=address")["ports"]
        if [p["address"] for p in ports] != [self.mac]:
            problems.append(f"the node's ports are {ports}, not just {self.mac}")
        if problems:
            raise Stop("inspection: " + "; ".join(problems))
        self.events.add(f"inventory: {len(macs)} NIC(s), disks {sorted(disks)}, "
                        f"{cpu.get('count')} CPUs {cpu.get('model_name')!r}, "
                        f"{mem.get('total', 0) >> 20} MiB, {vendor} "
                        f"{inv.get('system_vendor', {}).get('product_name')}; cpu_arch set")

    def provide(self):
        if not self.clean:
            with self.stage("provide (no cleaning: --no-clean)"):
                self.ironic.provision(self.uuid, "provide")
                self.wait(["available"], 120)
            return
        with self.stage("provide (automated cleaning)"):
            self.ironic.provision(self.uuid, "provide")
            self.first_heartbeat("ramdisk")
            if self.until == "heartbeat":
                return
            self.wait(["available"], 600)
            self.check_erased()

    def deploy_and_boot(self):
        with self.stage("deploy (whole-disk raw + config drive)"):
            self.set_image(self.raw, "raw")
            self.ironic.provision(self.uuid, "active",
                                  configdrive={"meta_data": {"hostname": "rivet-vm"}})
            self.first_heartbeat("ramdisk")
            self.wait(["active"], 600)
        with self.stage("boot from disk"):
            boot = self.wait_for("disk boot", lambda: self.vm.last["kind"] == "disk"
                                 and self.vm.last, 120)
            self.wait_for("marker on the console", lambda: "marker" in boot["seen"], 240)
            uuid = boot["seen"]["marker"]["groups"][0]
            self.row("power-on -> marker", boot["seen"]["marker"]["at"] - boot["started"])
            if uuid != self.uuid:
                raise Stop(f"the disk booted but printed uuid={uuid}, not {self.uuid}")
            fw = boot["seen"].get("firmware_boot")
            if not fw:
                raise Stop("the firmware did not say which boot entry it started")
            num, label, path = fw["groups"]
            self.events.add(f"firmware started {num} \"{label}\" from {path}")
            if label.startswith("UEFI ") or label == "EFI Internal Shell":
                raise Stop(f"the firmware booted its own entry {num} \"{label}\", "
                           "not the one rivet wrote")

    def undeploy(self):
        state = self.ironic.node(self.uuid)["provision_state"]
        if state != "active":
            self.where = "undeploy"
            raise Stop(f"nothing to undeploy: the node is '{state}'")
        if not self.clean:
            with self.stage("undeploy (no cleaning: --no-clean)"):
                self.ironic.provision(self.uuid, "deleted")
                self.wait(["available"], 120)
            return
        with self.stage("undeploy (automated cleaning)"):
            self.ironic.provision(self.uuid, "deleted")
            self.first_heartbeat("ramdisk")
            self.wait(["available"], 600)
            self.check_erased()

    def deploy_qcow2(self):
        # Cleaning was proven twice: skip it from here on to keep the run short.
        self.no_automated_clean()
        with self.stage("deploy qcow2"):
            self.set_image(os.path.join(self.www, "disk.qcow2"), "qcow2")
            self.ironic.provision(self.uuid, "active")
            self.wait(["active"], 600)
            esp = (1 << 20, 40 << 20)
            if not images.same_bytes(self.disk, self.raw, *esp):
                raise Stop("after the qcow2 deploy the disk's ESP differs from the image")
            self.events.add("disk: the ESP matches the image byte for byte")
            self.ironic.provision(self.uuid, "deleted")
            self.wait(["available"], 120)

    def deploy_wrong_checksum(self):
        with self.stage("deploy with a wrong checksum"):
            if images.partition_table(self.disk) is None:
                raise Stop("the disk lost its partition table before the test")
            self.set_image(self.raw, "raw", checksum="0" * 64)
            self.ironic.provision(self.uuid, "active")
            n = self.wait(["deploy failed"], 600, fail=FAILED - {"deploy failed"})
            err = n.get("last_error") or ""
            self.events.add(f"last_error: {err}")
            if "checksum" not in err.lower():
                raise Stop(f"deploy failed, but not for the checksum: {err}")
            table = images.partition_table(self.disk)
            if table:
                raise Stop(f"after the failed deploy the disk still has a {table} partition table")
            self.events.add("disk: no partition table left")
            self.ironic.provision(self.uuid, "deleted")
            self.wait(["available"], 120)

    # --- end -------------------------------------------------------------------------------
    def shutdown(self):
        if self.bmc:
            self.bmc.stop()
        self.vm.stop()

    def print_table(self):
        rows = list(self.rows)
        for field, name, start, end in (self.bmc.steps if self.bmc else []):
            stage = next((n for n, a, b in reversed(self.stages) if a <= start <= (b or 1e18)), "?")
            kind = field.split("_")[0]
            if end is None:
                rows.append((stage, f"{kind} step {name}", time.monotonic() - start,
                             "(still running)"))
            else:
                rows.append((stage, f"{kind} step {name}", end - start, "as Ironic showed it"))
        order = {n: i for i, (n, _, _) in enumerate(self.stages)}
        rows.sort(key=lambda r: (order.get(r[0], 99), r[1] == "total"))
        print("\n%-42s %-44s %8s  %s" % ("stage", "phase", "seconds", "note"))
        for stage, what, secs, note in rows:
            print("%-42s %-44s %8.1f  %s" % (stage[:42], what[:44], secs, note))
        print("(software emulation: qemu -accel tcg, 2 vCPUs, 512 MiB)")
