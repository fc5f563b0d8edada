// Room first: whether a snapshot's copy fits in the snapshots dir, decided before the guest is
// touched. A copy that cannot fit fails with NoSpace and the guest is never paused.
import { readdir, stat, statfs } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { ActivityDeps } from './deps.js';
import { snapshotDir } from './snapshot-files.js';
import { VmsnapError } from '../shared/errors.js';
import type { DiskFormat } from '../shared/types.js';

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

const MiB = (n: number) => `${Math.ceil(n / 2 ** 20)} MiB`;

/**
 * `qemu-img measure` of the root disk (as qcow2: allocated data plus metadata, which also bounds a
 * sparse raw or a compressed copy) against the free space; a live copy written as raw or
 * compressed holds its qcow2 and the result at once.
 */
export async function ensureRoomForCopy(
  { hypervisor, diskTool, snapshotsDir }: Pick<ActivityDeps, 'hypervisor' | 'diskTool' | 'snapshotsDir'>,
  plan: CopyPlan,
): Promise<void> {
  const disk = await hypervisor.rootDisk(plan.instanceId);
  const { required } = await diskTool.measure(disk.path, { format: disk.format, targetFormat: 'qcow2' });
  const needed = plan.live && (plan.diskFormat === 'raw' || plan.compress) ? 2 * required : required;
  const free = (await freeBytesAt(snapshotsDir)) + (await heldByEarlierAttempt(snapshotDir(snapshotsDir, plan.imageId)));
  if (needed <= free) return;
  const what = `the copy of instance ${plan.instanceId}'s disk needs ${MiB(needed)} in ${snapshotsDir} (VMSNAP_SNAPSHOTS_DIR), which has ${MiB(free)} free`;
  throw new VmsnapError('NoSpace', `${what}: free ${MiB(needed - free)} there or point it at a larger disk; the guest was not touched`, {
    snapshotsDir,
    neededBytes: needed,
    freeBytes: free,
    disk: disk.path,
  });
}
