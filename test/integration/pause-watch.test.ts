// A snapshot terminated while its guest is paused (terminate runs no compensation): the host
// worker resumes the guest by itself, without the reconciler (none runs here until the test runs
// it); the CLI that followed the snapshot says so. The reconciler then undoes the rest (image,
// task state) and finds the guest already running.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { snapshotWorkflowId } from '../../src/shared/names.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import { deleteImages, eventually, stopLeftoverSnapshots, vmsnapRunning } from '../support/cli.js';
import { startHarness, type Harness } from '../support/harness.js';
import { counterAdvances } from '../support/invariants.js';
import { createSlowGuest, waitForGuestState, waitForPhase } from '../support/slow-guest.js';

const guestName = `vmsnap-test-pw-${process.pid}`;
let h: Harness;
let guest: Guest;
const images = new Set<string>();

describe('host pause watch on the real stack', { timeout: 300_000 }, () => {
  before(async () => {
    // The harness keeps no reconcile schedule: only the host worker's own watch can resume.
    h = await startHarness({ name: 'pausewatch' });
    guest = await createSlowGuest({ name: guestName, guestsDir: h.guestsDir, assetsDir: h.assetsDir, dataMiB: 512 });
  });

  after(async () => {
    if (h) await stopLeftoverSnapshots(h);
    await removeGuest(guestName, h.guestsDir).catch(() => undefined);
    if (h) await deleteImages(h, images);
    await h?.close();
  });

  it('resumes the guest of a terminated snapshot by itself, before any reconciler, and the CLI says it will run again', async (t) => {
    const run = vmsnapRunning(h, ['snapshot', guest.uuid, '--name', `vmsnap-test-pw-${process.pid}`, '--mode', 'cold', '--compress', '--wait']);
    try {
      const handle = h.client.workflow.getHandle(snapshotWorkflowId(guest.uuid));
      await waitForPhase(handle, 'converting');
      const { imageId } = (await handle.query('progress')) as { imageId: string };
      images.add(imageId);
      // The copy's host step pauses the guest itself: wait until it has, and until the CLI has
      // seen the copy (what it says at the end names the phase it saw last).
      await waitForGuestState(guestName, 'paused');
      await eventually('the CLI following the copy', async () => (/\bconverting\b/.test(run.output().stdout) ? true : undefined), 120_000, 200);
      const owner = (await h.store.getInstance(guest.uuid))?.taskOwner;
      await handle.terminate('test: a snapshot terminated while the guest is paused');
      const terminatedAt = Date.now();
      // No reconciler runs until the test runs one: only the host worker can resume the guest.
      await waitForGuestState(guestName, 'running', 120_000);
      t.diagnostic(`the guest ran again ${Date.now() - terminatedAt} ms after the terminate`);
      // The resume is recorded under the terminated run, after its pause.
      const events = (await h.store.listEvents(guest.uuid)).filter((e) => e.requestId === owner).map((e) => e.event);
      assert.equal(events.at(-1), 'resume', JSON.stringify(events));
      assert.ok(events.lastIndexOf('pause') < events.lastIndexOf('resume'));
      assert.ok(await counterAdvances(guest), 'counter advances');

      const ended = await run.proc;
      assert.equal(ended.exitCode, 1);
      assert.match(
        run.output().stderr,
        /^vmsnap: the snapshot workflow was terminated while the guest was paused \(phase (pausing|converting)\): its host worker resumes it within seconds/m,
      );

      // The reconciler finds the resume recorded and undoes the rest.
      const report: ReconcileReport = await h.client.workflow.execute('reconcile', {
        taskQueue: h.config.temporal.taskQueue,
        workflowId: `vmsnap-test-reconcile-${randomUUID()}`,
      });
      assert.deepEqual(report.resumed, [], 'already resumed by the host');
      assert.deepEqual(report.releasedTasks, [guest.uuid]);
      assert.ok(report.deletedImages.includes(imageId));
      assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    } finally {
      run.proc.kill();
    }
  });
});
