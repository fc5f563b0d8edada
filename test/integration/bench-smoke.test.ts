// The benchmark harness (bench/run.ts) in --quick mode on the test stack: one run of bare and of
// vmsnap cold on a small disk, scale 1. Checks that it writes its JSON, markdown and SVG with
// sane figures, and that it leaves no guest and no image behind. The numbers are not judged
// here (one run on a shared machine says little); that they exist and make sense is.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { DEFAULT_INTERVAL_MS as GUEST_WRITE_INTERVAL_MS, removeGuest } from '../../scripts/lib/guest.js';
import type { Sample } from '../../bench/lib/measure.js';
import type { BenchResults } from '../../bench/lib/results.js';
import { closeTestCloud, glanceAuth, stackGlanceUrl } from '../support/cloud.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const libvirtUri = process.env.VMSNAP_LIBVIRT_URI ?? 'qemu:///system';
const dataDir = process.env.VMSNAP_DATA_DIR ?? '.data/test';
const out = mkdtempSync(join(tmpdir(), 'vmsnap-bench-smoke-'));

const positive = (v: number | undefined, what: string) =>
  assert.ok(typeof v === 'number' && Number.isFinite(v) && v > 0, `${what} should be a positive number, got ${v}`);

let harnessPid: number | undefined;

