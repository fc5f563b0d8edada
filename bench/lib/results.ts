// The results document (latest.json): raw samples, their medians and ratios to bare, the scale
// runs, and the targets with pass/miss.
import type { Machine } from './machine.js';
import type { Sample } from './measure.js';
import type { BenchOptions, DiskKind, DiskSpec, Mode } from './options.js';
import { linearFit, median, minMax, ratio } from './stats.js';

export interface ScaleSample {
  n: number;
  mode: Mode;
  rep: number;
  wallMs: number;
  failures: number;
  errors: string[];
  /** Each snapshot's own start-to-end time. */
  perSnapshotMs: number[];
  /** vmsnap: its own pause figures; bare: suspend start to resume end. */
  pauseMs: number[];
  /** vmsnap: time each snapshot waited for a host slot (phase waiting-for-host). */
  waitingMs: number[];
  /** Most qemu-img converts running at once under the worker (vmsnap only). */
  maxConcurrentConverts?: number;
  /** CPU seconds the worker used during the level (vmsnap only). */
  workerCpuS?: number;
  /** The host's 1-minute load average when the level ended. */
  loadAverage1m: number;
}

export interface ModeSummary {
  runs: number;
  failures: number;
  pauseMs: number;
  wallMs: number;
  throughputMiBps: number;
  progressRatio: number;
  /** The guest's disk writes (QEMU wr_req): worst run's longest stall during the copy, in the idle window, and the median write rate during the copy ÷ idle. */
  copyWriteStallMs?: number;
  idleWriteStallMs?: number;
  copyWriteRatio?: number;
  writeSampleGapMs?: number;
  imageMiB: number;
  uploaderPeakRssMiB?: number;
  /** Worst run: the worker's peak RSS during the upload, and that minus its idle RSS. */
  workerUploadPeakRssMiB?: number;
  workerRssOverIdleMiB?: number;
  workerIdleRssMiB?: number;
  reportedPauseMs?: number;
  fsyncMs?: number;
  uploadFdThroughputMiBps?: number;
  /** CPU seconds the uploader (curl, the worker) spent per GiB uploaded. */
  uploaderCpuSPerGiB?: number;
  /** vmsnap: what its results said about consistency (live mode), by count. */
  consistency?: Record<string, number>;
  phasesMs: Record<string, number>;
  /** Spread of the raw samples, to judge the noise. */
  wallRangeMs: [number, number];
  pauseRangeMs: [number, number];
}

export interface DiskSummary {
  disk: DiskKind;
  spec: DiskSpec;
  modes: Partial<Record<Mode, ModeSummary>>;
  /** Median of mode / median of bare, same run. */
  ratios: Partial<Record<Mode, { pause: number; wall: number; throughput: number; progress: number }>>;
  /** vmsnap wall - bare wall: difference of medians, and median of the paired per-run differences. */
  overheadMs: Partial<Record<Mode, { ofMedians: number; paired: number }>>;
}

export interface Target {
  id: string;
  label: string;
  scope: string;
  value: number | undefined;
  unit: 'x' | 'ms' | 'MiB' | 'failures';
  comparison: '<=' | '>=';
  limit: number;
  /** null: not measured (or not available yet). */
  pass: boolean | null;
  margin: string;
  note?: string;
}

export interface BenchResults {
  schema: 'vmsnap-bench/1';
  startedAt: string;
  finishedAt: string;
  durationS: number;
  argv: string[];
  options: BenchOptions;
  stack: { kind: 'own' | 'env'; glanceUrl: string; temporal: string; dataDir: string };
  machine: Machine;
  worker: {
    hostLimit?: { setting: string; value: number };
    hostLimitNote: string;
    logLevel: string;
    runtimeFloorKiB: { node?: number; nodeTsx?: number };
    /** CPU seconds Node needs to sha512 + md5 one GiB in one thread here, as vmsnap's upload does. */
    hashCpuSPerGiB: number;
  };
  live: { available: boolean; reason?: string };
  notes: string[];
  samples: Sample[];
  summary: DiskSummary[];
  scale: ScaleSample[];
  scaleGrowth: Partial<Record<Mode, { msPerSnapshot?: number; interceptMs?: number; wallRatioToOne: Record<string, number> }>>;
  targets: Target[];
  errors: string[];
}

