// The reconciler on the real stack: a snapshot terminated while the guest is paused (terminate
// runs no compensation) is undone by the next reconcile: guest resumed, task state None, image
// and temp dir gone, a fault recorded. Also: orphan temp dirs, and the schedule itself.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomUUID } from 'node:crypto';
import { guestState, readCounter, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import { reconcileWorkflowId } from '../../src/shared/names.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import { ensureReconcileSchedule } from '../../src/worker/reconcile-schedule.js';
import { startHarness, type Harness } from '../support/harness.js';
import { recordFaultRow } from '../support/fault-report.js';
import { REPLAY_FIXTURES, recordHistory } from '../support/fixtures.js';
import { checkInvariants } from '../support/invariants.js';
import { createSlowGuest, waitForGuestState, waitForPhase } from '../support/slow-guest.js';

const guestName = `vmsnap-test-rec-${process.pid}`;
let h: Harness;
let guest: Guest;

/** Runs the reconciler once; with a fixture path, its history may be recorded there. */
async function reconcileNow(fixture?: string): Promise<ReconcileReport> {
  const handle = await h.client.workflow.start('reconcile', {
    taskQueue: h.config.temporal.taskQueue,
    workflowId: `vmsnap-test-reconcile-${randomUUID()}`,
  });
  const report = (await handle.result()) as ReconcileReport;
  if (fixture) await recordHistory(h.config.temporal.address, { workflowId: handle.workflowId, runId: handle.firstExecutionRunId }, fixture);
  return report;
}

describe('reconciler on the real stack', { timeout: 300_000 }, () => {
  before(async () => {
    // The host's pause watch would resume the guest first: this file is about the reconciler.
    h = await startHarness({ name: 'reconcile', env: { VMSNAP_PAUSE_WATCH_MS: '0' } });
    guest = await createSlowGuest({ name: guestName, guestsDir: h.guestsDir, assetsDir: h.assetsDir, dataMiB: 512 });
  });

  after(async () => {
    await removeGuest(guestName, h.guestsDir).catch(() => undefined);
    await h?.close();
  });

  it('undoes a snapshot terminated while the guest was paused', async () => {
    const handle = await startSnapshot(
      h.client,
      { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-terminated`, compress: true },
      h.config.temporal.taskQueue,
    );
    await waitForPhase(handle, 'converting');
    // The copy's host step pauses the guest itself: wait until it has.
    await waitForGuestState(guestName, 'paused');
    const { imageId } = (await handle.query('progress')) as { imageId: string };
    await handle.terminate('test: a workflow lost mid-snapshot');

    // Terminate ran no compensation: the guest is still paused and the task state held.
    assert.equal(await guestState(guestName), 'paused');
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, 'image_pending_upload');
    assert.ok(await h.glance.getImage(imageId), 'the queued image is still there');

    const started = Date.now();
    const report = await reconcileNow(REPLAY_FIXTURES.reconcile);
    const tookMs = Date.now() - started;
    // The host step learns at its next heartbeat that its run is gone, and resumes the guest as it
    // ends; whichever comes first, it or the reconciler, resumes it (the pause watch is off here).
    assert.ok(report.resumed.length === 0 || report.resumed[0] === guest.uuid, JSON.stringify(report.resumed));
    assert.deepEqual(report.releasedTasks, [guest.uuid]);
    assert.ok(report.deletedImages.includes(imageId));
    assert.deepEqual(report.errors, []);
    assert.ok(tookMs < 30_000, `reconcile took ${tookMs} ms`);

    // The invariants: guest runs and counts, task state None, image gone, temp dir gone, fault.
    assert.equal(await guestState(guestName), 'running');
    const first = await readCounter(guest.diskPath, 'qcow2');
    await sleep(1000);
    assert.ok((await readCounter(guest.diskPath, 'qcow2')).a > first.a, 'counter advances');
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    assert.equal(await h.glance.getImage(imageId), undefined);
    // The killed copy's activity notices the termination at its next heartbeat and cleans up too.
    const deadline = Date.now() + 15_000;
    while (existsSync(join(h.config.snapshotsDir, imageId)) && Date.now() < deadline) await sleep(200);
    assert.ok(!existsSync(join(h.config.snapshotsDir, imageId)), 'temp dir removed');
    const faults = await h.store.listFaults(guest.uuid);
    assert.equal(faults.at(-1)?.code, 'SnapshotAbandoned');
    recordFaultRow({
      fault: 'workflow terminated while the guest was paused',
      outcome: 'Terminated, then SnapshotAbandoned',
      invariants: await checkInvariants({
        store: h.store,
        glanceUrl: h.glanceUrl,
        snapshotsDir: h.config.snapshotsDir,
        guest,
        priorState: 'running',
        imageName: `vmsnap-test-${process.pid}-terminated`,
        expectedOutcome: 'SnapshotAbandoned',
        outcome: 'SnapshotAbandoned',
      }),
      note: `undone by one reconcile run (${tookMs} ms); the schedule runs it every 60 s and at main worker start`,
    });

    // A second round finds nothing left to do.
    const again = await reconcileNow();
    assert.deepEqual([again.resumed, again.releasedTasks, again.deletedImages], [[], [], []]);
  });

  it('thaws a guest whose worker died between freeze and thaw', async () => {
    // The state a worker leaves when it dies mid-quiesce: task state held, a freeze with no thaw.
    const owner = `snapshot-${guest.uuid}/${randomUUID()}`;
    assert.ok(await h.store.compareAndSwapTaskState(guest.uuid, null, 'image_snapshot', owner));
    await h.store.recordEvent({ instanceId: guest.uuid, action: 'createImage', event: 'freeze', requestId: owner, details: {} });
    const report = await reconcileNow();
    assert.deepEqual(report.thawed, [guest.uuid]);
    assert.deepEqual(report.resumed, [], 'it was not paused');
    assert.deepEqual(report.releasedTasks, [guest.uuid]);
    const events = (await h.store.listEvents(guest.uuid)).filter((e) => e.requestId === owner).map((e) => e.event);
    assert.deepEqual(events, ['freeze', 'thaw', 'error']);
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    assert.equal(await guestState(guestName), 'running');
  });

  it('removes orphan temp dirs past the grace period and keeps young ones', async () => {
    const old = randomUUID();
    const young = randomUUID();
    for (const id of [old, young]) mkdirSync(join(h.config.snapshotsDir, id), { recursive: true });
    const hourAgo = new Date(Date.now() - 3600_000);
    utimesSync(join(h.config.snapshotsDir, old), hourAgo, hourAgo);
    const report = await reconcileNow();
    assert.deepEqual(report.removedDirs, [old]);
    assert.deepEqual(readdirSync(h.config.snapshotsDir), [young]);
  });

  it('keeps a schedule that runs the reconciler, and runs it once at once', async () => {
    const scheduleId = reconcileWorkflowId(h.config.temporal.taskQueue);
    try {
      await ensureReconcileSchedule(h.client, h.config.temporal.taskQueue, 60_000);
      await ensureReconcileSchedule(h.client, h.config.temporal.taskQueue, 30_000); // idempotent: updates
      const description = await h.client.schedule.getHandle(scheduleId).describe();
      assert.equal(description.spec.intervals?.[0]?.every, 30_000);
      const deadline = Date.now() + 30_000;
      let ran = false;
      while (!ran && Date.now() < deadline) {
        ran = (await h.client.schedule.getHandle(scheduleId).describe()).info.recentActions.length > 0;
        if (!ran) await sleep(250);
      }
      assert.ok(ran, 'the trigger at start ran the reconciler');
    } finally {
      await h.client.schedule.getHandle(scheduleId).delete();
    }
  });
});
