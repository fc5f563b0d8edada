// latest.md: the results as tables a person reads, ratios next to the bare figures of the same run.
import type { Mode } from './options.js';
import type { BenchResults, DiskSummary, ModeSummary, Target } from './results.js';
import { CPU_GROUPS, type CpuUse } from './cpu-use.js';
import { TIMELINE_LABELS } from './timeline.js';

const fmt = (v: number | undefined, digits = 0) => (v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(digits));
const ms = (v: number | undefined) => (v === undefined || !Number.isFinite(v) ? '–' : v >= 10_000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`);
const mib = (v: number | undefined) => fmt(v, v !== undefined && Math.abs(v) < 10 ? 1 : 0);
const x = (v: number | undefined) => (v === undefined || !Number.isFinite(v) ? '–' : `${v.toFixed(2)}×`);

function targetValue(t: Target): string {
  if (t.value === undefined || !Number.isFinite(t.value)) return '–';
  if (t.unit === 'x') return x(t.value);
  if (t.unit === 'ms') return ms(t.value);
  if (t.unit === 'MiB') return `${t.value.toFixed(0)} MiB`;
  if (t.unit === '%') return `${t.value.toFixed(t.value < 10 ? 2 : 0)} %`;
  return String(t.value);
}

function targetLimit(t: Target): string {
  if (t.unit === '%') return `${t.comparison === '<=' ? '≤' : '≥'} ${t.limit} %`;
  const v = t.unit === 'x' ? `${t.limit}×` : t.unit === 'ms' ? `${t.limit} ms` : t.unit === 'MiB' ? `${t.limit} MiB` : String(t.limit);
  return `${t.comparison === '<=' ? '≤' : '≥'} ${v}`;
}

/** The targets as a table, misses first, then the not judged, then the passes; each with its bare figure. */
export function targetTable(targets: Target[]): string[] {
  const rank = (t: Target) => (t.pass === false ? 0 : t.pass === null ? 1 : 2);
  const rows = [...targets].sort((a, b) => rank(a) - rank(b));
  return [
    '| target | scope | measured | limit | result | by how much | measured vs bare (same run) |',
    '| --- | --- | ---: | ---: | --- | --- | --- |',
    ...rows.map(
      (t) =>
        `| ${t.label} | ${t.scope} | ${targetValue(t)} | ${targetLimit(t)} | ${verdict(t)} | ${t.margin}${t.note ? ` (${t.note})` : ''} | ${t.baseline ?? ''} |`,
    ),
  ];
}

function growthSection(r: BenchResults): string[] {
  const g = r.growth!;
  const modes = r.options.modes.filter((m) => g.slopes[m]);
  const out = ['## Growth with the data (1, 2, 4 GiB)', ''];
  out.push(`| figure (median) | ${g.points.map((p) => `${p.disk}: ${p.dataGiB} GiB data`).join(' | ')} |`);
  out.push(`| --- | ${g.points.map(() => '---:').join(' | ')} |`);
  for (const m of modes) out.push(`| end-to-end, ${m} | ${g.points.map((p) => ms(p.wallMs[m])).join(' | ')} |`);
  for (const m of modes) out.push(`| guest-visible pause, ${m} | ${g.points.map((p) => ms(p.pauseMs[m])).join(' | ')} |`);
  out.push('');
  out.push('| mode | end-to-end grows, ms per GiB | ÷ bare’s slope | pause grows, ms per GiB | ÷ bare’s slope |');
  out.push('| --- | ---: | ---: | ---: | ---: |');
  for (const m of modes) {
    const s = g.slopes[m]!;
    out.push(`| ${m} | ${fmt(s.wallMsPerGiB)} | ${x(s.wallToBare)} | ${fmt(s.pauseMsPerGiB)} | ${x(s.pauseToBare)} |`);
  }
  out.push('', 'Slopes: least squares over the three disks’ medians; a ratio to bare’s slope above 1 means vmsnap adds time that grows with the data.');
  return out;
}

const verdict = (t: Target) => (t.pass === null ? 'n/a' : t.pass ? '**pass**' : '**MISS**');

function diskTable(d: DiskSummary, modes: Mode[]): string[] {
  const vm = modes.filter((m) => m !== 'bare' && d.modes[m]);
  const bare = d.modes.bare;
  const head = ['figure (median)', 'bare', ...vm.flatMap((m) => [m, `${m}/bare`])];
  const rows: string[][] = [];
  const row = (label: string, get: (s: ModeSummary) => string, ratioOf?: (m: Mode) => number | undefined) => {
    rows.push([label, bare ? get(bare) : '–', ...vm.flatMap((m) => [d.modes[m] ? get(d.modes[m]) : '–', ratioOf ? x(ratioOf(m)) : ''])]);
  };
  row(
    'guest-visible pause (QEMU STOP→RESUME)',
    (s) => ms(s.pauseMs),
    (m) => d.ratios[m]?.pause,
  );
  row(
    'end-to-end wall time',
    (s) => ms(s.wallMs),
    (m) => d.ratios[m]?.wall,
  );
  row(
    'upload throughput, MiB/s',
    (s) => fmt(s.throughputMiBps, 1),
    (m) => d.ratios[m]?.throughput,
  );
  row(
    'guest progress during snapshot (vs idle)',
    (s) => `${fmt(s.progressRatio * 100)} %`,
    (m) => d.ratios[m]?.progress,
  );
  row('guest write stall during the copy (QEMU wr_req, worst run)', (s) => ms(s.copyWriteStallMs));
  row('guest write stall when idle (worst run)', (s) => ms(s.idleWriteStallMs));
  row('guest write rate during the copy (vs idle)', (s) => (s.copyWriteRatio === undefined ? '–' : `${fmt(s.copyWriteRatio * 100)} %`));
  row('write sampling: longest gap between samples', (s) => ms(s.writeSampleGapMs));
  row('image size, MiB', (s) => fmt(s.imageMiB, 1));
  row('host scratch written, MiB (the copy; streamed: the overlay; worst run)', (s) => fmt(s.hostScratchMiB, 1));
  row('uploader peak RSS while uploading, MiB (curl / worker, worst run)', (s) => mib(s.uploaderPeakRssMiB ?? s.workerUploadPeakRssMiB));
  row('worker RSS peak − idle while uploading, MiB (worst run)', (s) => mib(s.workerRssOverIdleMiB));
  row('worker RSS idle before the run, MiB (median)', (s) => mib(s.workerIdleRssMiB));
  row('vmsnap’s own pause figure', (s) => ms(s.reportedPauseMs));
  row('fsync of the copy (bare, diagnostic, not in its times)', (s) => ms(s.fsyncMs));
  row('upload throughput from /proc fd window, MiB/s', (s) => fmt(s.uploadFdThroughputMiBps, 1));
  row('uploader CPU per GiB uploaded (curl / worker), s', (s) => fmt(s.uploaderCpuSPerGiB, 2));
  row('transfer (vmsnap result)', (s) =>
    s.transfer
      ? Object.entries(s.transfer)
          .map(([k, n]) => `${k} ×${n}`)
          .join(', ')
      : '–',
  );
  row('consistency (vmsnap result)', (s) =>
    s.consistency
      ? Object.entries(s.consistency)
          .map(([k, n]) => `${k} ×${n}`)
          .join(', ')
      : '–',
  );
  row('wall time range (min–max)', (s) => `${ms(s.wallRangeMs[0])}–${ms(s.wallRangeMs[1])}`);
  row('pause range (min–max)', (s) => `${ms(s.pauseRangeMs[0])}–${ms(s.pauseRangeMs[1])}`);
  row('runs (failed)', (s) => `${s.runs} (${s.failures})`);
  const out = [`| ${head.join(' | ')} |`, `| ${head.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`];
  for (const r of rows) out.push(`| ${r.join(' | ')} |`);
  return out;
}

function phases(d: DiskSummary, modes: Mode[]): string[] {
  const lines: string[] = [];
  for (const m of modes) {
    const s = d.modes[m];
    if (!s) continue;
    const parts = Object.entries(s.phasesMs)
      .filter(([, v]) => Number.isFinite(v))
      .map(([k, v]) => `${k} ${ms(v)}`);
    lines.push(`- ${m}: ${parts.join(', ') || '–'}`);
  }
  return lines;
}

/**
 * Where vmsnap's wall time goes, from each run's workflow history (bench/lib/timeline.ts), next to
 * the bare commands' steps: the steps running are the work bare does too, the rest is orchestration.
 */
function timeGoes(d: DiskSummary, modes: Mode[]): string[] {
  const vm = modes.filter((m) => m !== 'bare' && d.modes[m]?.timelineMs);
  if (!vm.length) return [];
  const out = [`Where vmsnap's time goes (median ms per snapshot, from its workflow history; bare: ${phaseList(d.modes.bare?.phasesMs)}):`, ''];
  out.push(`| share of the wall time | ${vm.join(' | ')} |`, `| --- | ${vm.map(() => '---:').join(' | ')} |`);
  for (const label of TIMELINE_LABELS) out.push(`| ${label} | ${vm.map((m) => ms(d.modes[m]!.timelineMs![label])).join(' | ')} |`);
  const stepNames = [...new Set(vm.flatMap((m) => Object.keys(d.modes[m]!.stepsMs ?? {})))].sort();
  for (const step of stepNames) out.push(`| &nbsp;&nbsp;of which ${step} | ${vm.map((m) => ms(d.modes[m]!.stepsMs?.[step])).join(' | ')} |`);
  out.push('');
  return out;
}

const cpuS = (v: number | undefined) => (v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(2));
/**
 * CPU-seconds by process group, a column per run (or median of runs): the groups that used any CPU
 * in any column, the machine's busy time, and that as a share of what the machine could give.
 */
function cpuUseRows(cols: { use: CpuUse; wallMs: number }[], nproc: number): string[] {
  const groups = CPU_GROUPS.filter((g) => cols.some((c) => (c.use[g] ?? 0) >= 0.01));
  const out = [...groups, 'machine busy' as const].map((g) => `| ${g} | ${cols.map((c) => cpuS(c.use[g])).join(' | ')} |`);
  const share = (c: { use: CpuUse; wallMs: number }) => Math.round(((c.use['machine busy'] ?? NaN) / ((c.wallMs / 1000) * nproc)) * 100);
  out.push(`| machine busy ÷ (wall × ${nproc}) | ${cols.map((c) => `${share(c)} %`).join(' | ')} |`);
  return out;
}

/**
 * Who burnt the CPU while each variant ran (median CPU-seconds per run): on a machine of few
 * cores, a variant is slower than bare where it, or a service it calls, needs more CPU.
 */
function cpuTable(d: DiskSummary, modes: Mode[], nproc: number): string[] {
  const cols = modes.filter((m) => d.modes[m]?.cpuUseS);
  if (!cols.length) return [];
  // Per GiB only where the image is big enough for the figure to mean anything.
  const gib = (m: Mode) => (d.modes[m]!.imageMiB >= 64 ? d.modes[m]!.imageMiB / 1024 : NaN);
  const out = [`CPU-seconds while each variant ran (median per run; ${nproc} CPUs, so the machine can give ${nproc} CPU-s per second of wall):`, ''];
  out.push(`| process | ${cols.join(' | ')} |`, `| --- | ${cols.map(() => '---:').join(' | ')} |`);
  out.push(
    ...cpuUseRows(
      cols.map((m) => ({ use: d.modes[m]!.cpuUseS!, wallMs: d.modes[m]!.wallMs })),
      nproc,
    ),
  );
  out.push(`| Glance CPU-s per GiB of image | ${cols.map((m) => cpuS((d.modes[m]!.cpuUseS!.glance ?? NaN) / gib(m))).join(' | ')} |`);
  out.push('');
  return out;
}

const phaseList = (p: Record<string, number> | undefined) =>
  p
    ? Object.entries(p)
        .map(([k, v]) => `${k} ${ms(v)}`)
        .join(', ')
    : '–';

export function renderMarkdown(r: BenchResults): string {
  const m = r.machine;
  const o = r.options;
  const out: string[] = [];
  out.push('# vmsnap against the bare commands');
  out.push('');
  out.push(
    `Run ${r.startedAt} (${(r.durationS / 60).toFixed(1)} min): \`npm run bench${r.argv.length ? ` -- ${r.argv.join(' ')}` : ''}\`, ` +
      `${o.runs} run(s) per variant and disk, variants alternating run by run, medians; ratios are vmsnap / bare of the same run.`,
  );
  out.push('');
  out.push(
    `Machine: ${m.nproc} CPU (${m.cpuModel}), ${(m.memoryMiB / 1024).toFixed(1)} GiB, ${m.kernel}; QEMU ${m.qemu}, libvirt ${m.libvirt}, ` +
      `Glance ${m.glance}, ${m.curl.split(' ').slice(0, 2).join(' ')}, Node ${m.node}; guests under TCG${m.kvm ? ' (KVM present but unused)' : ''}. ` +
      `Load average at start ${m.loadAverageStart.join(' / ')}, at end ${(m.loadAverageEnd ?? []).join(' / ')} (1/5/15 min). ` +
      `Stack: ${r.stack.kind === 'own' ? 'own (.data/bench)' : 'existing, from the environment'}, Glance ${r.stack.glanceUrl}.`,
  );
  out.push('');
  out.push('The machine is shared and noisy: read each ratio against the bare figure next to it, not against another day’s run.');
  out.push('');
  out.push('## Targets (issue 15), misses first');
  out.push('');
  out.push(...targetTable(r.targets.filter((t) => t.group !== 'other')));
  out.push('');
  const other = r.targets.filter((t) => t.group === 'other');
  if (other.length) {
    out.push('Checks of earlier issues, misses first:', '');
    out.push(...targetTable(other));
    out.push('');
  }
  if (r.growth) out.push(...growthSection(r), '');
  if (!r.live.available) out.push(`vmsnap live: not yet available (${r.live.reason ?? 'unknown'}).`, '');

  for (const d of r.summary) {
    const data = d.spec.dataMiB ? `${d.spec.dataMiB} MiB random data` : 'no data besides the counter';
    const dd = d.spec.dataDisk;
    const beside = dd ? `; beside it a ${dd.format} data disk, ${dd.virtualMiB} MiB virtual, ${dd.dataMiB} MiB random data (vmsnap: disks "all")` : '';
    out.push(`## ${d.disk}: ${d.spec.virtualMiB} MiB virtual, ${data}${beside}`);
    out.push('');
    if (!d.modes.bare) {
      out.push('Not measured: see Errors below.', '');
      continue;
    }
    out.push(...diskTable(d, o.modes));
    out.push('');
    for (const [mode, oh] of Object.entries(d.overheadMs)) {
      if (!oh) continue;
      out.push(
        `Orchestration overhead (${mode} wall − bare wall): ${ms(oh.ofMedians)} (difference of medians), ${ms(oh.paired)} (median of per-run differences).`,
      );
    }
    out.push('');
    out.push('Phases (median):');
    out.push(...phases(d, o.modes));
    out.push('');
    out.push(...timeGoes(d, o.modes));
    out.push(...cpuTable(d, o.modes, m.nproc));
  }

  if (r.scale.length) {
    out.push('## Concurrent snapshots of small guests on one worker');
    out.push('');
    out.push(`Host limit: ${r.worker.hostLimitNote}`);
    out.push('');
    out.push(
      '| concurrent | variant | round | wall | failures | per snapshot (median / max) | pause (median) | waiting for a host slot (median) | most copies at once | worker CPU | load (1 min) |',
    );
    out.push('| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    const medOf = (xs: number[]) => {
      const s = [...xs].sort((a, b) => a - b);
      return s.length ? (s[Math.floor((s.length - 1) / 2)] as number) : undefined;
    };
    for (const s of r.scale) {
      out.push(
        `| ${s.n} | ${s.mode} | ${s.rep} | ${ms(s.wallMs)} | ${s.failures} | ${ms(medOf(s.perSnapshotMs))} / ${ms(s.perSnapshotMs.length ? Math.max(...s.perSnapshotMs) : undefined)} | ` +
          `${ms(medOf(s.pauseMs))} | ${s.waitingMs.length ? ms(medOf(s.waitingMs)) : '–'} | ${s.maxConcurrentConverts ?? '–'} | ` +
          `${s.workerCpuS !== undefined ? `${s.workerCpuS.toFixed(1)} s (${Math.round((s.workerCpuS / (s.wallMs / 1000)) * 100)} % of one CPU)` : '–'} | ${s.loadAverage1m ?? '–'} |`,
      );
    }
    out.push('');
    const withCpu = r.scale.filter((s) => s.cpuUseS);
    if (withCpu.length) {
      out.push(`CPU-seconds by process during each level (${m.nproc} CPUs):`, '');
      out.push(`| process | ${withCpu.map((s) => `${s.n} ${s.mode} #${s.rep}`).join(' | ')} |`, `| --- | ${withCpu.map(() => '---:').join(' | ')} |`);
      out.push(
        ...cpuUseRows(
          withCpu.map((s) => ({ use: s.cpuUseS!, wallMs: s.wallMs })),
          m.nproc,
        ),
      );
      out.push('');
    }
    for (const [mode, g] of Object.entries(r.scaleGrowth)) {
      if (!g) continue;
      const ratios = Object.entries(g.wallRatioToOne)
        .map(([n, v]) => `${n}: ${x(v)}`)
        .join(', ');
      out.push(
        `- ${mode}: wall grows by ${g.msPerSnapshot !== undefined ? ms(g.msPerSnapshot) : '–'} per extra snapshot (least squares); wall relative to 1 at once: ${ratios}`,
      );
    }
    const errors = r.scale.flatMap((s) => s.errors.map((e) => `${s.mode} ×${s.n}: ${e}`));
    if (errors.length) out.push('', 'Failures:', ...errors.slice(0, 20).map((e) => `- ${e}`));
    out.push('');
  }

  out.push('## Notes');
  out.push('');
  const floor = r.worker.runtimeFloorKiB;
  if (floor.node || floor.nodeTsx) {
    out.push(
      `- Memory floor on this machine: an idle \`node\` holds ${fmt((floor.node ?? NaN) / 1024)} MiB, an idle \`node --import tsx\` ${fmt((floor.nodeTsx ?? NaN) / 1024)} MiB (the worker runs compiled, without tsx).`,
    );
  }
  if (Number.isFinite(r.worker.hashCpuSPerGiB)) {
    out.push(
      `- sha512 floor, same run: reading 1 GiB in 4 MiB chunks and hashing it with sha512 cost ${r.worker.hashCpuSPerGiB.toFixed(2)} CPU-seconds in Node (the upload does that and sends; curl hashes nothing).`,
    );
  }
  for (const n of r.notes) out.push(`- ${n}`);
  if (r.errors.length) {
    out.push('');
    out.push('## Errors');
    out.push('');
    for (const e of r.errors) out.push(`- ${e}`);
  }
  out.push('');
  return out.join('\n');
}
