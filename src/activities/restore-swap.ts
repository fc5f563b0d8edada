// The steps of a restore that touch the guest: stop, swap the verified image in, start (one host
// step, so that no round trip through Temporal sits inside the downtime); its undo; and the
// rollback to the pre-restore disk. Each is idempotent: a retry after a dead worker goes on from
// where it was.
import { Context } from '@temporalio/activity';
import { rename, rm } from 'node:fs/promises';
import type { ActivityDeps } from './deps.js';
import { beating, startAndConfirm, type ConfirmedBy } from './guest-start.js';
import { exists, fileDisks, inode, readMarker, restorableDisk, restoreFiles, swapDisk, type RestoreStep } from './restore-files.js';
import type { PowerState } from '../drivers/hypervisor.js';
import { VmsnapError } from '../shared/errors.js';

function event({ store }: Pick<ActivityDeps, 'store'>, step: RestoreStep, name: string, details: Record<string, unknown> = {}) {
  return store.recordEvent({ instanceId: step.instanceId, action: 'rebuild', event: name, requestId: step.owner, details });
}

export interface StoppedSwappedStarted {
  stoppedBy: 'shutdown' | 'destroy' | 'none';
  /** The last moment the guest was seen running: its downtime runs from here to startedAt. */
  stoppedAt: number;
  /** How long the guest was given to shut down by itself (ACPI) before it was off or destroyed. */
  shutdownWaitMs: number;
  startedAt: number;
  confirmedBy: ConfirmedBy;
  /** Where the downtime went, for the benchmark and the curious: stop → swapped → started, then the confirmation. */
  downtimeStepsMs: { swapAndTaskState: number; start: number; confirm: number };
  preRestorePath: string;
  keptUntil: string;
  /** Each disk swapped, in order (root first): where it is and where its previous disk is kept. */
  swapped: { dev?: string; diskPath: string; preRestorePath: string }[];
}

/** One disk a set's restore swaps: its target device and the image it gets. */
export interface SwapTarget {
  dev: string;
  imageId: string;
}

/** Task state rebuild_block_device_mapping → rebuild_spawning, as Nova's compute manager moves it between the two. */
async function spawning({ store }: Pick<ActivityDeps, 'store'>, step: RestoreStep): Promise<void> {
  if (await store.compareAndSwapTaskState(step.instanceId, 'rebuild_block_device_mapping', 'rebuild_spawning', step.owner)) return;
  const now = await store.getInstance(step.instanceId);
  // A retry finds its own change made already.
  if (now?.taskState === 'rebuild_spawning' && now.taskOwner === step.owner) return;
  const found = now?.taskState ?? 'None';
  throw new VmsnapError(
    'InstanceBusy',
    `instance ${step.instanceId} task state changed under this restore (expected rebuild_block_device_mapping, found ${found})`,
  );
}

/**
 * The guest's downtime in one step: stop the guest (graceful, destroy after the timeout), swap the
 * verified image in, task state → rebuild_spawning, start the guest in its prior power state and
 * confirm it runs. A stopped guest is not stopped again, a swapped disk not swapped again.
 */
export function stopSwapStart(
  deps: ActivityDeps,
  input: RestoreStep & { imageId: string; powerState: PowerState; forceStop?: boolean; disks?: SwapTarget[] },
): Promise<StoppedSwappedStarted> {
  const { hypervisor, settings } = deps;
  const timeoutMs = input.forceStop ? 0 : settings.restoreShutdownTimeoutMs;
  // What the step waits for, in its heartbeat: `vmsnap restore status` and --wait show it.
  let note: string | undefined;
  return beating(
    async () => {
      // Everything that can be looked up while the guest runs, is. A set's restore swaps every disk
      // of its set (root first); each swap is idempotent, so a retry after a death between two
      // swaps goes on where it was, and undoRestore puts back every disk this run swapped.
      const targets = input.disks ?? [{ dev: undefined, imageId: input.imageId }];
      const disks = [];
      for (const t of targets) disks.push({ ...t, ...(await restorableDisk(deps, input.instanceId, t.dev)) });
      await event(deps, input, 'stop');
      if (timeoutMs > 0 && input.powerState !== 'shutdown') {
        const until = new Date(Date.now() + timeoutMs).toISOString().slice(11, 19);
        note =
          `asked the guest to shut down (ACPI); it is destroyed if still running at ${until} UTC ` +
          `(${Math.round(timeoutMs / 1000)} s): vmsnap restore --force-stop skips the wait`;
      }
      const stopped = await hypervisor.stop(input.instanceId, timeoutMs, Context.current().cancellationSignal);
      const { stoppedBy, runningUntil: stoppedAt, shutdownWaitMs } = stopped;
      note = undefined;
      const swapped = [];
      for (const disk of disks) {
        const done = await swapDisk(deps, { instanceId: input.instanceId, owner: input.owner, imageId: disk.imageId, diskPath: disk.path });
        swapped.push({ ...(disk.dev !== undefined ? { dev: disk.dev } : {}), diskPath: disk.path, ...done });
      }
      await spawning(deps, input);
      const swappedAt = Date.now();
      const { startedAt, confirmedBy } = await startAndConfirm(deps, input.instanceId, input.powerState);
      const confirmedAt = Date.now();
      await event(deps, input, 'started', { powerState: input.powerState, confirmedBy });
      // Outside the downtime: freeing an earlier pre-restore disk's blocks.
      for (const disk of disks) await rm(restoreFiles(disk.path).superseded, { force: true });
      const downtimeStepsMs = { swapAndTaskState: swappedAt - stoppedAt, start: startedAt - swappedAt, confirm: confirmedAt - startedAt };
      const root = swapped[0]!;
      const kept = { preRestorePath: root.preRestorePath, keptUntil: root.keptUntil };
      const each = swapped.map(({ keptUntil: _, ...disk }) => disk);
      return { stoppedBy, stoppedAt, shutdownWaitMs, startedAt, confirmedBy, downtimeStepsMs, ...kept, swapped: each };
    },
    () => ({ phase: 'stopping', ...(note ? { note } : {}) }),
  );
}

