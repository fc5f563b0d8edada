// What a snapshot reads of its instance before the copy: the power state and, for a running
// guest, whether the host can copy it live. The host's slot holder reads it as it takes the slot
// and hands it over with the slot (one trip through Temporal less).
import type { Hypervisor, LiveCopySupport, PowerState } from '../drivers/hypervisor.js';

export interface InspectInput {
  instanceId: string;
  /** Also ask whether a running guest can be copied live. */
  liveSupport: boolean;
}

export interface InstanceInspection {
  powerState: PowerState;
  /** Asked for and running only. */
  liveSupport?: LiveCopySupport;
}

/** What a snapshot's slot holder hands over with the slot: the instance as it found it, when it could look. */
export interface SlotAcquired {
  inspection?: InstanceInspection;
}

export async function inspectInstance(hypervisor: Hypervisor, input: InspectInput): Promise<InstanceInspection> {
  const { powerState } = await hypervisor.getInstance(input.instanceId);
  if (!input.liveSupport || powerState !== 'running') return { powerState };
  return { powerState, liveSupport: await hypervisor.liveCopySupport(input.instanceId) };
}
