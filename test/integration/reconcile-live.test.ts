// A live copy by pull whose worker died and whose snapshot was then terminated: QEMU's backup job
// (NBD export and scratch image) never ends by itself, and no retry takes it over. The reconciler
// ends it (virsh domjobabort), with its scratch image and socket, instead of leaving it until the
// next copy of the guest trips over it. Real worker processes (one is killed with SIGKILL).
import assert from 'node:assert/strict';
import { chmodSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomUUID } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { execa } from 'execa';
import type { Guest } from '../../scripts/lib/guest.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import type { SqliteStore } from '../../src/store/sqlite.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import { eventually } from '../support/cli.js';
import { counterAdvances, qemuImgProcessesUnder } from '../support/invariants.js';
import { waitForPhase } from '../support/slow-guest.js';
import { WorkerTest } from '../support/worker-test.js';

const guestName = `vmsnap-test-rl-${process.pid}`;
const t = new WorkerTest('rl', {
  VMSNAP_LIVE_METHOD: 'pull',
  // Slow enough that the copy is still running when the worker is killed.
  VMSNAP_LIVE_BANDWIDTH_MIBPS: '8',
});
const { env, workers } = t;
// QEMU's user must reach the live copy's target and scratch image below it.
chmodSync(t.dir, 0o711);
let guest: Guest;
let store: SqliteStore;

/** libvirt's job on the guest: "None", "Unbounded" (a pull backup job), ... */
async function jobType(): Promise<string> {
  const r = await execa('virsh', ['-c', 'qemu:///system', 'domjobinfo', guestName], { env: { LC_ALL: 'C' } });
  return /Job type:\s+(\S+)/.exec(r.stdout)?.[1] ?? '?';
}

describe('reconciler: a live copy left by a dead worker', { timeout: 300_000 }, () => {
  before(async () => {
    ({ guest, store } = await t.setUp(guestName, 512));
  });

  after(async () => {
    await workers.killAll();
    // Should the test fail before the reconciler ran, no job may outlive it.
    await execa('virsh', ['-c', 'qemu:///system', 'domjobabort', guestName], { reject: false });
    await t.tearDown();
  });

  it('worker killed mid-copy, run terminated: the reconciler ends the pull job, scratch and socket removed', async () => {
    const client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    try {
      const first = await workers.start();
      const handle = await startSnapshot(
        client,
        { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-live-orphan`, mode: 'live', quiesce: 'never' },
        env.VMSNAP_TASK_QUEUE,
      );
      await waitForPhase(handle, 'copying');
      const { imageId } = (await handle.query('progress')) as { imageId: string };
      const tempDir = join(env.VMSNAP_SNAPSHOTS_DIR, imageId);
      const scratch = join(tempDir, 'live.qcow2.scratch');
      const socket = join(tempDir, 'live.qcow2.nbd', 'sock');
      const reading = Date.now() + 30_000;
      while (qemuImgProcessesUnder(tempDir).length === 0 && Date.now() < reading) await sleep(100);
      assert.ok(qemuImgProcessesUnder(tempDir).length > 0, `qemu-img reads the NBD export; worker said:\n${first.lines.slice(-15).join('\n')}`);
      assert.equal(await jobType(), 'Unbounded');

      await first.stop('SIGKILL');
      await handle.terminate('test: the worker died and the run was given up');
      // Nobody ends it: the worker is gone, and terminate runs no compensation.
      await eventually('qemu-img gone with its worker', async () => (qemuImgProcessesUnder(tempDir).length === 0 ? true : undefined), 30_000, 100);
      assert.equal(await jobType(), 'Unbounded', 'the pull job outlives its worker and its run');
      assert.ok(existsSync(scratch) && existsSync(socket), 'scratch image and socket are still there');

      await workers.start();
      const run = await client.workflow.start('reconcile', {
        taskQueue: env.VMSNAP_TASK_QUEUE,
        workflowId: `vmsnap-test-reconcile-${randomUUID()}`,
      });
      const report = (await run.result()) as ReconcileReport;
      assert.deepEqual(report.errors, []);
      assert.deepEqual(report.abortedLiveCopies, [guest.uuid]);
      assert.deepEqual(report.releasedTasks, [guest.uuid]);
      assert.ok(report.deletedImages.includes(imageId));
      assert.equal(await jobType(), 'None');
      assert.ok(!existsSync(scratch) && !existsSync(socket) && !existsSync(tempDir), 'scratch, socket and temp dir removed');
      assert.equal((await store.getInstance(guest.uuid))?.taskState, null);
      assert.ok(await counterAdvances(guest), 'the guest still writes');

      // The next round finds nothing of it.
      const again = (await (
        await client.workflow.start('reconcile', { taskQueue: env.VMSNAP_TASK_QUEUE, workflowId: `vmsnap-test-reconcile-${randomUUID()}` })
      ).result()) as ReconcileReport;
      assert.deepEqual([again.abortedLiveCopies, again.releasedTasks, again.errors], [[], [], []]);
    } finally {
      await client.connection.close();
    }
  });
});
