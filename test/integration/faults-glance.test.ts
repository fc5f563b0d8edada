// Glance faults on the real stack, injected by a proxy in front of the real Glance: unreachable
// for a while, answering 5xx, a byte of the upload flipped on its way (Glance keeps other bytes
// than were sent: ImageCorrupt), and gone for good (the compensation cannot delete the image; the
// reconciler does once Glance is back). Each row's evidence is what the proxy saw of its fault.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { createGuest, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { startSnapshot } from '../../src/client/snapshots.js';
import { IMAGE_ID } from '../../src/shared/search-attributes.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import { evidence, recordFaultRow } from '../support/fault-report.js';
import { stackGlanceUrl } from '../support/cloud.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { findImagesByName, observePause } from '../support/images.js';
import { assertAllHeld, checkRunningGuest, outcomeOf } from '../support/invariants.js';
import { startHarness, type Harness } from '../support/harness.js';

const guestName = `vmsnap-test-fg-${process.pid}`;
const ALL = /.*/;
let h: Harness;
let proxy: FaultProxy;
let guest: Guest;
/** Runs right after the guest is paused: lets a test make Glance vanish mid-snapshot. */
let afterPause: () => void = () => undefined;

/** A Temporal timestamp in milliseconds. */
function millis(time: { seconds?: unknown; nanos?: number | null } | null | undefined): number {
  return Number(time?.seconds ?? 0) * 1000 + Math.round((time?.nanos ?? 0) / 1e6);
}

/**
 * From a failed snapshot's history: how many attempts the compensation's delete of the image made,
 * and how long after the upload's last attempt failed the task state was released (the local
 * activity's marker, recorded when the workflow task that ran it completed: an upper bound).
 */
