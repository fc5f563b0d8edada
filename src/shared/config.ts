// The one validated config of vmsnap's workers and clients. Read from the environment, and
// optionally from a JSON file (VMSNAP_CONFIG_FILE) under it; a bad value stops startup with a
// message naming the setting. Secrets (OpenStack credentials, read as openstacksdk reads them:
// cloud-config.ts) come only from here, never from inputs.
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { loadCloudSettings, type CloudSettings } from './cloud-config.js';
import { VmsnapError } from './errors.js';
import { DEFAULT_TASK_QUEUE } from './names.js';
import { readTemporalSettings, type TemporalConnectionSettings } from './temporal-config.js';

export interface Config {
  /** Temporal's connection as Temporal's own tools read it (temporal-config.ts), and the main queue. */
  temporal: TemporalConnectionSettings & {
    /** Main task queue: workflows, image record, task state. */
    taskQueue: string;
  };
  /**
   * The OpenStack cloud: Keystone credentials, region, interface, CA. Undefined when nothing names
   * one; a worker then refuses to start (connectCloud says what to set).
   */
  cloud?: CloudSettings;
  /** Glance's URL when it is not to be taken from the service catalog (VMSNAP_GLANCE_URL). */
  /** Glance: its URL when not from the catalog; how long an upload may make no progress. */
  glance: { url?: string; uploadStallMs?: number };
  libvirtUri: string;
  /** Name of this hypervisor host; its worker serves the host task queue of that name. */
  host: string;
  dataDir: string;
  /** Where per-snapshot temp dirs are made (mode 0700). */
  snapshotsDir: string;
  /**
   * Where the store is: sqlite:///abs/path or a postgres:// URL (which may hold a password: never
   * show it; PostgresTarget.display is the safe form).
   */
  storeUrl: string;
  /** The SQLite file, when storeUrl is a sqlite one. */
  storePath: string;
  /** How often a host worker refreshes the instance inventory from libvirt. */
  discoveryIntervalMs: number;
  /** How often a host worker looks for guests paused by a snapshot run that is gone (0: never). */
  pauseWatchIntervalMs: number;
  /** How snapshots behave; handed to each workflow through an activity, so it is in history. */
  snapshot: SnapshotSettings;
  /** Snapshots a host runs at once (Nova's max_concurrent_snapshots); more wait for a slot. */
  maxConcurrentSnapshots: number;
  /**
   * Long polls a host worker keeps open on each of its two queues. Every open poll counts against
   * the Temporal frontend's per-namespace limit (frontend.namespaceCount, 1,200 by default), which
   * a fleet shares: the SDK's default (10 and 5) put 100 hosts over it.
   */
  hostPollers: number;
  /** How often the reconciler runs (0: no schedule, e.g. in tests that run it themselves). */
  reconcileIntervalMs: number;
  /** host:port of the worker's Prometheus endpoint; undefined = none. */
  metricsAddress?: string;
  /** The compute API (`vmsnap api`, src/api/): Nova's door, behind Keystone. */
  api: ApiSettings;
  /**
   * How long `vmsnap snapshot` and `vmsnap restore` wait for a worker to take the request (its task
   * state); past it the request is withdrawn and the command says no worker answered.
   */
  acceptTimeoutMs: number;
  logLevel: 'TRACE' | 'DEBUG' | 'INFO' | 'WARN' | 'ERROR';
}

export interface ApiSettings {
  /** Address to listen on (Nova's osapi_compute_listen, 0.0.0.0). */
  host: string;
  /** Port (Nova's osapi_compute_listen_port, 8774). */
  port: number;
  /**
   * How long a token Keystone said is valid is taken as valid without asking again (never past its
   * expiry): the longest a revoked token is still accepted. 0: every request asks Keystone.
   */
  tokenCacheMs: number;
  /** The URL clients reach the API at, for links (version documents, servers); else the request's Host. */
  publicUrl?: string;
  /** How long a createImage, createBackup or rebuild waits for a worker to accept it; past it the request is withdrawn (503). */
  acceptTimeoutMs: number;
}

