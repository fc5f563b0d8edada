// The activity factory: builds every activity from its dependencies, split by task queue.
import type { ActivityDeps } from './deps.js';
import { withTypedFailures } from './failures.js';
import { heartbeatingFromStart } from './heartbeat.js';
import { diskActivities } from './disk.js';
import { imageRecordActivities } from './image-record.js';
import { instanceStateActivities } from './instance-state.js';
import { inventoryActivities } from './inventory.js';
import { powerActivities } from './power.js';
import { slotActivities, slotReleaseActivities } from './slots.js';
import { reconcileHostActivities, reconcileMainActivities } from './reconcile.js';
import { retentionActivities } from './retention.js';
import { uploadActivities } from './upload.js';
import { restoreActivities } from './restore.js';
import { restoreImageActivities } from './restore-image.js';

export type { ActivityDeps } from './deps.js';

/** Activities of the main task queue: image record, store, reconciler and retention. */
export function createMainActivities(deps: Pick<ActivityDeps, 'store' | 'imageService' | 'identity' | 'settings' | 'workflows'>) {
  return typedGroups(deps, [imageRecordActivities, instanceStateActivities, reconcileMainActivities, retentionActivities, restoreImageActivities]);
}

/** Activities bound to the hypervisor host that holds the instance. */
export function createHostActivities(deps: ActivityDeps) {
  const activities = typedGroups(deps, [
    powerActivities,
    diskActivities,
    uploadActivities,
    restoreActivities,
    inventoryActivities,
    reconcileHostActivities,
    slotReleaseActivities,
  ]);
  return heartbeatingFromStart(activities, SHORT_HOST_STEPS);
}

/**
 * The host steps of seconds that do not report progress (the workflows' quick, resume and cleanup
 * options, which carry a heartbeat timeout): they heartbeat from their start, so a task handed to a
 * host worker that died is tried again after the heartbeat timeout, not after a minute.
 */
export const SHORT_HOST_STEPS = [
  'getPowerState',
  'inspectInstance',
  'liveCopySupport',
  'pauseInstance',
  'resumeInstance',
  'thawInstance',
  'removeSnapshotFiles',
  'newInstanceDiskPath',
  'preRestoreDisk',
] as const;

/** Every group built from the same deps, merged into one set whose failures leave typed. */
function typedGroups<D, G extends ((deps: D) => object)[]>(deps: D, groups: [...G]): AllOf<G> {
  return withTypedFailures(Object.assign({}, ...groups.map((group) => group(deps)))) as AllOf<G>;
}

/** The activities of all the groups, as one type (the workflows' proxies read their names from it). */
type AllOf<G> = G extends [(deps: never) => infer First, ...infer Rest] ? First & AllOf<Rest> : unknown;

/** The activity that holds a host's snapshot slot, for the host's slot worker. */
export function createSlotActivities(deps: Pick<ActivityDeps, 'workflows' | 'hypervisor'>) {
  return slotActivities(deps);
}

export type SlotActivities = ReturnType<typeof createSlotActivities>;
export type MainActivities = ReturnType<typeof createMainActivities>;
export type HostActivities = ReturnType<typeof createHostActivities>;
