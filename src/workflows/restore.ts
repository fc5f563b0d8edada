// restoreInstance: Nova's rebuild as a saga, but never destructive. The image is downloaded and
// verified beside the disk while the guest runs; only then is the guest stopped, the disk swapped
// (the previous one kept as the pre-restore file) and the guest started in its prior power state.
// On failure, cancellation or timeout the compensation (non-cancellable) removes what was made,
// puts the previous disk back if it was swapped, starts the guest again, and the task state goes
// back to None. rollbackRestore puts the pre-restore disk back later, while it is kept.
// Deterministic code only: all I/O lives in activities.
import { CancellationScope, log, workflowInfo } from '@temporalio/workflow';
import type { RestoreImage, RestoreSet } from '../activities/restore-image.js';
import type { PreparedRestore } from '../activities/restore-download.js';
import { AcceptanceGate } from './acceptance.js';
import { failure, faultCode, refuseInvalid, typedFailure } from './failures.js';
import { findInstance, settled, type SettledPowerState } from './instance.js';
import { Compensations } from './saga.js';
import { STORE_STEP, onHost, onMain, onMainLocal, stepOptions, type Steps } from './steps.js';
import { TaskStateHolder } from './task-state.js';
import { Tracker } from './tracker.js';
import type { RestoreDiskResult, RestorePhase, RestoreRequest, RestoreResult, RollbackRequest, RollbackResult } from '../shared/types.js';
import { validateRestoreRequest, validateRollbackRequest } from '../shared/validation.js';
import type { InstanceRecord } from '../store/store.js';

/** What every restore and rollback starts with: the run, its tracker, the instance and its steps. */
interface Run {
  owner: string;
  track: Tracker<RestorePhase>;
  instance: InstanceRecord;
  steps: Steps;
  undo: Compensations;
}

async function start(kind: 'restore' | 'rollback', ref: string, imageId: string, headline: (instance: string) => string): Promise<Run> {
  const { workflowId, runId } = workflowInfo();
  const track = new Tracker<RestorePhase>(kind, imageId, headline, ref, { instance: ref, ...(imageId ? { imageId } : {}), action: kind });
  const settings = await onMainLocal(STORE_STEP, 'read settings of the workers').getSnapshotSettings();
  const instance = await findInstance(ref).catch((err: unknown) => {
    track.refused(err);
    throw err;
  });
  track.found(instance.id, instance.host);
  const undo = new Compensations({ instanceId: instance.id, ...(imageId ? { imageId } : {}) });
  return { owner: `${workflowId}/${runId}`, track, instance, steps: stepOptions(settings, instance.host), undo };
}

/** The power state, as one host step reads it. */
async function powerState(run: Run): Promise<string> {
  return (await onHost(run.steps.quick, 'read power state').inspectInstance({ instanceId: run.instance.id, liveSupport: false })).powerState;
}

/** Compensation, in a non-cancellable scope: undo in reverse, then the task state back to None with a fault. */
async function compensate(run: Run, task: TaskStateHolder | undefined, err: unknown, refused = false): Promise<unknown> {
  const result = typedFailure(err, 'Restore');
  run.track.compensating(result);
  await CancellationScope.nonCancellable(async () => {
    await run.undo.run();
    await task?.release(result, run.undo);
  });
  run.track.ended(result, refused);
  return result;
}

/** The image downloaded beside the disk (or as a new instance's disk), verified before use. */
function download(run: Run, image: Omit<RestoreImage, 'set'>, where: string, disk: { allowGrow: boolean; newDiskPath?: string; dev?: string }) {
  return onHost(run.steps.download, `download ${image.size} bytes ${where}, verify sha512, qemu-img check`).prepareRestoreImage({
    instanceId: run.instance.id,
    imageId: image.imageId,
    imageFormat: image.diskFormat,
    expected: { size: image.size, sha512: image.sha512 },
    virtualSize: image.virtualSize,
    ...disk,
  });
}

/**
 * A set's images, each downloaded beside its own disk (or to its new instance's new disk) and
 * verified, one after the other: each download's room is measured with the ones before it on disk.
 */
