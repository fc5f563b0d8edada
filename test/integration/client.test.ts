// The programmatic client on the real stack: README's example run as written, then progress,
// listing and cancellation through the client API against real workers, guests and Glance.
// VMSNAP_README=<file> runs the example of another copy of the README (to try a change to it).
import assert from 'node:assert/strict';
import { WorkflowFailedError } from '@temporalio/client';
import { CancelledFailure } from '@temporalio/common';
import { execa } from 'execa';
import { mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createGuest, guestState, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import {
  ClientError,
  VmsnapError,
  cancelSnapshot,
  findSnapshot,
  getProgress,
  listSnapshots,
  resolveInstanceId,
  snapshotResult,
  startSnapshot,
  type SnapshotProgressDetails,
} from '../../src/client/index.js';
import { cliEnv, createBusyGuest, deleteImages, eventually, ROOT, stopLeftoverSnapshots } from '../support/cli.js';
import { startHarness, type Harness } from '../support/harness.js';

const small = `vmsnap-test-client-${process.pid}`;
const big = `vmsnap-test-client-big-${process.pid}`;
let h: Harness;
let guest: Guest;
let bigGuest: Guest;
const images = new Set<string>();

/** The ```ts block of README's "Running vmsnap" section. */
async function readmeExample(): Promise<string> {
  const readme = await readFile(process.env.VMSNAP_README ?? join(ROOT, 'README.md'), 'utf8');
  const section = /^## Running vmsnap\n([\s\S]*?)(?=^## )/m.exec(readme)?.[1];
  assert.ok(section, 'README has a "Running vmsnap" section');
  const code = /^```ts\n([\s\S]*?)^```/m.exec(section)?.[1];
  assert.ok(code, 'the section has a ```ts example');
  return code;
}

describe('the programmatic client on the real stack', { timeout: 600_000 }, () => {
  before(async () => {
    h = await startHarness({ name: 'client' });
    [guest, bigGuest] = await Promise.all([
      createGuest({ name: small, guestsDir: h.guestsDir, assetsDir: h.assetsDir, intervalMs: 100 }),
      createBusyGuest(h, big),
    ]);
  });

  after(async () => {
    if (h) await stopLeftoverSnapshots(h);
    await Promise.all([small, big].map((n) => removeGuest(n, h.guestsDir).catch(() => undefined)));
    if (h) await deleteImages(h, images);
    await h?.close();
  });

  it("README's example runs as written and makes an active image", async () => {
    const code = await readmeExample();
    // Preconditions, or the example would snapshot whatever `vmsnap-demo` the stack knows, on a
    // task queue other workers may serve.
    assert.match(code, /config\.temporal\.taskQueue/, 'the example starts on the configured task queue (VMSNAP_TASK_QUEUE)');
    assert.match(code, /process\.argv\[2\]/, 'the example takes the instance from its command line');
    // As the README says to run it: a file in the repository's root. A directory of its own that
    // links to src/ stands in for the root, so nothing is written into the working tree.
    const dir = await mkdtemp(join(tmpdir(), 'vmsnap-readme-'));
    try {
      await symlink(join(ROOT, 'src'), join(dir, 'src'));
      await writeFile(join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
      await writeFile(join(dir, 'snapshot.ts'), code);
      const run = await execa(join(ROOT, 'node_modules', '.bin', 'tsx'), ['snapshot.ts', guest.uuid], {
        cwd: dir,
        env: cliEnv(h),
        extendEnv: false,
        reject: false,
        timeout: 90_000,
      });
      const shown = `exit ${run.exitCode}${run.timedOut ? ' (timed out: did it not end?)' : ''}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`;
      const printedIds = [...run.stdout.matchAll(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g)].map((m) => m[0]);
      for (const id of printedIds) if (id !== guest.uuid) images.add(id);
      assert.equal(run.exitCode, 0, shown);
      // It printed the progress (a phase) and the image id; the image is there and active.
      assert.match(run.stdout, /phase: '(creating-image|waiting-for-host|converting|copying)'/, shown);
      const found = await findSnapshot(h.client, guest.uuid);
      assert.equal(found?.status, 'completed');
      assert.ok(found.imageId && run.stdout.includes(found.imageId), shown);
      assert.equal((await h.glance.getImage(found.imageId))?.status, 'active');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('listSnapshots finds a snapshot by instance and status, with its image id and phase', async () => {
    // A name is refused before anything starts: workflow ids are made from the UUID, which resolveInstanceId reads.
    await assert.rejects(
      startSnapshot(h.client, { instance: small, imageName: `vmsnap-test-client-${process.pid}` }, h.config.temporal.taskQueue),
      (e: unknown) => e instanceof VmsnapError && e.code === 'InvalidInput' && /resolveInstanceId/.test(e.message),
    );
    const instanceId = await resolveInstanceId(h.config, small);
    assert.equal(instanceId, guest.uuid);
    const handle = await startSnapshot(h.client, { instance: instanceId, imageName: `vmsnap-test-client-${process.pid}` }, h.config.temporal.taskQueue);
    const result = await snapshotResult(handle);
    images.add(result.imageId);
    const row = await eventually('the snapshot listed by its instance UUID', async () =>
      (await listSnapshots(h.client, { instance: guest.uuid, status: 'completed' })).find((r) => r.workflowId === handle.workflowId),
    );
    assert.equal(row.runId, handle.firstExecutionRunId);
    assert.equal(row.status, 'completed');
    assert.equal(row.imageId, result.imageId);
    assert.equal(row.phase, 'completed');
    assert.equal(row.host, h.config.host);
    assert.equal(row.taskQueue, h.config.temporal.taskQueue);
    assert.ok(row.closeTime && row.closeTime >= row.startTime);
    assert.deepEqual(await listSnapshots(h.client, { instance: guest.uuid, status: 'failed' }), []);
    const limited = await listSnapshots(h.client, { instance: [guest.uuid, small], limit: 1 });
    assert.equal(limited.length, 1);
    // By workflow id too.
    assert.equal((await findSnapshot(h.client, handle.workflowId))?.imageId, result.imageId);
    await assert.rejects(listSnapshots(h.client, { limit: 0 }), (e: unknown) => e instanceof VmsnapError && e.code === 'InvalidInput');
  });

  it('getProgress has phase, percent and bytes while the copy runs; cancelSnapshot ends it cancelled', async () => {
    const handle = await startSnapshot(
      h.client,
      { instance: bigGuest.uuid, imageName: `vmsnap-test-client-big-${process.pid}`, compress: true },
      h.config.temporal.taskQueue,
    );
    const seen: SnapshotProgressDetails[] = [];
    const copying = await eventually(
      'progress of the copy with bytes done',
      async () => {
        const p = await getProgress(handle);
        seen.push(p);
        return p.phase === 'converting' && (p.bytesDone ?? 0) > 0 ? p : undefined;
      },
      60_000,
      300,
    );
    images.add(copying.imageId);
    assert.equal(copying.instanceId, bigGuest.uuid);
    // As in Nova: image_pending_upload while the copy is made.
    assert.equal(copying.taskState, 'image_pending_upload');
    assert.equal(copying.bytesTotal, 1024 * 1024 * 1024, 'the virtual disk is what the copy reads');
    assert.ok(copying.percent! > 0 && copying.percent! < 100, `percent ${copying.percent}`);
    assert.equal(copying.step?.activityType, 'coldCopyDisk');
    assert.ok(copying.phaseDurationsMs['creating-image']! > 0);
    assert.ok(
      seen.every((p) => p.imageId === copying.imageId),
      'the image id is known from the first moment',
    );

    // Started by UUID: found by it, or by the name with the UUID as an alias (the CLI takes
    // aliases from the store); the name alone does not lead to it.
    await assert.rejects(cancelSnapshot(h.client, big), (e: unknown) => e instanceof ClientError && e.code === 'SnapshotNotFound');
    const cancelled = await cancelSnapshot(h.client, big, [bigGuest.uuid]);
    assert.equal(cancelled.workflowId, handle.workflowId);
    assert.equal(cancelled.runId, handle.firstExecutionRunId);
    const err = await snapshotResult(cancelled.handle).then(
      () => assert.fail('the snapshot should have been cancelled'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof WorkflowFailedError && err.cause instanceof CancelledFailure, `cancelled, got ${String(err)}`);
    assert.equal(await h.glance.getImage(copying.imageId), undefined, 'the unfinished image is deleted');
    assert.equal(await guestState(big), 'running');

    const row = await eventually('the cancelled snapshot listed', async () =>
      (await listSnapshots(h.client, { instance: bigGuest.uuid, status: 'cancelled' })).find((r) => r.workflowId === handle.workflowId),
    );
    assert.equal(row.imageId, copying.imageId);
    assert.equal(row.phase, 'cancelled', 'a cancelled snapshot says so, not failed');
    await assert.rejects(cancelSnapshot(h.client, bigGuest.uuid), (e: unknown) => e instanceof ClientError && e.code === 'SnapshotNotFound');
  });

  it('startSnapshot refuses a bad request before anything starts', async () => {
    await assert.rejects(
      startSnapshot(h.client, { instance: guest.uuid, imageName: '' }, h.config.temporal.taskQueue),
      (e: unknown) => e instanceof VmsnapError && e.code === 'InvalidInput' && /imageName/.test(e.message),
    );
  });
});
