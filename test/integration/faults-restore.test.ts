// Faults around a restore, on the real stack with real worker processes: a worker killed with
// SIGKILL during the download and while the guest is being stopped for the swap (a new worker
// takes over after the heartbeat timeout), and a restore terminated mid-way (the reconciler
// heals it). A guest with 256 MiB of data makes the download last long enough to hit.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, Connection } from '@temporalio/client';
import { guestState, readCounter, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { restoreFiles } from '../../src/activities/restore.js';
import { startRestore } from '../../src/client/restores.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import { testCloud } from '../support/cloud.js';
import { recordFaultRow } from '../support/fault-report.js';
import type { Invariants } from '../support/invariants.js';
import { createSlowGuest, waitForPhase } from '../support/slow-guest.js';
import { startWorkerProcess, type WorkerProcess } from '../support/worker-process.js';

const dataDir = process.env.VMSNAP_DATA_DIR ?? '.data/test';
const guestName = `vmsnap-test-fr-${process.pid}`;
const dir = mkdtempSync(join(tmpdir(), 'vmsnap-faults-restore-'));
const env = {
  VMSNAP_HOST: `test-fr-${process.pid}`,
  VMSNAP_TASK_QUEUE: `vmsnap-test-fr-${process.pid}`,
  VMSNAP_STORE_PATH: join(dir, 'vmsnap.sqlite'),
  VMSNAP_DEFAULT_MODE: 'cold',
  VMSNAP_SNAPSHOTS_DIR: join(dir, 'snapshots'),
  // Short enough to take over soon, long enough for a loaded 2-CPU host's heartbeats.
  VMSNAP_HEARTBEAT_TIMEOUT_MS: '6000',
  VMSNAP_RECONCILE_INTERVAL_MS: '0',
  VMSNAP_METRICS_ADDRESS: 'off',
  // The guest ignores ACPI: the stop waits this long, then destroys. Long enough to hit.
  VMSNAP_RESTORE_SHUTDOWN_TIMEOUT_MS: '4000',
};
let guest: Guest;
let store: SqliteStore;
let client: Client;
let imageId: string;
const workers: WorkerProcess[] = [];

async function startWorker(): Promise<WorkerProcess> {
  const w = startWorkerProcess(env);
  workers.push(w);
  await w.waitForLine(/vmsnap worker started/);
  return w;
}

async function killAll(): Promise<void> {
  for (const w of workers) await w.stop('SIGKILL');
}

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

function allHeld(inv: Invariants): void {
  assert.deepEqual(
    Object.values(inv),
    Object.values(inv).map(() => true),
    JSON.stringify(inv),
  );
}

describe('restore faults on the real stack', { timeout: 900_000 }, () => {
  before(async () => {
    guest = await createSlowGuest({
      name: guestName,
      guestsDir: join(dataDir, 'guests'),
      assetsDir: join(dataDir, 'guest-assets'),
      dataMiB: 256,
    });
    store = new SqliteStore(env.VMSNAP_STORE_PATH);
    await store.migrate();
    client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    await startWorker();
    const snap = await startSnapshot(client, { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-fr` }, env.VMSNAP_TASK_QUEUE);
    imageId = (await snap.result()).imageId;
  });

  after(async () => {
    await killAll();
    await (await testCloud()).imageService.deleteImage(imageId).catch(() => undefined);
    await client?.connection.close();
    await store?.close();
    await removeGuest(guestName, join(dataDir, 'guests')).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  it('a worker killed with SIGKILL during the download: a new worker downloads again and completes', async () => {
    const first = workers.at(-1)!;
    const handle = await startRestore(client, { instance: guest.uuid, imageId }, env.VMSNAP_TASK_QUEUE);
    await waitForPhase(handle, 'downloading');
    await sleep(300);
    await first.stop('SIGKILL');
    assert.equal(await guestState(guestName), 'running', 'the guest runs on while nobody downloads');
    await startWorker();
    const result = await handle.result();
    const inv = await invariants(true);
    recordFaultRow({
      fault: 'restore: worker SIGKILL during download',
      outcome: 'completed',
      invariants: inv,
      note: `download retried from byte 0 on a new worker after the 6 s heartbeat timeout; downtime ${result.downtimeMs} ms`,
    });
    allHeld(inv);
  });

  it('a worker killed with SIGKILL while the guest stops for the swap: a new worker finishes the restore', async () => {
    await killAll();
    const first = await startWorker();
    const handle = await startRestore(client, { instance: guest.uuid, imageId }, env.VMSNAP_TASK_QUEUE);
    await waitForPhase(handle, 'stopping', 300_000);
    await sleep(500);
    await first.stop('SIGKILL');
    await startWorker();
    const result = await handle.result();
    const inv = await invariants(true);
    recordFaultRow({
      fault: 'restore: worker SIGKILL during the stop and swap',
      outcome: 'completed',
      invariants: inv,
      note: `stop, swap and start retried on a new worker; pre-restore disk kept: ${existsSync(result.preRestorePath ?? '')}`,
    });
    allHeld(inv);
    assert.ok(existsSync(restoreFiles(guest.diskPath).preRestore));
  });

  it('a restore terminated while the guest stops: the reconciler starts the guest again on a disk that is whole', async () => {
    await killAll();
    await startWorker();
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
    allHeld(inv);
  });
});
