// Faults of the machinery around a snapshot, on the real stack with real worker processes:
// a worker killed with SIGKILL during the copy and during the upload (a new worker takes over
// after the heartbeat timeout), and the Temporal server stopped and started mid-snapshot.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, Connection } from '@temporalio/client';
import { guestState, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { services, stackConfig } from '../../scripts/lib/stack.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { stackGlanceUrl } from '../support/cloud.js';
import { recordFaultRow } from '../support/fault-report.js';
import { checkInvariants, outcomeOf, qemuImgProcessesUnder } from '../support/invariants.js';
import { createSlowGuest, waitForPhase } from '../support/slow-guest.js';
import { startWorkerProcess, type WorkerProcess } from '../support/worker-process.js';

const dataDir = process.env.VMSNAP_DATA_DIR ?? '.data/test';
const guestName = `vmsnap-test-fw-${process.pid}`;
const dir = mkdtempSync(join(tmpdir(), 'vmsnap-faults-worker-'));
const env = {
  VMSNAP_HOST: `test-fw-${process.pid}`,
  VMSNAP_TASK_QUEUE: `vmsnap-test-fw-${process.pid}`,
  VMSNAP_STORE_PATH: join(dir, 'vmsnap.sqlite'),
  VMSNAP_DEFAULT_MODE: 'cold', // these faults are about a paused guest
  VMSNAP_SNAPSHOTS_DIR: join(dir, 'snapshots'),
  // A lost worker's step moves to another worker after 3 s instead of 10.
  VMSNAP_HEARTBEAT_TIMEOUT_MS: '3000',
  VMSNAP_RECONCILE_INTERVAL_MS: '0',
  VMSNAP_METRICS_ADDRESS: 'off',
};
let guest: Guest;
let store: SqliteStore;
const workers: WorkerProcess[] = [];

async function startWorker(extra: Record<string, string> = {}): Promise<WorkerProcess> {
  const w = startWorkerProcess({ ...env, ...extra });
  workers.push(w);
  await w.waitForLine(/vmsnap worker started/);
  return w;
}

async function invariantsAfter(imageName: string, outcome: string) {
  return checkInvariants({
    store,
    glanceUrl: await stackGlanceUrl(),
    snapshotsDir: env.VMSNAP_SNAPSHOTS_DIR,
    guest,
    priorState: 'running',
    imageName,
    expectedOutcome: 'completed',
    outcome,
  });
}

describe('worker and server faults on the real stack', { timeout: 600_000 }, () => {
  before(async () => {
    guest = await createSlowGuest({
      name: guestName,
      guestsDir: join(dataDir, 'guests'),
      assetsDir: join(dataDir, 'guest-assets'),
      dataMiB: 512,
    });
    store = new SqliteStore(env.VMSNAP_STORE_PATH);
    await store.migrate();
  });

  after(async () => {
    for (const w of workers) await w.stop('SIGKILL');
    await store?.close();
    await removeGuest(guestName, join(dataDir, 'guests')).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  it('a worker killed with SIGKILL during the copy: qemu-img dies with it, a new worker completes', async () => {
    const client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    try {
      const first = await startWorker();
      const imageName = `vmsnap-test-${process.pid}-kill-convert`;
      const handle = await startSnapshot(client, { instance: guest.uuid, imageName, compress: true }, env.VMSNAP_TASK_QUEUE);
      await waitForPhase(handle, 'converting');
      await sleep(1000);
      assert.ok(qemuImgProcessesUnder(env.VMSNAP_SNAPSHOTS_DIR).length > 0, 'qemu-img is copying');
      await first.stop('SIGKILL');
      await sleep(500);
      assert.deepEqual(qemuImgProcessesUnder(env.VMSNAP_SNAPSHOTS_DIR), [], 'no orphaned qemu-img');
      assert.equal(await guestState(guestName), 'paused', 'paused by the dead worker, until the new one resumes it');

      await startWorker();
      const outcome = await outcomeOf(handle);
      const invariants = await invariantsAfter(imageName, outcome);
      recordFaultRow({
        fault: 'worker SIGKILL during convert',
        outcome,
        invariants,
        note: 'copy retried on a new worker after the 3 s heartbeat timeout',
      });
      assert.equal(outcome, 'completed');
      assert.deepEqual(
        Object.values(invariants),
        Object.values(invariants).map(() => true),
        JSON.stringify(invariants),
      );
    } finally {
      await client.connection.close();
    }
  });

  it('a worker killed with SIGKILL during the upload: a new worker uploads again and verifies', async () => {
    const client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    try {
      for (const w of workers) await w.stop('SIGKILL');
      const uploader = await startWorker();
      const imageName = `vmsnap-test-${process.pid}-kill-upload`;
      // Uncompressed: the 512 MiB of data make an upload of seconds.
      const handle = await startSnapshot(client, { instance: guest.uuid, imageName }, env.VMSNAP_TASK_QUEUE);
      await waitForPhase(handle, 'uploading');
      await sleep(300);
      await uploader.stop('SIGKILL');
      await startWorker();
      const outcome = await outcomeOf(handle);
      const invariants = await invariantsAfter(imageName, outcome);
      recordFaultRow({
        fault: 'worker SIGKILL during upload',
        outcome,
        invariants,
        note: 'PUT retried from byte 0 on a new worker; hashes verified',
      });
      assert.equal(outcome, 'completed');
      assert.deepEqual(
        Object.values(invariants),
        Object.values(invariants).map(() => true),
        JSON.stringify(invariants),
      );
    } finally {
      await client.connection.close();
    }
  });

  it('the Temporal server stopped and started again mid-snapshot: the snapshot completes', async () => {
    // A Temporal of its own (SQLite persistence), so stopping it disturbs no other test.
    const serverDir = join(dir, 'temporal');
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
      for (const w of workers) await w.stop('SIGKILL');
      await startWorker({ TEMPORAL_ADDRESS: address });
      const imageName = `vmsnap-test-${process.pid}-temporal-restart`;
      const handle = await startSnapshot(client, { instance: guest.uuid, imageName, compress: true }, env.VMSNAP_TASK_QUEUE);
      await waitForPhase(handle, 'converting');
      await temporal.down();
      await sleep(3000);
      await temporal.up();
      let outcome = '';
      for (let i = 0; i < 20 && !outcome; i++) {
        // The client's long poll may see the outage; ask again.
        outcome = await outcomeOf(handle).catch(async () => {
          await sleep(1000);
          return '';
        });
      }
      const invariants = await invariantsAfter(imageName, outcome);
      recordFaultRow({
        fault: 'Temporal server restart mid-snapshot',
        outcome,
        invariants,
        note: 'dev server with SQLite persistence stopped for 3 s during the copy',
      });
      assert.equal(outcome, 'completed');
      assert.deepEqual(
        Object.values(invariants),
        Object.values(invariants).map(() => true),
        JSON.stringify(invariants),
      );
    } finally {
      for (const w of workers) await w.stop('SIGKILL');
      await connection.close();
      await temporal.down();
    }
  });
});
