// Faults around a restore, on the real stack with real worker processes: a worker killed with
// SIGKILL during the download and while the guest is being stopped for the swap (a new worker
// takes over after the heartbeat timeout), and a restore terminated mid-way (the reconciler
// heals it). A guest with 256 MiB of data makes the download last long enough to hit.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { guestState, readCounter, type Guest } from '../../scripts/lib/guest.js';
import { restoreFiles } from '../../src/activities/restore-files.js';
import { startRestore } from '../../src/client/restores.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import type { SqliteStore } from '../../src/store/sqlite.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import { eventually } from '../support/cli.js';
import { closeTestCloud, stackGlanceUrl, testCloud } from '../support/cloud.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { evidence, recordFaultRow } from '../support/fault-report.js';
import { onlyActivityRun } from '../support/history.js';
import { checkInvariants, outcomeOf, type Invariants } from '../support/invariants.js';
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
/** In front of Glance for the workers: it shows how far a download had come. */
let proxy: FaultProxy;
const DOWNLOAD = /^\/v2\/images\/[^/]+\/file$/;
// Debug logs: they say when a step ended, which the terminated restore waits for.
const startWorker = () => workers.start({ VMSNAP_GLANCE_URL: proxy.url, VMSNAP_LOG_LEVEL: 'DEBUG' });

/** The invariants of a restore: guest running and counting, task state None, nothing beside the disk, the image untouched. */
function invariants(outcome: string, expectedOutcome: string, expectedFault?: string): Promise<Invariants> {
  const files = restoreFiles(guest.diskPath);
  return checkInvariants({
    store,
    guest,
    priorState: 'running',
    outcome,
    expectedOutcome,
    ...(expectedFault ? { expectedFault } : {}),
    image: { id: imageId },
    leftovers: [files.download, files.restored],
  });
}

/** The run's events in the store (stop, started, ...), as its host step records them under the run's id. */
async function eventsOf(handle: { workflowId: string; firstExecutionRunId: string }): Promise<string[]> {
  const owner = `${handle.workflowId}/${handle.firstExecutionRunId}`;
  return (await store.listEvents(guest.uuid)).filter((e) => e.requestId === owner).map((e) => e.event);
}

