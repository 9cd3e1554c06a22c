#!/usr/bin/env python3
"""Serve the real ironic-python-agent 13.0.0 REST API with simulated hardware.

A reference agent for checking tests/ironic/drive_agent.py (and rivet's wire
shapes) against IPA itself, without a ramdisk.  Real IPA code is used for:
the WSGI app and cheroot server (api/app.py), token check, command dispatch and
the one-at-a-time rule (ExecuteCommandMixin), sync/async result objects and
their serialisation, the deploy extension (get_deploy_steps,
execute_deploy_step with its version check and error wrapping) and the
GenericHardwareManager's deploy step list and version.

Simulated (no disks are touched, nothing is powered off):
  * write_image sleeps --write-delay seconds, then returns the prepare_image
    result shape; an image_info id starting with "fail" raises
    ImageDownloadError instead; an id starting with "boom" raises a plain
    RuntimeError (wrapped by IPA into DeploymentError).
  * standby: sync (sync), get_partition_uuids (sync), power_off (async,
    sleeps --power-off-delay and returns null), run_image (async, same).
  * log.collect_system_logs returns a tiny tarball made by IPA's own
    gzip_and_b64encode.
No lookup/heartbeat is done.  Run with the venv from `setup.sh --with-ipa`:
  $IPA_VENV/bin/python tests/ironic/ipa_reference_agent.py --port 9999 --token T
It prints one JSON line {"listening": "http://host:port"} when ready and runs
until killed (SIGTERM/SIGINT) or --lifetime seconds pass.
"""

import argparse
import io
import json
import signal
import sys
import threading
import time
import warnings

warnings.simplefilter('ignore')


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, default=9999)
    p.add_argument('--token', default=None,
                   help='agent token; without one every protected call is 401')
    p.add_argument('--write-delay', type=float, default=2.0)
    p.add_argument('--power-off-delay', type=float, default=0.5)
    p.add_argument('--root-uuid', default='0x6beafcd0')
    p.add_argument('--lifetime', type=float, default=3600.0,
                   help='exit after this many seconds (default 3600)')
    return p.parse_args(argv)


def build_agent(args):
    from oslo_config import cfg
    from ironic_python_agent import config
    config.populate_config()
    cfg.CONF([], project='ironic-python-agent', default_config_files=[])

    from stevedore import extension
    from ironic_python_agent import agent as ipa_agent
    from ironic_python_agent import errors
    from ironic_python_agent.extensions import base
    from ironic_python_agent.extensions import deploy
    from ironic_python_agent import hardware
    from ironic_python_agent import utils
    from ironic_python_agent import version

    state = {'partition_uuids': None}

    def write_image(self, node, ports, image_info, configdrive=None):
        image_id = image_info.get('id')
        time.sleep(args.write_delay)
        if str(image_id).startswith('fail'):
            raise errors.ImageDownloadError(image_id, 'simulated failure')
        if str(image_id).startswith('boom'):
            raise RuntimeError('simulated unexpected error')
        state['partition_uuids'] = {'root uuid': args.root_uuid}
        return {'result': 'prepare_image: image (%s) written to device '
                          '/dev/vda root_uuid=%s' % (image_id, args.root_uuid)}

    # Same class name as IPA's so deploy_steps is keyed "GenericHardwareManager".
    hwm_cls = type('GenericHardwareManager', (hardware.GenericHardwareManager,), {
        'wait_for_disks': lambda self: None,
        'full_sync': lambda self: None,
        'write_image': write_image,
    })
    hwm = hwm_cls()
    hardware.get_managers = lambda: [hwm]
    hardware.get_managers_detail = lambda: [
        {'name': 'GenericHardwareManager', 'manager': hwm,
         'support': hardware.HardwareSupport.GENERIC}]

    class StandbyExtension(base.BaseAgentExtension):
        @base.sync_command('sync')
        def sync(self):
            hardware.dispatch_to_all_managers('full_sync')

        @base.sync_command('get_partition_uuids')
        def get_partition_uuids(self):
            return state['partition_uuids'] or {}

        @base.async_command('power_off')
        def power_off(self):
            time.sleep(args.power_off_delay)

        @base.async_command('run_image')
        def run_image(self):
            time.sleep(args.power_off_delay)

    class LogExtension(base.BaseAgentExtension):
        @base.sync_command('collect_system_logs')
        def collect_system_logs(self):
            io_dict = {'journal': io.BytesIO(b'simulated journal\n'),
                       'dmesg': io.BytesIO(b'simulated dmesg\n')}
            return {'system_logs': utils.gzip_and_b64encode(io_dict=io_dict)}

    class Agent(base.ExecuteCommandMixin):
        def __init__(self):
            super().__init__()
            self.listen_address = ipa_agent.Host(args.host, args.port)
            self.agent_token = args.token
            self.started_at = time.time()
            self.version = version.__version__

        get_status = ipa_agent.IronicPythonAgent.get_status
        validate_agent_token = ipa_agent.IronicPythonAgent.validate_agent_token
        list_command_results = ipa_agent.IronicPythonAgent.list_command_results
        get_command_result = ipa_agent.IronicPythonAgent.get_command_result

        def force_heartbeat(self):
            pass

    agent = Agent()
    exts = []
    for name, cls in (('deploy', deploy.DeployExtension),
                      ('standby', StandbyExtension),
                      ('log', LogExtension)):
        obj = cls(agent=agent)
        exts.append(extension.Extension(name, None, cls, obj))
    mgr = extension.ExtensionManager.make_test_instance(exts)
    agent.ext_mgr = mgr
    base._EXT_MANAGER = mgr
    return agent, cfg.CONF


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    agent, conf = build_agent(args)
    from ironic_python_agent.api import app
    api = app.Application(agent, conf)
    api.start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *a: done.set())
    sys.stdout.write(json.dumps({'listening': 'http://%s:%d'
                                 % (args.host, args.port)}) + '\n')
    sys.stdout.flush()
    done.wait(args.lifetime)
    api.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
