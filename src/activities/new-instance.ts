// Restore as a new instance: the image goes to a new disk beside the instance's, and a new domain
// like the instance (new name, UUID and MACs) runs on it. The instance itself is never touched. A
// claim is written before anything is made and removed when the restore completes or is undone:
// what the reconciler removes when its run is gone.
import { Context } from '@temporalio/activity';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { ActivityDeps } from './deps.js';
import { beating, startAndConfirm, type ConfirmedBy } from './guest-start.js';
import { restorableDisk, writeWhole, type RestoreStep } from './restore-files.js';
import type { PowerState } from '../drivers/hypervisor.js';

/** A restore as a new instance in progress on this host. */
export interface NewInstanceMarker {
  name: string;
  diskPath: string;
  /** The instance it is a copy of. */
  instanceId: string;
  /** The restore run: "<workflow id>/<run id>". */
  owner: string;
  at: string;
  /** A set's restore: the new disk of each data disk, by target device. */
  dataDisks?: Record<string, string>;
}

export interface NewInstance extends RestoreStep {
  name: string;
  diskPath: string;
  /** A set's restore: the new disk of each data disk, by target device. */
  dataDisks?: Record<string, string>;
}

function claims({ snapshotsDir }: Pick<ActivityDeps, 'snapshotsDir'>) {
  const dir = join(snapshotsDir, 'new-instances');
  return { dir, of: (name: string) => join(dir, `${name}.json`) };
}

/** Where the new instance's disk goes, beside the original's: claimed before anything is made. */
export async function newInstanceDiskPath(deps: ActivityDeps, input: { instanceId: string; name: string }): Promise<string> {
  return (await newInstanceDiskPaths(deps, { ...input, dataDevs: [] })).diskPath;
}

/** A set's restore as new: a new disk beside each of the original's disks (root and `dataDevs`), all claimed at once. */
export async function newInstanceDiskPaths(
  deps: ActivityDeps,
  input: { instanceId: string; name: string; dataDevs: string[] },
): Promise<{ diskPath: string; dataDisks: Record<string, string> }> {
  const disk = await restorableDisk(deps, input.instanceId);
  const diskPath = join(dirname(disk.path), `${input.name}.vmsnap-new.${disk.format}`);
  const dataDisks: Record<string, string> = {};
  for (const dev of input.dataDevs) {
    const data = await restorableDisk(deps, input.instanceId, dev);
    dataDisks[dev] = join(dirname(data.path), `${input.name}-${dev}.vmsnap-new.${data.format}`);
  }
  const run = Context.current().info.workflowExecution;
  const owner = run ? `${run.workflowId}/${run.runId}` : 'unknown';
  const marker: NewInstanceMarker = { name: input.name, diskPath, instanceId: input.instanceId, owner, at: new Date().toISOString() };
  if (input.dataDevs.length) marker.dataDisks = dataDisks;
  const claim = claims(deps);
  await mkdir(claim.dir, { recursive: true });
  await writeWhole(claim.of(input.name), marker);
  return { diskPath, dataDisks };
}

/** Defines the new domain on the new disk and starts it as the original runs. */
export function defineNewInstance(
  deps: ActivityDeps,
  input: NewInstance & { powerState: PowerState },
): Promise<{ newInstanceId: string; startedAt: number; confirmedBy: ConfirmedBy }> {
  return beating(async () => {
    await deps.store.recordEvent({
      instanceId: input.instanceId,
      action: 'rebuild',
      event: 'define-new',
      requestId: input.owner,
      details: { name: input.name, diskPath: input.diskPath },
    });
    // A restore terminated meanwhile (its heartbeat says so) defines nothing more.
    Context.current().cancellationSignal.throwIfAborted();
    const copy = { name: input.name, diskPath: input.diskPath, ...(input.dataDisks ? { dataDisks: input.dataDisks } : {}) };
    const newInstanceId = await deps.hypervisor.defineCopy(input.instanceId, copy);
    const started = await startAndConfirm(deps, newInstanceId, input.powerState);
    await rm(claims(deps).of(input.name), { force: true });
    return { newInstanceId, ...started };
  });
}

/** Removes a new instance (by name, only if on our new disk), its disk and its claim; the original is never touched. */
export async function removeNewInstance(deps: ActivityDeps, input: NewInstance): Promise<void> {
  const { hypervisor } = deps;
  const made = (await hypervisor.listInstances()).find((d) => d.name === input.name && d.id !== input.instanceId);
  if (made && (await hypervisor.rootDisk(made.id)).path === input.diskPath) await hypervisor.undefine(made.id);
  for (const path of [input.diskPath, ...Object.values(input.dataDisks ?? {})]) {
    await rm(path, { force: true });
    await rm(`${path}.vmsnap-download`, { force: true });
  }
  await rm(claims(deps).of(input.name), { force: true });
}

/**
 * The reconciler's part: a new instance whose restore run ended without completing (terminated,
 * timed out, lost) is removed with its disk. A run Temporal does not know is given `graceMs` since
 * the claim (it may be another Temporal's, still going).
 */
export async function removeAbandonedNewInstances(deps: ActivityDeps, input: { graceMs: number }): Promise<string[]> {
  const claim = claims(deps);
  const removed: string[] = [];
  const names = (await readdir(claim.dir).catch(() => [] as string[])).filter((n) => n.endsWith('.json'));
  for (const file of names) {
    let marker: NewInstanceMarker;
    try {
      marker = JSON.parse(await readFile(join(claim.dir, file), 'utf8')) as NewInstanceMarker;
    } catch {
      continue; // being written (the .tmp is renamed in whole), or not ours
    }
    const status = await deps.workflows.runStatus(marker.owner);
    if (status === 'running' || (status === 'unknown' && Date.now() - Date.parse(marker.at) < input.graceMs)) continue;
    // A completed run removed its claim itself; if one is left, the instance it made is kept.
    if (status !== 'completed') {
      const { instanceId, owner, name, diskPath, dataDisks } = marker;
      await removeNewInstance(deps, { instanceId, owner, name, diskPath, ...(dataDisks ? { dataDisks } : {}) });
      removed.push(marker.name);
    }
    await rm(join(claim.dir, file), { force: true });
  }
  return removed;
}
