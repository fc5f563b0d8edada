// The dev stack: Temporal (the dev server, or a cluster on PostgreSQL: temporal-cluster.ts),
// Keystone (HTTPS), Glance behind Keystone, libvirt, PostgreSQL and vmsnap's compute API (Nova's
// door, behind the same Keystone), as processes on loopback.
// Each service knows how to start, how to tell it is healthy, and how to stop by its own pid.
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { SEARCH_ATTRIBUTES } from '../../src/shared/names.js';
import { Agent, request } from 'undici';
import { isAlive, portIsFree, runningPid, startDetached, stopByPid, waitUntil } from './daemon.js';
import {
  computeUrl,
  ensureApiAccounts,
  initKeystone,
  keystoneConfig,
  keystoneWal,
  keystonePaths,
  keystoneUrl,
  provisionKeystone,
  readAccounts,
  saveAccounts,
  writeCloudsYaml,
  REGION,
  type KeystoneAccounts,
} from './keystone.js';
import { horizonService, horizonUrl } from './horizon.js';
import { ensureStackTls, tlsPaths } from './tls.js';
import { clusterServices, TEMPORAL_SERVER_CONNECTIONS } from './temporal-cluster.js';

export interface StackConfig {
  dataDir: string;
  temporalPort: number;
  temporalUiPort: number;
  glancePort: number;
  keystonePort: number;
  /** Keystone's token lifetime in seconds; the test stack keeps it short so that renewal is exercised. */
  keystoneTokenLifetimeS: number;
  /** Glance's keystonemiddleware token cache in seconds; -1 (default): every request checked with Keystone. */
  glanceTokenCacheS: number;
  libvirtUri: string;
  temporalBin: string;
  /** dev: `temporal server start-dev` (SQLite); cluster: the Temporal server on the stack's PostgreSQL. */
  temporalMode: TemporalMode;
  temporalServerBin: string;
  temporalSqlToolBin: string;
  temporalUiBin: string;
  /** The cluster's persistence database; visibility is <name>_visibility. */
  temporalDatabase: string;
  postgresPort: number;
  /** The libpq password file of the stack's PostgreSQL (another stack's, to share its server). */
  postgresPassfile: string;
  /** Directory of PostgreSQL's initdb and postgres programs. */
  postgresBin: string;
  /** vmsnap's compute API (Nova's port by default), named by the catalog's compute endpoints. */
  apiPort: number;
  /** How long the API keeps Keystone's answer about a token (VMSNAP_API_TOKEN_CACHE_S). */
  apiTokenCacheS: number;
  /** Horizon's port (VMSNAP_HORIZON_PORT); it runs only when asked for (`up --horizon`, VMSNAP_HORIZON=1). */
  horizonPort: number;
  horizon: boolean;
}

function port(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1 || value > 65535) {
    throw new Error(`${name}=${raw} is not a TCP port: set it to a number from 1 to 65535`);
  }
  return value;
}

function tokenLifetime(raw: string | undefined): number {
  if (raw === undefined || raw === '') return 3600;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 10) throw new Error(`VMSNAP_KEYSTONE_TOKEN_LIFETIME=${raw} is not a token lifetime: give whole seconds, 10 or more`);
  return value;
}

function tokenCache(raw: string | undefined): number {
  if (raw === undefined || raw === '') return -1;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < -1) throw new Error(`VMSNAP_GLANCE_TOKEN_CACHE=${raw} is not a cache time: give whole seconds, or -1 for no cache`);
  return value;
}

function apiTokenCache(raw: string | undefined): number {
  if (raw === undefined || raw === '') return 60;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new Error(`VMSNAP_API_TOKEN_CACHE_S=${raw} is not a cache time: give whole seconds, 0 for no cache`);
  return value;
}

export type TemporalMode = 'dev' | 'cluster';

/** VMSNAP_TEMPORAL_MODE, else the mode the data dir was last brought up in, else dev. */
function temporalMode(raw: string | undefined, dataDir: string): TemporalMode {
  const value = raw || (existsSync(modeFile(dataDir)) ? readFileSync(modeFile(dataDir), 'utf8').trim() : 'dev');
  if (value !== 'dev' && value !== 'cluster') throw new Error(`VMSNAP_TEMPORAL_MODE=${value} is not a Temporal mode: use dev or cluster`);
  return value;
}