describe('benchmark harness, quick mode', { timeout: 300_000 }, () => {
  after(async () => {
    rmSync(out, { recursive: true, force: true });
    await closeTestCloud();
    // Backstop for a harness killed before its own cleanup: its guests carry its pid.
    if (harnessPid === undefined) return;
    const list = await execa('virsh', ['-c', libvirtUri, 'list', '--all', '--name'], { reject: false });
    for (const name of list.stdout
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l.startsWith(`vmsnap-bench-${harnessPid}-`))) {
      await removeGuest(name, join(dataDir, 'guests')).catch(() => undefined);
    }
  });

  it('runs bare and vmsnap cold side by side and writes JSON, markdown and SVG with sane values', async () => {
    // On timeout the harness gets SIGTERM and time to clean up before SIGKILL, all within the test's 120 s.
    const sub = execa(process.execPath, ['--import', 'tsx', 'bench/run.ts', '--quick', '--stack', 'env', '--out', out], {
      cwd: ROOT,
      reject: false,
      all: true,
      timeout: 80_000,
      forceKillAfterDelay: 30_000,
    });
    harnessPid = sub.pid;
    const r = await sub;
    assert.equal(r.exitCode, 0, `bench exited ${r.exitCode}${r.timedOut ? ' (timed out)' : ''}:\n${r.all}`);

    const results = JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8')) as BenchResults;
    assert.equal(results.schema, 'vmsnap-bench/1');
    assert.equal(results.stack.kind, 'env', 'quick mode used the stack from the environment');
    assert.deepEqual(results.errors, []);
    positive(results.machine.nproc, 'nproc');
    positive(results.machine.memoryMiB, 'memory');
    for (const key of ['kernel', 'qemu', 'libvirt', 'glance'] as const) assert.notEqual(results.machine[key], 'unknown', `machine ${key}`);
    assert.equal(results.machine.loadAverageStart.length, 3);
    assert.equal(results.machine.loadAverageEnd?.length, 3);

    // Raw samples: one bare and one cold run of the small disk, both complete.
    const of = (mode: string) => results.samples.filter((s: Sample) => s.disk === 'small' && s.mode === mode);
    const [bare] = of('bare');
    const [cold] = of('cold');
    assert.ok(bare && cold, `one bare and one cold sample expected, got ${JSON.stringify(results.samples.map((s) => [s.disk, s.mode]))}`);
    assert.equal(results.samples.length, 2);
    for (const s of [bare, cold]) {
      assert.ok(s.ok, `${s.mode} failed: ${s.error}`);
      positive(s.wallMs, `${s.mode} wall time`);
      positive(s.pauseMs, `${s.mode} guest-visible pause`);
      positive(s.imageBytes, `${s.mode} image size`);
      positive(s.throughputMiBps, `${s.mode} throughput`);
      positive(s.idleRate, `${s.mode} idle counter rate`);
      positive(s.progressRatio, `${s.mode} guest progress`);
      // Both copied the same disk the same way: about the same image.
      assert.deepEqual(
        s.pauseEvents?.map((e) => e.type),
        ['STOP', 'RESUME'],
        `${s.mode}: one pause seen through QEMU events`,
      );
      // What the guest's disk felt: sampled, and a paused guest completes no write, so the
      // longest stall covers most of the pause.
      positive(s.copyWriteStallMs, `${s.mode} write stall during the copy`);
      positive(s.idleWriteStallMs, `${s.mode} write stall when idle`);
      positive(s.writeSampleGapMs, `${s.mode} write sampling gap`);
      assert.ok(typeof s.copyWriteRatio === 'number' && s.copyWriteRatio >= 0, `${s.mode} write rate ratio ${s.copyWriteRatio}`);
      // Not the whole pause: a write the guest issued just before it completes while QEMU drains,
      // and the guest writes every 20 ms, so a short pause can show as that much less.
      const seen = s.pauseMs! - GUEST_WRITE_INTERVAL_MS - s.writeSampleGapMs!;
      assert.ok(s.copyWriteStallMs! >= seen, `${s.mode}: stall ${s.copyWriteStallMs} ms while paused ${s.pauseMs} ms (sampling gap ${s.writeSampleGapMs} ms)`);
    }
    assert.ok(
      Math.abs(bare.imageBytes! - cold.imageBytes!) < 4 * 1024 * 1024,
      `bare ${bare.imageBytes} and cold ${cold.imageBytes} images should be about the same size`,
    );
    assert.ok(bare.pauseMs! < bare.wallMs!, 'the pause is part of the wall time');
    positive(cold.reportedPauseMs, "vmsnap's own pause figure");
    positive(cold.workerIdleRssKiB, 'worker idle RSS');
    assert.ok(cold.workerIdleRssKiB! > 20 * 1024, `a Node worker holds more than 20 MiB (got ${cold.workerIdleRssKiB} KiB): RSS read from the wrong process?`);

    // Ratios to bare, of the same run.
    const small = results.summary.find((d) => d.disk === 'small');
    const ratios = small?.ratios.cold;
    assert.ok(ratios, 'cold/bare ratios for the small disk');
    for (const [k, v] of Object.entries(ratios)) positive(v, `cold/bare ${k}`);
    assert.ok(Number.isFinite(small?.overheadMs.cold?.ofMedians), 'orchestration overhead on the small disk');

    // Scale 1: both variants, no failure.
    assert.deepEqual(results.scale.map((s) => [s.n, s.mode, s.failures]).sort(), [
      [1, 'bare', 0],
      [1, 'cold', 0],
    ]);
    for (const s of results.scale) positive(s.wallMs, `scale ${s.mode} wall`);

    // Targets: judged where measured, "not judged" where not.
    const pause = results.targets.find((t) => t.id === 'cold-pause-small');
    assert.ok(pause && typeof pause.pass === 'boolean', 'cold pause target judged');
    assert.equal(pause.value, cold.pauseMs! - bare.pauseMs!, 'the small disk: cold pause minus bare pause');
    assert.match(pause.baseline ?? '', /^\d+ ms vs bare \d+ ms$/);
    assert.equal(results.targets.find((t) => t.id === 'scale-cold')?.pass, null, '20 at once was not run: not judged');
    const overhead = results.targets.find((t) => t.id === 'overhead-small-cold');
    assert.equal(overhead?.value, cold.wallMs! - bare.wallMs!, 'fixed overhead: vmsnap wall minus bare wall of the same run');
    positive(results.worker.hashCpuSPerGiB, 'sha512 floor');
    if (!results.live.available) assert.ok(results.live.reason, 'why live is not available');

    const md = readFileSync(join(out, 'latest.md'), 'utf8');
    assert.match(md, /^# vmsnap against the bare commands/);
    assert.match(md, /## Targets/);
    assert.match(md, /\| cold pause ≤ bare pause \+ 30 ms \| small \| -?\d+ ms \| ≤ 30 ms \| \*\*(pass|MISS)\*\* \| .* \| \d+ ms vs bare \d+ ms \|/);
    assert.match(md, /\| figure \(median\) \| bare \| cold \| cold\/bare \|/);
    assert.match(md, /\| guest-visible pause \(QEMU STOP→RESUME\) \| \d+ ms \| \d+ ms \| \d+\.\d\d× \|/);
    assert.match(md, /\| guest write stall during the copy \(QEMU wr_req, worst run\) \| \d+ ms \| \d+ ms \|/);
    assert.match(md, /Load average at start [\d.]+ \/ [\d.]+ \/ [\d.]+, at end [\d.]+/);

    const svg = readFileSync(join(out, 'latest.svg'), 'utf8');
    assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg" width="\d+" height="\d+"/);
    assert.match(svg, /<\/svg>\n$/);
    assert.equal((svg.match(/<text\b/g) ?? []).length, (svg.match(/<\/text>/g) ?? []).length, 'balanced text elements');
    assert.ok(svg.includes('small disk') && svg.includes('cold · pause'), 'the chart shows the small disk’s cold pause');
    assert.ok(!/NaN|undefined/.test(svg), 'no NaN or undefined drawn');

    // Nothing left behind: guests named after the harness's pid, images it made.
    const guests = await execa('virsh', ['-c', libvirtUri, 'list', '--all', '--name']);
    assert.ok(!guests.stdout.includes(`vmsnap-bench-${sub.pid}-`), `guests left behind:\n${guests.stdout}`);
    for (const s of results.samples) {
      const res = await fetch(`${await stackGlanceUrl()}/v2/images/${s.imageId}`, { headers: await glanceAuth() });
      await res.body?.cancel();
      assert.equal(res.status, 404, `image ${s.imageId} (${s.mode}) left in Glance`);
    }
  });
});
