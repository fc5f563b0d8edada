// reconcile: undoes snapshots whose workflow ended without its compensation (terminated, timed
// out, lost): resumes the guests vmsnap paused, removes temp dirs and unfinished images, and puts
// task state back to None. Runs on a schedule and once at main worker start. Every item is tried
// on its own: one unreachable host must not keep the others from being cleaned.
// It is also the sweeper of vmsnap images that will never be finished (see findOrphanImages).
import { ActivityFailure, ApplicationFailure, log } from '@temporalio/workflow';
import type { AbandonedSnapshot } from '../activities/reconcile.js';
import { attempt as tryStep } from './saga.js';
import { HOUSEKEEPING, onHost, onMain } from './steps.js';

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

const main = (summary: string) => onMain(HOUSEKEEPING.main, summary);
const onHostOf = (host: string, summary: string) => onHost(HOUSEKEEPING.host(host), summary);

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
    let unavailable = false;
    const message = await tryStep(() =>
      step().catch((err: unknown) => {
        unavailable = isServiceUnavailable(err);
        throw err;
      }),
    );
    if (message === undefined) return;
    if (unavailable) {
      report.waitingFor = 'Glance';
      report.errors.push(`${what}: waiting for Glance (${message}); the next round tries again`);
      log.warn(`reconcile: ${what} waits for Glance`, { error: message });
      return;
    }
    report.errors.push(`${what}: ${message}`);
    log.warn(`reconcile: ${what} failed`, { error: message });
  };

  for (const snapshot of await main('find abandoned snapshots and restores').findAbandonedSnapshots()) {
    if (snapshot.restore) await undoRestore(snapshot, snapshot.restore, report, attempt);
    else await undoSnapshot(snapshot, report, attempt);
  }
  // Glance away must not fail the run (the Web UI would show every round "Failed"): the sweep
  // waits for the next round, and the report says what it waits for.
  await attempt('find orphan images', async () => {
    for (const { imageId, status, owner, reason } of await main('find orphan images').findOrphanImages({ staleAfterMs })) {
      await attempt(`delete orphan image ${imageId}`, async () => {
        if (!(await main(`delete orphan image ${imageId}`).deleteImageRecord(imageId)).deleted) return;
        report.deletedImages.push(imageId);
        report.sweptImages.push({ imageId, status, owner, reason });
      });
    }
  });
  await removeLeftoversOnHosts(report, attempt);

  const { errors: _errors, sweptImages: _swept, waitingFor: _waiting, ...done } = report;
  if (Object.values(done).some((list) => list.length > 0)) log.info('reconcile: undid abandoned snapshots', { ...report });
  return report;
}

/** As the snapshot's compensation would have: thaw, resume, end the live copy job, temp dir, image, task state. */
async function undoSnapshot(snapshot: AbandonedSnapshot, report: ReconcileReport, attempt: Attempt): Promise<void> {
  const { instanceId, owner, imageId } = snapshot;
  const host = (summary: string) => onHostOf(snapshot.host, summary);
  let thawed = !snapshot.frozenByUs;
  let resumed = !snapshot.pausedByUs;
  if (snapshot.frozenByUs) {
    // A worker that died between freeze and thaw left the guest's filesystems frozen.
    await attempt(`thaw ${instanceId}`, async () => {
      await host('thaw the guest filesystems').thawInstance({ instanceId, owner });
      report.thawed.push(instanceId);
      thawed = true;
    });
  }
  if (snapshot.pausedByUs) {
    await attempt(`resume ${instanceId}`, async () => {
      await host('resume the guest').resumeInstance({ instanceId, owner });
      report.resumed.push(instanceId);
      resumed = true;
    });
  }
  if (imageId) {
    await attempt(`end live copy job of ${instanceId}`, async () => {
      if (await host('end the live copy job').abortAbandonedLiveCopy({ instanceId, imageId })) report.abortedLiveCopies.push(instanceId);
    });
    await attempt(`remove temp dir ${imageId}`, () => host('remove the snapshot temp dir').removeSnapshotFiles(imageId));
    await attempt(`delete image ${imageId}`, async () => {
      if ((await main(`delete image ${imageId}`).deleteImageRecord(imageId)).deleted) report.deletedImages.push(imageId);
    });
  }
  // A guest we could not thaw or resume keeps its task state: the next round tries again.
  if (thawed && resumed) {
    await attempt(`release task state of ${instanceId}`, async () => {
      await main('task state → None').releaseAbandonedTask(snapshot);
      report.releasedTasks.push(instanceId);
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
  const { instanceId, owner } = snapshot;
  await attempt(`undo restore of ${instanceId}`, async () => {
    const undo = onHost(HOUSEKEEPING.undoRestore(snapshot.host), 'remove new files, previous disk back, guest started');
    await undo.undoRestore({ instanceId, owner, priorPowerState: restore.priorPowerState });
    report.undoneRestores.push(instanceId);
    await main('task state → None').releaseAbandonedTask(snapshot);
    report.releasedTasks.push(instanceId);
  });
}

/** Temp dirs of snapshots not running, pre-restore disks past their retention, abandoned new instances, on every host. */
async function removeLeftoversOnHosts(report: ReconcileReport, attempt: Attempt): Promise<void> {
  const running = await main('image ids of running snapshots').runningSnapshotImageIds();
  for (const host of await main('list hosts').listHosts()) {
    await attempt(`temp dirs on ${host}`, async () => {
      report.removedDirs.push(...(await onHostOf(host, 'remove orphan temp dirs').removeOrphanSnapshotDirs({ keep: running, graceMs: DIR_GRACE_MS })));
    });
    await attempt(`pre-restore disks on ${host}`, async () => {
      report.removedPreRestoreDisks.push(...(await onHostOf(host, 'remove expired pre-restore disks').prunePreRestoreDisks({ host })));
    });
    await attempt(`abandoned new instances on ${host}`, async () => {
      report.removedNewInstances.push(...(await onHostOf(host, 'remove abandoned new instances').removeAbandonedNewInstances({ graceMs: DIR_GRACE_MS })));
    });
  }
}
