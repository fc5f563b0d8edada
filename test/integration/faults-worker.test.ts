// Faults of the machinery around a snapshot, on the real stack with real worker processes:
// a worker killed with SIGKILL during the copy and during the upload (a new worker takes over
// after the heartbeat timeout; the copy's pause guard outlives the worker: pause-guard.test.ts),
// and the Temporal server stopped and started mid-snapshot.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, Connection } from '@temporalio/client';
import { guestState, type Guest } from '../../scripts/lib/guest.js';
import { services, stackConfig } from '../../scripts/lib/stack.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import type { SqliteStore } from '../../src/store/sqlite.js';
import { stackGlanceUrl } from '../support/cloud.js';
import { recordFaultRow } from '../support/fault-report.js';
import { assertAllHeld, checkInvariants, outcomeAcrossOutage, outcomeOf, qemuImgProcessesUnder } from '../support/invariants.js';
import { waitForGuestState, waitForPhase } from '../support/slow-guest.js';
import { WorkerTest } from '../support/worker-test.js';

const guestName = `vmsnap-test-fw-${process.pid}`;
const t = new WorkerTest('fw', {
  VMSNAP_DEFAULT_MODE: 'cold', // these faults are about a paused guest
  // A lost worker's step moves to another worker after 3 s instead of 10.
  VMSNAP_HEARTBEAT_TIMEOUT_MS: '3000',
});
const { env, workers } = t;
let guest: Guest;
let store: SqliteStore;

/** The fault's row in the report; then the snapshot must have completed, every invariant held. */
async function completedAndHeld(imageName: string, outcome: string, fault: string, note: string): Promise<void> {
  const invariants = await checkInvariants({
    store,
    glanceUrl: await stackGlanceUrl(),
    snapshotsDir: env.VMSNAP_SNAPSHOTS_DIR,
    guest,
    priorState: 'running',
    imageName,
    expectedOutcome: 'completed',
    outcome,
  });
  recordFaultRow({ fault, outcome, invariants, note });
  assert.equal(outcome, 'completed');
  assertAllHeld(invariants);
}

describe('worker and server faults on the real stack', { timeout: 600_000 }, () => {
  before(async () => {
    ({ guest, store } = await t.setUp(guestName, 512));
  });

  after(() => t.tearDown());

  it('a worker killed with SIGKILL during the copy: the copy goes on under its pause guard, a new worker completes', async () => {
    const client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    try {
      const first = await workers.start();
      const imageName = `vmsnap-test-${process.pid}-kill-convert`;
      const handle = await startSnapshot(client, { instance: guest.uuid, imageName, compress: true }, env.VMSNAP_TASK_QUEUE);
      await waitForPhase(handle, 'converting');
      await waitForGuestState(guestName, 'paused');
      for (const deadline = Date.now() + 30_000; !qemuImgProcessesUnder(env.VMSNAP_SNAPSHOTS_DIR).length; await sleep(50)) {
        assert.ok(Date.now() < deadline, 'qemu-img is copying within 30 s of the pause');
      }
      await first.stop('SIGKILL');
      // The pause guard (a process of its own) owns the copy and the pause: both outlive the worker.
      assert.ok(qemuImgProcessesUnder(env.VMSNAP_SNAPSHOTS_DIR).length > 0, "the copy goes on under the dead worker's pause guard");
      assert.equal(await guestState(guestName), 'paused', 'paused until the guard has copied');

      await workers.start();
      await completedAndHeld(
        imageName,
        await outcomeOf(handle),
        'worker SIGKILL during convert',
        "the pause guard copied on and resumed the guest; the retry on a new worker (3 s heartbeat timeout) took the guard's copy over",
      );
    } finally {
      await client.connection.close();
    }
  });

  it('a worker killed with SIGKILL during the upload: a new worker uploads again and verifies', async () => {
    const client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    try {
      await workers.killAll();
      const uploader = await workers.start();
      const imageName = `vmsnap-test-${process.pid}-kill-upload`;
      // Uncompressed: the 512 MiB of data make an upload of seconds.
      const handle = await startSnapshot(client, { instance: guest.uuid, imageName }, env.VMSNAP_TASK_QUEUE);
      await waitForPhase(handle, 'uploading');
      await sleep(300);
      await uploader.stop('SIGKILL');
      await workers.start();
      await completedAndHeld(imageName, await outcomeOf(handle), 'worker SIGKILL during upload', 'PUT retried from byte 0 on a new worker; hashes verified');
    } finally {
      await client.connection.close();
    }
  });

  it('the Temporal server stopped and started again mid-snapshot: the snapshot completes', async () => {
    // A Temporal of its own (SQLite persistence), so stopping it disturbs no other test.
    const serverDir = join(t.dir, 'temporal');
    const cfg = stackConfig({
      ...process.env,
      VMSNAP_DATA_DIR: serverDir,
      VMSNAP_TEMPORAL_PORT: '27433',
      VMSNAP_TEMPORAL_UI_PORT: '28433',
    });
    const temporal = services(cfg).find((s) => s.name === 'temporal')!;
    await temporal.up();
    const address = '127.0.0.1:27433';
    const connection = await Connection.connect({ address });
    const client = new Client({ connection });
    try {
      await workers.killAll();
      await workers.start({ TEMPORAL_ADDRESS: address });
      const imageName = `vmsnap-test-${process.pid}-temporal-restart`;
      const handle = await startSnapshot(client, { instance: guest.uuid, imageName, compress: true }, env.VMSNAP_TASK_QUEUE);
      await waitForPhase(handle, 'converting');
      await temporal.down();
      await sleep(3000);
      await temporal.up();
      const outcome = await outcomeAcrossOutage(handle, 20);
      await completedAndHeld(imageName, outcome, 'Temporal server restart mid-snapshot', 'dev server with SQLite persistence stopped for 3 s during the copy');
    } finally {
      await workers.killAll();
      await connection.close();
      await temporal.down();
    }
  });
});
