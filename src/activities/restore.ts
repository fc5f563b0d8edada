// Restore (Nova's rebuild) on the host: the image is downloaded and verified into a new file
// beside the instance's disk while the guest runs; only then is the guest stopped and the disk
// swapped, keeping the previous one as the pre-restore file. Every path keeps one disk in place:
// the swap is link(disk, pre-restore) then rename(new, disk), both atomic, so at any instant the
// disk's path holds either the old or the new disk and the old one has a name.
//
// Files beside the disk P (one restore per instance at a time: the task state sees to that):
//   P.vmsnap-download      the bytes from Glance, while they stream
//   P.vmsnap-restore       the verified image in the disk's format, ready to swap in
//   P.vmsnap-pre-restore   the previous disk, kept for the retention window (rollback)
//   P.vmsnap-pre-restore.json  who swapped it in and until when it is kept
//   P.vmsnap-pre-restore.superseded  an earlier restore's pre-restore disk, removed after the start
import { Context } from '@temporalio/activity';
import { link, mkdir, readdir, readFile, rename, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { ActivityDeps } from './deps.js';
import { keepHeartbeating } from './heartbeat.js';
import { fsyncPath } from '../drivers/files.js';
import type { PowerState } from '../drivers/hypervisor.js';
import { VmsnapError } from '../shared/errors.js';
import type { StepProgress } from '../shared/types.js';

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

/**
 * A restore as a new instance in progress on this host, written before its disk or domain exists
 * and removed when it completes or is undone: what the reconciler removes when its run is gone.
 */
export interface NewInstanceMarker {
  name: string;
  diskPath: string;
  /** The instance it is a copy of. */
  instanceId: string;
  /** The restore run: "<workflow id>/<run id>". */
  owner: string;
  at: string;
}

interface PreRestoreMarker {
  instanceId: string;
  imageId: string;
  /** The restore run that swapped the disk. */
  owner: string;
  keptAt: string;
  keptUntil: string;
}

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

/** What showed the started guest runs: its agent answering, or (no agent) the domain running. */
export type ConfirmedBy = 'guest-agent' | 'power-state' | 'none';

export interface RestoreStep {
  instanceId: string;
  /** The restore's workflow id and run id. */
  owner: string;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function inode(path: string): Promise<number | undefined> {
  return stat(path).then(
    (s) => s.ino,
    () => undefined,
  );
}

async function readMarker(path: string): Promise<PreRestoreMarker | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as PreRestoreMarker;
  } catch {
    return undefined;
  }
}

