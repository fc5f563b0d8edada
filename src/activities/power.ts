// Power state of the instance on its host. Pause and resume are idempotent, so a retry after a
// lost completion is harmless; the workflow reads the prior state before pausing, so that a
// retried pause can never make a running VM look "already paused" and stay paused. Each pause is
// recorded as an event before it happens, and each resume after: if a snapshot's workflow is lost
// (terminated) in between, the reconciler knows the guest was paused by vmsnap and resumes it.
import type { ActivityDeps } from './deps.js';
import { ensureRoomForCopy } from './disk.js';
import type { LiveCopySupport, PowerState } from '../drivers/hypervisor.js';
import { VmsnapError } from '../shared/errors.js';
import type { DiskFormat } from '../shared/types.js';

export interface PowerChange {
  instanceId: string;
  /** The snapshot's workflow id and run id. */
  owner: string;
}

/** A cold copy's pause: with the copy it is for, whose room is checked before the guest stops. */
export interface PauseInput extends PowerChange {
  /** Absent in runs started before the check (their copy is not measured). */
  imageId?: string;
  diskFormat?: DiskFormat;
  compress?: boolean;
}

export function powerActivities(deps: Pick<ActivityDeps, 'hypervisor' | 'store' | 'diskTool' | 'snapshotsDir'>) {
  const { hypervisor, store } = deps;
  return {
    async getPowerState(instanceId: string): Promise<PowerState> {
      return (await hypervisor.getInstance(instanceId)).powerState;
    },

    async pauseInstance({ instanceId, owner, imageId, diskFormat, compress }: PauseInput): Promise<{ pausedAt: number }> {
      if (imageId && diskFormat) await ensureRoomForCopy(deps, { instanceId, imageId, diskFormat, compress: compress ?? false, live: false });
      await store.recordEvent({ instanceId, action: 'createImage', event: 'pause', requestId: owner, details: {} });
      await hypervisor.pause(instanceId);
      return { pausedAt: Date.now() };
    },

    /** Compensation for a live copy whose worker may have died between freeze and thaw. */
    async thawInstance({ instanceId, owner }: PowerChange): Promise<void> {
      await hypervisor.thawFilesystems(instanceId);
      await store.recordEvent({ instanceId, action: 'createImage', event: 'thaw', requestId: owner, details: { by: 'compensation' } });
    },

    async liveCopySupport(instanceId: string): Promise<{ supported: boolean; reason?: string }> {
      return hypervisor.liveCopySupport(instanceId);
    },

    /** The power state and, for a running guest when asked, whether it can be copied live: one host step. */
    async inspectInstance(input: InspectInput): Promise<InstanceInspection> {
      return inspectInstance(hypervisor, input);
    },

    /**
     * Runs on every path, also as compensation. An instance that is gone or no longer paused
     * (shut down, crashed) has nothing to resume: that is reported, not retried forever.
     */
    async resumeInstance({ instanceId, owner }: PowerChange): Promise<{ resumedAt: number; outcome: ResumeOutcome }> {
      const outcome = await resumeIfPresent(hypervisor, instanceId);
      const resumedAt = Date.now();
      await store.recordEvent({ instanceId, action: 'createImage', event: 'resume', requestId: owner, details: { outcome } });
      return { resumedAt, outcome };
    },
  };
}

export interface InstanceInspection {
  powerState: PowerState;
  /** Asked for and running only. */
  liveSupport?: LiveCopySupport;
}

export interface InspectInput {
  instanceId: string;
  liveSupport: boolean;
}

/** What a snapshot's slot holder hands over with the slot: the instance as it found it, when it could look. */
export interface SlotAcquired {
  inspection?: InstanceInspection;
}

export async function inspectInstance(hypervisor: ActivityDeps['hypervisor'], input: InspectInput): Promise<InstanceInspection> {
  const { powerState } = await hypervisor.getInstance(input.instanceId);
  if (!input.liveSupport || powerState !== 'running') return { powerState };
  return { powerState, liveSupport: await hypervisor.liveCopySupport(input.instanceId) };
}

export type ResumeOutcome = 'resumed' | 'gone' | 'not-paused';

/** Resumes; an instance that is gone or no longer paused has nothing to resume, and says so. */
export async function resumeIfPresent(hypervisor: ActivityDeps['hypervisor'], instanceId: string): Promise<ResumeOutcome> {
  try {
    await hypervisor.resume(instanceId);
    return 'resumed';
  } catch (err) {
    if (err instanceof VmsnapError && err.code === 'InstanceNotFound') return 'gone';
    if (err instanceof VmsnapError && err.code === 'InstanceInvalidState') return 'not-paused';
    throw err;
  }
}