export interface SnapshotSettings {
  /** Longest time a running guest may stay paused; the copy is cancelled past it. 0 = no limit. */
  pauseBudgetMs: number;
  /** Heartbeat timeout of the long steps: how soon a lost worker's step moves to another. */
  heartbeatTimeoutMs: number;
  /** Retries of calls to the image service (Glance) before the snapshot gives up. */
  imageServiceRetry: { maximumAttempts: number; initialIntervalMs: number; maximumIntervalMs: number };
  /** Mode of a request that names none: auto = live where the host can, else cold. */
  defaultMode: 'auto' | 'cold' | 'live';
  /** Rate limit of a live copy (MiB/s) to spare the host's storage; 0 = none. */
  liveCopyBandwidthMiBps: number;
  /** VMSNAP_LIVE_METHOD: how a live copy reads the disk (LiveCopyOptions.method). */
  liveCopyMethod: 'auto' | 'pull' | 'push';
  /**
   * VMSNAP_LIVE_TRANSFER: stream (a live snapshot by pull is made and sent to Glance straight from the
   * backup job's point in time, no copy on the host) or copy (into the snapshots dir first, then uploaded).
   */
  liveTransfer: 'stream' | 'copy';
  /** Restore: how long the guest may take to shut down gracefully before it is destroyed. */
  restoreShutdownTimeoutMs: number;
  /** Restore: how long the previous disk is kept beside the restored one (rollback window). */
  preRestoreRetentionMs: number;
  /** Restore: how long the started guest has to run (and its agent to answer, if it has one). */
  restoreStartTimeoutMs: number;
}

type Env = Record<string, string | undefined>;

function configError(setting: string, message: string): VmsnapError {
  return new VmsnapError('ConfigError', `config: ${setting} ${message}`, { setting });
}

function url(setting: string, value: string): string {
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw configError(setting, `is not a URL (got "${value}"): set it like http://127.0.0.1:9292`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw configError(setting, `must be an http or https URL (got "${parsed.protocol}")`);
  }
  if (parsed.username || parsed.password) throw configError(setting, 'must not carry credentials: set OS_CLOUD or the OS_* credentials');
  return value.replace(/\/+$/, '');
}

function hostPort(setting: string, value: string): string {
  if (!/^[A-Za-z0-9.[\]:-]+:\d{1,5}$/.test(value)) throw configError(setting, `must be host:port (got "${value}")`);
  return value;
}

function name(setting: string, value: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/.test(value)) {
    throw configError(setting, `must be letters, digits, "_", "." and "-" (got "${value}")`);
  }
  return value;
}

function tcpPort(setting: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw configError(setting, `must be a TCP port, 1 to 65535 (got "${value}")`);
  return n;
}

function listenHost(setting: string, value: string): string {
  if (!/^[A-Za-z0-9.:-]{1,253}$/.test(value)) throw configError(setting, `must be an IP address or host name to listen on, like 0.0.0.0 (got "${value}")`);
  return value;
}

function positiveInt(setting: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw configError(setting, `must be a positive whole number (got "${value}")`);
  return n;
}

function logLevel(value: string): Config['logLevel'] {
  const level = value.toUpperCase();
  if (level === 'TRACE' || level === 'DEBUG' || level === 'INFO' || level === 'WARN' || level === 'ERROR') return level;
  throw configError('VMSNAP_LOG_LEVEL', `must be TRACE, DEBUG, INFO, WARN or ERROR (got "${value}")`);
}

function oneOf<T extends string>(setting: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value)) throw configError(setting, `must be one of ${allowed.join(', ')} (got "${value}")`);
  return value as T;
}

function wholeNumber(setting: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw configError(setting, `must be a whole number, 0 or more (got "${value}")`);
  return n;
}

/** A PostgreSQL store's connection, from a postgres:// URL. Only `display` is fit to show. */
export interface PostgresTarget {
  /** Host name or IP; or a unix socket directory (the `host` parameter). */
  host: string;
  port: number;
  user?: string;
  password?: string;
  database?: string;
  /** A libpq password file, read when the URL carries no password. */
  passfile?: string;
  sslmode: 'disable' | 'require' | 'verify-ca' | 'verify-full';
  sslrootcert?: string;
  connectTimeoutMs?: number;
  /** Server settings at connect, as libpq's `options` (e.g. "-c search_path=vmsnap"). */
  options?: string;
  applicationName?: string;
  /** The URL without password or parameters, for messages. */
  display: string;
}

const POSTGRES_PARAMETERS = ['host', 'passfile', 'sslmode', 'sslrootcert', 'connect_timeout', 'options', 'application_name'];
const SSL_MODES = ['disable', 'require', 'verify-ca', 'verify-full'] as const;
const POSTGRES_EXAMPLE = 'postgresql://user:password@host:5432/vmsnap';

