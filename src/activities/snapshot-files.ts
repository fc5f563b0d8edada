// A snapshot's temp dir on the host (<snapshots dir>/<image id>/, 0700) and the copy in it: made
// fresh by each attempt that copies anew, removed on every failure, checked and measured before the
// upload. A cold copy's pause guard runs in it (pause-guard-files.ts): whoever removes or remakes
// the dir stops that guard first, so that it never copies on, or resumes a guest, for a snapshot
// that is over.
import { chmod, mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ActivityDeps } from './deps.js';
import { stopPauseGuard } from './pause-guard-files.js';
import { bootId } from '../drivers/files.js';
import { VmsnapError } from '../shared/errors.js';
import type { DiskFormat } from '../shared/types.js';

/** The copy a snapshot uploads. */
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

/** The temp dir of one snapshot; the image id is a validated UUID, so it is a safe file name. */
export function snapshotDir(snapshotsDir: string, imageId: string): string {
  return join(snapshotsDir, imageId);
}

/** A fresh, private temp dir: a retry starts over, whatever an earlier attempt left. */
export async function freshDir(snapshotsDir: string, imageId: string): Promise<string> {
  const dir = snapshotDir(snapshotsDir, imageId);
  await stopPauseGuard(dir);
  await rm(dir, { recursive: true, force: true });
  // 0711: QEMU's user must traverse it to reach a live copy's target, but may list nothing.
  await mkdir(snapshotsDir, { recursive: true, mode: 0o711 });
  await mkdir(dir, { mode: 0o700 });
  await chmod(dir, 0o700);
  return dir;
}

/**
 * The copy's file in a fresh temp dir, created 0600 before qemu-img opens it (it keeps an existing
 * file's mode): never readable by others.
 */
export async function privateTarget(snapshotsDir: string, input: { imageId: string; diskFormat: DiskFormat }): Promise<string> {
  const target = join(await freshDir(snapshotsDir, input.imageId), `disk.${input.diskFormat}`);
  await writeFile(target, '', { mode: 0o600 });
  return target;
}

/** A set's data disk's copy in the temp dir `dir` (made by privateTarget), created 0600 like the root disk's. */
export async function privateDataTarget(dir: string, dev: string, diskFormat: DiskFormat): Promise<string> {
  // dev is a target device name the domain XML gave (vdb, sdc): checked to be a plain name before it names a file.
  if (!/^[a-z][a-z0-9]*$/.test(dev)) throw new VmsnapError('InvalidInput', `disk target ${JSON.stringify(dev)} is not a device name like vdb`);
  const target = join(dir, `disk-${dev}.${diskFormat}`);
  await writeFile(target, '', { mode: 0o600 });
  return target;
}

/** Private, checked (qcow2) and measured: what the upload may send. */
export async function finishCopy(
  { diskTool }: Pick<ActivityDeps, 'diskTool'>,
  path: string,
  diskFormat: DiskFormat,
  virtualSize: number,
): Promise<ConvertedDisk> {
  await chmod(path, 0o600);
  if (diskFormat === 'qcow2') {
    const check = await diskTool.check(path, 'qcow2');
    if (!check.ok) throw new VmsnapError('ImageCorrupt', `qemu-img check of the copy failed: ${check.message}`);
  }
  return { path, diskFormat, size: (await stat(path)).size, virtualSize, bootId: await bootId() };
}

/** Runs a copy into the snapshot's temp dir: on any failure the dir goes, and the failure goes on. */
export async function copyingInto<T>(snapshotsDir: string, imageId: string, copy: () => Promise<T>): Promise<T> {
  try {
    return await copy();
  } catch (err) {
    await removeSnapshotFiles(snapshotsDir, imageId);
    throw err;
  }
}

export async function removeSnapshotFiles(snapshotsDir: string, imageId: string): Promise<void> {
  const dir = snapshotDir(snapshotsDir, imageId);
  await stopPauseGuard(dir);
  await rm(dir, { recursive: true, force: true });
}
