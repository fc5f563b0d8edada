// reconcile: undoes snapshots whose workflow ended without its compensation (terminated, timed
// out, lost): resumes the guests vmsnap paused, removes temp dirs and unfinished images, and puts
// task state back to None. Runs on a schedule and once at main worker start. Every item is tried
// on its own: one unreachable host must not keep the others from being cleaned.
// It is also the sweeper of vmsnap images that will never be finished (see findOrphanImages).
import { ActivityFailure, ApplicationFailure, log, patched, proxyActivities, type ActivityOptions } from '@temporalio/workflow';
import type { HostActivities, MainActivities } from '../activities/index.js';
import type { AbandonedSnapshot } from '../activities/reconcile.js';
import { hostTaskQueue } from '../shared/names.js';

export interface ReconcileReport {
  resumed: string[];
  thawed: string[];
  releasedTasks: string[];
  deletedImages: string[];
  /** The images swept as orphans (also in deletedImages), each with why. */
  sweptImages: { imageId: string; status: string; owner: string; reason: string }[];
  removedDirs: string[];
  /** Abandoned restores undone: new files removed, previous disk back, guest started. */
  undoneRestores: string[];
  /** Pre-restore disks removed after their retention window. */
  removedPreRestoreDisks: string[];
  /** New instances (restore as new) whose restore ended without completing, removed with their disks. */
  removedNewInstances: string[];
  /** Instances whose dead snapshot's live copy job (NBD export, scratch image) was ended. */
  abortedLiveCopies: string[];
  errors: string[];
  /**
   * Set when Glance (or Keystone before it) did not answer: what needs it waits for the next
   * round. The run itself completes; an outage is not a failure of the reconciler.
   */
  waitingFor?: 'Glance';
}

const UNAVAILABLE = new Set(['ImageServiceUnavailable', 'IdentityServiceUnavailable']);

function isServiceUnavailable(err: unknown): boolean {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return cause instanceof ApplicationFailure && UNAVAILABLE.has(cause.type ?? '');
}

export interface ReconcileOptions {
  /** How long an unfinished image of a run unknown to Temporal is left alone; default 10 minutes. */
  staleImageAfterMs?: number;
}

/** Temp dirs younger than this are left alone: a snapshot may have just started. */
const DIR_GRACE_MS = 10 * 60_000;
/**
 * An unfinished image whose run Temporal does not know is swept only once untouched this long.
 * Our own runs are always known while they run (describe is consistent); an unknown owner may be
 * a run of another Temporal (cluster, namespace, a restored backup) writing to the same Glance, and
 * only time tells such a snapshot from a dead one. The same grace as for temp dirs.
 */
const STALE_IMAGE_MS = 10 * 60_000;

const retry = { initialInterval: '1s', maximumInterval: '10s', backoffCoefficient: 2 };
const main = proxyActivities<MainActivities>({ startToCloseTimeout: '60s', retry: { ...retry, maximumAttempts: 3 } });
// A host that does not answer within this time is tried again on the next round.
const hostOptions = (host: string): ActivityOptions => ({
  taskQueue: hostTaskQueue(host),
  scheduleToCloseTimeout: '2m',
  startToCloseTimeout: '60s',
  retry,
});

/**
 * The workflow has no worker settings (VMSNAP_HEARTBEAT_TIMEOUT_MS, default 10 s): a fixed timeout,
 * with room for a loaded host (the activity beats every second).
 */
const UNDO_HEARTBEAT_TIMEOUT = '30s';

type Attempt = (what: string, step: () => Promise<void>) => Promise<void>;

export async function reconcile(options: ReconcileOptions = {}): Promise<ReconcileReport> {
  const staleAfterMs = options?.staleImageAfterMs ?? STALE_IMAGE_MS;
  if (typeof staleAfterMs !== 'number' || !Number.isFinite(staleAfterMs) || staleAfterMs < 0) {
    throw ApplicationFailure.create({
      type: 'InvalidInput',
      message: 'staleImageAfterMs must be a number of milliseconds, 0 or more',
      nonRetryable: true,
    });
  }
  const report: ReconcileReport = {
    resumed: [],
    thawed: [],
    releasedTasks: [],
    deletedImages: [],
    sweptImages: [],
    removedDirs: [],
    undoneRestores: [],
    removedPreRestoreDisks: [],
    removedNewInstances: [],
    abortedLiveCopies: [],
    errors: [],
  };
  // Each item on its own: a failure is reported, and Glance away makes the round wait, not fail.
  const attempt: Attempt = async (what, step) => {
    try {
      await step();
    } catch (err) {
      const message = (err instanceof ActivityFailure && err.cause ? err.cause : (err as Error)).message;
      if (isServiceUnavailable(err)) {
        report.waitingFor = 'Glance';
        report.errors.push(`${what}: waiting for Glance (${message}); the next round tries again`);
        log.warn(`reconcile: ${what} waits for Glance`, { error: message });
        return;
      }
      report.errors.push(`${what}: ${message}`);
      log.warn(`reconcile: ${what} failed`, { error: message });
    }
  };

  for (const snapshot of await main.findAbandonedSnapshots()) {
    if (snapshot.restore) await undoRestore(snapshot, snapshot.restore, report, attempt);
    else await undoSnapshot(snapshot, report, attempt);
  }
  // Glance away must not fail the run (the Web UI would show every round "Failed"): the sweep
  // waits for the next round, and the report says what it waits for.
  await attempt('find orphan images', async () => {
    for (const { imageId, status, owner, reason } of await main.findOrphanImages({ staleAfterMs })) {
      await attempt(`delete orphan image ${imageId}`, async () => {
        if (!(await main.deleteImageRecord(imageId)).deleted) return;
        report.deletedImages.push(imageId);
        report.sweptImages.push({ imageId, status, owner, reason });
      });
    }
  });
  await removeLeftoversOnHosts(report, attempt);

  if (
    report.resumed.length +
      report.thawed.length +
      report.releasedTasks.length +
      report.deletedImages.length +
      report.removedDirs.length +
      report.undoneRestores.length +
      report.removedPreRestoreDisks.length +
      report.removedNewInstances.length +
      report.abortedLiveCopies.length >
    0
  ) {
    log.info('reconcile: undid abandoned snapshots', { ...report });
  }
  return report;
}

