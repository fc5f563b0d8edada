// snapshotInstance: Nova's createImage as a saga, step by step as README's "How a snapshot runs".
// Each step is an activity safe to retry, and pushes its undo as it is scheduled; on failure,
// cancellation or timeout the undo steps run in reverse in a non-cancellable scope (resume what we
// paused, end a live snapshot's backup job, remove temp files, delete the unfinished image), then
// the task state goes back to None and an instance fault is recorded. Deterministic code only: all
// I/O lives in activities.
//
// A live snapshot is streamed where the host can: step 6 starts the QEMU backup job and leaves it
// running, step 8 makes the image from its point in time as it sends it (no copy on the host), and
// step 9 ends the job once the image is verified. Elsewhere step 6 copies into the temp dir and
// step 8 uploads the copy, as Nova does.
import { ActivityFailure, ApplicationFailure, CancellationScope, isCancellation, log, metricMeter, sleep, uuid4, workflowInfo } from '@temporalio/workflow';
import type { InstanceInspection } from '../activities/inspection.js';
import type { LiveStreamSource, UploadedLiveExport } from '../activities/live-export.js';
import type { UploadedImage, UploadTarget } from '../activities/upload.js';
import type { LiveCopySupport } from '../drivers/hypervisor.js';
import { AcceptanceGate } from './acceptance.js';
import { rotateBackups } from './backup-rotation.js';
import { failure, messageOf, refuseInvalid, typedFailure } from './failures.js';
import { HostSlot } from './host-slot.js';
import { findInstance, settled, type SettledPowerState } from './instance.js';
import { Compensations, attempt } from './saga.js';
import { STORE_STEP, onHost, onMain, onMainLocal, stepOptions, type Steps } from './steps.js';
import { TaskStateHolder } from './task-state.js';
import { Tracker } from './tracker.js';
import type { SnapshotSettings } from '../shared/config.js';
import type { CopiedDataDisk } from '../activities/cold-copy.js';
import type { SkippedDisk } from '../activities/disk-choice.js';
import type { DiskSelection, DiskSetManifest } from '../shared/disk-set.js';
import type { Consistency, DiskFormat, SnapshotDiskResult, SnapshotPhase, SnapshotRequest, SnapshotResult } from '../shared/types.js';
import { validateSnapshotRequest } from '../shared/validation.js';

// The workflow's own pause-budget timer backs up the pause guard's, which is exact (counted from
// QEMU's STOP, on the host, whatever becomes of the worker): it only fires when the guard could
// not keep its own (it died with the guest paused, or never started).
const PAUSE_BUDGET_MARGIN_MS = 2000;

/** New image records made for images an upload left stuck saving, before the snapshot gives up. */
const STUCK_IMAGE_REPLACEMENTS = 2;

const pauseDuration = metricMeter.createHistogram('vmsnap_pause_duration', 'int', 'ms', 'How long vmsnap kept a guest paused');
const uploadedBytes = metricMeter.createCounter('vmsnap_uploaded_bytes', 'bytes', 'Bytes uploaded to the image service');

type Mode = 'cold' | 'live';

/** What step 6 made: a copy in the snapshot's temp dir, or (live) a point in time the upload streams. */
type Source = ({ transfer: 'copied'; transferNote?: string } & Copy) | LiveStreamSource;

/** The copy in the snapshot's temp dir, as the upload needs it. */
interface Copy {
  path: string;
  size: number;
  virtualSize: number;
  consistency: Consistency;
  quiesceNote?: string;
  guestPauseMs: number;
  guestWriteStallMs?: number;
  /** The host's boot the copy was made in: the upload refuses a copy from another (CopyLost). */
  bootId: string;
  /** A set's data disks' copies, from the same pause. */
  dataDisks?: CopiedDataDisk[];
}

/** The Glance image the snapshot fills, and the compensation that deletes it until it is verified. */
interface ImageRecord {
  id: string;
  undo: { drop(): void };
}

/** A data disk's image in a snapshot of several disks: its own record, undone until the set is sealed. */
interface DataImage {
  dev: string;
  bus: string;
  image: ImageRecord;
}

