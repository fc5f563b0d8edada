// reconcile: undoes snapshots whose workflow ended without its compensation (terminated, timed
// out, lost): resumes the guests vmsnap paused, removes temp dirs and unfinished images, and puts
// task state back to None. Runs on a schedule and once at main worker start. Every item is tried
// on its own: one unreachable host must not keep the others from being cleaned.
import { log, proxyActivities, type ActivityOptions } from '@temporalio/workflow';
import type { HostActivities, MainActivities } from '../activities/index.js';
import { hostTaskQueue } from '../shared/names.js';

export interface ReconcileReport {
  resumed: string[];
  releasedTasks: string[];
  deletedImages: string[];
  removedDirs: string[];
  errors: string[];
}

/** Temp dirs younger than this are left alone: a snapshot may have just started. */
const DIR_GRACE_MS = 10 * 60_000;

const retry = { initialInterval: '1s', maximumInterval: '10s', backoffCoefficient: 2 };
const main = proxyActivities<MainActivities>({ startToCloseTimeout: '60s', retry: { ...retry, maximumAttempts: 3 } });
// A host that does not answer within this time is tried again on the next round.
const hostOptions = (host: string): ActivityOptions => ({
  taskQueue: hostTaskQueue(host),
  scheduleToCloseTimeout: '2m',
  startToCloseTimeout: '60s',
  retry,
});

export async function reconcile(): Promise<ReconcileReport> {
  const report: ReconcileReport = { resumed: [], releasedTasks: [], deletedImages: [], removedDirs: [], errors: [] };
  const attempt = async (what: string, step: () => Promise<void>) => {
    try {
      await step();
    } catch (err) {
      report.errors.push(`${what}: ${(err as Error).message}`);
      log.warn(`reconcile: ${what} failed`, { error: (err as Error).message });
    }
  };

  for (const snapshot of await main.findAbandonedSnapshots()) {
    const host = proxyActivities<HostActivities>(hostOptions(snapshot.host));
    let guestRuns = !snapshot.pausedByUs;
    if (snapshot.pausedByUs) {
      await attempt(`resume ${snapshot.instanceId}`, async () => {
        await host.resumeInstance({ instanceId: snapshot.instanceId, owner: snapshot.owner });
        report.resumed.push(snapshot.instanceId);
        guestRuns = true;
      });
    }
    const imageId = snapshot.imageId;
    if (imageId) {
      await attempt(`remove temp dir ${imageId}`, () => host.removeSnapshotFiles(imageId));
      await attempt(`delete image ${imageId}`, async () => {
        if ((await main.deleteImageRecord(imageId)).deleted) report.deletedImages.push(imageId);
      });
    }
    // A guest we could not resume keeps its task state: the next round tries again.
    if (guestRuns) {
      await attempt(`release task state of ${snapshot.instanceId}`, async () => {
        await main.releaseAbandonedTask(snapshot);
        report.releasedTasks.push(snapshot.instanceId);
      });
    }
  }

  for (const orphan of await main.findOrphanImages()) {
    await attempt(`delete orphan image ${orphan.imageId}`, async () => {
      if ((await main.deleteImageRecord(orphan.imageId)).deleted) report.deletedImages.push(orphan.imageId);
    });
  }

  const running = await main.runningSnapshotImageIds();
  for (const host of await main.listHosts()) {
    await attempt(`temp dirs on ${host}`, async () => {
      const removed = await proxyActivities<HostActivities>(hostOptions(host)).removeOrphanSnapshotDirs({ keep: running, graceMs: DIR_GRACE_MS });
      report.removedDirs.push(...removed);
    });
  }
  if (report.resumed.length + report.releasedTasks.length + report.deletedImages.length + report.removedDirs.length > 0) {
    log.info('reconcile: undid abandoned snapshots', { ...report });
  }
  return report;
}