const modeFile = (dataDir: string) => join(dataDir, 'run', 'temporal.mode');

/** Remembers the mode a stack was brought up in, so that `down` and `status` find its services. */
export function recordTemporalMode(cfg: StackConfig): void {
  mkdirSync(dirname(modeFile(cfg.dataDir)), { recursive: true });
  writeFileSync(modeFile(cfg.dataDir), `${cfg.temporalMode}\n`);
}

/** Stack settings from the environment; defaults give the dev stack on the usual ports. */
export function stackConfig(env = process.env): StackConfig {
  const temporalPort = port(env, 'VMSNAP_TEMPORAL_PORT', 7233);
  const dataDir = resolve(env.VMSNAP_DATA_DIR || '.data/dev');
  const database = env.VMSNAP_TEMPORAL_DATABASE || 'temporal';
  if (!/^[a-z_][a-z0-9_]{0,40}$/.test(database))
    throw new Error(`VMSNAP_TEMPORAL_DATABASE=${database} is not a database name: use lower-case letters, digits and _`);
  return {
    dataDir,
    temporalPort,
    temporalUiPort: port(env, 'VMSNAP_TEMPORAL_UI_PORT', temporalPort + 1000),
    glancePort: port(env, 'VMSNAP_GLANCE_PORT', 9292),
    keystonePort: port(env, 'VMSNAP_KEYSTONE_PORT', 5000),
    keystoneTokenLifetimeS: tokenLifetime(env.VMSNAP_KEYSTONE_TOKEN_LIFETIME),
    glanceTokenCacheS: tokenCache(env.VMSNAP_GLANCE_TOKEN_CACHE),
    libvirtUri: env.VMSNAP_LIBVIRT_URI || 'qemu:///system',
    temporalBin: resolve(env.VMSNAP_TEMPORAL_BIN || '.tools/bin/temporal'),
    temporalMode: temporalMode(env.VMSNAP_TEMPORAL_MODE, dataDir),
    temporalServerBin: resolve(env.VMSNAP_TEMPORAL_SERVER_BIN || '.tools/bin/temporal-server'),
    temporalSqlToolBin: resolve(env.VMSNAP_TEMPORAL_SQL_TOOL_BIN || '.tools/bin/temporal-sql-tool'),
    temporalUiBin: resolve(env.VMSNAP_TEMPORAL_UI_BIN || '.tools/bin/temporal-ui-server'),
    temporalDatabase: database,
    postgresPort: port(env, 'VMSNAP_POSTGRES_PORT', 5432),
    postgresPassfile: resolve(env.VMSNAP_POSTGRES_PASSFILE || join(dataDir, 'postgresql.pgpass')),
    postgresBin: resolve(env.VMSNAP_POSTGRES_BIN || '/usr/lib/postgresql/15/bin'),
    apiPort: port(env, 'VMSNAP_API_PORT', 8774),
    apiTokenCacheS: apiTokenCache(env.VMSNAP_API_TOKEN_CACHE_S),
    horizonPort: port(env, 'VMSNAP_HORIZON_PORT', 8080),
    horizon: env.VMSNAP_HORIZON === '1',
  };
}

export interface ServiceStatus {
  name: string;
  healthy: boolean;
  pid?: number;
  /** Where to reach it, for people. */
  endpoints: Record<string, string>;
  note?: string;
}

export interface Service {
  name: string;
  up(): Promise<ServiceStatus>;
  down(): Promise<string>;
  status(): Promise<ServiceStatus>;
}

export async function httpOk(url: string): Promise<boolean> {
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
  await res.body?.cancel();
  return res.ok;
}