async function downloadSet(run: Run, set: RestoreSet, allowGrow: boolean, newDisks?: Record<string, string>): Promise<PreparedRestore[]> {
  const prepared: PreparedRestore[] = [];
  for (const disk of set.disks) {
    const newDiskPath = newDisks?.[disk.dev];
    const where = newDiskPath ? `to the new instance's disk ${disk.dev}` : `beside disk ${disk.dev}`;
    prepared.push(await download(run, disk.image, where, { allowGrow, dev: disk.dev, ...(newDiskPath ? { newDiskPath } : {}) }));
  }
  return prepared;
}

/** The result's line of each disk of a set, root first. */
function setDisks(set: RestoreSet, prepared: PreparedRestore[], diskPaths: string[], preRestorePaths?: string[]): RestoreDiskResult[] {
  return set.disks.map((disk, i) => ({
    dev: disk.dev,
    imageId: disk.image.imageId,
    path: diskPaths[i]!,
    ...(preRestorePaths ? { preRestorePath: preRestorePaths[i]! } : {}),
    downloadedBytes: prepared[i]!.downloadedBytes,
    sha512: prepared[i]!.sha512,
    virtualSize: prepared[i]!.virtualSize,
  }));
}

/** A set's disks against the domain's: each disk of the set there, none of the domain's left out. Changes nothing. */
function checkSetDisks(run: Run, set: RestoreSet): Promise<void> {
  const disks = set.disks.map((d) => ({ dev: d.dev, role: d.role }));
  return onHost(run.steps.quick, `check the instance's disks against snapshot set ${set.setId}`).checkRestoreDisks({
    instanceId: run.instance.id,
    setId: set.setId,
    disks,
  });
}

function checkImage(run: Run, request: RestoreRequest): Promise<RestoreImage> {
  return onMain(run.steps.image, `check image ${request.imageId} in Glance`).checkRestoreImage({
    imageId: request.imageId,
    instanceId: run.instance.id,
    allowOtherImage: request.allowOtherImage ?? false,
  });
}

export async function restoreInstance(request: RestoreRequest): Promise<RestoreResult> {
  const acceptance = new AcceptanceGate();
  refuseInvalid(validateRestoreRequest(request), 'restore request');
  const { imageId } = request;
  // 1. findInstance: the inventory, and on a miss every host rediscovers.
  const run = await start('restore', request.instance, imageId, (instance) => `image \`${imageId}\` → instance \`${instance}\``);
  if (request.asNew) return restoreAsNew(run, request, request.asNew, acceptance);
  const { track, steps, undo, owner } = run;
  const instanceId = run.instance.id;

  // 2. checkRestoreImage: active, a format vmsnap restores, this instance's snapshot; a set's root
  //    brings every image of the set, and the domain's disks must match the set's. Before the
  //    task state is taken: a refused image changes nothing at all.
  track.enter('checking-image');
  const refused = async (err: unknown): Promise<never> => {
    const result = typedFailure(err, 'Restore');
    track.refused(result);
    await acceptance.refuse(result);
    throw result;
  };
  const image = await checkImage(run, request).catch(refused);
  const set = image.set;
  if (set) await checkSetDisks(run, set).catch(refused);

  const task = new TaskStateHolder({ action: 'Restore', instanceId, owner, steps, track, details: { imageId } });
  try {
    // 3. Task state None → rebuilding (compare-and-swap); the guest must be running, paused or off.
    await task.take('rebuilding');
    acceptance.accept({ instanceId, imageId, taskState: 'rebuilding' });
    const priorPowerState = await powerState(run);
    await task.event('start', { imageId, priorPowerState });
    const prior = settled(instanceId, priorPowerState, 'restored');

    // 4. The image downloaded beside the disk and verified, while the guest runs on.
    track.enter('downloading');
    const undoRestore = () => onHost(steps.undoRestore, 'compensation: remove new files, previous disk back, guest started');
    undo.push('undo restore', () => undoRestore().undoRestore({ instanceId, owner, priorPowerState: prior }), { guest: true });
    const allowGrow = request.allowGrow ?? false;
    const preparedSet = set ? await downloadSet(run, set, allowGrow) : undefined;
    const prepared = preparedSet?.[0] ?? (await download(run, image, 'beside the disk', { allowGrow }));

    // 5. Task state → rebuild_block_device_mapping: from here on the guest is touched.
    await task.move('rebuilding', 'rebuild_block_device_mapping');

    // 6. Stop, swap, task state → rebuild_spawning, start: one host step, so the guest's downtime
    //    holds no round trip through Temporal.
    track.enter('stopping');
    const swaps = set ? `swap its ${set.disks.length} disks in one step (keep the previous ones)` : 'swap the disk (keep the previous one)';
    const summary = `stop the guest, ${swaps}, start it (${prior}) and confirm it runs`;
    const forceStop = request.forceStop ?? false;
    const disks = set ? { disks: set.disks.map((d) => ({ dev: d.dev, imageId: d.image.imageId })) } : {};
    const done = await onHost(steps.power, summary).stopSwapStart({ instanceId, owner, imageId, powerState: prior, forceStop, ...disks });
    track.taskState('rebuild_spawning');

    // 7. Task state → None.
    track.enter('finishing');
    await task.finish('rebuild_spawning');
    track.completed();
    const result: RestoreResult = {
      instanceId,
      host: run.instance.host,
      imageId,
      diskPath: prepared.diskPath,
      diskFormat: prepared.diskFormat,
      preRestorePath: done.preRestorePath,
      preRestoreKeptUntil: done.keptUntil,
      downloadedBytes: prepared.downloadedBytes,
      sha512: prepared.sha512,
      virtualSize: prepared.virtualSize,
      priorPowerState: prior,
      downtimeMs: prior === 'shutdown' ? 0 : Math.max(0, done.startedAt - done.stoppedAt),
      ...(done.shutdownWaitMs !== undefined ? { shutdownWaitMs: done.shutdownWaitMs } : {}),
      stoppedBy: done.stoppedBy,
      confirmedBy: done.confirmedBy,
      downtimeStepsMs: done.downtimeStepsMs,
      phaseDurationsMs: track.progress.phaseDurationsMs,
    };
    if (set && preparedSet) {
      const swapped = done.swapped;
      result.diskSetId = set.setId;
      result.disks = setDisks(
        set,
        preparedSet,
        swapped.map((d) => d.diskPath),
        swapped.map((d) => d.preRestorePath),
      );
    }
    log.info('restore completed', { imageId, downtimeMs: result.downtimeMs });
    return result;
  } catch (err) {
    const result = await compensate(run, task, err, !acceptance.isAccepted);
    await acceptance.refuse(result);
    throw result;
  }
}

