// snapshotInstance: Nova's createImage as a saga, step by step as README's "How a snapshot runs".
// Each step is an activity safe to retry, and pushes its undo as it is scheduled; on failure,
// cancellation or timeout the undo steps run in reverse in a non-cancellable scope (resume what we
// paused, remove temp files, delete the unfinished image), then task state goes back to None and
// an instance fault is recorded. Deterministic code only: all I/O lives in activities.
import {
  ActivityCancellationType,
  ActivityFailure,
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
  setHandler,
  sleep,
  upsertMemo,
  upsertSearchAttributes,
  uuid4,
  workflowInfo,
  type ActivityOptions,
} from '@temporalio/workflow';
import type { SlotActivities } from '../activities/index.js';
import type { InspectInput, InstanceInspection, SlotAcquired } from '../activities/power.js';
import {
  Compensations,
  LOCAL_STORE_STEP,
  RETRY,
  STORE_STEP,
  commonSteps,
  failure,
  instanceNotFound,
  lookUpInstance,
  messageOf,
  onHost,
  onMain,
  onMainLocal,
  setDetails,
  typedFailure,
} from './steps.js';
import type { SnapshotSettings } from '../shared/config.js';
import { SLOT_ACQUIRED_SIGNAL, hostSlotTaskQueue } from '../shared/names.js';
import { HOST, IMAGE_ID, INSTANCE_ID, PHASE } from '../shared/search-attributes.js';
import type { Consistency, DiskFormat, SnapshotPhase, SnapshotProgress, SnapshotRequest, SnapshotResult } from '../shared/types.js';
import { describeProblems, validateSnapshotRequest } from '../shared/validation.js';
import type { TaskState } from '../store/store.js';

export const progressQuery = defineQuery<SnapshotProgress>('progress');

const retry = RETRY;
const storeOptions = STORE_STEP;

/**
 * Snapshots started from here on take the lean shape (issue 15): store steps and the Glance
 * record as local activities, power state and live support read in one host step, the cold copy
 * (suspend, convert, resume) as one host step, image_pending_upload from the start of the copy as
 * in Nova, and the temp dir removed while the task state is reset. Runs started before replay the
 * steps they recorded.
 */
const LEAN = 'lean-snapshot';
/**
 * The slot let go of by a host step (HostSlot.letGo) instead of a cancel that reaches its holder
 * only with the holder's next heartbeat: up to a second at the end of every snapshot.
 */
const SLOT_LET_GO = 'slot-let-go-by-host-step';
/**
 * The image record made with its formats, and what is known only after the copy (mode,
 * consistency, min_disk) set after the data, by the PATCH whose answer the end-to-end check
 * reads: three Glance requests per snapshot (POST, PUT, PATCH), as the bare commands, not four.
 */
const FORMATS_AT_CREATE = 'image-formats-at-create';
// The workflow's own pause-budget timer backs up the host step's, which is exact: it only fires
// when the host worker cannot keep its own (it hangs or died).
const PAUSE_BUDGET_MARGIN_MS = 2000;

/** A store step: local in the lean shape, else an activity on the main queue. */
function onStore(lean: boolean, summary: string) {
  return lean ? onMainLocal(LOCAL_STORE_STEP, summary) : onMain(storeOptions, summary);
}

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
    // Both heartbeat from their start (activities/index.ts): a task the server handed to a host
    // worker that died (seen at fleet scale) is tried again after the heartbeat timeout, so a guest
    // we paused waits seconds, not a minute, for its resume.
    resume: { taskQueue, startToCloseTimeout: '60s', heartbeatTimeout, retry } satisfies ActivityOptions,
    // Cleanup is bounded: if the host is gone for good, the reconciler removes what is left.
    cleanup: { taskQueue, scheduleToCloseTimeout: '10m', startToCloseTimeout: '60s', heartbeatTimeout, retry } satisfies ActivityOptions,
    // One try: when it cannot, the slot is let go of by the cancel (HostSlot.letGo).
    letGo: { taskQueue, startToCloseTimeout: '10s', retry: { ...retry, maximumAttempts: 1 } } satisfies ActivityOptions,
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

