// The one validated config of vmsnap's workers and clients. Read from the environment, and
// optionally from a JSON file (VMSNAP_CONFIG_FILE) under it; a bad value stops startup with a
// message naming the setting. Secrets (Glance token) come only from here, never from inputs.
import { existsSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { VmsnapError } from './errors.js';
import { DEFAULT_TASK_QUEUE } from './names.js';

export interface Config {
  temporal: {
    address: string;
    namespace: string;
    /** Main task queue: workflows, image record, task state. */
    taskQueue: string;
    tls?: { certPath?: string; keyPath?: string; caPath?: string; serverName?: string };
  };
  glance: { url: string; token?: string };
  libvirtUri: string;
  /** Name of this hypervisor host; its worker serves the host task queue of that name. */
  host: string;
  dataDir: string;
  /** Where per-snapshot temp dirs are made (mode 0700). */
  snapshotsDir: string;
  /** SQLite file of the store. */
  storePath: string;
  /** How often a host worker refreshes the instance inventory from libvirt. */
  discoveryIntervalMs: number;
  /** How snapshots behave; handed to each workflow through an activity, so it is in history. */
  snapshot: SnapshotSettings;
}

export interface SnapshotSettings {
  /** Longest time a running guest may stay paused; the copy is cancelled past it. 0 = no limit. */
  pauseBudgetMs: number;
  /** Heartbeat timeout of the long steps: how soon a lost worker's step moves to another. */
  heartbeatTimeoutMs: number;
  /** Retries of calls to the image service (Glance) before the snapshot gives up. */
  imageServiceRetry: { maximumAttempts: number; initialIntervalMs: number; maximumIntervalMs: number };
}

type Env = Record<string, string | undefined>;

function configError(setting: string, message: string): VmsnapError {
  return new VmsnapError('ConfigError', `config: ${setting} ${message}`, false, { setting });
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
  if (parsed.username || parsed.password) throw configError(setting, 'must not carry credentials: use VMSNAP_GLANCE_TOKEN');
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

function positiveInt(setting: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw configError(setting, `must be a positive whole number (got "${value}")`);
  return n;
}

function wholeNumber(setting: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw configError(setting, `must be a whole number, 0 or more (got "${value}")`);
  return n;
}

function existingFile(setting: string, value: string | undefined): string | undefined {
  if (value === undefined || value === '') return undefined;
  if (!existsSync(value)) throw configError(setting, `names a file that does not exist: ${value}`);
  return value;
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

export function loadConfig(rawEnv: Env = process.env): Config {
  const env = withConfigFile(rawEnv);
  const dataDir = resolve(env.VMSNAP_DATA_DIR || '.data/dev');
  const host = name('VMSNAP_HOST', env.VMSNAP_HOST || hostname());
  const token = env.VMSNAP_GLANCE_TOKEN || undefined;
  return {
    temporal: {
      address: hostPort('TEMPORAL_ADDRESS', env.TEMPORAL_ADDRESS || '127.0.0.1:7233'),
      namespace: env.TEMPORAL_NAMESPACE || 'default',
      taskQueue: name('VMSNAP_TASK_QUEUE', env.VMSNAP_TASK_QUEUE || DEFAULT_TASK_QUEUE),
      tls:
        env.TEMPORAL_TLS_CERT || env.TEMPORAL_TLS_CA || env.TEMPORAL_TLS === 'true'
          ? {
              certPath: existingFile('TEMPORAL_TLS_CERT', env.TEMPORAL_TLS_CERT),
              keyPath: existingFile('TEMPORAL_TLS_KEY', env.TEMPORAL_TLS_KEY),
              caPath: existingFile('TEMPORAL_TLS_CA', env.TEMPORAL_TLS_CA),
              serverName: env.TEMPORAL_TLS_SERVER_NAME || undefined,
            }
          : undefined,
    },
    glance: { url: url('VMSNAP_GLANCE_URL', env.VMSNAP_GLANCE_URL || 'http://127.0.0.1:9292'), ...(token ? { token } : {}) },
    libvirtUri: env.VMSNAP_LIBVIRT_URI || 'qemu:///system',
    host,
    dataDir,
    snapshotsDir: resolve(env.VMSNAP_SNAPSHOTS_DIR || join(dataDir, 'snapshots')),
    storePath: resolve(env.VMSNAP_STORE_PATH || join(dataDir, 'vmsnap.sqlite')),
    discoveryIntervalMs: positiveInt('VMSNAP_DISCOVERY_INTERVAL_MS', env.VMSNAP_DISCOVERY_INTERVAL_MS || '15000'),
    snapshot: {
      pauseBudgetMs: wholeNumber('VMSNAP_PAUSE_BUDGET_MS', env.VMSNAP_PAUSE_BUDGET_MS || '0'),
      heartbeatTimeoutMs: positiveInt('VMSNAP_HEARTBEAT_TIMEOUT_MS', env.VMSNAP_HEARTBEAT_TIMEOUT_MS || '10000'),
      imageServiceRetry: {
        maximumAttempts: positiveInt('VMSNAP_GLANCE_RETRY_ATTEMPTS', env.VMSNAP_GLANCE_RETRY_ATTEMPTS || '8'),
        initialIntervalMs: positiveInt('VMSNAP_GLANCE_RETRY_INITIAL_MS', env.VMSNAP_GLANCE_RETRY_INITIAL_MS || '1000'),
        maximumIntervalMs: positiveInt('VMSNAP_GLANCE_RETRY_MAX_MS', env.VMSNAP_GLANCE_RETRY_MAX_MS || '30000'),
      },
    },
  };
}
