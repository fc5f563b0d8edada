// Starting a guest after a restore and confirming it runs; the heartbeat every power step carries.
import type { ActivityDeps } from './deps.js';
import { keepHeartbeating } from './heartbeat.js';
import type { PowerState } from '../drivers/hypervisor.js';
import { VmsnapError } from '../shared/errors.js';

/** What showed the started guest runs: its agent answering, or (no agent) the domain running. */
export type ConfirmedBy = 'guest-agent' | 'power-state' | 'none';

/**
 * Starts the guest in `state` and waits until it runs (and its agent answers, if it has one).
 * startedAt is when libvirt had started it: the confirmation is not downtime.
 */
export async function startAndConfirm(
  { hypervisor, settings }: Pick<ActivityDeps, 'hypervisor' | 'settings'>,
  instanceId: string,
  state: PowerState,
): Promise<{ startedAt: number; confirmedBy: ConfirmedBy }> {
  if (state !== 'running' && state !== 'paused') return { startedAt: Date.now(), confirmedBy: 'none' };
  await hypervisor.start(instanceId, { paused: state === 'paused' });
  const startedAt = Date.now();
  const deadline = startedAt + settings.restoreStartTimeoutMs;
  const agent = state === 'running' && (await hypervisor.hasGuestAgent(instanceId));
  for (;;) {
    const now = (await hypervisor.getInstance(instanceId)).powerState;
    if (now === state && (!agent || (await hypervisor.pingGuestAgent(instanceId)))) return { startedAt, confirmedBy: agent ? 'guest-agent' : 'power-state' };
    if (now === 'shutdown' || now === 'crashed') {
      throw new VmsnapError('InstanceInvalidState', `instance ${instanceId} is ${now} right after it was started on the restored disk`);
    }
    if (Date.now() > deadline) {
      const what = `${state}${agent ? ' with its guest agent answering' : ''}`;
      throw new VmsnapError('InstanceInvalidState', `instance ${instanceId} is not ${what} ${settings.restoreStartTimeoutMs} ms after it was started`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * Runs a power step with heartbeats from its start, so a dead worker's step (or a task handed to a
 * worker that was gone) moves on after the heartbeat timeout, not the step's whole timeout.
 */
export async function beating<T>(step: () => Promise<T>, details: () => Record<string, unknown> = () => ({ phase: 'power' })): Promise<T> {
  const stop = keepHeartbeating(details, 1000);
  try {
    return await step();
  } finally {
    stop();
  }
}
