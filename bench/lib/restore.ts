// `npm run bench -- --section restore`: vmsnap's restore against the bare commands an operator
// scripts (curl the image, qemu-img convert, virsh destroy, mv, virsh start), on the same guests
// and image, alternating run by run. The figure that matters is the guest's downtime: from
// libvirt's Stopped event to its Started event, watched the same way for both (virsh event).
import type { Client } from '@temporalio/client';
import { spawn } from 'node:child_process';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { execa } from 'execa';
import type { Guest } from '../../scripts/lib/guest.js';
import { restoreFiles } from '../../src/activities/restore-files.js';
import { startRestore } from '../../src/client/restores.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import type { DiskSpec } from './options.js';
import type { GlanceCtx } from './variants.js';

export interface RestoreSample {
  disk: string;
  variant: 'bare' | 'vmsnap';
  run: number;
  ok: boolean;
  error?: string;
  /** Stopped → Started, from libvirt's lifecycle events. */
  downtimeMs?: number;
  /** vmsnap's own downtime figure (its activities' clocks). */
  reportedDowntimeMs?: number;
  /** vmsnap's downtime by step (its activity's clocks): swap and task state, then libvirt's start. */
  swapMs?: number;
  startMs?: number;
  /** From the first command (or startRestore) to the guest running on the image. */
  wallMs?: number;
}

/** Watches a domain's lifecycle events; downtime is the first Stopped to the next Started. */
function watchLifecycle(uri: string, name: string) {
  const proc = spawn('virsh', ['-c', uri, 'event', '--domain', name, '--event', 'lifecycle', '--loop'], {
    stdio: ['ignore', 'pipe', 'ignore'],
    env: { ...process.env, LC_ALL: 'C' },
  });
  let stoppedAt: number | undefined;
  let startedAt: number | undefined;
  createInterface({ input: proc.stdout }).on('line', (line) => {
    // Timestamps are taken on arrival: virsh prints each event as libvirtd sends it.
    if (/: Stopped/.test(line) && stoppedAt === undefined) stoppedAt = Date.now();
    else if (/: Started/.test(line) && stoppedAt !== undefined && startedAt === undefined) startedAt = Date.now();
  });
  const ready = new Promise((r) => setTimeout(r, 500)); // virsh registers the callback first
  return {
    ready,
    async downtime(): Promise<number | undefined> {
      for (let i = 0; i < 50 && startedAt === undefined; i++) await new Promise((r) => setTimeout(r, 100));
      proc.kill();
      return stoppedAt !== undefined && startedAt !== undefined ? startedAt - stoppedAt : undefined;
    },
  };
}

async function bare(ctx: RestoreBenchCtx, guest: Guest, imageId: string): Promise<Omit<RestoreSample, 'disk' | 'variant' | 'run' | 'ok'>> {
  const download = `${guest.diskPath}.bare-download`;
  const converted = `${guest.diskPath}.bare-new`;
  const t0 = Date.now();
  const headers = Object.entries(await ctx.glance.auth()).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
  await execa('curl', ['-sSf', '-o', download, ...headers, `${ctx.glance.glanceUrl}/v2/images/${imageId}/file`]);
  await execa('qemu-img', ['convert', '-f', 'qcow2', '-O', 'qcow2', download, converted]);
  await rm(download, { force: true });
  const watch = watchLifecycle(ctx.libvirtUri, guest.name);
  await watch.ready;
  await execa('virsh', ['-c', ctx.libvirtUri, 'destroy', guest.name]);
  await execa('mv', ['-f', converted, guest.diskPath]);
  await execa('virsh', ['-c', ctx.libvirtUri, 'start', guest.name]);
  const wallMs = Date.now() - t0;
  return { downtimeMs: await watch.downtime(), wallMs };
}

async function vmsnap(ctx: RestoreBenchCtx, guest: Guest, imageId: string): Promise<Omit<RestoreSample, 'disk' | 'variant' | 'run' | 'ok'>> {
  const watch = watchLifecycle(ctx.libvirtUri, guest.name);
  await watch.ready;
  const t0 = Date.now();
  const handle = await startRestore(ctx.client, { instance: guest.uuid, imageId }, ctx.taskQueue);
  const result = await handle.result();
  const wallMs = Date.now() - t0;
  await rm(restoreFiles(guest.diskPath).preRestore, { force: true });
  await rm(restoreFiles(guest.diskPath).marker, { force: true });
  return {
    downtimeMs: await watch.downtime(),
    reportedDowntimeMs: result.downtimeMs,
    ...(result.downtimeStepsMs ? { swapMs: result.downtimeStepsMs.swapAndTaskState, startMs: result.downtimeStepsMs.start } : {}),
    wallMs,
  };
}

export interface RestoreBenchCtx {
  runs: number;
  disks: DiskSpec[];
  client: Client;
  taskQueue: string;
  glance: GlanceCtx;
  libvirtUri: string;
  prefix: string;
  newGuest: (name: string, spec: DiskSpec) => Promise<Guest>;
  /** A fresh worker that discovers the guests made so far. */
  freshWorker: () => Promise<unknown>;
  log: (line: string) => void;
}