/** A service we run ourselves from a binary, tracked by a pid file under the data dir. */
export function ownedService(spec: {
  name: string;
  program: string;
  ports: () => number[];
  prepare?: () => Promise<void>;
  start: () => { command: string; args: string[]; env?: Record<string, string>; cwd?: string };
  healthy: () => Promise<boolean>;
  endpoints: () => Record<string, string>;
  startTimeoutMs: number;
  dataDir: string;
}): Service {
  const pidFile = join(spec.dataDir, 'run', `${spec.name}.pid`);
  const logFile = join(spec.dataDir, 'logs', `${spec.name}.log`);
  const status = async (): Promise<ServiceStatus> => {
    const pid = runningPid(pidFile, spec.program);
    const healthy = pid !== undefined && (await spec.healthy().catch(() => false));
    return { name: spec.name, healthy, pid, endpoints: spec.endpoints() };
  };
  return {
    name: spec.name,
    status,
    async up() {
      if (runningPid(pidFile, spec.program) === undefined) {
        for (const p of spec.ports()) {
          if (!(await portIsFree(p))) {
            throw new Error(`${spec.name}: port ${p} on 127.0.0.1 is in use by another process: stop it, or choose other ports (VMSNAP_*_PORT)`);
          }
        }
        await spec.prepare?.();
        startDetached({ ...spec.start(), logFile, pidFile });
      }
      await waitUntil(
        async () => runningPid(pidFile, spec.program) !== undefined && spec.healthy(),
        spec.startTimeoutMs,
        `${spec.name} did not become healthy within ${spec.startTimeoutMs / 1000} s: see ${logFile}`,
      ).catch((err: Error) => {
        if (runningPid(pidFile, spec.program) === undefined) {
          throw new Error(`${spec.name} exited during start: see ${logFile}`);
        }
        throw err;
      });
      return status();
    },
    async down() {
      const pid = runningPid(pidFile, spec.program);
      if (pid === undefined) return `${spec.name}: not running`;
      await stopByPid(pid, pidFile);
      return `${spec.name}: stopped (pid ${pid})`;
    },
  };
}

function temporalService(cfg: StackConfig): Service {
  const address = `127.0.0.1:${cfg.temporalPort}`;
  return ownedService({
    name: 'temporal',
    program: cfg.temporalBin,
    dataDir: cfg.dataDir,
    ports: () => [cfg.temporalPort, cfg.temporalUiPort],
    async prepare() {
      if (!existsSync(cfg.temporalBin)) throw new Error(`temporal: ${cfg.temporalBin} is missing: run ./scripts/setup`);
      mkdirSync(cfg.dataDir, { recursive: true });
    },
    start: () => ({
      command: cfg.temporalBin,
      args: [
        'server',
        'start-dev',
        '--ip',
        '127.0.0.1',
        '--port',
        String(cfg.temporalPort),
        '--ui-port',
        String(cfg.temporalUiPort),
        '--db-filename',
        join(cfg.dataDir, 'temporal.sqlite'),
        '--namespace',
        'default',
        '--log-level',
        'warn',
        ...Object.values(SEARCH_ATTRIBUTES).flatMap((name) => ['--search-attribute', `${name}=Keyword`]),
      ],
    }),
    async healthy() {
      const { exitCode } = await execa(cfg.temporalBin, ['operator', 'namespace', 'describe', '--address', address, '-n', 'default'], {
        reject: false,
        timeout: 5000,
      });
      return exitCode === 0 && (await httpOk(`http://127.0.0.1:${cfg.temporalUiPort}/`));
    },
    endpoints: () => ({ grpc: address, ui: `http://127.0.0.1:${cfg.temporalUiPort}` }),
    startTimeoutMs: 60_000,
  });
}

function glanceConfig(cfg: StackConfig, dir: string, accounts: KeystoneAccounts): string {
  // Glance behind Keystone (paste flavor keystone: keystonemiddleware checks every token with
  // Keystone, as its own service user), sqlite for the registry and a file store for image data,
  // everything under the data dir. By default tokens are checked anew on each request (no cache),
  // so that a revoked token is refused at once; the fleet benchmark caches them as a production
  // Glance does (keystonemiddleware's default, 300 s), or one Keystone thread paces every upload.
  return `[DEFAULT]
bind_host = 127.0.0.1
bind_port = ${cfg.glancePort}
workers = 1
enabled_backends = fs:file
log_file = ${join(cfg.dataDir, 'logs', 'glance-api.log')}
use_stderr = false

[database]
connection = sqlite:///${join(dir, 'glance.sqlite')}

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = ${join(dir, 'images')}

[os_glance_staging_store]
filesystem_store_datadir = ${join(dir, 'staging')}

[os_glance_tasks_store]
filesystem_store_datadir = ${join(dir, 'tasks')}

[paste_deploy]
flavor = keystone
config_file = /etc/glance/glance-api-paste.ini

[keystone_authtoken]
www_authenticate_uri = ${keystoneUrl(cfg)}
auth_url = ${keystoneUrl(cfg)}
auth_type = password
cafile = ${tlsPaths(cfg.dataDir).ca}
region_name = ${REGION}
project_domain_name = Default
user_domain_name = Default
project_name = service
username = glance
password = ${accounts.glancePassword}
token_cache_time = ${cfg.glanceTokenCacheS}

[oslo_concurrency]
lock_path = ${join(dir, 'lock')}
`;
}

