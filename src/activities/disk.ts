// The copy of the instance's root disk into a per-snapshot temp dir, and its removal. Cold: qemu-img
// reads the disk of a paused (or shut-off) guest. Live: a QEMU block backup job holds a point in
// time while the guest runs, read out by qemu-img over NBD (pull) or copied by QEMU (push).
import { Context } from '@temporalio/activity';
import { chmod, chown, mkdir, readdir, rename, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { ActivityDeps } from './deps.js';
import { keepHeartbeating } from './heartbeat.js';
import type { Consistency, DiskFormat, StepProgress } from '../shared/types.js';
import { VmsnapError } from '../shared/errors.js';
import type { FailureType } from '../shared/failures.js';
import { bootId, qemuUser } from '../drivers/files.js';
import type { RootDisk } from '../drivers/hypervisor.js';
import type { ConvertOptions } from '../drivers/qemu-img.js';
import { ApplicationFailure } from '@temporalio/activity';
import { resumeIfPresent, type ResumeOutcome } from './power.js';

export interface ConvertDiskInput {
  instanceId: string;
  imageId: string;
  diskFormat: DiskFormat;
  compress: boolean;
  /** -U: read past QEMU's image lock. Safe only while the guest is paused. */
  forceShare: boolean;
}

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

export interface LiveCopyDiskInput {
  instanceId: string;
  imageId: string;
  diskFormat: DiskFormat;
  compress: boolean;
  quiesce: 'never' | 'try' | 'require';
  /** The snapshot run: a freeze is recorded under it, so a lost freeze can be thawed. */
  owner: string;
}

export interface ConvertedDisk {
  path: string;
  diskFormat: DiskFormat;
  size: number;
  virtualSize: number;
  /**
   * The host's boot the copy was made in: the copy is a temp file and never fsynced, so one from an
   * earlier boot may be torn, and the upload refuses it (CopyLost). Not covered: a disk error while
   * the kernel writes the copy back, followed by the eviction of those pages before the upload
   * reads them (the upload would send what is on disk); a copy usually lives seconds, well inside
   * the kernel's 30 s writeback delay. Nova writes its copy with O_DIRECT (-t none) instead.
   */
  bootId: string;
}

export interface LiveCopiedDisk extends ConvertedDisk {
  consistency: Consistency;
  quiesceNote?: string;
  /** Guest-visible pause during the copy, from QEMU's STOP/RESUME events (0 when none). */
  guestPauseMs: number;
  /** The longest disk write the guest waited for during the copy (QEMU's write times), when measured. */
  guestWriteStallMs?: number;
}

/** The temp dir of one snapshot; the image id is a validated UUID, so it is a safe file name. */
export function snapshotDir(snapshotsDir: string, imageId: string): string {
  return join(snapshotsDir, imageId);
}

export interface CopyPlan {
  instanceId: string;
  imageId: string;
  diskFormat: DiskFormat;
  compress: boolean;
  live: boolean;
}

/** Free bytes where `dir` is (or would be made: its nearest existing parent). */
async function freeBytesAt(dir: string): Promise<number> {
  for (let at = dir; ; at = dirname(at)) {
    try {
      const fs = await statfs(at);
      return fs.bavail * fs.bsize;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || dirname(at) === at) throw err;
    }
  }
}

/** Bytes an earlier attempt's files hold in the image's temp dir: freed before the copy starts. */
async function heldByEarlierAttempt(dir: string): Promise<number> {
  const names = await readdir(dir).catch(() => []);
  let bytes = 0;
  for (const name of names)
    bytes += await stat(join(dir, name)).then(
      (st) => st.blocks * 512,
      () => 0,
    );
  return bytes;
}

/**
 * Whether the copy fits in the snapshots dir, decided before the guest is touched: a copy that
 * cannot fit fails with NoSpace and the guest is never paused. `qemu-img measure` (as qcow2:
 * allocated data plus metadata, which also bounds a sparse raw or a compressed copy) against the
 * free space; a live copy written as raw or compressed holds its qcow2 and the result at once.
 */
