// Temporal as a production-shaped cluster: the Temporal server (frontend, history, matching and
// worker services, joined through ringpop membership) on the stack's PostgreSQL for persistence
// and visibility, its schemas set up by temporal-sql-tool, and the Web UI as its own process.
// All on loopback; every port derives from the stack's Temporal port, so two stacks never share.
import { execa } from 'execa';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { SEARCH_ATTRIBUTES } from '../../src/shared/names.js';
import { portIsFree, waitUntil } from './daemon.js';
import { httpOk, ownedService, postgresAccess, type Service, type StackConfig } from './stack.js';

/** Where scripts/build-cluster-tools puts the server, its SQL tool and the UI server. */
const TOOLS_BIN = fileURLToPath(new URL('../../.tools/bin', import.meta.url));
const BUILD_CLUSTER_TOOLS = fileURLToPath(new URL('../build-cluster-tools', import.meta.url));

/**
 * The cluster's programs, which the demo's setup does not build: the repository's own are built
 * here when missing or out of date (a no-op in a second when current); others must exist.
 */
async function ensureClusterTools(cfg: StackConfig): Promise<void> {
  const bins = {
    VMSNAP_TEMPORAL_SERVER_BIN: cfg.temporalServerBin,
    VMSNAP_TEMPORAL_SQL_TOOL_BIN: cfg.temporalSqlToolBin,
    VMSNAP_TEMPORAL_UI_BIN: cfg.temporalUiBin,
  };
  if (Object.values(bins).some((bin) => dirname(bin) === TOOLS_BIN)) {
    const build = await execa(BUILD_CLUSTER_TOOLS, { stdio: ['ignore', 'inherit', 'inherit'], reject: false });
    if (build.exitCode !== 0) throw new Error(`temporal-server: ${BUILD_CLUSTER_TOOLS} failed (exit ${build.exitCode}): see its message above`);
  }
  for (const [setting, bin] of Object.entries({ ...bins, VMSNAP_TEMPORAL_BIN: cfg.temporalBin })) {
    if (!existsSync(bin)) throw new Error(`temporal-server: ${bin} is missing: run ./scripts/setup and scripts/build-cluster-tools, or correct ${setting}`);
  }
}

/** Fixed when the databases are made; small, for a 2-core machine (production: 512 and more). */
export const HISTORY_SHARDS = 4;

/**
 * The server's PostgreSQL pools: each of its four services (frontend, history, matching, worker)
 * opens its own pool per datastore, and keeps them open (maxIdleConns = maxConns).
 */
export const TEMPORAL_POOLS = { services: 4, persistence: 20, visibility: 10 };
/** The most PostgreSQL connections the server holds: 4 × (20 + 10) = 120. */
export const TEMPORAL_SERVER_CONNECTIONS = TEMPORAL_POOLS.services * (TEMPORAL_POOLS.persistence + TEMPORAL_POOLS.visibility);

/** The frontend is the stack's Temporal port; the other services sit 10 to 18 above it. */
export function clusterPorts(frontend: number) {
  return {
    frontend,
    frontendHttp: frontend + 10,
    history: frontend + 11,
    matching: frontend + 12,
    worker: frontend + 13,
    frontendMembership: frontend + 14,
    historyMembership: frontend + 15,
    matchingMembership: frontend + 16,
    workerMembership: frontend + 17,
    metrics: frontend + 18,
  };
}

export function temporalDatabases(cfg: StackConfig) {
  return { persistence: cfg.temporalDatabase, visibility: `${cfg.temporalDatabase}_visibility` };
}