type Steps = ReturnType<typeof stepOptions>;
type Mode = 'cold' | 'live';
type Copy = {
  path: string;
  size: number;
  virtualSize: number;
  consistency: Consistency;
  quiesceNote?: string;
  guestPauseMs: number;
  guestWriteStallMs?: number;
  /** The host's boot the copy was made in (older copy steps did not say, and fsynced instead). */
  bootId?: string;
};

/** What the steps of one snapshot share. */
interface Snapshot {
  request: SnapshotRequest;
  /** `<workflow id>/<run id>`: owner of the task state, requester of the image. */
  owner: string;
  imageId: string;
  diskFormat: DiskFormat;
  instanceId: string;
  settings: SnapshotSettings;
  steps: Steps;
  track: Tracker;
  undo: Compensations;
  /** The lean shape (see LEAN); false while replaying a run started before it. */
  lean: boolean;
}

export async function snapshotInstance(request: SnapshotRequest): Promise<SnapshotResult> {
  refuseInvalid(request);
  const lean = patched(LEAN);
  const { workflowId, runId } = workflowInfo();
  const owner = `${workflowId}/${runId}`;
  const imageId = request.imageId ?? uuid4();
  const diskFormat = request.diskFormat ?? 'qcow2';
  const track = new Tracker(request, imageId, diskFormat);
  const settings = await onStore(lean, 'read snapshot settings of the workers').getSnapshotSettings();
  const slot = new HostSlot(owner);

  // 1. findInstance: the inventory, and on a miss every host rediscovers.
  const { id: instanceId, host, baseImageRef } = await findInstance(request.instance, settings, track, lean);
  track.found(instanceId, host);
  const steps = stepOptions(settings, host);
  const undo = new Compensations({ instanceId, imageId });
  const s: Snapshot = { request, owner, imageId, diskFormat, instanceId, settings, steps, track, undo, lean };
  const task = taskState(s);
  try {
    // 2. Task state None → image_snapshot_pending by compare-and-swap, else InstanceBusy.
    await task.acquire();
    await recordEvent(s, 'start', { imageId });

    // 3. createImageRecord: Glance image with our id, status queued.
    track.enter('creating-image');
    const image = undo.push('delete image', () => onMain(steps.image, 'compensation: delete the image').deleteImageRecord(imageId));
    const glance = lean
      ? onMainLocal(
          // A cancelled snapshot deletes the image: its creation must be over by then.
          { ...steps.image, cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED },
          `create image ${imageId} in Glance`,
        )
      : onMain(steps.image, `create image ${imageId} in Glance`);
    const formatsAtCreate = patched(FORMATS_AT_CREATE);
    await glance.createImageRecord({
      imageId,
      ...(formatsAtCreate ? { diskFormat } : {}),
      imageName: request.imageName,
      instanceId,
      baseImageRef,
      metadata: request.metadata ?? {},
      userId: request.userId,
      projectId: request.projectId,
      requestId: owner,
      scheduleId: request.scheduleId,
    });

    // 4. Task state → image_snapshot; at most max-concurrent-snapshots per host, as Nova does.
    await task.set('image_snapshot_pending', 'image_snapshot');
    track.enter('waiting-for-host');
    const liveSupport = wantedMode(s) !== 'cold';
    const found = await slot.acquire(steps.slot, host, lean ? { instanceId, liveSupport } : undefined);

    // 5-7. The copy: live while the guest runs, or cold (pause, convert, resume).
    const { priorPowerState, mode, modeReason } = lean ? await inspect(s, found) : await inspectStepByStep(s);
    let copy: Copy;
    if (lean) {
      // 8. As Nova's libvirt driver: image_pending_upload while the copy is made, image_uploading after.
      await task.set('image_snapshot', 'image_pending_upload');
      copy = mode === 'live' ? await liveCopy(s) : await coldCopyInOneStep(s, priorPowerState);
      await task.set('image_pending_upload', 'image_uploading');
    } else {
      copy = mode === 'live' ? await liveCopy(s) : await coldCopy(s, priorPowerState);
      await task.set('image_snapshot', 'image_pending_upload');
      await task.set('image_pending_upload', 'image_uploading');
    }

    // 9. Upload, verified against Glance.
    track.enter('uploading');
    const uploaded = await onHost(steps.upload, `upload ${copy.size} bytes to Glance and verify`).uploadImage({
      imageId,
      path: copy.path,
      diskFormat,
      virtualSize: copy.virtualSize,
      properties: { vmsnap_mode: mode, vmsnap_consistency: copy.consistency },
      ...(formatsAtCreate ? { formatsSet: true } : {}),
      ...(copy.bootId ? { copyBootId: copy.bootId } : {}),
    });
    image.drop(); // active and verified: it stays whatever happens next
    track.uploaded(uploaded.size);
    // The slot is the next snapshot's from here: let go of it by a host step where the run can.
    const slotLetGo = lean && patched(SLOT_LET_GO) ? slot.letGo(() => onHost(steps.letGo, 'let go of the host slot').releaseSnapshotSlot(owner)) : undefined;
    if (!slotLetGo) slot.release();

    // 10. Temp dir removed, task state → None, the result.
    track.enter('finishing');
    if (lean) {
      // Side by side: none waits for another. A temp dir that cannot be removed is the reconciler's.
      await Promise.all([
        onHost(steps.cleanup, 'remove the snapshot temp dir')
          .removeSnapshotFiles(imageId)
          .catch((e: Error) => {
            if (isCancellation(e)) throw e;
            log.warn('the snapshot temp dir was not removed; the reconciler will', { imageId, error: e.message });
          }),
        task.set('image_uploading', null).then(() => recordEvent(s, 'finish', { imageId })),
        slotLetGo ?? slot.released(),
      ]);
    } else {
      await onHost(steps.cleanup, 'remove the snapshot temp dir').removeSnapshotFiles(imageId);
      await task.set('image_uploading', null);
      await recordEvent(s, 'finish', { imageId });
      await slot.released();
    }
    track.completed();
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
      priorPowerState,
      mode,
      ...(modeReason ? { modeReason } : {}),
      consistency: copy.consistency,
      ...(copy.quiesceNote ? { quiesceNote: copy.quiesceNote } : {}),
      guestPauseMs: copy.guestPauseMs,
      ...(copy.guestWriteStallMs !== undefined ? { guestWriteStallMs: copy.guestWriteStallMs } : {}),
      phaseDurationsMs: track.progress.phaseDurationsMs,
    };
  } catch (err) {
    // On failure, cancel or timeout: undo in reverse, task state None, instance fault, typed failure.
    const result = typedFailure(err, 'Snapshot');
    track.compensating(result);
    slot.release();
    await CancellationScope.nonCancellable(async () => {
      await undo.run();
      await task.release(result);
      await slot.released();
    });
    track.ended(result);
    throw result;
  }
}

