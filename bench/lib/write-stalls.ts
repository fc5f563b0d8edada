// `npm run bench -- --section write-stalls`: what the guest's disk writes feel while its disk is
// copied, at the driver level (no Temporal, no upload), so that only the copy differs:
//   cold: pause, qemu-img convert -U, resume (what cold mode does around its copy);
//   live pull: LibvirtHypervisor.liveCopy method 'pull' (the default where the host allows it);
//   live push: liveCopy method 'push' (the method before issue 13).
// Same guest, variants alternating run by run, each after an idle window whose figures are the
// baseline: the longest stretch with no completed guest write (QEMU's wr_req, read every 5 ms),
// and completed writes per second during the copy ÷ in the idle window just before.
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Guest } from '../../scripts/lib/guest.js';
import type { LibvirtHypervisor } from '../../src/drivers/libvirt.js';
import { convert } from '../../src/drivers/qemu-img.js';
import type { DiskSpec } from './options.js';
import { median } from './stats.js';
import { sampleWrites, writeActivity } from './write-activity.js';

export const STALL_VARIANTS = ['cold', 'live-pull', 'live-push'] as const;
export type StallVariant = (typeof STALL_VARIANTS)[number];

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
        const order = STALL_VARIANTS.map((_, i) => STALL_VARIANTS[(i + run - 1) % STALL_VARIANTS.length]!);
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

async function oneRun(
  o: { idleMs: number; libvirtUri: string; hypervisor: LibvirtHypervisor; workDir: string },
  guest: Guest,
  disk: DiskSpec,
  variant: StallVariant,
  run: number,
): Promise<StallSample> {
  const target = join(o.workDir, `stall-${disk.kind}-${variant}.qcow2`);
  const sampler = sampleWrites(o.libvirtUri, guest.name, 'vda', 5);
  const idleFrom = performance.now();
  await sleep(o.idleMs);
  const from = performance.now();
  let error: string | undefined;
  try {
    if (variant === 'cold') {
      await o.hypervisor.pause(guest.uuid);
      try {
        await convert({ source: guest.diskPath, sourceFormat: 'qcow2', target, targetFormat: 'qcow2', forceShare: true });
      } finally {
        await o.hypervisor.resume(guest.uuid);
      }
    } else {
      await o.hypervisor.liveCopy(guest.uuid, {
        target,
        targetFormat: 'qcow2',
        quiesce: 'never',
        method: variant === 'live-pull' ? 'pull' : 'push',
      });
    }
  } catch (err) {
    error = (err as Error).message;
  }
  const to = performance.now();
  // A little after the copy, so the last stretch of the copy is closed by a sample.
  await sleep(200);
  const all = await sampler.stop();
  await rm(target, { force: true });
  const idle = writeActivity(all, idleFrom, from);
  const during = writeActivity(all, from, to);
  const base = { disk: disk.kind, variant, run };
  if (error || !idle || !during) return { ...base, ok: false, error: error ?? 'too few write samples' };
  return {
    ...base,
    ok: true,
    copyMs: Math.round(to - from),
    idleStallMs: idle.longestStallMs,
    stallMs: during.longestStallMs,
    rateRatio: idle.writesPerSecond > 0 ? during.writesPerSecond / idle.writesPerSecond : 0,
    sampleGapMs: during.worstSampleGapMs,
    idleSampleGapMs: idle.worstSampleGapMs,
  };
}

const f0 = (n: number | undefined) => (n === undefined ? '–' : n.toFixed(0));
const f2 = (n: number | undefined) => (n === undefined ? '–' : n.toFixed(2));

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
    'Driver level, same guest per disk, variants alternating run by run, medians. Idle = the window just before each copy, the baseline of the same run. ' +
      "A stall is the longest stretch with no completed guest write (the guest writes its counter with fsync every 20 ms); it cannot be told apart from the sampler's own gap (QMP through libvirt, answered by QEMU's main loop), which is shown beside it.",
    '',
  ];
  for (const disk of meta.disks) {
    lines.push(`## ${disk.kind}: ${disk.virtualMiB} MiB virtual, ${disk.dataMiB} MiB data`, '');
    lines.push(
      '| variant | copy, ms | longest stall, ms | idle stall, ms | stall − idle stall, ms | write rate vs idle | sampler gap copy / idle, ms | runs (failed) |',
    );
    lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const variant of STALL_VARIANTS) {
      const all = samples.filter((s) => s.disk === disk.kind && s.variant === variant);
      const ok = all.filter((s) => s.ok);
      const m = (k: keyof StallSample) => (ok.length ? median(ok.map((s) => s[k] as number)) : undefined);
      const excess = ok.length ? median(ok.map((s) => s.stallMs! - s.idleStallMs!)) : undefined;
      lines.push(
        `| ${variant} | ${f0(m('copyMs'))} | ${f0(m('stallMs'))} | ${f0(m('idleStallMs'))} | ${f0(excess)} | ${f2(m('rateRatio'))}× | ${f0(m('sampleGapMs'))} / ${f0(m('idleSampleGapMs'))} | ${all.length} (${all.length - ok.length}) |`,
      );
      if (variant === 'live-pull' && ok.length) {
        const stall = m('stallMs')!;
        const rate = m('rateRatio')!;
        targets.push(
          `${disk.kind} live (pull): longest stall ${stall.toFixed(0)} ms (limit 50): ${stall <= 50 ? 'pass' : 'MISS'}; write rate ${rate.toFixed(2)}× idle (limit 0.8): ${rate >= 0.8 ? 'pass' : 'MISS'}`,
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