const MiB = 1024 * 1024;
const med = (xs: (number | undefined)[]) => median(xs.filter((x): x is number => typeof x === 'number'));
const maxOf = (xs: (number | undefined)[]) => {
  const v = xs.filter((x): x is number => typeof x === 'number' && Number.isFinite(x));
  return v.length ? Math.max(...v) : undefined;
};

function summarizeMode(samples: Sample[]): ModeSummary {
  const ok = samples.filter((s) => s.ok);
  const phaseNames = new Set(ok.flatMap((s) => Object.keys(s.phasesMs ?? {})));
  const phasesMs: Record<string, number> = {};
  for (const name of phaseNames) phasesMs[name] = med(ok.map((s) => s.phasesMs?.[name]));
  const peaks = ok.map((s) => (s.uploaderPeakRssKiB !== undefined ? s.uploaderPeakRssKiB / 1024 : undefined));
  const overIdle = ok.map((s) =>
    s.mode !== 'bare' && s.uploaderPeakRssKiB !== undefined && s.workerIdleRssKiB !== undefined
      ? (s.uploaderPeakRssKiB - s.workerIdleRssKiB) / 1024
      : undefined,
  );
  const isVmsnap = samples[0]?.mode !== 'bare';
  const fdThroughput = ok.map((s) => (s.uploadFdMs ? s.imageBytes! / MiB / (s.uploadFdMs / 1000) : undefined));
  const summary: ModeSummary = {
    runs: samples.length,
    failures: samples.length - ok.length,
    pauseMs: med(ok.map((s) => s.pauseMs)),
    wallMs: med(ok.map((s) => s.wallMs)),
    throughputMiBps: med(ok.map((s) => s.throughputMiBps)),
    progressRatio: med(ok.map((s) => s.progressRatio)),
    imageMiB: med(ok.map((s) => (s.imageBytes !== undefined ? s.imageBytes / MiB : undefined))),
    phasesMs,
    wallRangeMs: minMax(ok.map((s) => s.wallMs ?? NaN)),
    pauseRangeMs: minMax(ok.map((s) => s.pauseMs ?? NaN)),
  };
  const cpuPerGiB = med(ok.map((s) => (s.uploaderCpuS !== undefined && s.imageBytes ? s.uploaderCpuS / (s.imageBytes / (1024 * MiB)) : undefined)));
  if (Number.isFinite(cpuPerGiB)) summary.uploaderCpuSPerGiB = cpuPerGiB;
  const consistency: Record<string, number> = {};
  for (const s of ok) {
    const c = s.resultExtra?.consistency;
    if (typeof c === 'string') consistency[c] = (consistency[c] ?? 0) + 1;
  }
  if (Object.keys(consistency).length) summary.consistency = consistency;
  const stall = maxOf(ok.map((s) => s.copyWriteStallMs));
  if (stall !== undefined) summary.copyWriteStallMs = stall;
  const idleStall = maxOf(ok.map((s) => s.idleWriteStallMs));
  if (idleStall !== undefined) summary.idleWriteStallMs = idleStall;
  const writeRatio = med(ok.map((s) => s.copyWriteRatio));
  if (Number.isFinite(writeRatio)) summary.copyWriteRatio = writeRatio;
  const gap = maxOf(ok.map((s) => s.writeSampleGapMs));
  if (gap !== undefined) summary.writeSampleGapMs = gap;
  if (isVmsnap) {
    const peak = maxOf(peaks);
    if (peak !== undefined) summary.workerUploadPeakRssMiB = peak;
    const over = maxOf(overIdle);
    if (over !== undefined) summary.workerRssOverIdleMiB = over;
    const idle = med(ok.map((s) => (s.workerIdleRssKiB !== undefined ? s.workerIdleRssKiB / 1024 : undefined)));
    if (Number.isFinite(idle)) summary.workerIdleRssMiB = idle;
    summary.reportedPauseMs = med(ok.map((s) => s.reportedPauseMs));
    const fd = med(fdThroughput);
    if (Number.isFinite(fd)) summary.uploadFdThroughputMiBps = fd;
  } else {
    const peak = med(peaks);
    if (Number.isFinite(peak)) summary.uploaderPeakRssMiB = peak;
    summary.fsyncMs = med(ok.map((s) => s.fsyncMs));
  }
  return summary;
}

