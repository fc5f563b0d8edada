// Nova's cold snapshot in one host step: suspend, qemu-img convert of the root disk into the
// snapshot's temp dir, resume. The copy and the resume belong to the pause guard, a process of its
// own on the host (worker/pause-guard.ts) that outlives this worker: it resumes the guest at the
// copy's end, at the pause budget's end and on this step's cancellation, whatever happens to the
// worker, and leaves its outcome in the temp dir. The step looks up what can wait out of the pause
// (the disk, its size, the room for the copy, while the guard starts), records the pause and makes
// it once the guard watches QEMU's events, says "go", follows the guard, records the resume with
// QEMU's measure of the pause, and checks the copy after the resume (no fsync: see
// ConvertedDisk.bootId).
//
// A retried step (its worker died, or stopped) first looks for its run's guard in the temp dir: it
// adopts the copy that guard finished in this boot, or follows the guard while it still copies. It
// starts over only when the guard died without an outcome or never began its copy, and then first
// resumes the pause a dead guard may hold. The result's guestPauseMs is the guest's whole pause
// under the run, across attempts and workers (pausedMsOfRun).
import { Context, ApplicationFailure } from '@temporalio/activity';
import { randomUUID } from 'node:crypto';
import { dirname } from 'node:path';
import { ensureRoomForCopy } from './copy-room.js';
import type { ActivityDeps } from './deps.js';
import { snapshotDisks, type ChosenDisk } from './disk-choice.js';
import { keepHeartbeating } from './heartbeat.js';
import { followPauseGuard, GuardProcess, isWorkerShutdown, launchPauseGuard } from './pause-guard-launch.js';
import {
  isGuardRunning,
  readGuardJob,
  readGuardState,
  writeGuardJob,
  type GuardCopy,
  type GuardOutcome,
  type GuardState,
  type PauseGuardJob,
} from './pause-guard-files.js';
import { pausedMsOfRun, resumeRecorded, type ResumeOutcome } from './power.js';
import { finishCopy, privateDataTarget, privateTarget, removeSnapshotFiles, snapshotDir, type ConvertedDisk } from './snapshot-files.js';
import { bootId } from '../drivers/files.js';
import type { RootDisk } from '../drivers/hypervisor.js';
import { VmsnapError } from '../shared/errors.js';
import { ERRORS, type ErrorCode, type FailureType } from '../shared/failures.js';
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
  /** A set's data disks (target devices): copied after the root disk inside the same pause. */
  dataDisks?: string[];
}

/** A data disk's copy, beside the root disk's. */
export interface CopiedDataDisk extends ConvertedDisk {
  dev: string;
}

export interface ColdCopiedDisk extends ConvertedDisk {
  /** The guest's whole pause under this run, ms: each pause as QEMU's STOP and RESUME events stamped it (0 without a pause). */
  guestPauseMs: number;
  /** What the resume found, with a pause: resumed, or the guest gone or no longer paused. */
  resumeOutcome?: ResumeOutcome;
  /** The data disks' copies (input.dataDisks), in that order. */
  dataDisks?: CopiedDataDisk[];
}

/** A guard that ended with an outcome, and its job. */
interface Ended {
  job: PauseGuardJob;
  outcome: GuardOutcome;
}

/** Heartbeats of a convert that reads `bytesTotal` (known now, or later through `total`): qemu-img's percent scaled to bytes. */
export function convertHeartbeats(bytesTotal: number): { onProgress: (percent: number) => void; total: (bytes: number) => void; stop: () => void } {
  let percent = 0;
  let total = bytesTotal;
  const stop = keepHeartbeating((): StepProgress => ({ phase: 'converting', percent, bytesDone: Math.round((total * percent) / 100), bytesTotal: total }));
  return { onProgress: (p) => (percent = p), total: (bytes) => (total = bytes), stop };
}

/** The size the guest sees: a copy reads the whole virtual disk, so this is its total. */
export async function virtualSizeOf({ diskTool }: Pick<ActivityDeps, 'diskTool'>, disk: RootDisk): Promise<number> {
  return (await diskTool.info(disk.path, { format: disk.format, forceShare: true })).virtualSize;
}

