// snapshotInstance end to end on the real stack: a real guest under libvirt/QEMU, real qemu-img,
// real Glance, real Temporal. The hypervisor driver is the real one, observed right after pause
// so the test knows the counter on disk at the moment of pause.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { Worker } from '@temporalio/worker';
import { execa } from 'execa';
import { createGuest, guestState, readCounter, removeGuest, type Counter, type Guest } from '../../scripts/lib/guest.js';
import { startSnapshot, type SnapshotHandle } from '../../src/client/snapshots.js';
import type { Hypervisor } from '../../src/drivers/hypervisor.js';
import { workflowBundle } from '../../src/worker/workflow-bundle.js';
import { downloadImage, findImagesByName, observePause } from '../support/images.js';
import { testCloud } from '../support/cloud.js';
import { startHarness, type Harness } from '../support/harness.js';
import { REPLAY_FIXTURES, recordHistory } from '../support/fixtures.js';
import { eventMs, onlyActivityRun } from '../support/history.js';
import { counterAdvances } from '../support/invariants.js';

const guestName = `vmsnap-test-snap-${process.pid}`;
let h: Harness;
let guest: Guest;
const atPause = new Map<string, Counter>();
const diskOf = new Map<string, string>();

/** No snapshot temp dir left behind (each test looks after its own snapshot). */
function noTempDirs(): void {
  assert.ok(!existsSync(h.config.snapshotsDir) || readdirSync(h.config.snapshotsDir).length === 0, 'a snapshot temp dir was left behind');
}

