// A live snapshot by pull whose worker died: QEMU's backup job (NBD export and scratch image) never
// ends by itself. Where the run goes on, the next attempt of the streamed upload reads the same job
// (the same point in time) and completes. Where the run was terminated, no retry takes the job over:
// the reconciler ends it (virsh domjobabort), with its scratch image and socket, instead of leaving
// it until the next snapshot of the guest trips over it; for the stream (issue 29) and for the copy
// (VMSNAP_LIVE_TRANSFER=copy). Real worker processes (one is killed with SIGKILL).
import assert from 'node:assert/strict';
import { chmodSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomUUID } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { execa } from 'execa';
import type { Guest } from '../../scripts/lib/guest.js';
import { getProgress, startSnapshot } from '../../src/client/snapshots.js';
import type { SqliteStore } from '../../src/store/sqlite.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import { eventually } from '../support/cli.js';
import { counterAdvances, qemuImgProcessesUnder } from '../support/invariants.js';
import { onlyActivityRun } from '../support/history.js';
import { waitForPhase } from '../support/slow-guest.js';
import { WorkerTest } from '../support/worker-test.js';

const guestName = `vmsnap-test-rl-${process.pid}`;
const t = new WorkerTest('rl', {
  VMSNAP_LIVE_METHOD: 'pull',
  // Slow enough that the copy or stream is still running when the worker is killed.
  VMSNAP_LIVE_BANDWIDTH_MIBPS: '8',
  // A lost worker's step moves to another worker after 3 s instead of 10.
  VMSNAP_HEARTBEAT_TIMEOUT_MS: '3000',
});
const { env, workers } = t;
// QEMU's user must reach the live snapshot's scratch image (and a copy's target) below it.
chmodSync(t.dir, 0o711);
let guest: Guest;
let store: SqliteStore;

/** libvirt's job on the guest: "None", "Unbounded" (a pull backup job), ... */
async function jobType(): Promise<string> {
  const r = await execa('virsh', ['-c', 'qemu:///system', 'domjobinfo', guestName], { env: { LC_ALL: 'C' } });
  return /Job type:\s+(\S+)/.exec(r.stdout)?.[1] ?? '?';
}

/** Started once the snapshot's stream has sent bytes, and before it sent them all. */
async function midStream(handle: Parameters<typeof getProgress>[0]): Promise<void> {
  await eventually(
    'the stream under way',
    async () => {
      const p = await getProgress(handle);
      return p.phase === 'uploading' && (p.bytesDone ?? 0) > 0 && (p.percent ?? 100) < 100 ? true : undefined;
    },
    120_000,
    100,
  );
}

describe('a live snapshot left by a dead worker', { timeout: 600_000 }, () => {
  before(async () => {
    ({ guest, store } = await t.setUp(guestName, 512));
  });

  after(async () => {
    await workers.killAll();
    // Should the test fail before the reconciler ran, no job may outlive it.
    await execa('virsh', ['-c', 'qemu:///system', 'domjobabort', guestName], { reject: false });
    await t.tearDown();
  });

  it('worker killed mid-stream, the run going on: the next attempt on a new worker streams the same point in time and completes', async () => {
    const client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    try {
      const first = await workers.start();
      const handle = await startSnapshot(
        client,
        { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-live-reattach`, mode: 'live', quiesce: 'never' },
        env.VMSNAP_TASK_QUEUE,
      );
      await midStream(handle);
      const { imageId } = (await handle.query('progress')) as { imageId: string };
      const socket = join(env.VMSNAP_SNAPSHOTS_DIR, imageId, 'export.nbd', 'sock');
      assert.ok(existsSync(socket), 'the export is served from the snapshot temp dir');
      await first.stop('SIGKILL');
      assert.equal(await jobType(), 'Unbounded', 'the pull job outlives its worker');
      // Unpaced, so that the retry's full stream takes seconds.
      await workers.start({ VMSNAP_LIVE_BANDWIDTH_MIBPS: '0' });
      const result = await handle.result();
      assert.equal(result.transfer, 'streamed');
      const history = await handle.fetchHistory();
      const upload = onlyActivityRun(history, 'uploadLiveExport');
      assert.ok(upload.ended === 'completed' && (upload.attempt ?? 0) >= 2, `the upload completed on attempt ${upload.attempt}`);
      const started = onlyActivityRun(history, 'exportLiveDisk');
      assert.equal(started.attempt, 1, 'one job, started once: the retry read the point in time the first attempt read');
      assert.equal(await jobType(), 'None', 'the job ended once the image was verified');
      assert.ok(!existsSync(join(env.VMSNAP_SNAPSHOTS_DIR, imageId)), 'temp dir removed');
      assert.equal((await store.getInstance(guest.uuid))?.taskState, null);
    } finally {
      await workers.killAll();
      await client.connection.close();
    }
  });

  for (const transfer of ['stream', 'copy'] as const) {
    it(`${transfer}: worker killed mid-${transfer}, run terminated: the reconciler ends the pull job, scratch and socket removed`, async () => {
      const client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
      try {
        const first = await workers.start({ VMSNAP_LIVE_TRANSFER: transfer });
        const handle = await startSnapshot(
          client,
          { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-live-orphan-${transfer}`, mode: 'live', quiesce: 'never' },
          env.VMSNAP_TASK_QUEUE,
        );
        const { imageId } = await (async () => {
          if (transfer === 'stream') await midStream(handle);
          else await waitForPhase(handle, 'copying');
          return (await handle.query('progress')) as { imageId: string };
        })();
        const tempDir = join(env.VMSNAP_SNAPSHOTS_DIR, imageId);
        const files = transfer === 'stream' ? ['export.scratch', 'export.nbd'] : ['live.qcow2.scratch', 'live.qcow2.nbd'];
        const scratch = join(tempDir, files[0]!);
        const socket = join(tempDir, files[1]!, 'sock');
        if (transfer === 'copy') {
          const reading = Date.now() + 30_000;
          while (qemuImgProcessesUnder(tempDir).length === 0 && Date.now() < reading) await sleep(100);
          assert.ok(qemuImgProcessesUnder(tempDir).length > 0, `qemu-img reads the NBD export; worker said:\n${first.lines.slice(-15).join('\n')}`);
        }
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
        await workers.killAll();
        await client.connection.close();
      }
    });
  }
});
