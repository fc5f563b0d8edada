// One measured run of one variant on one guest: the guest's idle counter rate first, then the
// variant, with the guest-visible pause read from QEMU's own STOP/RESUME events and the guest's
// progress from its counter before and after. The same for every variant, so they compare.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Guest } from '../../scripts/lib/guest.js';
import type { Hypervisor, PauseEvent } from '../../src/drivers/hypervisor.js';
import { counterNow, rate } from './guests.js';
import type { DiskKind, Mode } from './options.js';
import { watchCpuUse, type CpuUse } from './cpu-use.js';
import { sampleRss } from './proc.js';
import { median } from './stats.js';
import type { VariantResult } from './variants.js';
import { sampleWrites, writeActivity } from './write-activity.js';

/** Steps before the copy, and the copy's own, in the order each variant runs them. */
const BEFORE_COPY = ['starting', 'creating-image', 'waiting-for-host'];
const COPY = ['suspend', 'convert', 'resume', 'converting', 'copying'];

/**
 * Where the copy lay in the run: from the variant's start, the steps before it, then its own. A
 * streamed live snapshot's backup job lives through the upload too (issue 29): its window does.
 */
function copyWindow(start: number, phasesMs: Record<string, number>, streamed: boolean): [number, number] | undefined {
  const copyMs = [...COPY, ...(streamed ? ['uploading'] : [])].reduce((a, k) => a + (phasesMs[k] ?? 0), 0);
  if (copyMs <= 0) return undefined;
  const from = start + BEFORE_COPY.reduce((a, k) => a + (phasesMs[k] ?? 0), 0);
  return [from, from + copyMs];
}

export interface Sample extends Partial<VariantResult> {
  disk: DiskKind;
  mode: Mode;
  /** Run number (1-based) and this variant's place in the run's order. */
  run: number;
  position: number;
  ok: boolean;
  error?: string;
  /** Guest vCPUs stopped, from QEMU STOP/RESUME (sum over the run). */
  pauseMs?: number;
  pauseEvents?: PauseEvent[];
  /** Counter steps per second: before the run, and across it. */
  idleRate?: number;
  snapshotRate?: number;
  /** snapshotRate / idleRate. */
  progressRatio?: number;
  /** Upload throughput, MiB/s: image bytes over uploadMs. */
  throughputMiBps?: number;
  /** vmsnap: the worker's RSS before the run (median of the idle window), KiB. */
  workerIdleRssKiB?: number;
  /**
   * The guest's disk writes as QEMU completed them (wr_req, sampled every few ms): the longest
   * stretch without one during the copy (idle: the same in the idle window), and completed
   * writes per second during the copy against idle.
   */
  copyWriteStallMs?: number;
  idleWriteStallMs?: number;
  copyWriteRatio?: number;
  /** The sampling's longest gap during the copy: stalls shorter than this are not seen. */
  writeSampleGapMs?: number;
  /** CPU-seconds by process group while the variant ran (bench/lib/cpu-use.ts). */
  cpuUseS?: CpuUse;
}

export async function measureRun(opts: {
  disk: DiskKind;
  mode: Mode;
  run: number;
  position: number;
  guest: Guest;
  hypervisor: Hypervisor;
  idleMs: number;
  /** libvirt of the guest, for its block statistics (default qemu:///system). */
  libvirtUri?: string;
  /** A process whose idle RSS is wanted (the vmsnap worker). */
  rssPid?: number;
  /** The vmsnap worker, whose CPU counts as its own group (also while bare runs beside it). */
  workerPid?: number;
  variant: () => Promise<VariantResult>;
}): Promise<Sample> {
  const base: Sample = { disk: opts.disk, mode: opts.mode, run: opts.run, position: opts.position, ok: false };
  const watch = await opts.hypervisor.watchPauses(opts.guest.uuid);
  let stopped = false;
  // Every 10 ms: fine enough for a 50 ms stall target, light enough on QEMU's monitor.
  const writes = sampleWrites(opts.libvirtUri ?? 'qemu:///system', opts.guest.uuid, 'vda', 10);
  let writesStopped = false;
  try {
    const idleSampler = opts.rssPid ? sampleRss(opts.rssPid, 50) : undefined;
    const c0 = await counterNow(opts.guest);
    const idleFrom = performance.now();
    await sleep(opts.idleMs);
    const idleTo = performance.now();
    const c1 = await counterNow(opts.guest);
    const idleRss = idleSampler?.stop().map((s) => s.kib);
    let result: VariantResult | undefined;
    let error: string | undefined;
    const variantStart = performance.now();
    const cpu = watchCpuUse(opts.workerPid);
    try {
      result = await opts.variant();
    } catch (err) {
      error = (err as Error).message;
    }
    const cpuUseS = cpu.stop();
    const c2 = await counterNow(opts.guest);
    stopped = true;
    const pauses = await watch.stop();
    const writeSamples = await writes.stop();
    writesStopped = true;
    const idleWrites = writeActivity(writeSamples, idleFrom, idleTo);
    const window = result ? copyWindow(variantStart, result.phasesMs, result.resultExtra?.transfer === 'streamed') : undefined;
    const copyWrites = window ? writeActivity(writeSamples, window[0], window[1]) : undefined;
    const idleRate = rate(c0, c1);
    const snapshotRate = rate(c1, c2);
    const sample: Sample = {
      ...base,
      ...result,
      ok: result !== undefined,
      ...(error ? { error } : {}),
      pauseMs: pauses.pausedMs,
      pauseEvents: pauses.events,
      cpuUseS,
      idleRate,
      snapshotRate,
      ...(idleRate > 0 ? { progressRatio: snapshotRate / idleRate } : {}),
      ...(idleRss?.length ? { workerIdleRssKiB: median(idleRss) } : {}),
      ...(idleWrites ? { idleWriteStallMs: idleWrites.longestStallMs } : {}),
      ...(copyWrites ? { copyWriteStallMs: copyWrites.longestStallMs, writeSampleGapMs: copyWrites.worstSampleGapMs } : {}),
      ...(copyWrites && idleWrites && idleWrites.writesPerSecond > 0 ? { copyWriteRatio: copyWrites.writesPerSecond / idleWrites.writesPerSecond } : {}),
    };
    if (result && result.uploadMs > 0) sample.throughputMiBps = result.imageBytes / (1024 * 1024) / (result.uploadMs / 1000);
    return sample;
  } finally {
    if (!stopped) await watch.stop().catch(() => undefined);
    if (!writesStopped) await writes.stop().catch(() => undefined);
  }
}
