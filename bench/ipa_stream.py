#!/usr/bin/env python3
"""Drive the real ironic-python-agent (IPA) standby code to write an image.

Run it with the python of a venv holding ironic-python-agent==13.0.0:

    ipa-venv/bin/python bench/ipa_stream.py --url URL --device /dev/loopN \
        --os-hash-algo sha256 --os-hash-value HEX [--call prepare_image] \
        [--disk-format raw|qcow2]

--call prepare_image (default) runs StandbyExtension.prepare_image, the agent
command Ironic sends, exactly as IPA runs it (in its async command thread),
with image_info {disk_format: raw (--disk-format), stream_raw_images: True}.
For a whole-disk raw image that is: _stream_raw_image_onto_device (HTTP GET
with requests, 1 MiB chunks hashed with hashlib and written to the device,
checksum check, `parted`/`sgdisk -e` to move the backup GPT to the end of the
device, `lsblk` for the root UUID), then _validate_partitioning (`partprobe`,
`parted`) and _fix_up_partition_uuids (`hexdump`).

--call stream runs only StandbyExtension._stream_raw_image_onto_device.

--disk-format qcow2 (or any format but raw; prepare_image only) takes IPA's
other path, _cache_and_write_image: _download_image (HTTP GET, hashed, into
the file tempfile.gettempdir()/<image id>, so set TMPDIR to choose its
directory; IPA leaves that file behind), checksum check, then _write_image:
the format inspector's detection and safety check, destroy_disk_metadata
(wipefs, dd over both GPT areas, sgdisk -Z), `qemu-img convert -O
host_device -t directsync -S 0 -W` under prlimit, sync + partprobe and
`sgdisk -e`; then the same _validate_partitioning and
_fix_up_partition_uuids as above.

The only thing replaced is the hardware-manager lookup of the install device
(hardware.dispatch_to_managers('get_os_install_device')): on a real node it
inspects the machine's disks; here it returns --device.  Every other method
name is passed on to the real dispatcher.  Nothing else is mocked: the tools
IPA shells out to (parted, partprobe, sgdisk, lsblk, hexdump; for qcow2 also
qemu-img, wipefs, dd) must be installed (bench/run.sh and bench/formats.sh
install them).

Prints one JSON line on stdout: {"ok": bool, "seconds": float, ...}, where
seconds is the time of the command itself, measured in-process (python start
and IPA's import time are not included: in a running agent they are paid once
at boot), and vmhwm_kib the peak RSS of this python process alone (without
the qemu-img it runs).  Exit code 0 means IPA reported success.
"""

import argparse
import json
import sys
import time


def vmhwm_kib():
    """Peak RSS of this process alone (children not included)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--os-hash-algo", required=True)
    ap.add_argument("--os-hash-value", required=True)
    ap.add_argument("--call", choices=["prepare_image", "stream"],
                    default="prepare_image")
    ap.add_argument("--disk-format", default="raw",
                    help="image_info's disk_format (what Ironic declares)")
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args()
    if args.call == "stream" and args.disk_format != "raw":
        ap.error("--call stream only streams raw images")

    t_import = time.monotonic()
    from oslo_config import cfg
    from oslo_log import log

    # Registers IPA's options (incl. [disk_utils]); must precede the import
    # of the standby extension, whose modules read CONF at import time.
    from ironic_python_agent import config  # noqa: F401
    from ironic_python_agent.extensions import standby
    from ironic_python_agent import hardware

    CONF = cfg.CONF
    log.register_options(CONF)
    # No config files: defaults only, like an agent booted without
    # /etc/ironic-python-agent*.
    CONF([], project="ironic-python-agent", default_config_files=[],
         default_config_dirs=[])
    CONF.set_override("debug", args.debug)
    # IPA's log to stderr, so that stdout only carries the JSON result line
    CONF.set_override("use_stderr", True)
    log.setup(CONF, "ironic-python-agent")
    # Ironic turns md5 on per deployment when the image checksum is md5.
    CONF.set_override("md5_enabled", args.os_hash_algo == "md5")
    # A failed run should fail fast instead of retrying 9 times with a 10 s
    # pause; this does not change the successful path that is measured.
    CONF.set_override("image_download_connection_retries", 0)
    import_seconds = time.monotonic() - t_import

    real_dispatch = hardware.dispatch_to_managers

    def dispatch(method, *a, **kw):
        # The only stand-in: the install-device lookup needs real hardware.
        if method == "get_os_install_device":
            return args.device
        return real_dispatch(method, *a, **kw)

    hardware.dispatch_to_managers = dispatch

    image_info = {
        "id": "rivet-bench-image",
        "urls": [args.url],
        "os_hash_algo": args.os_hash_algo,
        "os_hash_value": args.os_hash_value,
        "disk_format": args.disk_format,
        "stream_raw_images": True,
        "image_type": "whole-disk",
        "node_uuid": "00000000-0000-0000-0000-000000000000",
    }

    ext = standby.StandbyExtension(agent=None)
    result = {"call": args.call, "device": args.device,
              "algo": args.os_hash_algo, "import_seconds": import_seconds}
    t0 = time.monotonic()
    if args.call == "prepare_image":
        cmd = ext.prepare_image(image_info=image_info)
        cmd.join()
        ok = cmd.command_status == "SUCCEEDED"
        result["status"] = cmd.command_status
        result["message"] = str(cmd.command_result if ok
                                else cmd.command_error)
    else:
        # prepare_image sets this before streaming a whole-disk image
        ext.partition_uuids = {}
        try:
            ext._stream_raw_image_onto_device(image_info, args.device)
            ok = True
            result["message"] = json.dumps(ext.partition_uuids)
        except Exception as e:  # report any IPA error as a failed run
            ok = False
            result["message"] = f"{type(e).__name__}: {e}"
    result["seconds"] = time.monotonic() - t0
    result["ok"] = ok
    result["vmhwm_kib"] = vmhwm_kib()
    print(json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