/** A snapshot of several disks: the set's id, the root disk's target and the data disks' images. */
interface DiskSet {
  id: string;
  rootDev: string;
  rootBus: string;
  data: DataImage[];
  skipped: SkippedDisk[];
}

/** What the steps of one snapshot share. */
interface Snapshot {
  request: SnapshotRequest;
  /** `<workflow id>/<run id>`: owner of the task state, requester of the image. */
  owner: string;
  /** The first image id: it names the snapshot's temp dir on the host (and the reconciler finds it in the start event). */
  imageId: string;
  /** The image being filled: the first, or the record that replaced one an upload left stuck. */
  image: ImageRecord;
  /** Image ids replaced so far (stuck saving), oldest first. */
  replaced: string[];
  /** What the fault and the events of the run say about it (the image id follows a replacement). */
  details: { imageId: string };
  diskFormat: DiskFormat;
  instanceId: string;
  baseImageRef: string | null;
  settings: SnapshotSettings;
  steps: Steps;
  track: Tracker<SnapshotPhase>;
  undo: Compensations;
  /** Set when the request asked for more than the root disk (request.disks). */
  set?: DiskSet;
}

export async function snapshotInstance(request: SnapshotRequest): Promise<SnapshotResult> {
  const acceptance = new AcceptanceGate();
  refuseInvalid(validateSnapshotRequest(request), 'snapshot request');
  const { workflowId, runId } = workflowInfo();
  const owner = `${workflowId}/${runId}`;
  const imageId = request.imageId ?? uuid4();
  const diskFormat = request.diskFormat ?? 'qcow2';
  const headline = (instance: string, image: string) => `instance \`${instance}\` → image \`${image}\` (${request.imageName})`;
  const memo = { instance: request.instance, imageName: request.imageName, imageId, diskFormat };
  const track = new Tracker<SnapshotPhase>('snapshot', imageId, headline, request.instance, memo);
  const slot = new HostSlot(owner);
  const settings = await onMainLocal(STORE_STEP, 'read snapshot settings of the workers').getSnapshotSettings();

  // 1. findInstance: the inventory, and on a miss every host rediscovers.
  const {
    id: instanceId,
    host,
    baseImageRef,
  } = await findInstance(request.instance).catch((err: unknown) => {
    track.refused(err);
    throw err;
  });
  track.found(instanceId, host);
  const steps = stepOptions(settings, host);
  const undo = new Compensations({ instanceId, imageId });
  const details = { imageId };
  const novaAction = request.backup ? { novaAction: 'createBackup' } : {};
  const task = new TaskStateHolder({ action: 'Snapshot', instanceId, owner, steps, track, details, ...novaAction });
  // The image's undo is pushed as its record is made (step 3).
  const image: ImageRecord = { id: imageId, undo: { drop: () => undefined } };
  const s: Snapshot = { request, owner, imageId, image, replaced: [], details, diskFormat, instanceId, baseImageRef, settings, steps, track, undo };
  try {
    // A disk selection the instance cannot honour (a disk it has not, a network disk) is refused
    // before anything changes; so is an explicit live request it cannot honour now.
    if (request.disks !== undefined && request.disks !== 'root') s.set = await chooseSet(s, request.disks);
    if (request.mode === 'live') await inspect(s, undefined);

    // 2. Task state None → image_snapshot_pending by compare-and-swap, else InstanceBusy.
    await task.take('image_snapshot_pending');
    await task.event('start', { imageId });

    // 3. createImageRecord: the Glance image with our id and its formats, status queued.
    track.enter('creating-image');
    image.undo = undo.push('delete image', () => deleteImage(s, imageId));
    await createImageRecord(s, imageId);
    if (s.set) await createDataImageRecords(s, s.set);
    acceptance.accept({ instanceId, imageId, taskState: 'image_snapshot_pending' });

    // 4. Task state → image_snapshot; one of the host's snapshot slots (at most N at once, as Nova).
    //    The holder reads the power state and live support as it takes the slot.
    await task.move('image_snapshot_pending', 'image_snapshot');
    track.enter('waiting-for-host');
    const found = await slot.acquire(steps.slot, host, { instanceId, liveSupport: wantedMode(s) !== 'cold' });
    const { priorPowerState, mode, modeReason } = await inspect(s, found);

    // 5. Task state → image_pending_upload while the copy is made, as Nova's libvirt driver does.
    await task.move('image_snapshot', 'image_pending_upload');

    // 6. Live: a QEMU backup job's point in time while the guest runs, left running for the upload
    //    to stream (copied into the temp dir where it cannot be). Cold: pause, convert, resume in
    //    one host step.
    const source: Source = mode === 'live' ? await liveCopy(s) : { transfer: 'copied', ...(await coldCopy(s, priorPowerState)) };

    // 7. Task state → image_uploading.
    await task.move('image_pending_upload', 'image_uploading');

    // 8. uploadImage (the copy) or uploadLiveExport (the image made from the point in time as it is
    //    sent): hashed on the way; verified against the record Glance answers with. An image a
    //    cut-off attempt left stuck saving is replaced by a new record.
    track.enter('uploading');
    const [uploaded, dataUploads] = await Promise.all([upload(s, source, mode), uploadDataDisks(s, source, mode)]);
    uploadedBytes.add(uploaded.size + dataUploads.reduce((sum, d) => sum + d.size, 0));
    const seen = transferred(source, uploaded);
    // Every image is active and verified: the root image gets the set's manifest, and then the
    // images stay whatever happens next.
    const disks = diskResults(s, source, uploaded, dataUploads);
    if (s.set) await sealSet(s, s.set, disks);
    s.image.undo.drop();
    for (const d of s.set?.data ?? []) d.image.undo.drop();

    // 9. The slot is the next snapshot's; the live export's job ends, the temp dir goes and task
    //    state → None, side by side.
    track.enter('finishing');
    await Promise.all([
      slot.letGo(() => onHost(steps.letGo, 'let go of the host slot').releaseSnapshotSlot(owner)),
      source.transfer === 'streamed' ? endLiveExport(s) : removeTempDir(s),
      task.finish('image_uploading'),
    ]);
    if (request.backup) await rotateBackups(steps.image, { instanceId, imageId: s.image.id, ...request.backup });
    track.completed();
    log.info('snapshot completed', { imageId: s.image.id, size: uploaded.size, sha512: uploaded.sha512, mode, ...seen });
    return {
      imageId: s.image.id,
      imageName: request.imageName,
      instanceId,
      host,
      diskFormat,
      size: uploaded.size,
      virtualSize: source.virtualSize,
      sha512: uploaded.sha512,
      priorPowerState,
      mode,
      ...(modeReason ? { modeReason } : {}),
      consistency: source.consistency,
      ...(source.quiesceNote ? { quiesceNote: source.quiesceNote } : {}),
      ...seen,
      phaseDurationsMs: track.progress.phaseDurationsMs,
      disks,
      ...(s.set ? { diskSetId: s.set.id, skippedDisks: s.set.skipped } : {}),
    };
  } catch (err) {
    // On failure, cancel or timeout: undo in reverse, task state None, instance fault, typed failure.
    const result = typedFailure(err, 'Snapshot');
    track.compensating(result);
    slot.release();
    await CancellationScope.nonCancellable(async () => {
      await undo.run();
      await task.release(result, undo);
      await slot.released();
    });
    track.ended(result, !acceptance.isAccepted);
    await acceptance.refuse(result);
    throw result;
  }
}

