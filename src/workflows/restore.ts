// restoreInstance: Nova's rebuild as a saga, but never destructive. The image is downloaded and
// verified beside the disk while the guest runs; only then is the guest stopped, the disk swapped
// (the previous one kept as the pre-restore file) and the guest started in its prior power state.
// On failure, cancellation or timeout the compensation (non-cancellable) removes what was made,
// puts the previous disk back if it was swapped, starts the guest again, and task state goes back
// to None. rollbackRestore puts the pre-restore disk back later, while it is kept.
// Deterministic code only: all I/O lives in activities.
import {
  ActivityCancellationType,
  ApplicationFailure,
  CancellationScope,
  defineQuery,
  isCancellation,
  log,
  patched,
  setHandler,
  upsertMemo,
  upsertSearchAttributes,
  workflowInfo,
  type ActivityOptions,
} from '@temporalio/workflow';
import { Compensations, RETRY, STORE_STEP, commonSteps, failure, instanceNotFound, lookUpInstance, onHost, onMain, setDetails, typedFailure } from './steps.js';
import type { RestoreImage } from '../activities/restore-image.js';
import type { PowerState } from '../drivers/hypervisor.js';
import type { SnapshotSettings } from '../shared/config.js';
import { HOST, IMAGE_ID, INSTANCE_ID, PHASE } from '../shared/search-attributes.js';
import type { RestorePhase, RestoreProgress, RestoreRequest, RestoreResult, RollbackRequest, RollbackResult } from '../shared/types.js';
import { describeProblems, validateRestoreRequest, validateRollbackRequest } from '../shared/validation.js';
import type { InstanceRecord, TaskState } from '../store/store.js';

export const restoreProgressQuery = defineQuery<RestoreProgress>('progress');

/** The last phase: `cancelled` as a snapshot's reads (histories before the patch recorded `failed`). */
function endPhase(result: unknown): RestorePhase {
  return isCancellation(result) && patched('restore-cancelled-phase') ? 'cancelled' : 'failed';
}

function restoreSteps(settings: SnapshotSettings, host: string) {
  const { taskQueue, imageRetry, ...common } = commonSteps(settings, host);
  // Stopping may wait out the graceful shutdown; starting waits for the guest (and its agent).
  const powerMs = settings.restoreShutdownTimeoutMs + settings.restoreStartTimeoutMs + 60_000;
  return {
    ...common,
    // The download is retried like any Glance call; a cancel waits until its files are removed.
    download: {
      taskQueue,
      startToCloseTimeout: '6h',
      heartbeatTimeout: settings.heartbeatTimeoutMs,
      cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
      retry: imageRetry,
    } satisfies ActivityOptions,
    // Heartbeats: a dead worker's stop or start moves to another after the heartbeat timeout.
    power: {
      taskQueue,
      startToCloseTimeout: powerMs,
      heartbeatTimeout: settings.heartbeatTimeoutMs,
      retry: { ...RETRY, maximumAttempts: 5 },
    } satisfies ActivityOptions,
    // The guest must get its disk back and run again: retried until it does (or the host is gone
    // for good; then the reconciler finishes the job).
    undo: {
      taskQueue,
      startToCloseTimeout: powerMs,
      heartbeatTimeout: settings.heartbeatTimeoutMs,
      scheduleToCloseTimeout: '30m',
      retry: RETRY,
    } satisfies ActivityOptions,
  };
}

const restoreFailure = (err: unknown): unknown => typedFailure(err, 'Restore');

/** Inventory first; on a miss, every host rediscovers, then once more. */
/** The image downloaded beside the disk (or as a new instance's disk), verified before use. */
function download(
  steps: ReturnType<typeof restoreSteps>,
  instanceId: string,
  image: RestoreImage,
  where: string,
  disk: { allowGrow: boolean; newDiskPath?: string },
) {
  return onHost(steps.download, `download ${image.size} bytes ${where}, verify sha512, qemu-img check`).prepareRestoreImage({
    instanceId,
    imageId: image.imageId,
    imageFormat: image.diskFormat,
    expected: { size: image.size, sha512: image.sha512 },
    virtualSize: image.virtualSize,
    ...disk,
  });
}

async function lookUp(ref: string, settings: SnapshotSettings): Promise<InstanceRecord> {
  const instance = await lookUpInstance(ref, STORE_STEP, (host) => restoreSteps(settings, host).discovery);
  if (!instance) throw instanceNotFound(ref);
  return instance;
}

