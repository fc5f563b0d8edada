// A copy that cannot fit never pauses the guest (issue 15): before the guest is touched, qemu-img
// measure and the snapshots dir's free space decide, and the snapshot fails with NoSpace. The
// snapshots dir is a small tmpfs; QEMU's own STOP/RESUME events prove the vCPUs never stopped.
// A streamed live snapshot needs room for its overlay only (issue 29): with the tmpfs at 64 MiB, a
// 1 GiB guest holding 512 MiB of data is snapshotted live, its overlay capped by the free space.
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import { execa } from 'execa';
import { guestState, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import { assertAllHeld, checkRunningGuest } from '../support/invariants.js';
import { startHarness, type Harness } from '../support/harness.js';
import { createSlowGuest } from '../support/slow-guest.js';

const tag = `${process.pid}`;
const cramped = join(tmpdir(), `vmsnap-nospace-${tag}`);
let h: Harness | undefined;
let guest: Guest | undefined;
let big: Guest | undefined;
let mounted = false;
const MiB = 2 ** 20;

describe('a copy that cannot fit', { timeout: 600_000 }, () => {
  before(async () => {
    mkdirSync(cramped, { recursive: true });
    // 16 MiB for a disk with 64 MiB of data.
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=16m,mode=0711', 'tmpfs', cramped]);
    mounted = true;
    h = await startHarness({ name: 'no-space', env: { VMSNAP_SNAPSHOTS_DIR: cramped } });
    guest = await createSlowGuest({ name: `vmsnap-test-nospace-${tag}`, guestsDir: h.guestsDir, assetsDir: h.assetsDir, dataMiB: 64 });
  });

  after(async () => {
    for (const g of [guest, big]) if (g && h) await removeGuest(g.name, h.guestsDir).catch(() => undefined);
    await h?.close();
    if (mounted) await execa('umount', [cramped]);
    rmSync(cramped, { recursive: true, force: true });
  });

  for (const mode of ['cold', 'live'] as const) {
    it(`${mode}: fails with NoSpace before the guest is touched, naming the dir, the space needed and free`, async () => {
      const harness = h!;
      const g = guest!;
      const imageName = `vmsnap-test-${tag}-nospace-${mode}`;
      const watch = await harness.hypervisor.watchPauses(g.uuid);
      let error: unknown;
      const handle = await startSnapshot(harness.client, { instance: g.uuid, imageName, mode }, harness.config.temporal.taskQueue);
      try {
        await handle.result();
      } catch (err) {
        error = err;
      }
      const pauses = await watch.stop();

      assert.ok(error instanceof WorkflowFailedError, `the snapshot failed (${String(error)})`);
      const cause = error.cause as { type?: string; message: string } | undefined;
      assert.equal(cause?.type, 'NoSpace', cause?.message);
      assert.match(cause.message, new RegExp(`needs \\d+ MiB in ${cramped} .*which has \\d+ MiB free`));
      assert.match(cause.message, /the guest was not touched/);

      // QEMU's own events: the vCPUs never stopped; and vmsnap never recorded a pause.
      assert.deepEqual(pauses.events, [], JSON.stringify(pauses.events));
      assert.equal(pauses.pausedMs, 0);
      const events = await harness.store.listEvents(g.uuid);
      const mine = events.filter((e) => e.requestId.startsWith(handle.workflowId));
      assert.ok(!mine.some((e) => e.event === 'pause' || e.event === 'freeze'), JSON.stringify(mine.map((e) => e.event)));

      assertAllHeld(await checkRunningGuest(harness, g, imageName, 'NoSpace', 'NoSpace'));
    });
  }

  it('live, streamed: a 1 GiB guest with 512 MiB of data completes with the snapshots dir a 64 MiB tmpfs, the overlay its only use', async () => {
    const harness = h!;
    await execa('mount', ['-o', 'remount,size=64m', cramped]);
    big = await createSlowGuest({
      name: `vmsnap-test-nospace-big-${tag}`,
      guestsDir: harness.guestsDir,
      assetsDir: harness.assetsDir,
      dataMiB: 512,
      diskSizeMiB: 1024,
    });
    const imageName = `vmsnap-test-${tag}-nospace-streamed`;
    // The tmpfs's use, sampled while the snapshot runs: the overlay and nothing else.
    let peakUsed = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const { stdout } = await execa('df', ['--output=used', '-B1', cramped]);
        peakUsed = Math.max(peakUsed, Number(stdout.trim().split('\n').pop()));
        await sleep(100);
      }
    })();
    let result;
    try {
      result = await (await startSnapshot(harness.client, { instance: big.uuid, imageName, mode: 'live' }, harness.config.temporal.taskQueue)).result();
    } finally {
      sampling = false;
      await sampler;
    }
    assert.equal(result.mode, 'live');
    assert.equal(result.transfer, 'streamed', result.transferNote);
    assert.match(result.transferNote ?? '', /overlay capped at \d+ MiB by the free space/);
    assert.equal(result.virtualSize, 1024 * MiB);
    assert.ok(result.size >= 512 * MiB, `the image holds the data: ${result.size} bytes`);
    assert.ok(
      peakUsed < 64 * MiB && (result.hostScratchBytes ?? Infinity) < 64 * MiB,
      `tmpfs used at most ${peakUsed} bytes, overlay ${result.hostScratchBytes}`,
    );
    assert.equal((await harness.glance.getImage(result.imageId))?.status, 'active');
    assert.deepEqual(readdirSync(cramped), [], 'the overlay and socket removed');
    assert.equal(await guestState(big.name), 'running');
  });
});
