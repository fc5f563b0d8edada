// The instance a run acts on: found by UUID or name, and its power state as the run needs it.
// Deterministic code only.
import type { ApplicationFailure } from '@temporalio/workflow';
import { failure } from './failures.js';
import { HOUSEKEEPING, STORE_STEP, onHost, onMainLocal } from './steps.js';
import type { InstanceRecord } from '../store/store.js';

/**
 * The instance by UUID or name: the inventory first; on a miss, every host rediscovers, then it
 * is looked up again. InstanceNotFound if it is still unknown.
 */
export async function findInstance(ref: string): Promise<InstanceRecord> {
  const lookup = onMainLocal(STORE_STEP, `look up instance ${ref}`);
  const instance = (await lookup.findInstance(ref)) ?? (await rediscover(ref));
  if (!instance) throw instanceNotFound(ref);
  return instance;
}

async function rediscover(ref: string): Promise<InstanceRecord | null> {
  const hosts = await onMainLocal(STORE_STEP, 'list hosts').listHosts();
  await Promise.allSettled(hosts.map((h) => onHost(HOUSEKEEPING.discovery(h), `discover instances on ${h}`).discoverInstances()));
  return onMainLocal(STORE_STEP, `look up instance ${ref}`).findInstance(ref);
}

export function instanceNotFound(ref: string): ApplicationFailure {
  return failure('InstanceNotFound', `no instance "${ref}" on any host known to vmsnap: check the UUID or name (virsh list --all on its host)`);
}

/** The power states an instance may be snapshotted, restored or rolled back in, as Nova allows them. */
export type SettledPowerState = 'running' | 'paused' | 'shutdown';

/** The one guard of every action: the instance is running, paused or shut off, nothing in between. */
export function settled(instanceId: string, powerState: string, action: 'snapshotted' | 'restored' | 'rolled back'): SettledPowerState {
  if (powerState === 'running' || powerState === 'paused' || powerState === 'shutdown') return powerState;
  throw failure('InstanceInvalidState', `instance ${instanceId} is ${powerState}: only running, paused or shut-off instances can be ${action}`);
}
