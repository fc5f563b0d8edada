// `npm run bench`: vmsnap against the bare commands an operator would script (virsh suspend,
// qemu-img convert, virsh resume, curl), on the same guests and disks, in one run, the variants
// alternating run by run. Writes latest.json (raw samples, machine), latest.md and latest.svg.
// See `npm run bench -- --help` and docs/benchmarks.md.
import type { Client } from '@temporalio/client';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildGuestAssets, type Guest } from '../scripts/lib/guest.js';
import { connectClient, type SnapshotHandle } from '../src/client/snapshots.js';
import { LibvirtHypervisor } from '../src/drivers/libvirt.js';
import { connectCloud } from '../src/drivers/cloud.js';
import { loadConfig } from '../src/shared/config.js';
import { createDataGuest, ensureRandomFile, RANDOM_PIECE_MIB, removeGuestQuietly } from './lib/guests.js';
import { describeMachine } from './lib/machine.js';
import { renderMarkdown } from './lib/markdown.js';
import { measureRun, type Sample } from './lib/measure.js';
import { parseOptions, type BenchOptions, type DiskSpec, type Mode } from './lib/options.js';
import { renderPng } from './lib/png.js';
import { evaluateTargets, growthOf, growthTargets, scaleGrowth, summarize, type BenchResults, type ScaleSample } from './lib/results.js';
import { runScaleLevel } from './lib/scale.js';
import { openStack, type BenchStack } from './lib/stack.js';
import { runStartupBench, writeStartupResults } from './lib/startup.js';
import { runRestoreBench, writeRestoreResults } from './lib/restore.js';
import { renderSvg } from './lib/svg.js';
import { runWriteStallBench, writeStallResults, type StallVariant } from './lib/write-stalls.js';
import { FLEET_NOTES, runFleetBench, writeFleetResults } from './lib/fleet.js';
import pg from 'pg';
import { parsePostgresUrl } from '../src/shared/config.js';
import { postgresClientConfig } from '../src/store/postgres.js';
import { createStore } from '../src/store/index.js';
import {
  cancelAndWait,
  deleteImage,
  diskSetAvailable,
  liveModeAvailable,
  runBare,
  runVmsnap,
  type BareCtx,
  type GlanceCtx,
  type VmsnapCtx,
} from './lib/variants.js';
import { ensureBuilt, runtimeFloorKiB, sha512FloorCpuSPerGiB, startBenchWorker, type BenchWorker } from './lib/worker.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** Scale guests count slowly: 20 TCG guests counting every 20 ms would saturate a small host by themselves. */
const SCALE_GUEST_INTERVAL_MS = 1000;
const GUEST_BOOT_CONCURRENCY = 4;

const t0 = Date.now();
const log = (line: string) => console.log(`[bench +${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${line}`);

