"""The test's own network and services: a network namespace holding bridge br0 (192.0.2.1/24)
with a tap for the VM, dnsmasq handing out 192.0.2.100-200 on it, and a small HTTP server for
the images. Nothing here touches the host's interfaces: every link lives in the namespace."""

import http.server
import os
import signal
import subprocess
import threading
import time

HOST_IP = "192.0.2.1"
TAP = "tap0"


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


class Netns:
    """Created and destroyed from outside; the rest of the test runs inside it."""

    def __init__(self, name):
        self.name = name

    def create(self):
        run(["ip", "netns", "add", self.name])
        ns = ["ip", "netns", "exec", self.name]
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"],
            ["ip", "addr", "add", f"{HOST_IP}/24", "dev", "br0"],
            ["ip", "link", "set", "br0", "up"],
            ["ip", "tuntap", "add", "dev", TAP, "mode", "tap"],
            ["ip", "link", "set", TAP, "master", "br0"],
            ["ip", "link", "set", TAP, "up"],
        ):
            run(ns + cmd)

    def destroy(self):
        """Ends what is still running in the namespace (all of it started by this test), then
        deletes it."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), sig)
                except (ProcessLookupError, ValueError):
                    pass
            if not pids:
                break
            time.sleep(1)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def start_dnsmasq(work):
    """DHCP only (port=0: no DNS), bound to br0."""
    log = os.path.join(work, "dnsmasq.log")
    cmd = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
           "--interface=br0", "--bind-interfaces", "--user=root", "--group=root",
           "--dhcp-range=192.0.2.100,192.0.2.200,255.255.255.0,1h", "--dhcp-authoritative",
           "--no-ping",  # no 3 s ARP probe before each offer: the namespace holds one VM
           f"--dhcp-leasefile={work}/dnsmasq.leases", "--log-dhcp", f"--log-facility={log}",
           f"--pid-file={work}/dnsmasq.pid"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log + ".err", "w"))


class _Handler(http.server.SimpleHTTPRequestHandler):
    log_file = None

    def log_message(self, fmt, *args):
        if self.log_file:
            with open(self.log_file, "a") as f:
                f.write("%s %s\n" % (time.strftime("%H:%M:%S"), fmt % args))


def start_http(root, port, log_file):
    """Serves root on HOST_IP:port from a thread; returns the server (shutdown() stops it)."""
    handler = type("H", (_Handler,), {"log_file": log_file})

    def make(*a, **kw):
        return handler(*a, directory=root, **kw)

    srv = http.server.ThreadingHTTPServer((HOST_IP, port), make)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv
