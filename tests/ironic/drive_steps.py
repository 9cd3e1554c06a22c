#!/usr/bin/env python3
"""Drive a running agent's step, boot, rescue and lockdown commands with Ironic's own client.

Built on drive_agent.py (same set-up of Ironic's CONF, node and ports). Prints one JSON
line on stdout; exit 0 when the scenario behaved as asked, 1 otherwise, 3 when Ironic
raised while talking to the agent.

Scenarios:
  clean              get_clean_steps (checked as refresh_steps does), then
                     execute_clean_step --step, polled with the conductor's own
                     _get_completed_command until it is no longer RUNNING.
  service            the same with get_service_steps / execute_service_step.
  deploy             the same with get_deploy_steps / execute_deploy_step (what
                     AgentBootcDeploy.execute_bootc_install does through execute_step).
  install_bootloader AgentClient.install_bootloader (polls by itself).
  finalize_rescue    AgentClient.finalize_rescue with --rescue-password (hashed).
  lockdown           AgentClient.lockdown: sync, system.lockdown, then waits until
                     the agent stops answering.
"""

import argparse
import json
import sys
import time
import traceback

import drive_agent as da


def parse_args(argv):
    p = argparse.ArgumentParser()
    p.add_argument('--agent-url', required=True)
    p.add_argument('--token', default=None)
    p.add_argument('--scenario', required=True,
                   choices=['clean', 'service', 'deploy', 'install_bootloader',
                            'finalize_rescue', 'lockdown'])
    p.add_argument('--step', default='erase_devices_metadata')
    p.add_argument('--step-args', default=None, metavar='JSON')
    p.add_argument('--version', default='auto', metavar='auto|JSON',
                   help='clean_version/service_version to send')
    p.add_argument('--dii', default='{}', metavar='JSON',
                   help='extra driver_internal_info (erase settings)')
    p.add_argument('--properties', default='{}', metavar='JSON',
                   help='node.properties (skip_block_devices, root_device)')
    p.add_argument('--root-uuid', default=None)
    p.add_argument('--efi-uuid', default=None)
    p.add_argument('--target-boot-mode', default='uefi')
    p.add_argument('--rescue-password', default=None)
    p.add_argument('--timeout', type=float, default=120.0)
    p.add_argument('--debug', action='store_true')
    a = p.parse_args(argv)
    # What drive_agent's helpers read.
    a.command_timeout, a.max_command_attempts = 60, 3
    a.verify_ca, a.node_uuid, a.mac = None, da.DEFAULT_NODE_UUID, None
    a.root_device, a.node_impl = None, 'real'
    return a


def poll(ctx, kind, step):
    """Heartbeat-driven polling, as AgentBaseMixin.process_next_step does it."""
    client, node, agent_base = ctx['client'], ctx['node'], ctx['agent_base']
    task = type('Task', (), {})()
    task.node = node
    deadline = time.monotonic() + ctx['args'].timeout
    setattr(node, '%s_step' % kind, step)
    while True:
        commands = client.get_commands_status(node)
        last = commands[-1] if commands else {}
        if last.get('command_status') in ('FAILED', 'CLEAN_VERSION_MISMATCH',
                                          'VERSION_MISMATCH'):
            return last
        done = agent_base._get_completed_command(task, commands, kind)
        if done is not None:
            return done
        if time.monotonic() > deadline:
            raise da.ScenarioFailed('step not finished in time: %r' % (last,))
        time.sleep(0.5)


def steps(ctx, kind):
    args, client, node, ports = (ctx['args'], ctx['client'], ctx['node'],
                                 ctx['ports'])
    res = getattr(client, 'get_%s_steps' % kind)(node, ports)
    cr = res.get('command_result') or {}
    if {'%s_steps' % kind, 'hardware_manager_version'} - set(cr):
        raise da.ScenarioFailed('keys missing: %r' % (cr,))
    listed = [s for ss in cr['%s_steps' % kind].values() for s in ss]
    for s in listed:
        if {'interface', 'step', 'priority'} - set(s):
            raise da.ScenarioFailed('malformed step %r' % (s,))
    version = (cr['hardware_manager_version'] if args.version == 'auto'
               else json.loads(args.version))
    da.set_dii(node, 'hardware_manager_version', version)
    step = next((dict(s) for s in listed if s['step'] == args.step),
                {'interface': 'deploy', 'step': args.step, 'priority': 0})
    step['requires_ramdisk'] = True
    if args.step_args:
        step['args'] = json.loads(args.step_args)
    first = getattr(client, 'execute_%s_step' % kind)(step, node, ports)
    if not first.get('command_status'):
        raise da.ScenarioFailed('bad command result %r' % (first,))
    done = poll(ctx, kind, step)
    return {'steps': listed, 'version': cr['hardware_manager_version'],
            'first_status': first['command_status'], 'final': done}


def main(argv=None):
    args = parse_args(argv)
    CONF, exception, agent_client, agent_base = da.init_ironic(args)
    node, ports = da.make_node_and_ports(args)
    for k, v in json.loads(args.dii).items():
        da.set_dii(node, k, v)
    node.properties = json.loads(args.properties)
    ctx = {'args': args, 'client': agent_client.AgentClient(),
           'node': node, 'ports': ports, 'agent_base': agent_base}
    out = {'scenario': args.scenario}
    try:
        if args.scenario in ('clean', 'service', 'deploy'):
            out.update(steps(ctx, args.scenario))
        elif args.scenario == 'install_bootloader':
            out['final'] = ctx['client'].install_bootloader(
                node, root_uuid=args.root_uuid,
                target_boot_mode=args.target_boot_mode,
                efi_system_part_uuid=args.efi_uuid)
        elif args.scenario == 'finalize_rescue':
            ii = dict(node.instance_info)
            ii['hashed_rescue_password'] = args.rescue_password
            node.instance_info = ii
            out['final'] = ctx['client'].finalize_rescue(node)
        elif args.scenario == 'lockdown':
            CONF.set_override('post_deploy_get_power_state_retry_interval', 1,
                              group='agent')
            ctx['client'].lockdown(node)
            out['final'] = 'locked down'
    except da.ScenarioFailed as e:
        out.update(ok=False, error=str(e))
        da.out(out)
        return 1
    except Exception as e:  # Ironic raised while talking to the agent
        out.update(ok=False, exception=da.exc_info_dict(e),
                   trace=traceback.format_exc())
        da.out(out)
        return 3
    out['ok'] = True
    da.out(out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
