#!/usr/bin/env python3
"""Drive a running agent with the real Ironic conductor client.

Uses ``ironic.drivers.modules.agent_client.AgentClient`` (and, for the deploy
scenario, the conductor's own ``agent_base._get_completed_command``) exactly as
the Ironic conductor does, against an agent listening at ``--agent-url``.  Run
it with the interpreter of the venv made by ``tests/ironic/setup.sh``.

Every scenario prints exactly one JSON line on stdout ({"scenario": ..., "ok":
true|false, ...}).  Exit status: 0 = scenario passed, 1 = scenario assertion
failed, 2 = bad usage, 3 = Ironic raised while talking to the agent (connection
failure, unexpected HTTP error, ...).  Diagnostics go to stderr.

Scenarios:
  deploy           get_deploy_steps (unless --deploy-version none|JSON), then
                   execute_deploy_step write_image with --image-info, then poll
                   get_commands_status the way the conductor does on heartbeat
                   until the step is finished.  Passes on SUCCEEDED, or with
                   --expect-failure TYPE on a failed step whose command_error
                   type is TYPE or whose get_command_error() text contains TYPE.
  deploy_steps     get_deploy_steps, validated like agent_base.refresh_steps.
  partition_uuids  get_partition_uuids (standby.get_partition_uuids, wait=true).
  sync             sync (standby.sync, wait=true).
  power_off        power_off (standby.power_off, wait=false).
  collect_logs     collect_system_logs; decodes the gzip+base64 tarball.
  busy             start write_image (--image-info; should be slow), then call
                   --busy-command while it runs: Ironic must raise AgentInProgress.
  bad_token        send commands with a wrong token: Ironic must raise
                   AgentAPIError with HTTP status 401.
"""

import argparse
import base64
import io
import json
import logging
import sys
import tarfile
import time
import warnings

warnings.simplefilter('ignore')  # eventlet / oslo deprecation noise

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_IRONIC = 0, 1, 2, 3
DEFAULT_NODE_UUID = '1be26c0b-03f2-4d2e-ae87-c02d7f33c123'
DEFAULT_PORT_UUID = '6d85703a-565d-469a-96ce-30b6de53079d'
FINAL_FAILURE_STATUSES = ('FAILED', 'CLEAN_VERSION_MISMATCH', 'VERSION_MISMATCH')

LOG = logging.getLogger('drive_agent')


class ScenarioFailed(Exception):
    """The agent answered, but not the way Ironic expects."""


class UsageError(Exception):
    """Bad command line for the chosen scenario."""


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 2)[2])
    p.add_argument('--agent-url', required=True,
                   help='e.g. http://127.0.0.1:9999 (driver_internal_info.agent_url)')
    p.add_argument('--token', default=None,
                   help='agent token (driver_internal_info.agent_secret_token); '
                        'omitted from requests when not given')
    p.add_argument('--scenario', required=True,
                   choices=['deploy', 'deploy_steps', 'partition_uuids', 'sync',
                            'power_off', 'collect_logs', 'busy', 'bad_token'])
    p.add_argument('--image-info', metavar='FILE.json',
                   help='image_info dict for the write_image deploy step')
    p.add_argument('--configdrive', default=None, metavar='STR|@FILE',
                   help='configdrive argument of write_image (default null); '
                        '@FILE reads the string from FILE')
    p.add_argument('--expect-failure', metavar='TYPE',
                   help='deploy: pass only if the step fails with this error '
                        '(command_error.type == TYPE, or TYPE is a substring '
                        'of get_command_error())')
    p.add_argument('--deploy-version', default='auto',
                   help="deploy_version sent with execute_deploy_step: 'auto' "
                        "(default: hardware_manager_version from a preceding "
                        "get_deploy_steps, like the conductor), 'none' (null), "
                        "or a JSON object")
    p.add_argument('--timeout', type=float, default=300.0,
                   help='seconds to wait for an async command (default 300)')
    p.add_argument('--poll-interval', type=float, default=1.0,
                   help='seconds between get_commands_status polls (default 1; '
                        'the conductor only looks on heartbeats)')
    p.add_argument('--command-timeout', type=int, default=60,
                   help='[agent]command_timeout, HTTP timeout per request (default 60)')
    p.add_argument('--max-command-attempts', type=int, default=3,
                   help='[agent]max_command_attempts (default 3)')
    p.add_argument('--busy-command', default='sync',
                   choices=['sync', 'partition_uuids', 'deploy_steps', 'power_off'],
                   help='busy: the command sent while write_image runs')
    p.add_argument('--no-wait-after-busy', action='store_true',
                   help='busy: do not wait for the running write_image to end')
    p.add_argument('--bad-token', default=None,
                   help='bad_token: token to send (default: --token with a '
                        'suffix, or a fixed 32+ char string)')
    p.add_argument('--verify-ca', default=None,
                   help='driver_internal_info.agent_verify_ca (path or True/False) '
                        'for https agents')
    p.add_argument('--node-uuid', default=DEFAULT_NODE_UUID)
    p.add_argument('--mac', action='append', default=None,
                   help='port MAC address(es) sent as ports (default 52:54:00:12:34:56)')
    p.add_argument('--root-device', default=None, metavar='JSON',
                   help='node.properties.root_device hints sent with the node')
    p.add_argument('--node-impl', choices=['real', 'stub'], default='real',
                   help="'real': ironic.objects.Node/Port (no DB needed); "
                        "'stub': minimal stand-in objects")
    p.add_argument('--debug', action='store_true',
                   help='Ironic DEBUG logging on stderr (shows every request)')
    return p.parse_args(argv)