/**
 * Restore as a new instance: the image goes to a new disk beside the instance's, and a new domain
 * (new name, UUID and MACs) like the instance runs on it. The instance itself is never touched,
 * so its task state is not taken; a failure removes the new domain and disk.
 */
async function restoreAsNew(run: Run, request: RestoreRequest, name: string, acceptance: AcceptanceGate): Promise<RestoreResult> {
  const { track, steps, undo, owner } = run;
  const { imageId } = request;
  const instanceId = run.instance.id;
  const task = new TaskStateHolder({ action: 'Restore', instanceId, owner, steps, track, details: { imageId, asNew: name } });
  try {
    // 2. The new instance runs as the original does; one that is off stays defined and off.
    const priorPowerState = await powerState(run);
    const startAs: SettledPowerState = priorPowerState === 'running' || priorPowerState === 'paused' ? priorPowerState : 'shutdown';
    await task.event('start', { imageId, asNew: name });
    acceptance.accept({ instanceId, imageId, taskState: null });

    // 3. checkRestoreImage, as for a restore in place (a set: its disks against the domain's too).
    track.enter('checking-image');
    const image = await checkImage(run, request);
    const set = image.set;
    if (set) await checkSetDisks(run, set);

    // 4. The new disks' paths are claimed before anything is made (the reconciler finds a dead run's).
    let diskPath: string;
    let dataDisks: Record<string, string> | undefined;
    if (set) {
      const dataDevs = set.disks.filter((d) => d.role === 'data').map((d) => d.dev);
      ({ diskPath, dataDisks } = await onHost(steps.quick, 'paths of the new disks').newInstanceDiskPaths({ instanceId, name, dataDevs }));
    } else {
      diskPath = await onHost(steps.quick, 'path of the new disk').newInstanceDiskPath({ instanceId, name });
    }
    const newDisks = { diskPath, ...(dataDisks ? { dataDisks } : {}) };
    const removeNew = () => onHost(steps.undoRestore, 'compensation: remove the new instance and its disk');
    undo.push('remove the new instance', () => removeNew().removeNewInstance({ instanceId, owner, name, ...newDisks }));

    // 5. The image downloaded to the new disk and verified: a new instance's disk is the image's size.
    track.enter('downloading');
    const byDev = set ? { [set.disks[0]!.dev]: diskPath, ...dataDisks } : {};
    const preparedSet = set ? await downloadSet(run, set, true, byDev) : undefined;
    const prepared = preparedSet?.[0] ?? (await download(run, image, "to the new instance's disk", { allowGrow: true, newDiskPath: diskPath }));

    // 6. The new domain defined on it and started as the original runs.
    track.enter('starting-guest');
    const made = await onHost(steps.power, `define instance ${name} on the new disk and start it`).defineNewInstance({
      instanceId,
      owner,
      name,
      ...newDisks,
      powerState: startAs,
    });
    track.enter('finishing');
    await task.event('finish', { imageId, newInstanceId: made.newInstanceId });
    track.completed();
    const setResult =
      set && preparedSet
        ? {
            diskSetId: set.setId,
            disks: setDisks(
              set,
              preparedSet,
              set.disks.map((d) => byDev[d.dev]!),
            ),
          }
        : {};
    return {
      ...setResult,
      instanceId,
      host: run.instance.host,
      imageId,
      diskPath,
      diskFormat: prepared.diskFormat,
      newInstance: { id: made.newInstanceId, name },
      downloadedBytes: prepared.downloadedBytes,
      sha512: prepared.sha512,
      virtualSize: prepared.virtualSize,
      priorPowerState,
      downtimeMs: 0,
      stoppedBy: 'none',
      confirmedBy: made.confirmedBy,
      phaseDurationsMs: track.progress.phaseDurationsMs,
    };
  } catch (err) {
    // The instance's task state was never taken: compensation records the error event, no fault.
    const result = await compensate(run, undefined, err, !acceptance.isAccepted);
    await undo.attempt('record event', () => task.event('error', { imageId, code: faultCode(result, 'Restore') }));
    await acceptance.refuse(result);
    throw result;
  }
}