function refuseBadInput(problems: { field: string; message: string }[], what: string): void {
  if (problems.length) {
    throw ApplicationFailure.create({
      type: 'InvalidInput',
      message: `invalid ${what}: ${describeProblems(problems)}`,
      nonRetryable: true,
      details: [problems],
    });
  }
}

export async function restoreInstance(request: RestoreRequest): Promise<RestoreResult> {
  refuseBadInput(validateRestoreRequest(request), 'restore request');
  const { workflowId, runId } = workflowInfo();
  const owner = `${workflowId}/${runId}`;
  const imageId = request.imageId;
  const progress: RestoreProgress = { phase: 'starting', imageId, taskState: null, phaseDurationsMs: {} };
  setHandler(restoreProgressQuery, () => progress);
  upsertSearchAttributes([
    { key: IMAGE_ID, value: imageId },
    { key: PHASE, value: 'starting' },
  ]);
  upsertMemo({ instance: request.instance, imageId, action: 'restore' });
  const describe = () =>
    setDetails([
      `**restore: ${progress.phase}**`,
      `image \`${imageId}\` → instance \`${progress.instanceId ?? request.instance}\``,
      `task state: ${progress.taskState ?? 'None'}`,
      ...(progress.error ? [`error: ${progress.error}`] : []),
    ]);
  let phaseStartedAt = Date.now();
  const enter = (phase: RestorePhase) => {
    progress.phaseDurationsMs[progress.phase] = (progress.phaseDurationsMs[progress.phase] ?? 0) + Date.now() - phaseStartedAt;
    phaseStartedAt = Date.now();
    progress.phase = phase;
    upsertSearchAttributes([{ key: PHASE, value: phase }]);
    describe();
    log.info(`restore phase ${phase}`, { imageId, phase, ...(progress.error ? { error: progress.error } : {}) });
  };
  describe();

  const settings = await onMain(STORE_STEP, 'read settings of the workers').getSnapshotSettings();
  const instance = await lookUp(request.instance, settings);
  const instanceId = instance.id;
  const host = instance.host;
  progress.instanceId = instanceId;
  upsertSearchAttributes([
    { key: INSTANCE_ID, value: instanceId },
    { key: HOST, value: host },
  ]);
  const steps = restoreSteps(settings, host);
  const setTaskState = async (expected: TaskState | null, next: TaskState | null) => {
    await onMain(steps.store, `task state ${expected ?? 'None'} → ${next ?? 'None'}`).setTaskState({ instanceId, expected, next, owner });
    progress.taskState = next;
    describe();
  };
  const recordEvent = (event: string, details: Record<string, unknown>) =>
    onMain(steps.store, `record ${event} event`).recordInstanceEvent({ instanceId, event, requestId: owner, details, action: 'rebuild' });

  if (request.asNew) return restoreAsNew(request, request.asNew, { instanceId, host, owner, steps, progress, enter, recordEvent });

  // The image is checked before the task state is taken: a refused image changes nothing at all.
  enter('checking-image');
  let image;
  try {
    image = await onMain(steps.image, `check image ${imageId} in Glance`).checkRestoreImage({
      imageId,
      instanceId,
      allowOtherImage: request.allowOtherImage ?? false,
    });
  } catch (err) {
    const result = restoreFailure(err);
    progress.error = (result as Error).message;
    enter(endPhase(result));
    throw result;
  }

  // For compensation: a step counts from the moment it is scheduled.
  const undo = new Compensations({ instanceId, imageId });
  let taskAcquired = false;
  let priorPowerState: PowerState | undefined;
  try {
    await setTaskState(null, 'rebuilding');
    taskAcquired = true;
    priorPowerState = await onHost(steps.quick, 'read power state').getPowerState(instanceId);
    await recordEvent('start', { imageId, priorPowerState });
    if (priorPowerState !== 'running' && priorPowerState !== 'paused' && priorPowerState !== 'shutdown') {
      throw failure('InstanceInvalidState', `instance ${instanceId} is ${priorPowerState}: only running, paused or shut-off instances can be restored`);
    }

    enter('downloading');
    undo.push('undo restore', () =>
      onHost(steps.undo, 'compensation: remove new files, previous disk back, guest started').undoRestore({
        instanceId,
        owner,
        priorPowerState,
      }),
    );
    const prepared = await download(steps, instanceId, image, 'beside the disk', { allowGrow: request.allowGrow ?? false });

    // From here on the guest is touched; until now it ran on, untouched.
    await setTaskState('rebuilding', 'rebuild_block_device_mapping');
    enter('stopping');
    // Stop, swap, task state → rebuild_spawning, start: one host step, so the guest's downtime
    // holds no round trip through Temporal.
    const done = await onHost(
      steps.power,
      `stop the guest, swap the disk (keep the previous one), start it (${priorPowerState}) and confirm it runs`,
    ).stopSwapStart({
      instanceId,
      owner,
      imageId,
      powerState: priorPowerState,
    });
    progress.taskState = 'rebuild_spawning';
    enter('finishing');
    await setTaskState('rebuild_spawning', null);
    await recordEvent('finish', { imageId });
    enter('completed');
    const result: RestoreResult = {
      instanceId,
      host,
      imageId,
      diskPath: prepared.diskPath,
      diskFormat: prepared.diskFormat,
      preRestorePath: done.preRestorePath,
      preRestoreKeptUntil: done.keptUntil,
      downloadedBytes: prepared.downloadedBytes,
      sha512: prepared.sha512,
      virtualSize: prepared.virtualSize,
      priorPowerState,
      downtimeMs: priorPowerState === 'shutdown' ? 0 : Math.max(0, done.startedAt - done.stoppedAt),
      stoppedBy: done.stoppedBy,
      // Absent from workers older than these fields.
      ...(done.confirmedBy ? { confirmedBy: done.confirmedBy } : {}),
      ...(done.downtimeStepsMs ? { downtimeStepsMs: done.downtimeStepsMs } : {}),
      phaseDurationsMs: progress.phaseDurationsMs,
    };
    log.info('restore completed', { imageId, downtimeMs: result.downtimeMs });
    return result;
  } catch (err) {
    const result = restoreFailure(err);
    progress.error = (result as Error).message;
    enter('compensating');
    await CancellationScope.nonCancellable(async () => {
      await undo.run();
      await undo.attempt('reset task state', () => onMain(steps.store, 'compensation: task state → None').releaseTaskState({ instanceId, owner }));
      progress.taskState = null;
      if (taskAcquired) {
        const code = result instanceof ApplicationFailure ? (result.type ?? 'RestoreFailed') : 'Cancelled';
        await undo.attempt('record fault', () =>
          onMain(steps.store, 'record instance fault').recordInstanceFault({
            instanceId,
            code,
            message: progress.error ?? code,
            details: { workflowId, runId, imageId, action: 'rebuild' },
          }),
        );
        await undo.attempt('record event', () => recordEvent('error', { imageId, code }));
      }
    });
    enter(endPhase(result));
    throw result;
  }
}

