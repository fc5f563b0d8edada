// `npm run bench -- --section startup`: the compiled worker (dist/, the prebuilt workflow bundle),
// plain and with the memory flags the container and the units use, against the old way
// (TypeScript through tsx, workflows bundled by webpack at every start), side by side in one run,
// the order rotating run by run: time from spawn to polling, idle RSS, and RSS while uploading
// the large image. Writes startup.{json,md} in --out.
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Guest } from '../../scripts/lib/guest.js';
import { sampleRss } from './proc.js';
import { median } from './stats.js';
import { runVmsnap, deleteImage, type VmsnapCtx } from './variants.js';
import { startBenchWorker, WORKER_COMMANDS, WORKER_ENV, type WorkerKind } from './worker.js';

const KINDS: WorkerKind[] = ['tsx', 'compiled', 'deployed'];
/** Targets of issue 17: idle RSS at most half of the old way's, start to polling under 2 s. */
const IDLE_RSS_RATIO_TARGET = 0.5;
const START_MS_TARGET = 2000;

export interface StartupSample {
  kind: WorkerKind;
  run: number;
  position: number;
  ok: boolean;
  error?: string;
  startMs?: number;
  /** Median RSS over the idle window after start, KiB. */
  idleRssKiB?: number;
  /** Peak RSS while the worker held the image file open (the upload), KiB. */
  uploadRssKiB?: number;
  wallMs?: number;
}

export interface StartupResults {
  samples: StartupSample[];
  summary: Record<WorkerKind, { startMs?: number; idleRssKiB?: number; uploadRssKiB?: number; wallMs?: number; ok: number }>;
  /** Each compiled kind's medians ÷ tsx's. */
  ratios: Partial<Record<WorkerKind, { startMs?: number; idleRssKiB?: number; uploadRssKiB?: number; wallMs?: number }>>;
  targets: { label: string; value: string; pass: boolean }[];
}

export async function runStartupBench(opts: {
  root: string;
  runs: number;
  idleMs: number;
  workerEnv: Record<string, string>;
  guest: Guest;
  ctx: (pid: number) => VmsnapCtx;
  log: (line: string) => void;
}): Promise<StartupResults> {
  if (!existsSync(join(opts.root, 'dist/worker/main.js')) || !existsSync(join(opts.root, 'dist/workflow-bundle.js'))) {
    throw new Error('dist/ is not built: run `npm run build` (or ./scripts/setup) first');
  }
  const samples: StartupSample[] = [];
  for (let run = 1; run <= opts.runs; run++) {
    const k = (run - 1) % KINDS.length;
    const order = [...KINDS.slice(k), ...KINDS.slice(0, k)];
    for (const [i, kind] of order.entries()) {
      const sample: StartupSample = { kind, run, position: i + 1, ok: false };
      samples.push(sample);
      const worker = await startBenchWorker(opts.workerEnv, opts.root, 120_000, kind);
      try {
        sample.startMs = worker.startMs;
        // Idle: a second to settle, then the median over the idle window.
        await sleep(1000);
        const idle = sampleRss(worker.pid, 100);
        await sleep(opts.idleMs);
        sample.idleRssKiB = median(idle.stop().map((s) => s.kib));
        const result = await runVmsnap(opts.ctx(worker.pid), opts.guest, `vmsnap-bench-startup-${kind}-${run}`, 'cold');
        if (result.uploaderPeakRssKiB !== undefined) sample.uploadRssKiB = result.uploaderPeakRssKiB;
        sample.wallMs = result.wallMs;
        if (result.imageId) await deleteImage(opts.ctx(worker.pid), result.imageId).catch(() => undefined);
        sample.ok = true;
      } catch (err) {
        sample.error = (err as Error).message;
      } finally {
        await worker.stop();
      }
      opts.log(
        `startup run ${run}/${opts.runs} ${kind.padEnd(8)}: ` +
          (sample.ok
            ? `start→polling ${Math.round(sample.startMs ?? 0)} ms, idle ${mib(sample.idleRssKiB)} MiB, uploading ${mib(sample.uploadRssKiB)} MiB`
            : `FAILED: ${sample.error}`),
      );
    }
  }
  const summary = Object.fromEntries(
    KINDS.map((kind) => {
      const ok = samples.filter((s) => s.kind === kind && s.ok);
      const med = (pick: (s: StartupSample) => number | undefined) => {
        const xs = ok.map(pick).filter((x): x is number => x !== undefined);
        return xs.length ? median(xs) : undefined;
      };
      return [
        kind,
        {
          startMs: med((s) => s.startMs),
          idleRssKiB: med((s) => s.idleRssKiB),
          uploadRssKiB: med((s) => s.uploadRssKiB),
          wallMs: med((s) => s.wallMs),
          ok: ok.length,
        },
      ];
    }),
  ) as StartupResults['summary'];
  const ratiosOf = (kind: WorkerKind) => {
    const r = (k: 'startMs' | 'idleRssKiB' | 'uploadRssKiB' | 'wallMs') => {
      const [a, b] = [summary[kind][k], summary.tsx[k]];
      return a !== undefined && b ? a / b : undefined;
    };
    return { startMs: r('startMs'), idleRssKiB: r('idleRssKiB'), uploadRssKiB: r('uploadRssKiB'), wallMs: r('wallMs') };
  };
  const ratios = { compiled: ratiosOf('compiled'), deployed: ratiosOf('deployed') };
  const targets = (['compiled', 'deployed'] as const).flatMap((kind) => [
    {
      label: `${kind}: idle RSS ≤ ${IDLE_RSS_RATIO_TARGET} × tsx`,
      value: `${mib(summary[kind].idleRssKiB)} MiB vs ${mib(summary.tsx.idleRssKiB)} MiB = ${fmt(ratios[kind].idleRssKiB)} ×`,
      pass: ratios[kind].idleRssKiB !== undefined && ratios[kind].idleRssKiB! <= IDLE_RSS_RATIO_TARGET,
    },
    {
      label: `${kind}: start to polling < ${START_MS_TARGET} ms`,
      value: `${Math.round(summary[kind].startMs ?? NaN)} ms (tsx ${Math.round(summary.tsx.startMs ?? NaN)} ms = ${fmt(ratios[kind].startMs)} ×)`,
      pass: summary[kind].startMs !== undefined && summary[kind].startMs! < START_MS_TARGET,
    },
  ]);
  return { samples, summary, ratios, targets };
}