# ---------------------------------------------------------------- Ironic setup

def init_ironic(args):
    """Initialise ironic.conf.CONF and import the conductor-side modules.

    The tenacity decorators of AgentClient read CONF.agent.* when
    agent_client is imported, so overrides must be set before that import.
    """
    # Ironic logs every connection failure at ERROR; the JSON line already
    # carries the message, so stay quiet unless --debug.
    logging.basicConfig(stream=sys.stderr,
                        level=logging.DEBUG if args.debug else logging.CRITICAL,
                        format='%(levelname)s %(name)s: %(message)s')
    from ironic.conf import CONF
    # No config files: /etc/ironic/ironic.conf must not leak into the test.
    CONF([], project='ironic', default_config_files=[])
    CONF.set_override('command_timeout', args.command_timeout, group='agent')
    CONF.set_override('max_command_attempts', args.max_command_attempts,
                      group='agent')
    CONF.set_override('command_wait_interval', 1, group='agent')
    from ironic.common import exception
    from ironic.drivers.modules import agent_base
    from ironic.drivers.modules import agent_client
    return CONF, exception, agent_client, agent_base


class StubNode(object):
    """The attributes of ironic.objects.Node that AgentClient touches."""

    def __init__(self, **fields):
        self.id = 1
        self.uuid = fields['uuid']
        self.driver = 'fake-hardware'
        self.provision_state = 'deploying'
        self.properties = fields.get('properties', {})
        self.driver_info = fields.get('driver_info', {})
        self.driver_internal_info = fields.get('driver_internal_info', {})
        self.instance_info = fields.get('instance_info', {})
        self.deploy_step = fields.get('deploy_step', {})

    def as_dict(self, secure=False, mask_configdrive=True):
        from oslo_utils import strutils
        d = {k: getattr(self, k) for k in (
            'id', 'uuid', 'driver', 'provision_state', 'properties',
            'driver_info', 'driver_internal_info', 'instance_info',
            'deploy_step')}
        d = json.loads(json.dumps(d))
        if secure:
            d['driver_info'] = strutils.mask_dict_password(d['driver_info'],
                                                           '******')
            iinfo = d.pop('instance_info')
            cd = iinfo.pop('configdrive', None)
            d['instance_info'] = strutils.mask_dict_password(iinfo, '******')
            if cd is not None:
                d['instance_info']['configdrive'] = (
                    '******' if mask_configdrive else cd)
            d['driver_internal_info'] = strutils.mask_dict_password(
                d['driver_internal_info'], '******')
        return d


