// The results document (latest.json): raw samples, their medians and ratios to bare, the scale
// runs, and the issue's targets with pass/miss.
import type { CpuUse } from './cpu-use.js';
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
  /** CPU-seconds by process group during the level (bench/lib/cpu-use.ts). */
  cpuUseS?: CpuUse;
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
  /**
   * Worst run: what the snapshot wrote on the host besides the image in Glance. bare and a copy: the
   * copy; a streamed live snapshot: its overlay at its largest (the result's hostScratchBytes).
   */
  hostScratchMiB?: number;
  /** vmsnap: how its results said the image reached Glance (streamed, copied), by count. */
  transfer?: Record<string, number>;
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
  /** vmsnap: where the wall time went (medians per label of bench/lib/timeline.ts), and each step's running time. */
  timelineMs?: Record<string, number>;
  stepsMs?: Record<string, number>;
  /** CPU-seconds by process group while it ran (medians per group, bench/lib/cpu-use.ts). */
  cpuUseS?: CpuUse;
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
  unit: 'x' | 'ms' | 'MiB' | '%' | 'failures';
  comparison: '<=' | '>=';
  limit: number;
  /** null: not measured (or not available yet). */
  pass: boolean | null;
  margin: string;
  note?: string;
  /** The measured figure and the bare one of the same run it is judged against. */
  baseline?: string;
  /** 'other': a check of an earlier issue, listed after issue 15's table. */
  group?: 'other';
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
    /** CPU seconds Node needs to read one GiB in large chunks and sha512 it, here, in the same run: the floor under the worker's CPU per GiB. */
    hashCpuSPerGiB: number;
  };
  live: { available: boolean; reason?: string };
  notes: string[];
  samples: Sample[];
  summary: DiskSummary[];
  scale: ScaleSample[];
  scaleGrowth: Partial<Record<Mode, { msPerSnapshot?: number; interceptMs?: number; wallRatioToOne: Record<string, number> }>>;
  targets: Target[];
  /** The growth section: slopes per GiB of data. */
  growth?: Growth;
  errors: string[];
}

const MiB = 1024 * 1024;
const med = (xs: (number | undefined)[]) => median(xs.filter((x): x is number => typeof x === 'number'));
const maxOf = (xs: (number | undefined)[]) => {
  const v = xs.filter((x): x is number => typeof x === 'number' && Number.isFinite(x));
  return v.length ? Math.max(...v) : undefined;
};

