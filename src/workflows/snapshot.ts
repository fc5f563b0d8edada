// snapshotInstance: Nova's createImage as a saga. Each step is an activity safe to retry; on
// failure, cancellation or timeout the compensations run in reverse in a non-cancellable scope:
// resume what we paused, remove temp files, delete the unfinished image, task state back to None,
// record an instance fault. Deterministic code only: all I/O lives in activities.
import {
  ActivityCancellationType,
  ApplicationFailure,
  CancellationScope,
  condition,
  defineSignal,
  defineQuery,
  isCancellation,
  log,
  patched,
  metricMeter,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  upsertMemo,
  upsertSearchAttributes,
  uuid4,
  workflowInfo,
  type ActivityOptions,
} from '@temporalio/workflow';
import type { SlotActivities } from '../activities/index.js';
import { RETRY, STORE_STEP, commonSteps, failure, onHost, onMain, typedFailure } from './steps.js';
import type { SnapshotSettings } from '../shared/config.js';
import { SLOT_ACQUIRED_SIGNAL, hostSlotTaskQueue } from '../shared/names.js';
import { HOST, IMAGE_ID, INSTANCE_ID, PHASE } from '../shared/search-attributes.js';
import type { Consistency, SnapshotPhase, SnapshotProgress, SnapshotRequest, SnapshotResult } from '../shared/types.js';
import { describeProblems, validateSnapshotRequest } from '../shared/validation.js';
import type { TaskState } from '../store/store.js';

export const progressQuery = defineQuery<SnapshotProgress>('progress');

const retry = RETRY;
const storeOptions = STORE_STEP;

const snapshotsTotal = metricMeter.createCounter('vmsnap_snapshots', 'snapshots', 'Snapshots by outcome');
const pauseDuration = metricMeter.createHistogram('vmsnap_pause_duration', 'int', 'ms', 'How long vmsnap kept a guest paused');
const phaseDuration = metricMeter.createHistogram('vmsnap_phase_duration', 'int', 'ms', 'Time spent in each snapshot phase');
const uploadedBytes = metricMeter.createCounter('vmsnap_uploaded_bytes', 'bytes', 'Bytes uploaded to the image service');

/** Activity options of every step, from the worker's settings (recorded in history). */
function stepOptions(settings: SnapshotSettings, host: string) {
  const { taskQueue, imageRetry, ...common } = commonSteps(settings, host);
  const heartbeatTimeout = settings.heartbeatTimeoutMs;
  return {
    ...common,
    // Waiting for the cancellation to complete means qemu-img is dead before we resume and clean up.
    convert: {
      taskQueue,
      startToCloseTimeout: '6h',
      heartbeatTimeout,
      cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
      retry: { ...retry, maximumAttempts: 3 },
    } satisfies ActivityOptions,
    upload: {
      taskQueue,
      startToCloseTimeout: '6h',
      heartbeatTimeout,
      cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
      retry: imageRetry,
    } satisfies ActivityOptions,
    // A guest we paused must run again: retried until it succeeds (the activity treats a gone
    // or shut-off instance as done, so this cannot spin forever on a missing VM).
    resume: { taskQueue, startToCloseTimeout: '60s', retry } satisfies ActivityOptions,
    // Cleanup is bounded: if the host is gone for good, the reconciler removes what is left.
    cleanup: { taskQueue, scheduleToCloseTimeout: '10m', retry } satisfies ActivityOptions,
    // Holds one of the host's snapshot slots until cancelled; a lost holder is started again.
    // Waiting for the cancellation to complete lets the snapshot end with no activity pending.
    slot: {
      taskQueue: hostSlotTaskQueue(host),
      startToCloseTimeout: '24h',
      heartbeatTimeout,
      cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
      retry,
    } satisfies ActivityOptions,
  };
}

