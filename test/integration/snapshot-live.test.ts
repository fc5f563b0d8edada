// Live mode end to end on the real stack: the image, streamed from the backup job's export, is one
// point in time while the guest keeps running (its counter advances while the image is made; QEMU
// reports no pause) and nothing but the overlay is written on the host, cancellation mid-stream
// leaves no job and no file, a shut-off guest falls back to cold with the reason, and quiescing through
// the QEMU guest agent makes the image filesystem-consistent.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { createGuest, guestState, readCounter, removeGuest, type Counter, type Guest } from '../../scripts/lib/guest.js';
import { getProgress, startSnapshot } from '../../src/client/snapshots.js';
import type { Hypervisor } from '../../src/drivers/hypervisor.js';
import { downloadImage } from '../support/images.js';
import { REPLAY_FIXTURES, recordHistory } from '../support/fixtures.js';
import { eventually } from '../support/cli.js';
import { onlyActivityRun } from '../support/history.js';
import { counterAdvances, outcomeOf } from '../support/invariants.js';
import { startHarness, type Harness } from '../support/harness.js';
import { createSlowGuest, waitForPhase } from '../support/slow-guest.js';

const tag = process.pid;
let h: Harness;
let slow: Guest;
/** Counter reads around each live point in time, and during the copy or stream, by instance. */
const around = new Map<string, { before: Counter; during: number[]; after: Counter }>();
const disks = new Map<string, string>();

/**
 * The real driver, its live snapshots observed from outside: the counter before and after the point
 * in time is taken (the copy, or the start of the job the upload streams from), and during the copy
 * or for as long as the streamed job runs (until it is ended).
 */
function observeLive(real: Hypervisor): Hypervisor {
  const observed = Object.create(real) as Hypervisor;
  const streaming = new Map<string, () => void>();
  observed.liveCopy = async (id, opts) => {
    const disk = disks.get(id);
    if (!disk) return real.liveCopy(id, opts);
    const before = await readCounter(disk, 'qcow2');
    const during: number[] = [];
    let reading = false;
    const result = await real.liveCopy(id, {
      ...opts,
      onProgress: (percent, done, total) => {
        opts.onProgress?.(percent, done, total);
        if (!reading) {
          reading = true;
          void readCounter(disk, 'qcow2')
            .then((c) => during.push(c.a))
            .finally(() => (reading = false));
        }
      },
    });
    around.set(id, { before, during, after: await readCounter(disk, 'qcow2') });
    return result;
  };
  observed.startLiveExport = async (id, opts) => {
    const disk = disks.get(id);
    if (!disk) return real.startLiveExport!(id, opts);
    const before = await readCounter(disk, 'qcow2');
    const started = await real.startLiveExport!(id, opts);
    const seen = { before, during: [] as number[], after: await readCounter(disk, 'qcow2') };
    around.set(id, seen);
    // The guest's counter read while the job runs, until it is ended.
    let running = true;
    streaming.set(id, () => (running = false));
    void (async () => {
      while (running) {
        seen.during.push((await readCounter(disk, 'qcow2')).a);
        await sleep(100);
      }
    })();
    return started;
  };
  observed.abortLiveCopy = async (id, dir) => {
    streaming.get(id)?.();
    return real.abortLiveCopy!(id, dir);
  };
  return observed;
}

async function patternHolds(image: string, format: 'qcow2' | 'raw'): Promise<boolean> {
  const r = await execa('qemu-io', ['-r', '-f', format, '-c', 'read -P 0x5a 8M 512M', image], { reject: false });
  return r.exitCode === 0 && !/verification failed|error/i.test(r.stdout + r.stderr);
}

