"""The real Ironic (API + conductor in one process, `ironic`), in its default configuration
except what cannot exist here: fake-hardware power and management (the test plays the BMC),
the fake boot interface (no PXE: the test boots the VM itself), the noop network interface, no
keystone, sqlite, and the API on the namespace's address. Cleaning, UEFI boot mode, agent TLS,
deep image inspection and every [agent]/[deploy] setting keep their defaults."""

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
enabled_hardware_types = fake-hardware
enabled_power_interfaces = fake
enabled_management_interfaces = fake
enabled_boot_interfaces = fake
enabled_network_interfaces = noop
# the default list has ipmitool's, which needs the ipmitool command
enabled_vendor_interfaces = no-vendor

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
http_root = {work}/ironic-http
http_url = http://{host}:8080

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
        os.makedirs(os.path.join(self.work, "ironic-state"), exist_ok=True)
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
            "name": name, "driver": "fake-hardware",
            "deploy_interface": "direct", "boot_interface": "fake",
            "network_interface": "noop", "power_interface": "fake",
            "management_interface": "fake",
            "driver_info": {"deploy_kernel": deploy_kernel, "deploy_ramdisk": deploy_ramdisk},
            "properties": {"cpu_arch": "x86_64", "cpus": 2, "memory_mb": 512, "local_gb": 1,
                           "root_device": {"name": "/dev/vda"}},
        })
        self.request("POST", "/v1/ports", {"node_uuid": node["uuid"], "address": mac})
        return node["uuid"]