class StubPort(object):
    def __init__(self, **fields):
        self.__dict__.update(fields)

    def as_dict(self):
        return dict(self.__dict__)


def make_node_and_ports(args):
    dii = {'agent_url': args.agent_url.rstrip('/')}
    if args.token:
        dii['agent_secret_token'] = args.token
    if args.verify_ca is not None:
        dii['agent_verify_ca'] = args.verify_ca
    properties = {}
    if args.root_device:
        properties['root_device'] = json.loads(args.root_device)
    fields = dict(uuid=args.node_uuid,
                  properties=properties,
                  driver_info={'deploy_kernel': 'http://127.0.0.1/ipa.kernel',
                               'deploy_ramdisk': 'http://127.0.0.1/ipa.initramfs'},
                  driver_internal_info=dii,
                  instance_info={},
                  deploy_step={})
    macs = args.mac or ['52:54:00:12:34:56']
    if args.node_impl == 'real':
        from ironic.common import context
        from ironic import objects
        objects.register_all()
        ctx = context.get_admin_context()
        node = objects.Node(ctx, id=1, driver='fake-hardware',
                            provision_state='deploying', **fields)
        ports = [objects.Port(ctx, id=i + 1, node_id=1, address=mac,
                              uuid=DEFAULT_PORT_UUID[:-2] + '%02d' % i,
                              pxe_enabled=True, extra={})
                 for i, mac in enumerate(macs)]
    else:
        node = StubNode(**fields)
        ports = [StubPort(id=i + 1, node_id=1, address=mac,
                          uuid=DEFAULT_PORT_UUID[:-2] + '%02d' % i,
                          pxe_enabled=True, extra={})
                 for i, mac in enumerate(macs)]
    return node, ports


def set_dii(node, key, value):
    # objects.Node tracks changes of dict fields only on reassignment.
    dii = dict(node.driver_internal_info)
    dii[key] = value
    node.driver_internal_info = dii


# -------------------------------------------------------------------- helpers

def out(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + '\n')
    sys.stdout.flush()


def exc_info_dict(e):
    return {'class': type(e).__name__,
            'module': type(e).__module__,
            'message': str(e)}


def load_image_info(args):
    if not args.image_info:
        raise UsageError('--image-info FILE.json is required for scenario %s'
                         % args.scenario)
    try:
        with open(args.image_info) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError('cannot read --image-info %s: %s'
                         % (args.image_info, e))
    if not isinstance(info, dict):
        raise UsageError('--image-info must hold a JSON object')
    return info


def load_configdrive(args):
    cd = args.configdrive
    if cd and cd.startswith('@'):
        with open(cd[1:]) as f:
            cd = f.read()
    return cd


def write_image_step(args):
    return {'interface': 'deploy', 'step': 'write_image',
            'args': {'image_info': load_image_info(args),
                     'configdrive': load_configdrive(args)}}


def check_command_result(res, name, statuses):
    if not isinstance(res, dict):
        raise ScenarioFailed('agent returned a non-object: %r' % (res,))
    missing = {'id', 'command_name', 'command_status', 'command_error',
               'command_result'} - set(res)
    if missing:
        raise ScenarioFailed('command result lacks keys %s: %r'
                             % (sorted(missing), res))
    if res['command_name'] != name:
        raise ScenarioFailed('command_name is %r, expected %r'
                             % (res['command_name'], name))
    if res['command_status'] not in statuses:
        raise ScenarioFailed('command_status of %s is %r, expected one of %s; '
                             'command_error=%r' % (name, res['command_status'],
                                                   list(statuses),
                                                   res.get('command_error')))


