// Command line of the benchmark. Defaults give the full run; --quick a smoke-sized one.
import { parseArgs } from 'node:util';
import { DEFAULT_STALL_VARIANTS, STALL_VARIANTS } from './stall-variants.js';

export type Mode = 'bare' | 'cold' | 'live';
export type DiskKind = 'small' | 'large' | 'sparse' | 'xlarge' | 'pair' | 'g1' | 'g2' | 'g4';

export const MODES: readonly Mode[] = ['bare', 'cold', 'live'];
export const DISK_KINDS = ['small', 'large', 'sparse', 'xlarge', 'pair'] as const;
/** The growth section's disks: 1, 2 and 4 GiB of data (--growth-mib scales them down for a smoke run). */
export const GROWTH_KINDS: readonly DiskKind[] = ['g1', 'g2', 'g4'];
/** The snapshot benchmark's disks (pair: a guest with a data disk beside its root); xlarge is the restore section's third size. */
const SNAPSHOT_DISKS = 'small,large,sparse,pair';

export interface DiskSpec {
  kind: DiskKind;
  virtualMiB: number;
  /** Random (incompressible, non-zero) data written from 8 MiB on, before the guest boots. */
  dataMiB: number;
  /** A data disk beside the root (vdb), with random data the same way: vmsnap snapshots both (disks: 'all'), bare copies both. */
  dataDisk?: { virtualMiB: number; dataMiB: number; format: 'raw' };
}

export interface BenchOptions {
  /** all: vmsnap against bare commands; startup: the worker compiled against tsx (start, memory). */
  section: 'all' | 'startup' | 'restore' | 'write-stalls' | 'fleet' | 'growth';
  runs: number;
  disks: DiskSpec[];
  modes: Mode[];
  scale: number[];
  /** Repetitions of each scale level. */
  scaleRuns: number;
  /** Unmeasured rounds per disk before the measured ones (undefined: 1, none in quick and growth). */
  warmups?: number;
  quick: boolean;
  /** own: start a private stack in .data/bench; env: use the stack the environment names. */
  stack: 'own' | 'env';
  out: string;
  /** Render the SVG to PNG with chromium (for looking at it). */
  png: boolean;
  /** How long the guest's counter is watched before each run to get its idle rate. */
  idleMs: number;
  /** VMSNAP_MAX_CONCURRENT_SNAPSHOTS for the worker, when the worker has that setting. */
  hostLimit?: number;
  /** Longest one snapshot (either variant) may take before it is cancelled and counted failed. */
  runTimeoutMs: number;
  /** The write-stalls section's variants (see bench/lib/write-stalls.ts). */
  stallVariants?: string[];
  /** The fleet section: simulated hosts on the Temporal cluster. */
  fleet?: { hosts: number; procs: number; snapshots: number; copyMs: number; faults: boolean; minutes?: number };
}