/** Undo steps, run last-in first-out whatever happens (also on Ctrl-C). */
const cleanups: { what: string; run: () => Promise<void> }[] = [];
let cleaning: Promise<void> | undefined;
let interrupted = false;
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    while (cleanups.length) {
      const step = cleanups.pop()!;
      try {
        await step.run();
      } catch (err) {
        log(`cleanup: ${step.what} failed: ${(err as Error).message}`);
      }
    }
  })();
  return cleaning;
}
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    interrupted = true;
    log(`${signal}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  });
}

/** The worker's per-host snapshot limit, if the worker has such a setting (read, not assumed). */
function hostLimitOf(env: Record<string, string>): { setting: string; value: number } | undefined {
  // Looked up by name rather than typed access: the setting is newer than this benchmark may be.
  const cfg = loadConfig(env) as unknown as Record<string, unknown>;
  const value = cfg.maxConcurrentSnapshots ?? (cfg.snapshot as Record<string, unknown> | undefined)?.maxConcurrentSnapshots;
  if (typeof value !== 'number') return undefined;
  const source = readFileSync(join(ROOT, 'src/shared/config.ts'), 'utf8');
  const setting = /'(VMSNAP_MAX_CONCURRENT_\w+)'/.exec(source)?.[1] ?? 'VMSNAP_MAX_CONCURRENT_SNAPSHOTS';
  return { setting, value };
}

/** Runs `fn` over items, at most `limit` at once. */
async function inBatches<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += limit) out.push(...(await Promise.all(items.slice(i, i + limit).map(fn))));
  return out;
}

/** Variant order of run `run` (1-based): rotated each run, so neither always goes first. */
/** The results folder (--out), made when missing. */
async function resultsDir(opts: BenchOptions): Promise<string> {
  const out = resolve(ROOT, opts.out);
  await mkdir(out, { recursive: true });
  return out;
}

function orderOf(modes: Mode[], run: number): Mode[] {
  const k = (run - 1) % modes.length;
  return [...modes.slice(k), ...modes.slice(0, k)];
}

async function main(opts: BenchOptions, argv: string[]): Promise<number> {
  const startedAt = new Date();
  const errors: string[] = [];
  const notes: string[] = [];
  const samples: Sample[] = [];
  const scale: ScaleSample[] = [];

  // The fleet: the Temporal cluster, and Glance caching tokens as a production one does (a fleet's
  // uploads would otherwise each wait for a check by the stack's one Keystone thread).
  const stack: BenchStack =
    opts.section === 'fleet' ? await openStack(opts.stack, log, 'cluster', { VMSNAP_GLANCE_TOKEN_CACHE: '300' }) : await openStack(opts.stack, log);
  cleanups.push({ what: 'stack down', run: () => stack.down() });
  const machine = await describeMachine(stack.libvirtUri);
  log(`machine: ${machine.nproc} CPU, ${machine.memoryMiB} MiB, load ${machine.loadAverageStart.join(' ')}`);
  // The machine line of a section's report: the load at its start and at its end.
  const machineAtEnd = () =>
    `${machine.nproc} CPU, ${machine.memoryMiB} MiB, load ${machine.loadAverageStart.join(' ')} at start, ${os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')} at end`;

  const tag = String(process.pid);
  const prefix = `vmsnap-bench-${tag}`;
  const workDir = join(stack.dataDir, `bench-${tag}`);
  await mkdir(workDir, { recursive: true });
  cleanups.push({ what: `remove ${workDir}`, run: () => rm(workDir, { recursive: true, force: true }) });
  const place = { guestsDir: join(stack.dataDir, 'guests'), assetsDir: join(stack.dataDir, 'guest-assets') };

  const cloud = await connectCloud(loadConfig(stack.env));
  cleanups.push({ what: 'close the cloud session', run: () => cloud.close() });
  const glance: GlanceCtx = { glanceUrl: cloud.glanceUrl, auth: () => cloud.identity.authHeaders(), created: new Set() };
  cleanups.push({
    what: 'delete images',
    run: async () => {
      for (const id of [...glance.created]) await deleteImage(glance, id).catch((err: Error) => log(`cleanup: image ${id}: ${err.message}`));
    },
  });
  if (opts.section === 'fleet' && opts.fleet) return runFleet(opts, opts.fleet, stack, glance, workDir, startedAt, tag);

  const guests = new Set<string>();
  cleanups.push({
    what: 'remove guests',
    run: async () => {
      for (const name of guests) {
        const problem = await removeGuestQuietly(name, place.guestsDir);
        if (problem) log(`cleanup: guest ${problem}`);
      }
    },
  });
  const newGuest = async (name: string, spec: Pick<DiskSpec, 'virtualMiB' | 'dataMiB' | 'dataDisk'>, intervalMs?: number): Promise<Guest> => {
    guests.add(name); // before it exists: a half-made guest is removed too
    return createDataGuest({
      ...place,
      name,
      spec,
      randomFile,
      ...(intervalMs !== undefined ? { intervalMs } : {}),
    });
  };
  const dropGuest = async (name: string) => {
    const problem = await removeGuestQuietly(name, place.guestsDir);
    if (problem) errors.push(`removing guest ${problem}`);
    else guests.delete(name);
  };

  // The live mode only if the workflow takes it by now.
  const live = liveModeAvailable();
  const modes = opts.modes.filter((m) => m !== 'live' || live.available);
  if (opts.modes.includes('live') && !live.available) log(`vmsnap live: not yet available (${live.reason})`);
  // A guest with a data disk is snapshotted whole (disks: 'all') once the workflow takes it; until then bare alone runs on it.
  const diskSet = diskSetAvailable();
  if (opts.disks.some((d) => d.dataDisk) && !diskSet.available) log(`vmsnap disks "all": not yet available (${diskSet.reason})`);

  const workerEnv: Record<string, string> = {
    ...stack.env,
    VMSNAP_HOST: `bench-${tag}`,
    VMSNAP_TASK_QUEUE: `vmsnap-bench-${tag}`,
    VMSNAP_STORE_URL: `sqlite://${join(workDir, 'vmsnap.sqlite')}`,
    VMSNAP_STORE_PATH: '',
    VMSNAP_SNAPSHOTS_DIR: join(workDir, 'snapshots'),
    // Nothing in the background while measuring: no reconciler, no metrics endpoint to clash on.
    VMSNAP_RECONCILE_INTERVAL_MS: '0',
    VMSNAP_METRICS_ADDRESS: 'off',
    VMSNAP_CONFIG_FILE: '',
    VMSNAP_LOG_LEVEL: 'INFO',
  };
  let hostLimit = hostLimitOf(workerEnv);
  if (opts.hostLimit !== undefined) {
    if (hostLimit) {
      workerEnv[hostLimit.setting] = String(opts.hostLimit);
      hostLimit = { ...hostLimit, value: opts.hostLimit };
    } else {
      notes.push(`--host-limit ${opts.hostLimit} ignored: the worker has no per-host limit setting yet`);
    }
  }
  const hostLimitNote = hostLimit
    ? `${hostLimit.setting}=${hostLimit.value}${opts.hostLimit === undefined ? " (the worker's default)" : ''}: at most ${hostLimit.value} snapshots copy at once per host, the rest wait for a slot`
    : 'the worker has no per-host concurrency limit setting yet: every snapshot runs at once';

  await ensureBuilt(ROOT);
  const config = loadConfig(workerEnv);
  const client: Client = await connectClient(config.temporal);
  cleanups.push({ what: 'close the Temporal client', run: () => client.connection.close() });
  const hypervisor = new LibvirtHypervisor({ uri: stack.libvirtUri });

  let worker: BenchWorker | undefined;
  cleanups.push({ what: 'stop the worker', run: async () => worker?.stop(interrupted ? 5_000 : 30_000) });
  // Before the worker stops (cleanups run last first): an interrupted snapshot is cancelled while
  // a worker is there to resume its guest and delete its image.
  const running = new Map<string, SnapshotHandle>();
  cleanups.push({
    what: 'cancel running snapshots',
    run: async () => {
      await Promise.all([...running.values()].map((h) => cancelAndWait(h, interrupted ? 10_000 : 30_000)));
    },
  });
  // A fresh worker per phase: it discovers the phase's guests at start (no lookup miss in the
  // first run), and its idle memory is not what earlier phases left behind.
  const freshWorker = async (): Promise<BenchWorker> => {
    await worker?.stop();
    log('starting a vmsnap worker process');
    worker = await startBenchWorker(workerEnv, ROOT, 120_000, 'deployed');
    log(`worker pid ${worker.pid}`);
    return worker;
  };
  // The spread copies a reference to glance.created: every variant's images land in one set.
  const vmsnapCtx = (w: BenchWorker): VmsnapCtx => ({
    ...glance,
    client,
    taskQueue: workerEnv.VMSNAP_TASK_QUEUE!,
    workerPid: w.pid,
    timeoutMs: opts.runTimeoutMs,
    running,
  });
  const bareCtx: BareCtx = { ...glance, libvirtUri: stack.libvirtUri, workDir, timeoutMs: opts.runTimeoutMs };

  // Built once up front: guests booted in parallel would each build them, racing on the same files.
  await buildGuestAssets(place.assetsDir);
  // Also what the sha512 floor is measured on: at least 64 MiB.
  const randomFile = join(workDir, 'random.bin');
  const randomMiB = Math.max(64, Math.min(RANDOM_PIECE_MIB, Math.max(0, ...opts.disks.map((d) => d.dataMiB))));
  log(`writing ${randomMiB} MiB of random data to copy into the disks`);
  await ensureRandomFile(randomFile, randomMiB);
  if (opts.section === 'write-stalls') {
    const stallSamples = await runWriteStallBench({
      runs: opts.runs,
      ...(opts.stallVariants ? { variants: opts.stallVariants as StallVariant[] } : {}),
      disks: opts.disks,
      idleMs: opts.idleMs,
      libvirtUri: stack.libvirtUri,
      hypervisor,
      workDir,
      prefix,
      newGuest: (name, spec) => newGuest(name, spec),
      dropGuest,
      log,
    });
    const out = await resultsDir(opts);
    const targets = await writeStallResults(out, stallSamples, {
      startedAt: startedAt.toISOString(),
      command: `npm run bench -- ${process.argv.slice(2).join(' ')}`,
      disks: opts.disks,
      machine: machineAtEnd(),
    });
    for (const t of targets) log(`target ${t}`);
    log(`wrote ${join(out, 'write-stalls.json')}, write-stalls.md`);
    return stallSamples.some((s) => !s.ok) ? 1 : 0;
  }
  if (opts.section === 'restore') {
    const restoreWorkerEnv = workerEnv;
    // Like the bare script, which destroys at once: no graceful shutdown wait in the downtime.
    restoreWorkerEnv.VMSNAP_RESTORE_SHUTDOWN_TIMEOUT_MS = '0';
    const restoreSamples = await runRestoreBench({
      runs: opts.runs,
      disks: opts.disks,
      client,
      taskQueue: workerEnv.VMSNAP_TASK_QUEUE!,
      glance,
      libvirtUri: stack.libvirtUri,
      prefix,
      newGuest: (name, spec) => newGuest(name, spec),
      freshWorker,
      log,
    });
    const out = await resultsDir(opts);
    const targets = await writeRestoreResults(out, restoreSamples, {
      startedAt: startedAt.toISOString(),
      machine: machineAtEnd(),
      notes: [
        'downtime: libvirt lifecycle events Stopped → Started as `virsh event` receives them, the same watch for both variants.',
        'bare: curl GET of the image file, qemu-img convert -O qcow2, virsh destroy, mv over the disk (the old disk is gone), virsh start.',
        'vmsnap: restoreInstance through the client against a worker process, VMSNAP_RESTORE_SHUTDOWN_TIMEOUT_MS=0 (destroy at once, as bare); its stop, swap, task-state change and start are one host activity (stopSwapStart); it keeps the old disk (link + rename) and fsyncs the restored disk before the stop (bare does not: its writeback may fall into its downtime).',
        'wall: bare from curl to virsh start returning; vmsnap from startRestore to the result (guest confirmed running).',
        'sizes and variants interleaved run by run (the order flips each run), so that load drifting over the run is not read as growth with size.',
        "vmsnap swap / start: its activity's own clocks, destroy returned → disk swapped and task state set → libvirt's start returned.",
      ],
    });
    for (const t of targets) log(`target ${t}`);
    log(`wrote ${join(out, 'restore.json')}, restore.md`);
    return restoreSamples.some((s) => !s.ok) ? 1 : 0;
  }
  if (opts.section === 'startup') {
    const spec = opts.disks[0]!;
    log(`startup: creating guest ${prefix}-startup (${spec.virtualMiB} MiB virtual, ${spec.dataMiB} MiB data)`);
    const guest = await newGuest(`${prefix}-startup`, spec);
    const r = await runStartupBench({
      root: ROOT,
      runs: opts.runs,
      idleMs: opts.idleMs,
      workerEnv,
      guest,
      ctx: (pid) => ({ ...glance, client, taskQueue: workerEnv.VMSNAP_TASK_QUEUE!, workerPid: pid, timeoutMs: opts.runTimeoutMs, running }),
      log,
    });
    const out = await resultsDir(opts);
    await writeStartupResults(out, r, {
      startedAt: startedAt.toISOString(),
      machine: machineAtEnd(),
      notes: [
        'start → polling: from spawn to the worker’s start-up line, which it logs once every worker of it (main, host, slots) polls.',
        `idle RSS: /proc/<pid>/status VmRSS every 100 ms over ${opts.idleMs} ms, from 1 s after that line; median.`,
        `uploading: peak VmRSS while the worker held the image file open, in a cold snapshot of a ${spec.virtualMiB} MiB disk with ${spec.dataMiB} MiB random data.`,
        'All three run with INFO logs, no metrics endpoint, no reconciler, a SQLite store, on the same stack and guest.',
      ],
    });
    for (const t of r.targets) log(`target ${t.pass ? 'pass' : 'MISS'}  ${t.label}: ${t.value}`);
    log(`wrote ${join(out, 'startup.json')}, startup.md`);
    return r.samples.some((s) => !s.ok) ? 1 : 0;
  }
  // The growth disks' runs are long enough that a warm-up round would only double the run.
  const warmups = opts.warmups ?? (opts.quick || opts.section === 'growth' ? 0 : 1);
  const maxScale = opts.scale.length ? Math.max(...opts.scale) : 0;
  const smallSpec = opts.disks.find((d) => d.kind === 'small') ?? { kind: 'small' as const, virtualMiB: 64, dataMiB: 0 };
  let smallGuest: Guest | undefined;

  const runDisk = async (spec: DiskSpec) => {
    const name = `${prefix}-${spec.kind}`;
    log(`${spec.kind}: creating guest ${name} (${spec.virtualMiB} MiB virtual, ${spec.dataMiB} MiB data)`);
    const guest = await newGuest(name, spec);
    if (spec.kind === 'small') smallGuest = guest;
    const w = await freshWorker();
    const diskModes = spec.dataDisk && !diskSet.available ? modes.filter((m) => m === 'bare') : modes;
    const request = spec.dataDisk ? { disks: 'all' as const } : {};
    const one = async (mode: Mode, run: number, position: number): Promise<Sample> => {
      const imageName = `${prefix}-${spec.kind}-${mode}-${run}`;
      try {
        const sample = await measureRun({
          disk: spec.kind,
          mode,
          run,
          position,
          guest,
          hypervisor,
          idleMs: opts.idleMs,
          ...(mode === 'bare' ? {} : { rssPid: w.pid }),
          workerPid: w.pid,
          variant: () => (mode === 'bare' ? runBare(bareCtx, guest, imageName) : runVmsnap(vmsnapCtx(w), guest, imageName, mode, request)),
        });
        // Only big uploads need the memory curve in the JSON.
        if (spec.kind !== 'large') delete sample.rssSeries;
        for (const id of sample.imageIds ?? (sample.imageId ? [sample.imageId] : [])) {
          await deleteImage(glance, id).catch((err: Error) => errors.push(`deleting image ${id}: ${err.message}`));
        }
        return sample;
      } catch (err) {
        return { disk: spec.kind, mode, run, position, ok: false, error: (err as Error).message };
      }
    };
    for (let i = 1; i <= warmups; i++) {
      for (const mode of orderOf(diskModes, i)) {
        const s = await one(mode, 0, 0);
        log(`${spec.kind}: warm-up ${mode} ${s.ok ? `ok (${Math.round(s.wallMs ?? 0)} ms)` : `FAILED: ${s.error}`}`);
      }
    }
    for (let run = 1; run <= opts.runs; run++) {
      const order = orderOf(diskModes, run);
      for (const [i, mode] of order.entries()) {
        const s = await one(mode, run, i + 1);
        samples.push(s);
        log(
          `${spec.kind} run ${run}/${opts.runs} ${mode.padEnd(4)}: ` +
            (s.ok
              ? `wall ${Math.round(s.wallMs ?? 0)} ms, pause ${Math.round(s.pauseMs ?? 0)} ms, upload ${(s.throughputMiBps ?? 0).toFixed(1)} MiB/s, progress ${Math.round((s.progressRatio ?? 0) * 100)} %`
              : `FAILED: ${s.error}`),
        );
      }
    }
    if (!(spec.kind === 'small' && maxScale > 0)) await dropGuest(name);
  };

  const runScale = async () => {
    // The small disk's guest is one of them when there is one; the rest are made here.
    const have = smallGuest ? [smallGuest] : [];
    const extra = Array.from({ length: Math.max(0, maxScale - have.length) }, (_, i) => `${prefix}-s${String(i + 1).padStart(2, '0')}`);
    if (extra.length) {
      log(`scale: creating ${extra.length} small guests`);
      const made = await inBatches(extra, GUEST_BOOT_CONCURRENCY, (name) => newGuest(name, smallSpec, SCALE_GUEST_INTERVAL_MS));
      have.push(...made);
    }
    const w = extra.length || !worker ? await freshWorker() : worker;
    for (const [li, n] of opts.scale.entries()) {
      for (let rep = 1; rep <= opts.scaleRuns; rep++) {
        for (const mode of orderOf(modes, li + rep)) {
          log(`scale: ${n} at once, ${mode}, round ${rep}`);
          const s = await runScaleLevel({ n, mode, rep, guests: have, bare: bareCtx, vmsnap: vmsnapCtx(w), imagePrefix: prefix });
          scale.push(s);
          log(
            `scale: ${n} ${mode}: wall ${Math.round(s.wallMs)} ms, ${s.failures} failed${s.maxConcurrentConverts !== undefined ? `, at most ${s.maxConcurrentConverts} copies at once` : ''}`,
          );
        }
      }
    }
    for (const g of have) await dropGuest(g.name);
    smallGuest = undefined;
  };

  // Small first, then the scale runs (reusing its guest), then the big disks: one counting guest
  // at a time during the per-disk runs, so guests do not compete with the work measured.
  const phases: { name: string; run: () => Promise<void> }[] = [];
  const small = opts.disks.find((d) => d.kind === 'small');
  if (small) phases.push({ name: 'small', run: () => runDisk(small) });
  if (maxScale > 0) phases.push({ name: 'scale', run: runScale });
  for (const d of opts.disks.filter((x) => x.kind !== 'small')) phases.push({ name: d.kind, run: () => runDisk(d) });
  for (const phase of phases) {
    try {
      await phase.run();
    } catch (err) {
      errors.push(`${phase.name}: ${(err as Error).message}`);
      log(`${phase.name} FAILED: ${(err as Error).message}`);
    }
  }
  await worker?.stop();
  const floor = await runtimeFloorKiB(ROOT);
  const hashCost = await sha512FloorCpuSPerGiB(randomFile);
  machine.loadAverageEnd = os.loadavg().map((l) => Math.round(l * 100) / 100);

  notes.push(
    'Guest-visible pause: QEMU STOP/RESUME events with QEMU’s own timestamps (LibvirtHypervisor.watchPauses, i.e. virsh qemu-monitor-event), the same watch for every variant.',
    'bare: virsh suspend; qemu-img convert -U -O qcow2; virsh resume; curl POST /v2/images; curl PATCH disk_format/container_format; curl -T; rm of the copy. Its wall time is the sum of those commands.',
    'vmsnap: startSnapshot() to handle.result() through Temporal, against a worker process run as deployed (`node --max-semi-space-size=1 dist/worker/main.js` with MALLOC_ARENA_MAX=2, the prebuilt workflow bundle, as `npm start`; built first when src/ is newer), INFO logs, SQLite store; so wall time includes Temporal’s task dispatch, the task-state and event writes, and the sha512 check against Glance.',
    'Upload throughput: image bytes / upload time. bare: the curl -T alone; vmsnap: the PUT while hashing (sha512), then the PATCH of mode, consistency and min_disk whose answer is the record checked, by uploadImage’s own clock (sendAndVerifyMs in its result, read from the history); the uploading phase also holds the activity’s dispatch. The /proc fd-window figure is the file held open, as seen from outside.',
    `Guest progress: the guest’s counter steps per second across the snapshot (readCounter before and after) ÷ steps per second in the ${opts.idleMs} ms idle window just before.`,
    'Worker RSS and CPU: /proc/<pid>/status VmRSS and /proc/<pid>/stat utime+stime every 50 ms; the upload window is while the worker holds the snapshot file open (/proc/<pid>/fd, last unbroken stretch); idle is the median over the idle window before the run. CPU per GiB is judged against the sha512 floor measured at the end of the same run (Node reading the bench’s random file in 4 MiB chunks and hashing it, median of 3).',
    'fsync diagnostic: bare times an fsync of its copy right after resume (not counted in its times); vmsnap does not fsync its copy either (a temp file, read back from the page cache and deleted, as bare’s; the upload refuses a copy made before a host restart).',
    `Order: variants alternate run by run (the first variant of run k is the k-th); ${warmups} unmeasured warm-up round(s) per disk; images are deleted after each run, outside the timings.`,
    `Guests: the counter test guest (scripts/lib/guest.ts) under TCG, 1 vCPU, 128 MiB, counting every 20 ms; scale guests count every ${SCALE_GUEST_INTERVAL_MS} ms so 20 TCG guests do not saturate the host’s CPUs by themselves.`,
  );
  if (stack.kind === 'own') {
    notes.push('Stack: its own, in .data/bench (Temporal 7333, Glance 9392, PostgreSQL 5532), started before and stopped after.');
    // Every Glance request costs a Keystone token check unless Glance caches tokens: say which.
    const cacheS = Number(process.env.VMSNAP_GLANCE_TOKEN_CACHE || -1);
    notes.push(
      cacheS > 0
        ? `Glance caches validated tokens for ${cacheS} s (VMSNAP_GLANCE_TOKEN_CACHE, keystonemiddleware's token_cache_time), as a production Glance does: most requests skip the Keystone check.`
        : "Glance checks every request's token with Keystone (the stack's default, token_cache_time -1): each Glance request of either variant includes a Keystone validation.",
    );
  } else
    notes.push(`Stack: the existing one named by the environment (${stack.env.TEMPORAL_ADDRESS}, ${glance.glanceUrl}), shared with whatever else runs on it.`);
  if (!live.available && opts.modes.includes('live')) notes.push(`vmsnap live: not yet available: ${live.reason}`);
  const pair = opts.disks.find((d) => d.dataDisk);
  if (pair?.dataDisk) {
    notes.push(
      `pair: a guest with a qcow2 root (${pair.virtualMiB} MiB, ${pair.dataMiB} MiB random data) and a ${pair.dataDisk.format} data disk (${pair.dataDisk.virtualMiB} MiB, ${pair.dataDisk.dataMiB} MiB random data), its counter written to both in one step. ` +
        'vmsnap snapshots both (disks "all": one pause, or one backup job, for both; one image each); bare: virsh suspend, qemu-img convert of each disk, virsh resume, then for each disk in turn curl POST, PATCH, -T. Image sizes and throughput are of both images together.',
    );
    if (!diskSet.available) notes.push(`vmsnap disks "all": not yet available, the pair ran bare only: ${diskSet.reason}`);
  }

  const summary = summarize(opts.disks, modes, samples);
  const growth = opts.section === 'growth' ? growthOf(summary, modes) : undefined;
  const results: BenchResults = {
    schema: 'vmsnap-bench/1',
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    durationS: Math.round((Date.now() - startedAt.getTime()) / 1000),
    argv,
    options: opts,
    stack: { kind: stack.kind, glanceUrl: glance.glanceUrl, temporal: stack.env.TEMPORAL_ADDRESS ?? '', dataDir: stack.dataDir },
    machine,
    worker: {
      ...(hostLimit ? { hostLimit } : {}),
      hostLimitNote,
      logLevel: workerEnv.VMSNAP_LOG_LEVEL ?? 'INFO',
      runtimeFloorKiB: floor,
      hashCpuSPerGiB: hashCost,
    },
    live,
    notes,
    samples,
    summary,
    scale,
    scaleGrowth: scaleGrowth(scale),
    targets: evaluateTargets(summary, scale, live, opts.modes, hashCost, diskSet),
    ...(growth ? { growth } : {}),
    errors,
  };
  if (growth) results.targets.unshift(...growthTargets(growth));

  const out = await resultsDir(opts);
  if (growth) {
    await writeFile(join(out, 'growth.json'), JSON.stringify(results, null, 2) + '\n');
    await writeFile(join(out, 'growth.md'), renderMarkdown(results));
    log(`wrote ${join(out, 'growth.json')}, growth.md`);
  }
  const svg = renderSvg(results);
  if (!growth) {
    await writeFile(join(out, 'latest.json'), JSON.stringify(results, null, 2) + '\n');
    await writeFile(join(out, 'latest.md'), renderMarkdown(results));
    await writeFile(join(out, 'latest.svg'), svg);
    log(`wrote ${join(out, 'latest.json')}, latest.md, latest.svg`);
  }
  if (opts.png && !growth) {
    const [, w, h] = /width="(\d+)" height="(\d+)"/.exec(svg) ?? [];
    try {
      const how = await renderPng(join(out, 'latest.svg'), join(out, 'latest.png'), Number(w), Number(h));
      log(`wrote ${join(out, 'latest.png')} (${how})`);
    } catch (err) {
      log(`no PNG: ${(err as Error).message}`);
    }
  }
  for (const t of results.targets) log(`target ${t.pass === null ? 'n/a ' : t.pass ? 'pass' : 'MISS'}  ${t.label} [${t.scope}]: ${t.margin}`);
  for (const e of errors) log(`error: ${e}`);
  return errors.length || samples.some((s) => !s.ok) ? 1 : 0;
}

/** The fleet section: its own store database, the cluster's server restart as a fault. */
async function runFleet(
  opts: BenchOptions,
  fleet: NonNullable<BenchOptions['fleet']>,
  stack: BenchStack,
  glance: GlanceCtx,
  workDir: string,
  startedAt: Date,
  tag: string,
): Promise<number> {
  const stackUrl = stack.env.VMSNAP_POSTGRES_URL!;
  const database = `vmsnap_fleet_${tag}`;
  const admin = new pg.Client(postgresClientConfig(parsePostgresUrl(stackUrl, 'VMSNAP_POSTGRES_URL')));
  await admin.connect();
  await admin.query(`CREATE DATABASE ${database}`);
  cleanups.push({
    what: `drop database ${database}`,
    run: async () => {
      await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
      await admin.end();
    },
  });
  const storeUrl = new URL(stackUrl);
  storeUrl.pathname = `/${database}`;
  const workerEnv: Record<string, string> = {
    ...stack.env,
    VMSNAP_HOST: `fleet-main-${tag}`,
    VMSNAP_TASK_QUEUE: `vmsnap-fleet-${tag}`,
    VMSNAP_STORE_URL: storeUrl.toString(),
    VMSNAP_STORE_PATH: '',
    VMSNAP_RECONCILE_INTERVAL_MS: '0',
    VMSNAP_METRICS_ADDRESS: 'off',
    VMSNAP_CONFIG_FILE: '',
    VMSNAP_LOG_LEVEL: 'WARN',
  };
  const config = loadConfig(workerEnv);
  const client = await connectClient(config.temporal);
  cleanups.push({ what: 'close the Temporal client', run: () => client.connection.close() });
  const store = createStore(config, { maxConnections: 2 });
  await store.migrate();
  cleanups.push({ what: 'close the store', run: () => store.close() });
  const hostLimit = opts.hostLimit ?? config.maxConcurrentSnapshots;
  const server = stack.service('temporal-server');
  if (!server) throw new Error('the fleet needs its own stack in cluster mode');
  const r = await runFleetBench({
    root: ROOT,
    opts: { ...fleet, hostLimit },
    client,
    store,
    workerEnv,
    workDir,
    dataDir: stack.dataDir,
    glance,
    serverMetricsUrl: (await server.status()).endpoints.metrics,
    postgres: { port: Number(new URL(stackUrl).port), query: (sql, params) => admin.query(sql, params) },
    restartTemporal: async () => {
      await server.down();
      await server.up();
    },
    log,
  });
  const out = await resultsDir(opts);
  await writeFleetResults(out, r, {
    startedAt: startedAt.toISOString(),
    notes: FLEET_NOTES,
  });
  log(`wrote ${join(out, 'fleet.json')}, fleet.md`);
  const c = r.checks;
  // Under faults a snapshot may end compensated; without them every one must complete.
  return (fleet.faults ? c.lost : c.failures) || c.guestsLeftPaused || c.instancesWithTaskState || !c.hostLimitRespected ? 1 : 0;
}

const argv = process.argv.slice(2);
let code = 1;
try {
  process.chdir(ROOT); // relative paths (.data/bench, .tools) are the repository's
  code = await main(parseOptions(argv), argv);
} catch (err) {
  log(`bench failed: ${(err as Error).stack ?? String(err)}`);
} finally {
  await cleanup();
}
process.exit(code);