/**
 * Restore as a new instance: the image goes to a new disk beside the instance's, and a new domain
 * (new name, UUID and MACs) like the instance runs on it. The instance itself is never touched,
 * so its task state is not taken; a failure removes the new domain and disk.
 */
async function restoreAsNew(
  request: RestoreRequest,
  name: string,
  ctx: {
    instanceId: string;
    host: string;
    owner: string;
    steps: ReturnType<typeof restoreSteps>;
    progress: RestoreProgress;
    enter: (phase: RestorePhase) => void;
    recordEvent: (event: string, details: Record<string, unknown>) => Promise<void>;
  },
): Promise<RestoreResult> {
  const { instanceId, host, owner, steps, progress, enter, recordEvent } = ctx;
  const { workflowId, runId } = workflowInfo();
  const imageId = request.imageId;
  let diskPath: string | undefined;
  try {
    const powerState = await onHost(steps.quick, 'read power state').getPowerState(instanceId);
    // The new instance runs as the original does; one that is off stays defined and off.
    const startAs: PowerState = powerState === 'running' || powerState === 'paused' ? powerState : 'shutdown';
    await recordEvent('start', { imageId, asNew: name });
    enter('checking-image');
    const image = await onMain(steps.image, `check image ${imageId} in Glance`).checkRestoreImage({
      imageId,
      instanceId,
      allowOtherImage: request.allowOtherImage ?? false,
    });
    diskPath = await onHost(steps.quick, 'path of the new disk').newInstanceDiskPath({ instanceId, name });
    enter('downloading');
    // A new instance: its disk is the image's size.
    const prepared = await download(steps, instanceId, image, "to the new instance's disk", { allowGrow: true, newDiskPath: diskPath });
    enter('starting-guest');
    const made = await onHost(steps.power, `define instance ${name} on the new disk and start it`).defineNewInstance({
      instanceId,
      owner,
      name,
      diskPath,
      powerState: startAs,
    });
    enter('finishing');
    await recordEvent('finish', { imageId, newInstanceId: made.newInstanceId });
    enter('completed');
    return {
      instanceId,
      host,
      imageId,
      diskPath,
      diskFormat: prepared.diskFormat,
      newInstance: { id: made.newInstanceId, name },
      downloadedBytes: prepared.downloadedBytes,
      sha512: prepared.sha512,
      virtualSize: prepared.virtualSize,
      priorPowerState: powerState,
      downtimeMs: 0,
      stoppedBy: 'none',
      ...(made.confirmedBy ? { confirmedBy: made.confirmedBy } : {}),
      phaseDurationsMs: progress.phaseDurationsMs,
    };
  } catch (err) {
    const result = restoreFailure(err);
    progress.error = (result as Error).message;
    enter('compensating');
    await CancellationScope.nonCancellable(async () => {
      if (diskPath) {
        const path = diskPath;
        await onHost(steps.undo, 'compensation: remove the new instance and its disk')
          .removeNewInstance({ instanceId, owner, name, diskPath: path })
          .catch((e: Error) => log.error('compensation failed: remove the new instance', { error: e.message }));
      }
      const code = result instanceof ApplicationFailure ? (result.type ?? 'RestoreFailed') : 'Cancelled';
      await recordEvent('error', { imageId, code, workflowId, runId }).catch(() => undefined);
    });
    enter(endPhase(result));
    throw result;
  }
}