/** Puts the pre-restore disk back (while it is kept) and starts the guest in its power state. */
export async function rollbackRestore(request: RollbackRequest): Promise<RollbackResult> {
  refuseInvalid(validateRollbackRequest(request), 'rollback request');
  // 1. findInstance.
  const run = await start('rollback', request.instance, '', (instance) => `pre-restore disk → instance \`${instance}\``);
  const { track, steps, undo, owner } = run;
  const instanceId = run.instance.id;
  const task = new TaskStateHolder({ action: 'Restore', instanceId, owner, steps, track, details: { rollback: true } });
  try {
    // 2. Task state None → rebuilding; there must be a pre-restore disk, and a settled guest.
    await task.take('rebuilding');
    const kept = await onHost(steps.quick, 'find the pre-restore disk').preRestoreDisk(instanceId);
    if (!kept) {
      const why = 'it was never restored, or its disk was removed after the retention window';
      throw failure('DiskNotFound', `instance ${instanceId} has no pre-restore disk: ${why}`);
    }
    const priorPowerState = await powerState(run);
    await task.event('start', { rollback: true, priorPowerState });
    const prior = settled(instanceId, priorPowerState, 'rolled back');
    // The guest runs again in its prior state whatever happens; the disk is whichever is in place.
    const startGuest = () => onHost(steps.undoRestore, 'compensation: guest started');
    undo.push('start the guest', () => startGuest().undoRestore({ instanceId, owner, priorPowerState: prior }), { guest: true });

    // 3. Task state → rebuild_spawning; stop, the pre-restore disk back, start: one host step.
    await task.move('rebuilding', 'rebuild_spawning');
    track.enter('stopping');
    const done = await onHost(steps.power, 'stop the guest, put the pre-restore disk back, start it').rollbackDisk({ instanceId, owner, powerState: prior });

    // 4. Task state → None.
    track.enter('finishing');
    await task.finish('rebuild_spawning');
    track.completed();
    return {
      instanceId,
      diskPath: kept.path.replace(/\.vmsnap-pre-restore$/, ''),
      priorPowerState: prior,
      downtimeMs: prior === 'shutdown' ? 0 : done.startedAt - done.stoppedAt,
    };
  } catch (err) {
    throw await compensate(run, task, err);
  }
}