export function summarize(specs: DiskSpec[], modes: Mode[], samples: Sample[]): DiskSummary[] {
  return specs.map((spec) => {
    const mine = samples.filter((s) => s.disk === spec.kind);
    const out: DiskSummary = { disk: spec.kind, spec, modes: {}, ratios: {}, overheadMs: {} };
    for (const mode of modes) {
      const of = mine.filter((s) => s.mode === mode);
      if (of.length) out.modes[mode] = summarizeMode(of);
    }
    const bare = out.modes.bare;
    for (const mode of modes) {
      const m = out.modes[mode];
      if (mode === 'bare' || !m || !bare) continue;
      out.ratios[mode] = {
        pause: ratio(m.pauseMs, bare.pauseMs),
        wall: ratio(m.wallMs, bare.wallMs),
        throughput: ratio(m.throughputMiBps, bare.throughputMiBps),
        progress: ratio(m.progressRatio, bare.progressRatio),
      };
      // Paired by run: the two ran back to back, under about the same load.
      const paired: number[] = [];
      for (const s of mine.filter((x) => x.mode === mode && x.ok)) {
        const b = mine.find((x) => x.mode === 'bare' && x.ok && x.run === s.run);
        if (b?.wallMs !== undefined && s.wallMs !== undefined) paired.push(s.wallMs - b.wallMs);
      }
      out.overheadMs[mode] = { ofMedians: m.wallMs - bare.wallMs, paired: median(paired) };
    }
    return out;
  });
}

export function scaleGrowth(scale: ScaleSample[]): BenchResults['scaleGrowth'] {
  const out: BenchResults['scaleGrowth'] = {};
  for (const mode of [...new Set(scale.map((s) => s.mode))]) {
    const levels = [...new Set(scale.filter((s) => s.mode === mode).map((s) => s.n))].sort((a, b) => a - b);
    const points = levels.map((n) => ({ x: n, y: median(scale.filter((s) => s.mode === mode && s.n === n).map((s) => s.wallMs)) }));
    const fit = linearFit(points);
    const one = points.find((p) => p.x === 1)?.y;
    const wallRatioToOne: Record<string, number> = {};
    for (const p of points) wallRatioToOne[String(p.x)] = ratio(p.y, one);
    out[mode] = { ...(fit ? { msPerSnapshot: fit.slope, interceptMs: fit.intercept } : {}), wallRatioToOne };
  }
  return out;
}

function margin(value: number | undefined, comparison: '<=' | '>=', limit: number, unit: Target['unit']): { pass: boolean | null; margin: string } {
  if (value === undefined || !Number.isFinite(value)) return { pass: null, margin: 'not measured' };
  const pass = comparison === '<=' ? value <= limit : value >= limit;
  if (unit === 'failures') return { pass, margin: pass ? 'none failed' : `${value} failed` };
  if (limit === 0) return { pass, margin: pass ? 'at the limit' : `${value} over` };
  const rel = Math.abs(value / limit - 1) * 100;
  const word = comparison === '<=' ? (pass ? 'under' : 'over') : pass ? 'above' : 'below';
  return { pass, margin: `${rel.toFixed(rel < 10 ? 1 : 0)} % ${word} the limit` };
}

function target(t: Omit<Target, 'pass' | 'margin'>): Target {
  return { ...t, ...margin(t.value, t.comparison, t.limit, t.unit) };
}

