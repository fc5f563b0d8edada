// Faults of the machinery around a snapshot, on the real stack with real worker processes:
// a worker killed with SIGKILL during the copy and during the upload (a new worker takes over
// after the heartbeat timeout), and the Temporal server stopped and started mid-snapshot.
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
import { startFaultProxy } from '../support/fault-proxy.js';
import { recordFaultRow } from '../support/fault-report.js';
import { assertAllHeld, checkInvariants, outcomeAcrossOutage, outcomeOf, qemuImgProcessesUnder } from '../support/invariants.js';
import { waitForPhase } from '../support/slow-guest.js';
import { WorkerTest } from '../support/worker-test.js';

const guestName = `vmsnap-test-fw-${process.pid}`;
const t = new WorkerTest('fw', {
  VMSNAP_DEFAULT_MODE: 'cold', // these faults are about a paused guest
  // A lost worker's step moves to another worker after 3 s instead of 10.
  VMSNAP_HEARTBEAT_TIMEOUT_MS: '3000',
});
const { env, workers } = t;

async function waitFor(condition: () => boolean, what: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await sleep(50);
  }
}
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

  it('a worker killed with SIGKILL during the copy: qemu-img dies with it, a new worker completes', async () => {
    const client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    try {
      const first = await workers.start();
      const imageName = `vmsnap-test-${process.pid}-kill-convert`;
      const handle = await startSnapshot(client, { instance: guest.uuid, imageName, compress: true }, env.VMSNAP_TASK_QUEUE);
      await waitForPhase(handle, 'converting');
      await sleep(1000);
      assert.ok(qemuImgProcessesUnder(env.VMSNAP_SNAPSHOTS_DIR).length > 0, 'qemu-img is copying');
      await first.stop('SIGKILL');
      await sleep(500);
      assert.deepEqual(qemuImgProcessesUnder(env.VMSNAP_SNAPSHOTS_DIR), [], 'no orphaned qemu-img');
      assert.equal(await guestState(guestName), 'paused', 'paused by the dead worker, until the new one resumes it');

      await workers.start();
      await completedAndHeld(
        imageName,
        await outcomeOf(handle),
        'worker SIGKILL during convert',
        'copy retried on a new worker after the 3 s heartbeat timeout',
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

  it('a worker stopped with SIGTERM during the upload: it exits at once, and its attempt goes to another worker', async () => {
    const client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    // The first PUT crawls (a slow link), so the upload is surely in flight when the signal comes.
    const proxy = await startFaultProxy(await stackGlanceUrl());
    proxy.setRule({ method: 'PUT', path: /\/file$/, kind: 'stretch', ms: 300_000, times: 1 });
    // The stall watchdog could fire only after 10 minutes, and a lost attempt would be noticed only
    // after a heartbeat timeout of 2 minutes: an exit or a retry sooner is not theirs.
    const slowToNotice = { VMSNAP_GLANCE_URL: proxy.url, VMSNAP_GLANCE_STALL_MS: '600000', VMSNAP_HEARTBEAT_TIMEOUT_MS: '120000' };
    try {
      await workers.killAll();
      const stopped = await workers.start(slowToNotice);
      const imageName = `vmsnap-test-${process.pid}-sigterm-upload`;
      const handle = await startSnapshot(client, { instance: guest.uuid, imageName }, env.VMSNAP_TASK_QUEUE);
      await waitForPhase(handle, 'uploading');
      await waitFor(() => proxy.requests.some((r) => r.method === 'PUT'), 'the PUT reaches Glance');
      await workers.start(slowToNotice);

      const signalled = Date.now();
      stopped.proc.kill('SIGTERM');
      const code = await Promise.race([stopped.exited(), sleep(60_000).then(() => 'still running after 60 s')]);
      const exitMs = Date.now() - signalled;
      assert.equal(code, 0, `the worker exits by itself after SIGTERM (${stopped.lines.slice(-5).join('\n')})`);

      const outcome = await outcomeOf(handle);
      // The stopped worker reported its attempt as failed: the retry did not wait for the heartbeat timeout.
      const history = await handle.fetchHistory();
      const uploads = (history.events ?? []).filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'uploadImage');
      const first = (history.events ?? []).find(
        (e) => e.activityTaskStartedEventAttributes && String(e.activityTaskStartedEventAttributes.scheduledEventId) === String(uploads[0]?.eventId),
      )?.activityTaskStartedEventAttributes;
      assert.ok(Number(first?.attempt) >= 2, 'the upload was tried again');
      const lastFailure = first?.lastFailure;
      assert.ok(
        lastFailure && !lastFailure.timeoutFailureInfo,
        `the attempt was reported by the stopped worker, not timed out: ${JSON.stringify(lastFailure)}`,
      );
      assert.match(lastFailure.message ?? '', /shutting down/);
      // Figures, not bounds: how soon the process was gone, and the next attempt at Glance (after the retry's 1 s backoff).
      const retriedMs = (proxy.requests.find((r) => r.at >= signalled)?.at ?? NaN) - signalled;
      const replaced = ((await handle.describe()).memo?.replacedImageIds as string[] | undefined)?.length ?? 0;
      await completedAndHeld(
        imageName,
        outcome,
        'worker SIGTERM during upload',
        `the worker exited ${exitMs} ms after SIGTERM (stall watchdog at 600 s, heartbeat timeout 120 s); its attempt, reported failed, reached ` +
          `Glance again from another worker ${retriedMs} ms after the signal${replaced ? ' (into a new image record: the first was left saving)' : ''}`,
      );
    } finally {
      await workers.killAll();
      await proxy.close();
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
