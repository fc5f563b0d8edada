// snapshotInstance: Nova's createImage as a saga. Each step is an activity safe to retry; on
// failure, cancellation or timeout the compensations run in reverse in a non-cancellable scope:
// resume what we paused, remove temp files, delete the unfinished image, task state back to None,
// record an instance fault. Deterministic code only: all I/O lives in activities.
import {
  ActivityCancellationType,
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  TimeoutFailure,
  defineQuery,
  isCancellation,
  log,
  proxyActivities,
  setHandler,
  upsertSearchAttributes,
  uuid4,
  workflowInfo,
} from '@temporalio/workflow';
import type { HostActivities, MainActivities } from '../activities/index.js';
import { PERMANENT_ERROR_CODES } from '../shared/errors.js';
import { hostTaskQueue } from '../shared/names.js';
import { HOST, IMAGE_ID, INSTANCE_ID, PHASE } from '../shared/search-attributes.js';
import type { SnapshotPhase, SnapshotProgress, SnapshotRequest, SnapshotResult } from '../shared/types.js';
import { describeProblems, validateSnapshotRequest } from '../shared/validation.js';
import type { TaskState } from '../store/store.js';

export const progressQuery = defineQuery<SnapshotProgress>('progress');

const retry = { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', nonRetryableErrorTypes: PERMANENT_ERROR_CODES };

// Main-queue steps run on the workflow's own task queue (the default when none is named).
const main = proxyActivities<MainActivities>({
  startToCloseTimeout: '30s',
  retry: { ...retry, maximumAttempts: 10 },
});

function hostActivities(host: string) {
  const taskQueue = hostTaskQueue(host);
  return {
    quick: proxyActivities<HostActivities>({ taskQueue, startToCloseTimeout: '60s', retry: { ...retry, maximumAttempts: 5 } }),
    // Discovery on a host whose worker is down must not hold up the lookup for long.
    discovery: proxyActivities<HostActivities>({ taskQueue, scheduleToCloseTimeout: '15s', retry: { ...retry, maximumAttempts: 2 } }),
    // Waiting for the cancellation to complete means qemu-img is dead before we resume and clean up.
    convert: proxyActivities<HostActivities>({
      taskQueue,
      startToCloseTimeout: '6h',
      heartbeatTimeout: '30s',
      cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
      retry: { ...retry, maximumAttempts: 3 },
    }),
    upload: proxyActivities<HostActivities>({
      taskQueue,
      startToCloseTimeout: '6h',
      heartbeatTimeout: '30s',
      cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
      retry: { ...retry, initialInterval: '2s', maximumInterval: '1m', maximumAttempts: 6 },
    }),
    // A guest we paused must run again: retried until it succeeds (the activity treats a gone
    // or shut-off instance as done, so this cannot spin forever on a missing VM).
    resume: proxyActivities<HostActivities>({ taskQueue, startToCloseTimeout: '60s', retry }),
    // Cleanup is bounded: if the host is gone for good, the reconciler removes what is left.
    cleanup: proxyActivities<HostActivities>({ taskQueue, scheduleToCloseTimeout: '10m', retry }),
  };
}

/** The workflow's failure: typed like its cause, so clients can switch on InstanceBusy etc. */
function snapshotFailure(err: unknown): unknown {
  if (isCancellation(err)) return err;
  const cause = err instanceof ActivityFailure && err.cause ? err.cause : err;
  if (cause instanceof ApplicationFailure) {
    return ApplicationFailure.create({ type: cause.type ?? 'SnapshotFailed', message: cause.message, nonRetryable: true, details: cause.details ?? undefined, cause: err as Error });
  }
  if (cause instanceof TimeoutFailure) {
    return ApplicationFailure.create({ type: 'SnapshotTimedOut', message: `a step timed out (${cause.timeoutType}): is the host worker running?`, nonRetryable: true, cause: err as Error });
  }
  return ApplicationFailure.create({ type: 'SnapshotFailed', message: (err as Error)?.message ?? String(err), nonRetryable: true });
}

export async function snapshotInstance(request: SnapshotRequest): Promise<SnapshotResult> {
  const problems = validateSnapshotRequest(request);
  if (problems.length) {
    throw ApplicationFailure.create({
      type: 'InvalidInput',
      message: `invalid snapshot request: ${describeProblems(problems)}`,
      nonRetryable: true,
      details: [problems],
    });
  }
  const { workflowId, runId } = workflowInfo();
  const owner = `${workflowId}/${runId}`;
  const imageId = request.imageId ?? uuid4();
  const diskFormat = request.diskFormat ?? 'qcow2';
  const progress: SnapshotProgress = { phase: 'starting', imageId, taskState: null, phaseDurationsMs: {} };
  setHandler(progressQuery, () => progress);
  upsertSearchAttributes([{ key: IMAGE_ID, value: imageId }, { key: PHASE, value: 'starting' }]);

  let phaseStartedAt = Date.now();
  const enter = (phase: SnapshotPhase) => {
    const spent = progress.phaseDurationsMs[progress.phase] ?? 0;
    progress.phaseDurationsMs[progress.phase] = spent + (Date.now() - phaseStartedAt);
    phaseStartedAt = Date.now();
    progress.phase = phase;
    upsertSearchAttributes([{ key: PHASE, value: phase }]);
  };

  // Lookup: the inventory first; on a miss, ask every host to rediscover, then look again.
  let instance = await main.findInstance(request.instance);
  if (!instance) {
    const hosts = await main.listHosts();
    await Promise.allSettled(hosts.map((h) => hostActivities(h).discovery.discoverInstances()));
    instance = await main.findInstance(request.instance);
  }
  if (!instance) {
    throw ApplicationFailure.create({
      type: 'InstanceNotFound',
      message: `no instance "${request.instance}" on any host known to vmsnap: check the UUID or name (virsh list --all on its host)`,
      nonRetryable: true,
    });
  }
  const instanceId = instance.id;
  progress.instanceId = instanceId;
  upsertSearchAttributes([{ key: INSTANCE_ID, value: instanceId }, { key: HOST, value: instance.host }]);
  const host = hostActivities(instance.host);

  const setTaskState = async (expected: TaskState | null, next: TaskState | null) => {
    await main.setTaskState({ instanceId, expected, next, owner });
    progress.taskState = next;
  };

  // What has happened so far, for compensation. A step counts from the moment it is scheduled:
  // its result may be lost while its effect is real.
  let taskAcquired = false;
  let imageRequested = false;
  let pauseRequested = false;
  let resumed = false;
  let convertRequested = false;
  let verified = false;

  try {
    await setTaskState(null, 'image_snapshot_pending');
    taskAcquired = true;
    await main.recordInstanceEvent({ instanceId, event: 'start', requestId: workflowId, details: { imageId } });

    enter('creating-image');
    imageRequested = true;
    await main.createImageRecord({
      imageId,
      imageName: request.imageName,
      instanceId,
      baseImageRef: instance.baseImageRef,
      metadata: request.metadata ?? {},
      userId: request.userId,
      projectId: request.projectId,
      requestId: workflowId,
    });
    await setTaskState('image_snapshot_pending', 'image_snapshot');

    const priorPowerState = await host.quick.getPowerState(instanceId);
    if (priorPowerState !== 'running' && priorPowerState !== 'paused' && priorPowerState !== 'shutdown') {
      throw ApplicationFailure.create({
        type: 'InstanceInvalidState',
        message: `instance ${instanceId} is ${priorPowerState}: only running, paused or shut-off instances can be snapshotted`,
        nonRetryable: true,
      });
    }
    let pausedAt = 0;
    let resumedAt = 0;
    if (priorPowerState === 'running') {
      enter('pausing');
      pauseRequested = true;
      ({ pausedAt } = await host.quick.pauseInstance(instanceId));
    }

    enter('converting');
    convertRequested = true;
    const disk = await host.convert.convertDisk({
      instanceId,
      imageId,
      diskFormat,
      compress: request.compress ?? false,
      // A paused or running QEMU holds the image lock; a shut-off instance's disk is free.
      forceShare: priorPowerState !== 'shutdown',
    });

    if (pauseRequested) {
      // As Nova does: the guest runs again before the upload, which may take long.
      enter('resuming');
      ({ resumedAt } = await host.resume.resumeInstance(instanceId));
      resumed = true;
    }

    await setTaskState('image_snapshot', 'image_pending_upload');
    await setTaskState('image_pending_upload', 'image_uploading');
    enter('uploading');
    const uploaded = await host.upload.uploadImage({ imageId, path: disk.path, diskFormat, virtualSize: disk.virtualSize });
    verified = true;

    enter('finishing');
    await host.cleanup.removeSnapshotFiles(imageId);
    await setTaskState('image_uploading', null);
    await main.recordInstanceEvent({ instanceId, event: 'finish', requestId: workflowId, details: { imageId } });
    enter('completed');
    return {
      imageId,
      imageName: request.imageName,
      instanceId,
      host: instance.host,
      diskFormat,
      size: uploaded.size,
      virtualSize: disk.virtualSize,
      sha512: uploaded.sha512,
      md5: uploaded.md5,
      priorPowerState,
      pauseDurationMs: pauseRequested ? resumedAt - pausedAt : 0,
      phaseDurationsMs: progress.phaseDurationsMs,
    };
  } catch (err) {
    const failure = snapshotFailure(err);
    progress.error = (failure as Error).message;
    enter('compensating');
    await CancellationScope.nonCancellable(async () => {
      const attempt = async (what: string, step: () => Promise<unknown>) => {
        try {
          await step();
        } catch (e) {
          log.error(`compensation step failed: ${what}`, { instanceId, imageId, error: (e as Error).message });
        }
      };
      if (pauseRequested && !resumed) await attempt('resume instance', () => host.resume.resumeInstance(instanceId));
      if (convertRequested) await attempt('remove temp files', () => host.cleanup.removeSnapshotFiles(imageId));
      if (imageRequested && !verified) await attempt('delete image', () => main.deleteImageRecord(imageId));
      await attempt('reset task state', () => main.releaseTaskState({ instanceId, owner }));
      progress.taskState = null;
      if (taskAcquired) {
        const code = failure instanceof ApplicationFailure ? (failure.type ?? 'SnapshotFailed') : 'Cancelled';
        await attempt('record fault', () =>
          main.recordInstanceFault({ instanceId, code, message: progress.error ?? code, details: { workflowId, imageId } }),
        );
        await attempt('record event', () =>
          main.recordInstanceEvent({ instanceId, event: 'error', requestId: workflowId, details: { imageId, code } }),
        );
      }
    });
    enter('failed');
    throw failure;
  }
}