function glanceService(cfg: StackConfig): Service {
  const dir = join(cfg.dataDir, 'glance');
  const confFile = join(dir, 'glance-api.conf');
  const url = `http://127.0.0.1:${cfg.glancePort}`;
  return ownedService({
    name: 'glance',
    program: 'glance-api',
    dataDir: cfg.dataDir,
    ports: () => [cfg.glancePort],
    async prepare() {
      mkdirSync(join(cfg.dataDir, 'logs'), { recursive: true });
      for (const sub of ['images', 'staging', 'tasks', 'lock']) mkdirSync(join(dir, sub), { recursive: true });
      const accounts = readAccounts(cfg.dataDir);
      if (!accounts) throw new Error('glance: Keystone has not been set up in this data dir: start the whole stack (npm run stack -- up)');
      // It holds the service user's password.
      writeFileSync(confFile, glanceConfig(cfg, dir, accounts), { mode: 0o600 });
      if (!existsSync(join(dir, 'glance.sqlite'))) {
        const sync = await execa('glance-manage', ['--config-file', confFile, 'db_sync'], { reject: false, all: true });
        if (sync.exitCode !== 0) {
          throw new Error(`glance: glance-manage db_sync failed: ${sync.all?.split('\n').slice(-3).join(' | ')}`);
        }
      }
    },
    start: () => ({ command: 'glance-api', args: ['--config-file', confFile] }),
    // Without a token Glance answers 401 (and names Keystone): up, and behind Keystone.
    healthy: async () => {
      const res = await fetch(`${url}/v2/images?limit=1`, { signal: AbortSignal.timeout(2000) });
      await res.body?.cancel();
      return res.status === 401;
    },
    endpoints: () => ({ url }),
    startTimeoutMs: 60_000,
  });
}

/**
 * libvirt is a system service: we start virtlogd and libvirtd only when nothing answers, and
 * stop them on `down` only if we started them (their own pid files tell us their pids).
 */
function libvirtService(cfg: StackConfig): Service {
  const marker = join(cfg.dataDir, 'run', 'libvirt.started-by-us');
  const answers = async () => (await execa('virsh', ['-c', cfg.libvirtUri, 'version'], { reject: false, timeout: 5000 })).exitCode === 0;
  const daemons = [
    { program: 'virtlogd', pidFile: '/run/virtlogd.pid' },
    { program: 'libvirtd', pidFile: '/run/libvirtd.pid' },
  ];
  const status = async (): Promise<ServiceStatus> => ({
    name: 'libvirt',
    healthy: await answers().catch(() => false),
    pid: runningPid('/run/libvirtd.pid', 'libvirtd'),
    endpoints: { uri: cfg.libvirtUri },
    note: existsSync(marker) ? 'started by this stack' : 'system daemon, not ours: left alone on down',
  });
  return {
    name: 'libvirt',
    status,
    async up() {
      if (!(await answers())) {
        for (const d of daemons) {
          if (runningPid(d.pidFile, d.program) === undefined) {
            const r = await execa(d.program, ['-d'], { reject: false, all: true });
            if (r.exitCode !== 0) throw new Error(`libvirt: ${d.program} -d failed: ${r.all ?? ''} (is libvirt-daemon-system installed? run ./scripts/setup)`);
          }
        }
        mkdirSync(join(cfg.dataDir, 'run'), { recursive: true });
        writeFileSync(marker, 'virtlogd libvirtd\n');
        await waitUntil(answers, 30_000, `libvirt: virsh -c ${cfg.libvirtUri} version did not answer within 30 s: see /var/log/libvirt/`);
      }
      return status();
    },
    async down() {
      // Guests whose disks live under our data dir are ours: none may outlive the stack.
      const removed = await removeGuestsUnder(cfg);
      const parts = removed.length ? [`removed guests ${removed.join(', ')}`] : [];
      if (existsSync(marker)) {
        for (const d of [...daemons].reverse()) {
          const pid = runningPid(d.pidFile, d.program);
          if (pid !== undefined) {
            await stopByPid(pid); // the daemon removes its own pid file
            parts.push(`${d.program} stopped (pid ${pid})`);
          }
        }
        rmSync(marker, { force: true });
      } else {
        parts.push('system daemons left running (not started by this stack)');
      }
      return `libvirt: ${parts.join('; ')}`;
    },
  };
}