function refuseInvalid(request: SnapshotRequest): void {
  const problems = validateSnapshotRequest(request);
  if (problems.length) {
    throw ApplicationFailure.create({
      type: 'InvalidInput',
      message: `invalid snapshot request: ${describeProblems(problems)}`,
      nonRetryable: true,
      details: [problems],
    });
  }
}

/** The inventory first; on a miss, every host rediscovers, then it is looked up again. */
async function findInstance(ref: string, settings: SnapshotSettings, track: Tracker, lean: boolean) {
  const discovery = (host: string) => stepOptions(settings, host).discovery;
  const instance = await lookUpInstance(ref, storeOptions, discovery, lean ? LOCAL_STORE_STEP : undefined);
  if (instance) return instance;
  track.refused();
  throw instanceNotFound(ref);
}

/** The instance's task state, owned by this snapshot from the first compare-and-swap. */
function taskState(s: Snapshot) {
  let acquired = false;
  const set = async (expected: TaskState | null, next: TaskState | null) => {
    await onStore(s.lean, `task state ${expected ?? 'None'} → ${next ?? 'None'}`).setTaskState({
      instanceId: s.instanceId,
      expected,
      next,
      owner: s.owner,
    });
    s.track.taskState(next);
  };
  return {
    set,
    async acquire() {
      await set(null, 'image_snapshot_pending');
      acquired = true;
    },
    /** Compensation's end: task state None (if we still hold it), and a fault if we held it. */
    async release(result: unknown) {
      const { instanceId, owner, imageId, undo } = s;
      await undo.attempt('reset task state', () => onStore(s.lean, 'compensation: task state → None').releaseTaskState({ instanceId, owner }));
      s.track.progress.taskState = null;
      if (!acquired) return;
      const code = result instanceof ApplicationFailure ? (result.type ?? 'SnapshotFailed') : 'Cancelled';
      const { workflowId, runId } = workflowInfo();
      await undo.attempt('record fault', () =>
        onStore(s.lean, 'record instance fault').recordInstanceFault({
          instanceId,
          code,
          message: s.track.progress.error ?? code,
          details: { workflowId, runId, imageId },
        }),
      );
      await undo.attempt('record event', () => recordEvent(s, 'error', { imageId, code }));
    },
  };
}