function serverConfig(cfg: StackConfig, password: string, dynamicConfigFile: string): string {
  const p = clusterPorts(cfg.temporalPort);
  const dbs = temporalDatabases(cfg);
  const store = (database: string, conns: number) => `
      sql:
        pluginName: postgres12
        databaseName: ${database}
        connectAddr: "127.0.0.1:${cfg.postgresPort}"
        connectProtocol: tcp
        user: ${JSON.stringify(postgresAccess(cfg).user)}
        password: ${JSON.stringify(password)}
        maxConns: ${conns}
        maxIdleConns: ${conns}
        maxConnLifetime: 1h`;
  const service = (grpc: number, membership: number, extra = '') => `
    rpc:
      grpcPort: ${grpc}
      membershipPort: ${membership}
      bindOnLocalHost: true${extra}`;
  return `# Written by the vmsnap stack (scripts/lib/temporal-cluster.ts) on every start.
log:
  stdout: true
  level: warn
persistence:
  defaultStore: default
  visibilityStore: visibility
  numHistoryShards: ${HISTORY_SHARDS}
  datastores:
    default:${store(dbs.persistence, TEMPORAL_POOLS.persistence)}
    visibility:${store(dbs.visibility, TEMPORAL_POOLS.visibility)}
global:
  membership:
    maxJoinDuration: 30s
    broadcastAddress: 127.0.0.1
  metrics:
    prometheus:
      framework: tally
      timerType: histogram
      listenAddress: "127.0.0.1:${p.metrics}"
services:
  frontend:${service(p.frontend, p.frontendMembership, `\n      httpPort: ${p.frontendHttp}`)}
  history:${service(p.history, p.historyMembership)}
  matching:${service(p.matching, p.matchingMembership)}
  worker:${service(p.worker, p.workerMembership)}
clusterMetadata:
  enableGlobalNamespace: false
  failoverVersionIncrement: 10
  masterClusterName: active
  currentClusterName: active
  clusterInformation:
    active:
      enabled: true
      initialFailoverVersion: 1
      rpcName: frontend
      rpcAddress: "127.0.0.1:${p.frontend}"
dcRedirectionPolicy:
  policy: noop
dynamicConfigClient:
  filepath: ${JSON.stringify(dynamicConfigFile)}
  pollInterval: 10s
`;
}

// As the dev server does: search attributes are seen as soon as they are created (they are made
// once, at stack start), with the persistence rate limits raised to pay for the uncached reads.
const DYNAMIC_CONFIG = `system.forceSearchAttributesCacheRefreshOnRead:
  - value: true
frontend.persistenceMaxQPS:
  - value: 10000
history.persistenceMaxQPS:
  - value: 45000
`;

/** Creates the two databases when missing and brings their schemas to the server's version. */
async function ensureSchemas(cfg: StackConfig): Promise<void> {
  const access = postgresAccess(cfg);
  const admin = new pg.Client({
    host: '127.0.0.1',
    port: cfg.postgresPort,
    user: access.user,
    database: access.database,
    password: access.password(),
    connectionTimeoutMillis: 5000,
  });
  admin.on('error', () => undefined);
  await admin.connect().catch((err: Error) => {
    throw new Error(`temporal-server: PostgreSQL on 127.0.0.1:${cfg.postgresPort} does not answer (${err.message}): start the stack's postgresql first`);
  });
  try {
    const dbs = temporalDatabases(cfg);
    for (const [kind, database] of [
      ['temporal', dbs.persistence],
      ['visibility', dbs.visibility],
    ] as const) {
      const sql = (args: string[]) =>
        execa(
          cfg.temporalSqlToolBin,
          ['--ep', '127.0.0.1', '-p', String(cfg.postgresPort), '-u', access.user, '--pl', 'postgres12', '--db', database, ...args],
          {
            env: { SQL_PASSWORD: access.password() }, // not on the command line, where ps shows it
            reject: false,
            all: true,
          },
        );
      const exists = (await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [database])).rowCount === 1;
      const steps: string[][] = exists ? [] : [['create-database'], ['setup-schema', '-v', '0.0']];
      // A no-op when the schema is current; an upgrade after the server's version changed.
      steps.push(['update-schema', '--schema-name', `postgresql/v12/${kind}`]);
      for (const step of steps) {
        const r = await sql(step);
        if (r.exitCode !== 0)
          throw new Error(`temporal-server: temporal-sql-tool ${step[0]} on ${database} failed: ${r.all?.trim().split('\n').slice(-3).join(' | ')}`);
      }
    }
  } finally {
    await admin.end().catch(() => undefined);
  }
}

async function cli(cfg: StackConfig, args: string[]) {
  return execa(cfg.temporalBin, [...args, '--address', `127.0.0.1:${cfg.temporalPort}`], { reject: false, timeout: 10_000, all: true });
}

