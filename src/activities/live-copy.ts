// A live snapshot's copy: a QEMU block backup job holds one point in time of the root disk while
// the guest runs, read out by qemu-img over NBD (pull) or copied by QEMU (push) into the
// snapshot's temp dir. The guest's pauses and write stalls are watched for the result.
import { Context } from '@temporalio/activity';
import { chmod, chown, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { virtualSizeOf } from './cold-copy.js';
import { ensureRoomForCopy } from './copy-room.js';
import type { ActivityDeps } from './deps.js';
import { keepHeartbeating } from './heartbeat.js';
import { copyingInto, finishCopy, freshDir, removeSnapshotFiles, type ConvertedDisk } from './snapshot-files.js';
import { qemuUser } from '../drivers/files.js';
import type { PauseWatch, RootDisk } from '../drivers/hypervisor.js';
import type { Consistency, DiskFormat, QuiesceMode, StepProgress } from '../shared/types.js';

export interface LiveCopyDiskInput {
  instanceId: string;
  imageId: string;
  diskFormat: DiskFormat;
  compress: boolean;
  quiesce: QuiesceMode;
  /** The snapshot run: a freeze is recorded under it, so a lost freeze can be thawed. */
  owner: string;
}

export interface LiveCopiedDisk extends ConvertedDisk {
  consistency: Consistency;
  quiesceNote?: string;
  /** Guest-visible pause during the copy, from QEMU's STOP/RESUME events (0 when none). */
  guestPauseMs: number;
  /** The longest disk write the guest waited for during the copy (QEMU's write times), when measured. */
  guestWriteStallMs?: number;
}

/** The temp dir, QEMU's own: QEMU, not root, writes the backup target (or the export's scratch image). */
export async function dirForQemu(snapshotsDir: string, imageId: string): Promise<string> {
  const dir = await freshDir(snapshotsDir, imageId);
  const qemu = await qemuUser();
  if (qemu) await chown(dir, qemu.uid, qemu.gid);
  else await chmod(dir, 0o711);
  return dir;
}

/**
 * What a live job needs before it starts, side by side as none needs another: the temp dir QEMU
 * can write, the disk and its size (the total from the first heartbeat on: the job covers the whole
 * virtual disk), and the pause watch, which must be live before the job starts. On a failure of
 * any, the others are undone.
 */
export async function prepareLiveJob(
  deps: Pick<ActivityDeps, 'hypervisor' | 'diskTool' | 'snapshotsDir'>,
  input: Pick<LiveCopyDiskInput, 'instanceId' | 'imageId'>,
): Promise<{ dir: string; disk: RootDisk; virtualSize: number; pauses: PauseWatch }> {
  const { hypervisor, snapshotsDir } = deps;
  const prepared = await Promise.allSettled([
    dirForQemu(snapshotsDir, input.imageId),
    hypervisor.rootDisk(input.instanceId).then(async (disk) => ({ disk, virtualSize: await virtualSizeOf(deps, disk) })),
    hypervisor.watchPauses(input.instanceId),
  ]);
  const [madeDir, found, watch] = prepared;
  if (madeDir.status === 'rejected' || found.status === 'rejected' || watch.status === 'rejected') {
    if (watch.status === 'fulfilled') await watch.value.stop().catch(() => undefined);
    await removeSnapshotFiles(snapshotsDir, input.imageId);
    throw prepared.find((r): r is PromiseRejectedResult => r.status === 'rejected')?.reason;
  }
  return { dir: madeDir.value, ...found.value, pauses: watch.value };
}

export async function liveCopyDisk(deps: ActivityDeps, input: LiveCopyDiskInput): Promise<LiveCopiedDisk> {
  const { hypervisor, diskTool, snapshotsDir, store, settings } = deps;
  await ensureRoomForCopy(deps, { ...input, live: true });
  const signal = Context.current().cancellationSignal;
  const { dir, disk, virtualSize, pauses } = await prepareLiveJob(deps, input);
  // The job writes a sparse qcow2 (a raw target would be written in full, holes and all).
  const live = join(dir, 'live.qcow2');
  let progress: StepProgress = { phase: 'copying', percent: 0, bytesDone: 0, bytesTotal: virtualSize };
  const heartbeat = keepHeartbeating(() => progress, 1000);
  // The vCPUs never stop, but the guest's writes may wait: that is what it feels.
  const writes = await hypervisor.watchWrites?.(input.instanceId, disk.path).catch(() => undefined);
  let watching = true;
  try {
    return await copyingInto(snapshotsDir, input.imageId, async () => {
      const quiesceEvent = (event: 'freeze' | 'thaw') =>
        store.recordEvent({ instanceId: input.instanceId, action: 'createImage', event, requestId: input.owner, details: {} });
      // A freeze is recorded before it may happen, and the thaw after the driver's own thaw (which
      // always runs, unless this worker dies): a lost freeze is thawed by compensation.
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
            heartbeat.beat();
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
        const target = { target: path, targetFormat: input.diskFormat, compress: input.compress };
        await diskTool.convert({ source: live, sourceFormat: 'qcow2', ...target, signal, fsync: false }); // a temp file: see ConvertedDisk.bootId
        await rm(live, { force: true });
      } else {
        await rename(live, path);
      }
      const copy = await finishCopy(deps, path, input.diskFormat, virtualSize);
      return {
        ...copy,
        consistency: copied.consistency,
        ...(copied.quiesceNote ? { quiesceNote: copied.quiesceNote } : {}),
        guestPauseMs: pausedMs,
        ...(written ? { guestWriteStallMs: written.longestWriteMs } : {}),
      };
    });
  } finally {
    if (watching) await Promise.all([pauses.stop().catch(() => undefined), writes?.stop()]);
    heartbeat.stop();
  }
}
