// Compensation on the real stack: Glance refuses the image data for good (413, as its size cap
// answers), injected by a proxy in front of the real Glance. Afterwards the guest runs, the image
// is gone, the task state is None, no temp file is left and a fault is recorded. In cold mode the
// copy step resumed the guest before the upload, so the compensation has no resume to do: the test
// shows that order and which undo steps ran. (The compensation's own resume, after a worker died
// with the guest paused, is in faults-worker.test.ts.)
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { createGuest, guestState, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { stackGlanceUrl } from '../support/cloud.js';
import { findImagesByName } from '../support/images.js';
import { REPLAY_FIXTURES, recordHistory } from '../support/fixtures.js';
import { startHarness, type Harness } from '../support/harness.js';
import { activitySummaries } from '../support/history.js';
import { counterAdvances } from '../support/invariants.js';

const guestName = `vmsnap-test-comp-${process.pid}`;
let h: Harness;
let proxy: FaultProxy;
let guest: Guest;

describe('snapshot under Glance faults, on the real stack', { timeout: 300_000 }, () => {
  before(async () => {
    proxy = await startFaultProxy(await stackGlanceUrl());
    h = await startHarness({ name: 'compensation', glanceUrl: proxy.url });
    guest = await createGuest({ name: guestName, guestsDir: h.guestsDir, assetsDir: h.assetsDir });
  });

  after(async () => {
    await removeGuest(guestName, h.guestsDir).catch(() => undefined);
    await h?.close();
    await proxy?.close();
  });

  it('an upload cut off halfway is retried from byte 0 and the image verifies', async () => {
    proxy.setRule({ method: 'PUT', path: /^\/v2\/images\/[^/]+\/file$/, kind: 'reset', afterBytes: 64 * 1024, times: 1 });
    const handle = await startSnapshot(h.client, { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-retried` }, h.config.temporal.taskQueue);
    const result = await handle.result();
    const puts = proxy.requests.filter((r) => r.method === 'PUT');
    assert.equal(puts.length, 2, 'one cut-off PUT, one that went through');
    assert.equal(puts[0]?.status, 0);
    const image = await h.glance.getImage(result.imageId);
    assert.equal(image?.status, 'active');
    assert.equal(image?.os_hash_value, result.sha512);
    assert.equal(image?.size, result.size);
    assert.ok(result.size > 64 * 1024, 'the image is larger than the part sent before the cut');
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    proxy.requests.length = 0;
    await h.glance.deleteImage(result.imageId);
  });

  it('an upload that fails for good leaves the guest running and nothing half-made', async () => {
    proxy.setRule({
      method: 'PUT',
      path: /^\/v2\/images\/[^/]+\/file$/,
      kind: 'status',
      status: 413,
      body: 'Image exceeds the storage quota',
    });
    const imageName = `vmsnap-test-${process.pid}-upload-fails`;
    proxy.requests.length = 0;
    const handle = await startSnapshot(h.client, { instance: guest.uuid, imageName }, h.config.temporal.taskQueue);
    const err = await handle.result().then(
      () => assert.fail('the snapshot should have failed'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof WorkflowFailedError && err.cause instanceof ApplicationFailure);
    assert.equal(err.cause.type, 'ImageServiceError');
    await recordHistory(
      h.config.temporal.address,
      { workflowId: handle.workflowId, runId: (await handle.describe()).runId },
      REPLAY_FIXTURES.snapshotCompensated,
    );
    assert.ok(
      proxy.requests.some((r) => r.method === 'PUT' && r.status === 413),
      'the upload was tried and refused',
    );

    // 1. The guest runs again and keeps counting: resumed by the copy step, before the upload was tried.
    assert.equal(await guestState(guestName), 'running');
    assert.ok(await counterAdvances(guest), 'counter advances');
    const ofRun = (await h.store.listEvents(guest.uuid)).filter((e) => e.requestId === `${handle.workflowId}/${handle.firstExecutionRunId}`);
    const resumedAt = Date.parse(ofRun.find((e) => e.event === 'resume')?.createdAt ?? '');
    const firstPut = proxy.requests.find((r) => r.method === 'PUT');
    assert.ok(firstPut && resumedAt <= firstPut.startedAt, `resumed at ${resumedAt}, first PUT at ${firstPut?.startedAt}`);
    // The undo steps that ran: the image and the temp dir; no resume, the guest was running already.
    const undone = activitySummaries(await handle.fetchHistory())
      .map((a) => a.summary)
      .filter((summary) => summary.startsWith('compensation:'));
    assert.ok(
      undone.some((u) => /delete the image/.test(u)),
      JSON.stringify(undone),
    );
    assert.ok(!undone.some((u) => /resume/.test(u)), `no resume among the undo steps: ${JSON.stringify(undone)}`);
    // 2. No image of this snapshot is left in Glance (asked of the real Glance, not the proxy).
    assert.deepEqual(await findImagesByName(h.glanceUrl, imageName), []);
    // 3. Task state None.
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    // 4. No temp files.
    assert.ok(!existsSync(h.config.snapshotsDir) || readdirSync(h.config.snapshotsDir).length === 0);
    // 5. A fault that says what happened, and the action's error event.
    const faults = await h.store.listFaults(guest.uuid);
    assert.equal(faults.length, 1);
    assert.equal(faults[0]?.code, 'ImageServiceError');
    assert.match(faults[0]?.message ?? '', /413|size|quota/i);
    assert.deepEqual(
      ofRun.map((e) => e.event),
      ['start', 'pause', 'resume', 'error'],
    );
  });
});