export const USAGE = `usage: npm run bench -- [options]
  --section all|startup|restore|write-stalls|fleet|growth
                        all (default): vmsnap against the bare commands; startup: the worker as
                        deployed (dist/, prebuilt bundle) against tsx + bundling at start: time
                        to polling, idle RSS, RSS uploading the large disk (startup.{json,md});
                        restore: vmsnap restore against curl + qemu-img convert + virsh destroy,
                        mv, start: the guest's downtime (restore.{json,md});
                        write-stalls: the guest's disk writes during a copy (longest stall, rate
                        vs idle) for cold, live pull (default) and live push, driver level
                        (write-stalls.{json,md}); fleet: simulated hosts (no guests) on the
                        Temporal cluster and a PostgreSQL store, real Glance uploads, load in
                        four stages, faults (fleet.{json,md}); growth: bare, cold and live
                        on disks with 1, 2 and 4 GiB of data, how end-to-end time and pause
                        grow per GiB (growth.{json,md})
  --growth-mib N        data of the growth section's first disk, doubled twice (default 1024)
  --stall-variants LIST write-stalls variants (default ${DEFAULT_STALL_VARIANTS.join(',')}; also
                        ${STALL_VARIANTS.filter((v) => !DEFAULT_STALL_VARIANTS.includes(v)).join(',')}: live pull tunings)
  --fleet-hosts N       simulated hosts (default 100; quick 10)
  --fleet-procs N       processes they run in (default 10; quick 2)
  --fleet-snapshots N   snapshots in all (default 1000; quick 40)
  --fleet-copy-ms N     how long one simulated copy takes (default 1000)
  --fleet-faults on|off kill a tenth of the host processes, restart Temporal (default on; quick off)
  --fleet-minutes N     start no snapshot after N minutes; those running finish and the report
                        says how many of the planned ran (default: no limit)
  --runs N              runs per variant and disk (default 5; median reported)
  --disks LIST          small,large,sparse,xlarge,pair (default small,large,sparse,pair; restore: small,large,xlarge);
                        pair: a qcow2 root and a raw data disk, vmsnap with disks "all" against
                        bare's pause, convert of each, resume, curl of each
  --modes LIST          bare,cold,live (default all; live only if the workflow accepts it)
  --scale LIST          concurrent snapshot counts, e.g. 1,5,10,20 (default; "" for none)
  --scale-runs N        repetitions of each scale level (default 1)
  --warmups N           unmeasured rounds per disk before the runs (default 1; quick and growth 0)
  --quick               smoke size: 1 run, small disk, bare+cold, scale 1, no PNG
  --stack own|env       own: private stack in .data/bench on ports 7333/9392/5100/5532 (default; or
                        VMSNAP_BENCH_DATA_DIR, VMSNAP_BENCH_TEMPORAL_PORT, _TEMPORAL_UI_PORT,
                        _GLANCE_PORT, _KEYSTONE_PORT, _POSTGRES_PORT, _API_PORT);
                        env: the running stack named by TEMPORAL_ADDRESS, OS_CLOUD (or OS_AUTH_URL) and
                        VMSNAP_DATA_DIR (default with --quick when those are set)
  --out DIR             where latest.{json,md,svg} go (default bench/results)
  --no-png              do not render latest.png
  --idle-ms N           idle window before each run for the guest's counter rate (default 3000)
  --host-limit N        the worker's per-host snapshot limit (default: the worker's own default)
  --run-timeout-s N     longest one snapshot may take before it is cancelled (default 900; quick 40)
  --large-mib N --large-data-mib N --sparse-mib N --sparse-data-mib N --small-mib N
  --xlarge-mib N --xlarge-data-mib N   disk sizes (xlarge: 3072 MiB, 2000 MiB of data; qemu-io writes < 2 GiB at once)
  --pair-mib N --pair-data-mib N       each disk of the pair (default 1024 MiB, 256 MiB of data)
`;

