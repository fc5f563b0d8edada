// The reconciler's steps: find snapshots whose workflow is gone (terminated, timed out, lost)
// while they still hold a task state, a paused guest, an image or a temp dir, and undo them.
import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { ActivityDeps } from './deps.js';
import { removeSnapshotFiles } from './snapshot-files.js';
import { UUID_PATTERN } from '../shared/validation.js';
import { VmsnapError } from '../shared/errors.js';
import { VMSNAP_IMAGE_TAG } from '../shared/names.js';
import { REBUILD_TASK_STATES, type TaskState } from '../store/store.js';

export interface AbandonedSnapshot {
  instanceId: string;
  host: string;
  /** The dead run that still holds the task state. */
  owner: string;
  taskState: string;
  imageId?: string;
  /** A pause by this run was recorded with no resume after it: vmsnap paused the guest. */
  pausedByUs: boolean;
  /** A freeze (live mode, guest agent) by this run was recorded with no thaw after it. */
  frozenByUs: boolean;
  /** A restore (task state rebuild*): the power state it found, to start the guest in again. */
  restore?: { priorPowerState?: string };
}

export interface OrphanImage {
  imageId: string;
  /** The run that made it: "<workflow id>/<run id>". */
  owner: string;
  status: string;
  /** Why it is an orphan, in words for the report. */
  reason: string;
}

const STRAY_GUARD_LOG = /^\.pause-guard-[0-9a-f-]+\.log$/;

/** Glance statuses of an image whose data never (fully) arrived. */
const UNFINISHED_STATUSES = new Set(['queued', 'saving', 'uploading', 'importing', 'killed']);

export function reconcileMainActivities({ store, imageService, workflows }: Pick<ActivityDeps, 'store' | 'imageService' | 'workflows'>) {
  return {
    async findAbandonedSnapshots(): Promise<AbandonedSnapshot[]> {
      const abandoned: AbandonedSnapshot[] = [];
      for (const instance of await store.listInstancesWithTask()) {
        const owner = instance.taskOwner;
        if (!owner || (await workflows.runStatus(owner)) === 'running') continue;
        const events = (await store.listEvents(instance.id)).filter((e) => e.requestId === owner);
        const last = (event: string) => events.map((e) => e.event).lastIndexOf(event);
        const start = events.find((e) => e.event === 'start');
        const imageId = start?.details.imageId;
        const prior = start?.details.priorPowerState;
        const isRestore = REBUILD_TASK_STATES.includes(instance.taskState as TaskState) || start?.action === 'rebuild';
        abandoned.push({
          ...(isRestore ? { restore: typeof prior === 'string' ? { priorPowerState: prior } : {} } : {}),
          instanceId: instance.id,
          host: instance.host,
          owner,
          taskState: instance.taskState ?? 'None',
          ...(typeof imageId === 'string' ? { imageId } : {}),
          pausedByUs: last('pause') > last('resume'),
          frozenByUs: last('freeze') > last('thaw'),
        });
      }
      return abandoned;
    },

    /** Task state back to None, with a fault and an event that say the snapshot was abandoned. */
    async releaseAbandonedTask(snapshot: AbandonedSnapshot): Promise<void> {
      if (!(await store.releaseTaskState(snapshot.instanceId, snapshot.owner))) return;
      const what = snapshot.restore ? 'restore' : 'snapshot';
      const message = `${what} ${snapshot.owner} ended without finishing (terminated or lost) in task state ${snapshot.taskState}; the reconciler undid it`;
      await store.recordFault({
        instanceId: snapshot.instanceId,
        code: snapshot.restore ? 'RestoreAbandoned' : 'SnapshotAbandoned',
        message,
        details: { owner: snapshot.owner, imageId: snapshot.imageId },
      });
      await store.recordEvent({
        instanceId: snapshot.instanceId,
        action: snapshot.restore ? 'rebuild' : 'createImage',
        event: 'error',
        requestId: snapshot.owner,
        details: { code: snapshot.restore ? 'RestoreAbandoned' : 'SnapshotAbandoned' },
      });
    },

    /**
     * vmsnap's images that will never be finished, and why:
     * - its run ended without completing (failed, cancelled, terminated, timed out): whatever the
     *   image's status, it was never verified;
     * - its run completed but the image is not active (should not happen; nothing will finish it);
     * - its run is unknown to Temporal (history gone, or a run that never existed) and the image
     *   is unfinished (queued, saving, ...) and untouched for `staleAfterMs`. An active image of
     *   an unknown run is kept: it is most likely a completed snapshot whose history Temporal
     *   no longer keeps (past the namespace's retention).
     */
    async findOrphanImages(input: { staleAfterMs: number }): Promise<OrphanImage[]> {
      const orphans: OrphanImage[] = [];
      const statuses = new Map<string, string>();
      // A set's data images are hidden (os_hidden): Glance lists them only when asked for hidden ones.
      const hidden = await imageService.listImages({ tag: VMSNAP_IMAGE_TAG, os_hidden: 'true' });
      const listed = await imageService.listImagesByTag(VMSNAP_IMAGE_TAG);
      const images = [...new Map([...listed, ...hidden].map((i) => [i.id, i])).values()];
      for (const image of images) {
        const owner = typeof image.vmsnap_request_id === 'string' ? image.vmsnap_request_id : undefined;
        if (!owner) continue;
        if (!statuses.has(owner)) statuses.set(owner, await workflows.runStatus(owner));
        const run = statuses.get(owner);
        const found = { imageId: image.id, owner, status: image.status };
        if (run === 'running' || (run === 'completed' && image.status === 'active')) continue;
        if (run === 'completed') {
          orphans.push({ ...found, reason: `${image.status} although its run completed` });
        } else if (run === 'closed') {
          orphans.push({ ...found, reason: `${image.status}, its run ended without completing` });
        } else if (UNFINISHED_STATUSES.has(image.status)) {
          const since = Date.parse(String(image.updated_at ?? image.created_at ?? ''));
          const idleMs = Number.isNaN(since) ? Infinity : Date.now() - since;
          if (idleMs < input.staleAfterMs) continue;
          const idle = Number.isFinite(idleMs) ? `for ${Math.round(idleMs / 1000)} s` : 'since an unknown time';
          orphans.push({ ...found, reason: `${image.status} ${idle}, its run unknown to Temporal` });
        }
      }
      return orphans;
    },

    async runningSnapshotImageIds(): Promise<string[]> {
      return workflows.runningSnapshotImageIds();
    },
  };
}