interface Inspected {
  priorPowerState: SettledPowerState;
  mode: Mode;
  modeReason?: string;
}

function wantedMode(s: Snapshot) {
  return s.request.mode ?? s.settings.defaultMode;
}

/** The Glance record of the snapshot's image (status queued, formats set), under `imageId`; a set's root or data disk's. */
async function createImageRecord(s: Snapshot, imageId: string, data?: DataImage): Promise<void> {
  const { request, set } = s;
  const diskSet = set && {
    setId: set.id,
    role: data ? ('data' as const) : ('root' as const),
    dev: data?.dev ?? set.rootDev,
    rootImageId: s.image.id,
  };
  await onMainLocal(s.steps.imageRecord, `create image ${imageId} in Glance`).createImageRecord({
    ...(diskSet ? { diskSet } : {}),
    imageId,
    diskFormat: s.diskFormat,
    imageName: request.imageName,
    instanceId: s.instanceId,
    baseImageRef: s.baseImageRef,
    metadata: request.metadata ?? {},
    userId: request.userId,
    projectId: request.projectId,
    requestId: s.owner,
    scheduleId: request.scheduleId,
    ...(request.backup ? { backupType: request.backup.type } : {}),
  });
}

/**
 * Compensation's delete of an unfinished image: tried once. An image it cannot delete (Glance
 * gone) is the reconciler's sweep's: tagged vmsnap and made by this run, it is swept once the run
 * is closed. Retrying here would only hold the task state and the host slot meanwhile.
 */
