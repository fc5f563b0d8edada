// Glance faults on the real stack, injected by a proxy in front of the real Glance: unreachable
// for a while, answering 5xx, a byte of the upload flipped on its way (Glance keeps other bytes
// than were sent: ImageCorrupt), and gone for good (the compensation cannot delete the image; the
// reconciler does once Glance is back). Each row's evidence is what the proxy saw of its fault.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { createGuest, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import { evidence, recordFaultRow } from '../support/fault-report.js';
import { stackGlanceUrl } from '../support/cloud.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { observePause } from '../support/images.js';
import { assertAllHeld, checkRunningGuest, outcomeOf, reconcilerRemovesQueuedImage } from '../support/invariants.js';
import { findImagesByName } from '../support/images.js';
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
    proxy.requests.length = 0;
    proxy.setRule({ path: ALL, kind: 'reset' });
    const imageName = `vmsnap-test-${process.pid}-glance-blip`;
    const handle = await startSnapshot(h.client, { instance: guest.uuid, imageName }, h.config.temporal.taskQueue);
    // Glance stays away until it has refused two requests (the first call may come late).
    await proxy.untilReset(2, 60_000);
    proxy.setRule(undefined);
    const outcome = await outcomeOf(handle);
    const reset = proxy.requests.filter((r) => r.reset);
    const answeredAfter = proxy.requests.filter((r) => !r.fault && r.status >= 200 && r.status < 300 && r.startedAt > reset.at(-1)!.startedAt);
    recordFaultRow({
      fault: 'Glance unreachable for a while',
      outcome,
      invariants: await check(imageName, outcome),
      evidence: [
        evidence(`${reset.length} requests reset (${[...new Set(reset.map((r) => r.method))].join(', ')})`, reset.length >= 2),
        evidence(`${answeredAfter.length} requests answered after the last reset`, answeredAfter.length > 0),
      ],
    });
  });

  it('Glance answering 503: retried, the snapshot completes', async () => {
    proxy.requests.length = 0;
    proxy.setRule({ path: ALL, kind: 'status', status: 503, body: 'Service Unavailable', times: 3 });
    const imageName = `vmsnap-test-${process.pid}-glance-503`;
    const outcome = await outcomeOf(await startSnapshot(h.client, { instance: guest.uuid, imageName }, h.config.temporal.taskQueue));
    const refused = proxy.requests.filter((r) => r.fault === 'status' && r.status === 503);
    const retried = proxy.requests.filter((r) => !r.fault && r.startedAt > (refused.at(-1)?.startedAt ?? Infinity));
    recordFaultRow({
      fault: 'Glance answering 5xx',
      outcome,
      invariants: await check(imageName, outcome),
      evidence: [
        evidence(`${refused.length} answers of 503 (${refused.map((r) => r.method).join(', ')})`, refused.length === 3),
        evidence(`${retried.length} requests forwarded after them`, retried.length > 0),
      ],
    });
  });

  it('a byte of the upload flipped on its way: Glance keeps other bytes than were sent, ImageCorrupt, the image deleted', async () => {
    proxy.requests.length = 0;
    const atByte = 100_000;
    proxy.setRule({ method: 'PUT', path: /^\/v2\/images\/[^/]+\/file$/, kind: 'flip-request', atByte, times: 1 });
    const imageName = `vmsnap-test-${process.pid}-glance-flipped`;
    const outcome = await outcomeOf(await startSnapshot(h.client, { instance: guest.uuid, imageName }, h.config.temporal.taskQueue));
    proxy.setRule(undefined);
    const flipped = proxy.requests.filter((r) => r.fault === 'flip-request');
    const faults = await h.store.listFaults(guest.uuid);
    recordFaultRow({
      fault: 'a byte of the upload flipped on its way to Glance',
      outcome,
      invariants: await check(imageName, outcome, 'ImageCorrupt'),
      evidence: [
        evidence(
          `PUT with byte ${atByte} flipped: ${flipped[0]?.bytesIn ?? 0} bytes went to Glance, which answered ${flipped[0]?.status}`,
          flipped.length === 1 && flipped[0]!.bytesIn > atByte && flipped[0]!.status === 204,
        ),
      ],
    });
    assert.match(faults.at(-1)?.message ?? '', /sha512 differs/, 'the fault says what differed');
    assert.deepEqual(await findImagesByName(h.glanceUrl, imageName), [], 'the corrupt image is deleted');
    assert.equal(proxy.requests.filter((r) => r.method === 'PUT').length, 1, 'ImageCorrupt is not retried');
  });

  it('Glance gone for good: compensation, and the reconciler removes the image once Glance is back', async () => {
    proxy.setRule(undefined);
    proxy.requests.length = 0;
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
      const reset = proxy.requests.filter((r) => r.reset);
      const answered = proxy.requests.filter((r) => !r.fault && r.status > 0 && r.startedAt > (reset[0]?.startedAt ?? Infinity));
      proxy.setRule(undefined);
      await reconcilerRemovesQueuedImage(h, imageName);
      recordFaultRow({
        fault: 'Glance gone for good',
        outcome,
        invariants: await check(imageName, outcome, 'ImageServiceUnavailable'),
        evidence: [
          evidence(`${reset.length} requests reset from the pause on, ${answered.length} answered`, reset.length > 0 && answered.length === 0),
          evidence(`a reconcile round while Glance was away: waiting for ${waiting.waitingFor}`, waiting.waitingFor === 'Glance'),
        ],
        note: 'retries exhausted, compensation; the queued image is removed by the reconciler once Glance answers again',
      });
    } finally {
      afterPause = () => undefined;
      proxy.setRule(undefined);
    }
  });
});
