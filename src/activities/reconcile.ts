// The reconciler's steps: find snapshots whose workflow is gone (terminated, timed out, lost)
// while they still hold a task state, a paused guest, an image or a temp dir, and undo them.
import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { ActivityDeps } from './deps.js';
import { UUID_PATTERN } from '../shared/validation.js';
import { VMSNAP_IMAGE_TAG } from '../shared/names.js';

export interface AbandonedSnapshot {
  instanceId: string;
  host: string;
  /** The dead run that still holds the task state. */
  owner: string;
  taskState: string;
  imageId?: string;
  /** A pause by this run was recorded with no resume after it: vmsnap paused the guest. */
  pausedByUs: boolean;
}

export function reconcileMainActivities({ store, imageService, workflows }: Pick<ActivityDeps, 'store' | 'imageService' | 'workflows'>) {
  return {
    async findAbandonedSnapshots(): Promise<AbandonedSnapshot[]> {
      const abandoned: AbandonedSnapshot[] = [];
      for (const instance of await store.listInstancesWithTask()) {
        const owner = instance.taskOwner;
        if (!owner || (await workflows.runStatus(owner)) === 'running') continue;
        const events = (await store.listEvents(instance.id)).filter((e) => e.requestId === owner);
        const lastPause = events.map((e) => e.event).lastIndexOf('pause');
        const lastResume = events.map((e) => e.event).lastIndexOf('resume');
        const imageId = events.find((e) => e.event === 'start')?.details.imageId;
        abandoned.push({
          instanceId: instance.id,
          host: instance.host,
          owner,
          taskState: instance.taskState ?? 'None',
          ...(typeof imageId === 'string' ? { imageId } : {}),
          pausedByUs: lastPause > lastResume,
        });
      }
      return abandoned;
    },

    /** Task state back to None, with a fault and an event that say the snapshot was abandoned. */
    async releaseAbandonedTask(snapshot: AbandonedSnapshot): Promise<void> {
      if (!(await store.releaseTaskState(snapshot.instanceId, snapshot.owner))) return;
      const message = `snapshot ${snapshot.owner} ended without finishing (terminated or lost) in task state ${snapshot.taskState}; the reconciler undid it`;
      await store.recordFault({ instanceId: snapshot.instanceId, code: 'SnapshotAbandoned', message, details: { owner: snapshot.owner, imageId: snapshot.imageId } });
      await store.recordEvent({ instanceId: snapshot.instanceId, action: 'createImage', event: 'error', requestId: snapshot.owner, details: { code: 'SnapshotAbandoned' } });
    },

    /**
     * vmsnap's images whose snapshot is not running and did not complete, or did complete but
     * left the image unfinished: they are never going to be finished.
     */
    async findOrphanImages(): Promise<{ imageId: string; owner: string; status: string }[]> {
      const orphans: { imageId: string; owner: string; status: string }[] = [];
      const statuses = new Map<string, string>();
      for (const image of await imageService.listImagesByTag(VMSNAP_IMAGE_TAG)) {
        const owner = typeof image.vmsnap_request_id === 'string' ? image.vmsnap_request_id : undefined;
        if (!owner) continue;
        if (!statuses.has(owner)) statuses.set(owner, await workflows.runStatus(owner));
        const run = statuses.get(owner);
        if (run === 'running' || (run === 'completed' && image.status === 'active')) continue;
        orphans.push({ imageId: image.id, owner, status: image.status });
      }
      return orphans;
    },

    async runningSnapshotImageIds(): Promise<string[]> {
      return workflows.runningSnapshotImageIds();
    },
  };
}

export function reconcileHostActivities({ snapshotsDir }: Pick<ActivityDeps, 'snapshotsDir'>) {
  return {
    /**
     * Removes snapshot temp dirs of snapshots that are not running. A dir younger than the grace
     * period is kept: visibility lags, and a snapshot that just started may not be listed yet.
     */
    async removeOrphanSnapshotDirs(input: { keep: string[]; graceMs: number }): Promise<string[]> {
      const names = await readdir(snapshotsDir).catch(() => [] as string[]);
      const removed: string[] = [];
      for (const name of names) {
        if (!UUID_PATTERN.test(name) || input.keep.includes(name)) continue;
        const dir = join(snapshotsDir, name);
        const { mtimeMs } = await stat(dir);
        if (Date.now() - mtimeMs < input.graceMs) continue;
        await rm(dir, { recursive: true, force: true });
        removed.push(name);
      }
      return removed;
    },
  };
}