async function deleteImage(s: Snapshot, imageId: string): Promise<void> {
  const error = await attempt(() => onMain(s.steps.imageCleanup, 'compensation: delete the image').deleteImageRecord(imageId));
  if (error !== undefined) log.warn("the unfinished image is left to the reconciler's sweep", { imageId, error });
}

/**
 * Step 8. A retried upload that finds its image still saving from an attempt that was cut off
 * (Glance keeps it so until its side of that connection times out, minutes) fails ImageStuck at
 * once; a new record takes the image's place and the upload starts again. An image id the request
 * named (the API answered its caller with it) is kept: the upload's retries wait for it instead.
 */
async function upload(s: Snapshot, source: Source, mode: Mode): Promise<UploadedImage | UploadedLiveExport> {
  for (;;) {
    try {
      const target: UploadTarget = {
        imageId: s.image.id,
        diskFormat: s.diskFormat,
        virtualSize: source.virtualSize,
        properties: { vmsnap_mode: mode, vmsnap_consistency: source.consistency },
        formatsSet: true, // createImageRecord made the record with them
        // A named id was promised to the requester, and a set's data images name their root image:
        // it is kept (waited for), never replaced.
        keepImageId: s.request.imageId !== undefined || s.set !== undefined,
        ...(s.set ? { dev: s.set.rootDev } : {}),
      };
      const uploaded =
        source.transfer === 'streamed'
          ? await onHost(s.steps.upload, 'make the image from the live point in time, upload it to Glance and verify').uploadLiveExport({
              ...target,
              instanceId: s.instanceId,
              export: source.export,
              compress: s.request.compress ?? false,
            })
          : await onHost(s.steps.upload, `upload ${source.size} bytes to Glance and verify`).uploadImage({
              ...target,
              path: source.path,
              copyBootId: source.bootId,
            });
      return uploaded;
    } catch (err) {
      if (failureTypeOf(err) !== 'ImageStuck' || s.replaced.length >= STUCK_IMAGE_REPLACEMENTS) throw uploadFailure(err, s.steps);
      await replaceStuckImage(s);
    }
  }
}

/**
 * The result's account of how the image reached Glance and what the guest saw: a streamed live
 * snapshot's job lived through the upload too, so its pauses add up and its longest stall is the
 * longer of the two steps'; its host scratch is the overlay's peak, a copy's is the copy.
 */
function transferred(source: Source, uploaded: UploadedImage | UploadedLiveExport) {
  const note = source.transferNote ? { transferNote: source.transferNote } : {};
  if (source.transfer === 'copied' || !('overlayBytes' in uploaded)) {
    const stall = source.guestWriteStallMs !== undefined ? { guestWriteStallMs: source.guestWriteStallMs } : {};
    const scratch = source.transfer === 'copied' ? source.size : 0;
    return { transfer: source.transfer, ...note, hostScratchBytes: scratch, guestPauseMs: source.guestPauseMs, ...stall };
  }
  const stalls = [source.guestWriteStallMs, uploaded.guestWriteStallMs].filter((ms): ms is number => ms !== undefined);
  return {
    transfer: source.transfer,
    ...note,
    hostScratchBytes: uploaded.overlayBytes,
    guestPauseMs: source.guestPauseMs + uploaded.guestPauseMs,
    ...(stalls.length ? { guestWriteStallMs: Math.max(...stalls) } : {}),
  };
}

