// The reconciler on the real stack: a snapshot terminated while the guest is paused (terminate
// runs no compensation) is undone by the next reconcile: guest resumed, task state None, image
// and temp dir gone, a fault recorded. Also: orphan temp dirs, and the schedule itself.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomUUID } from 'node:crypto';
import { execa } from 'execa';
import { createGuest, guestState, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { syncInventory } from '../../src/activities/inventory.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import type { Hypervisor } from '../../src/drivers/hypervisor.js';
import { LibvirtHypervisor } from '../../src/drivers/libvirt.js';
import { reconcileWorkflowId } from '../../src/shared/names.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import { ensureReconcileSchedule } from '../../src/worker/reconcile-schedule.js';
import { startHarness, type Harness } from '../support/harness.js';
import { eventually } from '../support/cli.js';
import { evidence, recordFaultRow } from '../support/fault-report.js';
import { REPLAY_FIXTURES, recordHistory } from '../support/fixtures.js';
import { checkInvariants, counterAdvances, outcomeOf } from '../support/invariants.js';
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
    h = await startHarness({
      name: 'reconcile',
      env: { VMSNAP_PAUSE_WATCH_MS: '0' },
      // The real driver; its thaw runs a virsh process per command, which the thaw test sees.
      wrapHypervisor: (real) => {
        const perCommand = new LibvirtHypervisor({ uri: process.env.VMSNAP_LIBVIRT_URI ?? 'qemu:///system', shells: false });
        const observed = Object.create(real) as Hypervisor;
        observed.thawFilesystems = (id) => perCommand.thawFilesystems(id);
        return observed;
      },
    });
    guest = await createSlowGuest({ name: guestName, guestsDir: h.guestsDir, assetsDir: h.assetsDir, dataMiB: 512 });
  });

  after(async () => {
    await removeGuest(guestName, h.guestsDir).catch(() => undefined);
    await h?.close();
  });

  it('undoes a snapshot terminated while the guest was paused', async () => {
    const imageName = `vmsnap-test-${process.pid}-terminated`;
    const handle = await startSnapshot(h.client, { instance: guest.uuid, imageName, compress: true }, h.config.temporal.taskQueue);
    await waitForPhase(handle, 'converting');
    // The copy's host step pauses the guest itself: wait until it has.
    await waitForGuestState(guestName, 'paused');
    const { imageId } = (await handle.query('progress')) as { imageId: string };
    await handle.terminate('test: a workflow lost mid-snapshot');

    // Terminate ran no compensation: the guest is still paused and the task state held.
    const pausedAfter = await guestState(guestName);
    assert.equal(pausedAfter, 'paused');
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, 'image_pending_upload');
    assert.ok(await h.glance.getImage(imageId), 'the queued image is still there');

    const started = Date.now();
    const report = await reconcileNow(REPLAY_FIXTURES.reconcile);
    // A figure for the row's note, not an assertion: how long a round takes depends on the machine.
    const tookMs = Date.now() - started;
    // The host step learns at its next heartbeat that its run is gone, and resumes the guest as it
    // ends; whichever comes first, it or the reconciler, resumes it (the pause watch is off here).
    assert.ok(report.resumed.length === 0 || report.resumed[0] === guest.uuid, JSON.stringify(report.resumed));
    assert.deepEqual(report.releasedTasks, [guest.uuid]);
    assert.ok(report.deletedImages.includes(imageId));
    assert.deepEqual(report.errors, []);

    // The invariants: guest runs and counts, task state None, image gone, temp dir gone, fault.
    assert.equal(await guestState(guestName), 'running');
    assert.ok(await counterAdvances(guest), 'counter advances');
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    assert.equal(await h.glance.getImage(imageId), undefined);
    // The killed copy's activity notices the termination at its next heartbeat and cleans up too.
    const deadline = Date.now() + 15_000;
    while (existsSync(join(h.config.snapshotsDir, imageId)) && Date.now() < deadline) await sleep(200);
    assert.ok(!existsSync(join(h.config.snapshotsDir, imageId)), 'temp dir removed');
    const faults = await h.store.listFaults(guest.uuid);
    assert.equal(faults.at(-1)?.code, 'SnapshotAbandoned');
    const outcome = await outcomeOf(handle);
    recordFaultRow({
      fault: 'workflow terminated while the guest was paused',
      outcome: `${outcome}, then ${faults.at(-1)?.code}`,
      invariants: await checkInvariants({
        store: h.store,
        snapshotsDir: h.config.snapshotsDir,
        guest,
        priorState: 'running',
        image: { name: imageName },
        outcome,
        expectedOutcome: 'Terminated',
        expectedFault: 'SnapshotAbandoned',
      }),
      evidence: [
        evidence(`terminated with the guest ${pausedAfter} in the copy step`, pausedAfter === 'paused'),
        evidence(
          `one reconcile round released the task state of ${report.releasedTasks.join(', ')} and deleted image ${imageId}`,
          report.releasedTasks.includes(guest.uuid) && report.deletedImages.includes(imageId),
        ),
      ],
      note: `undone by one reconcile run (${tookMs} ms); the schedule runs it every 60 s and at main worker start`,
    });

    // A second round finds nothing left to do.
    const again = await reconcileNow();
    assert.deepEqual([again.resumed, again.releasedTasks, again.deletedImages], [[], [], []]);
  });

  it('thaws a guest whose worker died between freeze and thaw', async () => {
    // A guest with a guest agent, so that a thaw reaches something: the test guest's agent has no
    // filesystem it can freeze (its root is an initramfs), so the thaw is seen where it goes out,
    // virsh domfsthaw, and in the agent's answer. On a guest without an agent the driver takes
    // "not configured" for done: that would show here as a failed domfsthaw.
    const agent = await createGuest({ name: `${guestName}-agent`, guestsDir: h.guestsDir, assetsDir: h.assetsDir, guestAgent: true });
    const shim = mkdtempSync(join(tmpdir(), 'vmsnap-test-thaw-shim-'));
    const log = join(shim, 'calls.log');
    const realVirsh = (await execa('sh', ['-c', 'command -v virsh'])).stdout.trim();
    writeFileSync(join(shim, 'virsh'), `#!/bin/sh\n"${realVirsh}" "$@"\nrc=$?\necho "rc=$rc $*" >> '${log}'\nexit $rc\n`, { mode: 0o755 });
    const oldPath = process.env.PATH;
    try {
      await eventually(
        'the guest agent answers',
        async () =>
          (await execa('virsh', ['-c', h.config.libvirtUri, 'qemu-agent-command', agent.name, '{"execute":"guest-ping"}'], { reject: false })).exitCode === 0
            ? true
            : undefined,
        120_000,
        500,
      );
      // The host knows the new guest (discovery, as at a worker's start), then the state a worker
      // leaves when it dies mid-quiesce: task state held, a freeze with no thaw.
      await syncInventory({ hypervisor: h.hypervisor, store: h.store, host: h.config.host });
      const owner = `snapshot-${agent.uuid}/${randomUUID()}`;
      assert.ok(await h.store.compareAndSwapTaskState(agent.uuid, null, 'image_snapshot', owner));
      await h.store.recordEvent({ instanceId: agent.uuid, action: 'createImage', event: 'freeze', requestId: owner, details: {} });
      process.env.PATH = `${shim}:${oldPath ?? ''}`;
      const report = await reconcileNow();
      process.env.PATH = oldPath;
      assert.deepEqual(report.thawed, [agent.uuid]);
      const thaws = readFileSync(log, 'utf8')
        .split('\n')
        .filter((l) => / domfsthaw /.test(l));
      assert.deepEqual(
        thaws.map((l) => l.split(' ')[0]),
        ['rc=0'],
        `one domfsthaw of the guest, answered by its agent: ${thaws.join('; ')}`,
      );
      assert.ok(thaws[0]!.includes(agent.uuid), `${thaws[0]} names ${agent.uuid}`);
      assert.deepEqual(report.resumed, [], 'it was not paused');
      assert.deepEqual(report.releasedTasks, [agent.uuid]);
      const events = (await h.store.listEvents(agent.uuid)).filter((e) => e.requestId === owner).map((e) => e.event);
      assert.deepEqual(events, ['freeze', 'thaw', 'error']);
      assert.equal((await h.store.getInstance(agent.uuid))?.taskState, null);
      assert.equal(await guestState(agent.name), 'running');
    } finally {
      process.env.PATH = oldPath;
      rmSync(shim, { recursive: true, force: true });
      await removeGuest(agent.name, h.guestsDir).catch(() => undefined);
    }
  });

  it('removes orphan temp dirs past the grace period and keeps young ones', async () => {
    const old = randomUUID();
    const young = randomUUID();
    for (const id of [old, young]) mkdirSync(join(h.config.snapshotsDir, id), { recursive: true });
    const hourAgo = new Date(Date.now() - 3600_000);
    utimesSync(join(h.config.snapshotsDir, old), hourAgo, hourAgo);
    const report = await reconcileNow();
    // Only these two are this test's: whatever else is there is not looked at.
    assert.ok(report.removedDirs.includes(old) && !report.removedDirs.includes(young), JSON.stringify(report.removedDirs));
    const left = readdirSync(h.config.snapshotsDir);
    assert.ok(left.includes(young) && !left.includes(old), JSON.stringify(left));
    rmSync(join(h.config.snapshotsDir, young), { recursive: true });
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