/** The targets of issue 7, each with the figure it is judged on. */
export function evaluateTargets(summary: DiskSummary[], scale: ScaleSample[], live: { available: boolean; reason?: string }, modes: Mode[]): Target[] {
  const targets: Target[] = [];
  for (const d of summary) {
    const r = d.ratios.cold;
    if (r) {
      targets.push(
        target({
          id: `cold-pause-${d.disk}`,
          label: 'cold pause ≤ 1.05 × bare pause',
          scope: d.disk,
          value: r.pause,
          unit: 'x',
          comparison: '<=',
          limit: 1.05,
        }),
      );
      targets.push(
        target({
          id: `cold-wall-${d.disk}`,
          label: 'end-to-end ≤ 1.10 × bare',
          scope: `${d.disk}, cold`,
          value: r.wall,
          unit: 'x',
          comparison: '<=',
          limit: 1.1,
        }),
      );
    }
    const l = d.ratios.live;
    if (l)
      targets.push(
        target({
          id: `live-wall-${d.disk}`,
          label: 'end-to-end ≤ 1.10 × bare',
          scope: `${d.disk}, live`,
          value: l.wall,
          unit: 'x',
          comparison: '<=',
          limit: 1.1,
        }),
      );
  }
  if (modes.includes('live')) {
    const measured = summary.filter((d) => d.modes.live);
    if (!live.available || measured.length === 0) {
      targets.push({
        id: 'live-pause',
        label: 'live pause ≤ 50 ms',
        scope: 'all disks',
        value: undefined,
        unit: 'ms',
        comparison: '<=',
        limit: 50,
        pass: null,
        margin: 'not measured',
        note: live.reason ?? 'live mode not run',
      });
    }
    for (const d of measured) {
      targets.push(
        target({
          id: `live-pause-${d.disk}`,
          label: 'live pause ≤ 50 ms',
          scope: d.disk,
          value: d.modes.live?.pauseMs,
          unit: 'ms',
          comparison: '<=',
          limit: 50,
        }),
      );
      // Issue 13: what the guest feels, not only STOP/RESUME: its writes must keep completing.
      targets.push(
        target({
          id: `live-write-stall-${d.disk}`,
          label: 'live: longest guest write stall ≤ 50 ms',
          scope: d.disk,
          value: d.modes.live?.copyWriteStallMs,
          unit: 'ms',
          comparison: '<=',
          limit: 50,
        }),
      );
      targets.push(
        target({
          id: `live-write-rate-${d.disk}`,
          label: 'live: guest write rate during the copy ≥ 0.8 × idle',
          scope: d.disk,
          value: d.modes.live?.copyWriteRatio,
          unit: 'x',
          comparison: '>=',
          limit: 0.8,
        }),
      );
    }
  }
  // Throughput and memory are about big uploads: judged on the large disk (else the biggest measured).
  const big = summary.find((d) => d.disk === 'large') ?? [...summary].sort((a, b) => b.spec.dataMiB - a.spec.dataMiB)[0];
  if (big) {
    const note = big.disk === 'large' ? undefined : `large disk not measured: judged on ${big.disk}`;
    for (const mode of ['cold', 'live'] as const) {
      const r = big.ratios[mode];
      if (!r) continue;
      targets.push(
        target({
          id: `throughput-${mode}`,
          label: 'upload throughput ≥ 0.95 × curl',
          scope: `${big.disk}, ${mode}`,
          value: r.throughput,
          unit: 'x',
          comparison: '>=',
          limit: 0.95,
          ...(note ? { note } : {}),
        }),
      );
      const m = big.modes[mode];
      targets.push(
        target({
          id: `rss-${mode}`,
          label: 'worker RSS ≤ 300 MiB while uploading',
          scope: `${big.disk} (${Number.isFinite(m?.imageMiB) ? m?.imageMiB.toFixed(1) : '?'} MiB image), ${mode}, worst run`,
          value: m?.workerUploadPeakRssMiB,
          unit: 'MiB',
          comparison: '<=',
          limit: 300,
          ...(note ? { note } : {}),
        }),
      );
    }
  }
  const sparse = summary.find((d) => d.disk === 'sparse');
  if (sparse?.modes.cold) {
    targets.push(
      target({
        id: 'sparse-size',
        label: "sparse disk's image ≤ 2 × its data",
        scope: `sparse (${sparse.spec.dataMiB} MiB data in ${sparse.spec.virtualMiB} MiB), cold`,
        value: sparse.modes.cold.imageMiB / sparse.spec.dataMiB,
        unit: 'x',
        comparison: '<=',
        limit: 2,
      }),
    );
  }
  const vmsnapScale = scale.filter((s) => s.mode !== 'bare');
  if (vmsnapScale.length) {
    const top = Math.max(...vmsnapScale.map((s) => s.n));
    const at = vmsnapScale.filter((s) => s.n === top);
    const failures = at.reduce((a, s) => a + s.failures, 0);
    const scaleTarget = target({
      id: 'scale',
      label: '20 concurrent snapshots, 0 failures',
      scope: `${top} at once, ${[...new Set(at.map((s) => s.mode))].join(' + ')}`,
      value: failures,
      unit: 'failures',
      comparison: '<=',
      limit: 0,
    });
    // Fewer than 20 at once says nothing about 20: not judged.
    targets.push(
      top >= 20
        ? scaleTarget
        : {
            ...scaleTarget,
            pass: null,
            margin: `${failures} failed at ${top}; 20 not run`,
            note: `only ${top} concurrent measured in this run`,
          },
    );
  }
  return targets;
}
