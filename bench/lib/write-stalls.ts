// `npm run bench -- --section write-stalls`: what the guest's disk writes feel while its disk is
// copied, at the driver level (no Temporal, no upload), so that only the copy differs:
//   idle: nothing copied, the same window: the floor every other figure is read against (the
//     guest under TCG on a shared host has gaps of its own);
//   bare-cold: what an operator scripts: `virsh suspend; qemu-img convert -U; virsh resume`;
//   cold: vmsnap's cold copy (pause, qemu-img convert -U, resume through the driver);
//   live-pull: LibvirtHypervisor.liveCopy method 'pull' (the copy: push, hosts without libnbd);
//   live-stream: the streamed live snapshot (issue 29, the default): the pull job left running
//     (startLiveExport) while vmsnap's stream makes the qcow2 from its export and hashes it, as the
//     upload does (sent nowhere: Glance's share of the host is not in it), then the job ended;
//   live-push: liveCopy method 'push' (the method before issue 13);
//   pull-*: tunings of the pull copy (stall-variants.ts), compared to choose the default.
// Same guest, variants alternating run by run, each after an idle window whose figures are the
// baseline: the longest stretch with no completed guest write (QEMU's wr_req, read every 5 ms),
// and completed writes per second during the copy ÷ in the idle window just before.
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import type { Guest } from '../../scripts/lib/guest.js';
import type { LibvirtHypervisor } from '../../src/drivers/libvirt.js';
import { createHash } from 'node:crypto';
import { dirForQemu } from '../../src/activities/live-copy.js';
import { nbdUnixUri, openNbdReader, readAllocationMap } from '../../src/drivers/nbd.js';
import { convert } from '../../src/drivers/qemu-img.js';
import { planQcow2Stream } from '../../src/drivers/qcow2-stream.js';
import type { DiskSpec } from './options.js';
import { median } from './stats.js';
import { DEFAULT_STALL_VARIANTS, STALL_VARIANTS, liveOptionsOf, type StallVariant } from './stall-variants.js';
import { sampleWrites, writeActivity } from './write-activity.js';

export { STALL_VARIANTS, type StallVariant } from './stall-variants.js';

/** The idle variant's window: about as long as the large disk's live copy. */
const IDLE_VARIANT_MS = 3000;
/** Sampling goes on this long after each copy (see oneRun). */
const TAIL_MS = 500;

export interface StallSample {
  disk: string;
  variant: StallVariant;
  run: number;
  ok: boolean;
  error?: string;
  copyMs?: number;
  idleStallMs?: number;
  stallMs?: number;
  /** Writes per second during the copy ÷ idle. */
  rateRatio?: number;
  /** The sampler's own longest gap during the copy: a stall shorter than that cannot be seen. */
  sampleGapMs?: number;
  idleSampleGapMs?: number;
}

export async function runWriteStallBench(o: {
  runs: number;
  variants?: readonly StallVariant[];
  disks: DiskSpec[];
  idleMs: number;
  libvirtUri: string;
  hypervisor: LibvirtHypervisor;
  workDir: string;
  prefix: string;
  newGuest: (name: string, spec: DiskSpec) => Promise<Guest>;
  dropGuest: (name: string) => Promise<void>;
  log: (line: string) => void;
}): Promise<StallSample[]> {
  const samples: StallSample[] = [];
  for (const disk of o.disks) {
    const name = `${o.prefix}-stall-${disk.kind}`;
    o.log(`write-stalls: creating guest ${name} (${disk.virtualMiB} MiB virtual, ${disk.dataMiB} MiB data)`);
    const guest = await o.newGuest(name, disk);
    try {
      for (let run = 1; run <= o.runs; run++) {
        // Rotate the order so that no variant always follows the same one.
        const variants = o.variants ?? DEFAULT_STALL_VARIANTS;
        const order = variants.map((_, i) => variants[(i + run - 1) % variants.length]!);
        for (const variant of order) {
          const s = await oneRun(o, guest, disk, variant, run);
          samples.push(s);
          o.log(
            `write-stalls ${disk.kind} ${variant} run ${run}: ` +
              (s.ok
                ? `copy ${s.copyMs} ms, stall ${s.stallMs?.toFixed(0)} ms (idle ${s.idleStallMs?.toFixed(0)}), rate ${s.rateRatio?.toFixed(2)}× idle`
                : `FAILED ${s.error}`),
          );
        }
      }
    } finally {
      await o.dropGuest(name);
    }
  }
  return samples;
}

