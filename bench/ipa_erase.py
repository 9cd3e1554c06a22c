#!/usr/bin/env python3
"""Run the real ironic-python-agent (IPA) erase clean steps on given devices only.

Run it with the python of a venv holding ironic-python-agent==13.0.0, as root,
inside a mount namespace whose /dev holds only the devices to erase
(bench/clean.sh does both):

    ipa-venv/bin/python bench/ipa_erase.py --step erase_devices --disk /dev/loopN
    ipa-venv/bin/python bench/ipa_erase.py --step erase_devices_metadata \
        --disk /dev/loopN --partition /dev/loopNp1 ...

It calls GenericHardwareManager.erase_devices / erase_devices_metadata with
the node's driver_internal_info as Ironic 39 sets it for automated cleaning
(agent_erase_devices_iterations=1, agent_erase_devices_zeroize=true, secure
erase enabled, no fallback, disk_erasure_concurrency=4; --no-zeroize turns
zeroize off).  Two things are replaced, so that IPA can touch nothing but the
devices given:
- the device listing (list_block_devices_check_skip_list, which runs lsblk
  over the whole machine) returns the --disk devices, plus the --partition
  devices when IPA asks for partitions (the metadata step);
- hardware.dispatch_to_managers calls the GenericHardwareManager directly
  (IPA would load every hardware manager through stevedore and pick the
  highest support; here that is the generic one anyway).
Everything below that is IPA's own: the virtual-media, RAID-member and
read-only checks, safety_check_block_device (lsblk), _ata_erase (hdparm -I,
smartctl), shred, and destroy_disk_metadata (wipefs, dd, sgdisk -Z, fuser).

Prints one JSON line: {"ok": bool, "seconds": float, ...}; seconds is the
step itself, measured in-process (python start and imports excluded).
"""

import argparse
import json
import os
import time


def block_device(hardware, name):
    with open(name, "rb") as f:
        size = f.seek(0, os.SEEK_END)
    return hardware.BlockDevice(name=name, model="bench", size=size,
                                rotational=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--step", required=True,
                    choices=["erase_devices", "erase_devices_metadata"])
    ap.add_argument("--disk", action="append", required=True)
    ap.add_argument("--partition", action="append", default=[])
    ap.add_argument("--no-zeroize", action="store_true")
    args = ap.parse_args()

    from oslo_config import cfg
    from oslo_log import log
    from ironic_python_agent import config  # noqa: F401 (registers options)
    from ironic_python_agent import hardware

    CONF = cfg.CONF
    log.register_options(CONF)
    CONF([], project="ironic-python-agent", default_config_files=[],
         default_config_dirs=[])
    CONF.set_override("use_stderr", True)
    log.setup(CONF, "ironic-python-agent")

    hw = hardware.GenericHardwareManager()
    disks = [block_device(hardware, d) for d in args.disk]
    parts = [block_device(hardware, p) for p in args.partition]

    def listing(node, include_partitions=False, include_wipe=False,
                **kwargs):
        return list(disks) + (list(parts) if include_partitions else [])

    hw.list_block_devices_check_skip_list = listing
    hardware.dispatch_to_managers = \
        lambda method, *a, **kw: getattr(hw, method)(*a, **kw)

    node = {
        "uuid": "00000000-0000-0000-0000-000000000000",
        "properties": {},
        "driver_internal_info": {
            "agent_erase_devices_iterations": 1,
            "agent_erase_devices_zeroize": not args.no_zeroize,
            "agent_continue_if_secure_erase_failed": False,
            "agent_continue_if_ata_erase_failed": False,
            "agent_enable_nvme_secure_erase": True,
            "agent_enable_ata_secure_erase": True,
            "disk_erasure_concurrency": 4,
            "agent_erase_skip_read_only": False,
        },
    }
    out = {"step": args.step}
    t0 = time.monotonic()
    try:
        result = getattr(hw, args.step)(node, [])
        out.update(ok=True, result=result)
    except Exception as e:  # report any failure as the agent would
        out.update(ok=False, error=type(e).__name__, message=str(e))
    out["seconds"] = time.monotonic() - t0
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
