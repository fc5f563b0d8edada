// Faults around a restore, on the real stack with real worker processes: a worker killed with
// SIGKILL during the download and while the guest is being stopped for the swap (a new worker
// takes over after the heartbeat timeout), and a restore terminated mid-way (the reconciler
// heals it). A guest with 256 MiB of data makes the download last long enough to hit.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, Connection } from '@temporalio/client';
import { guestState, readCounter, type Guest } from '../../scripts/lib/guest.js';
import { restoreFiles } from '../../src/activities/restore-files.js';
import { startRestore } from '../../src/client/restores.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import type { SqliteStore } from '../../src/store/sqlite.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import { testCloud } from '../support/cloud.js';
import { recordFaultRow } from '../support/fault-report.js';
import { assertAllHeld, type Invariants } from '../support/invariants.js';
import { waitForPhase } from '../support/slow-guest.js';
import { WorkerTest } from '../support/worker-test.js';

const guestName = `vmsnap-test-fr-${process.pid}`;
const t = new WorkerTest('fr', {
  VMSNAP_DEFAULT_MODE: 'cold',
  // Short enough to take over soon, long enough for a loaded 2-CPU host's heartbeats.
  VMSNAP_HEARTBEAT_TIMEOUT_MS: '6000',
  // The guest ignores ACPI: the stop waits this long, then destroys. Long enough to hit.
  VMSNAP_RESTORE_SHUTDOWN_TIMEOUT_MS: '4000',
});
const { env, workers } = t;
let guest: Guest;
let store: SqliteStore;
let client: Client;
let imageId: string;

async function counting(): Promise<boolean> {
  const first = (await readCounter(guest.diskPath, 'qcow2')).a;
  const deadline = Date.now() + 90_000;
  while (Date.now() < deadline) {
    if ((await readCounter(guest.diskPath, 'qcow2')).a > first) return true;
    await sleep(250);
  }
  return false;
}

async function invariants(outcomeAsExpected: boolean): Promise<Invariants> {
  const files = restoreFiles(guest.diskPath);
  const image = await (await testCloud()).imageService.getImage(imageId);
  return {
    'prior power state': (await guestState(guestName)) === 'running' && (await counting()),
    'task state None': (await store.getInstance(guest.uuid))?.taskState === null,
    'no temp files': !existsSync(files.download) && !existsSync(files.restored),
    'no unfinished image': image?.status === 'active',
    'outcome and fault': outcomeAsExpected,
  };
}

describe('restore faults on the real stack', { timeout: 900_000 }, () => {
  before(async () => {
    ({ guest, store } = await t.setUp(guestName, 256));
    client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    await workers.start();
    const snap = await startSnapshot(client, { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-fr` }, env.VMSNAP_TASK_QUEUE);
    imageId = (await snap.result()).imageId;
  });

  after(async () => {
    await workers.killAll();
    await (await testCloud()).imageService.deleteImage(imageId).catch(() => undefined);
    await client?.connection.close();
    await t.tearDown();
  });

  it('a worker killed with SIGKILL during the download: a new worker downloads again and completes', async () => {
    const first = workers.all.at(-1)!;
    const handle = await startRestore(client, { instance: guest.uuid, imageId }, env.VMSNAP_TASK_QUEUE);
    await waitForPhase(handle, 'downloading');
    await sleep(300);
    await first.stop('SIGKILL');
    assert.equal(await guestState(guestName), 'running', 'the guest runs on while nobody downloads');
    await workers.start();
    const result = await handle.result();
    const inv = await invariants(true);
    recordFaultRow({
      fault: 'restore: worker SIGKILL during download',
      outcome: 'completed',
      invariants: inv,
      note: `download retried from byte 0 on a new worker after the 6 s heartbeat timeout; downtime ${result.downtimeMs} ms`,
    });
    assertAllHeld(inv);
  });

  it('a worker killed with SIGKILL while the guest stops for the swap: a new worker finishes the restore', async () => {
    await workers.killAll();
    const first = await workers.start();
    const handle = await startRestore(client, { instance: guest.uuid, imageId }, env.VMSNAP_TASK_QUEUE);
    await waitForPhase(handle, 'stopping', 300_000);
    await sleep(500);
    await first.stop('SIGKILL');
    await workers.start();
    const result = await handle.result();
    const inv = await invariants(true);
    recordFaultRow({
      fault: 'restore: worker SIGKILL during the stop and swap',
      outcome: 'completed',
      invariants: inv,
      note: `stop, swap and start retried on a new worker; pre-restore disk kept: ${existsSync(result.preRestorePath ?? '')}`,
    });
    assertAllHeld(inv);
    assert.ok(existsSync(restoreFiles(guest.diskPath).preRestore));
  });

  it('a restore terminated while the guest stops: the reconciler starts the guest again on a disk that is whole', async () => {
    await workers.killAll();
    await workers.start();
    const before = (await readCounter(guest.diskPath, 'qcow2')).a;
    const handle = await startRestore(client, { instance: guest.uuid, imageId }, env.VMSNAP_TASK_QUEUE);
    await waitForPhase(handle, 'stopping', 300_000);
    await handle.terminate('test: a restore lost mid-way');
    // The stop already running ends on its own (destroy after the shutdown timeout).
    await sleep(6000);
    const report: ReconcileReport = await client.workflow.execute('reconcile', {
      taskQueue: env.VMSNAP_TASK_QUEUE,
      workflowId: `vmsnap-test-reconcile-${randomUUID()}`,
    });
    assert.deepEqual(report.undoneRestores, [guest.uuid], JSON.stringify(report));
    assert.equal(await guestState(guestName), 'running');
    const now = (await readCounter(guest.diskPath, 'qcow2')).a;
    assert.ok(now >= before, `the guest runs on its previous disk (${now} >= ${before})`);
    const faults = await store.listFaults(guest.uuid);
    assert.equal(faults.at(-1)?.code, 'RestoreAbandoned');
    const inv = await invariants(true);
    recordFaultRow({
      fault: 'restore: workflow terminated while the guest stops',
      outcome: 'terminated, reconciled',
      invariants: inv,
      note: 'the stop gave up at its next heartbeat; the reconciler removed the new files; the guest runs on its previous disk',
    });
    assertAllHeld(inv);
  });
});
