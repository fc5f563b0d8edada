// The copy of the instance's root disk into a per-snapshot temp dir, and its removal. Cold: qemu-img
// reads the disk of a paused (or shut-off) guest. Live: a QEMU block backup job holds a point in
// time while the guest runs, read out by qemu-img over NBD (pull) or copied by QEMU (push).
import { Context } from '@temporalio/activity';
import { chmod, chown, mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ActivityDeps } from './deps.js';
import { keepHeartbeating } from './heartbeat.js';
import type { Consistency, DiskFormat, StepProgress } from '../shared/types.js';
import { VmsnapError } from '../shared/errors.js';
import { qemuUser } from '../drivers/files.js';

export interface ConvertDiskInput {
  instanceId: string;
  imageId: string;
  diskFormat: DiskFormat;
  compress: boolean;
  /** -U: read past QEMU's image lock. Safe only while the guest is paused. */
  forceShare: boolean;
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

export function diskActivities({ hypervisor, diskTool, snapshotsDir, store, settings }: ActivityDeps) {
  /** Private file, checked (qcow2) and measured: what the upload may send. */
  async function finish(path: string, diskFormat: DiskFormat): Promise<ConvertedDisk> {
    await chmod(path, 0o600);
    const info = await diskTool.info(path, { format: diskFormat });
    if (diskFormat === 'qcow2') {
      const check = await diskTool.check(path, 'qcow2');
      if (!check.ok) throw new VmsnapError('ImageCorrupt', `qemu-img check of the copy failed: ${check.message}`);
    }
    return { path, diskFormat, size: (await stat(path)).size, virtualSize: info.virtualSize };
  }

  return {
    async convertDisk(input: ConvertDiskInput): Promise<ConvertedDisk> {
      const disk = await hypervisor.rootDisk(input.instanceId);
      const dir = await freshDir(snapshotsDir, input.imageId);
      const target = join(dir, `disk.${input.diskFormat}`);
      // Created 0600 before qemu-img opens it (it keeps an existing file's mode): never readable by others.
      await writeFile(target, '', { mode: 0o600 });

      // The copy reads the whole virtual disk; its size scales qemu-img's percent to bytes.
      const bytesTotal = (await diskTool.info(disk.path, { format: disk.format, forceShare: true })).virtualSize;
      let percent = 0;
      const stop = keepHeartbeating((): StepProgress => ({
        phase: 'converting',
        percent,
        bytesDone: Math.round((bytesTotal * percent) / 100),
        bytesTotal,
      }));
      try {
        await diskTool.convert({
          source: disk.path,
          sourceFormat: disk.format,
          target,
          targetFormat: input.diskFormat,
          compress: input.compress,
          forceShare: input.forceShare,
          onProgress: (p) => (percent = p),
          signal: Context.current().cancellationSignal,
        });
        return await finish(target, input.diskFormat);
      } catch (err) {
        await rm(dir, { recursive: true, force: true });
        throw err;
      } finally {
        stop();
      }
    },

    async liveCopyDisk(input: LiveCopyDiskInput): Promise<LiveCopiedDisk> {
      const dir = await freshDir(snapshotsDir, input.imageId);
      // QEMU, not root, writes the backup target: the private dir must be its own.
      const qemu = await qemuUser();
      if (qemu) await chown(dir, qemu.uid, qemu.gid);
      else await chmod(dir, 0o711);
      // The job writes a sparse qcow2 (a raw target would be written in full, holes and all).
      const live = join(dir, 'live.qcow2');
      const signal = Context.current().cancellationSignal;

      // The job copies the whole virtual disk: its size is the total from the first heartbeat on.
      const disk = await hypervisor.rootDisk(input.instanceId);
      const virtualSize = (await diskTool.info(disk.path, { format: disk.format, forceShare: true })).virtualSize;
      let progress: StepProgress = { phase: 'copying', percent: 0, bytesDone: 0, bytesTotal: virtualSize };
      const stop = keepHeartbeating(() => progress, 1000);
      const pauses = await hypervisor.watchPauses(input.instanceId);
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
        const { pausedMs } = await pauses.stop();
        const written = await writes?.stop();
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
          });
          await rm(live, { force: true });
        } else {
          await rename(live, path);
        }
        const copy = await finish(path, input.diskFormat);
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