describe('restore faults on the real stack', { timeout: 900_000 }, () => {
  before(async () => {
    ({ guest, store } = await t.setUp(guestName, 256));
    proxy = await startFaultProxy(await stackGlanceUrl());
    client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
    await startWorker();
    const snap = await startSnapshot(client, { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-fr` }, env.VMSNAP_TASK_QUEUE);
    imageId = (await snap.result()).imageId;
  });

  after(async () => {
    await workers.killAll();
    await client?.connection.close();
    await t.tearDown();
    await proxy?.close();
    await closeTestCloud();
  });

  it('a worker killed with SIGKILL during the download: a new worker downloads again and completes', async () => {
    const first = workers.all.at(-1)!;
    proxy.requests.length = 0;
    const size = (await (await testCloud()).imageService.getImage(imageId))!.size!;
    const handle = await startRestore(client, { instance: guest.uuid, imageId }, env.VMSNAP_TASK_QUEUE);
    const download = await proxy.until('a download under way', (r) => r.method === 'GET' && DOWNLOAD.test(r.path) && r.bytesOut > 0, 300_000);
    const killedAt = Date.now();
    const receivedAtKill = download.bytesOut;
    const endedBeforeKill = download.endedAt !== undefined;
    await first.stop('SIGKILL');
    assert.equal(await guestState(guestName), 'running', 'the guest runs on while nobody downloads');
    await startWorker();
    const outcome = await outcomeOf(handle);
    const again = proxy.requests.filter((r) => r.method === 'GET' && DOWNLOAD.test(r.path) && r.startedAt > killedAt);
    const step = onlyActivityRun(await handle.fetchHistory(), 'prepareRestoreImage');
    recordFaultRow({
      fault: 'restore: worker SIGKILL during download',
      outcome,
      invariants: await invariants(outcome, 'completed'),
      evidence: [
        evidence(`SIGKILL with ${receivedAtKill} of ${size} bytes downloaded`, !endedBeforeKill && receivedAtKill < size),
        evidence(
          `downloaded again after the kill: ${again.map((r) => `${r.bytesOut} bytes, ${r.complete ? 'complete' : 'cut'}`).join('; ')}`,
          again.some((r) => r.complete && r.bytesOut === size),
        ),
        evidence(`the download step completed on attempt ${step.attempt}`, step.ended === 'completed' && (step.attempt ?? 0) >= 2),
      ],
      note: 'the new worker takes over after the 6 s heartbeat timeout and downloads from byte 0',
    });
  });

  it('a worker killed with SIGKILL while the guest stops for the swap: a new worker finishes the restore', async () => {
    await workers.killAll();
    const first = await startWorker();
    const handle = await startRestore(client, { instance: guest.uuid, imageId }, env.VMSNAP_TASK_QUEUE);
    // The host step has begun the stop (its event is recorded just before it asks the guest to
    // shut down, which the guest ignores for 4 s) and has not started the guest again.
    const atKill = await eventually('the stop under way', async () => ((await eventsOf(handle)).includes('stop') ? eventsOf(handle) : undefined), 300_000, 100);
    await first.stop('SIGKILL');
    await startWorker();
    const result = await handle.result();
    const step = onlyActivityRun(await handle.fetchHistory(), 'stopSwapStart');
    recordFaultRow({
      fault: 'restore: worker SIGKILL during the stop and swap',
      outcome: 'completed',
      invariants: await invariants('completed', 'completed'),
      evidence: [
        evidence(`SIGKILL with the run's events at ${atKill.join(', ')}`, atKill.includes('stop') && !atKill.includes('started')),
        evidence(`stop, swap and start completed on attempt ${step.attempt}`, step.ended === 'completed' && (step.attempt ?? 0) >= 2),
        evidence(`pre-restore disk kept: ${existsSync(result.preRestorePath ?? '')}`, existsSync(restoreFiles(guest.diskPath).preRestore)),
      ],
    });
  });

  it('a restore terminated while the guest stops: the reconciler starts the guest again on a disk that is whole', async () => {
    await workers.killAll();
    const worker = await startWorker();
    const before = (await readCounter(guest.diskPath, 'qcow2')).a;
    const handle = await startRestore(client, { instance: guest.uuid, imageId }, env.VMSNAP_TASK_QUEUE);
    await waitForPhase(handle, 'stopping', 300_000);
    const atTerminate = await eventually(
      'the stop under way',
      async () => ((await eventsOf(handle)).includes('stop') ? eventsOf(handle) : undefined),
      300_000,
      100,
    );
    await handle.terminate('test: a restore lost mid-way');
    // The stop already running ends on its own: it learns at a heartbeat that its run is gone.
    const ended = await worker.waitForLine(/"message":"Activity (completed|failed)[^"]*".*"activityType":"stopSwapStart"/, 60_000);
    const report: ReconcileReport = await client.workflow.execute('reconcile', {
      taskQueue: env.VMSNAP_TASK_QUEUE,
      workflowId: `vmsnap-test-reconcile-${randomUUID()}`,
    });
    assert.deepEqual(report.undoneRestores, [guest.uuid], JSON.stringify(report));
    assert.equal(await guestState(guestName), 'running');
    const now = (await readCounter(guest.diskPath, 'qcow2')).a;
    assert.ok(now >= before, `the guest runs on its previous disk (${now} >= ${before})`);
    const outcome = await outcomeOf(handle);
    recordFaultRow({
      fault: 'restore: workflow terminated while the guest stops',
      outcome: `${outcome}, reconciled`,
      invariants: await invariants(outcome, 'Terminated', 'RestoreAbandoned'),
      evidence: [
        evidence(`terminated with the run's events at ${atTerminate.join(', ')}`, atTerminate.includes('stop') && !atTerminate.includes('started')),
        evidence(`the stop step then ended by itself: ${(JSON.parse(ended) as { message: string }).message}`, true),
        evidence(`the reconciler undid the restore of ${report.undoneRestores.join(', ')}`, report.undoneRestores.includes(guest.uuid)),
      ],
      note: 'the reconciler removed the new files; the guest runs on its previous disk',
    });
  });
});