/** Puts the pre-restore disk back (while it is kept) and starts the guest in its power state. */
export async function rollbackRestore(request: RollbackRequest): Promise<RollbackResult> {
  refuseBadInput(validateRollbackRequest(request), 'rollback request');
  const { workflowId, runId } = workflowInfo();
  const owner = `${workflowId}/${runId}`;
  const settings = await onMain(STORE_STEP, 'read settings of the workers').getSnapshotSettings();
  const instance = await lookUp(request.instance, settings);
  const instanceId = instance.id;
  upsertSearchAttributes([
    { key: INSTANCE_ID, value: instanceId },
    { key: HOST, value: instance.host },
    { key: PHASE, value: 'rollback' },
  ]);
  upsertMemo({ instance: request.instance, action: 'rollback' });
  const steps = restoreSteps(settings, instance.host);
  const store = onMain(steps.store, 'task state');
  const recordEvent = (event: string, details: Record<string, unknown>) =>
    onMain(steps.store, `record ${event} event`).recordInstanceEvent({ instanceId, event, requestId: owner, details, action: 'rebuild' });

  let priorPowerState: PowerState | undefined;
  try {
    await store.setTaskState({ instanceId, expected: null, next: 'rebuilding', owner });
    const kept = await onHost(steps.quick, 'find the pre-restore disk').preRestoreDisk(instanceId);
    if (!kept)
      throw failure(
        'DiskNotFound',
        `instance ${instanceId} has no pre-restore disk: it was never restored, or its disk was removed after the retention window`,
      );
    priorPowerState = await onHost(steps.quick, 'read power state').getPowerState(instanceId);
    await recordEvent('start', { rollback: true, priorPowerState });
    if (priorPowerState !== 'running' && priorPowerState !== 'paused' && priorPowerState !== 'shutdown') {
      throw failure('InstanceInvalidState', `instance ${instanceId} is ${priorPowerState}: only running, paused or shut-off instances can be rolled back`);
    }
    await store.setTaskState({ instanceId, expected: 'rebuilding', next: 'rebuild_spawning', owner });
    const done = await onHost(steps.power, 'stop the guest, put the pre-restore disk back, start it').rollbackDisk({
      instanceId,
      owner,
      powerState: priorPowerState,
    });
    await store.setTaskState({ instanceId, expected: 'rebuild_spawning', next: null, owner });
    await recordEvent('finish', { rollback: true });
    return {
      instanceId,
      diskPath: kept.path.replace(/\.vmsnap-pre-restore$/, ''),
      priorPowerState,
      downtimeMs: priorPowerState === 'shutdown' ? 0 : done.startedAt - done.stoppedAt,
    };
  } catch (err) {
    const result = restoreFailure(err);
    await CancellationScope.nonCancellable(async () => {
      // The guest runs again in its prior state whatever happened; the disk is whichever is in place.
      if (priorPowerState) {
        await onHost(steps.undo, 'compensation: guest started')
          .undoRestore({ instanceId, owner, priorPowerState })
          .catch((e: Error) => log.error('compensation failed: start the guest', { error: e.message }));
      }
      await store.releaseTaskState({ instanceId, owner }).catch(() => undefined);
    });
    throw result;
  }
}