/** Suspend, convert, resume in one step. A failure after the resume says so (details.guestResumed). */
export async function coldCopyDisk(deps: ActivityDeps, input: ColdCopyDiskInput): Promise<ColdCopiedDisk> {
  const signal = Context.current().cancellationSignal;
  // The guard's process starts first: node's start and its imports overlap the lookups below.
  const ahead = await GuardProcess.start(deps.snapshotsDir);
  const progress = convertHeartbeats(0);
  // nonce: the guard this attempt started or followed, once it has one.
  const follow: Follow = { signal, onProgress: progress.onProgress };
  try {
    const disks = await snapshotDisks(deps.hypervisor, input.instanceId, input.dataDisks);
    const sizes = new Map<string, number>();
    for (const disk of disks) sizes.set(disk.dev, await virtualSizeOf(deps, disk));
    progress.total([...sizes.values()].reduce((a, b) => a + b, 0));
    const ended = (await earlierGuard(deps, input, follow)) ?? (await copyUnderNewGuard(deps, input, disks, follow, ahead));
    return await afterTheGuard(deps, ended, sizes, signal);
  } catch (err) {
    // A worker that only stops leaves the guard and its dir to the next attempt, which follows it.
    if (!isWorkerShutdown(signal)) await removeUnlessTakenOver(deps, input.imageId, follow.nonce);
    throw err;
  } finally {
    ahead.dismiss(); // not handed a job: not wanted
    progress.stop();
  }
}

/**
 * The failed step's temp dir goes, unless another attempt's guard runs in it now (an attempt of
 * this step on a worker that lost Temporal, while its retry runs elsewhere): that one is its own.
 */
async function removeUnlessTakenOver(deps: ActivityDeps, imageId: string, nonce: string | undefined): Promise<void> {
  const dir = snapshotDir(deps.snapshotsDir, imageId);
  const [job, state] = await Promise.all([readGuardJob(dir), readGuardState(dir)]);
  const another = job !== undefined && job.nonce !== nonce && state?.nonce === job.nonce && !state.outcome && (await isGuardRunning(state));
  if (!another) await removeSnapshotFiles(deps.snapshotsDir, imageId);
}

type Follow = Parameters<typeof followPauseGuard>[2] & { nonce?: string };

/**
 * This run's guard from an earlier attempt: its outcome, once it has one (followed while it runs).
 * Undefined when there is none to adopt: none, another run's, one that died without an outcome or
 * never began its copy (its pause given back here), or one of an earlier boot of the host.
 */
async function earlierGuard(deps: ActivityDeps, input: ColdCopyDiskInput, follow: Follow): Promise<Ended | undefined> {
  const dir = snapshotDir(deps.snapshotsDir, input.imageId);
  const job = await readGuardJob(dir);
  if (!job || job.owner !== input.owner || job.instanceId !== input.instanceId || job.imageId !== input.imageId) return undefined;
  follow.nonce = job.nonce;
  const found = await readGuardState(dir);
  let state: GuardState | undefined = found?.nonce === job.nonce ? found : undefined;
  if (state && !state.outcome && (await isGuardRunning(state))) {
    Context.current().log.info("cold copy: following an earlier attempt's pause guard", { imageId: input.imageId, guardPid: state.pid });
    state = await followPauseGuard(dir, state, follow);
  }
  const outcome = state?.outcome;
  if (outcome && outcome.copy !== 'not-started' && state?.bootId === (await bootId())) {
    Context.current().log.info("cold copy: adopting the outcome of an earlier attempt's pause guard", { imageId: input.imageId, copy: outcome.copy });
    return { job, outcome };
  }
  if (job.pause) await recordGuardResume(deps, job, outcome);
  return undefined;
}

/** Room checked, a fresh dir, the guard started and armed, the guest paused, "go"; the guard followed to its outcome. */
async function copyUnderNewGuard(deps: ActivityDeps, input: ColdCopyDiskInput, disks: ChosenDisk[], follow: Follow, ahead: GuardProcess): Promise<Ended> {
  const { instanceId, owner } = input;
  const [disk, ...data] = disks as [ChosenDisk, ...ChosenDisk[]];
  // A fresh dir: whatever an earlier attempt or snapshot left there is stopped and removed first.
  const target = await privateTarget(deps.snapshotsDir, input);
  const dir = dirname(target);
  const dataDisks: GuardCopy[] = [];
  for (const d of data) {
    dataDisks.push({ dev: d.dev, source: { path: d.path, format: d.format }, target: await privateDataTarget(dir, d.dev, input.diskFormat) });
  }
  const job: PauseGuardJob = {
    nonce: randomUUID(),
    owner,
    instanceId,
    imageId: input.imageId,
    libvirtUri: deps.libvirtUri,
    source: { path: disk.path, format: disk.format },
    target,
    ...(dataDisks.length ? { dataDisks } : {}),
    targetFormat: input.diskFormat,
    compress: input.compress,
    forceShare: input.forceShare,
    pause: input.pause,
    pauseBudgetMs: input.pause ? input.pauseBudgetMs : 0,
  };
  await writeGuardJob(dir, job);
  follow.nonce = job.nonce;
  // The guard arms (libvirt's event registration) while the room for the copy is measured.
  const [launched, room] = await Promise.allSettled([
    launchPauseGuard(ahead, dir, job.nonce, (message) => Context.current().log.warn(message)),
    ensureRoomForCopy(deps, { ...input, live: false }),
  ]);
  if (launched.status === 'rejected') throw launched.reason;
  const guard = launched.value;
  // It could not arm (e.g. no QEMU events): its outcome says why, and nothing was paused.
  if (!guard.armed.outcome) {
    let pauseRecorded = false;
    try {
      if (room.status === 'rejected') throw room.reason; // NoSpace: the guest is never paused
      follow.signal.throwIfAborted();
      if (input.pause) {
        await deps.store.recordEvent({ instanceId, action: 'createImage', event: 'pause', requestId: owner, details: { guard: job.nonce } });
        pauseRecorded = true;
        await deps.hypervisor.pause(instanceId);
      }
    } catch (err) {
      guard.abort(); // it gives back a pause QEMU reported
      const ended = await followPauseGuard(dir, guard, follow);
      if (pauseRecorded) await recordGuardResume(deps, job, ended?.outcome);
      throw err;
    }
    guard.go(Date.now());
  }
  const ended = await followPauseGuard(dir, guard, follow);
  if (ended?.outcome) return { job, outcome: ended.outcome };
  // Killed (OOM, by hand) with no word: the pause it held is given back here; a retry copies anew.
  if (job.pause) await recordGuardResume(deps, job, undefined);
  throw new VmsnapError('HypervisorError', `the pause guard of the copy died without an outcome; its log: ${dir}/guard.log`, { guestResumed: true });
}