export function restoreActivities({ hypervisor, diskTool, imageService, store, settings, snapshotsDir, workflows }: ActivityDeps) {
  const newInstancesDir = join(snapshotsDir, 'new-instances');
  const newInstanceMarker = (name: string) => join(newInstancesDir, `${name}.json`);
  const event = (instanceId: string, owner: string, name: string, details: Record<string, unknown> = {}) =>
    store.recordEvent({ instanceId, action: 'rebuild', event: name, requestId: owner, details });

  /** The instance's disk as a restore needs it: a local file in a format vmsnap writes. */
  async function restorableDisk(instanceId: string) {
    const disk = await hypervisor.rootDisk(instanceId);
    if (!RESTORABLE_FORMATS.includes(disk.format)) {
      throw new VmsnapError('InstanceInvalidState', `instance ${instanceId}: its disk is ${disk.format}; vmsnap restores qcow2 and raw disks only`);
    }
    const st = await stat(disk.path).catch(() => undefined);
    if (!st) throw new VmsnapError('DiskNotFound', `instance ${instanceId}: its disk ${disk.path} does not exist`);
    if (!st.isFile())
      throw new VmsnapError('InstanceInvalidState', `instance ${instanceId}: its disk ${disk.path} is not a regular file; vmsnap restores file disks only`);
    return disk;
  }

  /**
   * Starts the guest in `state` and waits until it runs (and its agent answers, if it has one).
   * startedAt is when libvirt had started it: the confirmation is not downtime.
   */
  async function startAndConfirm(instanceId: string, state: PowerState): Promise<{ startedAt: number; confirmedBy: ConfirmedBy }> {
    if (state !== 'running' && state !== 'paused') return { startedAt: Date.now(), confirmedBy: 'none' };
    await hypervisor.start(instanceId, { paused: state === 'paused' });
    const startedAt = Date.now();
    const deadline = startedAt + settings.restoreStartTimeoutMs;
    const agent = state === 'running' && (await hypervisor.hasGuestAgent(instanceId));
    for (;;) {
      const now = (await hypervisor.getInstance(instanceId)).powerState;
      if (now === state && (!agent || (await hypervisor.pingGuestAgent(instanceId)))) return { startedAt, confirmedBy: agent ? 'guest-agent' : 'power-state' };
      if (now === 'shutdown' || now === 'crashed') {
        throw new VmsnapError('InstanceInvalidState', `instance ${instanceId} is ${now} right after it was started on the restored disk`);
      }
      if (Date.now() > deadline) {
        throw new VmsnapError(
          'InstanceInvalidState',
          `instance ${instanceId} is not ${state}${agent ? ' with its guest agent answering' : ''} ${settings.restoreStartTimeoutMs} ms after it was started`,
        );
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /**
   * Swaps the verified image in: link(disk, pre-restore), then rename(restored, disk). The guest
   * must be off. Safe to retry at any point of a dead attempt (it looks at what is there).
   */
  async function swapDisk(input: RestoreStep & { imageId: string; diskPath: string }): Promise<{ preRestorePath: string; keptUntil: string }> {
    const files = restoreFiles(input.diskPath);
    const keptUntil = new Date(Date.now() + settings.preRestoreRetentionMs).toISOString();
    const marker = await readMarker(files.marker);
    const done = async () => {
      const m: PreRestoreMarker = {
        instanceId: input.instanceId,
        imageId: input.imageId,
        owner: input.owner,
        keptAt: new Date().toISOString(),
        keptUntil,
      };
      await writeFile(`${files.marker}.tmp`, JSON.stringify(m), { mode: 0o600 });
      await rename(`${files.marker}.tmp`, files.marker);
      return { preRestorePath: files.preRestore, keptUntil: m.keptUntil };
    };
    if (marker?.owner === input.owner) return { preRestorePath: files.preRestore, keptUntil: marker.keptUntil };
    await event(input.instanceId, input.owner, 'swap', { diskPath: input.diskPath });
    if (!(await exists(files.restored))) {
      // An earlier attempt renamed it and died before writing the marker.
      const pre = await inode(files.preRestore);
      if (pre !== undefined && pre !== (await inode(input.diskPath))) return done();
      throw new VmsnapError('DiskNotFound', `instance ${input.instanceId}: the restored disk ${files.restored} is gone; nothing was swapped`);
    }
    if ((await inode(files.preRestore)) !== (await inode(input.diskPath))) {
      // An earlier restore's pre-restore disk is replaced by this one's. It is renamed aside, not
      // removed: freeing a whole disk's blocks takes time that grows with its size, and the guest
      // is down now. It is removed once the guest runs again (removeSuperseded).
      await rm(files.marker, { force: true });
      if (await exists(files.preRestore)) await rename(files.preRestore, files.superseded);
      await link(input.diskPath, files.preRestore);
    }
    await rename(files.restored, input.diskPath);
    const swapped = await done();
    await fsyncPath(dirname(input.diskPath)); // the renames survive a power loss
    return swapped;
  }

  async function undo(input: RestoreStep & { priorPowerState: string | undefined }): Promise<{ swappedBack: boolean }> {
    const disk = await hypervisor.rootDisk(input.instanceId);
    const files = restoreFiles(disk.path);
    await rm(files.download, { force: true });
    await rm(files.restored, { force: true });
    // An earlier restore's pre-restore disk this one replaced: its marker is gone already.
    await rm(files.superseded, { force: true });
    const marker = await readMarker(files.marker);
    const pre = await inode(files.preRestore);
    const cur = await inode(disk.path);
    let swappedBack = false;
    if (pre !== undefined && pre === cur && !marker) {
      // Died between link and rename: the pre-restore name is only a second name of the disk.
      await rm(files.preRestore, { force: true });
    } else if (pre !== undefined && (marker?.owner === input.owner || (!marker && pre !== cur))) {
      await hypervisor.stop(input.instanceId, settings.restoreShutdownTimeoutMs);
      await rename(files.preRestore, disk.path);
      await rm(files.marker, { force: true });
      swappedBack = true;
      await event(input.instanceId, input.owner, 'swap-back', {});
    }
    const prior = input.priorPowerState;
    if ((prior === 'running' || prior === 'paused') && (await hypervisor.getInstance(input.instanceId)).powerState === 'shutdown') {
      await startAndConfirm(input.instanceId, prior);
      await event(input.instanceId, input.owner, 'started', { powerState: prior, by: 'compensation' });
    }
    return { swappedBack };
  }

  async function rollback(input: RestoreStep & { powerState: PowerState }): Promise<{ stoppedAt: number; startedAt: number }> {
    const disk = await restorableDisk(input.instanceId);
    const files = restoreFiles(disk.path);
    if (!(await exists(files.preRestore))) {
      // A retry after the rename: the pre-restore disk is in place already.
      if (!(await readMarker(files.marker))) throw new VmsnapError('DiskNotFound', `instance ${input.instanceId} has no pre-restore disk to roll back to`);
    } else {
      await event(input.instanceId, input.owner, 'stop');
      await hypervisor.stop(input.instanceId, settings.restoreShutdownTimeoutMs);
      await rename(files.preRestore, disk.path);
    }
    const stoppedAt = Date.now();
    await rm(files.marker, { force: true });
    const { startedAt } = await startAndConfirm(input.instanceId, input.powerState);
    await event(input.instanceId, input.owner, 'started', { powerState: input.powerState });
    return { stoppedAt, startedAt };
  }

  /** Removes a new instance of a restore as new (by name, only if on our new disk), its disk and its claim. */
  async function removeNew(input: RestoreStep & { name: string; diskPath: string }): Promise<void> {
    const domains = await hypervisor.listInstances();
    const made = domains.find((d) => d.name === input.name && d.id !== input.instanceId);
    // Only a domain on our new disk is ours to remove.
    if (made && (await hypervisor.rootDisk(made.id)).path === input.diskPath) await hypervisor.undefine(made.id);
    await rm(input.diskPath, { force: true });
    await rm(`${input.diskPath}.vmsnap-download`, { force: true });
    await rm(newInstanceMarker(input.name), { force: true });
  }

  /**
   * Runs a power step with heartbeats from its start, so a dead worker's step (or a task handed to
   * a worker that was gone) moves on after the heartbeat timeout, not the step's whole timeout.
   */
  async function beating<T>(step: () => Promise<T>): Promise<T> {
    const stop = keepHeartbeating(() => ({ phase: 'power' }), 1000);
    try {
      return await step();
    } finally {
      stop();
    }
  }

  return {
    /**
     * Downloads the image beside the disk, verifying size and sha512 as it streams, checks it with
     * qemu-img and converts it to the disk's format. The guest is not touched. A retry starts over.
     */
    async prepareRestoreImage(input: PrepareRestoreInput): Promise<PreparedRestore> {
      let received = 0;
      let phase: StepProgress['phase'] = 'downloading';
      let percent = 0;
      // From the start: short of its 6 h, the step's timeout is the heartbeat's (a task handed to a
      // worker that died is tried again after it), and the lookups before the download count too.
      const stop = keepHeartbeating((): StepProgress =>
        phase === 'downloading'
          ? {
              phase,
              percent: input.expected.size ? (100 * received) / input.expected.size : 100,
              bytesDone: received,
              bytesTotal: input.expected.size,
            }
          : { phase, percent, bytesDone: 0, bytesTotal: 0 },
      );
      try {
        const disk = await restorableDisk(input.instanceId);
        const files = input.newDiskPath ? { download: `${input.newDiskPath}.vmsnap-download`, restored: input.newDiskPath } : restoreFiles(disk.path);
        if (input.newDiskPath && (await exists(input.newDiskPath)) && !(await exists(`${input.newDiskPath}.vmsnap-download`))) {
          // Not ours (a retry of ours still has its download beside it, or removed both).
          throw new VmsnapError('InvalidInput', `${input.newDiskPath} exists already: choose another name for the new instance`);
        }
        const converted = input.imageFormat !== disk.format;
        // Room for the download, and for the converted copy beside it (at most the virtual size).
        const needed = input.expected.size + (converted ? (input.virtualSize ?? input.expected.size * 4) : 0);
        const fs = await statfs(disk.path);
        const free = fs.bavail * fs.bsize;
        if (free < needed) {
          throw new VmsnapError(
            'NoSpace',
            `instance ${input.instanceId}: ${free} bytes free beside its disk ${disk.path}, the restore needs ${needed}; nothing was changed`,
            { free, needed },
          );
        }
        await rm(files.download, { force: true });
        await rm(files.restored, { force: true });

        const signal = Context.current().cancellationSignal;
        try {
          const got = await imageService.downloadFile(input.imageId, files.download, {
            expected: input.expected,
            onProgress: (n) => (received = n),
            signal,
          });
          const info = await diskTool.info(files.download, { format: input.imageFormat });
          if (info.backingFile) {
            throw new VmsnapError(
              'InvalidInput',
              `image ${input.imageId} has a backing file (${info.backingFile}): vmsnap restores self-contained images only`,
            );
          }
          const current = await diskTool.info(disk.path, { format: disk.format, forceShare: true });
          if (info.virtualSize > current.virtualSize && !input.allowGrow) {
            throw new VmsnapError(
              'InvalidInput',
              `image ${input.imageId} is ${info.virtualSize} bytes (virtual), larger than the instance's disk (${current.virtualSize}): allow growing the disk (--allow-grow) to restore it`,
            );
          }
          const check = await diskTool.check(files.download, input.imageFormat);
          if (!check.ok) throw new VmsnapError('ImageCorrupt', `qemu-img check of image ${input.imageId} failed: ${check.message}`);
          if (converted) {
            phase = 'converting';
            await diskTool.convert({
              source: files.download,
              sourceFormat: input.imageFormat,
              target: files.restored,
              targetFormat: disk.format as 'qcow2' | 'raw',
              onProgress: (p) => (percent = p),
              signal,
            });
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
    },

    /** Restore as new: where the new instance's disk goes, beside the original's. */
    async newInstanceDiskPath(input: { instanceId: string; name: string }): Promise<string> {
      const disk = await restorableDisk(input.instanceId);
      const diskPath = join(dirname(disk.path), `${input.name}.vmsnap-new.${disk.format}`);
      // Claimed before anything is made, so that a restore terminated later is found and undone.
      const run = Context.current().info.workflowExecution;
      const owner = run ? `${run.workflowId}/${run.runId}` : 'unknown';
      const marker: NewInstanceMarker = { name: input.name, diskPath, instanceId: input.instanceId, owner, at: new Date().toISOString() };
      await mkdir(newInstancesDir, { recursive: true });
      await writeFile(`${newInstanceMarker(input.name)}.tmp`, JSON.stringify(marker), { mode: 0o600 });
      await rename(`${newInstanceMarker(input.name)}.tmp`, newInstanceMarker(input.name));
      return diskPath;
    },

    /** Restore as new: defines the new domain on the new disk and starts it as the original runs. */
    async defineNewInstance(
      input: RestoreStep & { name: string; diskPath: string; powerState: PowerState },
    ): Promise<{ newInstanceId: string; startedAt: number; confirmedBy: ConfirmedBy }> {
      return beating(async () => {
        await event(input.instanceId, input.owner, 'define-new', { name: input.name, diskPath: input.diskPath });
        // A restore terminated meanwhile (its heartbeat says so) defines nothing more.
        Context.current().cancellationSignal.throwIfAborted();
        const newInstanceId = await hypervisor.defineCopy(input.instanceId, { name: input.name, diskPath: input.diskPath });
        const started = await startAndConfirm(newInstanceId, input.powerState);
        await rm(newInstanceMarker(input.name), { force: true });
        return { newInstanceId, ...started };
      });
    },

    /** Compensation of restore as new: the new domain (by name) and its disk go; the original was never touched. */
    async removeNewInstance(input: RestoreStep & { name: string; diskPath: string }): Promise<void> {
      await removeNew(input);
    },

    /**
     * The reconciler's part of restore as new: a new instance whose restore run ended without
     * completing (terminated, timed out, lost) is removed with its disk. A run Temporal does not
     * know is given `graceMs` since the claim (it may be another Temporal's, still going).
     */
    async removeAbandonedNewInstances(input: { graceMs: number }): Promise<string[]> {
      const removed: string[] = [];
      const names = (await readdir(newInstancesDir).catch(() => [] as string[])).filter((n) => n.endsWith('.json'));
      for (const file of names) {
        let marker: NewInstanceMarker;
        try {
          marker = JSON.parse(await readFile(join(newInstancesDir, file), 'utf8')) as NewInstanceMarker;
        } catch {
          continue; // being written (the .tmp is renamed in whole), or not ours
        }
        const status = await workflows.runStatus(marker.owner);
        if (status === 'running' || (status === 'unknown' && Date.now() - Date.parse(marker.at) < input.graceMs)) continue;
        // A completed run removed its claim itself; if one is left, the instance it made is kept.
        if (status !== 'completed') await removeNew({ instanceId: marker.instanceId, owner: marker.owner, name: marker.name, diskPath: marker.diskPath });
        await rm(join(newInstancesDir, file), { force: true });
        if (status !== 'completed') removed.push(marker.name);
      }
      return removed;
    },

    /**
     * The guest's downtime in one step, so that no round trip through Temporal sits inside it:
     * stop the guest (graceful, destroy after the timeout), swap the verified image in (see
     * swapDisk), task state rebuild_block_device_mapping → rebuild_spawning (compare-and-swap, as
     * Nova's compute manager does between the two), start the guest in its prior power state and
     * confirm it runs. Each part is idempotent, so a retry after a dead worker goes on from where
     * it was: a stopped guest is not stopped again, a swapped disk not swapped again.
     */
    async stopSwapStart(input: RestoreStep & { imageId: string; powerState: PowerState }): Promise<{
      stoppedBy: 'shutdown' | 'destroy' | 'none';
      stoppedAt: number;
      startedAt: number;
      confirmedBy: ConfirmedBy;
      downtimeStepsMs: { swapAndTaskState: number; start: number; confirm: number };
      preRestorePath: string;
      keptUntil: string;
    }> {
      return beating(async () => {
        // Everything that can be looked up while the guest runs, is.
        const disk = await restorableDisk(input.instanceId);
        await event(input.instanceId, input.owner, 'stop');
        const stoppedBy = await hypervisor.stop(input.instanceId, settings.restoreShutdownTimeoutMs, Context.current().cancellationSignal);
        const stoppedAt = Date.now();
        const swapped = await swapDisk({ ...input, diskPath: disk.path });
        if (!(await store.compareAndSwapTaskState(input.instanceId, 'rebuild_block_device_mapping', 'rebuild_spawning', input.owner))) {
          const now = await store.getInstance(input.instanceId);
          // A retry finds its own change made already.
          if (!(now?.taskState === 'rebuild_spawning' && now.taskOwner === input.owner)) {
            throw new VmsnapError(
              'InstanceBusy',
              `instance ${input.instanceId} task state changed under this restore (expected rebuild_block_device_mapping, found ${now?.taskState ?? 'None'})`,
            );
          }
        }
        const swappedAt = Date.now();
        const { startedAt, confirmedBy } = await startAndConfirm(input.instanceId, input.powerState);
        const confirmedAt = Date.now();
        await event(input.instanceId, input.owner, 'started', { powerState: input.powerState, confirmedBy });
        // Outside the downtime: freeing an earlier pre-restore disk's blocks.
        await rm(restoreFiles(disk.path).superseded, { force: true });
        // Where the downtime went, for the benchmark and the curious: stop → swapped → started.
        const downtimeStepsMs = { swapAndTaskState: swappedAt - stoppedAt, start: startedAt - swappedAt, confirm: confirmedAt - startedAt };
        return { stoppedBy, stoppedAt, startedAt, confirmedBy, downtimeStepsMs, ...swapped };
      });
    },

    /**
     * Compensation (and the reconciler's undo of an abandoned restore): removes what this restore
     * left beside the disk; if it swapped the disk, stops the guest and puts the previous disk
     * back; then starts the guest in its prior power state. Idempotent.
     */
    async undoRestore(input: RestoreStep & { priorPowerState: string | undefined }): Promise<{ swappedBack: boolean }> {
      return beating(() => undo(input));
    },

    /** What a rollback would put back: the kept pre-restore disk, or why there is none. */
    async preRestoreDisk(instanceId: string): Promise<{ path: string; keptUntil: string; imageId: string } | null> {
      const disk = await hypervisor.rootDisk(instanceId);
      const files = restoreFiles(disk.path);
      const marker = await readMarker(files.marker);
      if (!marker || !(await exists(files.preRestore))) return null;
      return { path: files.preRestore, keptUntil: marker.keptUntil, imageId: marker.imageId };
    },

    /** Rollback: the guest is stopped, the pre-restore disk renamed over the restored one, started again. */
    async rollbackDisk(input: RestoreStep & { powerState: PowerState }): Promise<{ stoppedAt: number; startedAt: number }> {
      return beating(() => rollback(input));
    },

    /** The reconciler's sweep: pre-restore disks of this host's instances past their window. */
    async prunePreRestoreDisks(input: { host: string }): Promise<string[]> {
      const removed: string[] = [];
      for (const instance of await store.listInstances()) {
        if (instance.host !== input.host) continue;
        const disk = await hypervisor.rootDisk(instance.id).catch(() => undefined);
        if (!disk) continue;
        const files = restoreFiles(disk.path);
        const marker = await readMarker(files.marker);
        if (!marker || Date.parse(marker.keptUntil) > Date.now()) continue;
        await rm(files.preRestore, { force: true });
        await rm(files.marker, { force: true });
        removed.push(files.preRestore);
      }
      return removed;
    },
  };
}
