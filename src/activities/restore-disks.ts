// A set's restore puts one image on each disk of its manifest. Before anything stops, the domain's
// disks must still be the ones the set was taken of: every disk of the manifest a local file disk
// of the domain that vmsnap can write, the root where it was, and no disk of the domain that a
// snapshot of every disk would take left out of the set (a disk added since would keep contents
// of another point in time than the others).
import { chooseDisks } from './disk-choice.js';
import type { ActivityDeps } from './deps.js';
import { restorableDisk } from './restore-files.js';
import { VmsnapError } from '../shared/errors.js';

export interface SetDiskRef {
  dev: string;
  role: 'root' | 'data';
}

/** Refuses (InvalidInput, naming the disk) a set whose disks no longer match the domain's; changes nothing. */
export async function checkRestoreDisks(
  deps: Pick<ActivityDeps, 'hypervisor'>,
  input: { instanceId: string; setId: string; disks: SetDiskRef[] },
): Promise<void> {
  const { instanceId, setId } = input;
  const refuse = (why: string, disk: string) =>
    new VmsnapError('InvalidInput', `instance ${instanceId} cannot be restored from snapshot set ${setId}: ${why}; nothing was changed`, { disk });
  const domain = await deps.hypervisor.disks(instanceId);
  const { chosen, skipped } = chooseDisks(instanceId, domain, 'all');
  const root = input.disks.find((d) => d.role === 'root');
  if (root && root.dev !== chosen[0]!.dev) throw refuse(`the set's root disk is ${root.dev}, the instance's is ${chosen[0]!.dev}`, root.dev);
  for (const disk of input.disks) {
    if (chosen.some((c) => c.dev === disk.dev)) continue;
    const reason = skipped.find((s) => s.dev === disk.dev)?.reason;
    if (reason) throw refuse(`its disk ${disk.dev} is in the set, but is now ${reason}`, disk.dev);
    throw refuse(`the set has a disk ${disk.dev}, the instance has none (removed since the snapshot?)`, disk.dev);
  }
  for (const disk of chosen) {
    if (input.disks.some((d) => d.dev === disk.dev)) continue;
    throw refuse(`its disk ${disk.dev} (${disk.path}) is not in the set (added since the snapshot?); take a new snapshot with --disks all`, disk.dev);
  }
  // Each a file in a format vmsnap writes (InstanceInvalidState / DiskNotFound otherwise).
  for (const disk of input.disks) await restorableDisk(deps, instanceId, disk.dev);
}