def refresh_deploy_steps(ctx):
    """What agent_base.AgentBaseMixin.refresh_steps checks and stores."""
    client, node, ports = ctx['client'], ctx['node'], ctx['ports']
    res = client.get_deploy_steps(node, ports)
    check_command_result(res, 'get_deploy_steps', ('SUCCEEDED',))
    cr = res.get('command_result') or {}
    missing = {'deploy_steps', 'hardware_manager_version'} - set(cr)
    if missing:
        raise ScenarioFailed('get_deploy_steps result lacks %s: %r'
                             % (sorted(missing), cr))
    if not isinstance(cr['deploy_steps'], dict):
        raise ScenarioFailed('deploy_steps must be {manager: [steps]}: %r'
                             % (cr['deploy_steps'],))
    names = []
    for manager, steps in cr['deploy_steps'].items():
        for step in steps:
            miss = {'interface', 'step', 'priority'} - set(step)
            if miss:
                raise ScenarioFailed('deploy step of %s lacks %s: %r'
                                     % (manager, sorted(miss), step))
            names.append((step['interface'], step['step']))
    if ('deploy', 'write_image') not in names:
        raise ScenarioFailed('no deploy.write_image among the deploy steps: %r'
                             % names)
    set_dii(node, 'hardware_manager_version', cr['hardware_manager_version'])
    return res


def wait_for_deploy_step(ctx, step, deadline):
    """Poll like the conductor's heartbeat handler does for deploy steps."""
    client, node, agent_base = ctx['client'], ctx['node'], ctx['agent_base']
    task = type('Task', (), {})()
    task.node = node
    polls = 0
    while True:
        commands = client.get_commands_status(node)
        polls += 1
        if commands:
            done = agent_base._get_completed_command(task, commands, 'deploy')
            if done is not None:
                last = client.get_last_command_status(
                    node, 'deploy.execute_deploy_step')
                if last is None or last.get('id') != done.get('id'):
                    raise ScenarioFailed(
                        'get_last_command_status disagrees with the command '
                        'list: %r vs %r' % (last, done))
                return done, polls
        if time.monotonic() > deadline:
            last = commands[-1] if commands else None
            raise ScenarioFailed('execute_deploy_step not finished within the '
                                 'timeout; last command: %r' % (last,))
        time.sleep(ctx['args'].poll_interval)


def start_write_image(ctx):
    args, client, node, ports = (ctx['args'], ctx['client'], ctx['node'],
                                 ctx['ports'])
    step = write_image_step(args)  # usage errors before any request
    if args.deploy_version == 'auto':
        refresh_deploy_steps(ctx)
    elif args.deploy_version == 'none':
        set_dii(node, 'hardware_manager_version', None)
    else:
        try:
            version = json.loads(args.deploy_version)
        except ValueError as e:
            raise UsageError('--deploy-version is not auto, none or JSON: %s'
                             % e)
        set_dii(node, 'hardware_manager_version', version)
    # The conductor's current step is its own out-of-band write_image step.
    node.deploy_step = {'interface': 'deploy', 'step': 'write_image',
                        'priority': 80, 'argsinfo': None}
    res = client.execute_deploy_step(step, node, ports)
    # agent_base.execute_step only requires a truthy command_status.
    if not res.get('command_status'):
        raise ScenarioFailed('agent returned bad command result: %r' % (res,))
    check_command_result(res, 'execute_deploy_step',
                         ('RUNNING', 'SUCCEEDED') + FINAL_FAILURE_STATUSES)
    return step, res


# ------------------------------------------------------------------ scenarios

def sc_deploy(ctx):
    args, agent_client = ctx['args'], ctx['agent_client']
    t0 = time.monotonic()
    step, first = start_write_image(ctx)
    final, polls = wait_for_deploy_step(ctx, step, t0 + args.timeout)
    status = final['command_status']
    report = {'command_status': status,
              'command_result': final.get('command_result'),
              'command_error': final.get('command_error'),
              'initial_status': first['command_status'],
              'deploy_version': ctx['node'].driver_internal_info.get(
                  'hardware_manager_version'),
              'polls': polls,
              'elapsed': round(time.monotonic() - t0, 3)}
    if status in FINAL_FAILURE_STATUSES:
        report['error_text'] = agent_client.get_command_error(final)
    if args.expect_failure:
        if status not in FINAL_FAILURE_STATUSES:
            raise ScenarioFailed('expected failure %s but the step ended %s: %r'
                                 % (args.expect_failure, status,
                                    final.get('command_result')), report)
        err = final.get('command_error')
        etype = err.get('type') if isinstance(err, dict) else None
        if (etype != args.expect_failure
                and args.expect_failure not in report['error_text']):
            raise ScenarioFailed('step failed with %s: %r, expected %s'
                                 % (etype, report['error_text'],
                                    args.expect_failure), report)
        return report
    if status != 'SUCCEEDED':
        raise ScenarioFailed('deploy step ended %s: %s'
                             % (status, report.get('error_text')), report)
    cr = final.get('command_result') or {}
    if cr.get('deploy_step', {}).get('step') != 'write_image' \
            or 'deploy_result' not in cr:
        raise ScenarioFailed('command_result lacks deploy_result/deploy_step: '
                             '%r' % (cr,), report)
    return report