/** The streamed live snapshot at the driver level: the job, the image made from its export and hashed, the job ended. */
async function streamLive(o: { hypervisor: LibvirtHypervisor; workDir: string }, guest: Guest, name: string): Promise<void> {
  const dir = await dirForQemu(o.workDir, name);
  try {
    const started = await o.hypervisor.startLiveExport(guest.uuid, { dir, quiesce: 'never', method: 'pull' });
    if (!started.started) throw new Error(`no live export: ${started.reason}`);
    const uri = nbdUnixUri(started.socket, started.exportName);
    const reader = await openNbdReader(uri);
    try {
      const plan = await planQcow2Stream(await readAllocationMap(uri), reader, { scanZeros: false });
      const hash = createHash('sha512');
      for await (const chunk of plan.chunks({ reuseBuffers: true })) hash.update(chunk);
      hash.digest();
    } finally {
      await reader.close();
    }
  } finally {
    await o.hypervisor.abortLiveCopy(guest.uuid, dir);
    await rm(dir, { recursive: true, force: true });
  }
}

async function oneRun(
  o: { idleMs: number; libvirtUri: string; hypervisor: LibvirtHypervisor; workDir: string },
  guest: Guest,
  disk: DiskSpec,
  variant: StallVariant,
  run: number,
): Promise<StallSample> {
  const target = join(variant === 'pull-tmpfs' ? '/dev/shm' : o.workDir, `stall-${disk.kind}-${variant}.qcow2`);
  const sampler = sampleWrites(o.libvirtUri, guest.name, 'vda', 5);
  const idleFrom = performance.now();
  await sleep(o.idleMs);
  const from = performance.now();
  let error: string | undefined;
  try {
    const live = liveOptionsOf(variant);
    if (variant === 'idle') {
      await sleep(IDLE_VARIANT_MS);
    } else if (variant === 'bare-cold') {
      const virsh = (...args: string[]) => execa('virsh', ['-c', o.libvirtUri, ...args]);
      await virsh('suspend', guest.name);
      try {
        await execa('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', guest.diskPath, target]);
      } finally {
        await virsh('resume', guest.name);
      }
    } else if (variant === 'cold') {
      await o.hypervisor.pause(guest.uuid);
      try {
        await convert({ source: guest.diskPath, sourceFormat: 'qcow2', target, targetFormat: 'qcow2', forceShare: true });
      } finally {
        await o.hypervisor.resume(guest.uuid);
      }
    } else if (variant === 'live-stream') {
      await streamLive(o, guest, `stall-${disk.kind}-stream`);
    } else if (live) {
      await o.hypervisor.liveCopy(guest.uuid, { target, targetFormat: 'qcow2', quiesce: 'never', ...live });
    }
  } catch (err) {
    error = (err as Error).message;
  }
  const to = performance.now();
  // A stall that the copy began is counted until the guest's next write, after the copy too (a
  // pause outlasts a short cold copy); the rate is the copy's own window.
  await sleep(TAIL_MS);
  const all = await sampler.stop();
  await rm(target, { force: true });
  const idle = writeActivity(all, idleFrom, from);
  const during = writeActivity(all, from, to);
  const stall = writeActivity(all, from, to + TAIL_MS);
  const base = { disk: disk.kind, variant, run };
  if (error || !idle || !during || !stall) return { ...base, ok: false, error: error ?? 'too few write samples' };
  return {
    ...base,
    ok: true,
    copyMs: Math.round(to - from),
    idleStallMs: idle.longestStallMs,
    stallMs: stall.longestStallMs,
    rateRatio: idle.writesPerSecond > 0 ? during.writesPerSecond / idle.writesPerSecond : 0,
    sampleGapMs: during.worstSampleGapMs,
    idleSampleGapMs: idle.worstSampleGapMs,
  };
}

const f0 = (n: number | undefined) => (n === undefined ? '–' : n.toFixed(0));
const f2 = (n: number | undefined) => (n === undefined ? '–' : n.toFixed(2));

export interface StallRow {
  variant: StallVariant;
  copyMs?: number;
  stallMs?: number;
  /** Median longest stall minus the idle floor of the same disk. */
  overFloorMs?: number;
  /** Median of (longest stall − the idle window just before it). */
  overIdleBeforeMs?: number;
  rateRatio?: number;
  sampleGapMs?: number;
  idleSampleGapMs?: number;
  runs: number;
  failed: number;
}

/**
 * Medians per variant of one disk. The floor is the idle variant's longest stall (the same
 * window with nothing copied), else the idle windows' before each copy.
 */
