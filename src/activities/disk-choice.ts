// Which of an instance's disks a snapshot takes (SnapshotRequest.disks): the root disk only, as
// Nova's createImage; every disk; or the named ones, root included. Disks that cannot be part of a
// point-in-time image set are skipped with the reason: CD-ROMs and floppies (media, not the guest's
// data), read-only disks (nothing the guest writes) and shareable disks (other guests write them).
// A chosen disk that is not a local file or block device is refused, naming it.
import type { Hypervisor, InstanceDisk } from '../drivers/hypervisor.js';
import type { DiskSelection } from '../shared/disk-set.js';
import { VmsnapError } from '../shared/errors.js';

export interface ChosenDisk {
  /** Target device: vda, vdb ... */
  dev: string;
  bus: string;
  path: string;
  /** The format QEMU reads it in. */
  format: string;
  role: 'root' | 'data';
}

export interface DiskChoice {
  /** Root first, then data disks in the domain's order. */
  chosen: ChosenDisk[];
  skipped: SkippedDisk[];
}

export interface SkippedDisk {
  dev: string;
  reason: string;
}

function skipReason(disk: InstanceDisk): string | undefined {
  if (disk.device !== 'disk') return `a ${disk.device}: removable media, not the guest's data`;
  if (disk.readonly) return 'read-only: the guest writes nothing to it';
  if (disk.shareable) return 'shareable: other guests write it, so it has no point in time of this guest alone';
  return undefined;
}

function local(instanceId: string, disk: InstanceDisk, role: ChosenDisk['role']): ChosenDisk {
  if (!disk.path) {
    const leaveOut = role === 'root' ? '' : `; leave it out (--disks with the others)`;
    throw new VmsnapError(
      'DiskNotFound',
      `instance ${instanceId}: disk ${disk.dev || '(unnamed)'} is of type '${disk.type}'; only local file and block disks can be snapshotted${leaveOut}`,
      { instance: instanceId, disk: disk.dev, diskType: disk.type },
    );
  }
  return { dev: disk.dev, bus: disk.bus, path: disk.path, format: disk.format, role };
}

/** The disks `selection` takes of an instance with these disks. InvalidInput for a name it has not; DiskNotFound for one that is not local. */
export function chooseDisks(instanceId: string, disks: InstanceDisk[], selection: DiskSelection = 'root'): DiskChoice {
  const rootDisk = disks.find((d) => d.device === 'disk');
  if (!rootDisk) throw new VmsnapError('DiskNotFound', `instance ${instanceId} has no disk device`, { instance: instanceId });
  const root = local(instanceId, rootDisk, 'root');
  if (selection === 'root') return { chosen: [root], skipped: [] };
  const others = disks.filter((d) => d !== rootDisk);
  let wanted = others;
  if (Array.isArray(selection)) {
    const names = disks.map((d) => d.dev).filter(Boolean);
    const unknown = selection.filter((dev) => !names.includes(dev));
    if (unknown.length) {
      throw new VmsnapError('InvalidInput', `instance ${instanceId} has no disk ${unknown.join(', ')}; its disks are ${names.join(', ')}`, {
        instance: instanceId,
      });
    }
    if (!selection.includes(root.dev)) {
      throw new VmsnapError('InvalidInput', `the root disk ${root.dev} must be among the disks of a snapshot (the set is restored from its image)`, {
        instance: instanceId,
      });
    }
    wanted = others.filter((d) => selection.includes(d.dev));
  }
  const chosen = [root];
  const skipped: SkippedDisk[] = [];
  for (const disk of wanted) {
    const reason = skipReason(disk);
    if (reason) skipped.push({ dev: disk.dev, reason });
    else chosen.push(local(instanceId, disk, 'data'));
  }
  return { chosen, skipped };
}

/**
 * The disks a snapshot copies, looked up again on the host at the copy: the root disk, then each
 * data disk the workflow chose (by target device). A chosen disk the domain no longer has (detached
 * since) is DiskNotFound: the set would be short of it.
 */
export async function snapshotDisks(hypervisor: Hypervisor, instanceId: string, dataDisks: string[] = []): Promise<ChosenDisk[]> {
  const disks = await hypervisor.disks(instanceId);
  const present = dataDisks.filter((dev) => disks.some((d) => d.dev === dev));
  const { chosen } = chooseDisks(instanceId, disks, present.length ? [rootDev(instanceId, disks), ...present] : 'root');
  const missing = dataDisks.filter((dev) => !chosen.some((d) => d.dev === dev));
  if (missing.length) {
    throw new VmsnapError(
      'DiskNotFound',
      `instance ${instanceId}: disk ${missing.join(', ')} can no longer be copied (detached or changed since the snapshot began)`,
      {
        instance: instanceId,
      },
    );
  }
  return chosen;
}

function rootDev(instanceId: string, disks: InstanceDisk[]): string {
  const root = disks.find((d) => d.device === 'disk');
  if (!root) throw new VmsnapError('DiskNotFound', `instance ${instanceId} has no disk device`, { instance: instanceId });
  return root.dev;
}