/**
 * A new record (same name and properties, a new id) in place of the stuck image, which is deleted
 * now, or else by the compensation or the reconciler's sweep (it is tagged vmsnap and this run's).
 * The result, the search attribute, the memo and the events name the new image from here on.
 */
async function replaceStuckImage(s: Snapshot): Promise<void> {
  const stuck = s.image;
  const imageId = uuid4();
  log.warn('the image is stuck saving in Glance after a cut-off upload: a new image record replaces it', { imageId: stuck.id, newImageId: imageId });
  const undo = s.undo.push('delete image', () => deleteImage(s, imageId));
  await createImageRecord(s, imageId);
  s.image = { id: imageId, undo };
  s.replaced.push(stuck.id);
  s.details.imageId = imageId;
  s.track.imageReplaced(imageId, { replacedImageIds: [...s.replaced] });
  const error = await attempt(() => onMain(s.steps.imageCleanup, `delete the stuck image ${stuck.id}`).deleteImageRecord(stuck.id));
  if (error === undefined) stuck.undo.drop();
  else log.warn('the stuck image was not deleted yet: the compensation or the reconciler will', { imageId: stuck.id, error });
}

/** The failure type of a step's failure. */
function failureTypeOf(err: unknown): string | undefined {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return cause instanceof ApplicationFailure ? (cause.type ?? undefined) : undefined;
}

/**
 * The upload's failure as the snapshot's: it says which step failed, and that its retries are
 * used up (the driver's words say what went wrong, not whether a retry could help).
 */
function uploadFailure(err: unknown, steps: Steps): unknown {
  if (!(err instanceof ActivityFailure) || !(err.cause instanceof ApplicationFailure)) return err;
  const attempts = steps.upload.retry.maximumAttempts;
  const step = err.retryState === 'MAXIMUM_ATTEMPTS_REACHED' && attempts ? `upload to Glance gave up after ${attempts} attempts` : 'upload to Glance failed';
  return ApplicationFailure.create({
    type: err.cause.type ?? undefined,
    message: `${step}: ${messageOf(err)}`,
    nonRetryable: true,
    details: err.cause.details ?? undefined,
    cause: err,
  });
}

/** The power state and whether a running guest can be copied live: as the slot holder found them, else in one host step. */
async function inspect(s: Snapshot, found: InstanceInspection | undefined): Promise<Inspected> {
  const live = wantedMode(s) !== 'cold';
  const summary = live ? 'read power state and live-copy support' : 'read power state';
  const { powerState, liveSupport } = found ?? (await onHost(s.steps.quick, summary).inspectInstance({ instanceId: s.instanceId, liveSupport: live }));
  const priorPowerState = settled(s.instanceId, powerState, 'snapshotted');
  return { priorPowerState, ...chooseMode(s, priorPowerState, liveSupport) };
}

/**
 * Live keeps a running guest running where the host can; a guest that is not running is copied
 * cold, which needs no pause either. `mode` "live" asked for where the host cannot, or of a guest
 * that is not running, is refused: an explicit request is honoured or refused, never changed.
 */
