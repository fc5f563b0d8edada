// Glance faults on the real stack, injected by a proxy in front of the real Glance: unreachable
// for a while, answering 5xx, and gone for good (the compensation cannot delete the image; the
// reconciler does once Glance is back).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { createGuest, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import { recordFaultRow } from '../support/fault-report.js';
import { stackGlanceUrl } from '../support/cloud.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { observePause } from '../support/images.js';
import { assertAllHeld, checkRunningGuest, outcomeOf, reconcilerRemovesQueuedImage } from '../support/invariants.js';
import { startHarness, type Harness } from '../support/harness.js';

const guestName = `vmsnap-test-fg-${process.pid}`;
const ALL = /.*/;
let h: Harness;
let proxy: FaultProxy;
let guest: Guest;
/** Runs right after the guest is paused: lets a test make Glance vanish mid-snapshot. */
let afterPause: () => void = () => undefined;

describe('Glance faults on the real stack', { timeout: 300_000 }, () => {
  before(async () => {
    proxy = await startFaultProxy(await stackGlanceUrl());
    h = await startHarness({
      name: 'faults-glance',
      glanceUrl: proxy.url,
      // Retries with backoff, but a budget small enough for a test: 4 attempts within ~4 s.
      env: { VMSNAP_GLANCE_RETRY_ATTEMPTS: '4', VMSNAP_GLANCE_RETRY_INITIAL_MS: '500', VMSNAP_GLANCE_RETRY_MAX_MS: '2000' },
      wrapHypervisor: (real) => observePause(real, async () => afterPause()),
    });
    guest = await createGuest({ name: guestName, guestsDir: h.guestsDir, assetsDir: h.assetsDir });
  });

  after(async () => {
    await removeGuest(guestName, h.guestsDir).catch(() => undefined);
    await h?.close();
    await proxy?.close();
  });

  const check = (imageName: string, outcome: string, expectedOutcome = 'completed') => checkRunningGuest(h, guest, imageName, outcome, expectedOutcome);

  it('Glance unreachable for a while: retried with backoff, the snapshot completes', async () => {
    proxy.setRule({ path: ALL, kind: 'reset' });
    const imageName = `vmsnap-test-${process.pid}-glance-blip`;
    const handle = await startSnapshot(h.client, { instance: guest.uuid, imageName }, h.config.temporal.taskQueue);
    // Glance stays away until it has refused two requests (the first call may come late).
    await proxy.untilReset(2, 60_000);
    proxy.setRule(undefined);
    const outcome = await outcomeOf(handle);
    const invariants = await check(imageName, outcome);
    recordFaultRow({
      fault: 'Glance unreachable for a while',
      outcome,
      invariants,
      note: `${proxy.requests.filter((r) => r.status === 0).length} requests reset, then retried`,
    });
    assert.equal(outcome, 'completed');
    assert.ok(
      proxy.requests.some((r) => r.status === 0),
      'requests were cut while Glance was away',
    );
    assertAllHeld(invariants);
  });

  it('Glance answering 503: retried, the snapshot completes', async () => {
    proxy.requests.length = 0;
    proxy.setRule({ path: ALL, kind: 'status', status: 503, body: 'Service Unavailable', times: 3 });
    const imageName = `vmsnap-test-${process.pid}-glance-503`;
    const outcome = await outcomeOf(await startSnapshot(h.client, { instance: guest.uuid, imageName }, h.config.temporal.taskQueue));
    const invariants = await check(imageName, outcome);
    recordFaultRow({ fault: 'Glance answering 5xx', outcome, invariants, note: '3 answers of 503, then normal' });
    assert.equal(outcome, 'completed');
    assert.equal(proxy.requests.filter((r) => r.status === 503).length, 3);
    assertAllHeld(invariants);
  });

  it('Glance gone for good: compensation, and the reconciler removes the image once Glance is back', async () => {
    proxy.setRule(undefined);
    afterPause = () => proxy.setRule({ path: ALL, kind: 'reset' });
    const imageName = `vmsnap-test-${process.pid}-glance-gone`;
    try {
      const outcome = await outcomeOf(await startSnapshot(h.client, { instance: guest.uuid, imageName }, h.config.temporal.taskQueue));
      assert.equal(outcome, 'ImageServiceUnavailable');
      // While Glance is away nobody can delete the queued image; everything else is undone.
      const during = await check(imageName, outcome, 'ImageServiceUnavailable');
      assert.equal(during['no unfinished image'], false, 'the image could not be deleted yet');
      const { 'no unfinished image': _pending, ...rest } = during;
      assertAllHeld(rest);

      // A reconcile round while Glance is away completes, saying it waits for Glance (it failed).
      const waiting: ReconcileReport = await h.client.workflow.execute('reconcile', {
        taskQueue: h.config.temporal.taskQueue,
        workflowId: `vmsnap-test-reconcile-${randomUUID()}`,
      });
      assert.equal(waiting.waitingFor, 'Glance');
      assert.ok(
        waiting.errors.some((e) => /waiting for Glance/.test(e)),
        waiting.errors.join('\n'),
      );

      afterPause = () => undefined;
      proxy.setRule(undefined);
      await reconcilerRemovesQueuedImage(h, imageName);
      const invariants = await check(imageName, outcome, 'ImageServiceUnavailable');
      recordFaultRow({
        fault: 'Glance gone for good',
        outcome,
        invariants,
        note: 'retries exhausted, compensation; the queued image is removed by the reconciler once Glance answers again',
      });
      assertAllHeld(invariants);
    } finally {
      afterPause = () => undefined;
      proxy.setRule(undefined);
    }
  });
});
