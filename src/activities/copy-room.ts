// Room first: whether a snapshot's copy (or a streamed live snapshot's overlay) fits in the
// snapshots dir, decided before the guest is touched. One that cannot fit fails with NoSpace and
// the guest is never paused.
import { readdir, stat, statfs } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { ActivityDeps } from './deps.js';
import { snapshotDisks } from './disk-choice.js';
import { snapshotDir } from './snapshot-files.js';
import { VmsnapError } from '../shared/errors.js';
import type { DiskFormat } from '../shared/types.js';

export interface CopyPlan {
  instanceId: string;
  imageId: string;
  diskFormat: DiskFormat;
  compress: boolean;
  live: boolean;
  /** A set's data disks (target devices), copied with the root disk: the room covers them all. */
  dataDisks?: string[];
}

/** `qemu-img measure` (as qcow2) of every disk the snapshot copies, summed. */
async function measureDisks({ hypervisor, diskTool }: Pick<ActivityDeps, 'hypervisor' | 'diskTool'>, plan: Pick<CopyPlan, 'instanceId' | 'dataDisks'>) {
  const disks = await snapshotDisks(hypervisor, plan.instanceId, plan.dataDisks);
  let required = 0;
  for (const disk of disks) required += (await diskTool.measure(disk.path, { format: disk.format, targetFormat: 'qcow2' })).required;
  return { required, paths: disks.map((d) => d.path).join(', ') };
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
  const { required, paths } = await measureDisks({ hypervisor, diskTool }, plan);
  const needed = plan.live && (plan.diskFormat === 'raw' || plan.compress) ? 2 * required : required;
  const free = (await freeBytesAt(snapshotsDir)) + (await heldByEarlierAttempt(snapshotDir(snapshotsDir, plan.imageId)));
  if (needed <= free) return;
  const disks = plan.dataDisks?.length ? 'disks' : 'disk';
  const what = `the copy of instance ${plan.instanceId}'s ${disks} needs ${MiB(needed)} in ${snapshotsDir} (VMSNAP_SNAPSHOTS_DIR), which has ${MiB(free)} free`;
  throw new VmsnapError('NoSpace', `${what}: free ${MiB(needed - free)} there or point it at a larger disk; the guest was not touched`, {
    snapshotsDir,
    neededBytes: needed,
    freeBytes: free,
    disk: paths,
  });
}

/** How much the overlay of a streamed live snapshot may hold, and why. */
export interface OverlayBound {
  /** The watch ends the job when the overlay holds this many bytes. */
  limitBytes: number;
  /** The most copy-before-write can ever put there: the disk's data and metadata (qemu-img measure). */
  worstCaseBytes: number;
  freeBytes: number;
  /** True when the free space, not the worst case, sets the limit. */
  capped: boolean;
}

const OVERLAY_FLOOR = 16 * 2 ** 20;
const RESERVE_MIN = 16 * 2 ** 20;
const RESERVE_MAX = 2 ** 30;

/**
 * The bound on a streamed live snapshot's overlay (the old data of the blocks the guest overwrites
 * while the job runs, kept in the snapshots dir). Copy-before-write keeps each block once at most,
 * so the overlay never exceeds the disk's data: where the dir holds that and a reserve, nothing can
 * fill it. Where it does not, the limit is the free space less a reserve (an eighth of it, 16 MiB
 * to 1 GiB): the guest's writes between the watch's look and the job's end land in the reserve, so
 * a full dir never fails them (QEMU would fail the guest's write, which pauses it). A dir that
 * cannot hold the reserve and 16 MiB of overlay is refused: NoSpace, before the guest is touched.
 */
export async function ensureRoomForOverlay(
  { hypervisor, diskTool, snapshotsDir }: Pick<ActivityDeps, 'hypervisor' | 'diskTool' | 'snapshotsDir'>,
  plan: Pick<CopyPlan, 'instanceId' | 'imageId' | 'dataDisks'>,
): Promise<OverlayBound> {
  const { required: worstCaseBytes, paths } = await measureDisks({ hypervisor, diskTool }, plan);
  const freeBytes = (await freeBytesAt(snapshotsDir)) + (await heldByEarlierAttempt(snapshotDir(snapshotsDir, plan.imageId)));
  const reserve = Math.min(RESERVE_MAX, Math.max(RESERVE_MIN, Math.floor(freeBytes / 8)));
  if (worstCaseBytes + reserve <= freeBytes) return { limitBytes: worstCaseBytes, worstCaseBytes, freeBytes, capped: false };
  const limitBytes = freeBytes - reserve;
  if (limitBytes >= OVERLAY_FLOOR) return { limitBytes, worstCaseBytes, freeBytes, capped: true };
  const needed = OVERLAY_FLOOR + RESERVE_MIN;
  const what =
    `the live snapshot of instance ${plan.instanceId} keeps the old data of the blocks its guest overwrites during the upload: it needs ` +
    `${MiB(needed)} in ${snapshotsDir} (VMSNAP_SNAPSHOTS_DIR), which has ${MiB(freeBytes)} free`;
  throw new VmsnapError('NoSpace', `${what}: free ${MiB(needed - freeBytes)} there or point it at a larger disk; the guest was not touched`, {
    snapshotsDir,
    neededBytes: needed,
    freeBytes,
    disk: paths,
  });
}