def sc_deploy_steps(ctx):
    res = refresh_deploy_steps(ctx)
    return {'command_status': res['command_status'],
            'command_result': res['command_result']}


def sc_partition_uuids(ctx):
    res = ctx['client'].get_partition_uuids(ctx['node'])
    check_command_result(res, 'get_partition_uuids', ('SUCCEEDED',))
    if not isinstance(res['command_result'], dict):
        raise ScenarioFailed('command_result must be an object: %r' % (res,))
    return {'command_status': res['command_status'],
            'command_result': res['command_result']}


def sc_sync(ctx):
    res = ctx['client'].sync(ctx['node'])
    check_command_result(res, 'sync', ('SUCCEEDED',))
    return {'command_status': res['command_status'],
            'command_result': res['command_result']}


def sc_power_off(ctx):
    res = ctx['client'].power_off(ctx['node'])
    # wait=false: RUNNING, or already finished.
    check_command_result(res, 'power_off', ('RUNNING', 'SUCCEEDED'))
    return {'command_status': res['command_status'],
            'command_result': res['command_result'],
            'command_error': res['command_error']}


def sc_collect_logs(ctx):
    res = ctx['client'].collect_system_logs(ctx['node'])
    check_command_result(res, 'collect_system_logs', ('SUCCEEDED',))
    cr = res['command_result'] or {}
    if 'system_logs' not in cr:
        raise ScenarioFailed('command_result lacks system_logs: %r'
                             % (list(cr),))
    raw = base64.b64decode(cr['system_logs'])
    with tarfile.open(fileobj=io.BytesIO(raw), mode='r:gz') as tar:
        members = sorted(m.name for m in tar.getmembers())
    return {'command_status': res['command_status'],
            'archive_bytes': len(raw), 'members': members}


def sc_busy(ctx):
    args, client, node, exception = (ctx['args'], ctx['client'], ctx['node'],
                                     ctx['exception'])
    t0 = time.monotonic()
    step, first = start_write_image(ctx)
    if first['command_status'] != 'RUNNING':
        raise ScenarioFailed('write_image was not RUNNING after the POST (%s); '
                             'use a slower image' % first['command_status'])
    calls = {
        'sync': lambda: client.sync(node),
        'partition_uuids': lambda: client.get_partition_uuids(node),
        'deploy_steps': lambda: client.get_deploy_steps(node, ctx['ports']),
        'power_off': lambda: client.power_off(node),
    }
    raised = None
    try:
        res = calls[args.busy_command]()
    except exception.AgentInProgress as e:
        raised = e
    report = {'busy_command': args.busy_command}
    if raised is None:
        last = client.get_last_command_status(node, 'deploy.execute_deploy_step')
        raise ScenarioFailed('Ironic did not raise AgentInProgress; %s returned '
                             '%r (write_image now: %r)'
                             % (args.busy_command, res,
                                last and last.get('command_status')), report)
    report['exception'] = exc_info_dict(raised)
    if 'Agent is busy' not in str(raised) and 'agent is busy' not in str(raised).lower():
        raise ScenarioFailed('AgentInProgress without the agent\'s busy '
                             'message: %s' % raised, report)
    if not args.no_wait_after_busy:
        final, _ = wait_for_deploy_step(ctx, step, t0 + args.timeout)
        report['write_image_final_status'] = final['command_status']
    return report


