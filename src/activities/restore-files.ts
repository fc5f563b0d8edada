// The files of a restore beside the instance's disk P, and the swap that puts the verified image in
// place. One restore per instance at a time (the task state sees to that):
//   P.vmsnap-download      the bytes from Glance, while they stream
//   P.vmsnap-restore       the verified image in the disk's format, ready to swap in
//   P.vmsnap-pre-restore   the previous disk, kept for the retention window (rollback)
//   P.vmsnap-pre-restore.json  who swapped it in and until when it is kept
//   P.vmsnap-pre-restore.superseded  an earlier restore's pre-restore disk, removed after the start
// Every path keeps one disk in place: the swap is link(disk, pre-restore) then rename(new, disk),
// both atomic, so at any instant the disk's path holds the old or the new disk and the old one has a name.
import { link, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { ActivityDeps } from './deps.js';
import { fsyncPath } from '../drivers/files.js';
import type { RootDisk } from '../drivers/hypervisor.js';
import { VmsnapError } from '../shared/errors.js';

/** Formats vmsnap can put on an instance's disk. */
export const RESTORABLE_FORMATS = ['qcow2', 'raw'];

export function restoreFiles(diskPath: string) {
  return {
    download: `${diskPath}.vmsnap-download`,
    restored: `${diskPath}.vmsnap-restore`,
    preRestore: `${diskPath}.vmsnap-pre-restore`,
    /** An earlier restore's pre-restore disk, replaced by this one's: removed after the start. */
    superseded: `${diskPath}.vmsnap-pre-restore.superseded`,
    marker: `${diskPath}.vmsnap-pre-restore.json`,
  };
}

/** Who swapped the pre-restore disk aside, and until when it is kept. */
export interface PreRestoreMarker {
  instanceId: string;
  imageId: string;
  /** The restore run that swapped the disk. */
  owner: string;
  keptAt: string;
  keptUntil: string;
}

/** A step of a restore on its instance. */
export interface RestoreStep {
  instanceId: string;
  /** The restore's workflow id and run id. */
  owner: string;
}

export async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

export async function inode(path: string): Promise<number | undefined> {
  return stat(path).then(
    (s) => s.ino,
    () => undefined,
  );
}

export async function readMarker(path: string): Promise<PreRestoreMarker | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as PreRestoreMarker;
  } catch {
    return undefined;
  }
}

/** Writes a JSON file in whole (a temp file renamed over it): a reader never sees half of it. */
export async function writeWhole(path: string, value: unknown): Promise<void> {
  await writeFile(`${path}.tmp`, JSON.stringify(value), { mode: 0o600 });
  await rename(`${path}.tmp`, path);
}

/** The instance's disk `dev` (default: its root disk) as the domain defines it. */
export async function diskOf({ hypervisor }: Pick<ActivityDeps, 'hypervisor'>, instanceId: string, dev?: string): Promise<RootDisk> {
  if (dev === undefined) return hypervisor.rootDisk(instanceId);
  const disk = (await hypervisor.disks(instanceId)).find((d) => d.dev === dev);
  if (!disk?.path) throw new VmsnapError('DiskNotFound', `instance ${instanceId} has no local disk ${dev}`, { instance: instanceId, disk: dev });
  return { path: disk.path, format: disk.format };
}

/** The instance's disk (`dev`, default its root disk) as a restore needs it: a local file in a format vmsnap writes. */
export async function restorableDisk(deps: Pick<ActivityDeps, 'hypervisor'>, instanceId: string, dev?: string): Promise<RootDisk> {
  const disk = await diskOf(deps, instanceId, dev);
  const its = dev === undefined ? 'its disk' : `its disk ${dev}`;
  if (!RESTORABLE_FORMATS.includes(disk.format)) {
    throw new VmsnapError('InstanceInvalidState', `instance ${instanceId}: ${its} is ${disk.format}; vmsnap restores qcow2 and raw disks only`);
  }
  const st = await stat(disk.path).catch(() => undefined);
  if (!st) throw new VmsnapError('DiskNotFound', `instance ${instanceId}: ${its} ${disk.path} does not exist`);
  if (!st.isFile()) {
    throw new VmsnapError('InstanceInvalidState', `instance ${instanceId}: ${its} ${disk.path} is not a regular file; vmsnap restores file disks only`);
  }
  return disk;
}