/** The median of each key over the runs that have it (a key a run lacks counts as 0 in it). */
function medians(records: (Record<string, number> | undefined)[]): Record<string, number> | undefined {
  const present = records.filter((r): r is Record<string, number> => r !== undefined);
  if (!present.length) return undefined;
  const keys = new Set(present.flatMap((r) => Object.keys(r)));
  return Object.fromEntries([...keys].map((k) => [k, med(present.map((r) => r[k] ?? 0))]));
}

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
  const cpuUse = medians(ok.map((s) => s.cpuUseS as Record<string, number> | undefined));
  if (cpuUse) summary.cpuUseS = cpuUse;
  const consistency: Record<string, number> = {};
  for (const s of ok) {
    const c = s.resultExtra?.consistency;
    if (typeof c === 'string') consistency[c] = (consistency[c] ?? 0) + 1;
  }
  if (Object.keys(consistency).length) summary.consistency = consistency;
  const transfer: Record<string, number> = {};
  for (const s of ok) {
    const t = s.resultExtra?.transfer;
    if (typeof t === 'string') transfer[t] = (transfer[t] ?? 0) + 1;
  }
  if (Object.keys(transfer).length) summary.transfer = transfer;
  const scratch = maxOf(
    ok.map((s) => {
      if (!isVmsnap) return s.imageBytes !== undefined ? s.imageBytes / MiB : undefined;
      const bytes = s.resultExtra?.hostScratchBytes;
      return typeof bytes === 'number' ? bytes / MiB : undefined;
    }),
  );
  if (scratch !== undefined) summary.hostScratchMiB = scratch;
  const stall = maxOf(ok.map((s) => s.copyWriteStallMs));
  if (stall !== undefined) summary.copyWriteStallMs = stall;
  const idleStall = maxOf(ok.map((s) => s.idleWriteStallMs));
  if (idleStall !== undefined) summary.idleWriteStallMs = idleStall;
  const writeRatio = med(ok.map((s) => s.copyWriteRatio));
  if (Number.isFinite(writeRatio)) summary.copyWriteRatio = writeRatio;
  const gap = maxOf(ok.map((s) => s.writeSampleGapMs));
  if (gap !== undefined) summary.writeSampleGapMs = gap;
  if (isVmsnap) {
    const timeline = medians(ok.map((s) => s.timelineMs));
    if (timeline) summary.timelineMs = timeline;
    const steps = medians(ok.map((s) => s.stepsMs));
    if (steps) summary.stepsMs = steps;
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

const msText = (v: number | undefined) => (v === undefined || !Number.isFinite(v) ? '?' : `${Math.round(v)} ms`);
const num = (v: number | undefined, digits: number) => (v === undefined || !Number.isFinite(v) ? '?' : v.toFixed(digits));

/** How a disk's end-to-end time and pause grow per GiB of data, each mode against bare. */
export interface Growth {
  /** Data of each disk, GiB, and the medians measured on it. */
  points: { disk: DiskKind; dataGiB: number; wallMs: Partial<Record<Mode, number>>; pauseMs: Partial<Record<Mode, number>> }[];
  /** Least-squares slope, ms per GiB of data, and its ratio to bare's slope. */
  slopes: Partial<Record<Mode, { wallMsPerGiB: number; pauseMsPerGiB: number; wallToBare: number; pauseToBare: number }>>;
}

export function growthOf(summary: DiskSummary[], modes: Mode[]): Growth | undefined {
  const disks = summary.filter((d) => ['g1', 'g2', 'g4'].includes(d.disk) && d.spec.dataMiB > 0);
  if (disks.length < 2) return undefined;
  const points = disks.map((d) => ({
    disk: d.disk,
    dataGiB: d.spec.dataMiB / 1024,
    wallMs: Object.fromEntries(modes.map((m) => [m, d.modes[m]?.wallMs])),
    pauseMs: Object.fromEntries(modes.map((m) => [m, d.modes[m]?.pauseMs])),
  }));
  const slope = (mode: Mode, of: 'wallMs' | 'pauseMs') =>
    linearFit(points.filter((p) => Number.isFinite(p[of][mode])).map((p) => ({ x: p.dataGiB, y: p[of][mode]! })))?.slope ?? NaN;
  const slopes: Growth['slopes'] = {};
  for (const mode of modes) {
    slopes[mode] = {
      wallMsPerGiB: slope(mode, 'wallMs'),
      pauseMsPerGiB: slope(mode, 'pauseMs'),
      wallToBare: ratio(slope(mode, 'wallMs'), slope('bare', 'wallMs')),
      pauseToBare: ratio(slope(mode, 'pauseMs'), slope('bare', 'pauseMs')),
    };
  }
  return { points, slopes };
}

/**
 * Issue 15's targets, every row of its table, each with the bare figure of the same run it is
 * judged against; then the checks of earlier issues (group "other").
 */
export function evaluateTargets(
  summary: DiskSummary[],
  scale: ScaleSample[],
  live: { available: boolean; reason?: string },
  modes: Mode[],
  sha512FloorSPerGiB?: number,
  diskSet: { available: boolean; reason?: string } = { available: true },
): Target[] {
  const targets: Target[] = [];
  const disk = (kind: DiskKind) => summary.find((d) => d.disk === kind);
  const vmsnapModes = (['cold', 'live'] as const).filter((m) => modes.includes(m) && (m !== 'live' || live.available));

  // End-to-end against bare: the large disk within 10 %, the sparse one within 25 %; streamed live
  // snapshots (issue 29) no later than bare on both.
  const streamedLimit = (kind: DiskKind, mode: 'cold' | 'live', limit: number) => (mode === 'live' && (kind === 'large' || kind === 'sparse') ? 1 : limit);
  for (const [kind, issueLimit] of [
    ['large', 1.1],
    ['sparse', 1.25],
    ['g1', 1.1],
    ['g2', 1.1],
    ['g4', 1.1],
  ] as const) {
    const d = disk(kind);
    for (const mode of vmsnapModes) {
      if (!d?.modes[mode]) continue;
      const limit = streamedLimit(kind, mode, issueLimit);
      targets.push(
        target({
          id: `wall-${kind}-${mode}`,
          label: `end-to-end ≤ ${limit.toFixed(2)} × bare`,
          scope: `${kind} (${d.spec.virtualMiB} MiB, ${d.spec.dataMiB} MiB data), ${mode}`,
          value: d.ratios[mode]?.wall,
          unit: 'x',
          comparison: '<=',
          limit,
          baseline: `${msText(d.modes[mode]?.wallMs)} vs bare ${msText(d.modes.bare?.wallMs)}`,
        }),
      );
    }
  }

  const small = disk('small');
  if (small) {
    for (const [mode, limit] of [
      ['cold', 200],
      ['live', 300],
    ] as const) {
      if (!vmsnapModes.includes(mode) || !small.modes[mode]) continue;
      targets.push(
        target({
          id: `overhead-small-${mode}`,
          label: `fixed overhead (vmsnap wall − bare wall) ≤ ${limit} ms`,
          scope: `small, ${mode}`,
          value: small.overheadMs[mode]?.paired,
          unit: 'ms',
          comparison: '<=',
          limit,
          baseline: `${msText(small.modes[mode]?.wallMs)} vs bare ${msText(small.modes.bare?.wallMs)} (median of per-run differences)`,
        }),
      );
    }
  }

  const large = disk('large');
  if (large?.modes.cold) {
    targets.push(
      target({
        id: 'cold-pause-large',
        label: 'cold pause ≤ 1.05 × bare pause',
        scope: 'large',
        value: large.ratios.cold?.pause,
        unit: 'x',
        comparison: '<=',
        limit: 1.05,
        baseline: `${msText(large.modes.cold.pauseMs)} vs bare ${msText(large.modes.bare?.pauseMs)}`,
      }),
    );
  }
  if (small?.modes.cold) {
    targets.push(
      target({
        id: 'cold-pause-small',
        label: 'cold pause ≤ bare pause + 30 ms',
        scope: 'small',
        value: small.modes.cold.pauseMs - (small.modes.bare?.pauseMs ?? NaN),
        unit: 'ms',
        comparison: '<=',
        limit: 30,
        baseline: `${msText(small.modes.cold.pauseMs)} vs bare ${msText(small.modes.bare?.pauseMs)}`,
      }),
    );
  }

  targets.push(...pairTargets(disk('pair'), vmsnapModes, diskSet));

  // Upload, CPU and memory are about big uploads: judged on the large disk.
  if (large) {
    const curl = large.modes.bare;
    for (const mode of vmsnapModes) {
      const m = large.modes[mode];
      if (!m) continue;
      targets.push(
        target({
          id: `throughput-${mode}`,
          label: 'upload throughput (PUT with the hash check) ≥ 0.95 × curl -T',
          scope: `large, ${mode}`,
          value: large.ratios[mode]?.throughput,
          unit: 'x',
          comparison: '>=',
          limit: 0.95,
          baseline: `${num(m.throughputMiBps, 0)} vs curl ${num(curl?.throughputMiBps, 0)} MiB/s`,
        }),
      );
      targets.push(
        target({
          id: `cpu-${mode}`,
          label: 'worker CPU per GiB uploaded ≤ 1.25 × the sha512 floor',
          scope: `large, ${mode}`,
          value: ratio(m.uploaderCpuSPerGiB, sha512FloorSPerGiB),
          unit: 'x',
          comparison: '<=',
          limit: 1.25,
          baseline: `${num(m.uploaderCpuSPerGiB, 2)} s vs sha512 floor ${num(sha512FloorSPerGiB, 2)} s (curl ${num(curl?.uploaderCpuSPerGiB, 2)} s)`,
        }),
      );
      targets.push(
        target({
          id: `rss-${mode}`,
          label: 'worker RSS while uploading ≤ 200 MiB',
          scope: `large (${num(m.imageMiB, 0)} MiB image), ${mode}, worst run`,
          value: m.workerUploadPeakRssMiB,
          unit: 'MiB',
          comparison: '<=',
          limit: 200,
          baseline: `idle ${num(m.workerIdleRssMiB, 0)} MiB; curl ${num(curl?.uploaderPeakRssMiB, 0)} MiB`,
        }),
      );
    }
  }

  // Twenty at once: within 1.5 × the bare commands run twenty at once, none failing.
  const top = scale.length ? Math.max(...scale.map((s) => s.n)) : 0;
  if (top > 0) {
    const at = (mode: Mode) => scale.filter((s) => s.n === top && s.mode === mode);
    const bareWall = median(at('bare').map((s) => s.wallMs));
    const note = top >= 20 ? undefined : `only ${top} at once in this run`;
    for (const mode of vmsnapModes) {
      const runs = at(mode);
      if (!runs.length) continue;
      const wall = median(runs.map((s) => s.wallMs));
      const t = target({
        id: `scale-${mode}`,
        label: '20 concurrent snapshots, wall ≤ 1.5 × bare',
        scope: `${top} at once, ${mode}`,
        value: ratio(wall, bareWall),
        unit: 'x',
        comparison: '<=',
        limit: 1.5,
        baseline: `${msText(wall)} vs bare ${msText(bareWall)}`,
        ...(note ? { note } : {}),
      });
      targets.push(top >= 20 ? t : { ...t, pass: null });
      const failures = runs.reduce((a, s) => a + s.failures, 0);
      const f = target({
        id: `scale-failures-${mode}`,
        label: '20 concurrent snapshots, 0 failures',
        scope: `${top} at once, ${mode}`,
        value: failures,
        unit: 'failures',
        comparison: '<=',
        limit: 0,
        baseline: `bare: ${at('bare').reduce((a, s) => a + s.failures, 0)} failed`,
        ...(note ? { note } : {}),
      });
      targets.push(top >= 20 ? f : { ...f, pass: null });
    }
  }

  // What a live snapshot writes on the host (issue 29): its overlay, not a copy.
  if (vmsnapModes.includes('live')) {
    for (const kind of ['large', 'sparse'] as const) {
      const d = disk(kind);
      const m = d?.modes.live;
      if (!d || !m || m.hostScratchMiB === undefined) continue;
      targets.push(
        target({
          id: `scratch-${kind}-live`,
          label: 'host scratch bytes written ≤ 5 % of the image',
          scope: `${kind} (${num(m.imageMiB, 0)} MiB image), live, worst run`,
          value: (m.hostScratchMiB / m.imageMiB) * 100,
          unit: '%',
          comparison: '<=',
          limit: 5,
          baseline: `${num(m.hostScratchMiB, 1)} MiB; bare's copy ${num(d.modes.bare?.hostScratchMiB, 0)} MiB, cold's ${num(d.modes.cold?.hostScratchMiB, 0)} MiB`,
        }),
      );
    }
  }

  if (small?.modes.live) {
    const b = small.modes.bare?.phasesMs;
    const bareCopy = b ? (b.suspend ?? NaN) + (b.convert ?? NaN) + (b.resume ?? NaN) : NaN;
    targets.push(
      target({
        id: 'live-copy-small',
        label: 'live copy of the small disk (copying phase) ≤ 300 ms',
        scope: `small (${small.spec.virtualMiB} MiB), live`,
        value: small.modes.live.phasesMs.copying,
        unit: 'ms',
        comparison: '<=',
        limit: 300,
        baseline: `bare suspend + convert + resume ${msText(bareCopy)}`,
      }),
    );
  }

  targets.push(...otherChecks(summary, live, modes));
  return targets;
}

/**
 * Every disk of an instance at one point in time (issue 28), on the pair's two disks: end to end
 * against bare's pause, convert of each, resume and curl of each, with the large disk's limits;
 * cold's one pause against bare's one pause over both copies. Not judged (with the reason) while
 * the workflow does not take disks "all".
 */
function pairTargets(pair: DiskSummary | undefined, vmsnapModes: ('cold' | 'live')[], diskSet: { available: boolean; reason?: string }): Target[] {
  if (!pair?.spec.dataDisk) return [];
  const out: Target[] = [];
  const scope = `pair (${pair.spec.virtualMiB} MiB + ${pair.spec.dataDisk.format} ${pair.spec.dataDisk.virtualMiB} MiB, ${pair.spec.dataMiB} + ${pair.spec.dataDisk.dataMiB} MiB data), disks all`;
  // The reason in full is in the notes.
  const notJudged = (t: Target): Target =>
    diskSet.available ? t : { ...t, pass: null, margin: 'not measured', note: 'the workflow does not take disks "all" yet' };
  for (const mode of vmsnapModes) {
    const limit = mode === 'live' ? 1 : 1.1;
    out.push(
      notJudged(
        target({
          id: `wall-pair-${mode}`,
          label: `every disk, end-to-end ≤ ${limit.toFixed(2)} × bare`,
          scope: `${scope}, ${mode}`,
          value: pair.ratios[mode]?.wall,
          unit: 'x',
          comparison: '<=',
          limit,
          baseline: `${msText(pair.modes[mode]?.wallMs)} vs bare ${msText(pair.modes.bare?.wallMs)}`,
        }),
      ),
    );
  }
  if (vmsnapModes.includes('cold')) {
    out.push(
      notJudged(
        target({
          id: 'cold-pause-pair',
          label: 'every disk, one cold pause ≤ 1.05 × bare pause',
          scope,
          value: pair.ratios.cold?.pause,
          unit: 'x',
          comparison: '<=',
          limit: 1.05,
          baseline: `${msText(pair.modes.cold?.pauseMs)} vs bare ${msText(pair.modes.bare?.pauseMs)}`,
        }),
      ),
    );
  }
  return out;
}

/** Checks of earlier issues, kept so that nothing slips: live pause, guest writes, sparse image size. */
function otherChecks(summary: DiskSummary[], live: { available: boolean; reason?: string }, modes: Mode[]): Target[] {
  const out: Target[] = [];
  if (modes.includes('live')) {
    for (const d of summary.filter((x) => x.modes.live)) {
      out.push(
        target({
          id: `live-pause-${d.disk}`,
          label: 'live pause ≤ 50 ms',
          scope: d.disk,
          value: d.modes.live?.pauseMs,
          unit: 'ms',
          comparison: '<=',
          limit: 50,
          group: 'other',
          baseline: `bare ${msText(d.modes.bare?.pauseMs)}`,
        }),
        target({
          id: `live-write-stall-${d.disk}`,
          label: 'live: longest guest write stall ≤ 50 ms (issue 13)',
          scope: d.disk,
          value: d.modes.live?.copyWriteStallMs,
          unit: 'ms',
          comparison: '<=',
          limit: 50,
          group: 'other',
          baseline: `idle ${msText(d.modes.live?.idleWriteStallMs)}; bare ${msText(d.modes.bare?.copyWriteStallMs)}`,
        }),
        target({
          id: `live-write-rate-${d.disk}`,
          label: 'live: guest write rate during the copy ≥ 0.8 × idle (issue 13)',
          scope: d.disk,
          value: d.modes.live?.copyWriteRatio,
          unit: 'x',
          comparison: '>=',
          limit: 0.8,
          group: 'other',
          baseline: `bare ${num(d.modes.bare?.copyWriteRatio, 2)}×`,
        }),
      );
    }
    if (!live.available) {
      out.push({
        id: 'live-pause',
        label: 'live pause ≤ 50 ms',
        scope: 'all disks',
        value: undefined,
        unit: 'ms',
        comparison: '<=',
        limit: 50,
        pass: null,
        margin: 'not measured',
        group: 'other',
        note: live.reason ?? 'live mode not run',
      });
    }
  }
  const sparse = summary.find((d) => d.disk === 'sparse');
  if (sparse?.modes.cold) {
    out.push(
      target({
        id: 'sparse-size',
        label: "sparse disk's image ≤ 2 × its data",
        scope: `sparse (${sparse.spec.dataMiB} MiB data in ${sparse.spec.virtualMiB} MiB), cold`,
        value: sparse.modes.cold.imageMiB / sparse.spec.dataMiB,
        unit: 'x',
        comparison: '<=',
        limit: 2,
        group: 'other',
        baseline: `bare ${num(sparse.modes.bare?.imageMiB, 1)} MiB`,
      }),
    );
  }
  return out;
}

/** Growth targets: live's pause must not grow with the data (slope within noise). */
export function growthTargets(g: Growth): Target[] {
  const l = g.slopes.live;
  if (!l) return [];
  return [
    target({
      id: 'growth-live-pause',
      label: 'live pause does not grow: slope ≤ 5 ms per GiB of data',
      scope: `${g.points.map((p) => `${p.dataGiB} GiB`).join(', ')}, live`,
      value: l.pauseMsPerGiB,
      unit: 'ms',
      comparison: '<=',
      limit: 5,
      baseline: `bare pause grows ${num(g.slopes.bare?.pauseMsPerGiB, 0)} ms/GiB, cold ${num(g.slopes.cold?.pauseMsPerGiB, 0)} ms/GiB`,
    }),
  ];
}