function chooseMode(s: Snapshot, priorPowerState: SettledPowerState, support: LiveCopySupport | undefined): Omit<Inspected, 'priorPowerState'> {
  const wanted = wantedMode(s);
  if (wanted === 'cold') return { mode: 'cold' };
  const setReason = s.set?.data.length ? unstreamableSet(s.settings) : undefined;
  if (setReason) {
    if (s.request.mode === 'live')
      throw failure('InvalidInput', `a live snapshot of ${s.instanceId}'s disks is not possible: ${setReason}; ask for mode "cold"`);
    return { mode: 'cold', modeReason: setReason };
  }
  if (priorPowerState !== 'running' && s.request.mode === 'live') {
    throw failure('InvalidInput', `a live snapshot of ${s.instanceId} needs a running guest, and it is ${priorPowerState}: ask for mode "cold" or "auto"`);
  }
  if (priorPowerState !== 'running') return { mode: 'cold', modeReason: `the instance is ${priorPowerState}: a cold copy needs no pause` };
  if (support?.supported) return { mode: 'live' };
  const reason = support?.reason ?? 'live copy is not supported here';
  if (wanted === 'live') {
    throw failure('InstanceInvalidState', `a live snapshot of ${s.instanceId} is not possible: ${reason}; ask for mode "cold" or "auto"`);
  }
  return { mode: 'cold', modeReason: reason };
}

/** Why a snapshot of several disks cannot be live with these settings: its disks are streamed from one job, never copied. */
function unstreamableSet(settings: SnapshotSettings): string | undefined {
  if (settings.liveTransfer === 'copy') return 'a live snapshot of several disks is streamed, and VMSNAP_LIVE_TRANSFER is copy';
  if (settings.liveCopyMethod === 'push') return 'a live snapshot of several disks is streamed by pull, and VMSNAP_LIVE_METHOD is push';
  return undefined;
}

/** The snapshot's temp dir on the host; a dir that cannot be removed is the reconciler's. */
async function removeTempDir(s: Snapshot): Promise<void> {
  await onHost(s.steps.cleanup, 'remove the snapshot temp dir')
    .removeSnapshotFiles(s.imageId)
    .catch((e: Error) => {
      if (isCancellation(e)) throw e;
      log.warn('the snapshot temp dir was not removed; the reconciler will', { imageId: s.imageId, error: e.message });
    });
}

function undoTempDir(s: Snapshot): void {
  s.undo.push('remove temp files', () => onHost(s.steps.cleanup, 'compensation: remove temp dir').removeSnapshotFiles(s.imageId));
}

/** The live export's backup job ends and the temp dir goes; a failure is the next snapshot's or the reconciler's. */
async function endLiveExport(s: Snapshot): Promise<void> {
  await onHost(s.steps.cleanup, 'end the live backup job, remove the temp dir')
    .endLiveExport({ instanceId: s.instanceId, imageId: s.imageId })
    .catch((e: Error) => {
      if (isCancellation(e)) throw e;
      log.warn('the live backup job or the temp dir was not removed; the next snapshot of the instance or the reconciler will', {
        imageId: s.imageId,
        error: e.message,
      });
    });
}

/**
 * A point in time by a QEMU backup job while the guest runs (quiesced if asked and able): left
 * running for the upload to stream, or copied into the temp dir where it cannot be streamed.
 */
async function liveCopy(s: Snapshot): Promise<Source> {
  const { request, instanceId, owner } = s;
  const quiesce = request.quiesce ?? 'try';
  s.track.enter('copying');
  const end = () => onHost(s.steps.cleanup, 'compensation: end the live backup job, remove temp dir').endLiveExport({ instanceId, imageId: s.imageId });
  s.undo.push('end live export, remove temp files', end);
  // The host step thaws on every path but a dead worker's; thawing twice is harmless. Once it has
  // returned, the guest was thawed.
  const thaw = () => onHost(s.steps.resume, 'compensation: thaw the guest filesystems').thawInstance({ instanceId, owner });
  const frozen = quiesce !== 'never' ? s.undo.push('thaw filesystems', thaw, { guest: true }) : undefined;
  const what = s.set?.data.length ? `the ${s.set.data.length + 1} disks` : 'the root disk';
  const source = await onHost(s.steps.copy, `live point in time of ${what} (QEMU backup job)`).exportLiveDisk({
    instanceId,
    imageId: s.imageId,
    diskFormat: s.diskFormat,
    compress: request.compress ?? false,
    quiesce,
    owner,
    ...(s.set?.data.length ? { dataDisks: s.set.data.map((d) => d.dev) } : {}),
  });
  frozen?.drop();
  return source;
}