/** The local file disks of the domain (where a restore may have left files beside a disk), root first. */
export async function fileDisks({ hypervisor }: Pick<ActivityDeps, 'hypervisor'>, instanceId: string): Promise<{ dev: string; path: string }[]> {
  const disks = await hypervisor.disks(instanceId);
  return disks.filter((d) => d.type === 'file' && d.path).map((d) => ({ dev: d.dev, path: d.path! }));
}

/**
 * Swaps the verified image in: link(disk, pre-restore), then rename(restored, disk). The guest
 * must be off. Safe to retry at any point of a dead attempt (it looks at what is there).
 */
export async function swapDisk(
  { store, settings }: Pick<ActivityDeps, 'store' | 'settings'>,
  input: RestoreStep & { imageId: string; diskPath: string },
): Promise<{ preRestorePath: string; keptUntil: string }> {
  const files = restoreFiles(input.diskPath);
  const marker = await readMarker(files.marker);
  if (marker?.owner === input.owner) return { preRestorePath: files.preRestore, keptUntil: marker.keptUntil };
  const keptUntil = new Date(Date.now() + settings.preRestoreRetentionMs).toISOString();
  const done = async () => {
    const m: PreRestoreMarker = { instanceId: input.instanceId, imageId: input.imageId, owner: input.owner, keptAt: new Date().toISOString(), keptUntil };
    await writeWhole(files.marker, m);
    return { preRestorePath: files.preRestore, keptUntil };
  };
  await store.recordEvent({ instanceId: input.instanceId, action: 'rebuild', event: 'swap', requestId: input.owner, details: { diskPath: input.diskPath } });
  if (!(await exists(files.restored))) {
    // An earlier attempt renamed it and died before writing the marker.
    const pre = await inode(files.preRestore);
    if (pre !== undefined && pre !== (await inode(input.diskPath))) return done();
    throw new VmsnapError('DiskNotFound', `instance ${input.instanceId}: the restored disk ${files.restored} is gone; nothing was swapped`);
  }
  if ((await inode(files.preRestore)) !== (await inode(input.diskPath))) {
    // An earlier restore's pre-restore disk is replaced by this one's. It is renamed aside, not
    // removed: freeing a whole disk's blocks takes time that grows with its size, and the guest is
    // down now. It is removed once the guest runs again.
    await rm(files.marker, { force: true });
    if (await exists(files.preRestore)) await rename(files.preRestore, files.superseded);
    await link(input.diskPath, files.preRestore);
  }
  await rename(files.restored, input.diskPath);
  const swapped = await done();
  await fsyncPath(dirname(input.diskPath)); // the renames survive a power loss
  return swapped;
}

/** What a rollback would put back: the kept pre-restore disk, or null when there is none. */
export async function preRestoreDisk(
  { hypervisor }: Pick<ActivityDeps, 'hypervisor'>,
  instanceId: string,
): Promise<{ path: string; keptUntil: string; imageId: string } | null> {
  const files = restoreFiles((await hypervisor.rootDisk(instanceId)).path);
  const marker = await readMarker(files.marker);
  if (!marker || !(await exists(files.preRestore))) return null;
  return { path: files.preRestore, keptUntil: marker.keptUntil, imageId: marker.imageId };
}

/** The reconciler's sweep: pre-restore disks of this host's instances past their window. */
export async function prunePreRestoreDisks({ hypervisor, store }: Pick<ActivityDeps, 'hypervisor' | 'store'>, host: string): Promise<string[]> {
  const removed: string[] = [];
  for (const instance of await store.listInstances()) {
    if (instance.host !== host) continue;
    // Every disk: a set's restore keeps a pre-restore file beside each disk it restored.
    const disks = await fileDisks({ hypervisor }, instance.id).catch(() => []);
    for (const disk of disks) {
      const files = restoreFiles(disk.path);
      const marker = await readMarker(files.marker);
      if (!marker || Date.parse(marker.keptUntil) > Date.now()) continue;
      await rm(files.preRestore, { force: true });
      await rm(files.marker, { force: true });
      removed.push(files.preRestore);
    }
  }
  return removed;
}