async function failureOf(handle: SnapshotHandle): Promise<ApplicationFailure> {
  const err = await handle.result().then(
    () => assert.fail('the snapshot should have failed'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof WorkflowFailedError, `expected WorkflowFailedError, got ${String(err)}`);
  assert.ok(err.cause instanceof ApplicationFailure, `expected an ApplicationFailure cause, got ${String(err.cause)}`);
  return err.cause;
}

describe('snapshotInstance on the real stack (cold mode)', { timeout: 600_000 }, () => {
  before(async () => {
    h = await startHarness({
      name: 'snapshot',
      wrapHypervisor: (real: Hypervisor) =>
        observePause(real, async (id) => {
          const disk = diskOf.get(id);
          if (disk) atPause.set(id, await readCounter(disk, 'qcow2'));
        }),
    });
    guest = await createGuest({ name: guestName, guestsDir: h.guestsDir, assetsDir: h.assetsDir });
    diskOf.set(guest.uuid, guest.diskPath);
  });

  after(async () => {
    await removeGuest(guestName, h.guestsDir).catch(() => undefined);
    await h?.close();
  });

  it('snapshots a running guest at one point in time, and the guest runs on', async () => {
    const handle = await startSnapshot(
      h.client,
      { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-running`, metadata: { purpose: 'test' } },
      h.config.temporal.taskQueue,
    );
    const result = await handle.result();

    // The image in Glance: active, Nova's snapshot properties, hashes that vmsnap verified.
    const image = await h.glance.getImage(result.imageId);
    assert.ok(image, 'image must exist in Glance');
    assert.equal(image.status, 'active');
    assert.equal(image.visibility, 'private');
    assert.equal(image.disk_format, 'qcow2');
    assert.equal(image.container_format, 'bare');
    assert.equal(image.image_type, 'snapshot');
    assert.equal(image.instance_uuid, guest.uuid);
    // Owned as Nova owns a snapshot: by the token's project, made by the token's user.
    const caller = await (await testCloud()).identity.caller();
    assert.ok(caller, 'the test stack authenticates through Keystone');
    assert.equal(image.user_id, caller.userId);
    assert.equal(image.owner, caller.projectId);
    assert.equal(image.owner_id, caller.projectId);
    assert.equal(image.purpose, 'test');
    assert.equal(image.size, result.size);
    assert.equal(image.os_hash_value, result.sha512);
    assert.equal(result.priorPowerState, 'running');
    // The pause lies within the host step that paused, copied and resumed.
    const copy = onlyActivityRun(await handle.fetchHistory(), 'coldCopyDisk');
    const stepMs = (copy.endedAt ?? 0) - eventMs(copy.scheduled);
    assert.ok(result.guestPauseMs > 0 && result.guestPauseMs <= stepMs, `pause ${result.guestPauseMs} ms, within the ${stepMs} ms copy step`);
    assert.ok((result.phaseDurationsMs.converting ?? 0) > 0);

    // Content: the image holds exactly the counter that was on disk at the moment of pause.
    const paused = atPause.get(guest.uuid);
    assert.ok(paused && paused.a > 0, 'the counter at pause was observed');
    const downloaded = await downloadImage(h.glanceUrl, result.imageId);
    try {
      assert.equal(downloaded.sha512, result.sha512, 'downloaded bytes hash as Glance says');
      assert.deepEqual(await readCounter(downloaded.path, 'qcow2'), paused);
    } finally {
      rmSync(downloaded.path, { force: true });
    }

    // The guest runs again and keeps counting.
    assert.equal(await guestState(guestName), 'running');
    const first = await readCounter(guest.diskPath, 'qcow2');
    assert.ok(first.a > paused.a, `counter moved on after the pause: ${paused.a} -> ${first.a}`);
    assert.ok(await counterAdvances(guest), 'counter advances');

    // Nothing left behind: task state None, no temp dir; the action is recorded.
    const record = await h.store.getInstance(guest.uuid);
    assert.equal(record?.taskState, null);
    noTempDirs();
    const events = await h.store.listEvents(guest.uuid);
    assert.deepEqual(
      events.map((e: { event: string }) => e.event),
      ['start', 'pause', 'resume', 'finish'],
    );

    // Determinism: the history of this real run replays against the current workflow code.
    const history = await handle.fetchHistory();
    await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, history);
    // `VMSNAP_RECORD_HISTORY=1 ./scripts/test test/integration/snapshot.test.ts` refreshes the
    // fixture that test/unit/replay.test.ts replays (docs/development.md).
    await recordHistory(h.config.temporal.address, { workflowId: handle.workflowId, runId: (await handle.describe()).runId }, REPLAY_FIXTURES.snapshotCold);
  });

  it('leaves an already-paused guest paused, and copies what is on its disk', async () => {
    await execa('virsh', ['-c', h.config.libvirtUri, 'suspend', guestName]);
    try {
      const onDisk = await readCounter(guest.diskPath, 'qcow2');
      const handle = await startSnapshot(
        h.client,
        { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-paused`, diskFormat: 'raw' },
        h.config.temporal.taskQueue,
      );
      const result = await handle.result();
      assert.equal(result.priorPowerState, 'paused');
      assert.equal(result.guestPauseMs, 0);
      assert.equal(result.diskFormat, 'raw');
      assert.equal(await guestState(guestName), 'paused');
      noTempDirs();
      const downloaded = await downloadImage(h.glanceUrl, result.imageId);
      try {
        assert.deepEqual(await readCounter(downloaded.path, 'raw'), onDisk);
      } finally {
        rmSync(downloaded.path, { force: true });
      }
    } finally {
      await execa('virsh', ['-c', h.config.libvirtUri, 'resume', guestName], { reject: false });
    }
  });

  it('snapshots a shut-off guest without pausing it, and leaves it shut off', async () => {
    await execa('virsh', ['-c', h.config.libvirtUri, 'destroy', guestName]);
    const onDisk = await readCounter(guest.diskPath, 'qcow2');
    const handle = await startSnapshot(h.client, { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-off` }, h.config.temporal.taskQueue);
    const result = await handle.result();
    assert.equal(result.priorPowerState, 'shutdown');
    assert.equal(result.guestPauseMs, 0);
    assert.equal(await guestState(guestName), 'shut off');
    const events = (await h.store.listEvents(guest.uuid))
      .filter((e) => e.requestId === `${handle.workflowId}/${handle.firstExecutionRunId}`)
      .map((e) => e.event);
    assert.ok(!events.includes('pause'), `a shut-off guest is not paused: ${events.join(',')}`);
    noTempDirs();
    const downloaded = await downloadImage(h.glanceUrl, result.imageId);
    try {
      assert.deepEqual(await readCounter(downloaded.path, 'qcow2'), onDisk);
    } finally {
      rmSync(downloaded.path, { force: true });
    }
    await execa('virsh', ['-c', h.config.libvirtUri, 'start', guestName]);
  });

  it('refuses an instance with a task in progress, leaving nothing behind', async () => {
    assert.ok(await h.store.compareAndSwapTaskState(guest.uuid, null, 'image_uploading', 'someone-else'));
    try {
      const imageName = `vmsnap-test-${process.pid}-busy`;
      const handle = await startSnapshot(h.client, { instance: guest.uuid, imageName }, h.config.temporal.taskQueue);
      const failure = await failureOf(handle);
      assert.equal(failure.type, 'InstanceBusy');
      assert.match(failure.message, /task in progress .*image_uploading/);
      assert.deepEqual(await findImagesByName(h.glanceUrl, imageName), []);
      const record = await h.store.getInstance(guest.uuid);
      assert.equal(record?.taskState, 'image_uploading');
      assert.equal(record?.taskOwner, 'someone-else');
      assert.deepEqual(await h.store.listFaults(guest.uuid), [], 'a refused request is no fault of the instance');
      noTempDirs();
    } finally {
      await h.store.releaseTaskState(guest.uuid, 'someone-else');
    }
  });

  it('refuses an unknown instance and a bad request with typed failures', async () => {
    const unknown = await startSnapshot(h.client, { instance: '00000000-0000-4000-8000-000000000000', imageName: 'x' }, h.config.temporal.taskQueue);
    assert.equal((await failureOf(unknown)).type, 'InstanceNotFound');

    // Past the client's own validation, as `temporal workflow start` would send it.
    const bad = await h.client.workflow.start('snapshotInstance', {
      taskQueue: h.config.temporal.taskQueue,
      workflowId: `vmsnap-test-bad-${process.pid}`,
      args: [{ instance: '../../etc/passwd', imageName: 'x'.repeat(300) }],
    });
    const failure = await failureOf(bad as SnapshotHandle);
    assert.equal(failure.type, 'InvalidInput');
    assert.match(failure.message, /instance: /);
    assert.match(failure.message, /imageName: must be at most 255/);
  });
});