const mib = (kib: number | undefined) => (kib === undefined ? '?' : (kib / 1024).toFixed(0));
const fmt = (x: number | undefined) => (x === undefined ? '?' : x.toFixed(2));

export async function writeStartupResults(out: string, r: StartupResults, meta: { startedAt: string; machine: string; notes: string[] }): Promise<void> {
  await writeFile(join(out, 'startup.json'), JSON.stringify({ schema: 'vmsnap-bench-startup/1', ...meta, commands: WORKER_COMMANDS, ...r }, null, 2) + '\n');
  const env = (k: WorkerKind) =>
    Object.entries(WORKER_ENV[k] ?? {})
      .map(([n, v]) => `${n}=${v} `)
      .join('');
  const row = (k: WorkerKind) =>
    `| ${k} (\`${env(k)}node ${WORKER_COMMANDS[k].join(' ')}\`) | ${Math.round(r.summary[k].startMs ?? NaN)} | ${mib(r.summary[k].idleRssKiB)} | ${mib(r.summary[k].uploadRssKiB)} | ${((r.summary[k].wallMs ?? NaN) / 1000).toFixed(1)} | ${r.summary[k].ok} |`;
  const ratioRow = (k: 'compiled' | 'deployed') =>
    `| ${k} ÷ tsx | ${fmt(r.ratios[k]?.startMs)} | ${fmt(r.ratios[k]?.idleRssKiB)} | ${fmt(r.ratios[k]?.uploadRssKiB)} | ${fmt(r.ratios[k]?.wallMs)} | |`;
  const md = [
    '# vmsnap worker start-up and memory: compiled vs tsx',
    '',
    `Run ${meta.startedAt} on ${meta.machine}. Medians; the three ways rotate run by run, in one run.`,
    '',
    '| worker | start → polling (ms) | idle RSS (MiB) | RSS uploading the large image (MiB) | snapshot wall (s) | runs ok |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    row('tsx'),
    row('compiled'),
    row('deployed'),
    ratioRow('compiled'),
    ratioRow('deployed'),
    '',
    '## Targets',
    '',
    ...r.targets.map((t) => `- ${t.pass ? 'pass' : '**MISS**'}: ${t.label}: ${t.value}`),
    '',
    '## Notes',
    '',
    ...meta.notes.map((n) => `- ${n}`),
    '',
  ].join('\n');
  await writeFile(join(out, 'startup.md'), md);
}