async function compensationAfterUpload(handle: WorkflowHandle): Promise<{ deleteAttempts: number; releasedAfterMs: number }> {
  const events = (await handle.fetchHistory()).events ?? [];
  const scheduledAs = (id: unknown) => events.find((e) => String(e.eventId) === String(id))?.activityTaskScheduledEventAttributes?.activityType?.name;
  const uploadFailed = events.find(
    (e) => e.activityTaskFailedEventAttributes && scheduledAs(e.activityTaskFailedEventAttributes.scheduledEventId) === 'uploadImage',
  );
  const deleteStarted = events.find(
    (e) => e.activityTaskStartedEventAttributes && scheduledAs(e.activityTaskStartedEventAttributes.scheduledEventId) === 'deleteImageRecord',
  );
  // A local activity's marker names its activity type in its details' payloads (JSON).
  const released = events.find((e) =>
    Object.values(e.markerRecordedEventAttributes?.details ?? {}).some((d) =>
      (d.payloads ?? []).some((p) =>
        Buffer.from(p.data ?? [])
          .toString()
          .includes('"releaseTaskState"'),
      ),
    ),
  );
  assert.ok(uploadFailed && deleteStarted && released, 'the upload failed, then the delete ran, then the task state was released');
  assert.ok(Number(uploadFailed.eventId) < Number(deleteStarted.eventId) && Number(deleteStarted.eventId) < Number(released.eventId), 'in that order');
  return {
    deleteAttempts: Number(deleteStarted.activityTaskStartedEventAttributes?.attempt),
    releasedAfterMs: millis(released.eventTime) - millis(uploadFailed.eventTime),
  };
}

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

  it('a retried upload finds its image still saving (Glance holds a cut-off PUT): a new record, the stuck one deleted, the snapshot completes', async () => {
    proxy.requests.length = 0;
    // The first PUT dies on the client's side only: Glance goes on waiting for its bytes, image saving.
    proxy.setRule({ method: 'PUT', path: /\/file$/, kind: 'hold', afterBytes: 65536, times: 1 });
    const imageName = `vmsnap-test-${process.pid}-glance-stuck`;
    try {
      const handle = await startSnapshot(h.client, { instance: guest.uuid, imageName }, h.config.temporal.taskQueue);
      const outcome = await outcomeOf(handle);
      const invariants = await check(imageName, outcome);
      const puts = proxy.requests.filter((r) => r.method === 'PUT');
      const stuckId = /\/v2\/images\/([^/]+)\/file/.exec(puts[0]?.path ?? '')?.[1];
      const result = (await handle.result()) as { imageId: string };
      const described = await handle.describe();
      recordFaultRow({
        fault: 'Glance holds a cut-off upload (image stuck saving)',
        outcome,
        invariants,
        evidence: [
          evidence(`the first PUT was cut after ${puts[0]?.bytesIn ?? 0} bytes, Glance's side held open`, puts[0]?.reset === true),
          evidence(`the retried upload step failed ImageStuck, then ${puts.length - 1} PUT(s) of a new record`, puts.length >= 2 && stuckId !== result.imageId),
        ],
        note: `the retry found the image saving: a new record ${result.imageId.slice(0, 8)} replaced it at once, the stuck one was deleted`,
      });
      assert.equal(outcome, 'completed');
      assert.ok(stuckId, 'the first PUT went through the proxy');
      assert.equal(puts[0]?.status, 0, 'the first PUT was cut');
      assert.notEqual(result.imageId, stuckId, 'the snapshot went on with a new image');
      assert.equal(puts.at(-1)?.path, `/v2/images/${result.imageId}/file`);
      // The first upload step ended ImageStuck (not after its retries ran out).
      const history = await handle.fetchHistory();
      const failed = (history.events ?? []).map((e) => e.activityTaskFailedEventAttributes?.failure).filter((f) => f);
      assert.deepEqual(
        failed.map((f) => f?.cause?.applicationFailureInfo?.type ?? f?.applicationFailureInfo?.type),
        ['ImageStuck'],
      );
      assert.equal(await h.glance.getImage(stuckId), undefined, 'the stuck image is deleted');
      assert.equal(described.typedSearchAttributes.get(IMAGE_ID), result.imageId);
      assert.equal(described.memo?.imageId, result.imageId);
      assert.deepEqual(described.memo?.replacedImageIds, [stuckId]);
      assertAllHeld(invariants);
    } finally {
      proxy.setRule(undefined);
      proxy.releaseHeld();
    }
  });

  it('Glance gone for good: compensation lets go at once, the failure names the upload, and the sweep removes the image once Glance is back', async () => {
    proxy.setRule(undefined);
    proxy.requests.length = 0;
    afterPause = () => proxy.setRule({ path: ALL, kind: 'reset' });
    const imageName = `vmsnap-test-${process.pid}-glance-gone`;
    try {
      const handle = await startSnapshot(h.client, { instance: guest.uuid, imageName }, h.config.temporal.taskQueue);
      const failure = await handle.result().then(
        () => assert.fail('the snapshot should have failed'),
        (err: unknown) => err,
      );
      const outcome = await outcomeOf(handle);
      assert.equal(outcome, 'ImageServiceUnavailable');
      // From the history: the compensation tried the delete once, then let go of the task state.
      const { deleteAttempts, releasedAfterMs } = await compensationAfterUpload(handle);
      assert.equal(deleteAttempts, 1, 'the delete that cannot succeed is not retried');

      // The failure is the upload's, said as final: which step, that its attempts are used up, no "can be retried".
      const message = failure instanceof WorkflowFailedError ? (failure.cause?.message ?? '') : String(failure);
      assert.match(message, /^upload to Glance gave up after 4 attempts: Glance (GET|PUT) \/v2\/images\//);
      assert.doesNotMatch(message, /can be retried|retry shortly/i);

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
      // What the sweep goes by: the image is tagged vmsnap and made by this run, which is closed.
      const [left] = await findImagesByName(h.glanceUrl, imageName);
      const image = await h.glance.getImage(left?.id ?? '');
      assert.ok((image?.tags as string[] | undefined)?.includes('vmsnap'), 'tagged vmsnap');
      assert.equal(image?.vmsnap_request_id, `${handle.workflowId}/${(await handle.describe()).runId}`);
      assert.equal(image?.status, 'queued');
      const swept: ReconcileReport = await h.client.workflow.execute('reconcile', {
        taskQueue: h.config.temporal.taskQueue,
        workflowId: `vmsnap-test-reconcile-${randomUUID()}`,
      });
      assert.deepEqual(
        swept.sweptImages.filter((i) => i.imageId === image?.id).map((i) => i.reason),
        ['queued, its run ended without completing'],
      );
      const invariants = await check(imageName, outcome, 'ImageServiceUnavailable');
      recordFaultRow({
        fault: 'Glance gone for good',
        outcome,
        invariants,
        evidence: [
          evidence(`${reset.length} requests reset from the pause on, ${answered.length} answered`, reset.length > 0 && answered.length === 0),
          evidence(`a reconcile round while Glance was away: waiting for ${waiting.waitingFor}`, waiting.waitingFor === 'Glance'),
          evidence(`the delete tried ${deleteAttempts} time(s), then the task state was released`, deleteAttempts === 1),
        ],
        note:
          `the upload's 4 attempts, then one try of the delete: task state released ${(releasedAfterMs / 1000).toFixed(1)} s after the last ` +
          'upload attempt; the queued image is swept by the reconciler once Glance answers again',
      });
    } finally {
      afterPause = () => undefined;
      proxy.setRule(undefined);
    }
  });
});
