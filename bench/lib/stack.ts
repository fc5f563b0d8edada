// The stack the benchmark runs against: its own (data dir .data/bench, ports of its own, so it
// neither disturbs a dev or test stack nor shares Glance's disk with them), or one already running
// that the environment names (for the smoke test on the shared test stack).
import { resolve } from 'node:path';
import { clientEnv, recordTemporalMode, services, stackConfig, type Service, type TemporalMode } from '../../scripts/lib/stack.js';

/** Its own stack's place; VMSNAP_BENCH_* move it (two benchmarks, or a bench beside a test run). */
export const OWN_STACK_ENV = {
  VMSNAP_DATA_DIR: process.env.VMSNAP_BENCH_DATA_DIR || '.data/bench',
  VMSNAP_TEMPORAL_PORT: process.env.VMSNAP_BENCH_TEMPORAL_PORT || '7333',
  VMSNAP_TEMPORAL_UI_PORT: process.env.VMSNAP_BENCH_TEMPORAL_UI_PORT || '8333',
  VMSNAP_GLANCE_PORT: process.env.VMSNAP_BENCH_GLANCE_PORT || '9392',
  VMSNAP_POSTGRES_PORT: process.env.VMSNAP_BENCH_POSTGRES_PORT || '5532',
  VMSNAP_KEYSTONE_PORT: process.env.VMSNAP_BENCH_KEYSTONE_PORT || '5100',
  VMSNAP_API_PORT: process.env.VMSNAP_BENCH_API_PORT || '8874',
};

export interface BenchStack {
  kind: 'own' | 'env';
  /** What a vmsnap worker or client needs: TEMPORAL_ADDRESS, OS_CLOUD, VMSNAP_DATA_DIR, ... */
  env: Record<string, string>;
  dataDir: string;
  libvirtUri: string;
  /** Its own stack's services by name (none for a stack the environment names). */
  service(name: string): Service | undefined;
  down(): Promise<void>;
}

export async function openStack(
  kind: 'own' | 'env',
  log: (line: string) => void,
  temporalMode?: TemporalMode,
  /** Stack settings of one section (its own stack only), e.g. VMSNAP_GLANCE_TOKEN_CACHE. */
  settings: Record<string, string> = {},
): Promise<BenchStack> {
  if (kind === 'env') {
    const env = process.env;
    return {
      kind,
      env: {
        TEMPORAL_ADDRESS: env.TEMPORAL_ADDRESS ?? '',
        TEMPORAL_NAMESPACE: env.TEMPORAL_NAMESPACE || 'default',
        // The cloud as the shell names it: OS_CLOUD and its files, or OS_* credentials.
        ...Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => /^OS_|^VMSNAP_GLANCE_URL$/.test(e[0]) && e[1] !== undefined)),
        VMSNAP_DATA_DIR: resolve(env.VMSNAP_DATA_DIR ?? ''),
        VMSNAP_LIBVIRT_URI: env.VMSNAP_LIBVIRT_URI || 'qemu:///system',
      },
      dataDir: resolve(env.VMSNAP_DATA_DIR ?? ''),
      libvirtUri: env.VMSNAP_LIBVIRT_URI || 'qemu:///system',
      service: () => undefined,
      async down() {
        // Not ours: left running.
      },
    };
  }
  // Our own settings win over whatever stack the shell points at (e.g. /tmp/testenv.sh).
  // VMSNAP_BENCH_TEMPORAL_MODE picks the Temporal of the other sections; the fleet asks for the cluster.
  const mode = temporalMode ?? (process.env.VMSNAP_BENCH_TEMPORAL_MODE || 'dev');
  const cfg = stackConfig({ ...process.env, ...OWN_STACK_ENV, ...settings, VMSNAP_TEMPORAL_MODE: mode });
  recordTemporalMode(cfg);
  const all = services(cfg);
  const started: typeof all = [];
  const down = async () => {
    for (const service of [...started].reverse()) {
      try {
        log(`stack: ${await service.down()}`);
      } catch (err) {
        log(`stack: ${service.name} down failed: ${(err as Error).message}`);
      }
    }
  };
  try {
    for (const service of all) {
      started.push(service);
      const status = await service.up();
      log(`stack: ${status.name} ${status.healthy ? 'healthy' : 'DOWN'} ${Object.values(status.endpoints).join(' ')}`);
    }
  } catch (err) {
    await down();
    throw err;
  }
  const env = clientEnv(cfg);
  return {
    kind,
    env,
    dataDir: cfg.dataDir,
    libvirtUri: cfg.libvirtUri,
    service: (name) => all.find((s) => s.name === name),
    down,
  };
}
