// The dev stack: Temporal dev server, standalone Glance and libvirt, as processes on loopback.
// Each service knows how to start, how to tell it is healthy, and how to stop by its own pid.
import { execa } from 'execa';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { SEARCH_ATTRIBUTES } from '../../src/shared/names.js';
import { portIsFree, runningPid, startDetached, stopByPid, waitUntil } from './daemon.js';

export interface StackConfig {
  dataDir: string;
  temporalPort: number;
  temporalUiPort: number;
  glancePort: number;
  libvirtUri: string;
  temporalBin: string;
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

/** Stack settings from the environment; defaults give the dev stack on the usual ports. */
export function stackConfig(env = process.env): StackConfig {
  const temporalPort = port(env, 'VMSNAP_TEMPORAL_PORT', 7233);
  return {
    dataDir: resolve(env.VMSNAP_DATA_DIR || '.data/dev'),
    temporalPort,
    temporalUiPort: port(env, 'VMSNAP_TEMPORAL_UI_PORT', temporalPort + 1000),
    glancePort: port(env, 'VMSNAP_GLANCE_PORT', 9292),
    libvirtUri: env.VMSNAP_LIBVIRT_URI || 'qemu:///system',
    temporalBin: resolve(env.VMSNAP_TEMPORAL_BIN || '.tools/bin/temporal'),
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

interface Service {
  name: string;
  up(): Promise<ServiceStatus>;
  down(): Promise<string>;
  status(): Promise<ServiceStatus>;
}

async function httpOk(url: string): Promise<boolean> {
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
  await res.body?.cancel();
  return res.ok;
}

/** A service we run ourselves from a binary, tracked by a pid file under the data dir. */
function ownedService(spec: {
  name: string;
  program: string;
  ports: () => number[];
  prepare?: () => Promise<void>;
  start: () => { command: string; args: string[] };
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
            throw new Error(
              `${spec.name}: port ${p} on 127.0.0.1 is in use by another process: stop it, or choose other ports (VMSNAP_*_PORT)`,
            );
          }
        }
        await spec.prepare?.();
        const { command, args } = spec.start();
        startDetached({ command, args, logFile, pidFile });
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
        'server', 'start-dev',
        '--ip', '127.0.0.1',
        '--port', String(cfg.temporalPort),
        '--ui-port', String(cfg.temporalUiPort),
        '--db-filename', join(cfg.dataDir, 'temporal.sqlite'),
        '--namespace', 'default',
        '--log-level', 'warn',
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

function glanceConfig(cfg: StackConfig, dir: string): string {
  // Standalone Glance: an empty paste flavor selects the unauthenticated pipeline (no Keystone),
  // sqlite for the registry and a file store for image data, everything under the data dir.
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
flavor =
config_file = /etc/glance/glance-api-paste.ini

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
      writeFileSync(confFile, glanceConfig(cfg, dir));
      if (!existsSync(join(dir, 'glance.sqlite'))) {
        const sync = await execa('glance-manage', ['--config-file', confFile, 'db_sync'], { reject: false, all: true });
        if (sync.exitCode !== 0) {
          throw new Error(`glance: glance-manage db_sync failed: ${sync.all?.split('\n').slice(-3).join(' | ')}`);
        }
      }
    },
    start: () => ({ command: 'glance-api', args: ['--config-file', confFile] }),
    healthy: () => httpOk(`${url}/v2/images?limit=1`),
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
  const answers = async () =>
    (await execa('virsh', ['-c', cfg.libvirtUri, 'version'], { reject: false, timeout: 5000 })).exitCode === 0;
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
  for (const name of list.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) {
    const xml = await execa('virsh', ['-c', cfg.libvirtUri, 'dumpxml', name], { reject: false });
    if (xml.exitCode !== 0 || !xml.stdout.includes(cfg.dataDir + '/')) continue;
    await execa('virsh', ['-c', cfg.libvirtUri, 'destroy', name], { reject: false });
    await execa('virsh', ['-c', cfg.libvirtUri, 'undefine', name, '--nvram'], { reject: false });
    await execa('virsh', ['-c', cfg.libvirtUri, 'undefine', name], { reject: false });
    removed.push(name);
  }
  return removed;
}

export function services(cfg: StackConfig): Service[] {
  return [libvirtService(cfg), glanceService(cfg), temporalService(cfg)];
}

/** Environment a vmsnap worker or client needs to use this stack. */
export function clientEnv(cfg: StackConfig): Record<string, string> {
  return {
    TEMPORAL_ADDRESS: `127.0.0.1:${cfg.temporalPort}`,
    TEMPORAL_NAMESPACE: 'default',
    VMSNAP_GLANCE_URL: `http://127.0.0.1:${cfg.glancePort}`,
    VMSNAP_DATA_DIR: cfg.dataDir,
    VMSNAP_LIBVIRT_URI: cfg.libvirtUri,
    VMSNAP_TEMPORAL_UI_URL: `http://127.0.0.1:${cfg.temporalUiPort}`,
  };
}
