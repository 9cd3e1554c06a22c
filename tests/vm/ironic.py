"""The real Ironic (API + conductor in one process, `ironic`), in its default configuration
except what cannot exist here: no BMC (the test plays it), no keystone, no neutron, sqlite,
and paths and endpoints inside the test's directory and namespace.

The node is of the `manual-management` hardware type with the `fake` power interface and the
`noop` management interface: `fake-hardware`'s management interface accepts no boot device
but PXE, so the `set_boot_to_disk` that follows `install_bootloader` in a UEFI whole-disk
deploy would fail there. Its boot interface is the real `pxe` one: the conductor fetches the
node's deploy_kernel/deploy_ramdisk and writes the PXE (grub) config with the kernel command
line, which the test's BMC boots exactly as written. Cleaning, UEFI boot mode, agent TLS, deep
image inspection and every [agent]/[deploy] setting keep their defaults. The node's inspect
interface is `agent` (in-band inspection through the ramdisk), with the [inspector] hooks at their
defaults."""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

from netenv import HOST_IP

API_PORT = 6385
API = f"http://{HOST_IP}:{API_PORT}"

CONFIG = """[DEFAULT]
auth_strategy = noauth
rpc_transport = none
host = rivet-vm-test
debug = true
log_file = {work}/ironic.log
use_stderr = false
state_path = {work}/ironic-state
my_ip = {host}
enabled_hardware_types = manual-management
enabled_power_interfaces = fake
enabled_management_interfaces = noop
enabled_network_interfaces = noop
# the default list has ipmitool's, which needs the ipmitool command
enabled_vendor_interfaces = no-vendor
# in-band inspection through the agent (what Metal3 uses); the default list has only redfish's
enabled_inspect_interfaces = agent,no-inspect

[api]
host_ip = {host}
port = {port}

[database]
connection = sqlite:///{work}/ironic.sqlite

[dhcp]
dhcp_provider = none

[agent]
deploy_logs_local_path = {work}/deploy-logs

[conductor]
automated_clean = true

[deploy]
default_boot_mode = uefi
http_root = {work}/httpboot
http_url = http://{host}:8080

[pxe]
tftp_root = {work}/tftpboot
tftp_master_path = {work}/tftpboot/master_images
images_path = {work}/images
instance_master_path = {work}/master_images
# the default (nofb vga=normal) plus the serial console the test reads, and fewer download
# retries for the agent (IPA's 9 retries 10 s apart make the wrong-checksum stage take 2 min)
kernel_append_params = nofb vga=normal console=ttyS0 ipa-image-download-connection-retries=1 ipa-image-download-connection-retry-interval=1

[service_catalog]
# the API URL the conductor hands to the agent (no keystone here)
endpoint_override = http://{host}:{port}

[nova]
send_power_notifications = false

[oslo_concurrency]
lock_path = {work}/ironic-locks
"""


class ApiError(Exception):
    pass


class Ironic:
    def __init__(self, venv, work):
        self.venv, self.work = venv, work
        self.conf = os.path.join(work, "ironic.conf")
        self.log = os.path.join(work, "ironic.log")
        self.proc = None

    def start(self, timeout=180):
        for d in ("ironic-state", "httpboot", "tftpboot/master_images", "images",
                  "master_images", "ironic-locks"):
            os.makedirs(os.path.join(self.work, d), exist_ok=True)
        with open(self.conf, "w") as f:
            f.write(CONFIG.format(work=self.work, host=HOST_IP, port=API_PORT))
        bin_ = os.path.join(self.venv, "bin")
        subprocess.run([f"{bin_}/ironic-dbsync", "--config-file", self.conf, "create_schema"],
                       check=True, capture_output=True)
        out = open(os.path.join(self.work, "ironic.out"), "w")
        self.proc = subprocess.Popen([f"{bin_}/ironic", "--config-file", self.conf],
                                     stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ApiError(f"ironic exited with {self.proc.returncode}; see {self.log}")
            with open(os.path.join(self.work, "ironic.out"), errors="replace") as f:
                crash = [ln for ln in f if "Error:" in ln and not ln.startswith(" ")]
            if crash:  # its service manager restarts it forever: give up at once
                raise ApiError(f"ironic failed to start: {crash[-1].strip()}")
            try:
                self.get("/v1/drivers")
                return
            except (OSError, ApiError):
                time.sleep(1)
        raise ApiError(f"the Ironic API did not answer within {timeout} s; see {self.log}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(API + path, data=data, method=method, headers={
            "X-OpenStack-Ironic-API-Version": "latest",
            "Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read()
        except urllib.error.HTTPError as e:
            raise ApiError(f"{method} {path}: HTTP {e.code}: {e.read().decode(errors='replace')}")
        return json.loads(text) if text else None

    def get(self, path):
        return self.request("GET", path)

    def node(self, uuid):
        return self.get(f"/v1/nodes/{uuid}")

    def provision(self, uuid, target, **extra):
        self.request("PUT", f"/v1/nodes/{uuid}/states/provision", dict(target=target, **extra))

    def patch(self, uuid, ops):
        self.request("PATCH", f"/v1/nodes/{uuid}", ops)

    def enroll(self, name, mac, deploy_kernel, deploy_ramdisk):
        node = self.request("POST", "/v1/nodes", {
            "name": name, "driver": "manual-management",
            "deploy_interface": "direct", "boot_interface": "pxe",
            "network_interface": "noop", "power_interface": "fake",
            "management_interface": "noop", "inspect_interface": "agent",
            "driver_info": {"deploy_kernel": deploy_kernel, "deploy_ramdisk": deploy_ramdisk},
            # no cpu_arch: inspection through rivet's inventory must set it
            "properties": {"cpus": 2, "memory_mb": 512, "local_gb": 1,
                           "root_device": {"name": "/dev/vda"}},
        })
        self.request("POST", "/v1/ports", {"node_uuid": node["uuid"], "address": mac})
        return node["uuid"]