describe('live snapshots on the real stack', { timeout: 600_000 }, () => {
  before(async () => {
    h = await startHarness({
      name: 'live',
      // The default mode of a real deployment; a rate limit makes the copy last seconds.
      env: { VMSNAP_DEFAULT_MODE: 'auto', VMSNAP_LIVE_BANDWIDTH_MIBPS: '192' },
      wrapHypervisor: observeLive,
    });
    slow = await createSlowGuest({ name: `vmsnap-test-live-${tag}`, guestsDir: h.guestsDir, assetsDir: h.assetsDir, dataMiB: 512 });
    disks.set(slow.uuid, slow.diskPath);
  });

  after(async () => {
    await removeGuest(slow.name, h.guestsDir).catch(() => undefined);
    await h?.close();
  });

  it('streams a running guest live: one point in time, the guest kept running, nothing but the overlay on the host', async () => {
    const handle = await startSnapshot(h.client, { instance: slow.uuid, imageName: `vmsnap-test-${tag}-live` }, h.config.temporal.taskQueue);
    const result = await handle.result();
    await recordHistory(h.config.temporal.address, { workflowId: handle.workflowId, runId: (await handle.describe()).runId }, REPLAY_FIXTURES.snapshotLive);
    assert.equal(result.mode, 'live');
    assert.ok(result.guestPauseMs <= 50, `QEMU reported a ${result.guestPauseMs} ms pause`);
    assert.equal(result.consistency, 'crash-consistent', 'no guest agent here');
    assert.equal(result.phaseDurationsMs.converting, undefined, 'a live copy has no cold copy phase');
    assert.equal(result.transfer, 'streamed', result.transferNote);
    assert.match(result.transferNote ?? '', /^streamed/);
    // The guest writes only its counter meanwhile: its overlay is a few clusters, not a copy of the disk.
    assert.ok((result.hostScratchBytes ?? Infinity) <= 0.05 * result.size, `host scratch ${result.hostScratchBytes} of ${result.size} bytes`);
    const events = (await h.store.listEvents(slow.uuid))
      .filter((e) => e.requestId === `${handle.workflowId}/${handle.firstExecutionRunId}`)
      .map((e) => e.event);
    assert.ok(!events.includes('pause'), `no pause recorded: ${events.join(',')}`);

    const seen = around.get(slow.uuid)!;
    assert.ok(new Set(seen.during).size >= 2, `the counter advanced while the image was made: ${seen.during.join(',')}`);
    const downloaded = await downloadImage(h.glanceUrl, result.imageId);
    try {
      const image = await readCounter(downloaded.path, 'qcow2');
      assert.ok(image.a === image.b || image.a === image.b + 1, `one point in time: A=${image.a} B=${image.b}`);
      assert.ok(image.a >= seen.before.a && image.a <= seen.after.a, `taken as the job started: ${seen.before.a} <= ${image.a} <= ${seen.after.a}`);
      assert.ok(await patternHolds(downloaded.path, 'qcow2'), 'the bulk data came through');
    } finally {
      rmSync(downloaded.path, { force: true });
    }
    const image = await h.glance.getImage(result.imageId);
    assert.equal(image?.vmsnap_mode, 'live');
    assert.equal(image?.vmsnap_consistency, 'crash-consistent');
  });

  it('live and cold images hold the same content at their points in time', async () => {
    const images: { mode: string; path: string }[] = [];
    try {
      for (const mode of ['live', 'cold'] as const) {
        const result = await (
          await startSnapshot(
            h.client,
            { instance: slow.uuid, imageName: `vmsnap-test-${tag}-${mode}-pair`, mode, diskFormat: 'raw' },
            h.config.temporal.taskQueue,
          )
        ).result();
        assert.equal(result.mode, mode);
        images.push({ mode, path: (await downloadImage(h.glanceUrl, result.imageId)).path });
      }
      const [live, cold] = await Promise.all(images.map((i) => readCounter(i.path, 'raw')));
      for (const c of [live!, cold!]) assert.ok(c.a === c.b || c.a === c.b + 1);
      assert.ok(cold!.a > live!.a, 'the cold image is the later point in time');
      for (const i of images) assert.ok(await patternHolds(i.path, 'raw'), `${i.mode}: bulk data`);
    } finally {
      for (const i of images) rmSync(i.path, { force: true });
    }
  });

  it('cancellation mid-stream leaves no job, no partial file, and the guest running', async () => {
    const imageName = `vmsnap-test-${tag}-live-cancelled`;
    const handle = await startSnapshot(h.client, { instance: slow.uuid, imageName }, h.config.temporal.taskQueue);
    await waitForPhase(handle, 'uploading');
    // Cancelled once the upload's heartbeat says bytes are sent, and before it says all are.
    const atCancel = await eventually(
      'the stream under way',
      async () => {
        const p = await getProgress(handle);
        return p.phase === 'uploading' && (p.bytesDone ?? 0) > 0 && (p.percent ?? 100) < 100 ? p : undefined;
      },
      120_000,
      100,
    );
    await handle.cancel();
    assert.equal(await outcomeOf(handle), 'Cancelled');
    const stream = onlyActivityRun(await handle.fetchHistory(), 'uploadLiveExport');
    assert.ok(stream.cancelRequested && stream.ended === 'canceled', `the cancel hit the stream (at ${atCancel.percent} %), which ended ${stream.ended}`);
    const job = await execa('virsh', ['-c', 'qemu:///system', 'domjobinfo', slow.name]);
    assert.match(job.stdout, /Job type:\s+None/);
    assert.ok(!existsSync(h.config.snapshotsDir) || readdirSync(h.config.snapshotsDir).length === 0, 'no partial file');
    assert.equal(await guestState(slow.name), 'running');
    assert.ok(await counterAdvances(slow), 'the guest counts on');
    assert.equal((await h.store.getInstance(slow.uuid))?.taskState, null);
  });

  // mode "live" itself is refused for a guest that is not running (cli.test.ts): auto copies it cold.
  it('a guest that is not running is copied cold under auto, and the result says why', async () => {
    const off = await createGuest({ name: `vmsnap-test-live-off-${tag}`, guestsDir: h.guestsDir, assetsDir: h.assetsDir });
    try {
      await execa('virsh', ['-c', 'qemu:///system', 'destroy', off.name]);
      const result = await (
        await startSnapshot(h.client, { instance: off.uuid, imageName: `vmsnap-test-${tag}-live-off`, mode: 'auto' }, h.config.temporal.taskQueue)
      ).result();
      assert.equal(result.mode, 'cold');
      assert.match(result.modeReason ?? '', /shutdown: a cold copy needs no pause/);
      assert.equal(result.guestPauseMs, 0);
    } finally {
      await removeGuest(off.name, h.guestsDir);
    }
  });

  it('quiesces through the guest agent, and refuses "require" without one', async () => {
    const withAgent = await createGuest({
      name: `vmsnap-test-live-agent-${tag}`,
      guestsDir: h.guestsDir,
      assetsDir: h.assetsDir,
      guestAgent: true,
    });
    try {
      const result = await (
        await startSnapshot(
          h.client,
          { instance: withAgent.uuid, imageName: `vmsnap-test-${tag}-live-agent`, mode: 'live', quiesce: 'require' },
          h.config.temporal.taskQueue,
        )
      ).result();
      assert.equal(result.consistency, 'filesystem-consistent');
      assert.equal((await h.glance.getImage(result.imageId))?.vmsnap_consistency, 'filesystem-consistent');

      const refused = await startSnapshot(
        h.client,
        { instance: slow.uuid, imageName: `vmsnap-test-${tag}-live-noagent`, mode: 'live', quiesce: 'require' },
        h.config.temporal.taskQueue,
      );
      assert.equal(await outcomeOf(refused), 'InstanceInvalidState');
      assert.equal(await guestState(slow.name), 'running');
      assert.equal((await h.store.getInstance(slow.uuid))?.taskState, null);
    } finally {
      await removeGuest(withAgent.name, h.guestsDir);
    }
  });
});
