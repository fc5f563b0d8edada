// Terminate, which runs no compensation, followed by the reconciler, on a local Temporal with fake
// activities (see fake-cloud.ts). A file of its own, so that its dev server holds none of the
// saga tests' workflows (they share the fake host and its slots).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { ApplicationFailure } from '@temporalio/common';
import type { SnapshotProgress } from '../../src/shared/types.js';
import { startFastTemporal, untilCancelled, type FakeCloud, type FastTemporal } from './fake-cloud.js';

let t: FastTemporal;

/** A cloud of its own (tests run side by side) with one guest in it. */
function newGuest() {
  const cloud = t.newCloud();
  const id = randomUUID();
  return { cloud, id, instance: cloud.addInstance(id) };
}

// Bounded, so a dev server or worker that hangs fails the run instead of stalling it.
before(
  async () => {
    t = await startFastTemporal('reconcile');
  },
  { timeout: 180_000 },
);
after(
  async () => {
    await t?.close();
  },
  { timeout: 60_000 },
);

// Terminate runs no compensation; the reconciler undoes what the terminated snapshot left. One at
// a time: both guests sit on the one fake host, and a terminated run's slot is held until its
// holder sees the run gone.
describe('reconcile after terminate, fast (local Temporal, fake activities)', { timeout: 120_000 }, () => {
  /** A snapshot terminated while the guest is paused for its copy, and its host step lost with its worker (no resume). */
  async function terminatedWhilePaused(cloud: FakeCloud, id: string): Promise<string> {
    // The phase starts before the host step runs: terminate only once the step has paused the guest.
    let paused!: () => void;
    const guestPaused = new Promise<void>((resolve) => (paused = resolve));
    cloud.hooks.coldCopyDisk = async (call) => {
      const [input] = call.args as [{ owner: string; imageId: string }];
      cloud.events.push({ instanceId: id, event: 'pause', requestId: input.owner, details: {} });
      cloud.instances.get(id)!.power = 'paused';
      cloud.tempDirs.add(input.imageId);
      paused();
      return untilCancelled(); // the copy runs until the workflow is gone
    };
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'terminated' });
    await t.waitForPhase(handle, 'converting');
    await guestPaused;
    const { imageId } = await handle.query<SnapshotProgress>('progress');
    await handle.terminate('test: a workflow lost mid-snapshot');
    delete cloud.hooks.coldCopyDisk;
    return imageId;
  }

  it('a snapshot terminated while the guest is paused is undone by the next reconcile', async () => {
    const { cloud, id, instance } = newGuest();
    const imageId = await terminatedWhilePaused(cloud, id);

    // Terminate ran no compensation: the guest is paused, the task state held, the image queued.
    assert.deepEqual([instance.power, instance.taskState], ['paused', 'image_pending_upload']);
    assert.equal(cloud.images.get(imageId)?.status, 'queued');
    assert.ok(cloud.tempDirs.has(imageId));
    assert.equal(cloud.faults.length, 0);

    const report = await t.reconcile(cloud);
    assert.deepEqual(report.resumed, [id]);
    assert.deepEqual(report.releasedTasks, [id]);
    assert.deepEqual(report.deletedImages, [imageId]);
    assert.deepEqual(report.errors, []);
    assert.deepEqual([instance.power, instance.taskState], ['running', null]);
    assert.equal(cloud.images.get(imageId), undefined);
    assert.deepEqual([...cloud.tempDirs], []);
    assert.deepEqual(
      cloud.faults.map((f) => f.code),
      ['SnapshotAbandoned'],
    );
    assert.deepEqual(cloud.eventsOf(id), ['start', 'pause', 'resume', 'error']);

    // A second round finds nothing left to do.
    const again = await t.reconcile(cloud);
    assert.deepEqual([again.resumed, again.releasedTasks, again.deletedImages, again.errors], [[], [], [], []]);
  });

  it('a streamed live snapshot terminated mid-upload: the next reconcile ends its backup job', async () => {
    const { cloud, id, instance } = newGuest();
    cloud.liveSupported = true;
    cloud.settings.defaultMode = 'auto';
    let streaming!: () => void;
    const underWay = new Promise<void>((resolve) => (streaming = resolve));
    cloud.hooks.uploadLiveExport = async () => {
      streaming();
      return untilCancelled(); // the stream runs until the workflow is gone
    };
    const handle = await t.startSnapshot(cloud, { instance: id, imageName: 'terminated-stream' });
    await underWay;
    const { imageId } = await handle.query<SnapshotProgress>('progress');
    await handle.terminate('test: a workflow lost mid-stream');
    delete cloud.hooks.uploadLiveExport;
    assert.deepEqual([...cloud.liveJobs], [imageId], 'terminate ran no compensation: the job runs on');
    assert.equal(instance.taskState, 'image_uploading');

    const report = await t.reconcile(cloud);
    assert.deepEqual(report.abortedLiveCopies, [id]);
    assert.deepEqual(report.releasedTasks, [id]);
    assert.deepEqual(report.deletedImages, [imageId]);
    assert.deepEqual(report.errors, []);
    assert.deepEqual([...cloud.liveJobs], []);
    assert.deepEqual([instance.power, instance.taskState], ['running', null]);
    const again = await t.reconcile(cloud);
    assert.deepEqual([again.abortedLiveCopies, again.releasedTasks, again.errors], [[], [], []]);
  });

  it('a resume the host cannot do keeps the task state for the next round, and the round completes', async () => {
    const { cloud, id, instance } = newGuest();
    await terminatedWhilePaused(cloud, id);
    cloud.hooks.resumeInstance = async () => {
      // Not retryable, so the round does not wait out the host step's 2-minute budget.
      throw ApplicationFailure.create({ type: 'HypervisorError', message: 'libvirt: host unreachable', nonRetryable: true });
    };
    const report = await t.reconcile(cloud);
    assert.deepEqual(report.resumed, []);
    assert.deepEqual(report.releasedTasks, [], 'a guest still paused keeps its task state');
    assert.equal(report.errors.length, 1);
    assert.match(report.errors[0] ?? '', new RegExp(`resume ${id}`));
    assert.deepEqual([instance.power, instance.taskState], ['paused', 'image_pending_upload']);

    delete cloud.hooks.resumeInstance;
    const next = await t.reconcile(cloud);
    assert.deepEqual([next.resumed, next.releasedTasks, next.errors], [[id], [id], []]);
    assert.deepEqual([instance.power, instance.taskState], ['running', null]);
  });
});