function positive(name: string, raw: string): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--${name} must be a positive whole number (got "${raw}")`);
  return n;
}

function list<T extends string>(name: string, raw: string, allowed: readonly T[]): T[] {
  const items = raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const item of items) {
    if (!allowed.includes(item as T)) throw new Error(`--${name}: unknown "${item}" (allowed: ${allowed.join(', ')})`);
  }
  return [...new Set(items as T[])];
}

export function parseOptions(argv: string[], env: NodeJS.ProcessEnv = process.env): BenchOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      section: { type: 'string' },
      runs: { type: 'string' },
      disks: { type: 'string' },
      modes: { type: 'string' },
      scale: { type: 'string' },
      'scale-runs': { type: 'string' },
      quick: { type: 'boolean', default: false },
      stack: { type: 'string' },
      out: { type: 'string' },
      'no-png': { type: 'boolean', default: false },
      'idle-ms': { type: 'string' },
      'host-limit': { type: 'string' },
      'run-timeout-s': { type: 'string' },
      'fleet-hosts': { type: 'string' },
      'fleet-procs': { type: 'string' },
      'fleet-snapshots': { type: 'string' },
      'fleet-copy-ms': { type: 'string' },
      'fleet-faults': { type: 'string' },
      'stall-variants': { type: 'string' },
      'fleet-minutes': { type: 'string' },
      'small-mib': { type: 'string' },
      'large-mib': { type: 'string' },
      'large-data-mib': { type: 'string' },
      'sparse-mib': { type: 'string' },
      'sparse-data-mib': { type: 'string' },
      'xlarge-mib': { type: 'string' },
      'xlarge-data-mib': { type: 'string' },
      'pair-mib': { type: 'string' },
      'pair-data-mib': { type: 'string' },
      'growth-mib': { type: 'string' },
      warmups: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const quick = values.quick === true;
  const stackEnvPresent = Boolean(env.TEMPORAL_ADDRESS && (env.OS_CLOUD || env.OS_AUTH_URL) && env.VMSNAP_DATA_DIR);
  const stack = values.stack ?? (quick && stackEnvPresent ? 'env' : 'own');
  if (stack !== 'own' && stack !== 'env') throw new Error(`--stack must be own or env (got "${stack}")`);
  if (stack === 'env' && !stackEnvPresent) {
    throw new Error('--stack env needs TEMPORAL_ADDRESS, OS_CLOUD (or OS_AUTH_URL) and VMSNAP_DATA_DIR (e.g. eval "$(npm run -s stack -- env)")');
  }

  const sizes = {
    small: positive('small-mib', values['small-mib'] ?? '64'),
    large: positive('large-mib', values['large-mib'] ?? '1024'),
    largeData: positive('large-data-mib', values['large-data-mib'] ?? '512'),
    sparse: positive('sparse-mib', values['sparse-mib'] ?? '10240'),
    sparseData: positive('sparse-data-mib', values['sparse-data-mib'] ?? '100'),
    xlarge: positive('xlarge-mib', values['xlarge-mib'] ?? '3072'),
    xlargeData: positive('xlarge-data-mib', values['xlarge-data-mib'] ?? '2000'),
    pair: positive('pair-mib', values['pair-mib'] ?? '1024'),
    pairData: positive('pair-data-mib', values['pair-data-mib'] ?? '256'),
  };
  const specs: Record<(typeof DISK_KINDS)[number], DiskSpec> = {
    small: { kind: 'small', virtualMiB: sizes.small, dataMiB: 0 },
    large: { kind: 'large', virtualMiB: sizes.large, dataMiB: sizes.largeData },
    sparse: { kind: 'sparse', virtualMiB: sizes.sparse, dataMiB: sizes.sparseData },
    xlarge: { kind: 'xlarge', virtualMiB: sizes.xlarge, dataMiB: sizes.xlargeData },
    // Two disks of the large disk's kind, half its data each: the large disk's bytes, in two images.
    pair: { kind: 'pair', virtualMiB: sizes.pair, dataMiB: sizes.pairData, dataDisk: { virtualMiB: sizes.pair, dataMiB: sizes.pairData, format: 'raw' } },
  };
  for (const spec of Object.values(specs)) {
    // Data runs from 8 MiB on and must stay clear of record B at (size - 1 MiB).
    for (const d of [spec, ...(spec.dataDisk ? [spec.dataDisk] : [])]) {
      if (d.dataMiB > 0 && 8 + d.dataMiB > d.virtualMiB - 2) {
        throw new Error(`${spec.kind} disk: ${d.dataMiB} MiB of data from 8 MiB on does not fit in ${d.virtualMiB} MiB clear of the counter records`);
      }
    }
  }

  const section = (values.section ?? 'all') as BenchOptions['section'];
  if (!['all', 'startup', 'restore', 'write-stalls', 'fleet', 'growth'].includes(section)) {
    throw new Error(`--section must be all, startup, restore, write-stalls, fleet or growth (got "${section}")`);
  }
  // What every section shares, unless it says otherwise.
  const common: Omit<BenchOptions, 'runs' | 'disks' | 'modes' | 'idleMs'> = {
    section,
    scale: [],
    scaleRuns: 1,
    quick,
    stack,
    out: values.out ?? 'bench/results',
    png: false,
    runTimeoutMs: positive('run-timeout-s', values['run-timeout-s'] ?? '900') * 1000,
  };
  const runs = (full: string) => positive('runs', values.runs ?? (quick ? '1' : full));
  const idleMs = (byDefault: string) => positive('idle-ms', values['idle-ms'] ?? byDefault);
  const hostLimit = values['host-limit'] ? { hostLimit: positive('host-limit', values['host-limit']) } : {};
  if (section === 'growth') {
    // Data from 8 MiB on, 1 GiB of the disk left empty (sparse), as on the large disk.
    const first = positive('growth-mib', values['growth-mib'] ?? (quick ? '64' : '1024'));
    const disks = GROWTH_KINDS.map((kind, i) => ({ kind, dataMiB: first * 2 ** i, virtualMiB: first * 2 ** i + Math.max(64, first) }));
    return { ...common, runs: runs('3'), disks, modes: list('modes', values.modes ?? MODES.join(','), MODES), idleMs: idleMs(quick ? '1500' : '3000') };
  }
  if (section === 'fleet') {
    const faults = values['fleet-faults'] ?? (quick ? 'off' : 'on');
    if (faults !== 'on' && faults !== 'off') throw new Error(`--fleet-faults must be on or off (got "${faults}")`);
    const fleet = {
      hosts: positive('fleet-hosts', values['fleet-hosts'] ?? (quick ? '10' : '100')),
      procs: positive('fleet-procs', values['fleet-procs'] ?? (quick ? '2' : '10')),
      snapshots: positive('fleet-snapshots', values['fleet-snapshots'] ?? (quick ? '40' : '1000')),
      copyMs: positive('fleet-copy-ms', values['fleet-copy-ms'] ?? '1000'),
      faults: faults === 'on',
      ...(values['fleet-minutes'] ? { minutes: positive('fleet-minutes', values['fleet-minutes']) } : {}),
    };
    if (fleet.procs > fleet.hosts)
      throw new Error(`--fleet-procs ${fleet.procs} is more than --fleet-hosts ${fleet.hosts}: each process runs at least one host`);
    // Always a stack of its own: the fleet needs the Temporal cluster, and restarts it.
    return { ...common, runs: 1, disks: [], modes: ['cold', 'live'], stack: 'own', idleMs: 0, ...hostLimit, fleet };
  }
  if (section === 'write-stalls') {
    // What the guest's writes feel: every disk size, the copy methods side by side.
    const disks = list('disks', values.disks ?? (quick ? 'small' : 'small,large,sparse'), DISK_KINDS).map((k) => specs[k]);
    const stallVariants = list('stall-variants', values['stall-variants'] ?? DEFAULT_STALL_VARIANTS.join(','), STALL_VARIANTS);
    return { ...common, runs: runs('3'), disks, modes: ['cold', 'live'], idleMs: idleMs('3000'), stallVariants };
  }
  if (section === 'restore') {
    // Downtime must not grow with the image: the small and the large disk side by side.
    const disks = list('disks', values.disks ?? (quick ? 'small' : 'small,large,xlarge'), DISK_KINDS).map((k) => specs[k]);
    return { ...common, runs: runs('5'), disks, modes: ['bare'], idleMs: 0 };
  }
  if (section === 'startup') {
    // The large disk's upload is what the worker's memory is measured on.
    const large = quick ? { ...specs.large, virtualMiB: 64, dataMiB: 32 } : specs.large;
    return { ...common, runs: runs('3'), disks: [large], modes: ['bare', 'cold'], idleMs: idleMs('3000') };
  }
  const disks = list('disks', values.disks ?? (quick ? 'small' : SNAPSHOT_DISKS), DISK_KINDS).map((k) => specs[k]);
  const modes = list('modes', values.modes ?? (quick ? 'bare,cold' : MODES.join(',')), MODES);
  if (!modes.includes('bare')) throw new Error('--modes must include bare: every figure is a ratio to bare in the same run');
  const scaleRaw = values.scale ?? (quick ? '1' : '1,5,10,20');
  const scale = [
    ...new Set(
      scaleRaw
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean)
        .map((s) => positive('scale', s)),
    ),
  ].sort((a, b) => a - b);
  return {
    ...common,
    runs: runs('5'),
    disks,
    modes,
    scale,
    ...(values.warmups !== undefined ? { warmups: values.warmups === '0' ? 0 : positive('warmups', values.warmups) } : {}),
    scaleRuns: positive('scale-runs', values['scale-runs'] ?? '1'),
    png: !values['no-png'] && !quick,
    idleMs: idleMs(quick ? '1500' : '3000'),
    ...hostLimit,
    runTimeoutMs: positive('run-timeout-s', values['run-timeout-s'] ?? (quick ? '40' : '900')) * 1000,
  };
}
