// The fleet section: many simulated hosts (bench/fleet-worker.ts processes, each several host
// workers with a simulated hypervisor) and one main worker (the deployed command line) on the
// stack's Temporal cluster and a PostgreSQL store, driven through stages of rising load with real
// Glance uploads of small images. Faults on request: a tenth of the hosts' processes killed with
// SIGKILL and started again, and the Temporal server restarted once.
import type { Client, WorkflowHandle } from '@temporalio/client';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { startSnapshot } from '../../src/client/snapshots.js';
import { VmsnapError } from '../../src/shared/errors.js';
import { snapshotWorkflowId } from '../../src/shared/names.js';
import type { Store } from '../../src/store/store.js';
import { SimulatedHypervisor, type SimHostStats } from './sim-hypervisor.js';
import type { GlanceCtx } from './variants.js';
import { deleteImage } from './variants.js';

export interface FleetOptions {
  hosts: number;
  procs: number;
  snapshots: number;
  copyMs: number;
  faults: boolean;
  hostLimit: number;
  /** Start no snapshot after this many minutes (the run's time box). */
  minutes?: number;
}

interface Proc {
  index: number;
  hosts: string[];
  child: ChildProcess;
  lines: string[];
}

interface Run {
  i: number;
  instance: string;
  host: string;
  mode: 'cold' | 'live';
  stage: number;
  startedAt: number;
  startRpcMs: number;
  endedAt?: number;
  outcome?: string;
  imageId?: string;
}

export interface FleetStage {
  inFlight: number;
  snapshots: number;
  wallS: number;
  perMinute: number;
  endToEndMs: { p50: number; p95: number };
  startRpcMs: { p50: number; p95: number };
  storeMs: { p50: number; p95: number };
  temporalDescribeMs: { p50: number; p95: number };
  /** From the Temporal server's metrics over the stage: where tasks waited, and refusals. */
  server: ServerStage;
  /** CPU cores each part used on average over the stage. */
  cores: Record<string, number>;
  /** Share of the stage (%) in which some runnable task of the machine waited for a CPU (PSI), and the load at its end. */
  cpuPressurePct: number;
  loadAverage: number;
}

const pct = (xs: number[], p: number) => {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return Math.round(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! * 10) / 10;
};
const p50p95 = (xs: number[]) => ({ p50: pct(xs, 50), p95: pct(xs, 95) });

export interface ServerStage {
  /**
   * ResourceExhausted answers by operation and cause: ConcurrentLimit is the frontend's poll limit
   * refusing a worker; BusyWorkflow is history retrying a task start while the workflow is locked.
   */
  refused: Record<string, number>;
  /** Mean schedule-to-start (ms) of workflow tasks, host-queue activities and slot holders (these wait for a free slot too). */
  workflowTaskStartMs: number;
  hostActivityStartMs: number;
  slotStartMs: number;
  /** Mean latency (ms) of the server's calls to its PostgreSQL store. */
  persistenceMs: number;
}

/** Counters of the Temporal server's Prometheus endpoint that the report reads, summed by kind. */
async function serverCounters(url: string | undefined): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  if (!url) return out;
  const text = await fetch(url, { signal: AbortSignal.timeout(10_000) })
    .then((r) => r.text())
    .catch(() => '');
  const add = (k: string, v: number) => out.set(k, (out.get(k) ?? 0) + v);
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)\{(.*)\} (\S+)$/.exec(line);
    if (!m) continue;
    const [, name, labels, raw] = m as unknown as [string, string, string, string];
    const label = (l: string) => new RegExp(`${l}="([^"]*)"`).exec(labels)?.[1] ?? '';
    const v = Number(raw);
    if (name === 'service_errors_resource_exhausted') add(`refused ${label('operation')} ${label('resource_exhausted_cause')}`, v);
    const s2s = /^task_schedule_to_start_latency_(sum|count)$/.exec(name);
    if (s2s) {
      const queue = label('taskqueue');
      const kind = label('task_type') === 'Workflow' ? 'workflow' : queue.endsWith('_slots') ? 'slot' : 'host';
      add(`${kind} ${s2s[1]}`, v);
    }
    const db = /^persistence_latency_(sum|count)$/.exec(name);
    if (db) add(`persistence ${db[1]}`, v);
  }
  return out;
}

