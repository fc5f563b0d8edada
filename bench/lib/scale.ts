// N snapshots at once of N small guests on one worker (and, for reference, N bare scripts at
// once): wall time from the first start to the last end, failures, and how many copies ran at once.
import type { Guest } from '../../scripts/lib/guest.js';
import type { Mode } from './options.js';
import os from 'node:os';
import { watchCpuUse } from './cpu-use.js';
import { convertChildren, cpuSeconds, sampleMax } from './proc.js';
import type { ScaleSample } from './results.js';
import { deleteImage, runBare, runVmsnap, type BareCtx, type VariantResult, type VmsnapCtx } from './variants.js';

export async function runScaleLevel(opts: {
  n: number;
  mode: Mode;
  rep: number;
  guests: Guest[];
  bare: BareCtx;
  vmsnap?: VmsnapCtx;
  imagePrefix: string;
}): Promise<ScaleSample> {
  const guests = opts.guests.slice(0, opts.n);
  const name = (g: Guest) => `${opts.imagePrefix}-scale${opts.n}-${opts.mode}-${opts.rep}-${g.name}`;
  const one = async (g: Guest): Promise<{ ms: number; result: VariantResult }> => {
    const t = performance.now();
    let result: VariantResult;
    if (opts.mode === 'bare') result = await runBare(opts.bare, g, name(g));
    else if (opts.vmsnap) result = await runVmsnap(opts.vmsnap, g, name(g), opts.mode, { sampleRss: false });
    else throw new Error(`no vmsnap worker for mode ${opts.mode}`);
    return { ms: performance.now() - t, result };
  };
  // Every 25 ms: a small disk's copy takes some tens of ms.
  // Cold only: a live copy is QEMU's own job, no qemu-img process to count.
  const copies = opts.vmsnap && opts.mode === 'cold' ? sampleMax(() => convertChildren(opts.vmsnap!.workerPid), 25) : undefined;
  const workerPid = opts.mode === 'bare' ? undefined : opts.vmsnap?.workerPid;
  const cpu0 = workerPid ? cpuSeconds(workerPid) : undefined;
  const cpu = watchCpuUse(opts.vmsnap?.workerPid);
  const t0 = performance.now();
  const settled = await Promise.allSettled(guests.map(one));
  const wallMs = performance.now() - t0;
  const cpu1 = workerPid ? cpuSeconds(workerPid) : undefined;
  const cpuUseS = cpu.stop();
  const maxConcurrentConverts = copies?.stop();

  const done = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  const errors = settled.flatMap((s) => (s.status === 'rejected' ? [String((s.reason as Error)?.message ?? s.reason).split('\n')[0] ?? ''] : []));
  // Images are not what is measured here: delete them so the disk does not fill up.
  const ctx = opts.mode === 'bare' ? opts.bare : opts.vmsnap!;
  for (const d of done) await deleteImage(ctx, d.result.imageId).catch(() => undefined);
  return {
    n: opts.n,
    mode: opts.mode,
    rep: opts.rep,
    wallMs,
    failures: errors.length,
    errors,
    perSnapshotMs: done.map((d) => d.ms),
    pauseMs: done.map((d) =>
      opts.mode === 'bare'
        ? (d.result.phasesMs.suspend ?? 0) + (d.result.phasesMs.convert ?? 0) + (d.result.phasesMs.resume ?? 0)
        : (d.result.reportedPauseMs ?? 0),
    ),
    waitingMs: opts.mode === 'bare' ? [] : done.map((d) => d.result.phasesMs['waiting-for-host'] ?? 0),
    ...(maxConcurrentConverts !== undefined ? { maxConcurrentConverts } : {}),
    ...(cpu0 !== undefined && cpu1 !== undefined ? { workerCpuS: cpu1 - cpu0 } : {}),
    cpuUseS,
    loadAverage1m: Math.round(os.loadavg()[0]! * 100) / 100,
  };
}