function recordEvent(s: Snapshot, event: string, details: Record<string, unknown>) {
  return onStore(s.lean, `record ${event} event`).recordInstanceEvent({
    instanceId: s.instanceId,
    event,
    requestId: s.owner,
    details,
  });
}

type PriorPowerState = 'running' | 'paused' | 'shutdown';
interface Inspected {
  priorPowerState: PriorPowerState;
  mode: Mode;
  modeReason?: string;
}

function wantedMode(s: Snapshot) {
  return s.request.mode ?? s.settings.defaultMode;
}

/**
 * The power state and whether a running guest can be copied live: as the slot holder found them,
 * else in one host step.
 */
async function inspect(s: Snapshot, found: InstanceInspection | undefined): Promise<Inspected> {
  const live = wantedMode(s) !== 'cold';
  const { powerState, liveSupport } =
    found ??
    (await onHost(s.steps.quick, live ? 'read power state and live-copy support' : 'read power state').inspectInstance({
      instanceId: s.instanceId,
      liveSupport: live,
    }));
  const priorPowerState = snapshottable(s, powerState);
  return { priorPowerState, ...(await chooseMode(s, priorPowerState, async () => liveSupport ?? { supported: false })) };
}

/** The same in two host steps, as runs started before the lean shape recorded it. */
async function inspectStepByStep(s: Snapshot): Promise<Inspected> {
  const priorPowerState = snapshottable(s, await onHost(s.steps.quick, 'read power state').getPowerState(s.instanceId));
  const support = () => onHost(s.steps.quick, 'can this host copy the disk live?').liveCopySupport(s.instanceId);
  return { priorPowerState, ...(await chooseMode(s, priorPowerState, support)) };
}

function snapshottable(s: Snapshot, powerState: string): PriorPowerState {
  if (powerState === 'running' || powerState === 'paused' || powerState === 'shutdown') return powerState;
  throw failure('InstanceInvalidState', `instance ${s.instanceId} is ${powerState}: only running, paused or shut-off instances can be snapshotted`);
}

/**
 * Live keeps a running guest running where the host can; a guest that is not running is copied
 * cold, which needs no pause either. `mode` "live" where the host cannot is refused.
 */
async function chooseMode(
  s: Snapshot,
  priorPowerState: string,
  liveSupport: () => Promise<{ supported: boolean; reason?: string }>,
): Promise<{ mode: Mode; modeReason?: string }> {
  const wanted = wantedMode(s);
  if (wanted === 'cold') return { mode: 'cold' };
  if (priorPowerState !== 'running') return { mode: 'cold', modeReason: `the instance is ${priorPowerState}: a cold copy needs no pause` };
  const support = await liveSupport();
  if (support.supported) return { mode: 'live' };
  if (wanted === 'live') {
    throw failure(
      'InstanceInvalidState',
      `a live snapshot of ${s.instanceId} is not possible: ${support.reason ?? 'unsupported'}; ask for mode "cold" or "auto"`,
    );
  }
  return { mode: 'cold', modeReason: support.reason ?? 'live copy is not supported here' };
}

