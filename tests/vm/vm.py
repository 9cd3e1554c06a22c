"""The node: one QEMU VM (q35, OVMF with a private variables file, a virtio disk backed by a
file, a virtio NIC on the namespace's tap), and the BMC the test plays for it.

The BMC follows Ironic's fake power interface through the conductor's own log ("Successfully
set node X power state to power on by rebooting."): a power-on boots the VM, from the ramdisk
while the node waits for its agent (cleaning, deploying until boot_instance) and from its disk
otherwise; a power-off pulls the plug. A VM that powers itself off just stops."""

import os
import re
import subprocess
import threading
import time

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
POWER_RE = re.compile(r"Successfully set node (\S+) power state to (power on|power off) by ([^.]+)\.")


class Vm:
    def __init__(self, work, mac, disk, vars_file, tap, memory_mib=512, cpus=2):
        self.work, self.mac, self.disk, self.vars = work, mac, disk, vars_file
        self.tap, self.memory, self.cpus = tap, memory_mib, cpus
        self.proc = None
        self.boots = []  # dicts: kind, serial, started (monotonic), ended

    def start(self, kind, kernel=None, initrd=None, append=None):
        self.stop()
        serial = os.path.join(self.work, f"serial-{len(self.boots) + 1}-{kind}.log")
        # -cpu max: AES-NI, SHA, SSSE3... as on any real server; the default qemu64 model has
        # none, and the crypto behind TLS, checksums and the erase keystream falls back to
        # plain C, many times slower under emulation.
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-cpu", "max",
               "-m", str(self.memory), "-smp", str(self.cpus),
               "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
               "-serial", f"file:{serial}",
               "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
               "-drive", f"if=pflash,format=raw,file={self.vars}",
               "-drive", f"file={self.disk},format=raw,if=none,id=disk0",
               "-device", "virtio-blk-pci,drive=disk0",
               "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
               "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}",
               "-object", "rng-random,filename=/dev/urandom,id=rng0",
               "-device", "virtio-rng-pci,rng=rng0"]
        if kernel:
            cmd += ["-kernel", kernel, "-initrd", initrd, "-append", append]
        err = open(serial + ".qemu", "w")
        self.proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT)
        self.boots.append({"kind": kind, "serial": serial, "started": time.monotonic(),
                           "ended": None, "seen": {}})
        return self.boots[-1]

    def running(self):
        if self.proc is None:
            return False
        if self.proc.poll() is None:
            return True
        if self.boots and self.boots[-1]["ended"] is None:
            self.boots[-1]["ended"] = time.monotonic()
        return False

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.running()
        self.proc = None

    @property
    def last(self):
        return self.boots[-1] if self.boots else None