export function stallRows(samples: StallSample[], disk: string): { floorMs?: number; rows: StallRow[] } {
  const mine = samples.filter((s) => s.disk === disk);
  const ok = (v: StallVariant) => mine.filter((s) => s.variant === v && s.ok);
  const idle = ok('idle');
  const floors = idle.length ? idle.map((s) => s.stallMs!) : mine.filter((s) => s.ok).map((s) => s.idleStallMs!);
  const floorMs = floors.length ? median(floors) : undefined;
  const rows: StallRow[] = [];
  for (const variant of STALL_VARIANTS) {
    const all = mine.filter((s) => s.variant === variant);
    if (!all.length) continue;
    const good = ok(variant);
    const m = (k: keyof StallSample) => (good.length ? median(good.map((s) => s[k] as number)) : undefined);
    const stallMs = m('stallMs');
    rows.push({
      variant,
      copyMs: m('copyMs'),
      stallMs,
      overFloorMs: stallMs !== undefined && floorMs !== undefined ? stallMs - floorMs : undefined,
      overIdleBeforeMs: good.length ? median(good.map((s) => s.stallMs! - s.idleStallMs!)) : undefined,
      rateRatio: m('rateRatio'),
      sampleGapMs: m('sampleGapMs'),
      idleSampleGapMs: m('idleSampleGapMs'),
      runs: all.length,
      failed: all.length - good.length,
    });
  }
  return { floorMs, rows };
}

export async function writeStallResults(
  out: string,
  samples: StallSample[],
  meta: { startedAt: string; machine: string; command: string; disks: DiskSpec[] },
): Promise<string[]> {
  const targets: string[] = [];
  const lines = [
    "# What the guest's disk writes feel during a copy (issue 13)",
    '',
    `Run ${meta.startedAt}: \`${meta.command}\`. ${meta.machine}.`,
    '',
    'Driver level, same guest per disk, variants alternating run by run, medians. ' +
      "A stall is the longest stretch with no completed guest write (the guest writes its counter with fsync every 20 ms, QEMU's write count read every 5 ms); " +
      "it cannot be told apart from the sampler's own gap (QMP through libvirt, answered by QEMU's main loop), shown beside it. " +
      `The idle floor is the \`idle\` row: the same guest, nothing copied, a ${IDLE_VARIANT_MS / 1000} s window; every stall is also shown above it. ` +
      `A stall begun during the copy counts until the guest's next write, up to ${TAIL_MS} ms after the copy (a pause outlasts a short cold copy). ` +
      'The write rate is writes per second during the copy ÷ in the idle window just before it. ' +
      '`bare-cold` is what an operator scripts: `virsh suspend; qemu-img convert -U; virsh resume`.',
    '',
  ];
  for (const disk of meta.disks) {
    const { floorMs, rows } = stallRows(samples, disk.kind);
    lines.push(`## ${disk.kind}: ${disk.virtualMiB} MiB virtual, ${disk.dataMiB} MiB data (idle floor ${f0(floorMs)} ms)`, '');
    lines.push(
      '| variant | copy, ms | longest stall, ms | stall − idle floor, ms | stall − idle just before, ms | write rate vs idle | sampler gap copy / idle, ms | runs (failed) |',
    );
    lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const r of rows) {
      lines.push(
        `| ${r.variant} | ${r.variant === 'idle' ? '–' : f0(r.copyMs)} | ${f0(r.stallMs)} | ${f0(r.overFloorMs)} | ${f0(r.overIdleBeforeMs)} | ${f2(r.rateRatio)}× | ${f0(r.sampleGapMs)} / ${f0(r.idleSampleGapMs)} | ${r.runs} (${r.failed}) |`,
      );
      if (r.variant === 'live-pull' && r.stallMs !== undefined && r.rateRatio !== undefined) {
        const over = r.overFloorMs;
        targets.push(
          `${disk.kind} live (pull): longest stall ${r.stallMs.toFixed(0)} ms (limit 50): ${r.stallMs <= 50 ? 'pass' : 'MISS'}` +
            (over !== undefined ? `, ${over.toFixed(0)} ms over the idle floor of ${f0(floorMs)} ms (${over <= 50 ? 'within' : 'over'} 50)` : '') +
            `; write rate ${r.rateRatio.toFixed(2)}× idle (limit 0.8): ${r.rateRatio >= 0.8 ? 'pass' : 'MISS'}`,
        );
      }
    }
    lines.push('');
  }
  const failed = samples.filter((s) => !s.ok);
  if (failed.length) lines.push('Failures:', '', ...failed.map((s) => `- ${s.disk} ${s.variant} run ${s.run}: ${s.error}`), '');
  lines.push('## Targets', '', ...targets.map((t) => `- ${t}`), '');
  await writeFile(join(out, 'write-stalls.md'), lines.join('\n'));
  await writeFile(join(out, 'write-stalls.json'), JSON.stringify({ ...meta, samples }, null, 2) + '\n');
  return targets;
}
