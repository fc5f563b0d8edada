// The activity factory: builds every activity from its dependencies, split by task queue. Each
// activity is a named function of its module that takes its dependencies and its input; this file
// only says which queue runs which.
import { coldCopyDisk } from './cold-copy.js';
import type { ActivityDeps } from './deps.js';
import { chooseDisks } from './disk-choice.js';
import { backupActivities } from './backups.js';
import { withTypedFailures } from './failures.js';
import { heartbeatingFromStart } from './heartbeat.js';
import { imageRecordActivities } from './image-record.js';
import { instanceStateActivities } from './instance-state.js';
import { inventoryActivities } from './inventory.js';
import { liveCopyDisk } from './live-copy.js';
import { endLiveExport, exportLiveDisk, uploadLiveExport } from './live-export.js';
import { defineNewInstance, newInstanceDiskPath, newInstanceDiskPaths, removeAbandonedNewInstances, removeNewInstance } from './new-instance.js';
import { checkRestoreDisks } from './restore-disks.js';
import { powerActivities } from './power.js';
import { reconcileHostActivities, reconcileMainActivities } from './reconcile.js';
import { prepareRestoreImage } from './restore-download.js';
import { preRestoreDisk, prunePreRestoreDisks } from './restore-files.js';
import { restoreImageActivities } from './restore-image.js';
import { rollbackDisk, stopSwapStart, undoRestore } from './restore-swap.js';
import { retentionActivities } from './retention.js';
import { removeSnapshotFiles } from './snapshot-files.js';
import { slotActivities, slotReleaseActivities } from './slots.js';
import { uploadActivities } from './upload.js';
import type { DiskSelection } from '../shared/disk-set.js';

export type { ActivityDeps } from './deps.js';

/** Activities of the main task queue: image record, store, reconciler, retention and backup rotation. */
export function createMainActivities(deps: Pick<ActivityDeps, 'store' | 'imageService' | 'identity' | 'settings' | 'workflows'>) {
  return withTypedFailures({
    ...imageRecordActivities(deps),
    ...instanceStateActivities(deps),
    ...reconcileMainActivities(deps),
    ...retentionActivities(deps),
    ...restoreImageActivities(deps),
    ...backupActivities(deps),
  });
}

/** Activities bound to the hypervisor host that holds the instance. */
export function createHostActivities(deps: ActivityDeps) {
  const activities = withTypedFailures({
    ...powerActivities(deps),
    ...inventoryActivities(deps),
    ...reconcileHostActivities(deps),
    ...slotReleaseActivities(),
    ...uploadActivities(deps),
    // Which disks a snapshot takes (before it takes the instance: a bad selection changes nothing).
    chooseInstanceDisks: async ({ instanceId, selection }: { instanceId: string; selection: DiskSelection }) =>
      chooseDisks(instanceId, await deps.hypervisor.disks(instanceId), selection),
    // A snapshot's copy and its temp dir.
    coldCopyDisk: (input: Parameters<typeof coldCopyDisk>[1]) => coldCopyDisk(deps, input),
    liveCopyDisk: (input: Parameters<typeof liveCopyDisk>[1]) => liveCopyDisk(deps, input),
    // A live snapshot streamed from the backup job's point in time: the job, the upload, its end.
    exportLiveDisk: (input: Parameters<typeof exportLiveDisk>[1]) => exportLiveDisk(deps, input),
    uploadLiveExport: (input: Parameters<typeof uploadLiveExport>[1]) => uploadLiveExport(deps, input),
    endLiveExport: (input: Parameters<typeof endLiveExport>[1]) => endLiveExport(deps, input),
    removeSnapshotFiles: async (imageId: string) => removeSnapshotFiles(deps.snapshotsDir, imageId),
    // A restore, its undo and its rollback.
    prepareRestoreImage: (input: Parameters<typeof prepareRestoreImage>[1]) => prepareRestoreImage(deps, input),
    stopSwapStart: (input: Parameters<typeof stopSwapStart>[1]) => stopSwapStart(deps, input),
    undoRestore: (input: Parameters<typeof undoRestore>[1]) => undoRestore(deps, input),
    preRestoreDisk: (instanceId: string) => preRestoreDisk(deps, instanceId),
    rollbackDisk: (input: Parameters<typeof rollbackDisk>[1]) => rollbackDisk(deps, input),
    prunePreRestoreDisks: ({ host }: { host: string }) => prunePreRestoreDisks(deps, host),
    // A restore as a new instance.
    newInstanceDiskPath: (input: Parameters<typeof newInstanceDiskPath>[1]) => newInstanceDiskPath(deps, input),
    newInstanceDiskPaths: (input: Parameters<typeof newInstanceDiskPaths>[1]) => newInstanceDiskPaths(deps, input),
    checkRestoreDisks: (input: Parameters<typeof checkRestoreDisks>[1]) => checkRestoreDisks(deps, input),
    defineNewInstance: (input: Parameters<typeof defineNewInstance>[1]) => defineNewInstance(deps, input),
    removeNewInstance: (input: Parameters<typeof removeNewInstance>[1]) => removeNewInstance(deps, input),
    removeAbandonedNewInstances: (input: Parameters<typeof removeAbandonedNewInstances>[1]) => removeAbandonedNewInstances(deps, input),
  });
  return heartbeatingFromStart(activities, SHORT_HOST_STEPS);
}

/**
 * The host steps of seconds that do not report progress (the workflows' quick, resume and cleanup
 * options, which carry a heartbeat timeout): they heartbeat from their start, so a task handed to a
 * host worker that died is tried again after the heartbeat timeout, not after a minute.
 */
export const SHORT_HOST_STEPS = [
  'inspectInstance',
  'chooseInstanceDisks',
  'resumeInstance',
  'thawInstance',
  'removeSnapshotFiles',
  'endLiveExport',
  'newInstanceDiskPath',
  'newInstanceDiskPaths',
  'checkRestoreDisks',
  'preRestoreDisk',
] as const;

/** The activity that holds a host's snapshot slot, for the host's slot worker. */
export function createSlotActivities(deps: Pick<ActivityDeps, 'workflows' | 'hypervisor'>) {
  return withTypedFailures(slotActivities(deps));
}

export type SlotActivities = ReturnType<typeof createSlotActivities>;
export type MainActivities = ReturnType<typeof createMainActivities>;
export type HostActivities = ReturnType<typeof createHostActivities>;