/**
 * Nova's way: a running guest is paused for the copy and resumed before the upload, all in one
 * host step, so that no trip through Temporal falls into the pause. The copy and the resume belong
 * to the step's pause guard, a process on the host that outlives the worker and keeps the pause
 * budget; a retried step adopts its copy. The workflow's timer backs the budget up, and the result's
 * guestPauseMs is the guest's whole pause under this run, across attempts (the step sums them).
 */
async function coldCopy(s: Snapshot, priorPowerState: SettledPowerState): Promise<Copy> {
  const { instanceId, owner, steps } = s;
  const pause = priorPowerState === 'running';
  s.track.enter('converting');
  // The pause guard resumes on every path but its own death; then this does.
  const resume = () => onHost(steps.resume, 'compensation: resume the guest').resumeInstance({ instanceId, owner });
  const paused = pause ? s.undo.push('resume instance', resume, { guest: true }) : undefined;
  undoTempDir(s);
  const budgetMs = pause ? s.settings.pauseBudgetMs : 0;
  const what = s.set?.data.length ? `the ${s.set.data.length + 1} disks` : 'the root disk';
  const summary = pause ? `pause, copy ${what} to ${s.diskFormat}, resume` : `copy ${what} to ${s.diskFormat}`;
  const copy = () =>
    onHost(steps.copy, summary).coldCopyDisk({
      instanceId,
      imageId: s.imageId,
      diskFormat: s.diskFormat,
      compress: s.request.compress ?? false,
      owner,
      pause,
      // A paused or running QEMU holds the image lock; a shut-off instance's disk is free.
      forceShare: priorPowerState !== 'shutdown',
      pauseBudgetMs: budgetMs,
      ...(s.set?.data.length ? { dataDisks: s.set.data.map((d) => d.dev) } : {}),
    });
  let disk;
  try {
    disk = budgetMs > 0 ? await withinPauseBudget(copy, budgetMs) : await copy();
  } catch (err) {
    if (guestResumed(err)) paused?.drop();
    throw err;
  }
  paused?.drop();
  const { guestPauseMs, resumeOutcome, ...converted } = disk;
  if (pause) pauseDuration.record(guestPauseMs);
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

/**
 * Runs the copy, cancelling it when the guest has been paused longer than the budget (plus a
 * margin: the host step keeps the budget exactly). The cancelled step kills qemu-img, and the
 * compensation resumes the guest.
 */
async function withinPauseBudget<T>(copy: () => Promise<T>, budgetMs: number): Promise<T> {
  const copyScope = new CancellationScope();
  const timerScope = new CancellationScope();
  let exceeded = false;
  const timer = timerScope
    .run(() => sleep(budgetMs + PAUSE_BUDGET_MARGIN_MS))
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
    if (exceeded) throw failure('PauseBudgetExceeded', `the copy took longer than the pause budget of ${budgetMs} ms; the guest was resumed`);
    throw err;
  } finally {
    timerScope.cancel();
    await timer;
  }
}

/** The disks of a snapshot of several disks, chosen on the host before the task state is taken. */
async function chooseSet(s: Snapshot, selection: DiskSelection): Promise<DiskSet> {
  const { chosen, skipped } = await onHost(s.steps.quick, 'choose the disks to snapshot').chooseInstanceDisks({ instanceId: s.instanceId, selection });
  const [root, ...data] = chosen;
  if (!root) throw failure('DiskNotFound', `instance ${s.instanceId} has no disk to snapshot`);
  for (const d of skipped) log.info('disk left out of the snapshot', { dev: d.dev, reason: d.reason });
  return {
    id: uuid4(),
    rootDev: root.dev,
    rootBus: root.bus,
    data: data.map((d) => ({ dev: d.dev, bus: d.bus, image: { id: uuid4(), undo: { drop: () => undefined } } })),
    skipped,
  };
}

/** A record per data disk (hidden, naming the root image), each deleted by compensation until the set is sealed. */
async function createDataImageRecords(s: Snapshot, set: DiskSet): Promise<void> {
  await Promise.all(
    set.data.map(async (d) => {
      d.image.undo = s.undo.push(`delete image of ${d.dev}`, () => deleteImage(s, d.image.id));
      await createImageRecord(s, d.image.id, d);
    }),
  );
}