export function reconcileHostActivities({ snapshotsDir, hypervisor }: Pick<ActivityDeps, 'snapshotsDir' | 'hypervisor'>) {
  return {
    /**
     * Ends the live copy job a dead snapshot left on its instance (a pull job never ends by
     * itself: its NBD export and scratch image would stay until the next copy); true if there was one.
     */
    async abortAbandonedLiveCopy(input: { instanceId: string; imageId: string }): Promise<boolean> {
      if (!UUID_PATTERN.test(input.imageId)) throw new VmsnapError('InvalidInput', `image id ${input.imageId} is not a UUID`);
      return (await hypervisor.abortLiveCopy?.(input.instanceId, join(snapshotsDir, input.imageId))) ?? false;
    },

    /**
     * Removes snapshot temp dirs of snapshots that are not running. A dir younger than the grace
     * period is kept: visibility lags, and a snapshot that just started may not be listed yet.
     */
    async removeOrphanSnapshotDirs(input: { keep: string[]; graceMs: number }): Promise<string[]> {
      const names = await readdir(snapshotsDir).catch(() => [] as string[]);
      const removed: string[] = [];
      for (const name of names) {
        // The log of a pause guard that died before it had a job (its step moves or removes it otherwise).
        if (STRAY_GUARD_LOG.test(name)) {
          const file = join(snapshotsDir, name);
          const since = (await stat(file).catch(() => undefined))?.mtimeMs ?? Date.now();
          if (Date.now() - since >= input.graceMs) await rm(file, { force: true });
          continue;
        }
        if (!UUID_PATTERN.test(name) || input.keep.includes(name)) continue;
        const dir = join(snapshotsDir, name);
        const { mtimeMs } = await stat(dir);
        if (Date.now() - mtimeMs < input.graceMs) continue;
        await removeSnapshotFiles(snapshotsDir, name); // a pause guard still there is stopped first
        removed.push(name);
      }
      return removed;
    },
  };
}