/**
 * Parses and checks a postgres:// or postgresql:// URL. Errors never quote the URL, since it may
 * hold a password; they name the part that is wrong.
 */
export function parsePostgresUrl(value: string, setting = 'VMSNAP_STORE_URL'): PostgresTarget {
  const bad = (message: string) => configError(setting, message);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw bad(`is not a valid URL: set it like ${POSTGRES_EXAMPLE} (percent-encode special characters of the password)`);
  }
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') throw bad(`must be a postgres:// or postgresql:// URL (got "${url.protocol}")`);
  // An unencoded "#" or "?" in the password splits the URL in the wrong place.
  if (url.hash) throw bad(`has a "#" part: percent-encode "#" in the password as %23`);
  for (const key of url.searchParams.keys()) {
    if (!POSTGRES_PARAMETERS.includes(key)) throw bad(`has an unknown parameter "${key}": known are ${POSTGRES_PARAMETERS.join(', ')}`);
  }
  const decode = (part: string, what: string): string => {
    try {
      return decodeURIComponent(part);
    } catch {
      throw bad(`has a badly percent-encoded ${what}`);
    }
  };
  const params = url.searchParams;
  const host = params.get('host') || decode(url.hostname, 'host').replace(/^\[(.*)\]$/, '$1');
  if (!host) throw bad(`names no host: set it like ${POSTGRES_EXAMPLE}`);
  const database = decode(url.pathname.replace(/^\//, ''), 'database name');
  if (database.includes('/')) throw bad(`must name one database after the host (got "${database}")`);
  const sslmode = params.get('sslmode') ?? 'disable';
  if (!(SSL_MODES as readonly string[]).includes(sslmode)) throw bad(`has sslmode=${sslmode}: use one of ${SSL_MODES.join(', ')}`);
  const timeout = params.get('connect_timeout');
  if (timeout !== null && !/^[1-9]\d{0,5}$/.test(timeout)) throw bad(`has connect_timeout=${timeout}: give whole seconds, 1 or more`);
  const user = url.username ? decode(url.username, 'user name') : undefined;
  const port = url.port ? Number(url.port) : 5432;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  return {
    host,
    port,
    user,
    password: url.password ? decode(url.password, 'password') : undefined,
    database: database || undefined,
    passfile: params.get('passfile') || undefined,
    sslmode: sslmode as PostgresTarget['sslmode'],
    sslrootcert: params.get('sslrootcert') || undefined,
    connectTimeoutMs: timeout === null ? undefined : Number(timeout) * 1000,
    options: params.get('options') || undefined,
    applicationName: params.get('application_name') || undefined,
    display: host.startsWith('/')
      ? `${url.protocol}//${user ? `${encodeURIComponent(user)}@` : ''}/${database}?host=${host}`
      : `${url.protocol}//${user ? `${encodeURIComponent(user)}@` : ''}${shownHost}:${port}/${database}`,
  };
}

/**
 * The store: VMSNAP_STORE_URL (sqlite:///abs/path, a plain path, or a postgres URL), or else
 * VMSNAP_STORE_PATH (older, SQLite only), or else <data dir>/vmsnap.sqlite. The URL wins when
 * both are set, so a URL given on top of a setup that names a path (a test harness) takes effect.
 */
function storeSettings(env: Env, dataDir: string): { storeUrl: string; storePath: string } {
  const sqlite = (path: string) => ({ storeUrl: `sqlite://${pathToFileURL(path).pathname}`, storePath: path });
  const raw = env.VMSNAP_STORE_URL;
  if (!raw) return sqlite(resolve(env.VMSNAP_STORE_PATH || join(dataDir, 'vmsnap.sqlite')));
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(raw)?.[1]?.toLowerCase();
  if (scheme === undefined) return sqlite(resolve(raw));
  if (scheme === 'postgres' || scheme === 'postgresql') {
    parsePostgresUrl(raw);
    return { storeUrl: raw, storePath: resolve(join(dataDir, 'vmsnap.sqlite')) };
  }
  if (scheme === 'sqlite') {
    let url: URL | undefined;
    try {
      url = new URL(raw);
    } catch {
      url = undefined;
    }
    if (!url || url.host !== '' || !url.pathname.startsWith('/') || url.search || url.hash) {
      throw configError('VMSNAP_STORE_URL', `must be sqlite:///absolute/path/vmsnap.sqlite for SQLite (got "${raw}")`);
    }
    return sqlite(fileURLToPath(`file://${url.pathname}`));
  }
  // Only the scheme is quoted: an unknown URL may still carry a password.
  throw configError('VMSNAP_STORE_URL', `has an unknown scheme "${scheme}:": use sqlite:///path/to/vmsnap.sqlite or ${POSTGRES_EXAMPLE}`);
}

/** Settings from VMSNAP_CONFIG_FILE (a flat JSON object of the same names), under the environment. */
function withConfigFile(env: Env): Env {
  const file = env.VMSNAP_CONFIG_FILE;
  if (!file) return env;
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw configError('VMSNAP_CONFIG_FILE', `could not be read as JSON (${file}): ${(err as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw configError('VMSNAP_CONFIG_FILE', 'must hold a JSON object like {"VMSNAP_GLANCE_URL": "http://..."}');
  }
  const fromFile: Env = {};
  for (const [k, v] of Object.entries(parsed)) {
    if (typeof v !== 'string') throw configError(k, `in ${file} must be a string`);
    fromFile[k] = v;
  }
  return { ...fromFile, ...Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== '')) };
}

/**
 * Secrets may come from a file instead of the environment: <NAME>_FILE (a systemd credential,
 * %d/<name>, or a container secret), so they need not sit in a unit or an environment file.
 */
// OpenStack's own secrets have their own file already: secure.yaml (OS_CLIENT_SECURE_FILE).
export const SECRET_SETTINGS = ['TEMPORAL_API_KEY', 'VMSNAP_STORE_URL'];

function withSecretFiles(env: Env): Env {
  const out: Env = { ...env };
  for (const setting of SECRET_SETTINGS) {
    const file = env[`${setting}_FILE`];
    if (!file) continue;
    if (env[setting]) throw configError(`${setting}_FILE`, `and ${setting} are both set: set one`);
    try {
      // The file's content is never quoted: it is a secret.
      out[setting] = readFileSync(file, 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      throw configError(`${setting}_FILE`, `could not be read (${file}): ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  }
  return out;
}

export function loadConfig(rawEnv: Env = process.env): Config {
  const env = withSecretFiles(withConfigFile(rawEnv));
  const dataDir = resolve(env.VMSNAP_DATA_DIR || '.data/dev');
  const host = name('VMSNAP_HOST', env.VMSNAP_HOST || hostname());
  if (env.VMSNAP_GLANCE_TOKEN) {
    throw configError(
      'VMSNAP_GLANCE_TOKEN',
      'is no longer read (a fixed token expires within hours): set OS_CLOUD with a clouds.yaml, or OS_AUTH_URL with a password or application ' +
        'credential; a token you only have as such goes in OS_TOKEN with OS_AUTH_TYPE=token',
    );
  }
  const cloud = loadCloudSettings(env);
  const glanceUrl = env.VMSNAP_GLANCE_URL ? url('VMSNAP_GLANCE_URL', env.VMSNAP_GLANCE_URL) : undefined;
  if (cloud?.auth.type === 'none' && !glanceUrl) {
    throw configError(
      'VMSNAP_GLANCE_URL',
      'is not set, and OS_AUTH_TYPE is none, so there is no service catalog to find Glance in: set it to the standalone Glance URL, like http://127.0.0.1:9292',
    );
  }
  return {
    temporal: {
      ...readTemporalSettings(env),
      taskQueue: name('VMSNAP_TASK_QUEUE', env.VMSNAP_TASK_QUEUE || DEFAULT_TASK_QUEUE),
    },
    ...(cloud ? { cloud } : {}),
    glance: {
      ...(glanceUrl ? { url: glanceUrl } : {}),
      uploadStallMs: positiveInt('VMSNAP_GLANCE_STALL_MS', env.VMSNAP_GLANCE_STALL_MS || '20000'),
    },
    libvirtUri: env.VMSNAP_LIBVIRT_URI || 'qemu:///system',
    host,
    dataDir,
    snapshotsDir: resolve(env.VMSNAP_SNAPSHOTS_DIR || join(dataDir, 'snapshots')),
    ...storeSettings(env, dataDir),
    discoveryIntervalMs: positiveInt('VMSNAP_DISCOVERY_INTERVAL_MS', env.VMSNAP_DISCOVERY_INTERVAL_MS || '15000'),
    pauseWatchIntervalMs: wholeNumber('VMSNAP_PAUSE_WATCH_MS', env.VMSNAP_PAUSE_WATCH_MS || '2000'),
    maxConcurrentSnapshots: positiveInt('VMSNAP_MAX_CONCURRENT_SNAPSHOTS', env.VMSNAP_MAX_CONCURRENT_SNAPSHOTS || '5'),
    hostPollers: positiveInt('VMSNAP_HOST_POLLERS', env.VMSNAP_HOST_POLLERS || '2'),
    reconcileIntervalMs: wholeNumber('VMSNAP_RECONCILE_INTERVAL_MS', env.VMSNAP_RECONCILE_INTERVAL_MS || '60000'),
    metricsAddress: env.VMSNAP_METRICS_ADDRESS === 'off' ? undefined : hostPort('VMSNAP_METRICS_ADDRESS', env.VMSNAP_METRICS_ADDRESS || '127.0.0.1:9464'),
    logLevel: logLevel(env.VMSNAP_LOG_LEVEL || 'INFO'),
    acceptTimeoutMs: positiveInt('VMSNAP_ACCEPT_TIMEOUT_MS', env.VMSNAP_ACCEPT_TIMEOUT_MS || '60000'),
    api: {
      host: listenHost('VMSNAP_API_HOST', env.VMSNAP_API_HOST || '0.0.0.0'),
      port: tcpPort('VMSNAP_API_PORT', env.VMSNAP_API_PORT || '8774'),
      tokenCacheMs: wholeNumber('VMSNAP_API_TOKEN_CACHE_S', env.VMSNAP_API_TOKEN_CACHE_S || '60') * 1000,
      ...(env.VMSNAP_API_PUBLIC_URL ? { publicUrl: url('VMSNAP_API_PUBLIC_URL', env.VMSNAP_API_PUBLIC_URL) } : {}),
      acceptTimeoutMs: positiveInt('VMSNAP_API_ACCEPT_TIMEOUT_MS', env.VMSNAP_API_ACCEPT_TIMEOUT_MS || '60000'),
    },
    snapshot: {
      pauseBudgetMs: wholeNumber('VMSNAP_PAUSE_BUDGET_MS', env.VMSNAP_PAUSE_BUDGET_MS || '0'),
      heartbeatTimeoutMs: positiveInt('VMSNAP_HEARTBEAT_TIMEOUT_MS', env.VMSNAP_HEARTBEAT_TIMEOUT_MS || '10000'),
      imageServiceRetry: {
        maximumAttempts: positiveInt('VMSNAP_GLANCE_RETRY_ATTEMPTS', env.VMSNAP_GLANCE_RETRY_ATTEMPTS || '8'),
        initialIntervalMs: positiveInt('VMSNAP_GLANCE_RETRY_INITIAL_MS', env.VMSNAP_GLANCE_RETRY_INITIAL_MS || '1000'),
        maximumIntervalMs: positiveInt('VMSNAP_GLANCE_RETRY_MAX_MS', env.VMSNAP_GLANCE_RETRY_MAX_MS || '30000'),
      },
      defaultMode: oneOf('VMSNAP_DEFAULT_MODE', env.VMSNAP_DEFAULT_MODE || 'auto', ['auto', 'cold', 'live'] as const),
      liveCopyBandwidthMiBps: wholeNumber('VMSNAP_LIVE_BANDWIDTH_MIBPS', env.VMSNAP_LIVE_BANDWIDTH_MIBPS || '0'),
      liveCopyMethod: oneOf('VMSNAP_LIVE_METHOD', env.VMSNAP_LIVE_METHOD || 'auto', ['auto', 'pull', 'push'] as const),
      liveTransfer: oneOf('VMSNAP_LIVE_TRANSFER', env.VMSNAP_LIVE_TRANSFER || 'stream', ['stream', 'copy'] as const),
      restoreShutdownTimeoutMs: wholeNumber('VMSNAP_RESTORE_SHUTDOWN_TIMEOUT_MS', env.VMSNAP_RESTORE_SHUTDOWN_TIMEOUT_MS || '60000'),
      preRestoreRetentionMs: wholeNumber('VMSNAP_PRE_RESTORE_RETENTION_MS', env.VMSNAP_PRE_RESTORE_RETENTION_MS || String(24 * 3600_000)),
      restoreStartTimeoutMs: positiveInt('VMSNAP_RESTORE_START_TIMEOUT_MS', env.VMSNAP_RESTORE_START_TIMEOUT_MS || '60000'),
    },
  };
}