async function removeGuestsUnder(cfg: StackConfig): Promise<string[]> {
  const list = await execa('virsh', ['-c', cfg.libvirtUri, 'list', '--all', '--name'], { reject: false, timeout: 10_000 });
  if (list.exitCode !== 0) return [];
  const removed: string[] = [];
  for (const name of list.stdout
    .split('\n')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const xml = await execa('virsh', ['-c', cfg.libvirtUri, 'dumpxml', name], { reject: false });
    if (xml.exitCode !== 0 || !xml.stdout.includes(cfg.dataDir + '/')) continue;
    await execa('virsh', ['-c', cfg.libvirtUri, 'destroy', name], { reject: false });
    await execa('virsh', ['-c', cfg.libvirtUri, 'undefine', name, '--nvram'], { reject: false });
    await execa('virsh', ['-c', cfg.libvirtUri, 'undefine', name], { reject: false });
    removed.push(name);
  }
  return removed;
}

// The stack's PostgreSQL: a private cluster under <data dir>/postgresql, reached over TCP on
// loopback. One role, the cluster's owner, and one database, both "vmsnap". The password is made
// once per cluster and kept in a libpq password file in the data dir, never printed: URLs name
// the file instead.
const PG_USER = 'vmsnap';
const PG_DATABASE = 'vmsnap';

/**
 * max_connections, set rather than PostgreSQL's default of 100, which the fleet bench used up (a
 * restarted host worker was refused, sqlState 53300). Sized for the cluster mode under that bench:
 * the Temporal server's pools, 4 services × (20 + 10) = 120 (TEMPORAL_SERVER_CONNECTIONS); vmsnap's
 * pools, the main worker 10 (the store's default) + 10 fleet processes × 4 + the bench 2 = 52; and
 * 78 for clients, tests and a worker started again, for 250 in all. A slot costs only a little
 * shared memory. Computed when asked: temporal-cluster.ts imports this module too.
 */
function postgresMaxConnections(): number {
  return TEMPORAL_SERVER_CONNECTIONS + 52 + 78;
}

function postgresPaths(cfg: StackConfig) {
  const cluster = join(cfg.dataDir, 'postgresql');
  return { cluster, pgdata: join(cluster, 'data'), passfile: cfg.postgresPassfile, pidFile: join(cfg.dataDir, 'run', 'postgresql.pid') };
}

/** How another program logs in to the stack's PostgreSQL (the password read when asked). */
export function postgresAccess(cfg: StackConfig) {
  return { user: PG_USER, database: PG_DATABASE, password: () => stackPassword(cfg) };
}

