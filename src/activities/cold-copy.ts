// Nova's cold snapshot in one host step: suspend, qemu-img convert of the root disk into the
// snapshot's temp dir, resume. Whatever can wait is kept out of the pause: the disk, its size and
// the target are looked up before it, and the copy's check comes after the resume (no fsync: see
// ConvertedDisk.bootId). The guest is resumed on every path but a dead worker's (then the
// workflow's compensation or the reconciler resume it: the pause is recorded before it happens).
import { Context, ApplicationFailure } from '@temporalio/activity';
import { ensureRoomForCopy } from './copy-room.js';
import type { ActivityDeps } from './deps.js';
import { keepHeartbeating } from './heartbeat.js';
import { resumeRecorded, type ResumeOutcome } from './power.js';
import { copyingInto, finishCopy, privateTarget, type ConvertedDisk } from './snapshot-files.js';
import type { RootDisk } from '../drivers/hypervisor.js';
import { VmsnapError } from '../shared/errors.js';
import type { FailureType } from '../shared/failures.js';
import type { DiskFormat, StepProgress } from '../shared/types.js';

export interface ColdCopyDiskInput {
  instanceId: string;
  imageId: string;
  diskFormat: DiskFormat;
  compress: boolean;
  /** The snapshot run: the pause and the resume are recorded under it. */
  owner: string;
  /** Pause a running guest for the copy (and resume it); false for a paused or shut-off one. */
  pause: boolean;
  /** -U: read past QEMU's image lock; for a guest whose QEMU runs (paused). */
  forceShare: boolean;
  /** With pause: the copy is given up and the guest resumed when it stays paused longer (0: no limit). */
  pauseBudgetMs: number;
}

export interface ColdCopiedDisk extends ConvertedDisk {
  /** From the pause to the resume, ms (0 without a pause). */
  guestPauseMs: number;
  /** What the resume found, with a pause: resumed, or the guest gone or no longer paused. */
  resumeOutcome?: ResumeOutcome;
}

// A resume that fails is tried again this often before the step gives up (the workflow's
// compensation then resumes, with retries of its own).
const RESUME_ATTEMPTS = 3;

/** Heartbeats of a convert that reads `bytesTotal`: qemu-img's percent scaled to bytes. */
export function convertHeartbeats(bytesTotal: number): { onProgress: (percent: number) => void; stop: () => void } {
  let percent = 0;
  const stop = keepHeartbeating((): StepProgress => ({ phase: 'converting', percent, bytesDone: Math.round((bytesTotal * percent) / 100), bytesTotal }));
  return { onProgress: (p) => (percent = p), stop };
}

/** The size the guest sees: a copy reads the whole virtual disk, so this is its total. */
export async function virtualSizeOf({ diskTool }: Pick<ActivityDeps, 'diskTool'>, disk: RootDisk): Promise<number> {
  return (await diskTool.info(disk.path, { format: disk.format, forceShare: true })).virtualSize;
}

/** The recorded resume, retried a little here: a retry of the whole step would pause the guest again. */
async function resumeAfterCopy(deps: Pick<ActivityDeps, 'hypervisor' | 'store'>, instanceId: string, owner: string): Promise<ResumeOutcome> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await resumeRecorded(deps, { instanceId, owner });
    } catch (err) {
      if (attempt >= RESUME_ATTEMPTS) {
        throw ApplicationFailure.create({
          type: 'HypervisorError' satisfies FailureType,
          message: `the guest could not be resumed after the copy: ${(err as Error).message}`,
          nonRetryable: true, // the workflow's compensation resumes it
        });
      }
      await new Promise((r) => setTimeout(r, 200 * attempt));
    }
  }
}

/** Suspend, convert, resume in one step. A failure after the resume says so (details.guestResumed). */
export async function coldCopyDisk(deps: ActivityDeps, input: ColdCopyDiskInput): Promise<ColdCopiedDisk> {
  const { hypervisor, diskTool, store, snapshotsDir } = deps;
  const { instanceId, owner } = input;
  const disk = await hypervisor.rootDisk(instanceId);
  await ensureRoomForCopy(deps, { ...input, live: false });
  const bytesTotal = await virtualSizeOf(deps, disk);
  const progress = convertHeartbeats(bytesTotal);
  const budget = new AbortController();
  let pausedAt = 0;
  let resumedAt = 0;
  let resumeOutcome: ResumeOutcome | undefined;
  try {
    return await copyingInto(snapshotsDir, input.imageId, async () => {
      const target = await privateTarget(snapshotsDir, input);
      let overBudget: NodeJS.Timeout | undefined;
      if (input.pause) {
        await store.recordEvent({ instanceId, action: 'createImage', event: 'pause', requestId: owner, details: {} });
        await hypervisor.pause(instanceId);
        pausedAt = Date.now();
        if (input.pauseBudgetMs > 0) overBudget = setTimeout(() => budget.abort(), input.pauseBudgetMs);
      }
      try {
        await diskTool.convert({
          source: disk.path,
          sourceFormat: disk.format,
          target,
          targetFormat: input.diskFormat,
          compress: input.compress,
          forceShare: input.forceShare,
          onProgress: progress.onProgress,
          signal: AbortSignal.any([Context.current().cancellationSignal, budget.signal]),
          fsync: false, // a temp file: see ConvertedDisk.bootId
        });
      } finally {
        clearTimeout(overBudget);
        if (input.pause) {
          resumeOutcome = await resumeAfterCopy(deps, instanceId, owner);
          resumedAt = Date.now();
        }
      }
      const copy = await finishCopy(deps, target, input.diskFormat, bytesTotal);
      return { ...copy, guestPauseMs: resumedAt - pausedAt, ...(resumeOutcome ? { resumeOutcome } : {}) };
    });
  } catch (err) {
    throw resumedFailure(err, input, resumeOutcome !== undefined && budget.signal.aborted, resumeOutcome !== undefined);
  } finally {
    progress.stop();
  }
}

/** A failure of the step, saying whether the guest runs again already (the workflow need not resume it). */
function resumedFailure(err: unknown, input: ColdCopyDiskInput, overBudget: boolean, resumed: boolean): unknown {
  if (overBudget) {
    return ApplicationFailure.create({
      type: 'PauseBudgetExceeded' satisfies FailureType,
      message: `the copy took longer than the pause budget of ${input.pauseBudgetMs} ms; the guest was resumed`,
      nonRetryable: true,
      details: [{ guestResumed: true }],
    });
  }
  if (resumed && err instanceof VmsnapError) err.details.guestResumed = true;
  return err;
}