/**
 * The guard's resume, recorded once (the same event from any attempt is one row), with QEMU's
 * measure of the pause; a guard that died without an outcome is resumed here. A resume the guard
 * could not make is compensation's (the step fails saying so).
 */
async function recordGuardResume(deps: ActivityDeps, job: PauseGuardJob, outcome: GuardOutcome | undefined): Promise<void> {
  const change = { instanceId: job.instanceId, owner: job.owner };
  if (!outcome) {
    await resumeRecorded(deps, change, { by: 'cold copy step, its pause guard dead', guard: job.nonce });
  } else if (outcome.resumeError === undefined) {
    const details = { outcome: outcome.resumeOutcome ?? 'not-paused', pausedMs: outcome.guestPauseMs, by: 'pause guard', guard: job.nonce };
    await deps.store.recordEvent({ ...change, action: 'createImage', event: 'resume', requestId: job.owner, details });
  }
}

/** The guard's outcome as the step's: its resume recorded; its failure thrown; its copy checked and measured. */
async function afterTheGuard(deps: ActivityDeps, { job, outcome }: Ended, sizes: Map<string, number>, signal: AbortSignal): Promise<ColdCopiedDisk> {
  if (job.pause) await recordGuardResume(deps, job, outcome);
  signal.throwIfAborted(); // cancelled: the copy is not wanted any more
  const resumed = outcome.resumeOutcome !== undefined;
  if (outcome.resumeError !== undefined) {
    throw ApplicationFailure.create({
      type: 'HypervisorError' satisfies FailureType,
      message: `the guest could not be resumed after the copy: ${outcome.resumeError}`,
      nonRetryable: true, // the workflow's compensation resumes it
    });
  }
  if (outcome.copy !== 'done') throw guardFailure(outcome.failure, resumed);
  let copy: ConvertedDisk;
  const dataDisks: CopiedDataDisk[] = [];
  try {
    const rootSize = sizes.values().next().value ?? 0; // the root disk is the first
    copy = await finishCopy(deps, job.target, job.targetFormat, rootSize);
    for (const d of job.dataDisks ?? []) dataDisks.push({ dev: d.dev, ...(await finishCopy(deps, d.target, job.targetFormat, sizes.get(d.dev) ?? 0)) });
  } catch (err) {
    if (resumed && err instanceof VmsnapError) err.details.guestResumed = true;
    throw err;
  }
  const guestPauseMs = job.pause ? pausedMsOfRun(await deps.store.listEvents(job.instanceId), job.owner) : 0;
  const resumeOutcome = outcome.resumeOutcome as ResumeOutcome | undefined; // resumed-elsewhere fails the copy above
  return { ...copy, guestPauseMs, ...(resumeOutcome ? { resumeOutcome } : {}), ...(dataDisks.length ? { dataDisks } : {}) };
}

/** The guard's failure as the step's, saying whether the guest runs again already (the workflow need not resume it). */
function guardFailure(failure: GuardOutcome['failure'], resumed: boolean): Error {
  const type = failure?.type ?? 'ConvertFailed';
  const message = failure?.message ?? 'the copy failed';
  if (type in ERRORS) return new VmsnapError(type as ErrorCode, message, { guestResumed: resumed });
  // PauseBudgetExceeded: the workflow's outcome, never retried.
  return ApplicationFailure.create({ type, message, nonRetryable: true, details: [{ guestResumed: resumed }] });
}