def sc_bad_token(ctx):
    client, node, exception, args = (ctx['client'], ctx['node'],
                                     ctx['exception'], ctx['args'])
    bad = args.bad_token or ((args.token or '') + '-wrong'
                             if args.token else 'x' * 40)
    set_dii(node, 'agent_secret_token', bad)
    report = {}
    # POST path (_command): HTTP >= 400 -> AgentAPIError(status=401, error=faultstring)
    try:
        res = client.get_partition_uuids(node)
    except exception.AgentInProgress as e:
        raise ScenarioFailed('401 was turned into AgentInProgress: %s' % e)
    except exception.AgentAPIError as e:
        report['post'] = exc_info_dict(e)
    else:
        raise ScenarioFailed('POST with a bad token was accepted: %r' % (res,))
    # GET path (get_commands_status) does not check the status code: it
    # indexes ['commands'] of the fault body, so a 401 surfaces as KeyError.
    try:
        res = client.get_commands_status(node)
    except Exception as e:  # noqa: any class is reported
        report['get'] = exc_info_dict(e)
    else:
        raise ScenarioFailed('GET /v1/commands/ with a bad token returned %r'
                             % (res,), report)
    msg = report['post']['message']
    if 'HTTP status code 401' not in msg:
        raise ScenarioFailed('AgentAPIError is not for HTTP 401: %s' % msg,
                             report)
    report['post_faultstring_ok'] = msg.endswith(
        'with error: 401 Unauthorized: Token invalid.')
    return report


SCENARIOS = {
    'deploy': sc_deploy,
    'deploy_steps': sc_deploy_steps,
    'partition_uuids': sc_partition_uuids,
    'sync': sc_sync,
    'power_off': sc_power_off,
    'collect_logs': sc_collect_logs,
    'busy': sc_busy,
    'bad_token': sc_bad_token,
}


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    try:
        CONF, exception, agent_client, agent_base = init_ironic(args)
    except ImportError as e:
        out({'scenario': args.scenario, 'ok': False,
             'error': 'cannot import Ironic (%s); run with the python of the '
                      'venv printed by tests/ironic/setup.sh' % e})
        return EXIT_USAGE
    node, ports = make_node_and_ports(args)
    ctx = {'args': args, 'client': agent_client.AgentClient(), 'node': node,
           'ports': ports, 'exception': exception,
           'agent_client': agent_client, 'agent_base': agent_base}
    result = {'scenario': args.scenario, 'agent_url': args.agent_url}
    try:
        report = SCENARIOS[args.scenario](ctx)
    except UsageError as e:
        result.update({'ok': False, 'error': str(e)})
        out(result)
        sys.stderr.write('drive_agent: %s\n' % e)
        return EXIT_USAGE
    except ScenarioFailed as e:
        result.update({'ok': False, 'error': e.args[0]})
        if len(e.args) > 1 and isinstance(e.args[1], dict):
            result.update(e.args[1])
        out(result)
        sys.stderr.write('drive_agent: %s FAILED: %s\n'
                         % (args.scenario, e.args[0]))
        return EXIT_FAIL
    except exception.IronicException as e:
        result.update({'ok': False, 'exception': exc_info_dict(e),
                       'error': '%s: %s' % (type(e).__name__, e)})
        out(result)
        sys.stderr.write('drive_agent: %s: Ironic raised %s: %s\n'
                         % (args.scenario, type(e).__name__, e))
        return EXIT_IRONIC
    except Exception as e:  # unexpected: still one JSON line
        LOG.debug('unexpected exception', exc_info=True)
        result.update({'ok': False, 'exception': exc_info_dict(e),
                       'error': 'unexpected %s: %s' % (type(e).__name__, e)})
        out(result)
        sys.stderr.write('drive_agent: %s: unexpected %s: %s\n'
                         % (args.scenario, type(e).__name__, e))
        return EXIT_IRONIC
    result['ok'] = True
    result.update(report)
    out(result)
    return EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