function removeTempDir(s: Snapshot) {
  return s.undo.push('remove temp files', () => onHost(s.steps.cleanup, 'compensation: remove temp dir').removeSnapshotFiles(s.imageId));
}

/** A point-in-time copy by a QEMU backup job while the guest runs (quiesced if asked and able). */
async function liveCopy(s: Snapshot): Promise<Copy> {
  const { request, instanceId, owner } = s;
  s.track.enter('copying');
  removeTempDir(s);
  if ((request.quiesce ?? 'try') !== 'never') {
    // The driver thaws on every path but a dead worker's; thawing twice is harmless.
    s.undo.push('thaw filesystems', () => onHost(s.steps.resume, 'compensation: thaw the guest filesystems').thawInstance({ instanceId, owner }), {
      guest: true,
    });
  }
  return onHost(s.steps.convert, 'live point-in-time copy of the root disk (QEMU backup job)').liveCopyDisk({
    instanceId,
    imageId: s.imageId,
    diskFormat: s.diskFormat,
    compress: request.compress ?? false,
    quiesce: request.quiesce ?? 'try',
    owner,
  });
}

/**
 * Nova's way: a running guest is paused for the copy and resumed before the upload, all in one
 * host step, so that no trip through Temporal falls into the pause.
 */
async function coldCopyInOneStep(s: Snapshot, priorPowerState: PriorPowerState): Promise<Copy> {
  const { instanceId, owner, steps, track } = s;
  const pause = priorPowerState === 'running';
  track.enter('converting');
  // The host step resumes on every path but a dead worker's; then this does.
  const paused = pause
    ? s.undo.push('resume instance', () => onHost(steps.resume, 'compensation: resume the guest').resumeInstance({ instanceId, owner }), {
        guest: true,
      })
    : undefined;
  removeTempDir(s);
  const budgetMs = s.settings.pauseBudgetMs;
  const copy = () =>
    onHost(steps.convert, pause ? `pause, copy the root disk to ${s.diskFormat}, resume` : `copy the root disk to ${s.diskFormat}`).coldCopyDisk({
      instanceId,
      imageId: s.imageId,
      diskFormat: s.diskFormat,
      compress: s.request.compress ?? false,
      owner,
      pause,
      // A paused or running QEMU holds the image lock; a shut-off instance's disk is free.
      forceShare: priorPowerState !== 'shutdown',
      pauseBudgetMs: pause ? budgetMs : 0,
    });
  let disk;
  try {
    disk = pause && budgetMs > 0 ? await withinPauseBudget(copy, budgetMs + PAUSE_BUDGET_MARGIN_MS, budgetMs) : await copy();
  } catch (err) {
    if (guestResumed(err)) paused?.drop();
    throw err;
  }
  paused?.drop();
  const { guestPauseMs, resumeOutcome, ...converted } = disk;
  if (!pause) return { ...converted, consistency: 'crash-consistent', guestPauseMs: 0 };
  track.paused(guestPauseMs);
  if (resumeOutcome === 'gone') throw failure('InstanceNotFound', `instance ${instanceId} was destroyed during the snapshot`);
  if (resumeOutcome === 'not-paused') throw failure('InstanceInvalidState', `instance ${instanceId} was shut down during the snapshot`);
  return { ...converted, consistency: 'crash-consistent', guestPauseMs };
}

/** The host step failed after it had resumed the guest (it says so in its failure's details). */
function guestResumed(err: unknown): boolean {
  const cause = err instanceof ActivityFailure ? err.cause : undefined;
  const details = cause instanceof ApplicationFailure ? cause.details?.[0] : undefined;
  return (details as { guestResumed?: unknown } | undefined)?.guestResumed === true;
}