/** As the snapshot's compensation would have: thaw, resume, temp dir, image, task state. */
async function undoSnapshot(snapshot: AbandonedSnapshot, report: ReconcileReport, attempt: Attempt): Promise<void> {
  const host = proxyActivities<HostActivities>(hostOptions(snapshot.host));
  let thawed = !snapshot.frozenByUs;
  let resumed = !snapshot.pausedByUs;
  if (snapshot.frozenByUs) {
    // A worker that died between freeze and thaw left the guest's filesystems frozen.
    await attempt(`thaw ${snapshot.instanceId}`, async () => {
      await host.thawInstance({ instanceId: snapshot.instanceId, owner: snapshot.owner });
      report.thawed.push(snapshot.instanceId);
      thawed = true;
    });
  }
  if (snapshot.pausedByUs) {
    await attempt(`resume ${snapshot.instanceId}`, async () => {
      await host.resumeInstance({ instanceId: snapshot.instanceId, owner: snapshot.owner });
      report.resumed.push(snapshot.instanceId);
      resumed = true;
    });
  }
  const imageId = snapshot.imageId;
  if (imageId) {
    // Added after histories were recorded: runs of older workers replay without this step.
    if (patched('reconcile-abort-live-copy')) {
      await attempt(`end live copy job of ${snapshot.instanceId}`, async () => {
        if (await host.abortAbandonedLiveCopy({ instanceId: snapshot.instanceId, imageId })) report.abortedLiveCopies.push(snapshot.instanceId);
      });
    }
    await attempt(`remove temp dir ${imageId}`, () => host.removeSnapshotFiles(imageId));
    await attempt(`delete image ${imageId}`, async () => {
      if ((await main.deleteImageRecord(imageId)).deleted) report.deletedImages.push(imageId);
    });
  }
  // A guest we could not thaw or resume keeps its task state: the next round tries again.
  if (thawed && resumed) {
    await attempt(`release task state of ${snapshot.instanceId}`, async () => {
      await main.releaseAbandonedTask(snapshot);
      report.releasedTasks.push(snapshot.instanceId);
    });
  }
}

/** A restore never deletes the image it restores from: only the instance's side is undone. */
async function undoRestore(
  snapshot: AbandonedSnapshot,
  restore: NonNullable<AbandonedSnapshot['restore']>,
  report: ReconcileReport,
  attempt: Attempt,
): Promise<void> {
  await attempt(`undo restore of ${snapshot.instanceId}`, async () => {
    // The undo may wait out a guest's shutdown and start, hence 5 minutes; it heartbeats from its
    // start, so a worker that died (or a task handed to a poll that was gone) is retried after the
    // heartbeat timeout, not after the 5 minutes.
    await proxyActivities<HostActivities>({
      ...hostOptions(snapshot.host),
      startToCloseTimeout: '5m',
      heartbeatTimeout: UNDO_HEARTBEAT_TIMEOUT,
      scheduleToCloseTimeout: '10m',
    }).undoRestore({
      instanceId: snapshot.instanceId,
      owner: snapshot.owner,
      priorPowerState: restore.priorPowerState,
    });
    report.undoneRestores.push(snapshot.instanceId);
    await main.releaseAbandonedTask(snapshot);
    report.releasedTasks.push(snapshot.instanceId);
  });
}

/** Temp dirs of snapshots not running, and pre-restore disks past their retention, on every host. */
async function removeLeftoversOnHosts(report: ReconcileReport, attempt: Attempt): Promise<void> {
  const running = await main.runningSnapshotImageIds();
  for (const host of await main.listHosts()) {
    await attempt(`temp dirs on ${host}`, async () => {
      const removed = await proxyActivities<HostActivities>(hostOptions(host)).removeOrphanSnapshotDirs({
        keep: running,
        graceMs: DIR_GRACE_MS,
      });
      report.removedDirs.push(...removed);
    });
    await attempt(`pre-restore disks on ${host}`, async () => {
      report.removedPreRestoreDisks.push(...(await proxyActivities<HostActivities>(hostOptions(host)).prunePreRestoreDisks({ host })));
    });
    // Added after histories were recorded: runs of older workers replay without this step.
    if (patched('reconcile-new-instances')) {
      await attempt(`abandoned new instances on ${host}`, async () => {
        report.removedNewInstances.push(...(await proxyActivities<HostActivities>(hostOptions(host)).removeAbandonedNewInstances({ graceMs: DIR_GRACE_MS })));
      });
    }
  }
}
