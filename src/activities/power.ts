// The guest's power around a snapshot, as compensation and the reconciler need it: resume what
// vmsnap paused, thaw what it froze. Both are idempotent, so a retry after a lost completion is
// harmless, and each is recorded as an event after it happened (the pause and the freeze are
// recorded before), so the reconciler knows what a lost run left paused or frozen.
import type { ActivityDeps } from './deps.js';
import { inspectInstance, type InspectInput, type InstanceInspection } from './inspection.js';
import type { Hypervisor } from '../drivers/hypervisor.js';
import { VmsnapError } from '../shared/errors.js';
import type { InstanceActionEvent } from '../store/store.js';

export interface PowerChange {
  instanceId: string;
  /** The snapshot's workflow id and run id. */
  owner: string;
}

export type ResumeOutcome = 'resumed' | 'gone' | 'not-paused';

/** Resumes; an instance that is gone or no longer paused has nothing to resume, and says so. */
export async function resumeIfPresent(hypervisor: Hypervisor, instanceId: string): Promise<ResumeOutcome> {
  try {
    await hypervisor.resume(instanceId);
    return 'resumed';
  } catch (err) {
    if (err instanceof VmsnapError && err.code === 'InstanceNotFound') return 'gone';
    if (err instanceof VmsnapError && err.code === 'InstanceInvalidState') return 'not-paused';
    throw err;
  }
}

/** The recorded resume: the guest runs again (or is gone), and the event says so (`details` say more: by whom, which pause). */
export async function resumeRecorded(
  { hypervisor, store }: Pick<ActivityDeps, 'hypervisor' | 'store'>,
  change: PowerChange,
  details: Record<string, unknown> = {},
): Promise<ResumeOutcome> {
  const outcome = await resumeIfPresent(hypervisor, change.instanceId);
  await store.recordEvent({ instanceId: change.instanceId, action: 'createImage', event: 'resume', requestId: change.owner, details: { outcome, ...details } });
  return outcome;
}

/**
 * The guest's whole pause under one snapshot run, across its attempts and workers: each pause to
 * the resume after it, as the resume event measured it (`pausedMs`, QEMU's STOP to RESUME, which the
 * pause guard records), else as far apart as the two events were recorded (a resume by
 * compensation, the pause watch or the reconciler, which did not watch the pause).
 */
export function pausedMsOfRun(events: Pick<InstanceActionEvent, 'requestId' | 'event' | 'details' | 'createdAt'>[], owner: string): number {
  let total = 0;
  let open: { at: number; pauses: number } | undefined;
  for (const e of events) {
    if (e.requestId !== owner) continue;
    if (e.event === 'pause') {
      if (open) open.pauses++;
      else open = { at: Date.parse(e.createdAt), pauses: 1 };
    } else if (e.event === 'resume' && open) {
      const measured = e.details.pausedMs;
      // A second pause before a resume was a retry's on a guest still paused: the measure then covers only its part.
      total += typeof measured === 'number' && open.pauses === 1 ? measured : Math.max(0, Date.parse(e.createdAt) - open.at);
      open = undefined;
    }
  }
  return total;
}

export function powerActivities(deps: Pick<ActivityDeps, 'hypervisor' | 'store'>) {
  const { hypervisor, store } = deps;
  return {
    /** The power state and, for a running guest when asked, whether it can be copied live: one host step. */
    async inspectInstance(input: InspectInput): Promise<InstanceInspection> {
      return inspectInstance(hypervisor, input);
    },

    /**
     * Compensation's resume. An instance that is gone or no longer paused (shut down, crashed) has
     * nothing to resume: that is reported, not retried forever.
     */
    async resumeInstance(change: PowerChange): Promise<{ resumedAt: number; outcome: ResumeOutcome }> {
      const outcome = await resumeRecorded(deps, change);
      return { resumedAt: Date.now(), outcome };
    },

    /** Compensation for a live copy whose worker may have died between freeze and thaw. */
    async thawInstance({ instanceId, owner }: PowerChange): Promise<void> {
      await hypervisor.thawFilesystems(instanceId);
      await store.recordEvent({ instanceId, action: 'createImage', event: 'thaw', requestId: owner, details: { by: 'compensation' } });
    },
  };
}
