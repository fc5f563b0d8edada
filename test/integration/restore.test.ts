// restoreInstance and rollbackRestore end to end on the real stack: a counting guest under
// libvirt/QEMU, real Glance behind Keystone (through a fault proxy that forwards unless told
// otherwise), real qemu-img, real Temporal. The guest continues its counter from what is on its
// disk when it boots, so the counter tells which disk it runs on.
import assert from 'node:assert/strict';
import { existsSync, rmSync, statSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { execa } from 'execa';
import { createGuest, guestState, readCounter, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { startRestore } from '../../src/client/restores.js';
import { REPLAY_FIXTURES, recordHistory } from '../support/fixtures.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import { restoreFiles } from '../../src/activities/restore-files.js';
import { downloadImage } from '../support/images.js';
import { stackGlanceUrl } from '../support/cloud.js';
import { eventually, vmsnap } from '../support/cli.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { startHarness, type Harness } from '../support/harness.js';
import { evidence, recordFaultRow } from '../support/fault-report.js';
import { eventMs, onlyActivityRun } from '../support/history.js';
import { checkInvariants, type Invariants } from '../support/invariants.js';

const guestName = `vmsnap-test-restore-${process.pid}`;
let h: Harness;
let proxy: FaultProxy;
let guest: Guest;
const images: string[] = [];
const imageIdOf = () => images[0]!;

async function failureOf(result: Promise<unknown>): Promise<ApplicationFailure> {
  const err = await result.then(
    () => assert.fail('the workflow should have failed'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof WorkflowFailedError, `expected WorkflowFailedError, got ${String(err)}`);
  assert.ok(err.cause instanceof ApplicationFailure, `expected an ApplicationFailure cause, got ${String(err.cause)}`);
  return err.cause;
}

async function domId(): Promise<string> {
  return (await execa('virsh', ['-c', h.config.libvirtUri, 'domid', guestName])).stdout.trim();
}

/** Nothing of a restore in progress beside the disk. */
function noRestoreLeftovers(): void {
  const files = restoreFiles(guest.diskPath);
  assert.ok(!existsSync(files.download), `${files.download} left behind`);
  assert.ok(!existsSync(files.restored), `${files.restored} left behind`);
}

/** The fault suite's invariants, as a restore reads them: guest running and counting, task state None, nothing beside the disk, the image untouched. */
function restoreInvariants(outcome: string, expectedOutcome: string): Promise<Invariants> {
  const files = restoreFiles(guest.diskPath);
  return checkInvariants({
    store: h.store,
    guest,
    priorState: 'running',
    outcome,
    expectedOutcome,
    image: { id: imageIdOf() },
    leftovers: [files.download, files.restored],
  });
}

const DOWNLOAD = /\/v2\/images\/[^/]+\/file$/;

async function counterAbove(value: number, what: string): Promise<number> {
  return eventually(
    what,
    async () => {
      const c = await readCounter(guest.diskPath, 'qcow2');
      return c.a > value ? c.a : undefined;
    },
    120_000,
    250,
  );
}

/**
 * Watches `virsh domstate` as often as it answers, for the guest's downtime as seen from outside:
 * the longest stretch surely down, from the end of the first look that found it not running to the
 * start of the first look that found it running again (a lower bound of the real downtime).
 */
function watchDowntime(name: string): { stop(): Promise<{ downMs: number }> } {
  let stopped = false;
  let downMs = 0;
  const done = (async () => {
    let downSeenAt: number | undefined;
    while (!stopped) {
      const lookedAt = Date.now();
      const state = await guestState(name);
      if (state === 'running' && downSeenAt !== undefined) {
        downMs = Math.max(downMs, lookedAt - downSeenAt);
        downSeenAt = undefined;
      } else if (state !== 'running' && downSeenAt === undefined) downSeenAt = Date.now();
    }
  })();
  return {
    async stop() {
      stopped = true;
      await done;
      return { downMs };
    },
  };
}

describe('restoreInstance on the real stack', { timeout: 900_000 }, () => {
  let imageId: string;
  let atImage: number;

  before(async () => {
    proxy = await startFaultProxy(await stackGlanceUrl());
    h = await startHarness({
      name: 'restore',
      glanceUrl: proxy.url,
      // The test guest has no ACPI handling: a short wait, then destroy.
      env: { VMSNAP_RESTORE_SHUTDOWN_TIMEOUT_MS: '1000', VMSNAP_GLANCE_RETRY_ATTEMPTS: '3', VMSNAP_GLANCE_RETRY_INITIAL_MS: '200' },
    });
    guest = await createGuest({ name: guestName, guestsDir: h.guestsDir, assetsDir: h.assetsDir });
    // The image: a cold snapshot of the counting guest at counter N.
    const snap = await startSnapshot(h.client, { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-restore` }, h.config.temporal.taskQueue);
    const result = await snap.result();
    imageId = result.imageId;
    images.push(imageId);
    const downloaded = await downloadImage(h.glanceUrl, imageId);
    try {
      atImage = (await readCounter(downloaded.path, 'qcow2')).a;
    } finally {
      rmSync(downloaded.path, { force: true });
    }
    assert.ok(atImage > 0);
  });

  after(async () => {
    await removeGuest(guestName, h.guestsDir).catch(() => undefined);
    for (const id of images) await h?.glance.deleteImage(id).catch(() => undefined);
    await h?.close();
    await proxy?.close();
  });

  it('refuses a download whose bytes differ (ImageCorrupt), leaving the guest running untouched', async () => {
    const idBefore = await domId();
    const inodeBefore = statSync(guest.diskPath).ino;
    const before = (await readCounter(guest.diskPath, 'qcow2')).a;
    // One byte of the data flipped on its way from Glance: size right, sha512 wrong.
    proxy.requests.length = 0;
    proxy.setRule({ kind: 'flip', method: 'GET', path: DOWNLOAD, atByte: 70_000 });
    let failure: ApplicationFailure;
    try {
      const handle = await startRestore(h.client, { instance: guest.uuid, imageId }, h.config.temporal.taskQueue);
      failure = await failureOf(handle.result());
      assert.equal(failure.type, 'ImageCorrupt');
      assert.match(failure.message, /sha512/);
    } finally {
      proxy.setRule(undefined);
    }
    const flipped = proxy.requests.filter((r) => r.fault === 'flip');
    assert.ok(
      proxy.requests.some((r) => r.method === 'GET' && /\/file$/.test(r.path)),
      'the download went through the proxy',
    );
    assert.equal(await guestState(guestName), 'running');
    assert.equal(await domId(), idBefore, 'the guest was never restarted');
    assert.equal(statSync(guest.diskPath).ino, inodeBefore, 'the disk is the same file');
    assert.ok(!existsSync(restoreFiles(guest.diskPath).preRestore), 'no pre-restore disk: nothing was swapped');
    noRestoreLeftovers();
    await counterAbove(before, 'the guest counts on from where it was');
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    const faults = await h.store.listFaults(guest.uuid);
    assert.equal(faults.at(-1)?.code, 'ImageCorrupt');
    recordFaultRow({
      fault: 'restore: a byte of the download flipped',
      outcome: failure.type ?? '',
      invariants: await restoreInvariants(failure.type ?? '', 'ImageCorrupt'),
      evidence: [
        evidence(
          `${flipped.length} download(s) with byte 70000 flipped, ${flipped[0]?.bytesOut} bytes sent`,
          flipped.length > 0 && flipped[0]!.bytesOut > 70_000,
        ),
        evidence(`failure: ${failure.message}`, /sha512/.test(failure.message)),
      ],
      note: 'guest never stopped (same domain id)',
    });
  });

  it('Glance dying mid-download: the download is retried and the restore completes', async () => {
    // The first download is cut after 100 KiB, as if Glance died; the retry finds it back.
    proxy.requests.length = 0;
    proxy.setRule({ kind: 'cut', method: 'GET', path: DOWNLOAD, afterBytes: 100 * 1024, times: 1 });
    try {
      const handle = await startRestore(h.client, { instance: guest.uuid, imageId }, h.config.temporal.taskQueue);
      const result = await handle.result();
      const gets = proxy.requests.filter((r) => r.method === 'GET' && /\/file$/.test(r.path) && r.path.includes(imageId));
      assert.ok(gets.length >= 2, `the download was tried again (${gets.length} GETs)`);
      assert.equal(await guestState(guestName), 'running');
      const first = (await readCounter(guest.diskPath, 'qcow2')).a;
      assert.ok(first >= atImage, `restored: ${first}`);
      noRestoreLeftovers();
      assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
      const cut = proxy.requests.filter((r) => r.fault === 'cut');
      const whole = proxy.requests.filter((r) => !r.fault && r.method === 'GET' && DOWNLOAD.test(r.path) && r.complete);
      recordFaultRow({
        fault: 'restore: Glance dies mid-download',
        outcome: 'completed',
        invariants: await restoreInvariants('completed', 'completed'),
        evidence: [
          evidence(`download cut after ${cut[0]?.bytesOut} bytes`, cut.length === 1 && cut[0]!.reset && cut[0]!.bytesOut === 100 * 1024),
          evidence(`then downloaded whole: ${whole.map((r) => `${r.bytesOut} bytes`).join(', ')}`, whole.length >= 1),
        ],
        note: `retried on the same worker; downtime ${result.downtimeMs} ms`,
      });
    } finally {
      proxy.setRule(undefined);
    }
  });

  let atStop: number;
  it("restores the image: the guest continues from the image's counter, the previous disk is kept", async () => {
    // Let the guest run well past the image's counter, so the two disks tell apart.
    const ranOn = await counterAbove(atImage + 300, 'the guest counts past the image');
    const handle = await startRestore(h.client, { instance: guest.uuid, imageId }, h.config.temporal.taskQueue);
    const result = await handle.result();
    await recordHistory(h.config.temporal.address, { workflowId: handle.workflowId, runId: handle.firstExecutionRunId }, REPLAY_FIXTURES.restore);
    const first = (await readCounter(guest.diskPath, 'qcow2')).a;

    assert.equal(result.instanceId, guest.uuid);
    assert.equal(result.priorPowerState, 'running');
    assert.equal(result.diskPath, guest.diskPath);
    assert.equal(result.stoppedBy, 'destroy');
    // The guest ignores ACPI: it was given the harness's 1 s to shut down, then destroyed; that wait is not downtime.
    assert.ok((result.shutdownWaitMs ?? 0) >= 1000, `shutdown wait ${result.shutdownWaitMs} ms`);
    assert.equal(result.confirmedBy, 'power-state', 'no guest agent: the domain running is the confirmation');
    // The downtime lies within the host step that stopped and started the guest.
    const step = onlyActivityRun(await handle.fetchHistory(), 'stopSwapStart');
    const stepMs = (step.endedAt ?? 0) - eventMs(step.scheduled);
    assert.ok(result.downtimeMs > 0 && result.downtimeMs <= stepMs, `downtime ${result.downtimeMs} ms, within the ${stepMs} ms step`);
    assert.equal(await guestState(guestName), 'running');
    assert.ok(first >= atImage && first < ranOn, `after the restore the disk holds ${first}: from the image (${atImage}), not from before (${ranOn}+)`);
    const later = await counterAbove(first, 'the restored guest counts');
    assert.ok(later < ranOn, `counting on from the image's value: ${later} < ${ranOn}`);

    // The previous disk is kept beside it, with the counter it had when the guest stopped.
    const kept = result.preRestorePath;
    assert.equal(kept, restoreFiles(guest.diskPath).preRestore);
    assert.ok(kept && existsSync(kept));
    atStop = (await readCounter(kept, 'qcow2')).a;
    assert.ok(atStop >= ranOn, `pre-restore disk at ${atStop}`);
    assert.ok(Date.parse(result.preRestoreKeptUntil ?? '') > Date.now());
    noRestoreLeftovers();

    const record = await h.store.getInstance(guest.uuid);
    assert.equal(record?.taskState, null);
    const events = (await h.store.listEvents(guest.uuid)).filter((e) => e.requestId === `${handle.workflowId}/${handle.firstExecutionRunId}`);
    assert.deepEqual(
      events.map((e) => `${e.action}:${e.event}`),
      ['rebuild:start', 'rebuild:stop', 'rebuild:swap', 'rebuild:started', 'rebuild:finish'],
    );
  });

  it('rolls back with the CLI: the pre-restore disk is back and the guest counts on from it', async () => {
    const run = await vmsnap(h, ['restore', 'rollback', guestName, '--json'], {}, 300_000);
    assert.equal(run.exitCode, 0, run.stderr);
    const doc = JSON.parse(run.stdout) as { status: string; result: { instanceId: string; priorPowerState: string } };
    assert.equal(doc.status, 'completed');
    assert.equal(doc.result.instanceId, guest.uuid);
    assert.equal(await guestState(guestName), 'running');
    const first = (await readCounter(guest.diskPath, 'qcow2')).a;
    assert.ok(first >= atStop, `the disk holds ${first}, the pre-restore disk's ${atStop} or more`);
    await counterAbove(first, 'the rolled-back guest counts');
    assert.ok(!existsSync(restoreFiles(guest.diskPath).preRestore), 'the pre-restore disk is in place, not beside');
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);

    // Nothing left to roll back to: a clear failure, and the guest runs on.
    const again = await vmsnap(h, ['restore', 'rollback', guest.uuid], {}, 120_000);
    assert.equal(again.exitCode, 1, again.stderr);
    assert.match(again.stderr, /no pre-restore disk/);
    assert.equal(await guestState(guestName), 'running');
  });

  it('restores by image name with the CLI, and refuses bad input with exit 2', async () => {
    const bad = await vmsnap(h, ['restore', '../etc/passwd', '--image', imageId]);
    assert.equal(bad.exitCode, 2, bad.stderr);
    assert.match(bad.stderr, /instance/);
    const noImage = await vmsnap(h, ['restore', guestName]);
    assert.equal(noImage.exitCode, 2, noImage.stderr);
    // An image id Glance does not have: exit 3 at the prompt, one line, and the instance untouched.
    const missing = await vmsnap(h, ['restore', guestName, '--image', randomUUID()], {}, 120_000);
    assert.equal(missing.exitCode, 3, `${missing.stdout}\n${missing.stderr}`);
    assert.equal(missing.stderr.trim().split('\n').length, 1, missing.stderr);
    assert.match(missing.stderr, /^vmsnap: refused \(ImageNotFound\): there is no image .*: check the image id in Glance \(openstack image show\)$/);
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    assert.equal(await guestState(guestName), 'running');

    // --force-stop: destroyed at once, no wait for a shutdown the guest (no ACPI handling) would ignore for the harness's 1 s.
    const watch = watchDowntime(guestName);
    const run = await vmsnap(h, ['restore', guestName, '--image', `vmsnap-test-${process.pid}-restore`, '--force-stop', '--wait', '--json'], {}, 300_000);
    const seen = await watch.stop();
    assert.equal(run.exitCode, 0, run.stderr);
    const doc = JSON.parse(run.stdout) as {
      status: string;
      imageId: string;
      result: { downtimeMs: number; sha512: string; stoppedBy: string; shutdownWaitMs: number };
    };
    assert.equal(doc.status, 'completed');
    assert.equal(doc.imageId, imageId);
    assert.equal(doc.result.stoppedBy, 'destroy');
    assert.equal(doc.result.shutdownWaitMs, 0, 'no shutdown asked for, none waited for');
    // The downtime is the guest's as it lived it: at least what `virsh domstate` saw of it.
    assert.ok(seen.downMs > 0, 'domstate saw the guest down');
    assert.ok(doc.result.downtimeMs >= seen.downMs, `reported ${doc.result.downtimeMs} ms, domstate saw at least ${seen.downMs} ms down`);
    assert.equal(await guestState(guestName), 'running');
    noRestoreLeftovers();
  });

  it('shows, lists and cancels a restore with the CLI, like a snapshot', async () => {
    const idBefore = await domId();
    const inodeBefore = statSync(guest.diskPath).ino;
    // The download waits at Glance's door: the restore stays in its downloading phase.
    proxy.setRule({ kind: 'delay', delayMs: 120_000, method: 'GET', path: /\/v2\/images\/[^/]+\/file$/ });
    try {
      const started = await vmsnap(h, ['restore', guestName, '--image', imageId, '--json']);
      assert.equal(started.exitCode, 0, started.stderr);
      const { workflowId } = JSON.parse(started.stdout) as { workflowId: string };
      const status = await eventually(
        'the restore is downloading',
        async () => {
          const run = await vmsnap(h, ['restore', 'status', guestName, '--json']);
          const doc = JSON.parse(run.stdout) as {
            status: string;
            action: string;
            workflowId: string;
            progress?: { phase: string; taskState: string | null };
          };
          return run.exitCode === 0 && doc.progress?.phase === 'downloading' ? doc : undefined;
        },
        60_000,
        500,
      );
      assert.equal(status.workflowId, workflowId);
      assert.equal(status.action, 'restore');
      assert.equal(status.status, 'running');
      assert.equal(status.progress?.taskState, 'rebuilding');
      const text = await vmsnap(h, ['restore', 'status', guest.uuid]);
      assert.equal(text.exitCode, 0, text.stderr);
      assert.match(text.stdout, /status\s+running/);
      assert.match(text.stdout, /phase\s+downloading/);
      const listed = await eventually(
        'the restore is listed',
        async () => {
          const run = await vmsnap(h, ['restore', 'list', '--instance', guestName, '--status', 'running', '--json']);
          const rows = JSON.parse(run.stdout) as { workflowId: string; action: string; status: string }[];
          return rows.length ? rows : undefined;
        },
        30_000,
        500,
      );
      assert.deepEqual(
        listed.map((r) => [r.workflowId, r.action, r.status]),
        [[workflowId, 'restore', 'running']],
      );

      const cancel = await vmsnap(h, ['restore', 'cancel', guestName, '--wait', '--json'], {}, 180_000);
      assert.equal(cancel.exitCode, 0, cancel.stderr);
      assert.equal((JSON.parse(cancel.stdout) as { status: string }).status, 'cancelled');
    } finally {
      proxy.setRule(undefined);
    }
    // Cancelled before the swap: the instance is exactly as it was.
    assert.equal(await domId(), idBefore, 'the guest was never stopped');
    assert.equal(statSync(guest.diskPath).ino, inodeBefore);
    noRestoreLeftovers();
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    const after = await vmsnap(h, ['restore', 'status', guestName]);
    assert.equal(after.exitCode, 0, after.stderr);
    assert.match(after.stdout, /status\s+cancelled/);
    // Like a cancelled snapshot's, the last phase says cancelled (it read failed before).
    assert.match(after.stdout, /phase\s+cancelled/);
    const table = await vmsnap(h, ['restore', 'list', '--instance', guest.uuid]);
    assert.equal(table.exitCode, 0, table.stderr);
    assert.match(table.stdout, /WORKFLOW ID\s+ACTION\s+STATUS/);
    assert.match(table.stdout, /restore\s+cancelled/);
    // Nothing running to cancel, and no restore of an unknown instance: exit 3, with the way on.
    const again = await vmsnap(h, ['restore', 'cancel', guestName]);
    assert.equal(again.exitCode, 3, again.stderr);
    assert.match(again.stderr, /no running restore of .*cancelled.*vmsnap restore list/);
    const none = await vmsnap(h, ['restore', 'status', `no-such-${process.pid}`, '--json']);
    assert.equal(none.exitCode, 3, none.stderr);
    assert.equal((JSON.parse(none.stdout) as { error: { type: string } }).error.type, 'RestoreNotFound');
  });

  it('restores as a new instance: both guests run, the original untouched', async () => {
    const newName = `${guestName}-new`;
    const idBefore = await domId();
    const inodeBefore = statSync(guest.diskPath).ino;
    const running = (await readCounter(guest.diskPath, 'qcow2')).a;
    try {
      const handle = await startRestore(h.client, { instance: guest.uuid, imageId, asNew: newName }, h.config.temporal.taskQueue);
      const result = await handle.result();
      assert.ok(result.newInstance, 'a new instance');
      assert.equal(result.newInstance.name, newName);
      assert.notEqual(result.newInstance.id, guest.uuid);
      assert.equal(result.preRestorePath, undefined);
      assert.equal(await guestState(newName), 'running');
      const xml = (await execa('virsh', ['-c', h.config.libvirtUri, 'dumpxml', newName])).stdout;
      assert.ok(xml.includes(result.diskPath), 'the new domain runs on the new disk');
      // The new guest counts on from the image's counter, on its own disk.
      const first = (await readCounter(result.diskPath, 'qcow2')).a;
      assert.ok(first >= atImage, `new disk at ${first}`);
      await eventually('the new guest counts', async () => ((await readCounter(result.diskPath, 'qcow2')).a > first ? true : undefined), 120_000, 250);
      // The original ran on, untouched.
      assert.equal(await domId(), idBefore);
      assert.equal(statSync(guest.diskPath).ino, inodeBefore);
      await counterAbove(running, 'the original counts on');
      assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    } finally {
      await execa('virsh', ['-c', h.config.libvirtUri, 'destroy', newName], { reject: false });
      await execa('virsh', ['-c', h.config.libvirtUri, 'undefine', newName], { reject: false });
      rmSync(`${guest.dir}/${newName}.vmsnap-new.qcow2`, { force: true });
    }
  });

  it('refuses an image of another instance unless allowed, changing nothing', async () => {
    const file = `${guest.dir}/other.qcow2`;
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', file, '64M']);
    const otherId = randomUUID();
    images.push(otherId);
    try {
      await h.glance.createImage({
        id: otherId,
        name: `vmsnap-test-${process.pid}-other`,
        visibility: 'private',
        min_disk: 0,
        min_ram: 0,
        properties: { image_type: 'snapshot', instance_uuid: randomUUID() },
      });
      await h.glance.updateImage(otherId, { disk_format: 'qcow2', container_format: 'bare' });
      await h.glance.uploadFile(otherId, file);
    } finally {
      rmSync(file, { force: true });
    }
    const idBefore = await domId();
    const faultsBefore = (await h.store.listFaults(guest.uuid)).length;
    const handle = await startRestore(h.client, { instance: guest.uuid, imageId: otherId }, h.config.temporal.taskQueue);
    const failure = await failureOf(handle.result());
    assert.equal(failure.type, 'InvalidInput');
    assert.match(failure.message, /not of .*allow another image/);
    assert.equal(await domId(), idBefore);
    assert.equal((await h.store.listFaults(guest.uuid)).length, faultsBefore, 'a refused image is no fault of the instance');
    assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    noRestoreLeftovers();
  });

  it('refuses a busy instance, changing nothing', async () => {
    assert.ok(await h.store.compareAndSwapTaskState(guest.uuid, null, 'image_uploading', 'someone-else'));
    try {
      const idBefore = await domId();
      const handle = await startRestore(h.client, { instance: guest.uuid, imageId }, h.config.temporal.taskQueue);
      assert.equal((await failureOf(handle.result())).type, 'InstanceBusy');
      assert.equal(await domId(), idBefore);
      assert.equal((await h.store.getInstance(guest.uuid))?.taskOwner, 'someone-else');
    } finally {
      await h.store.releaseTaskState(guest.uuid, 'someone-else');
    }
  });
});