/** The default namespace and vmsnap's search attributes, made once, usable before `up` returns. */
async function registerNamespace(cfg: StackConfig): Promise<void> {
  if ((await cli(cfg, ['operator', 'namespace', 'describe', '-n', 'default'])).exitCode !== 0) {
    const r = await cli(cfg, ['operator', 'namespace', 'create', '-n', 'default', '--retention', '72h']);
    if (r.exitCode !== 0 && !/already/i.test(r.all ?? '')) throw new Error(`temporal-server: creating namespace default failed: ${r.all}`);
  }
  // The frontend learns of a new namespace on its next cache refresh (up to 10 s): wait for it.
  let list: Awaited<ReturnType<typeof cli>> | undefined;
  await waitUntil(
    async () => (list = await cli(cfg, ['operator', 'search-attribute', 'list', '-n', 'default', '-o', 'json'])).exitCode === 0,
    60_000,
    'temporal-server: namespace default was created but the frontend does not serve it within 60 s: see logs/temporal-server.log',
  );
  for (const name of Object.values(SEARCH_ATTRIBUTES)) {
    if (list?.stdout.includes(`"${name}"`)) continue;
    const r = await cli(cfg, ['operator', 'search-attribute', 'create', '-n', 'default', '--name', name, '--type', 'Keyword']);
    if (r.exitCode !== 0 && !/already/i.test(r.all ?? '')) throw new Error(`temporal-server: creating search attribute ${name} failed: ${r.all}`);
  }
}

export function clusterServices(cfg: StackConfig): Service[] {
  const dir = join(cfg.dataDir, 'temporal-cluster');
  const configFile = join(dir, 'config.yaml');
  const dynamicConfigFile = join(dir, 'dynamicconfig.yaml');
  const address = `127.0.0.1:${cfg.temporalPort}`;
  const p = clusterPorts(cfg.temporalPort);
  const server = ownedService({
    name: 'temporal-server',
    program: cfg.temporalServerBin,
    dataDir: cfg.dataDir,
    ports: () => Object.values(p),
    async prepare() {
      await ensureClusterTools(cfg);
      // Found the hard way: the server records them in a smallint column and exits at start.
      if (p.workerMembership > 32767) {
        throw new Error(
          `temporal-server: its membership ports (${p.frontendMembership}-${p.workerMembership}, the Temporal port + 14 to 17) must be 32767 or less, as Temporal's PostgreSQL schema stores them in a smallint: choose VMSNAP_TEMPORAL_PORT 32750 or less`,
        );
      }
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      await ensureSchemas(cfg);
      writeFileSync(dynamicConfigFile, DYNAMIC_CONFIG);
      // It holds the database password.
      writeFileSync(configFile, serverConfig(cfg, postgresAccess(cfg).password(), dynamicConfigFile), { mode: 0o600 });
    },
    start: () => ({ command: cfg.temporalServerBin, args: ['--config-file', configFile, '--allow-no-auth', 'start'] }),
    healthy: async () => (await cli(cfg, ['operator', 'cluster', 'health'])).exitCode === 0,
    endpoints: () => ({
      grpc: address,
      metrics: `http://127.0.0.1:${p.metrics}/metrics`,
      databases: Object.values(temporalDatabases(cfg)).join(','),
    }),
    startTimeoutMs: 90_000,
  });
  const uiDir = join(cfg.dataDir, 'temporal-ui');
  const ui = ownedService({
    name: 'temporal-ui',
    program: cfg.temporalUiBin,
    dataDir: cfg.dataDir,
    ports: () => [cfg.temporalUiPort],
    async prepare() {
      mkdirSync(join(uiDir, 'config'), { recursive: true });
      writeFileSync(
        join(uiDir, 'config', 'stack.yaml'),
        `temporalGrpcAddress: "${address}"\nhost: 127.0.0.1\nport: ${cfg.temporalUiPort}\nenableUi: true\nhideLogs: true\ndefaultNamespace: default\ncors:\n  cookieInsecure: true\n`,
      );
    },
    start: () => ({ command: cfg.temporalUiBin, args: ['--root', uiDir, '--config', 'config', '--env', 'stack', 'start'] }),
    healthy: () => httpOk(`http://127.0.0.1:${cfg.temporalUiPort}/`),
    endpoints: () => ({ ui: `http://127.0.0.1:${cfg.temporalUiPort}` }),
    startTimeoutMs: 30_000,
  });
  return [
    {
      ...server,
      async up() {
        // Right after a stop (a restart) the old server's ports can take a moment to be let go.
        if ((await server.status()).pid === undefined) {
          await waitUntil(
            async () => (await Promise.all(Object.values(p).map((port) => portIsFree(port)))).every(Boolean),
            30_000,
            'temporal-server: its ports are still in use 30 s after it stopped',
          ).catch(() => undefined);
        }
        await server.up();
        await registerNamespace(cfg);
        return server.status();
      },
    },
    ui,
  ];
}
