// The copy of the instance's root disk into a per-snapshot temp dir, and its removal.
import { Context } from '@temporalio/activity';
import { chmod, mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ActivityDeps } from './deps.js';
import { keepHeartbeating } from './heartbeat.js';
import type { DiskFormat, StepProgress } from '../shared/types.js';
import { VmsnapError } from '../shared/errors.js';

export interface ConvertDiskInput {
  instanceId: string;
  imageId: string;
  diskFormat: DiskFormat;
  compress: boolean;
  /** -U: read past QEMU's image lock. Safe only while the guest is paused. */
  forceShare: boolean;
}

export interface ConvertedDisk {
  path: string;
  diskFormat: DiskFormat;
  size: number;
  virtualSize: number;
}

/** The temp dir of one snapshot; the image id is a validated UUID, so it is a safe file name. */
export function snapshotDir(snapshotsDir: string, imageId: string): string {
  return join(snapshotsDir, imageId);
}

export function diskActivities({ hypervisor, diskTool, snapshotsDir }: ActivityDeps) {
  return {
    async convertDisk(input: ConvertDiskInput): Promise<ConvertedDisk> {
      const disk = await hypervisor.rootDisk(input.instanceId);
      const dir = snapshotDir(snapshotsDir, input.imageId);
      const target = join(dir, `disk.${input.diskFormat}`);
      // A retry starts over: whatever an earlier attempt left is not to be trusted.
      await rm(dir, { recursive: true, force: true });
      await mkdir(snapshotsDir, { recursive: true });
      await mkdir(dir, { mode: 0o700 });
      await chmod(dir, 0o700);
      await writeFile(target, '', { mode: 0o600 });

      // The copy reads the whole virtual disk; its size scales qemu-img's percent to bytes.
      const bytesTotal = (await diskTool.info(disk.path, { format: disk.format, forceShare: true })).virtualSize;
      let percent = 0;
      const stop = keepHeartbeating(
        (): StepProgress => ({ phase: 'converting', percent, bytesDone: Math.round((bytesTotal * percent) / 100), bytesTotal }),
      );
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
        await chmod(target, 0o600);
        const info = await diskTool.info(target, { format: input.diskFormat });
        if (input.diskFormat === 'qcow2') {
          const check = await diskTool.check(target, 'qcow2');
          if (!check.ok) throw new VmsnapError('ImageCorrupt', `qemu-img check of the copy failed: ${check.message}`, true);
        }
        return { path: target, diskFormat: input.diskFormat, size: (await stat(target)).size, virtualSize: info.virtualSize };
      } catch (err) {
        await rm(dir, { recursive: true, force: true });
        throw err;
      } finally {
        stop();
      }
    },

    async removeSnapshotFiles(imageId: string): Promise<void> {
      await rm(snapshotDir(snapshotsDir, imageId), { recursive: true, force: true });
    },
  };
}
