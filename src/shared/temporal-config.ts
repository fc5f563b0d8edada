// The Temporal part of the config, read the way Temporal's own tools read it (@temporalio/envconfig,
// the same as the `temporal` CLI): TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY,
// TEMPORAL_TLS*, TEMPORAL_GRPC_META_*, and profiles of a temporal.toml (TEMPORAL_CONFIG_FILE,
// TEMPORAL_PROFILE), the environment over the file. Only validation is vmsnap's own.
import { existsSync } from 'node:fs';
import { loadClientConfigProfile, toClientOptions, type ClientConfigProfile, type ConfigDataSource } from '@temporalio/envconfig';
import type { TLSConfig } from '@temporalio/common/lib/internal-non-workflow/index.js';
import { VmsnapError } from './errors.js';

type Env = Record<string, string | undefined>;

export interface TemporalConnectionSettings {
  /** host:port of the frontend. */
  address: string;
  namespace: string;
  /** The temporal.toml profile read, when a file was there. */
  profile?: string;
  /** TLS as the SDK takes it (certificates read); true: TLS with the system's roots. */
  tls?: TLSConfig | boolean;
  /** Secret: never logged. */
  apiKey?: string;
  /** gRPC headers sent on every call (TEMPORAL_GRPC_META_*). */
  metadata?: Record<string, string>;
}

/** vmsnap's older names, which differ from Temporal's: refused, so TLS is never dropped silently. */
const RENAMED: Record<string, string> = {
  TEMPORAL_TLS_CERT: 'TEMPORAL_TLS_CLIENT_CERT_PATH',
  TEMPORAL_TLS_KEY: 'TEMPORAL_TLS_CLIENT_KEY_PATH',
  TEMPORAL_TLS_CA: 'TEMPORAL_TLS_SERVER_CA_CERT_PATH',
};

const TLS_FILES: { key: 'clientCert' | 'clientKey' | 'serverCACert'; setting: string }[] = [
  { key: 'clientCert', setting: 'TEMPORAL_TLS_CLIENT_CERT_PATH' },
  { key: 'clientKey', setting: 'TEMPORAL_TLS_CLIENT_KEY_PATH' },
  { key: 'serverCACert', setting: 'TEMPORAL_TLS_SERVER_CA_CERT_PATH' },
];

function configError(setting: string, message: string): VmsnapError {
  return new VmsnapError('ConfigError', `config: ${setting} ${message}`, { setting });
}

export function readTemporalSettings(env: Env): TemporalConnectionSettings {
  for (const [old, now] of Object.entries(RENAMED)) {
    if (env[old]) throw configError(old, `is no longer read: use Temporal's name ${now}`);
  }
  // Unset and empty are the same here, as in the rest of vmsnap's settings.
  const vars = Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined && e[1] !== ''));
  if (vars.TEMPORAL_CONFIG_FILE && !existsSync(vars.TEMPORAL_CONFIG_FILE)) {
    throw configError('TEMPORAL_CONFIG_FILE', `names a file that does not exist: ${vars.TEMPORAL_CONFIG_FILE}`);
  }
  let profile: ClientConfigProfile;
  try {
    profile = loadClientConfigProfile({ overrideEnvVars: vars, configFileStrict: true });
  } catch (err) {
    const message = (err as Error).message;
    if (/^Profile '/.test(message)) throw configError('TEMPORAL_PROFILE', `names no profile of the config file: ${message}`);
    throw configError('TEMPORAL_CONFIG_FILE', `could not be read: ${message}`);
  }
  for (const { key, setting } of TLS_FILES) {
    const source: ConfigDataSource | undefined = profile.tls?.[key];
    if (source && 'path' in source && !existsSync(source.path)) throw configError(setting, `names a file that does not exist: ${source.path}`);
  }
  if (Boolean(profile.tls?.clientCert) !== Boolean(profile.tls?.clientKey)) {
    throw configError('TEMPORAL_TLS_CLIENT_CERT_PATH', 'and TEMPORAL_TLS_CLIENT_KEY_PATH go together: set both or neither');
  }
  const { connectionOptions, namespace } = toClientOptions(profile);
  const address = connectionOptions.address ?? '127.0.0.1:7233';
  if (!/^[A-Za-z0-9.[\]:-]+:\d{1,5}$/.test(address)) throw configError('TEMPORAL_ADDRESS', `must be host:port (got "${address}")`);
  return {
    address,
    namespace: namespace || 'default',
    ...(fileRead(vars) ? { profile: vars.TEMPORAL_PROFILE ?? 'default' } : {}),
    ...(connectionOptions.tls !== undefined && connectionOptions.tls !== null ? { tls: connectionOptions.tls } : {}),
    ...(profile.apiKey ? { apiKey: profile.apiKey } : {}),
    ...(profile.grpcMeta && Object.keys(profile.grpcMeta).length ? { metadata: profile.grpcMeta } : {}),
  };
}

/** Whether a temporal.toml was there to read (TEMPORAL_CONFIG_FILE, or the default place). */
function fileRead(vars: Record<string, string>): boolean {
  if (vars.TEMPORAL_CONFIG_FILE) return true;
  const dir = vars.XDG_CONFIG_HOME || (vars.HOME ? `${vars.HOME}/.config` : undefined);
  return dir !== undefined && existsSync(`${dir}/temporalio/temporal.toml`);
}

/** What Connection.connect and NativeConnection.connect take. */
export function temporalConnectionOptions(t: TemporalConnectionSettings): {
  address: string;
  tls?: TLSConfig | boolean;
  apiKey?: string;
  metadata?: Record<string, string>;
} {
  return {
    address: t.address,
    ...(t.tls !== undefined ? { tls: t.tls } : {}),
    ...(t.apiKey ? { apiKey: t.apiKey } : {}),
    ...(t.metadata ? { metadata: t.metadata } : {}),
  };
}