/**
 * Step 8 for a set's data disks, side by side with the root disk's: each copy into its own image,
 * hashed and verified the same way. Their ids were given out with the set: a stuck one is waited for.
 */
async function uploadDataDisks(s: Snapshot, source: Source, mode: Mode): Promise<(UploadedImage & { dev: string })[]> {
  const data = s.set?.data ?? [];
  if (!data.length) return [];
  const properties = { vmsnap_mode: mode, vmsnap_consistency: source.consistency };
  return Promise.all(
    data.map(async (d) => {
      const target = { imageId: d.image.id, diskFormat: s.diskFormat, properties, formatsSet: true, keepImageId: true, dev: d.dev };
      try {
        if (source.transfer === 'streamed') {
          const exported = source.dataExports?.find((e) => e.dev === d.dev);
          if (!exported) throw failure('DiskNotFound', `the live backup job exports no disk ${d.dev}`);
          const uploaded = await onHost(s.steps.upload, `make the image of disk ${d.dev} from the live point in time, upload it and verify`).uploadLiveExport({
            ...target,
            virtualSize: exported.virtualSize,
            instanceId: s.instanceId,
            export: exported.export,
            compress: s.request.compress ?? false,
          });
          return { ...uploaded, dev: d.dev };
        }
        const copy = source.dataDisks?.find((c) => c.dev === d.dev);
        if (!copy) throw failure('DiskNotFound', `the copy step returned no copy of disk ${d.dev}`);
        const uploaded = await onHost(s.steps.upload, `upload disk ${d.dev} (${copy.size} bytes) to Glance and verify`).uploadImage({
          ...target,
          virtualSize: copy.virtualSize,
          path: copy.path,
          copyBootId: copy.bootId,
        });
        return { ...uploaded, dev: d.dev };
      } catch (err) {
        throw uploadFailure(err, s.steps);
      }
    }),
  );
}

/** Every image of the snapshot, root first. */
function diskResults(s: Snapshot, source: Source, root: UploadedImage | UploadedLiveExport, data: (UploadedImage & { dev: string })[]): SnapshotDiskResult[] {
  const parts = source.transfer === 'copied' ? (source.dataDisks ?? []) : (source.dataExports ?? []);
  const virtualSizes = new Map(parts.map((c) => [c.dev, c.virtualSize]));
  const rootEntry: SnapshotDiskResult = {
    dev: s.set?.rootDev ?? 'root',
    bus: s.set?.rootBus ?? '',
    role: 'root',
    imageId: s.image.id,
    diskFormat: s.diskFormat,
    size: root.size,
    virtualSize: source.virtualSize,
    sha512: root.sha512,
  };
  const dataEntries = (s.set?.data ?? []).map((d): SnapshotDiskResult => {
    const uploaded = data.find((u) => u.dev === d.dev);
    return {
      dev: d.dev,
      bus: d.bus,
      role: 'data',
      imageId: d.image.id,
      diskFormat: s.diskFormat,
      size: uploaded?.size ?? 0,
      virtualSize: virtualSizes.get(d.dev) ?? 0,
      sha512: uploaded?.sha512 ?? '',
    };
  });
  return [rootEntry, ...dataEntries];
}

/** The set's manifest on its root image: written last, so a root image with a manifest names only active, verified images. */
async function sealSet(s: Snapshot, set: DiskSet, disks: SnapshotDiskResult[]): Promise<void> {
  const manifest: DiskSetManifest = {
    set_id: set.id,
    disks: disks.map((d) => ({
      device_name: d.dev,
      disk_bus: d.bus,
      boot_index: d.role === 'root' ? 0 : null,
      image_id: d.imageId,
      disk_format: d.diskFormat,
      virtual_size: d.virtualSize,
    })),
  };
  await onMainLocal(s.steps.imageRecord, `record the set of ${disks.length} images on image ${s.image.id}`).sealDiskSet({ rootImageId: s.image.id, manifest });
}
