// snapshotInstance's saga, one test per branch, on a local Temporal with fake activities (see
// fake-cloud.ts): the happy paths, then each way it can fail or be cancelled, and what its
// compensation leaves behind: guest in its prior power state, task state None, no unfinished
// image, no temp dir, a fault that says what happened. Terminate followed by the reconciler is in
// reconcile.test.ts. One file: one dev server and one workflow bundle.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import type { SnapshotPhase, SnapshotProgress, SnapshotResult } from '../../src/shared/types.js';
import { IMAGE_ID } from '../../src/shared/search-attributes.js';
import { startFastTemporal, untilCancelled, type FakeCloud, type FastTemporal, type HookCall } from './fake-cloud.js';

let t: FastTemporal;

/** A cloud of its own (tests run side by side) with one guest in it. */
function newGuest() {
  const cloud = t.newCloud();
  const id = randomUUID();
  return { cloud, id, instance: cloud.addInstance(id) };
}

/** The workflow's failure: what a client of vmsnap sees. */
async function failureOf(handle: WorkflowHandle): Promise<Error> {
  const err = await handle.result().then(
    () => assert.fail('the snapshot should have failed'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof WorkflowFailedError, String(err));
  assert.ok(err.cause);
  return err.cause;
}

async function failureType(handle: WorkflowHandle): Promise<string | undefined> {
  const cause = await failureOf(handle);
  assert.ok(cause instanceof ApplicationFailure, `an ApplicationFailure, not ${cause.name}: ${cause.message}`);
  return cause.type ?? undefined;
}

/** Compensation's promise: nothing half-done is left, and the fault says what happened. */
function assertUndone(cloud: FakeCloud, instanceId: string, imageId: string, fault: string, power = 'running') {
  const instance = cloud.instances.get(instanceId)!;
  assert.equal(instance.power, power, 'the guest is back in its prior power state');
  assert.equal(instance.taskState, null, 'task state None');
  assert.equal(instance.frozen, false);
  assert.equal(cloud.images.get(imageId), undefined, 'no unfinished image');
  assert.deepEqual([...cloud.tempDirs], [], 'no temp dir');
  assert.deepEqual([...cloud.liveJobs], [], 'no live backup job');
  assert.deepEqual(
    cloud.faults.map((f) => f.code),
    [fault],
  );
  assert.equal(cloud.eventsOf(instanceId).at(-1), 'error');
}

async function imageIdOf(handle: WorkflowHandle): Promise<string> {
  return (await handle.query<SnapshotProgress>('progress')).imageId;
}

/**
 * A hook that lets the step take effect, then cancels the snapshot while the step still runs.
 * Once only: compensation may call the same step again (resume, remove temp dir).
 */
function cancelDuringStep(cloud: FakeCloud, step: string) {
  cloud.hooks[step] = async (call: HookCall) => {
    delete cloud.hooks[step];
    await call.run();
    await t.client.workflow.getHandle(call.workflowId).cancel();
    return untilCancelled();
  };
}

// Bounded, so a dev server or worker that hangs fails the run instead of stalling it.
before(
  async () => {
    t = await startFastTemporal('saga');
  },
  { timeout: 180_000 },
);
after(
  async () => {
    await t?.close();
  },
  { timeout: 60_000 },
);

// Each test has a cloud of its own: they run side by side.
describe('snapshotInstance saga, fast (local Temporal, fake activities)', { timeout: 120_000, concurrency: true }, () => {
  it('cold: pauses, copies, resumes before the upload, and leaves a verified image', async () => {
    const { cloud, id } = newGuest();
    const states: (string | null)[] = [];
    cloud.hooks.setTaskState = async (call) => {
      await call.run();
      states.push(cloud.instances.get(id)!.taskState);
    };
    cloud.hooks.coldCopyDisk = async (call) => {
      states.push(`copying in ${cloud.instances.get(id)!.taskState}`);
      return call.run();
    };
    const result: SnapshotResult = await (await t.startSnapshot(cloud, { instance: id, imageName: 'cold' })).result();
    assert.equal(result.mode, 'cold');
    assert.equal(result.modeReason, undefined);
    assert.equal(cloud.images.get(result.imageId)?.status, 'active');
    assert.deepEqual(cloud.eventsOf(id), ['start', 'pause', 'resume', 'finish']);
    // The slot holder reads the power state; one host step pauses, copies and resumes.
    const host = cloud.calls.filter((c) =>
      ['getPowerState', 'liveCopySupport', 'inspectInstance', 'pauseInstance', 'convertDisk', 'coldCopyDisk', 'resumeInstance', 'uploadImage'].includes(c),
    );
    assert.deepEqual(host, ['coldCopyDisk', 'uploadImage']);
    // The slot is let go of by a host step that ends its holder at once, not by a cancel that
    // reaches it only with its next heartbeat.
    assert.ok(cloud.calls.includes('releaseSnapshotSlot'));
    assert.equal(cloud.slotHolders.size, 0, 'no slot holder left running');
    // Nova's task states: image_pending_upload while the copy is made.
    assert.deepEqual(states, ['image_snapshot_pending', 'image_snapshot', 'image_pending_upload', 'copying in image_pending_upload', 'image_uploading', null]);
    assert.equal(cloud.instances.get(id)?.power, 'running');
    assert.equal(cloud.instances.get(id)?.taskState, null);
    assert.deepEqual([...cloud.tempDirs], []);
    assert.deepEqual(cloud.faults, []);
    assert.ok(!('completed' in result.phaseDurationsMs));
    for (const phase of ['creating-image', 'waiting-for-host', 'converting', 'uploading', 'finishing'] as SnapshotPhase[]) {
      assert.ok(phase in result.phaseDurationsMs, `phase ${phase} timed`);
    }
    assert.ok(result.guestPauseMs >= 0);
  });

  it('live where the host can: never pauses, and a shut-off guest is copied cold with the reason', async () => {
    const { cloud, id } = newGuest();
    cloud.liveSupported = true;
    cloud.settings.defaultMode = 'auto';
    const live = await (await t.startSnapshot(cloud, { instance: id, imageName: 'live' })).result();
    assert.equal(live.mode, 'live');
    assert.equal(live.guestPauseMs, 0);
    assert.ok(!cloud.calls.includes('pauseInstance') && !cloud.calls.includes('coldCopyDisk'));
    // Streamed: the upload read the job's point in time, and the job ended once the image was verified.
    assert.deepEqual([live.transfer, live.hostScratchBytes], ['streamed', 65536]);
    const host = cloud.calls.filter((c) => ['exportLiveDisk', 'uploadLiveExport', 'endLiveExport', 'uploadImage', 'removeSnapshotFiles'].includes(c));
    assert.deepEqual(host, ['exportLiveDisk', 'uploadLiveExport', 'endLiveExport']);
    assert.deepEqual([...cloud.liveJobs, ...cloud.tempDirs], []);
    assert.ok(!cloud.calls.includes('liveCopySupport'), 'the power state and live support come in one host step');
    assert.deepEqual(cloud.eventsOf(id), ['start', 'freeze', 'thaw', 'finish']);

    const off = randomUUID();
    cloud.addInstance(off, 'shutdown');
    const cold = await (await t.startSnapshot(cloud, { instance: off, imageName: 'off' })).result();
    assert.equal(cold.mode, 'cold');
    assert.match(cold.modeReason ?? '', /shutdown/);
    assert.equal(cloud.instances.get(off)?.power, 'shutdown');
    assert.deepEqual(cloud.eventsOf(off), ['start', 'finish']);
  });

  it('a slot holder that could not read the instance: one host step reads it', async () => {
    const { cloud, id } = newGuest();
    cloud.liveSupported = true;
    cloud.settings.defaultMode = 'auto';
    cloud.hooks.holdSnapshotSlot = async (call) => {
      const [{ owner }] = call.args as [{ owner: string }];
      const [workflowId, runId] = owner.split('/') as [string, string];
      await t.client.workflow.getHandle(workflowId, runId).signal('snapshotSlotAcquired', {});
      return untilCancelled();
    };
    const result = await (await t.startSnapshot(cloud, { instance: id, imageName: 'old-holder' })).result();
    assert.equal(result.mode, 'live');
    assert.equal(cloud.calls.filter((c) => c === 'inspectInstance').length, 1);
  });

  it('refuses an instance with a task in progress and changes nothing', async () => {
    const { cloud, id, instance } = newGuest();
    Object.assign(instance, { taskState: 'image_uploading', taskOwner: 'snapshot-other/run' });
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'busy' });
    assert.equal(await failureType(handle), 'InstanceBusy');
    assert.equal(cloud.instances.get(id)?.taskState, 'image_uploading');
    assert.equal(cloud.instances.get(id)?.taskOwner, 'snapshot-other/run');
    assert.ok(!cloud.calls.includes('createImageRecord'));
    assert.deepEqual(cloud.faults, []);
    assert.equal((await handle.query<SnapshotProgress>('progress')).phase, 'refused');
  });

  it('refuses mode live of a shut-off instance before it takes the task state; auto copies it cold', async () => {
    const { cloud, id } = newGuest();
    cloud.instances.get(id)!.power = 'shutdown';
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'live-off', mode: 'live' });
    assert.equal(await failureType(handle), 'InvalidInput');
    assert.ok(!cloud.calls.includes('setTaskState') && !cloud.calls.includes('createImageRecord'), cloud.calls.join(', '));
    assert.equal(cloud.instances.get(id)?.taskState, null);
    assert.deepEqual(cloud.faults, []);
    assert.equal((await handle.query<SnapshotProgress>('progress')).phase, 'refused');
    const auto = await (await t.startSnapshot(cloud, { instance: id, imageName: 'auto-off', mode: 'auto' })).result();
    assert.equal(auto.mode, 'cold');
    assert.match(auto.modeReason ?? '', /shutdown/);
  });

  it('the host step fails with the guest still paused (it could not resume): the compensation resumes it', async () => {
    const { cloud, id } = newGuest();
    cloud.hooks.coldCopyDisk = async (call) => {
      const [input] = call.args as [{ owner: string }];
      cloud.events.push({ instanceId: id, event: 'pause', requestId: input.owner, details: {} });
      cloud.instances.get(id)!.power = 'paused';
      throw ApplicationFailure.create({ type: 'HypervisorError', message: 'the guest could not be resumed after the copy', nonRetryable: true });
    };
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'resume-failed' });
    assert.equal(await failureType(handle), 'HypervisorError');
    assertUndone(cloud, id, await imageIdOf(handle), 'HypervisorError');
    assert.equal(cloud.calls.filter((c) => c === 'resumeInstance').length, 1, "the compensation's resume");
    assert.deepEqual(cloud.eventsOf(id), ['start', 'pause', 'resume', 'error']);
  });

  it('pause budget blown in the host step: PauseBudgetExceeded, and no second resume after the one the step reports', async () => {
    const { cloud, id } = newGuest();
    cloud.settings.pauseBudgetMs = 300;
    cloud.duringColdCopy = () => new Promise(() => undefined); // a copy slower than the budget
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'budget' });
    assert.equal(await failureType(handle), 'PauseBudgetExceeded');
    assertUndone(cloud, id, await imageIdOf(handle), 'PauseBudgetExceeded');
    assert.deepEqual(cloud.eventsOf(id), ['start', 'pause', 'resume', 'error']);
    assert.ok(!cloud.calls.includes('resumeInstance'), 'the host step said it resumed the guest: no second resume');
  });

  it('pause budget blown and the host step hangs: the workflow cancels it and resumes the guest itself', async () => {
    const { cloud, id } = newGuest();
    cloud.settings.pauseBudgetMs = 300;
    cloud.hooks.coldCopyDisk = async (call) => {
      const [input] = call.args as [{ owner: string }];
      cloud.events.push({ instanceId: id, event: 'pause', requestId: input.owner, details: {} });
      cloud.instances.get(id)!.power = 'paused';
      return untilCancelled(); // keeps no budget of its own
    };
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'budget-hang' });
    assert.equal(await failureType(handle), 'PauseBudgetExceeded');
    assertUndone(cloud, id, await imageIdOf(handle), 'PauseBudgetExceeded');
    assert.deepEqual(cloud.eventsOf(id), ['start', 'pause', 'resume', 'error']);
  });

  it('resume finds the guest gone: InstanceNotFound, and the rest is undone', async () => {
    const { cloud, id } = newGuest();
    cloud.duringColdCopy = async () => {
      cloud.instances.get(id)!.power = 'gone'; // destroyed during the copy
    };
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'gone' });
    assert.equal(await failureType(handle), 'InstanceNotFound');
    assertUndone(cloud, id, await imageIdOf(handle), 'InstanceNotFound', 'gone');
    assert.ok(!cloud.calls.includes('resumeInstance'), 'compensation does not resume again');
  });

  it('cancelled while the guest is paused in the copy: the host step resumes it before it ends', async () => {
    const { cloud, id } = newGuest();
    let inCopy: (workflowId: string) => void = () => undefined;
    const reached = new Promise<string>((resolve) => (inCopy = resolve));
    cloud.hooks.coldCopyDisk = async (call) => {
      inCopy(call.workflowId);
      return call.run();
    };
    cloud.duringColdCopy = () => untilCancelled();
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'cancel-paused' });
    await t.client.workflow.getHandle(await reached).cancel();
    assert.ok((await failureOf(handle)) instanceof CancelledFailure);
    assertUndone(cloud, id, await imageIdOf(handle), 'Cancelled');
    const events = cloud.eventsOf(id);
    assert.deepEqual(events.slice(0, 3), ['start', 'pause', 'resume'], 'resumed by the host step as it ended');
  });

  it('upload fails after the copy: the guest already runs, the image is deleted, the failure keeps its type', async () => {
    const { cloud, id } = newGuest();
    cloud.hooks.uploadImage = async () => {
      throw ApplicationFailure.create({
        type: 'ImageServiceError',
        message: 'Glance answered 413: Image exceeds the storage quota',
        nonRetryable: true,
      });
    };
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'upload' });
    const cause = await failureOf(handle);
    assert.ok(cause instanceof ApplicationFailure);
    assert.equal(cause.type, 'ImageServiceError');
    assert.match(cause.message, /413/);
    assertUndone(cloud, id, await imageIdOf(handle), 'ImageServiceError');
    assert.deepEqual(cloud.eventsOf(id), ['start', 'pause', 'resume', 'error']);
  });

  it('a compensation step that fails is logged, and the steps after it still run', async () => {
    const { cloud, id } = newGuest();
    cloud.hooks.uploadImage = async () => {
      throw ApplicationFailure.create({ type: 'ImageServiceError', message: 'Glance refused the data', nonRetryable: true });
    };
    cloud.hooks.deleteImageRecord = async () => {
      throw ApplicationFailure.create({ type: 'ImageServiceError', message: 'Glance refused the delete', nonRetryable: true });
    };
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'comp-fails' });
    assert.equal(await failureType(handle), 'ImageServiceError', 'the snapshot fails with the cause, not the compensation');
    const imageId = await imageIdOf(handle);
    // The image is left for the reconciler's sweep; everything else is undone.
    assert.equal(cloud.images.get(imageId)?.status, 'queued');
    const instance = cloud.instances.get(id)!;
    assert.deepEqual([instance.power, instance.taskState], ['running', null]);
    assert.deepEqual([...cloud.tempDirs], []);
    assert.deepEqual(
      cloud.faults.map((f) => f.code),
      ['ImageServiceError'],
    );
    const after = cloud.calls.slice(cloud.calls.indexOf('deleteImageRecord'));
    assert.deepEqual(after, ['deleteImageRecord', 'releaseTaskState', 'recordInstanceFault', 'recordInstanceEvent']);
  });

  it('a retried upload finds its image stuck saving: a new record takes its place, the stuck one goes, and the run names the new image', async () => {
    const { cloud, id } = newGuest();
    const tried: string[] = [];
    cloud.hooks.uploadImage = async (call) => {
      const [{ imageId }] = call.args as [{ imageId: string }];
      // The first image is left saving by an attempt that was cut off.
      if (!tried.length) cloud.images.get(imageId)!.status = 'saving';
      tried.push(imageId);
      return call.run();
    };
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'stuck' });
    const result: SnapshotResult = await handle.result();
    const [stuck] = tried;
    assert.equal(tried.length, 2);
    assert.notEqual(result.imageId, stuck);
    assert.equal(tried[1], result.imageId, 'the upload went on into the new record');
    assert.equal(cloud.images.get(stuck!), undefined, 'the stuck image is deleted');
    assert.equal(cloud.images.get(result.imageId)?.status, 'active');
    assert.deepEqual([...cloud.images.keys()], [result.imageId]);
    assert.equal(cloud.calls.filter((c) => c === 'createImageRecord').length, 2);
    // The search attribute, the memo and the progress follow the new image; the temp dir (named by the first) is gone.
    const described = await handle.describe();
    assert.equal(described.typedSearchAttributes.get(IMAGE_ID), result.imageId);
    assert.equal(described.memo?.imageId, result.imageId);
    assert.deepEqual(described.memo?.replacedImageIds, [stuck]);
    assert.equal(await imageIdOf(handle), result.imageId);
    assert.deepEqual([...cloud.tempDirs], []);
    assert.deepEqual(cloud.faults, []);
    assert.deepEqual(cloud.eventsOf(id), ['start', 'pause', 'resume', 'finish']);
  });

  it('a replaced image whose upload then fails: the compensation deletes the new record too', async () => {
    const { cloud, id } = newGuest();
    const tried: string[] = [];
    cloud.hooks.uploadImage = async (call) => {
      const [{ imageId }] = call.args as [{ imageId: string }];
      tried.push(imageId);
      if (tried.length === 1) {
        cloud.images.get(imageId)!.status = 'saving';
        return call.run();
      }
      throw ApplicationFailure.create({ type: 'ImageServiceError', message: 'Glance answered 413', nonRetryable: true });
    };
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'stuck-then-413' });
    assert.equal(await failureType(handle), 'ImageServiceError');
    assert.equal(tried.length, 2);
    assert.equal(await imageIdOf(handle), tried[1]);
    assertUndone(cloud, id, tried[1]!, 'ImageServiceError');
    assert.deepEqual([...cloud.images.keys()], [], 'neither image is left');
  });

  it('streamed: a failed upload is retried from the same point in time, the job kept until the image is verified', async () => {
    const { cloud, id } = newGuest();
    cloud.liveSupported = true;
    cloud.settings.defaultMode = 'auto';
    const jobs: string[][] = [];
    cloud.hooks.uploadLiveExport = async (call) => {
      jobs.push([...cloud.liveJobs]);
      if (jobs.length === 1) throw ApplicationFailure.create({ type: 'ImageServiceUnavailable', message: 'Glance PUT failed: ECONNRESET' });
      return call.run();
    };
    const result: SnapshotResult = await (await t.startSnapshot(cloud, { instance: id, imageName: 'stream-retry' })).result();
    assert.equal(result.transfer, 'streamed');
    assert.equal(cloud.calls.filter((c) => c === 'exportLiveDisk').length, 1, 'one job, one point in time');
    assert.equal(jobs.length, 2);
    assert.deepEqual(jobs[1], jobs[0], 'the retry read the job the first attempt read');
    assert.deepEqual([...cloud.liveJobs, ...cloud.tempDirs], [], 'ended once the image was verified');
  });

  it('streamed, image stuck saving: the new record is filled from the same job', async () => {
    const { cloud, id } = newGuest();
    cloud.liveSupported = true;
    cloud.settings.defaultMode = 'auto';
    const sockets: string[] = [];
    cloud.hooks.uploadLiveExport = async (call) => {
      const [{ imageId, export: ref }] = call.args as [{ imageId: string; export: { socket: string } }];
      if (!sockets.length) cloud.images.get(imageId)!.status = 'saving';
      sockets.push(ref.socket);
      return call.run();
    };
    const result: SnapshotResult = await (await t.startSnapshot(cloud, { instance: id, imageName: 'stream-stuck' })).result();
    assert.equal(sockets.length, 2);
    assert.equal(sockets[1], sockets[0]);
    assert.equal(cloud.images.get(result.imageId)?.status, 'active');
    assert.deepEqual([...cloud.liveJobs, ...cloud.tempDirs], []);
  });

  it('streamed, the job gone before the upload (CopyLost): compensation undoes the rest', async () => {
    const { cloud, id } = newGuest();
    cloud.liveSupported = true;
    cloud.settings.defaultMode = 'auto';
    cloud.hooks.exportLiveDisk = async (call) => {
      const source = await call.run();
      cloud.liveJobs.clear(); // libvirtd restarted, say
      return source;
    };
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'stream-lost' });
    assert.equal(await failureType(handle), 'CopyLost');
    assertUndone(cloud, id, await imageIdOf(handle), 'CopyLost');
  });

  it('streamed, the overlay full mid-upload (NoSpace): not retried, compensation ends the job and undoes the rest', async () => {
    const { cloud, id } = newGuest();
    cloud.liveSupported = true;
    cloud.settings.defaultMode = 'auto';
    cloud.hooks.uploadLiveExport = async () => {
      throw ApplicationFailure.create({ type: 'NoSpace', message: 'the guest overwrote 48 MiB of its disk during the upload', nonRetryable: true });
    };
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'stream-full' });
    assert.equal(await failureType(handle), 'NoSpace');
    assert.equal(cloud.calls.filter((c) => c === 'uploadLiveExport').length, 1);
    assert.ok(cloud.calls.includes('endLiveExport'));
    assertUndone(cloud, id, await imageIdOf(handle), 'NoSpace');
  });

  it('live where the export cannot be streamed: copied and uploaded from the copy, and the result says why', async () => {
    const { cloud, id } = newGuest();
    cloud.liveSupported = true;
    cloud.settings.defaultMode = 'auto';
    cloud.hooks.exportLiveDisk = async (call) => {
      const [input] = call.args as [{ imageId: string; diskFormat: 'qcow2' | 'raw' }];
      cloud.tempDirs.add(input.imageId);
      return {
        transfer: 'copied',
        transferNote: 'copied: VMSNAP_LIVE_TRANSFER is copy',
        path: `/fake/${input.imageId}/disk`,
        diskFormat: input.diskFormat,
        size: 1024,
        virtualSize: 4096,
        bootId: 'fake-boot',
        consistency: 'crash-consistent',
        guestPauseMs: 0,
      };
    };
    const result: SnapshotResult = await (await t.startSnapshot(cloud, { instance: id, imageName: 'copied' })).result();
    assert.deepEqual(
      [result.mode, result.transfer, result.transferNote, result.hostScratchBytes],
      ['live', 'copied', 'copied: VMSNAP_LIVE_TRANSFER is copy', 1024],
    );
    const host = cloud.calls.filter((c) => ['exportLiveDisk', 'uploadLiveExport', 'endLiveExport', 'uploadImage', 'removeSnapshotFiles'].includes(c));
    assert.deepEqual(host, ['exportLiveDisk', 'uploadImage', 'removeSnapshotFiles']);
    assert.deepEqual([...cloud.liveJobs, ...cloud.tempDirs], []);
  });

  it('an image stuck each time: the snapshot gives up with ImageStuck after two new records, and none is left', async () => {
    const { cloud, id } = newGuest();
    const tried: string[] = [];
    cloud.hooks.uploadImage = async (call) => {
      const [{ imageId }] = call.args as [{ imageId: string }];
      tried.push(imageId);
      cloud.images.get(imageId)!.status = 'saving';
      return call.run();
    };
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'stuck-always' });
    assert.equal(await failureType(handle), 'ImageStuck');
    assert.equal(new Set(tried).size, 3);
    assertUndone(cloud, id, tried[2]!, 'ImageStuck');
    assert.deepEqual([...cloud.images.keys()], []);
  });

  it('Glance gone for good: the compensation tries the delete once and leaves the image to the sweep; the failure names the upload', async () => {
    const { cloud, id } = newGuest();
    const gone = (what: string) =>
      ApplicationFailure.create({ type: 'ImageServiceUnavailable', message: `Glance ${what} failed: ECONNREFUSED. Is Glance running and reachable?` });
    cloud.hooks.uploadImage = async () => {
      throw gone('PUT /v2/images/x/file');
    };
    cloud.hooks.deleteImageRecord = async () => {
      throw gone('GET /v2/images/x');
    };
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'glance-gone' });
    const cause = await failureOf(handle);
    assert.equal(cloud.calls.filter((c) => c === 'uploadImage').length, 2, 'the upload used its retries');
    assert.equal(cloud.calls.filter((c) => c === 'deleteImageRecord').length, 1, 'the delete is tried once');
    assert.ok(cause instanceof ApplicationFailure);
    assert.equal(cause.type, 'ImageServiceUnavailable');
    assert.match(cause.message, /^upload to Glance gave up after 2 attempts: Glance PUT /);
    assert.doesNotMatch(cause.message, /can be retried/);
    // The image stays for the reconciler's sweep (its run is closed); everything else is let go of.
    const imageId = await imageIdOf(handle);
    assert.equal(cloud.images.get(imageId)?.status, 'queued');
    assert.equal(cloud.instances.get(id)?.taskState, null);
    assert.deepEqual([...cloud.tempDirs], []);
    assert.equal(cloud.slotHolders.size, 0);
    assert.deepEqual(
      cloud.faults.map((f) => f.code),
      ['ImageServiceUnavailable'],
    );
  });

  // Cancelled while each step runs, after the step took effect: a step counts from the moment it
  // is scheduled, so its effect is undone although its result never arrived.
  // `undo`: the compensation steps after it, in order: the guest first, then the rest in reverse.
  const cancelCases: { phase: SnapshotPhase; step: string; undo: string[]; live?: boolean; keepsImage?: boolean }[] = [
    { phase: 'creating-image', step: 'createImageRecord', undo: ['deleteImageRecord', 'releaseTaskState'] },
    { phase: 'converting', step: 'coldCopyDisk', undo: ['resumeInstance', 'removeSnapshotFiles', 'deleteImageRecord', 'releaseTaskState'] },
    {
      phase: 'copying',
      step: 'exportLiveDisk',
      undo: ['thawInstance', 'endLiveExport', 'deleteImageRecord', 'releaseTaskState'],
      live: true,
    },
    { phase: 'uploading', step: 'uploadImage', undo: ['removeSnapshotFiles', 'deleteImageRecord', 'releaseTaskState'] },
    { phase: 'uploading', step: 'uploadLiveExport', undo: ['endLiveExport', 'deleteImageRecord', 'releaseTaskState'], live: true },
    // Verified before the cancel: the image is complete and kept, the rest is cleaned up.
    { phase: 'finishing', step: 'removeSnapshotFiles', undo: ['removeSnapshotFiles', 'releaseTaskState'], keepsImage: true },
  ];
  const UNDO_STEPS = ['thawInstance', 'resumeInstance', 'removeSnapshotFiles', 'endLiveExport', 'deleteImageRecord', 'releaseTaskState'];
  for (const c of cancelCases) {
    it(`cancelled while ${c.phase} (${c.step}): compensation undoes the step`, async () => {
      const { cloud, id } = newGuest();
      if (c.live) {
        cloud.liveSupported = true;
        cloud.settings.defaultMode = 'auto';
      }
      cancelDuringStep(cloud, c.step);
      const handle = await t.startSnapshot(cloud, { instance: id, imageName: `cancel-${c.phase}` });
      assert.ok((await failureOf(handle)) instanceof CancelledFailure);
      const imageId = await imageIdOf(handle);
      assert.equal((await handle.query<SnapshotProgress>('progress')).phase, 'cancelled');
      if (c.keepsImage) {
        assert.equal(cloud.images.get(imageId)?.status, 'active');
        cloud.images.delete(imageId);
      }
      assertUndone(cloud, id, imageId, 'Cancelled');
      // First runs only: steps are at-least-once (a workflow task that fails, for instance when the
      // cancelled step's end arrives as the workflow completes, reruns its local activities).
      const undone = new Set(cloud.calls.slice(cloud.calls.indexOf(c.step) + 1).filter((name) => UNDO_STEPS.includes(name)));
      assert.deepEqual([...undone], c.undo);
    });
  }

  it('cancelled while waiting for a host slot: the slot is let go and nothing is left', async () => {
    const { cloud, id } = newGuest();
    cloud.hooks.holdSnapshotSlot = () => untilCancelled(); // the host is full
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'slot' });
    await t.waitForPhase(handle, 'waiting-for-host');
    await handle.cancel();
    assert.ok((await failureOf(handle)) instanceof CancelledFailure);
    assertUndone(cloud, id, await imageIdOf(handle), 'Cancelled');
    assert.ok(!cloud.calls.includes('inspectInstance'), 'no step past the slot ran');
    assert.equal((await handle.describe()).raw.pendingActivities?.length ?? 0, 0, 'the slot holder ended with the snapshot');
  });
  it('all disks: one pause copies every disk, one image each, the data image hidden, the manifest sealed on the root image last', async () => {
    const { cloud, id, instance } = newGuest();
    instance.dataDisks = ['vdb', 'vdc'];
    const order: string[] = [];
    const keep: unknown[] = [];
    cloud.hooks.uploadImage = async (call) => {
      const out = await call.run();
      const input = call.args[0] as { dev?: string; keepImageId?: boolean };
      order.push(`upload ${input.dev}`);
      keep.push(input.keepImageId);
      return out;
    };
    cloud.hooks.sealDiskSet = async (call) => {
      order.push('seal');
      return call.run();
    };
    const result: SnapshotResult = await (await t.startSnapshot(cloud, { instance: id, imageName: 'set', disks: 'all' })).result();
    assert.deepEqual(
      result.disks?.map((d) => [d.dev, d.role]),
      [
        ['vda', 'root'],
        ['vdb', 'data'],
        ['vdc', 'data'],
      ],
    );
    assert.ok(result.diskSetId);
    // One pause for all three copies: the copy step ran once.
    assert.deepEqual(cloud.eventsOf(id), ['start', 'pause', 'resume', 'finish']);
    assert.equal(cloud.calls.filter((c) => c === 'coldCopyDisk').length, 1);
    assert.equal(order.at(-1), 'seal', 'the manifest is written once every image is verified');
    // The data images name the root image: an upload never replaces any image of a set with a new record.
    assert.ok(keep.length === 3 && keep.every(Boolean), `every upload keeps its image id: ${JSON.stringify(keep)}`);
    assert.deepEqual(order.slice(0, 3).sort(), ['upload vda', 'upload vdb', 'upload vdc']);
    const root = cloud.images.get(result.imageId)!;
    assert.equal(root.status, 'active');
    assert.deepEqual(
      root.manifest?.disks.map((d) => [d.device_name, d.boot_index, d.image_id]),
      result.disks?.map((d) => [d.dev, d.role === 'root' ? 0 : null, d.imageId]),
    );
    for (const d of result.disks!.slice(1)) {
      const image = cloud.images.get(d.imageId)!;
      assert.equal(image.status, 'active');
      assert.deepEqual(image.diskSet, { setId: result.diskSetId, role: 'data', dev: d.dev, rootImageId: result.imageId });
    }
  });

  it("all disks, a data disk's upload fails for good: every image of the set is deleted, the guest runs, task state None", async () => {
    const { cloud, id, instance } = newGuest();
    instance.dataDisks = ['vdb'];
    cloud.hooks.uploadImage = async (call) => {
      if ((call.args[0] as { dev?: string }).dev !== 'vdb') return call.run();
      throw ApplicationFailure.create({ type: 'ImageServiceError', message: 'Glance answered 500 for good', nonRetryable: true });
    };
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'set', disks: 'all' });
    assert.equal(await failureType(handle), 'ImageServiceError');
    assertUndone(cloud, id, await imageIdOf(handle), 'ImageServiceError');
    assert.equal(cloud.images.size, 0, 'no image of the set is left');
    assert.ok(!cloud.calls.includes('sealDiskSet'));
  });

  it('a disk the instance has not: refused before the task state is taken, nothing made', async () => {
    const { cloud, id, instance } = newGuest();
    instance.dataDisks = ['vdb'];
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'set', disks: ['vda', 'vdz'] });
    const cause = await failureOf(handle);
    assert.ok(cause instanceof ApplicationFailure);
    assert.equal(cause.type, 'InvalidInput');
    assert.match(cause.message, /no disk vdz; its disks are vda, vdb/);
    assert.equal(cloud.images.size, 0);
    assert.equal(instance.taskState, null);
    assert.ok(!cloud.calls.includes('setTaskState') && !cloud.calls.includes('createImageRecord'));
  });
  it('all disks, live: one backup job exports every disk, each image streamed from it, the job ended once the set is sealed', async () => {
    const { cloud, id, instance } = newGuest();
    instance.dataDisks = ['vdb'];
    cloud.liveSupported = true;
    const streamed: string[] = [];
    cloud.hooks.uploadLiveExport = async (call) => {
      const input = call.args[0] as { dev?: string; export: { exportName: string } };
      streamed.push(`${input.dev}:${input.export.exportName}`);
      return call.run();
    };
    const result: SnapshotResult = await (await t.startSnapshot(cloud, { instance: id, imageName: 'set', disks: 'all', mode: 'live' })).result();
    assert.equal(result.mode, 'live');
    assert.deepEqual(streamed.sort(), ['vda:vda', 'vdb:vdb']);
    assert.equal(cloud.calls.filter((c) => c === 'exportLiveDisk').length, 1, 'one job, one point in time');
    const host = cloud.calls.filter((c) => ['exportLiveDisk', 'sealDiskSet', 'endLiveExport'].includes(c));
    assert.deepEqual(host, ['exportLiveDisk', 'sealDiskSet', 'endLiveExport']);
    assert.deepEqual([...cloud.liveJobs, ...cloud.tempDirs], []);
    assert.equal(cloud.images.get(result.disks![1]!.imageId)?.status, 'active');
  });

  it('all disks, live asked for where the disks cannot be streamed (VMSNAP_LIVE_TRANSFER=copy): refused before anything changes', async () => {
    const { cloud, id, instance } = newGuest();
    instance.dataDisks = ['vdb'];
    cloud.liveSupported = true;
    cloud.settings.liveTransfer = 'copy';
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'set', disks: 'all', mode: 'live' });
    const cause = await failureOf(handle);
    assert.ok(cause instanceof ApplicationFailure);
    assert.equal(cause.type, 'InvalidInput');
    assert.match(cause.message, /VMSNAP_LIVE_TRANSFER is copy/);
    assert.ok(!cloud.calls.includes('setTaskState') && !cloud.calls.includes('createImageRecord'), 'nothing was taken or made');
    assert.equal(instance.taskState, null);
  });
});