export async function ensureRoomForCopy(
  { hypervisor, diskTool, snapshotsDir }: Pick<ActivityDeps, 'hypervisor' | 'diskTool' | 'snapshotsDir'>,
  plan: CopyPlan,
): Promise<void> {
  const disk = await hypervisor.rootDisk(plan.instanceId);
  const { required } = await diskTool.measure(disk.path, { format: disk.format, targetFormat: 'qcow2' });
  const needed = plan.live && (plan.diskFormat === 'raw' || plan.compress) ? 2 * required : required;
  const dir = snapshotDir(snapshotsDir, plan.imageId);
  const free = (await freeBytesAt(snapshotsDir)) + (await heldByEarlierAttempt(dir));
  if (needed <= free) return;
  const MiB = (n: number) => `${Math.ceil(n / 2 ** 20)} MiB`;
  throw new VmsnapError(
    'NoSpace',
    `the copy of instance ${plan.instanceId}'s disk needs ${MiB(needed)} in ${snapshotsDir} (VMSNAP_SNAPSHOTS_DIR), which has ${MiB(free)} free: free ${MiB(needed - free)} there or point it at a larger disk; the guest was not touched`,
    { snapshotsDir, neededBytes: needed, freeBytes: free, disk: disk.path },
  );
}

/** A fresh, private temp dir: a retry starts over, whatever an earlier attempt left. */
async function freshDir(snapshotsDir: string, imageId: string): Promise<string> {
  const dir = snapshotDir(snapshotsDir, imageId);
  await rm(dir, { recursive: true, force: true });
  // 0711: QEMU's user must traverse it to reach a live copy's target, but may list nothing.
  await mkdir(snapshotsDir, { recursive: true, mode: 0o711 });
  await mkdir(dir, { mode: 0o700 });
  await chmod(dir, 0o700);
  return dir;
}

/** Heartbeats of a convert that reads `bytesTotal`: qemu-img's percent scaled to bytes. */
function convertHeartbeats(bytesTotal: number): { onProgress: (percent: number) => void; stop: () => void } {
  let percent = 0;
  const stop = keepHeartbeating((): StepProgress => ({
    phase: 'converting',
    percent,
    bytesDone: Math.round((bytesTotal * percent) / 100),
    bytesTotal,
  }));
  return { onProgress: (p) => (percent = p), stop };
}

// A resume that fails is tried again this often before the step gives up (the workflow's
// compensation then resumes, with retries of its own).
const RESUME_ATTEMPTS = 3;