const snapshotFailure = (err: unknown): unknown => typedFailure(err, 'Snapshot');

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
  upsertMemo({ instance: request.instance, imageName: request.imageName, imageId, diskFormat });

  const describe = () =>
    setCurrentDetails(
      [
        `**${progress.phase}**`,
        `instance \`${progress.instanceId ?? request.instance}\` → image \`${imageId}\` (${request.imageName})`,
        `task state: ${progress.taskState ?? 'None'}`,
        ...(progress.error ? [`error: ${progress.error}`] : []),
      ].join('\n\n'),
    );
  let phaseStartedAt = Date.now();
  const enter = (phase: SnapshotPhase) => {
    const spent = Date.now() - phaseStartedAt;
    progress.phaseDurationsMs[progress.phase] = (progress.phaseDurationsMs[progress.phase] ?? 0) + spent;
    phaseDuration.withTags({ phase: progress.phase }).record(spent);
    phaseStartedAt = Date.now();
    progress.phase = phase;
    upsertSearchAttributes([{ key: PHASE, value: phase }]);
    describe();
    log.info(`snapshot phase ${phase}`, { imageId, phase, ...(progress.error ? { error: progress.error } : {}) });
  };
  describe();

  const settings = await onMain(storeOptions, 'read snapshot settings of the workers').getSnapshotSettings();
  let slotAcquired = false;
  setHandler(defineSignal(SLOT_ACQUIRED_SIGNAL), () => {
    slotAcquired = true;
  });
  // The host slot is held by an activity in this scope; cancelling the scope lets go of it.
  const slotScope = new CancellationScope();
  let slotHeld: Promise<unknown> | undefined;
  /**
   * Waits until the slot holder has ended. Without this a finished snapshot closes with the
   * holder still pending (cancel requested) in the Web UI and `temporal workflow describe`.
   * Workflows started before this change did not wait: their histories replay without it.
   */
  const slotReleased = async () => {
    if (slotHeld && patched('wait-for-slot-release')) await slotHeld;
  };

  // Lookup: the inventory first; on a miss, ask every host to rediscover, then look again.
  const lookup = onMain(storeOptions, `look up instance ${request.instance}`);
  let instance = await lookup.findInstance(request.instance);
  if (!instance) {
    const hosts = await onMain(storeOptions, 'list hosts').listHosts();
    await Promise.allSettled(hosts.map((h) => onHost(stepOptions(settings, h).discovery, `discover instances on ${h}`).discoverInstances()));
    instance = await lookup.findInstance(request.instance);
  }
  if (!instance) {
    snapshotsTotal.withTags({ outcome: 'refused' }).add(1);
    throw failure('InstanceNotFound', `no instance "${request.instance}" on any host known to vmsnap: check the UUID or name (virsh list --all on its host)`);
  }
  const instanceId = instance.id;
  const host = instance.host;
  progress.instanceId = instanceId;
  upsertSearchAttributes([{ key: INSTANCE_ID, value: instanceId }, { key: HOST, value: host }]);
  const steps = stepOptions(settings, host);

  const setTaskState = async (expected: TaskState | null, next: TaskState | null) => {
    await onMain(steps.store, `task state ${expected ?? 'None'} → ${next ?? 'None'}`).setTaskState({ instanceId, expected, next, owner });
    progress.taskState = next;
    describe();
  };
  const recordEvent = (event: string, details: Record<string, unknown>) =>
    onMain(steps.store, `record ${event} event`).recordInstanceEvent({ instanceId, event, requestId: owner, details });

  // What has happened so far, for compensation. A step counts from the moment it is scheduled:
  // its result may be lost while its effect is real.
  let taskAcquired = false;
  let imageRequested = false;
  let pauseRequested = false;
  let resumed = false;
  let quiesceRequested = false;
  let convertRequested = false;
  let verified = false;

  try {
    await setTaskState(null, 'image_snapshot_pending');
    taskAcquired = true;
    await recordEvent('start', { imageId });

    enter('creating-image');
    imageRequested = true;
    await onMain(steps.image, `create image ${imageId} in Glance`).createImageRecord({
      imageId,
      imageName: request.imageName,
      instanceId,
      baseImageRef: instance.baseImageRef,
      metadata: request.metadata ?? {},
      userId: request.userId,
      projectId: request.projectId,
      requestId: owner,
      scheduleId: request.scheduleId,
    });
    await setTaskState('image_snapshot_pending', 'image_snapshot');

    // At most max-concurrent-snapshots per host, as Nova's compute manager does; the rest wait.
    enter('waiting-for-host');
    slotHeld = slotScope
      .run(() => proxyActivities<SlotActivities>({ ...steps.slot, summary: `hold a snapshot slot of ${host}` }).holdSnapshotSlot({ owner }))
      .catch(() => undefined); // it ends when we let go
    await condition(() => slotAcquired);

    const priorPowerState = await onHost(steps.quick, 'read power state').getPowerState(instanceId);
    if (priorPowerState !== 'running' && priorPowerState !== 'paused' && priorPowerState !== 'shutdown') {
      throw failure('InstanceInvalidState', `instance ${instanceId} is ${priorPowerState}: only running, paused or shut-off instances can be snapshotted`);
    }
    // Live keeps a running guest running; a guest that is not running is copied cold, which
    // needs no pause either.
    const wanted = request.mode ?? settings.defaultMode;
    let mode: 'cold' | 'live' = 'cold';
    let modeReason: string | undefined;
    if (wanted !== 'cold') {
      if (priorPowerState !== 'running') {
        modeReason = `the instance is ${priorPowerState}: a cold copy needs no pause`;
      } else {
        const support = await onHost(steps.quick, 'can this host copy the disk live?').liveCopySupport(instanceId);
        if (support.supported) mode = 'live';
        else if (wanted === 'live') {
          throw failure('InstanceInvalidState', `a live snapshot of ${instanceId} is not possible: ${support.reason ?? 'unsupported'}; ask for mode "cold" or "auto"`);
        } else modeReason = support.reason ?? 'live copy is not supported here';
      }
    }

    let copy: { path: string; size: number; virtualSize: number; consistency: Consistency; quiesceNote?: string; guestPauseMs: number; guestWriteStallMs?: number };
    if (mode === 'live') {
      enter('copying');
      convertRequested = true;
      quiesceRequested = (request.quiesce ?? 'try') !== 'never';
      copy = await onHost(steps.convert, 'live point-in-time copy of the root disk (QEMU backup job)').liveCopyDisk({
        instanceId,
        imageId,
        diskFormat,
        compress: request.compress ?? false,
        quiesce: request.quiesce ?? 'try',
        owner,
      });
    } else {
      let pausedAt = 0;
      if (priorPowerState === 'running') {
        enter('pausing');
        pauseRequested = true;
        ({ pausedAt } = await onHost(steps.quick, 'pause the guest (libvirt suspend)').pauseInstance({ instanceId, owner }));
      }
      enter('converting');
      convertRequested = true;
      const convert = () =>
        onHost(steps.convert, `qemu-img convert of the root disk to ${diskFormat}`).convertDisk({
          instanceId,
          imageId,
          diskFormat,
          compress: request.compress ?? false,
          // A paused or running QEMU holds the image lock; a shut-off instance's disk is free.
          forceShare: priorPowerState !== 'shutdown',
        });
      const disk = pauseRequested && settings.pauseBudgetMs > 0 ? await withinPauseBudget(convert, settings.pauseBudgetMs) : await convert();
      let pauseMs = 0;
      if (pauseRequested) {
        // As Nova does: the guest runs again before the upload, which may take long.
        enter('resuming');
        const resumption = await onHost(steps.resume, 'resume the guest').resumeInstance({ instanceId, owner });
        resumed = true;
        pauseMs = resumption.resumedAt - pausedAt;
        pauseDuration.record(pauseMs);
        if (resumption.outcome === 'gone') throw failure('InstanceNotFound', `instance ${instanceId} was destroyed during the snapshot`);
        if (resumption.outcome === 'not-paused') throw failure('InstanceInvalidState', `instance ${instanceId} was shut down during the snapshot`);
      }
      copy = { ...disk, consistency: 'crash-consistent', guestPauseMs: pauseMs };
    }

    await setTaskState('image_snapshot', 'image_pending_upload');
    await setTaskState('image_pending_upload', 'image_uploading');
    enter('uploading');
    const uploaded = await onHost(steps.upload, `upload ${copy.size} bytes to Glance and verify`).uploadImage({
      imageId,
      path: copy.path,
      diskFormat,
      virtualSize: copy.virtualSize,
      properties: { vmsnap_mode: mode, vmsnap_consistency: copy.consistency },
    });
    verified = true;
    uploadedBytes.add(uploaded.size);
    slotScope.cancel();

    enter('finishing');
    await onHost(steps.cleanup, 'remove the snapshot temp dir').removeSnapshotFiles(imageId);
    await setTaskState('image_uploading', null);
    await recordEvent('finish', { imageId });
    await slotReleased();
    enter('completed');
    snapshotsTotal.withTags({ outcome: 'completed' }).add(1);
    log.info('snapshot completed', { imageId, size: uploaded.size, sha512: uploaded.sha512, mode, guestPauseMs: copy.guestPauseMs });
    return {
      imageId,
      imageName: request.imageName,
      instanceId,
      host,
      diskFormat,
      size: uploaded.size,
      virtualSize: copy.virtualSize,
      sha512: uploaded.sha512,
      md5: uploaded.md5,
      priorPowerState,
      mode,
      ...(modeReason ? { modeReason } : {}),
      consistency: copy.consistency,
      ...(copy.quiesceNote ? { quiesceNote: copy.quiesceNote } : {}),
      guestPauseMs: copy.guestPauseMs,
      ...(copy.guestWriteStallMs !== undefined ? { guestWriteStallMs: copy.guestWriteStallMs } : {}),
      phaseDurationsMs: progress.phaseDurationsMs,
    };
  } catch (err) {
    const result = snapshotFailure(err);
    progress.error = (result as Error).message;
    enter('compensating');
    slotScope.cancel();
    await CancellationScope.nonCancellable(async () => {
      const attempt = async (what: string, step: () => Promise<unknown>) => {
        try {
          await step();
        } catch (e) {
          log.error(`compensation step failed: ${what}`, { instanceId, imageId, error: (e as Error).message });
        }
      };
      if (quiesceRequested) {
        // The driver thaws on every path but a dead worker's; thawing twice is harmless.
        await attempt('thaw filesystems', () => onHost(steps.resume, 'compensation: thaw the guest filesystems').thawInstance({ instanceId, owner }));
      }
      if (pauseRequested && !resumed) {
        await attempt('resume instance', () => onHost(steps.resume, 'compensation: resume the guest').resumeInstance({ instanceId, owner }));
      }
      if (convertRequested) await attempt('remove temp files', () => onHost(steps.cleanup, 'compensation: remove temp dir').removeSnapshotFiles(imageId));
      if (imageRequested && !verified) await attempt('delete image', () => onMain(steps.image, 'compensation: delete the image').deleteImageRecord(imageId));
      await attempt('reset task state', () => onMain(steps.store, 'compensation: task state → None').releaseTaskState({ instanceId, owner }));
      progress.taskState = null;
      if (taskAcquired) {
        const code = result instanceof ApplicationFailure ? (result.type ?? 'SnapshotFailed') : 'Cancelled';
        await attempt('record fault', () =>
          onMain(steps.store, 'record instance fault').recordInstanceFault({ instanceId, code, message: progress.error ?? code, details: { workflowId, runId, imageId } }),
        );
        await attempt('record event', () => recordEvent('error', { imageId, code }));
      }
      await slotReleased();
    });
    enter(isCancellation(result) ? 'cancelled' : 'failed');
    snapshotsTotal.withTags({ outcome: isCancellation(result) ? 'cancelled' : 'failed' }).add(1);
    throw result;
  }
}

/**
 * Runs the copy, cancelling it when the guest has been paused longer than the budget: the
 * cancelled convert kills qemu-img, and the caller's compensation resumes the guest.
 */
async function withinPauseBudget<T>(copy: () => Promise<T>, budgetMs: number): Promise<T> {
  const copyScope = new CancellationScope();
  const timerScope = new CancellationScope();
  let exceeded = false;
  const timer = timerScope.run(() => sleep(budgetMs)).then(
    () => {
      exceeded = true;
      copyScope.cancel();
    },
    () => undefined, // the copy ended first
  );
  try {
    return await copyScope.run(copy);
  } catch (err) {
    if (exceeded) throw failure('PauseBudgetExceeded', `the copy took longer than the pause budget of ${budgetMs} ms; the guest was resumed`);
    throw err;
  } finally {
    timerScope.cancel();
    await timer;
  }
}