/** The stack's database as a store URL (for VMSNAP_STORE_URL); the password stays in its file. */
export function postgresUrl(cfg: StackConfig): string {
  const passfile = postgresPaths(cfg).passfile.replace(/[%&#+ ]/g, encodeURIComponent);
  return `postgresql://${PG_USER}@127.0.0.1:${cfg.postgresPort}/${PG_DATABASE}?passfile=${passfile}`;
}

function stackPassword(cfg: StackConfig): string {
  const line = readFileSync(postgresPaths(cfg).passfile, 'utf8').split('\n')[0] ?? '';
  return line.split(':').slice(4).join(':');
}

// postgres refuses to run as root: as root, the cluster belongs to the postgres OS user.
const asRoot = () => process.getuid?.() === 0;

async function postgresAccount(): Promise<{ uid: number; gid: number }> {
  const id = async (flag: string) => {
    const r = await execa('id', [flag, 'postgres'], { reject: false });
    if (r.exitCode !== 0)
      throw new Error('postgresql: as root the server runs as the postgres OS user, which does not exist: run ./scripts/setup (Debian package postgresql)');
    return Number(r.stdout.trim());
  };
  return { uid: await id('-u'), gid: await id('-g') };
}

/** The server, as another user, must pass through every directory above its cluster. */
function ensureReachable(cfg: StackConfig, cluster: string, uid: number): void {
  for (let dir = dirname(cluster); ; dir = dirname(dir)) {
    const st = statSync(dir);
    if (st.uid !== uid && (st.mode & 0o001) === 0) {
      // Our own data dir (e.g. from mkdtemp) may let others through; o+x does not let them list it.
      if (dir === cfg.dataDir) chmodSync(dir, (st.mode & 0o7777) | 0o001);
      else
        throw new Error(`postgresql: the postgres OS user cannot reach ${cluster}: ${dir} is closed to others: chmod o+x it, or use another VMSNAP_DATA_DIR`);
    }
    if (dir === dirname(dir)) return;
  }
}

function lastLines(output: string | undefined): string {
  return (output ?? '').trim().split('\n').slice(-3).join(' | ');
}

async function initCluster(cfg: StackConfig, account: { uid: number; gid: number } | undefined): Promise<void> {
  const { cluster, pgdata, passfile } = postgresPaths(cfg);
  // Built aside and renamed into place when complete: a half-made cluster is never "there".
  const fresh = join(cluster, 'data.new');
  const pwfile = join(cluster, 'initdb.pw');
  rmSync(fresh, { recursive: true, force: true });
  const password = randomBytes(24).toString('base64url');
  writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
  const runAs = account ? { uid: account.uid, gid: account.gid } : {};
  if (account) chownSync(pwfile, account.uid, account.gid);
  try {
    const init = await execa(
      join(cfg.postgresBin, 'initdb'),
      ['-D', fresh, '-U', PG_USER, `--pwfile=${pwfile}`, '--auth=scram-sha-256', '--encoding=UTF8', '--no-locale', '--no-instructions'],
      { ...runAs, cwd: cluster, reject: false, all: true },
    );
    if (init.exitCode !== 0) throw new Error(`postgresql: initdb failed: ${lastLines(init.all)}`);
    // Single-user mode makes the database before the server first listens, so that a healthy
    // server always has it.
    const create = await execa(join(cfg.postgresBin, 'postgres'), ['--single', '-D', fresh, '-F', 'postgres'], {
      ...runAs,
      cwd: cluster,
      reject: false,
      all: true,
      input: `CREATE DATABASE ${PG_DATABASE}\n`,
    });
    if (create.exitCode !== 0 || /\bERROR:/.test(create.all ?? ''))
      throw new Error(`postgresql: creating database ${PG_DATABASE} failed: ${lastLines(create.all)}`);
  } finally {
    rmSync(pwfile, { force: true });
  }
  // The password file before the cluster: a cluster never exists without its password.
  writeFileSync(passfile, `*:*:*:${PG_USER}:${password}\n`, { mode: 0o600 });
  chmodSync(passfile, 0o600);
  renameSync(fresh, pgdata);
}

function postgresService(cfg: StackConfig): Service {
  const { cluster, pgdata, passfile, pidFile } = postgresPaths(cfg);
  const program = join(cfg.postgresBin, 'postgres');
  const service = ownedService({
    name: 'postgresql',
    program,
    dataDir: cfg.dataDir,
    ports: () => [cfg.postgresPort],
    async prepare() {
      for (const p of ['initdb', 'postgres']) {
        if (!existsSync(join(cfg.postgresBin, p))) {
          throw new Error(`postgresql: ${join(cfg.postgresBin, p)} is missing: run ./scripts/setup (Debian package postgresql), or set VMSNAP_POSTGRES_BIN`);
        }
      }
      const account = asRoot() ? await postgresAccount() : undefined;
      mkdirSync(join(cfg.dataDir, 'logs'), { recursive: true });
      mkdirSync(cluster, { recursive: true, mode: 0o700 });
      chmodSync(cluster, 0o700);
      if (account) {
        chownSync(cluster, account.uid, account.gid);
        ensureReachable(cfg, cluster, account.uid);
      }
      if (!existsSync(join(pgdata, 'PG_VERSION'))) await initCluster(cfg, account);
      else if (!existsSync(passfile))
        throw new Error(`postgresql: the cluster in ${pgdata} has lost its password file ${passfile}: remove ${cluster} to start afresh`);
    },
    start: () => {
      // Sockets go in the cluster dir (0700), not /run/postgresql, which may not exist or be ours.
      const server = ['-D', pgdata, '-k', cluster, '-p', String(cfg.postgresPort), '-h', '127.0.0.1', '-c', `max_connections=${postgresMaxConnections()}`];
      // setpriv drops to postgres and execs in place: the pid in the pid file is the server's.
      return asRoot()
        ? { command: 'setpriv', args: ['--reuid=postgres', '--regid=postgres', '--init-groups', program, ...server] }
        : { command: program, args: server };
    },
    async healthy() {
      const client = new pg.Client({
        host: '127.0.0.1',
        port: cfg.postgresPort,
        user: PG_USER,
        database: PG_DATABASE,
        password: stackPassword(cfg),
        connectionTimeoutMillis: 2000,
      });
      client.on('error', () => undefined);
      try {
        await client.connect();
        const { rows } = await client.query<{ ok: number }>('SELECT 1 AS ok');
        return rows[0]?.ok === 1;
      } finally {
        await client.end().catch(() => undefined);
      }
    },
    endpoints: () => ({ url: `postgresql://${PG_USER}@127.0.0.1:${cfg.postgresPort}/${PG_DATABASE}`, passfile }),
    startTimeoutMs: 30_000,
  });
  return {
    ...service,
    async down() {
      // SIGINT is postgres's fast shutdown: it ends the sessions and writes a checkpoint, so the
      // next start needs no recovery. ownedService's SIGTERM to the group stays the fallback.
      const pid = runningPid(pidFile, program);
      if (pid === undefined) return service.down();
      try {
        process.kill(pid, 'SIGINT');
      } catch {
        /* already gone */
      }
      const deadline = Date.now() + 15_000;
      while (isAlive(pid) && Date.now() < deadline) await sleep(100);
      if (isAlive(pid)) return service.down();
      rmSync(pidFile, { force: true });
      return `postgresql: stopped (pid ${pid})`;
    },
  };
}

function keystoneService(cfg: StackConfig): Service {
  const paths = keystonePaths(cfg.dataDir);
  const tls = tlsPaths(cfg.dataDir);
  const kcfg = {
    dataDir: cfg.dataDir,
    keystonePort: cfg.keystonePort,
    glancePort: cfg.glancePort,
    tokenLifetimeS: cfg.keystoneTokenLifetimeS,
    apiPort: cfg.apiPort,
  };
  let adminPassword: string | undefined;
  let ca: Agent | undefined;
  const service = ownedService({
    name: 'keystone',
    program: 'uwsgi',
    dataDir: cfg.dataDir,
    ports: () => [cfg.keystonePort],
    async prepare() {
      mkdirSync(join(cfg.dataDir, 'logs'), { recursive: true });
      mkdirSync(paths.dir, { recursive: true, mode: 0o700 });
      await ensureStackTls(cfg.dataDir);
      writeFileSync(paths.conf, keystoneConfig(kcfg));
      if (!readAccounts(cfg.dataDir)) {
        adminPassword = randomBytes(18).toString('base64url');
        await initKeystone(kcfg, adminPassword);
      }
      keystoneWal(cfg.dataDir);
    },
    start: () => ({
      command: 'uwsgi',
      args: [
        '--plugins',
        'python3',
        '--https-socket',
        `127.0.0.1:${cfg.keystonePort},${tls.cert},${tls.key}`,
        '--wsgi-file',
        '/usr/bin/keystone-wsgi-public',
        '--env',
        `OS_KEYSTONE_CONFIG_FILES=${paths.conf}`,
        // One process: Keystone's SQLite database takes one writer at a time.
        '--master',
        '--processes',
        '1',
        '--threads',
        '1',
        '--die-on-term',
        '--need-app',
        '--disable-logging',
        // uwsgi's HTTPS socket closes each connection after its answer without saying so, and a
        // client that reuses it (keystoneauth in Glance, undici) gets a reset: say so.
        '--add-header',
        'Connection: close',
      ],
    }),
    async healthy() {
      ca ??= new Agent({ connect: { ca: readFileSync(tls.ca) } });
      const res = await request(`${keystoneUrl(kcfg)}`, { dispatcher: ca, headersTimeout: 2000, bodyTimeout: 2000 });
      await res.body.text();
      return res.statusCode === 200;
    },
    endpoints: () => ({ url: keystoneUrl(kcfg), 'clouds.yaml': paths.cloudsYaml }),
    startTimeoutMs: 60_000,
  });
  return {
    ...service,
    async up() {
      // A Keystone whose accounts were never made starts afresh.
      if (!readAccounts(cfg.dataDir)) await service.down();
      const status = await service.up();
      let accounts = readAccounts(cfg.dataDir);
      if (!accounts) {
        if (!adminPassword) throw new Error('keystone: started without being bootstrapped: run npm run stack -- down, then up');
        accounts = await provisionKeystone(kcfg, tls.ca, adminPassword);
        saveAccounts(cfg.dataDir, accounts);
      }
      const withApi = await ensureApiAccounts(kcfg, tls.ca, accounts);
      if (withApi !== accounts) saveAccounts(cfg.dataDir, withApi);
      writeCloudsYaml(kcfg, tls.ca, withApi);
      await ca?.close();
      ca = undefined;
      return status;
    },
  };
}

/** Where this checkout is: the API runs from its sources. */
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/**
 * vmsnap's compute API (src/api/), from the sources (as the tests' workers run), acting as the
 * stack's vmsnap-service user (Nova's service user) on the stack's Temporal and the data dir's
 * store, on the main task queue: what `npm run worker` with the stack's env serves.
 */
function apiService(cfg: StackConfig): Service {
  const main = join(REPO, 'src', 'api', 'main.ts');
  const url = `http://127.0.0.1:${cfg.apiPort}`;
  return ownedService({
    name: 'api',
    program: main,
    dataDir: cfg.dataDir,
    ports: () => [cfg.apiPort],
    start: () => ({
      command: process.execPath,
      args: ['--import', 'tsx', main],
      cwd: REPO,
      env: {
        ...clientEnv(cfg),
        OS_CLOUD: 'vmsnap-service',
        VMSNAP_API_HOST: '127.0.0.1',
        VMSNAP_API_PORT: String(cfg.apiPort),
        VMSNAP_API_TOKEN_CACHE_S: String(cfg.apiTokenCacheS),
      },
    }),
    healthy: async () => httpOk(`${url}/`),
    endpoints: () => ({ url: `${url}/v2.1`, log: join(cfg.dataDir, 'logs', 'api.log') }),
    startTimeoutMs: 60_000,
  });
}

export function services(cfg: StackConfig): Service[] {
  const base = [libvirtService(cfg), keystoneService(cfg), glanceService(cfg)];
  // Horizon, when asked for, last: it reads the catalog and talks to the API.
  const horizon = cfg.horizon ? [horizonService(cfg)] : [];
  // The cluster keeps its state in PostgreSQL: the database first. The API needs all of them.
  if (cfg.temporalMode === 'cluster') return [...base, postgresService(cfg), ...clusterServices(cfg), apiService(cfg), ...horizon];
  return [...base, temporalService(cfg), postgresService(cfg), apiService(cfg), ...horizon];
}

/** Every service `down` stops, both Temporal modes' and Horizon, in stopping order: a mode switched is no leak. */
export function servicesToStop(cfg: StackConfig): Service[] {
  const cluster = services({ ...cfg, temporalMode: 'cluster', horizon: true }).reverse();
  return [...cluster.slice(0, 4), temporalService(cfg), ...cluster.slice(4)];
}

/** Environment a vmsnap worker or client needs to use this stack. */
export function clientEnv(cfg: StackConfig): Record<string, string> {
  return {
    TEMPORAL_ADDRESS: `127.0.0.1:${cfg.temporalPort}`,
    TEMPORAL_NAMESPACE: 'default',
    // The cloud as openstacksdk and the openstack CLI read it; Glance comes from the catalog.
    OS_CLOUD: 'vmsnap',
    OS_CLIENT_CONFIG_FILE: keystonePaths(cfg.dataDir).cloudsYaml,
    OS_CLIENT_SECURE_FILE: keystonePaths(cfg.dataDir).secureYaml,
    VMSNAP_DATA_DIR: cfg.dataDir,
    VMSNAP_LIBVIRT_URI: cfg.libvirtUri,
    VMSNAP_TEMPORAL_UI_URL: `http://127.0.0.1:${cfg.temporalUiPort}`,
    VMSNAP_TEMPORAL_MODE: cfg.temporalMode,
    // For tests and for VMSNAP_STORE_URL by choice: the stack's workers keep SQLite by default.
    VMSNAP_POSTGRES_URL: postgresUrl(cfg),
    // vmsnap's compute API, as the catalog's compute endpoint names it.
    VMSNAP_API_URL: computeUrl(cfg),
    // Horizon's login page, when the stack runs it (`up --horizon`).
    VMSNAP_HORIZON_URL: `${horizonUrl(cfg)}/`,
  };
}