export function diskActivities(deps: ActivityDeps) {
  const { hypervisor, diskTool, snapshotsDir, store, settings } = deps;
  /** Private file, checked (qcow2) and measured: what the upload may send. */
  async function finish(path: string, diskFormat: DiskFormat, knownVirtualSize?: number): Promise<ConvertedDisk> {
    await chmod(path, 0o600);
    const virtualSize = knownVirtualSize ?? (await diskTool.info(path, { format: diskFormat })).virtualSize;
    if (diskFormat === 'qcow2') {
      const check = await diskTool.check(path, 'qcow2');
      if (!check.ok) throw new VmsnapError('ImageCorrupt', `qemu-img check of the copy failed: ${check.message}`);
    }
    return { path, diskFormat, size: (await stat(path)).size, virtualSize, bootId: await bootId() };
  }

  /** The size the guest sees: a copy reads the whole virtual disk, so this is its total. */
  async function virtualSizeOf(disk: RootDisk): Promise<number> {
    return (await diskTool.info(disk.path, { format: disk.format, forceShare: true })).virtualSize;
  }

  /** The copy's file in a fresh temp dir, created 0600 before qemu-img opens it (it keeps an existing file's mode): never readable by others. */
  async function privateTarget(input: { imageId: string; diskFormat: DiskFormat }): Promise<{ dir: string; target: string }> {
    const dir = await freshDir(snapshotsDir, input.imageId);
    const target = join(dir, `disk.${input.diskFormat}`);
    await writeFile(target, '', { mode: 0o600 });
    return { dir, target };
  }

  /** qemu-img convert of the root disk into `target`, in the image's format. */
  function convertRootDisk(
    disk: RootDisk,
    target: string,
    input: Pick<ConvertDiskInput, 'diskFormat' | 'compress' | 'forceShare'>,
    run: Pick<ConvertOptions, 'onProgress' | 'signal' | 'fsync'>,
  ): Promise<void> {
    return diskTool.convert({
      source: disk.path,
      sourceFormat: disk.format,
      target,
      targetFormat: input.diskFormat,
      compress: input.compress,
      forceShare: input.forceShare,
      ...run,
    });
  }

  /** The recorded resume: retried a little here, since a retry of the whole step would pause the guest again. */
  async function resume(instanceId: string, owner: string): Promise<ResumeOutcome> {
    for (let attempt = 1; ; attempt++) {
      try {
        const outcome = await resumeIfPresent(hypervisor, instanceId);
        await store.recordEvent({ instanceId, action: 'createImage', event: 'resume', requestId: owner, details: { outcome } });
        return outcome;
      } catch (err) {
        if (attempt >= RESUME_ATTEMPTS) {
          throw ApplicationFailure.create({
            type: 'HypervisorError',
            message: `the guest could not be resumed after the copy: ${(err as Error).message}`,
            nonRetryable: true, // the workflow's compensation resumes it
          });
        }
        await new Promise((r) => setTimeout(r, 200 * attempt));
      }
    }
  }

  return {
    async convertDisk(input: ConvertDiskInput): Promise<ConvertedDisk> {
      const disk = await hypervisor.rootDisk(input.instanceId);
      const { dir, target } = await privateTarget(input);
      const progress = convertHeartbeats(await virtualSizeOf(disk));
      try {
        await convertRootDisk(disk, target, input, { onProgress: progress.onProgress, signal: Context.current().cancellationSignal });
        return await finish(target, input.diskFormat);
      } catch (err) {
        await rm(dir, { recursive: true, force: true });
        throw err;
      } finally {
        progress.stop();
      }
    },

    /**
     * Nova's cold snapshot in one host step: suspend, qemu-img convert, resume. Whatever can wait
     * is kept out of the pause: the disk, its size and the target are looked up before it, and the
     * copy's check comes after the resume (no fsync: see ConvertedDisk.bootId). The guest is
     * resumed on every path but a dead worker's (then the workflow's compensation or the
     * reconciler resume it: the pause is recorded before it happens). A failure after the resume
     * says so (details.guestResumed).
     */
    async coldCopyDisk(input: ColdCopyDiskInput): Promise<ColdCopiedDisk> {
      const { instanceId, owner } = input;
      const disk = await hypervisor.rootDisk(instanceId);
      await ensureRoomForCopy(deps, { ...input, live: false });
      const bytesTotal = await virtualSizeOf(disk);
      const { dir, target } = await privateTarget(input);
      const progress = convertHeartbeats(bytesTotal);
      const budget = new AbortController();
      let overBudget: NodeJS.Timeout | undefined;
      let pausedAt = 0;
      let resumedAt = 0;
      let resumeOutcome: ResumeOutcome | undefined;
      try {
        if (input.pause) {
          await store.recordEvent({ instanceId, action: 'createImage', event: 'pause', requestId: owner, details: {} });
          await hypervisor.pause(instanceId);
          pausedAt = Date.now();
          if (input.pauseBudgetMs > 0) overBudget = setTimeout(() => budget.abort(), input.pauseBudgetMs);
        }
        try {
          await convertRootDisk(disk, target, input, {
            onProgress: progress.onProgress,
            signal: AbortSignal.any([Context.current().cancellationSignal, budget.signal]),
            fsync: false, // a temp file: see ConvertedDisk.bootId
          });
        } finally {
          clearTimeout(overBudget);
          if (input.pause) {
            resumeOutcome = await resume(instanceId, owner);
            resumedAt = Date.now();
          }
        }
        const copy = await finish(target, input.diskFormat, bytesTotal);
        return { ...copy, guestPauseMs: resumedAt - pausedAt, ...(resumeOutcome ? { resumeOutcome } : {}) };
      } catch (err) {
        await rm(dir, { recursive: true, force: true });
        // Set once the guest runs again: the workflow need not resume it.
        const resumed = resumeOutcome !== undefined;
        if (budget.signal.aborted && resumed) {
          throw ApplicationFailure.create({
            type: 'PauseBudgetExceeded' satisfies FailureType,
            message: `the copy took longer than the pause budget of ${input.pauseBudgetMs} ms; the guest was resumed`,
            nonRetryable: true,
            details: [{ guestResumed: true }],
          });
        }
        if (resumed && err instanceof VmsnapError) err.details.guestResumed = true;
        throw err;
      } finally {
        progress.stop();
      }
    },

    async liveCopyDisk(input: LiveCopyDiskInput): Promise<LiveCopiedDisk> {
      await ensureRoomForCopy(deps, { ...input, live: true });
      const signal = Context.current().cancellationSignal;
      // Side by side, as none needs another: the temp dir, the disk and its size (the total from
      // the first heartbeat on: the job copies the whole virtual disk), and the pause watch, which
      // must be live before the copy starts.
      const prepared = await Promise.allSettled([
        (async () => {
          const dir = await freshDir(snapshotsDir, input.imageId);
          // QEMU, not root, writes the backup target: the private dir must be its own.
          const qemu = await qemuUser();
          if (qemu) await chown(dir, qemu.uid, qemu.gid);
          else await chmod(dir, 0o711);
          return dir;
        })(),
        (async () => {
          const disk = await hypervisor.rootDisk(input.instanceId);
          return { disk, virtualSize: await virtualSizeOf(disk) };
        })(),
        hypervisor.watchPauses(input.instanceId),
      ]);
      const [madeDir, found, watch] = prepared;
      if (madeDir.status === 'rejected' || found.status === 'rejected' || watch.status === 'rejected') {
        if (watch.status === 'fulfilled') await watch.value.stop().catch(() => undefined);
        await rm(snapshotDir(snapshotsDir, input.imageId), { recursive: true, force: true });
        throw prepared.find((r): r is PromiseRejectedResult => r.status === 'rejected')?.reason;
      }
      const dir = madeDir.value;
      const { disk, virtualSize } = found.value;
      const pauses = watch.value;
      // The job writes a sparse qcow2 (a raw target would be written in full, holes and all).
      const live = join(dir, 'live.qcow2');
      let progress: StepProgress = { phase: 'copying', percent: 0, bytesDone: 0, bytesTotal: virtualSize };
      const stop = keepHeartbeating(() => progress, 1000);
      // The vCPUs never stop, but the guest's writes may wait: that is what it feels.
      const writes = await hypervisor.watchWrites?.(input.instanceId, disk.path).catch(() => undefined);
      let watching = true;
      try {
        const quiesceEvent = (event: 'freeze' | 'thaw') =>
          store.recordEvent({ instanceId: input.instanceId, action: 'createImage', event, requestId: input.owner, details: {} });
        // A freeze is recorded before it may happen, and the thaw after the driver's own thaw
        // (which always runs, unless this worker dies): a lost freeze is thawed by compensation.
        if (input.quiesce !== 'never') await quiesceEvent('freeze');
        let copied;
        try {
          copied = await hypervisor.liveCopy(input.instanceId, {
            target: live,
            targetFormat: 'qcow2',
            quiesce: input.quiesce,
            signal,
            onProgress: (percent, bytesDone, bytesTotal) => {
              progress = { phase: 'copying', percent, bytesDone, bytesTotal: bytesTotal || virtualSize };
              stop.beat();
            },
            ...(settings.liveCopyBandwidthMiBps > 0 ? { bandwidthMiBps: settings.liveCopyBandwidthMiBps } : {}),
            method: settings.liveCopyMethod,
          });
        } finally {
          if (input.quiesce !== 'never') await quiesceEvent('thaw');
        }
        const [{ pausedMs }, written] = await Promise.all([pauses.stop(), writes?.stop()]);
        watching = false;

        // Raw or compressed output is one more local pass over our own file.
        const path = join(dir, `disk.${input.diskFormat}`);
        if (input.diskFormat === 'raw' || input.compress) {
          await diskTool.convert({
            source: live,
            sourceFormat: 'qcow2',
            target: path,
            targetFormat: input.diskFormat,
            compress: input.compress,
            signal,
            fsync: false, // a temp file: see ConvertedDisk.bootId
          });
          await rm(live, { force: true });
        } else {
          await rename(live, path);
        }
        const copy = await finish(path, input.diskFormat, virtualSize);
        return {
          ...copy,
          consistency: copied.consistency,
          ...(copied.quiesceNote ? { quiesceNote: copied.quiesceNote } : {}),
          guestPauseMs: pausedMs,
          ...(written ? { guestWriteStallMs: written.longestWriteMs } : {}),
        };
      } catch (err) {
        await rm(dir, { recursive: true, force: true });
        throw err;
      } finally {
        if (watching) await Promise.all([pauses.stop().catch(() => undefined), writes?.stop()]);
        stop();
      }
    },

    async removeSnapshotFiles(imageId: string): Promise<void> {
      await rm(snapshotDir(snapshotsDir, imageId), { recursive: true, force: true });
    },
  };
}
