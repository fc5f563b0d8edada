// restoreInstance and rollbackRestore, one test per branch, on a local Temporal with fake
// activities (see fake-cloud.ts): what the restore saga leaves behind in each case. The guest is
// in its prior power state, the task state None, no new file beside the disk, and the disk is the
// old one unless the restore completed. The real steps are tested in test/integration/restore*.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { RestoreProgress, RestoreResult } from '../../src/shared/types.js';
import { startFastTemporal, untilCancelled, type FakeCloud, type FastTemporal } from './fake-cloud.js';

let t: FastTemporal;

/** A cloud of its own with one guest and an active snapshot of it. */
function newGuest(power: 'running' | 'paused' | 'shutdown' = 'running') {
  const cloud = t.newCloud();
  const id = randomUUID();
  const instance = cloud.addInstance(id, power);
  const imageId = randomUUID();
  cloud.images.set(imageId, { status: 'active', instanceId: id, owner: 'snapshot-earlier/run' });
  return { cloud, id, instance, imageId };
}

async function failureType(handle: WorkflowHandle): Promise<string | undefined> {
  const err = await handle.result().then(
    () => assert.fail('the run should have failed'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof WorkflowFailedError && err.cause instanceof ApplicationFailure, String(err));
  return err.cause.type ?? undefined;
}

/** The instance as it was: its power state, its own disk, no task, no file left beside it. */
function assertUntouched(cloud: FakeCloud, id: string, power = 'running') {
  const instance = cloud.instances.get(id)!;
  assert.equal(instance.power, power, 'the guest is in its prior power state');
  assert.equal(instance.disk, 'original', 'the disk is the one it had');
  assert.equal(instance.taskState, null, 'task state None');
  assert.deepEqual([...cloud.restoreFiles], [], 'no file left beside the disk');
}

before(
  async () => {
    t = await startFastTemporal('restore');
  },
  { timeout: 180_000 },
);
after(
  async () => {
    await t?.close();
  },
  { timeout: 60_000 },
);

describe('restoreInstance and rollbackRestore, fast (local Temporal, fake activities)', { timeout: 120_000, concurrency: true }, () => {
  it('restores in place: the image on the disk, the previous one kept, the guest started as it ran', async () => {
    const { cloud, id, instance, imageId } = newGuest('paused');
    const handle = await t.startRestore(cloud, { instance: id, imageId });
    const result: RestoreResult = await handle.result();
    assert.equal(instance.disk, imageId);
    assert.equal(instance.preRestore?.disk, 'original');
    assert.equal(instance.power, 'paused', 'started in its prior power state');
    assert.equal(instance.taskState, null);
    assert.equal(result.priorPowerState, 'paused');
    assert.deepEqual(cloud.eventsOf(id), ['start', 'started', 'finish']);
    const progress = await handle.query<RestoreProgress>('progress');
    assert.equal(progress.phase, 'completed');
    assert.ok(
      ['checking-image', 'downloading', 'stopping', 'finishing'].every((p) => p in progress.phaseDurationsMs),
      JSON.stringify(progress),
    );
  });

  it("refuses an image that is not this instance's before it takes the task state: nothing changes", async () => {
    const { cloud, id } = newGuest();
    const other = randomUUID();
    cloud.images.set(other, { status: 'active', instanceId: randomUUID(), owner: 'x' });
    const handle = await t.startRestore(cloud, { instance: id, imageId: other });
    assert.equal(await failureType(handle), 'InvalidInput');
    assertUntouched(cloud, id);
    assert.ok(!cloud.calls.includes('setTaskState'), 'the task state was never asked for');
    assert.deepEqual(cloud.faults, []);
    assert.equal((await handle.query<RestoreProgress>('progress')).phase, 'refused');
  });

  it('refuses a busy instance and changes nothing', async () => {
    const { cloud, id, instance, imageId } = newGuest();
    Object.assign(instance, { taskState: 'image_uploading', taskOwner: 'snapshot-other/run' });
    const handle = await t.startRestore(cloud, { instance: id, imageId });
    assert.equal(await failureType(handle), 'InstanceBusy');
    assert.equal(instance.taskState, 'image_uploading');
    assert.ok(!cloud.calls.includes('prepareRestoreImage'));
    assert.deepEqual(cloud.faults, []);
    // It never took the instance: its phase says so, and status passes over it.
    assert.equal((await handle.query<RestoreProgress>('progress')).phase, 'refused');
  });

  it('refuses a crashed guest after taking the task state: the task state goes back, a fault says why', async () => {
    const { cloud, id, instance, imageId } = newGuest();
    instance.power = 'crashed';
    const handle = await t.startRestore(cloud, { instance: id, imageId });
    assert.equal(await failureType(handle), 'InstanceInvalidState');
    assert.equal(instance.taskState, null);
    assert.deepEqual(
      cloud.faults.map((f) => f.code),
      ['InstanceInvalidState'],
    );
    assert.ok(!cloud.calls.includes('prepareRestoreImage'));
    // It had taken the instance (accepted) before it failed: a failure, not a refusal.
    assert.equal((await handle.query<RestoreProgress>('progress')).phase, 'failed');
  });

  it('a failure after the swap: the previous disk goes back and the guest runs again', async () => {
    const { cloud, id, instance, imageId } = newGuest();
    cloud.hooks.stopSwapStart = async (call) => {
      await call.run(); // swapped and started
      instance.power = 'shutdown';
      throw ApplicationFailure.create({ type: 'InstanceInvalidState', message: 'it crashed on the new disk', nonRetryable: true });
    };
    const handle = await t.startRestore(cloud, { instance: id, imageId });
    assert.equal(await failureType(handle), 'InstanceInvalidState');
    assertUntouched(cloud, id);
    assert.ok(cloud.eventsOf(id).includes('swap-back'));
    assert.deepEqual(
      cloud.faults.map((f) => f.code),
      ['InstanceInvalidState'],
    );
    assert.equal(cloud.faults[0]?.details.action, 'rebuild');
  });

  it('cancelled while downloading: the download goes, the guest was never touched', async () => {
    const { cloud, id, imageId } = newGuest();
    cloud.hooks.prepareRestoreImage = async (call) => {
      await call.run(); // the file exists now
      await t.client.workflow.getHandle(call.workflowId).cancel();
      return untilCancelled();
    };
    const handle = await t.startRestore(cloud, { instance: id, imageId });
    const err = await handle.result().then(
      () => assert.fail('cancelled'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof WorkflowFailedError);
    assertUntouched(cloud, id);
    assert.deepEqual(
      cloud.faults.map((f) => f.code),
      ['Cancelled'],
    );
    assert.equal((await handle.query<RestoreProgress>('progress')).phase, 'cancelled');
  });

  it('as a new instance: the original untouched, its task state never taken; a failure removes the new one', async () => {
    const { cloud, id, imageId } = newGuest();
    const made = await (await t.startRestore(cloud, { instance: id, imageId, asNew: 'copy-ok' })).result();
    assert.ok(made.newInstance && cloud.instances.get(made.newInstance.id)?.power === 'running');
    assertUntouched(cloud, id);

    cloud.hooks.defineNewInstance = async (call) => {
      await call.run();
      throw ApplicationFailure.create({ type: 'HypervisorError', message: 'it would not start', nonRetryable: true });
    };
    const failed = await t.startRestore(cloud, { instance: id, imageId, asNew: 'copy-bad' });
    assert.equal(await failureType(failed), 'HypervisorError');
    assert.ok(![...cloud.instances.values()].some((i) => i.name === 'copy-bad'), 'the new instance is gone');
    assertUntouched(cloud, id);
    assert.ok(!cloud.calls.includes('setTaskState'));
    assert.equal(cloud.eventsOf(id).at(-1), 'error');
  });

  it('rolls back to the pre-restore disk, and refuses when there is none', async () => {
    const { cloud, id, instance, imageId } = newGuest();
    await (await t.startRestore(cloud, { instance: id, imageId })).result();
    assert.equal(instance.disk, imageId);
    await (await t.startRollback(cloud, { instance: id })).result();
    assert.equal(instance.disk, 'original');
    assert.equal(instance.power, 'running');
    assert.equal(instance.taskState, null);

    const none = await t.startRollback(cloud, { instance: id });
    assert.equal(await failureType(none), 'DiskNotFound');
    assert.equal(instance.taskState, null, 'the task state goes back');
    assert.equal(instance.power, 'running');
  });
});