/** Nova's way: a running guest is paused for the copy and resumed before the upload. */
async function coldCopy(s: Snapshot, priorPowerState: 'running' | 'paused' | 'shutdown'): Promise<Copy> {
  const { instanceId, owner, steps, track } = s;
  let pausedAt = 0;
  let paused: { drop(): void } | undefined;
  if (priorPowerState === 'running') {
    track.enter('pausing');
    paused = s.undo.push('resume instance', () => onHost(steps.resume, 'compensation: resume the guest').resumeInstance({ instanceId, owner }), {
      guest: true,
    });
    ({ pausedAt } = await onHost(steps.quick, 'pause the guest (libvirt suspend)').pauseInstance({
      instanceId,
      owner,
      // The copy's room is checked first: one that cannot fit never pauses the guest.
      imageId: s.imageId,
      diskFormat: s.diskFormat,
      compress: s.request.compress ?? false,
    }));
  }
  track.enter('converting');
  removeTempDir(s);
  const convert = () =>
    onHost(steps.convert, `qemu-img convert of the root disk to ${s.diskFormat}`).convertDisk({
      instanceId,
      imageId: s.imageId,
      diskFormat: s.diskFormat,
      compress: s.request.compress ?? false,
      // A paused or running QEMU holds the image lock; a shut-off instance's disk is free.
      forceShare: priorPowerState !== 'shutdown',
    });
  const budgetMs = s.settings.pauseBudgetMs;
  const disk = paused && budgetMs > 0 ? await withinPauseBudget(convert, budgetMs) : await convert();
  if (!paused) return { ...disk, consistency: 'crash-consistent', guestPauseMs: 0 };

  // As Nova does: the guest runs again before the upload, which may take long.
  track.enter('resuming');
  const resumption = await onHost(steps.resume, 'resume the guest').resumeInstance({ instanceId, owner });
  paused.drop();
  const pauseMs = resumption.resumedAt - pausedAt;
  track.paused(pauseMs);
  if (resumption.outcome === 'gone') throw failure('InstanceNotFound', `instance ${instanceId} was destroyed during the snapshot`);
  if (resumption.outcome === 'not-paused') throw failure('InstanceInvalidState', `instance ${instanceId} was shut down during the snapshot`);
  return { ...disk, consistency: 'crash-consistent', guestPauseMs: pauseMs };
}

/**
 * Runs the copy, cancelling it when the guest has been paused longer than the budget: the
 * cancelled convert kills qemu-img, and the caller's compensation resumes the guest.
 */
async function withinPauseBudget<T>(copy: () => Promise<T>, budgetMs: number, reportedMs = budgetMs): Promise<T> {
  const copyScope = new CancellationScope();
  const timerScope = new CancellationScope();
  let exceeded = false;
  const timer = timerScope
    .run(() => sleep(budgetMs))
    .then(
      () => {
        exceeded = true;
        copyScope.cancel();
      },
      () => undefined, // the copy ended first
    );
  try {
    return await copyScope.run(copy);
  } catch (err) {
    if (exceeded) throw failure('PauseBudgetExceeded', `the copy took longer than the pause budget of ${reportedMs} ms; the guest was resumed`);
    throw err;
  } finally {
    timerScope.cancel();
    await timer;
  }
}

/**
 * One of the host's snapshot slots: held by an activity on the host's slot queue, which signals
 * when it has the slot and holds it until its scope is cancelled.
 */
class HostSlot {
  private acquired = false;
  private inspection?: InstanceInspection;
  private readonly scope: CancellationScope;
  private held?: Promise<unknown>;

  constructor(private readonly owner: string) {
    setHandler(defineSignal<[SlotAcquired?]>(SLOT_ACQUIRED_SIGNAL), (acquired) => {
      this.acquired = true;
      this.inspection = acquired?.inspection;
    });
    this.scope = new CancellationScope();
  }

  /**
   * Resolves once the slot is ours. With `inspect`, the holder reads the instance as it takes the
   * slot and hands that over (undefined when it could not, or is older than that).
   */
  async acquire(options: ActivityOptions, host: string, inspect?: InspectInput): Promise<InstanceInspection | undefined> {
    this.held = this.scope
      .run(() =>
        proxyActivities<SlotActivities>({ ...options, summary: `hold a snapshot slot of ${host}` }).holdSnapshotSlot({
          owner: this.owner,
          ...(inspect ? { inspect } : {}),
        }),
      )
      .catch(() => undefined); // it ends when we let go
    await condition(() => this.acquired);
    return this.inspection;
  }