/**
 * Compensation (and the reconciler's undo of an abandoned restore): removes what this restore left
 * beside each disk of the domain; if it swapped any disk, stops the guest and puts every previous
 * disk it swapped back; then starts the guest in its prior power state. Idempotent: a set's restore
 * that died between two disks' swaps is undone whole.
 */
export function undoRestore(deps: ActivityDeps, input: RestoreStep & { priorPowerState: string | undefined }): Promise<{ swappedBack: boolean }> {
  const { hypervisor, settings } = deps;
  return beating(async () => {
    let stopped = false;
    let swappedBack = false;
    for (const disk of await fileDisks(deps, input.instanceId)) {
      const files = restoreFiles(disk.path);
      await rm(files.download, { force: true });
      await rm(files.restored, { force: true });
      // An earlier restore's pre-restore disk this one replaced: its marker is gone already.
      await rm(files.superseded, { force: true });
      const marker = await readMarker(files.marker);
      const pre = await inode(files.preRestore);
      const cur = await inode(disk.path);
      if (pre !== undefined && pre === cur && !marker) {
        // Died between link and rename: the pre-restore name is only a second name of the disk.
        await rm(files.preRestore, { force: true });
      } else if (pre !== undefined && (marker?.owner === input.owner || (!marker && pre !== cur))) {
        if (!stopped) await hypervisor.stop(input.instanceId, settings.restoreShutdownTimeoutMs);
        stopped = true;
        await rename(files.preRestore, disk.path);
        await rm(files.marker, { force: true });
        swappedBack = true;
        await event(deps, input, 'swap-back', { diskPath: disk.path });
      }
    }
    const prior = input.priorPowerState;
    if ((prior === 'running' || prior === 'paused') && (await hypervisor.getInstance(input.instanceId)).powerState === 'shutdown') {
      await startAndConfirm(deps, input.instanceId, prior);
      await event(deps, input, 'started', { powerState: prior, by: 'compensation' });
    }
    return { swappedBack };
  });
}

/**
 * Rollback: the guest is stopped, the pre-restore disk renamed over the restored one, started
 * again. After a set's restore, every disk that restore swapped (its marker names the same run as
 * the root disk's) goes back; a disk an earlier restore swapped stays as it is.
 */
export function rollbackDisk(deps: ActivityDeps, input: RestoreStep & { powerState: PowerState }): Promise<{ stoppedAt: number; startedAt: number }> {
  const { hypervisor, settings } = deps;
  return beating(async () => {
    const root = await restorableDisk(deps, input.instanceId);
    const rootMarker = await readMarker(restoreFiles(root.path).marker);
    // A retry after the rename of the root disk finds its marker still there (markers go last, root's at the very end).
    if (!rootMarker) throw new VmsnapError('DiskNotFound', `instance ${input.instanceId} has no pre-restore disk to roll back to`);
    const disks = [{ path: root.path, files: restoreFiles(root.path) }];
    for (const disk of await fileDisks(deps, input.instanceId)) {
      const files = restoreFiles(disk.path);
      if (disk.path !== root.path && (await readMarker(files.marker))?.owner === rootMarker.owner) disks.push({ path: disk.path, files });
    }
    let stoppedAt = Date.now();
    let stopped = false;
    for (const { path, files } of disks) {
      if (!(await exists(files.preRestore))) continue; // a retry after its rename: in place already
      if (!stopped) {
        await event(deps, input, 'stop');
        stoppedAt = (await hypervisor.stop(input.instanceId, settings.restoreShutdownTimeoutMs)).runningUntil;
        stopped = true;
      }
      await rename(files.preRestore, path);
    }
    for (const { files } of disks.slice(1).reverse()) await rm(files.marker, { force: true });
    await rm(disks[0]!.files.marker, { force: true });
    const { startedAt } = await startAndConfirm(deps, input.instanceId, input.powerState);
    await event(deps, input, 'started', { powerState: input.powerState });
    return { stoppedAt, startedAt };
  });
}
