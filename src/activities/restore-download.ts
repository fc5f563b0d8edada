// A restore's first host step: the image downloaded beside the disk (or to a new instance's disk),
// its size and sha512 verified as it streams, checked with qemu-img and converted to the disk's
// format, and on disk before the guest is touched. The guest runs on throughout.
import { Context } from '@temporalio/activity';
import { rename, rm, statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { ActivityDeps } from './deps.js';
import { keepHeartbeating } from './heartbeat.js';
import { exists, restorableDisk, restoreFiles } from './restore-files.js';
import { fsyncPath } from '../drivers/files.js';
import type { RootDisk } from '../drivers/hypervisor.js';
import { VmsnapError } from '../shared/errors.js';
import type { StepProgress } from '../shared/types.js';

export interface PrepareRestoreInput {
  instanceId: string;
  imageId: string;
  imageFormat: string;
  expected: { size: number; sha512: string };
  /** Glance's virtual_size when it knows it: the free-space estimate of a convert. */
  virtualSize: number | null;
  allowGrow: boolean;
  /** Restore as a new instance: the image goes to this new file (beside the disk) instead. */
  newDiskPath?: string;
  /** The disk (target device) of a set's restore; default the root disk. */
  dev?: string;
}

export interface PreparedRestore {
  diskPath: string;
  diskFormat: string;
  restoredPath: string;
  downloadedBytes: number;
  sha512: string;
  virtualSize: number;
  converted: boolean;
}

/** Room for the download, and for the converted copy beside it (at most the virtual size). */
async function ensureRoom(input: PrepareRestoreInput, disk: RootDisk, converted: boolean): Promise<void> {
  const needed = input.expected.size + (converted ? (input.virtualSize ?? input.expected.size * 4) : 0);
  const fs = await statfs(disk.path);
  const free = fs.bavail * fs.bsize;
  if (free >= needed) return;
  const what = `instance ${input.instanceId}: ${free} bytes free beside its disk ${disk.path}, the restore needs ${needed}`;
  throw new VmsnapError('NoSpace', `${what}; free space there and restore again; nothing was changed`, { free, needed });
}

/** Downloads, verifies, checks and converts; a retry starts over. */
export async function prepareRestoreImage(deps: ActivityDeps, input: PrepareRestoreInput): Promise<PreparedRestore> {
  const { diskTool, imageService } = deps;
  let received = 0;
  let phase: StepProgress['phase'] = 'downloading';
  let percent = 0;
  const dev = input.dev !== undefined ? { dev: input.dev } : {};
  const downloading = (): StepProgress => ({
    phase: 'downloading',
    percent: input.expected.size ? (100 * received) / input.expected.size : 100,
    bytesDone: received,
    bytesTotal: input.expected.size,
    ...dev,
  });
  // From the start: short of its 6 h, the step's timeout is the heartbeat's (a task handed to a
  // worker that died is tried again after it), and the lookups before the download count too.
  const stop = keepHeartbeating((): StepProgress => (phase === 'downloading' ? downloading() : { phase, percent, bytesDone: 0, bytesTotal: 0, ...dev }));
  try {
    const disk = await restorableDisk(deps, input.instanceId, input.dev);
    const files = input.newDiskPath ? { download: `${input.newDiskPath}.vmsnap-download`, restored: input.newDiskPath } : restoreFiles(disk.path);
    if (input.newDiskPath && (await exists(input.newDiskPath)) && !(await exists(files.download))) {
      // Not ours (a retry of ours still has its download beside it, or removed both).
      throw new VmsnapError('InvalidInput', `${input.newDiskPath} exists already: choose another name for the new instance`);
    }
    const converted = input.imageFormat !== disk.format;
    await ensureRoom(input, disk, converted);
    await rm(files.download, { force: true });
    await rm(files.restored, { force: true });

    const signal = Context.current().cancellationSignal;
    try {
      const got = await imageService.downloadFile(input.imageId, files.download, { expected: input.expected, onProgress: (n) => (received = n), signal });
      const info = await diskTool.info(files.download, { format: input.imageFormat });
      if (info.backingFile) {
        const why = `image ${input.imageId} has a backing file (${info.backingFile})`;
        throw new VmsnapError('InvalidInput', `${why}: vmsnap restores self-contained images only; choose another image`);
      }
      const current = await diskTool.info(disk.path, { format: disk.format, forceShare: true });
      if (info.virtualSize > current.virtualSize && !input.allowGrow) {
        const sizes = `image ${input.imageId} is ${info.virtualSize} bytes (virtual), larger than the instance's disk (${current.virtualSize})`;
        throw new VmsnapError('InvalidInput', `${sizes}: allow growing the disk (--allow-grow) to restore it`);
      }
      const check = await diskTool.check(files.download, input.imageFormat);
      if (!check.ok) throw new VmsnapError('ImageCorrupt', `qemu-img check of image ${input.imageId} failed: ${check.message}`);
      if (converted) {
        phase = 'converting';
        const target = { target: files.restored, targetFormat: disk.format as 'qcow2' | 'raw' };
        await diskTool.convert({ source: files.download, sourceFormat: input.imageFormat, ...target, onProgress: (p) => (percent = p), signal });
        await rm(files.download, { force: true });
      } else {
        await rename(files.download, files.restored);
      }
      // On disk before the guest is stopped: durability (a rename over the disk must never leave
      // unwritten data behind it after a power loss), and the writeback must not fall into the
      // guest's downtime, where it would grow with the image's size.
      await fsyncPath(files.restored);
      await fsyncPath(dirname(files.restored));
      return {
        diskPath: disk.path,
        diskFormat: disk.format,
        restoredPath: files.restored,
        downloadedBytes: got.size,
        sha512: got.sha512,
        virtualSize: info.virtualSize,
        converted,
      };
    } catch (err) {
      await rm(files.download, { force: true });
      await rm(files.restored, { force: true });
      throw err;
    }
  } finally {
    stop();
  }
}