/** The stage's share of the counters; a server restarted in between counts from zero. */
function serverStage(before: Map<string, number>, after: Map<string, number>): ServerStage {
  const delta = (k: string) => {
    const a = after.get(k) ?? 0;
    const b = before.get(k) ?? 0;
    return a >= b ? a - b : a;
  };
  const mean = (kind: string) => {
    const n = delta(`${kind} count`);
    return n ? Math.round((delta(`${kind} sum`) / n) * 1000 * 10) / 10 : 0;
  };
  const refused: Record<string, number> = {};
  for (const k of after.keys()) if (k.startsWith('refused ') && delta(k)) refused[k.slice('refused '.length)] = delta(k);
  return {
    refused,
    workflowTaskStartMs: mean('workflow'),
    hostActivityStartMs: mean('host'),
    slotStartMs: mean('slot'),
    persistenceMs: mean('persistence'),
  };
}

/** Unique to the run (`run` is its work dir): a snapshot workflow an earlier run left is never taken for one of ours. */
function uuidOf(run: string, host: string, i: number): string {
  const h = createHash('sha1').update(`${run}/${host}/${i}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** Microseconds in which some task waited for a CPU, since boot (Linux PSI; 0 without it). */
function cpuWaitUs(): number {
  try {
    return Number(/^some .*total=(\d+)/m.exec(readFileSync('/proc/pressure/cpu', 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

const CLK_TCK = 100;
function treeCpuS(root: number | undefined): number {
  if (!root) return 0;
  const stats = new Map<number, { ppid: number; cpu: number }>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      const own = Number(f[11]) + Number(f[12]);
      // The root's waited-for children (qemu-img runs that ended) count too.
      const waited = Number(d) === root ? Number(f[13]) + Number(f[14]) : 0;
      stats.set(Number(d), { ppid: Number(f[1]), cpu: own + waited });
    } catch {
      /* gone */
    }
  }
  let total = 0;
  for (const [pid, s] of stats) {
    for (let p = pid, hops = 0; p > 1 && hops < 20; p = stats.get(p)?.ppid ?? 0, hops++) {
      if (p === root) {
        total += s.cpu;
        break;
      }
    }
  }
  return total / CLK_TCK;
}

function pidFile(dataDir: string, name: string): number | undefined {
  const f = join(dataDir, 'run', `${name}.pid`);
  return existsSync(f) ? Number(readFileSync(f, 'utf8').trim()) : undefined;
}

export async function runFleetBench(ctx: {
  root: string;
  opts: FleetOptions;
  client: Client;
  store: Store;
  workerEnv: Record<string, string>;
  workDir: string;
  dataDir: string;
  glance: GlanceCtx;
  restartTemporal: () => Promise<void>;
  /** The stack's PostgreSQL: its port, and a query on it (pg_stat_activity, max_connections). */
  postgres: { port: number; query: (sql: string, params?: unknown[]) => Promise<{ rows: Record<string, unknown>[] }> };
  /** The Temporal server's Prometheus endpoint. */
  serverMetricsUrl?: string;
  log: (line: string) => void;
}) {
  const { opts, client, store, log } = ctx;
  const dir = join(ctx.workDir, 'fleet');
  await mkdir(dir, { recursive: true });
  const template = join(dir, 'template.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', template, '16M']);
  await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 1M', template]);
  const perHost = Math.ceil(opts.snapshots / opts.hosts);
  const hostNames = Array.from({ length: opts.hosts }, (_, h) => `fleet-p${String(h % opts.procs).padStart(2, '0')}-h${String(h).padStart(3, '0')}`);
  const instances: { id: string; host: string }[] = [];
  for (const host of hostNames) {
    for (const id of await SimulatedHypervisor.provision(join(dir, host), host, perHost, template, (h, i) => uuidOf(dir, h, i))) instances.push({ id, host });
  }
  log(
    `fleet: ${opts.hosts} simulated hosts in ${opts.procs} processes, ${instances.length} instances, ${opts.snapshots} snapshots, copies of ${opts.copyMs} ms`,
  );

  const env: Record<string, string> = {
    ...ctx.workerEnv,
    VMSNAP_MAX_CONCURRENT_SNAPSHOTS: String(opts.hostLimit),
    VMSNAP_PAUSE_WATCH_MS: '2000',
  };
  const spawnLogged = (args: string[], extra: Record<string, string>, ready: RegExp, lines: string[]) => {
    const child = spawn(process.execPath, args, {
      cwd: ctx.root,
      env: { ...process.env, ...env, ...extra },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const isReady = new Promise<void>((resolve, reject) => {
      for (const stream of [child.stdout!, child.stderr!]) {
        createInterface({ input: stream }).on('line', (line) => {
          lines.push(line);
          if (lines.length > 200) lines.shift();
          if (ready.test(line)) resolve();
        });
      }
      child.once('exit', (code) => reject(new Error(`exited with ${code}: ${lines.slice(-5).join(' | ')}`)));
    });
    return { child, ready: isReady };
  };
  const mainLines: string[] = [];
  // INFO: its start-up line is how we know it polls.
  const main = spawnLogged(['dist/worker/main.js', '--role', 'main'], { VMSNAP_LOG_LEVEL: 'INFO' }, /vmsnap worker started/, mainLines);
  const procs: Proc[] = [];
  const startProc = async (index: number) => {
    const hosts = hostNames.filter((_, h) => h % opts.procs === index);
    const lines: string[] = [];
    const p = spawnLogged(
      ['--import', 'tsx', 'bench/fleet-worker.ts'],
      { FLEET_HOSTS: hosts.join(','), FLEET_DIR: dir, FLEET_COPY_MS: String(opts.copyMs) },
      /fleet process ready/,
      lines,
    );
    procs[index] = { index, hosts, child: p.child, lines };
    await p.ready;
  };
  const stopAll = async () => {
    for (const c of [main.child, ...procs.map((p) => p.child)]) {
      if (c.exitCode === null && c.signalCode === null) {
        c.kill('SIGTERM');
        await Promise.race([once(c, 'exit'), sleep(20_000)]);
        if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      }
    }
  };
  // An interrupted bench exits without waiting for this function: take the children along.
  const killChildren = () => [main.child, ...procs.map((p) => p.child)].forEach((c) => c.exitCode === null && c.kill('SIGKILL'));
  process.once('exit', killChildren);
  try {
    const tStart = Date.now();
    await main.ready;
    for (let i = 0; i < opts.procs; i += 2) await Promise.all([startProc(i), ...(i + 1 < opts.procs ? [startProc(i + 1)] : [])]);
    log(`fleet: main worker and ${opts.procs} fleet processes polling after ${((Date.now() - tStart) / 1000).toFixed(1)} s`);
    // Discovery fills the store from each host's listInstances.
    const known = async () => (await store.listInstances()).length;
    for (let t = Date.now(); (await known()) < instances.length;) {
      if (Date.now() - t > 120_000) throw new Error(`only ${await known()} of ${instances.length} instances discovered after 120 s`);
      await sleep(1000);
    }

    // Interleaved across hosts, so every stage spreads over the fleet.
    const order = Array.from({ length: opts.snapshots }, (_, i) => instances[(i % opts.hosts) * perHost + Math.floor(i / opts.hosts)]!);
    const levels = [opts.hosts / 4, opts.hosts / 2, opts.hosts, opts.hosts * 2].map((x) => Math.max(1, Math.round(x)));
    const perStage = Math.ceil(opts.snapshots / levels.length);
    const runs: Run[] = [];
    const probes: { at: number; storeMs: number; describeMs?: number }[] = [];
    const faults: Record<string, unknown>[] = [];
    let lastHandle: WorkflowHandle | undefined;
    let probing = true;
    // PostgreSQL's connections, every 5 s: the peak against max_connections goes in the report.
    const connections = { peak: 0, max: 0, peakByDatabase: {} as Record<string, number> };
    const countConnections = async () => {
      const { rows } = await ctx.postgres.query(
        "SELECT coalesce(datname, '(none)') AS db, count(*)::int AS n, current_setting('max_connections')::int AS max FROM pg_stat_activity GROUP BY 1",
      );
      const total = rows.reduce((t, r) => t + (r.n as number), 0);
      connections.max = (rows[0]?.max as number | undefined) ?? connections.max;
      if (total > connections.peak) {
        connections.peak = total;
        connections.peakByDatabase = Object.fromEntries(rows.map((r) => [r.db as string, r.n as number]));
      }
    };
    let probeCount = 0;
    const probe = (async () => {
      while (probing) {
        if (probeCount++ % 5 === 0) await countConnections().catch(() => undefined);
        const at = Date.now();
        const pick = instances[Math.floor(Math.random() * instances.length)]!;
        const t0 = performance.now();
        await store.getInstance(pick.id).catch(() => undefined);
        const storeMs = performance.now() - t0;
        let describeMs: number | undefined;
        if (lastHandle) {
          const t1 = performance.now();
          describeMs = (await lastHandle
            .describe()
            .then(() => true)
            .catch(() => false))
            ? performance.now() - t1
            : undefined;
        }
        probes.push({ at, storeMs, ...(describeMs !== undefined ? { describeMs } : {}) });
        await sleep(1000);
      }
    })();

    const one = async (i: number, stage: number) => {
      const inst = order[i]!;
      const run: Run = {
        i,
        instance: inst.id,
        host: inst.host,
        mode: i % 2 ? 'live' : 'cold',
        stage,
        startedAt: Date.now(),
        startRpcMs: 0,
      };
      runs.push(run);
      const imageName = `fleet-${process.pid}-${String(i).padStart(4, '0')}`;
      let handle: WorkflowHandle | undefined;
      for (let tries = 0; !handle; tries++) {
        const t0 = performance.now();
        try {
          handle = await startSnapshot(client, { instance: inst.id, imageName, mode: run.mode }, env.VMSNAP_TASK_QUEUE!);
          run.startRpcMs = performance.now() - t0;
        } catch (err) {
          // A start whose answer was lost in the server restart did start: follow that run, do not
          // start the snapshot a second time.
          if (err instanceof VmsnapError && err.code === 'InstanceBusy') {
            handle = client.workflow.getHandle(snapshotWorkflowId(inst.id));
            break;
          }
          // The server restart: starts are refused for a few seconds.
          if (tries > 120) throw err;
          await sleep(1000);
        }
      }
      lastHandle = handle;
      for (let tries = 0; run.outcome === undefined; tries++) {
        try {
          const r = (await handle.result()) as { imageId: string };
          run.outcome = 'completed';
          run.imageId = r.imageId;
          ctx.glance.created.add(r.imageId);
        } catch (err) {
          if (err instanceof WorkflowFailedError)
            run.outcome = err.cause instanceof ApplicationFailure ? (err.cause.type ?? 'ApplicationFailure') : (err.cause?.name ?? 'failed');
          else if (tries > 120) run.outcome = `lost: ${(err as Error).message}`;
          else await sleep(1000);
        }
      }
      run.endedAt = Date.now();
    };

    const stages: FleetStage[] = [];
    // CPU seconds of processes the faults ended: their restarts count from zero.
    const ended = { 'temporal-server': 0, 'host workers': 0 };
    const parts = () => ({
      'temporal-server': ended['temporal-server'] + treeCpuS(pidFile(ctx.dataDir, 'temporal-server')),
      postgresql: treeCpuS(pidFile(ctx.dataDir, 'postgresql')),
      glance: treeCpuS(pidFile(ctx.dataDir, 'glance')),
      keystone: treeCpuS(pidFile(ctx.dataDir, 'keystone')),
      'main worker': treeCpuS(main.child.pid),
      'host workers': ended['host workers'] + procs.reduce((s, p) => s + treeCpuS(p.child.pid), 0),
      // Its own process only: the workers are its children.
      bench: (process.cpuUsage().user + process.cpuUsage().system) / 1e6,
    });
    let next = 0;
    // The time box: no snapshot starts after it; the stage running then ends with what it started.
    const deadline = opts.minutes ? Date.now() + opts.minutes * 60_000 : Infinity;
    for (const [s, inFlight] of levels.entries()) {
      if (Date.now() >= deadline) break;
      const end = Math.min(opts.snapshots, next + perStage);
      const first = next;
      const t0 = Date.now();
      const cpu0 = parts();
      const wait0 = cpuWaitUs();
      const counters0 = await serverCounters(ctx.serverMetricsUrl);
      const active = new Set<Promise<void>>();
      const faultsHere: Promise<void>[] = [];
      // A fault that fails is reported, not a crash of the run: the snapshots still need ending.
      const reported = (what: string, f: Promise<void>) => f.catch((err: Error) => void faults.push({ fault: what, error: err.message }));
      if (opts.faults && s === 1) faultsHere.push(reported('kill and restart host processes', killAndRestart()));
      if (opts.faults && s === 2) faultsHere.push(reported('Temporal server restart', restartServer()));
      while (next < end || active.size) {
        while (next < end && active.size < inFlight && Date.now() < deadline) {
          const p = one(next++, s).finally(() => active.delete(p));
          active.add(p);
        }
        if (!active.size) break; // the time box is over
        await Promise.race(active);
      }
      await Promise.all(faultsHere);
      const wallS = (Date.now() - t0) / 1000;
      const cpu1 = parts();
      const server = serverStage(counters0, await serverCounters(ctx.serverMetricsUrl));
      const done = runs.filter((r) => r.stage === s);
      const inStage = probes.filter((p) => p.at >= t0 && p.at <= Date.now());
      const stage: FleetStage = {
        inFlight,
        snapshots: next - first,
        wallS: Math.round(wallS * 10) / 10,
        perMinute: Math.round(((next - first) / wallS) * 60 * 10) / 10,
        endToEndMs: p50p95(done.map((r) => (r.endedAt ?? 0) - r.startedAt)),
        startRpcMs: p50p95(done.map((r) => r.startRpcMs)),
        storeMs: p50p95(inStage.map((p) => p.storeMs)),
        temporalDescribeMs: p50p95(inStage.flatMap((p) => (p.describeMs !== undefined ? [p.describeMs] : []))),
        server,
        cores: Object.fromEntries(Object.entries(cpu1).map(([k, v]) => [k, Math.round(((v - (cpu0 as Record<string, number>)[k]!) / wallS) * 100) / 100])),
        cpuPressurePct: Math.round((cpuWaitUs() - wait0) / (wallS * 1e4)),
        loadAverage: Math.round(os.loadavg()[0]! * 10) / 10,
      };
      stages.push(stage);
      log(
        `fleet stage ${s + 1}: ${inFlight} in flight, ${stage.snapshots} snapshots in ${stage.wallS} s = ${stage.perMinute}/min; end-to-end p50 ${stage.endToEndMs.p50} ms; start RPC p95 ${stage.startRpcMs.p95} ms; store p95 ${stage.storeMs.p95} ms; server ${JSON.stringify(server)}; CPU pressure ${stage.cpuPressurePct}%, load ${stage.loadAverage}; cores ${JSON.stringify(stage.cores)}`,
      );
    }
    probing = false;
    await probe;

    async function killAndRestart(): Promise<void> {
      await sleep(5000);
      const victims = procs.slice(0, Math.max(1, Math.round(opts.procs / 10)));
      const victimHosts = new Set(victims.flatMap((v) => v.hosts));
      const ports = await postgresClientPorts(ctx.postgres.port, new Set(victims.map((v) => v.child.pid!)));
      const at = Date.now();
      const inFlightThere = runs.filter((r) => r.endedAt === undefined && victimHosts.has(r.host));
      for (const v of victims) ended['host workers'] += treeCpuS(v.child.pid);
      for (const v of victims) v.child.kill('SIGKILL');
      log(
        `fleet fault: SIGKILL ${victims.length} process(es), ${victimHosts.size} hosts, ${inFlightThere.length} snapshots in flight there, ${ports.length} PostgreSQL connections`,
      );
      // The killed processes' connections must be freed (their backends end), or a restart may find no slot.
      const stillOpen = async () =>
        (await ctx.postgres.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE client_port = ANY($1::int[])', [ports])).rows[0]!.n as number;
      let left = ports.length;
      while (left && Date.now() - at < 5000) left = await stillOpen();
      const connectionsFreedS = left ? undefined : Math.round((Date.now() - at) / 100) / 10;
      await sleep(Math.max(0, at + 5000 - Date.now()));
      // As systemd's Restart=on-failure would: a start that fails (seen once at load ~30) is tried again.
      const restartFailures: string[] = [];
      for (const v of victims) {
        for (let attempt = 1; ; attempt++) {
          try {
            await startProc(v.index);
            break;
          } catch (err) {
            restartFailures.push((err as Error).message);
            if (attempt === 5) throw err;
            await sleep(5000);
          }
        }
      }
      const restartedAt = Date.now();
      while (inFlightThere.some((r) => r.endedAt === undefined)) await sleep(200);
      const endedAt = Math.max(at, ...inFlightThere.map((r) => r.endedAt!));
      faults.push({
        fault: `SIGKILL of ${victims.length} of ${opts.procs} host processes (${victimHosts.size} hosts), restarted 5 s later`,
        inFlightOnKilledHosts: inFlightThere.length,
        postgresConnectionsOfKilled: ports.length,
        ...(connectionsFreedS !== undefined ? { connectionsFreedS } : { connectionsLeftAfter5s: left }),
        outcomes: countBy(inFlightThere.map((r) => r.outcome!)),
        restartToPollingS: Math.round((restartedAt - at) / 100) / 10,
        ...(restartFailures.length ? { restartFailures } : {}),
        recoveryS: Math.round((endedAt - at) / 100) / 10,
      });
    }
    async function restartServer(): Promise<void> {
      await sleep(5000);
      const at = Date.now();
      const inFlight = runs.filter((r) => r.endedAt === undefined);
      ended['temporal-server'] += treeCpuS(pidFile(ctx.dataDir, 'temporal-server'));
      await ctx.restartTemporal();
      const up = Date.now();
      log(`fleet fault: Temporal server restarted (${((up - at) / 1000).toFixed(1)} s until healthy), ${inFlight.length} snapshots in flight`);
      while (!runs.some((r) => (r.endedAt ?? 0) > up)) await sleep(100);
      const firstAfter = Math.min(...runs.filter((r) => (r.endedAt ?? 0) > up).map((r) => r.endedAt!));
      while (inFlight.some((r) => r.endedAt === undefined)) await sleep(200);
      faults.push({
        fault: 'Temporal server stopped (SIGTERM) and started again',
        inFlight: inFlight.length,
        outcomes: countBy(inFlight.map((r) => r.outcome!)),
        downToHealthyS: Math.round((up - at) / 100) / 10,
        firstCompletionAfterS: Math.round((firstAfter - up) / 100) / 10,
        recoveryS: Math.round((Math.max(...inFlight.map((r) => r.endedAt!)) - at) / 100) / 10,
      });
    }

    // What every snapshot must leave behind.
    const states = instances.map((inst) => readFileSync(join(dir, inst.host, `${inst.id}.state`), 'utf8').trim());
    const paused = states.filter((s) => s !== 'running').length;
    const busy = (await store.listInstancesWithTask()).length;
    const hostStats: SimHostStats[] = [];
    for (const host of hostNames) {
      const f = join(dir, host, 'stats.json');
      if (existsSync(f)) hostStats.push(JSON.parse(await readFile(f, 'utf8')) as SimHostStats);
    }
    const maxPerHost = Math.max(0, ...hostStats.map((h) => h.maxConcurrentCopies));
    const outcomes = countBy(runs.map((r) => r.outcome ?? 'unfinished'));
    const totalS = (Math.max(...runs.map((r) => r.endedAt ?? 0)) - Math.min(...runs.map((r) => r.startedAt))) / 1000;
    return {
      options: opts,
      instances: instances.length,
      stages,
      overall: {
        snapshots: runs.length,
        planned: opts.snapshots,
        wallS: Math.round(totalS),
        perMinute: Math.round((runs.length / totalS) * 60 * 10) / 10,
      },
      outcomes,
      faults,
      /** PostgreSQL's connections at their most (sampled every 5 s), against its max_connections. */
      postgresConnections: connections,
      checks: {
        guestsLeftPaused: paused,
        instancesWithTaskState: busy,
        maxConcurrentCopiesPerHost: maxPerHost,
        hostLimit: opts.hostLimit,
        hostLimitRespected: maxPerHost <= opts.hostLimit,
        failures: runs.filter((r) => r.outcome !== 'completed').length,
        /** Lost: no outcome at all (neither completed nor failed with its compensation run). */
        lost: runs.filter((r) => !r.outcome || r.outcome.startsWith('lost')).length,
      },
      machine: { nproc: os.cpus().length, loadAverage: os.loadavg().map((l) => Math.round(l * 100) / 100) },
    };
  } finally {
    await stopAll();
    process.off('exit', killChildren);
    // Images are not kept: 1,000 small ones would fill the bench Glance's disk over runs.
    for (const id of [...ctx.glance.created]) {
      await deleteImage(ctx.glance, id).catch(() => undefined);
      ctx.glance.created.delete(id);
    }
  }
}

/** Local ports of the given processes' TCP connections to PostgreSQL (pg_stat_activity's client_port). */
async function postgresClientPorts(port: number, pids: Set<number>): Promise<number[]> {
  const { stdout } = await execa('ss', ['-Htnp', 'state', 'established', 'dst', `127.0.0.1:${port}`]);
  const ports: number[] = [];
  for (const line of stdout.split('\n')) {
    const pid = Number(/pid=(\d+)/.exec(line)?.[1]);
    const local = /^\s*\S+\s+\S+\s+127\.0\.0\.1:(\d+)/.exec(line)?.[1];
    if (local && pids.has(pid)) ports.push(Number(local));
  }
  return ports;
}

function countBy(xs: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of xs) out[x] = (out[x] ?? 0) + 1;
  return out;
}

export type FleetResults = Awaited<ReturnType<typeof runFleetBench>>;

/** What fleet.md says of how the run was made. */
export const FLEET_NOTES = [
  'Stack: its own, Temporal in cluster mode (the Temporal server, 4 history shards, persistence and visibility on the stack PostgreSQL), Keystone and Glance as in the other sections; vmsnap store: a PostgreSQL database of its own.',
  'Hosts: bench/fleet-worker.ts processes, each running its hosts as separate host workers (own host name, host and slot queues, simulated hypervisor) over one Temporal connection, Keystone session and store pool (4 connections), each host worker with VMSNAP_HOST_POLLERS=2 long polls on each of its two queues (the default). Main worker: dist/worker/main.js --role main.',
  'Simulated hypervisor (bench/lib/sim-hypervisor.ts): pause/resume write a state file per instance; live copies sleep the copy time and copy a 16 MiB qcow2 (1 MiB data); cold copies run the real qemu-img convert, then sleep the copy time with the guest "paused". Uploads are real, to Glance through Keystone.',
  'Stages: snapshots kept in flight at a quarter, half, one and two times the host count; end-to-end = start call to result. Store read: getInstance every second from the bench process. Temporal describe: DescribeWorkflowExecution of the latest snapshot every second. Cores: CPU seconds of each process tree over the stage wall time.',
  "Images are deleted after the run. Glance caches tokens for 300 s (VMSNAP_GLANCE_TOKEN_CACHE, keystonemiddleware's default; the other sections check each one with Keystone).",
  'Server columns: from the Temporal server\'s Prometheus endpoint over the stage: mean schedule-to-start (slot holders also wait there for a free slot), mean latency of its PostgreSQL calls, ResourceExhausted answers. CPU pressure: /proc/pressure/cpu "some", the share of the stage in which some runnable task of the machine waited for a core (other work shares this machine).',
  'Cores of the Temporal server and of killed host processes add what their ended process used to their restart’s (read just before the fault; the few seconds up to the stop are lost).',
];

export async function writeFleetResults(out: string, r: FleetResults, meta: { startedAt: string; notes: string[] }): Promise<void> {
  await writeFile(join(out, 'fleet.json'), JSON.stringify({ schema: 'vmsnap-bench-fleet/1', ...meta, ...r }, null, 2) + '\n');
  const cores = Object.keys(r.stages[0]?.cores ?? {});
  const lines = [
    '# Fleet on one Temporal cluster (simulated hosts)',
    '',
    `${meta.startedAt}; ${r.options.hosts} simulated hosts in ${r.options.procs} processes, ${r.options.snapshots} snapshots (cold and live alternating), simulated copies of ${r.options.copyMs} ms, per-host limit ${r.options.hostLimit}; machine ${r.machine.nproc} CPU, load at end ${r.machine.loadAverage.join(' ')}.`,
    '',
    `**Overall**: ${r.overall.snapshots} snapshots${r.overall.snapshots < r.overall.planned ? ` (of ${r.overall.planned} planned: the ${r.options.minutes}-minute time box ended the run)` : ''} in ${r.overall.wallS} s = **${r.overall.perMinute} snapshots/min**; outcomes ${JSON.stringify(r.outcomes)}.`,
    '',
    '| in flight | snapshots | wall s | per min | end-to-end p50 / p95 ms | start RPC p50 / p95 ms | store read p50 / p95 ms | Temporal describe p50 / p95 ms | workflow task / host activity / slot schedule-to-start ms | Temporal → PostgreSQL ms | ResourceExhausted (operation, cause) | CPU pressure % / load | ' +
      cores.map((c) => `${c} cores`).join(' | ') +
      ' |',
    '|' + ' --- |'.repeat(12 + cores.length),
    ...r.stages.map(
      (s) =>
        `| ${s.inFlight} | ${s.snapshots} | ${s.wallS} | ${s.perMinute} | ${s.endToEndMs.p50} / ${s.endToEndMs.p95} | ${s.startRpcMs.p50} / ${s.startRpcMs.p95} | ${s.storeMs.p50} / ${s.storeMs.p95} | ${s.temporalDescribeMs.p50} / ${s.temporalDescribeMs.p95} | ${s.server.workflowTaskStartMs} / ${s.server.hostActivityStartMs} / ${s.server.slotStartMs} | ${s.server.persistenceMs} | ${
          Object.entries(s.server.refused)
            .map(([k, v]) => `${k}: ${v}`)
            .join(', ') || 0
        } | ${s.cpuPressurePct} / ${s.loadAverage} | ` +
        cores.map((c) => String(s.cores[c])).join(' | ') +
        ' |',
    ),
    '',
    '## Checks',
    '',
    `- failures (not completed; a failed snapshot ran its compensation): ${r.checks.failures}; lost (no outcome): ${r.checks.lost}`,
    `- simulated guests left paused: ${r.checks.guestsLeftPaused}`,
    `- instances left with a task state: ${r.checks.instancesWithTaskState}`,
    `- most copies at once on one host: ${r.checks.maxConcurrentCopiesPerHost} (limit ${r.checks.hostLimit}: ${r.checks.hostLimitRespected ? 'respected' : 'EXCEEDED'})`,
    `- PostgreSQL connections at most ${r.postgresConnections.peak} of max_connections ${r.postgresConnections.max} (sampled every 5 s; by database then: ${JSON.stringify(r.postgresConnections.peakByDatabase)})`,
    '',
    ...(r.faults.length ? ['## Faults', '', ...r.faults.map((f) => `- ${JSON.stringify(f)}`), ''] : []),
    '## Notes',
    '',
    ...meta.notes.map((n) => `- ${n}`),
    '',
  ];
  await writeFile(join(out, 'fleet.md'), lines.join('\n'));
}
