// "Accepted before answering": acceptSnapshot starts a snapshot with update-with-start and answers
// only once the run has taken the instance's task state and made its image record, or with the
// failure that refused it. On a local Temporal with fake activities (fake-cloud.ts).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { acceptSnapshot } from '../../src/client/acceptance.js';
import { VmsnapError } from '../../src/shared/errors.js';
import { snapshotWorkflowId } from '../../src/shared/names.js';
import type { SnapshotRequest } from '../../src/shared/types.js';
import { startFastTemporal, type FakeCloud, type FastTemporal } from './fake-cloud.js';

let t: FastTemporal;

before(
  async () => {
    t = await startFastTemporal('acceptance');
  },
  { timeout: 180_000 },
);
after(
  async () => {
    await t?.close();
  },
  { timeout: 60_000 },
);

function accept(cloud: FakeCloud, instanceId: string, request: Partial<SnapshotRequest> = {}) {
  t.serve(cloud, snapshotWorkflowId(instanceId));
  return acceptSnapshot(t.client, { instance: instanceId, imageName: 'accepted', ...request }, { instanceId, taskQueue: t.taskQueue });
}

async function refusal(promise: Promise<unknown>): Promise<VmsnapError> {
  const err = await promise.then(
    () => assert.fail('the request should have been refused'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof VmsnapError, `a VmsnapError, not ${String(err)}`);
  return err;
}

describe('acceptSnapshot (update-with-start)', { timeout: 120_000, concurrency: true }, () => {
  it('answers once the task state is taken and the image record made, then the snapshot goes on', async () => {
    const cloud = t.newCloud();
    const id = randomUUID();
    cloud.addInstance(id);
    let copying: () => void = () => undefined;
    const copyStarted = new Promise<void>((resolve) => (copying = resolve));
    let release: () => void = () => undefined;
    const held = new Promise<void>((resolve) => (release = resolve));
    cloud.hooks.coldCopyDisk = async (call) => {
      copying();
      await held;
      return call.run();
    };
    const { handle, accepted } = await accept(cloud, id);
    // At the answer the task state is taken and the image exists; the copy has not even begun.
    assert.equal(accepted.taskState, 'image_snapshot_pending');
    assert.equal(accepted.instanceId, id);
    assert.equal(accepted.workflowId, snapshotWorkflowId(id));
    assert.equal(cloud.images.get(accepted.imageId)?.status, 'queued');
    assert.ok(['image_snapshot_pending', 'image_snapshot', 'image_pending_upload'].includes(cloud.instances.get(id)!.taskState ?? 'None'));
    assert.equal(handle.workflowId, snapshotWorkflowId(id));
    await copyStarted;
    release();
    const result = await handle.result();
    assert.equal(result.imageId, accepted.imageId);
    assert.equal(cloud.images.get(accepted.imageId)?.status, 'active');
  });

  it('refuses with InstanceBusy when another task holds the instance, and leaves nothing behind', async () => {
    const cloud = t.newCloud();
    const id = randomUUID();
    const instance = cloud.addInstance(id);
    instance.taskState = 'rebuilding';
    instance.taskOwner = 'restore-x/run-y';
    const err = await refusal(accept(cloud, id));
    assert.equal(err.code, 'InstanceBusy');
    assert.match(err.message, /task state rebuilding|rebuilding/);
    assert.equal(cloud.images.size, 0, 'no image record');
    assert.equal(instance.taskState, 'rebuilding', "the other task's state is untouched");
    assert.ok(!cloud.calls.includes('createImageRecord'));
  });

  it('refuses with InstanceBusy while a snapshot of the instance runs: the running one is not joined', async () => {
    const cloud = t.newCloud();
    const id = randomUUID();
    cloud.addInstance(id);
    let release: () => void = () => undefined;
    const held = new Promise<void>((resolve) => (release = resolve));
    cloud.hooks.coldCopyDisk = async (call) => {
      await held;
      return call.run();
    };
    const first = await accept(cloud, id);
    const err = await refusal(accept(cloud, id, { imageName: 'second' }));
    assert.equal(err.code, 'InstanceBusy');
    assert.match(err.message, /snapshot running/);
    release();
    await first.handle.result();
    assert.equal(cloud.images.size, 1, 'only the first made an image');
  });

  it('refuses with InstanceNotFound for an instance no host knows', async () => {
    const cloud = t.newCloud();
    const err = await refusal(accept(cloud, randomUUID()));
    assert.equal(err.code, 'InstanceNotFound');
    assert.equal(cloud.images.size, 0);
  });

  it('refuses a bad request before anything starts', async () => {
    const cloud = t.newCloud();
    const id = randomUUID();
    cloud.addInstance(id);
    const err = await refusal(accept(cloud, id, { metadata: { image_type: 'x' } }));
    assert.equal(err.code, 'InvalidInput');
    await assert.rejects(t.client.workflow.getHandle(snapshotWorkflowId(id)).describe(), /not found/i, 'no workflow was started');
  });

  it('waits for a run that has let go of the instance and only tidies up, then starts', async () => {
    const cloud = t.newCloud();
    const id = randomUUID();
    cloud.addInstance(id);
    let tidying: () => void = () => undefined;
    const inFinishing = new Promise<void>((resolve) => (tidying = resolve));
    let release: () => void = () => undefined;
    const held = new Promise<void>((resolve) => (release = resolve));
    // The first run's temp dir removal is slow: its task state is None meanwhile.
    cloud.hooks.removeSnapshotFiles = async (call) => {
      if (cloud.instances.get(id)!.taskState === null || cloud.calls.includes('uploadImage')) {
        tidying();
        await held;
      }
      return call.run();
    };
    const first = await accept(cloud, id);
    await inFinishing;
    // Let the first run finish a moment after the second asked.
    const second = accept(cloud, id, { imageName: 'second' });
    setTimeout(release, 300);
    const { accepted } = await second;
    assert.notEqual(accepted.runId, first.accepted.runId);
    assert.equal((await first.handle.result()).imageId, first.accepted.imageId);
  });

  it('a backup rotates after the upload', async () => {
    const cloud = t.newCloud();
    const id = randomUUID();
    cloud.addInstance(id);
    const rotations: unknown[] = [];
    cloud.hooks.rotateBackups = async (call) => {
      rotations.push(call.args[0]);
      assert.equal(cloud.images.get(first.accepted.imageId)?.status, 'active', 'the new backup is active before the rotation');
      return call.run();
    };
    const first = await accept(cloud, id, { backup: { type: 'daily', rotation: 2 } });
    await first.handle.result();
    assert.deepEqual(rotations, [{ instanceId: id, backupType: 'daily', rotation: 2 }]);
  });
});