class Bmc(threading.Thread):
    """Watches the conductor's power actions and the node; drives the VM."""

    def __init__(self, ironic, vm, node, ramdisk, append, events, tftp_root):
        super().__init__(daemon=True)
        self.ironic, self.vm, self.node_uuid = ironic, vm, node
        self.kernel, self.initrd = ramdisk
        self.append = append
        self.tftp_root = tftp_root
        self.last_append = None
        self.events = events
        self.node = {}
        self.stopping = threading.Event()
        self.error = None
        self._pending_on = None
        self._log = open(ironic.log, "r", errors="replace")
        self._log.seek(0, os.SEEK_END)
        self._was_running = False
        self.steps = []  # [field, step name, start, end]: clean/deploy steps as Ironic shows them

    def run(self):
        try:
            while not self.stopping.is_set():
                self._poll_node()
                self._read_log()
                self._act()
                self._watch_vm()
                time.sleep(0.5)
        except Exception as e:  # reported by the scenario, which checks bmc.error
            self.error = e
            self.events.add(f"BMC failed: {e!r}")

    def stop(self):
        self.stopping.set()
        self.join(10)
        self.vm.stop()

    def _poll_node(self):
        try:
            n = self.ironic.node(self.node_uuid)
        except Exception:
            return
        old, self.node = self.node, n
        for key in ("provision_state", "power_state", "clean_step", "deploy_step",
                    "last_error"):
            if old.get(key) != n.get(key) and (old or n.get(key)):
                val = n.get(key)
                if isinstance(val, dict):
                    val = val.get("step") or "-"
                self.events.add(f"{key}: {val}")
        for key in ("clean_step", "deploy_step"):
            name = (n.get(key) or {}).get("step")
            if name != (old.get(key) or {}).get("step"):
                now = time.monotonic()
                for s in self.steps:
                    if s[0] == key and s[3] is None:
                        s[3] = now
                if name:
                    self.steps.append([key, name, now, None])
        dii, odii = n.get("driver_internal_info") or {}, old.get("driver_internal_info") or {}
        if dii.get("agent_url") and dii.get("agent_url") != odii.get("agent_url"):
            self.events.add(f"agent_url: {dii['agent_url']}")
        if dii.get("agent_last_heartbeat") != odii.get("agent_last_heartbeat") \
                and dii.get("agent_last_heartbeat"):
            self.events.add("heartbeat", quiet=True)

    def _read_log(self):
        for line in self._log.readlines():
            m = POWER_RE.search(line)
            if m and m.group(1) == self.node_uuid:
                self.events.add(f"BMC: {m.group(2)} ({m.group(3)})")
                if m.group(2) == "power off":
                    self._pending_on = None
                    if self.vm.running():
                        self.events.add("BMC: pulling the plug")
                    self.vm.stop()
                else:
                    self._pending_on = time.monotonic()

    def _act(self):
        if self._pending_on is None:
            return
        n = self.ironic.node(self.node_uuid)
        self.node = n
        state = n.get("provision_state")
        step = (n.get("deploy_step") or {}).get("step")
        if state in ("cleaning", "clean wait", "inspecting", "inspect wait") or (
                state in ("deploying", "wait call-back") and step != "boot_instance"):
            boot = self.vm.start("ramdisk", *self.pxe_boot())
        elif state == "active" or step == "boot_instance":
            boot = self.vm.start("disk")
        elif time.monotonic() - self._pending_on < 10:
            return  # a state this BMC does not know yet: look again
        else:
            self.events.add(f"BMC: power on in {state!r}: booting the disk")
            boot = self.vm.start("disk")
        self._pending_on = None
        self._was_running = True
        self.events.add(f"VM: boot {len(self.vm.boots)} from {boot['kind']} "
                        f"({os.path.basename(boot['serial'])})")

    def pxe_boot(self):
        """What the node would network-boot: the kernel, ramdisk and command line of the
        "deploy" entry of the grub config Ironic's pxe boot interface wrote for it."""
        d = os.path.join(self.tftp_root, self.node_uuid)
        try:
            with open(os.path.join(d, "config")) as f:
                text = f.read()
        except OSError:
            text = ""
        m = re.search(r"menuentry \"deploy\"\s*\{\s*linux\S*\s+(\S+)\s+([^\n]*)\n\s*initrd\S*\s+(\S+)",
                      text)
        if not m:
            self.events.add(f"BMC: no PXE config for the node in {d}: booting "
                            f"{self.kernel} with: {self.append}")
            return self.kernel, self.initrd, self.append
        kernel, append, initrd = m.groups()
        # paths in the config are relative to the TFTP root (or absolute under it)
        kernel, initrd = (os.path.join(self.tftp_root, p.lstrip("/")) if not
                          os.path.exists(p) else p for p in (kernel, initrd))
        if self.last_append != append:
            self.events.add(f"BMC: PXE command line: {append}")
            self.last_append = append
        return kernel, initrd, append

    def _watch_vm(self):
        boot = self.vm.last
        if boot is None:
            return
        running = self.vm.running()
        scan_serial(boot)
        if self._was_running and not running:
            self.events.add(f"VM: boot {len(self.vm.boots)} ended (powered off)")
        self._was_running = running


# What the serial console says, with the kernel's timestamp where there is one.
SERIAL_MARKS = {
    "kernel": re.compile(r"EFI stub: |Linux version "),
    "init": re.compile(r"\[\s*([\d.]+)\] Run /init as init process"),
    "rivet_start": re.compile(r"rivet-init: starting rivet at ([\d.]+) s"),
    "lease": re.compile(r"\[\s*([\d.]+)\] rivet-init: \S+: lease"),
    "lookup": re.compile(r"lookup succeeded"),
    "marker": re.compile(r"RIVET-VM-MARKER uuid=(\S+)"),
    "firmware_boot": re.compile(r'BdsDxe: starting (Boot[0-9A-Fa-f]{4}) "([^"]*)" from (\S+)'),
    "power_off": re.compile(r"reboot: Power down"),
}


def scan_serial(boot):
    """Records, once, when each mark first appears in this boot's serial log."""
    try:
        with open(boot["serial"], "r", errors="replace") as f:
            text = f.read()
    except OSError:
        return
    for name, rx in SERIAL_MARKS.items():
        if name in boot["seen"]:
            continue
        m = rx.search(text)
        if m:
            boot["seen"][name] = {"at": time.monotonic(), "groups": m.groups()}