  release(): void {
    this.scope.cancel();
  }

  /**
   * Lets go of the slot through `step`, a host step that ends the holder in its own process at
   * once; when it cannot (the holder runs elsewhere, a host worker without the step), by the
   * cancel. Resolves once the holder has ended.
   */
  async letGo(step: () => Promise<boolean>): Promise<void> {
    const ended = await step().catch((err: unknown) => {
      log.warn('the host step did not let go of the snapshot slot: its holder is cancelled instead', { error: messageOf(err) });
      return false;
    });
    if (!ended) this.release();
    await this.released();
  }

  /**
   * Waits until the slot holder has ended. Without this a finished snapshot closes with the
   * holder still pending (cancel requested) in the Web UI and `temporal workflow describe`.
   * Workflows started before this change did not wait: their histories replay without it.
   */
  async released(): Promise<void> {
    if (this.held && patched('wait-for-slot-release')) await this.held;
  }
}

/** The bookkeeping of one snapshot: the progress query, phases and their metrics, search attributes, Web UI details. */
class Tracker {
  readonly progress: SnapshotProgress;
  private phaseStartedAt = Date.now();

  constructor(
    private readonly request: SnapshotRequest,
    private readonly imageId: string,
    diskFormat: DiskFormat,
  ) {
    this.progress = { phase: 'starting', imageId, taskState: null, phaseDurationsMs: {} };
    setHandler(progressQuery, () => this.progress);
    upsertSearchAttributes([
      { key: IMAGE_ID, value: imageId },
      { key: PHASE, value: 'starting' },
    ]);
    upsertMemo({ instance: request.instance, imageName: request.imageName, imageId, diskFormat });
    this.describe();
  }

  found(instanceId: string, host: string): void {
    this.progress.instanceId = instanceId;
    upsertSearchAttributes([
      { key: INSTANCE_ID, value: instanceId },
      { key: HOST, value: host },
    ]);
  }

  enter(phase: SnapshotPhase): void {
    const { progress } = this;
    const spent = Date.now() - this.phaseStartedAt;
    progress.phaseDurationsMs[progress.phase] = (progress.phaseDurationsMs[progress.phase] ?? 0) + spent;
    phaseDuration.withTags({ phase: progress.phase }).record(spent);
    this.phaseStartedAt = Date.now();
    progress.phase = phase;
    upsertSearchAttributes([{ key: PHASE, value: phase }]);
    this.describe();
    log.info(`snapshot phase ${phase}`, { imageId: this.imageId, phase, ...(progress.error ? { error: progress.error } : {}) });
  }

  taskState(next: TaskState | null): void {
    this.progress.taskState = next;
    this.describe();
  }

  paused(ms: number): void {
    pauseDuration.record(ms);
  }

  uploaded(bytes: number): void {
    uploadedBytes.add(bytes);
  }

  refused(): void {
    snapshotsTotal.withTags({ outcome: 'refused' }).add(1);
  }

  completed(): void {
    this.enter('completed');
    snapshotsTotal.withTags({ outcome: 'completed' }).add(1);
  }

  compensating(result: unknown): void {
    this.progress.error = (result as Error).message;
    this.enter('compensating');
  }

  ended(result: unknown): void {
    const outcome = isCancellation(result) ? 'cancelled' : 'failed';
    this.enter(outcome);
    snapshotsTotal.withTags({ outcome }).add(1);
  }

  private describe(): void {
    const { progress } = this;
    setDetails([
      `**${progress.phase}**`,
      `instance \`${progress.instanceId ?? this.request.instance}\` → image \`${this.imageId}\` (${this.request.imageName})`,
      `task state: ${progress.taskState ?? 'None'}`,
      ...(progress.error ? [`error: ${progress.error}`] : []),
    ]);
  }
}