export async function runRestoreBench(ctx: RestoreBenchCtx): Promise<RestoreSample[]> {
  const samples: RestoreSample[] = [];
  const subjects: { spec: DiskSpec; guest: Guest; imageId: string }[] = [];
  for (const spec of ctx.disks) {
    const guest = await ctx.newGuest(`${ctx.prefix}-restore-${spec.kind}`, spec);
    subjects.push({ spec, guest, imageId: '' });
  }
  await ctx.freshWorker();
  for (const s of subjects) {
    const snap = await startSnapshot(ctx.client, { instance: s.guest.uuid, imageName: `${ctx.prefix}-restore-${s.spec.kind}`, mode: 'cold' }, ctx.taskQueue);
    s.imageId = (await snap.result()).imageId;
    ctx.glance.created.add(s.imageId);
    ctx.log(`restore ${s.spec.kind}: image ${s.imageId}`);
  }
  // Sizes and variants interleaved run by run: the shared machine's load drifts over minutes, and
  // running all of one size first would read that drift as growth with size.
  for (let run = 1; run <= ctx.runs; run++) {
    const sizes = run % 2 ? subjects : [...subjects].reverse();
    for (const { spec, guest, imageId } of sizes) {
      const order: ('bare' | 'vmsnap')[] = run % 2 ? ['bare', 'vmsnap'] : ['vmsnap', 'bare'];
      for (const variant of order) {
        try {
          const r = variant === 'bare' ? await bare(ctx, guest, imageId) : await vmsnap(ctx, guest, imageId);
          samples.push({ disk: spec.kind, variant, run, ok: r.downtimeMs !== undefined, ...r });
          const steps = r.swapMs !== undefined ? ` (swap ${r.swapMs} ms, start ${r.startMs} ms)` : '';
          ctx.log(
            `restore ${spec.kind} ${variant} run ${run}: downtime ${r.downtimeMs} ms, wall ${r.wallMs} ms${r.reportedDowntimeMs !== undefined ? `, reported ${r.reportedDowntimeMs} ms${steps}` : ''}`,
          );
        } catch (err) {
          samples.push({ disk: spec.kind, variant, run, ok: false, error: (err as Error).message });
          ctx.log(`restore ${spec.kind} ${variant} run ${run} failed: ${(err as Error).message}`);
        }
      }
    }
  }
  return samples;
}

function median(xs: number[]): number | undefined {
  if (!xs.length) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1]! + s[m]!) / 2;
}

export async function writeRestoreResults(
  out: string,
  samples: RestoreSample[],
  meta: { startedAt: string; machine: string; notes: string[] },
): Promise<string[]> {
  await writeFile(join(out, 'restore.json'), `${JSON.stringify({ ...meta, samples }, null, 2)}\n`);
  const disks = [...new Set(samples.map((s) => s.disk))];
  const med = (disk: string, variant: string, key: 'downtimeMs' | 'wallMs' | 'reportedDowntimeMs' | 'swapMs' | 'startMs') =>
    median(
      samples
        .filter((s) => s.ok && s.disk === disk && s.variant === variant)
        .map((s) => s[key])
        .filter((v): v is number => typeof v === 'number'),
    );
  const ratio = (a?: number, b?: number) => (a !== undefined && b ? (a / b).toFixed(2) : '-');
  const rows = disks.map((d) => {
    const bd = med(d, 'bare', 'downtimeMs');
    const vd = med(d, 'vmsnap', 'downtimeMs');
    const bw = med(d, 'bare', 'wallMs');
    const vw = med(d, 'vmsnap', 'wallMs');
    const n = (v: string) => samples.filter((s) => s.ok && s.disk === d && s.variant === v).length;
    const steps = `${med(d, 'vmsnap', 'swapMs') ?? '-'} / ${med(d, 'vmsnap', 'startMs') ?? '-'}`;
    return {
      d,
      bd,
      vd,
      bw,
      vw,
      line: `| ${d} | ${n('bare')}/${n('vmsnap')} | ${bd ?? '-'} | ${vd ?? '-'} | ${ratio(vd, bd)} | ${med(d, 'vmsnap', 'reportedDowntimeMs') ?? '-'} | ${steps} | ${bw ?? '-'} | ${vw ?? '-'} | ${ratio(vw, bw)} |`,
    };
  });
  const targets: string[] = [];
  for (const r of rows) {
    if (r.vd !== undefined && r.bd) {
      const x = r.vd / r.bd;
      targets.push(`${x <= 1.1 ? 'pass' : 'MISS'}: ${r.d} disk downtime ${x.toFixed(2)} × bare (target ≤ 1.10)`);
    }
  }
  // Growth with size: each bigger disk against the smallest, beside bare's growth in the same run.
  const [smallest, ...bigger] = rows;
  for (const r of bigger) {
    if (!smallest?.vd || !r.vd) continue;
    const growth = r.vd / smallest.vd;
    const bareGrowth = smallest.bd && r.bd ? ` (bare: ${(r.bd / smallest.bd).toFixed(2)})` : '';
    targets.push(
      `${growth <= 1.25 ? 'pass' : 'MISS'}: vmsnap downtime ${r.d} / ${smallest.d} ${growth.toFixed(2)}${bareGrowth} (must not grow with the image's size; ≤ 1.25)`,
    );
  }
  const md = [
    '# Restore benchmark',
    '',
    `Run ${meta.startedAt}; ${meta.machine}. Medians of the successful runs; ${samples.filter((s) => !s.ok).length} failed.`,
    '',
    '| disk | runs bare/vmsnap | bare downtime ms | vmsnap downtime ms | ratio | vmsnap reported ms | vmsnap swap / start ms | bare wall ms | vmsnap wall ms | ratio |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map((r) => r.line),
    '',
    ...[...targets.filter((t) => t.startsWith('MISS')), ...targets.filter((t) => !t.startsWith('MISS'))].map((t) => `- ${t}`),
    '',
    ...meta.notes.map((n) => `- ${n}`),
    '',
  ].join('\n');
  await writeFile(join(out, 'restore.md'), md);
  return targets;
}
