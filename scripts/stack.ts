// Dev stack CLI: `tsx scripts/stack.ts up [--temporal dev|cluster]|down|status|env`. Settings:
// VMSNAP_DATA_DIR, VMSNAP_TEMPORAL_PORT, VMSNAP_TEMPORAL_UI_PORT, VMSNAP_GLANCE_PORT,
// VMSNAP_LIBVIRT_URI, VMSNAP_TEMPORAL_MODE (what --temporal sets; `down` and `status` find the
// mode the data dir was brought up in), VMSNAP_HORIZON=1 (what --horizon sets) and VMSNAP_HORIZON_PORT.
import { horizonUrl } from './lib/horizon.js';
import { clientEnv, recordTemporalMode, services, servicesToStop, stackConfig, type ServiceStatus } from './lib/stack.js';

const USAGE = 'usage: tsx scripts/stack.ts up [--temporal dev|cluster] [--horizon] | down | status | env';

/** `up`'s options: `--temporal dev|cluster` becomes VMSNAP_TEMPORAL_MODE, `--horizon` VMSNAP_HORIZON=1. */
function envFromArgs(command: string | undefined, args: string[]): NodeJS.ProcessEnv {
  const env = { ...process.env };
  if (args.length && command !== 'up') throw new Error(`unexpected arguments "${args.join(' ')}": ${USAGE}`);
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--horizon') {
      env.VMSNAP_HORIZON = '1';
    } else if (args[i] === '--temporal' && i + 1 < args.length) {
      const mode = args[++i]!;
      if (mode !== 'dev' && mode !== 'cluster')
        throw new Error(`--temporal ${mode}: choose dev (the dev server, default) or cluster (Temporal server on PostgreSQL)`);
      env.VMSNAP_TEMPORAL_MODE = mode;
    } else {
      throw new Error(`unexpected arguments "${args.join(' ')}": ${USAGE}`);
    }
  }
  return env;
}

function describe(s: ServiceStatus): string {
  const where = Object.entries(s.endpoints)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  const state = s.healthy ? 'healthy' : 'DOWN';
  return `${s.name.padEnd(9)} ${state.padEnd(8)} ${where}${s.pid ? ` (pid ${s.pid})` : ''}${s.note ? ` - ${s.note}` : ''}`;
}

async function main(command: string | undefined, args: string[]): Promise<number> {
  const cfg = stackConfig(envFromArgs(command, args));
  const all = services(cfg);
  switch (command) {
    case 'up': {
      recordTemporalMode(cfg);
      for (const service of all) console.log(describe(await service.up()));
      console.log(`Temporal: ${cfg.temporalMode === 'cluster' ? 'cluster (Temporal server on PostgreSQL)' : 'dev server'}`);
      console.log(`data dir ${cfg.dataDir} (logs in ${cfg.dataDir}/logs)`);
      console.log(`Temporal Web UI: http://127.0.0.1:${cfg.temporalUiPort}`);
      if (cfg.horizon) console.log(`Horizon: ${horizonUrl(cfg)}/ (log in as the stack's vmsnap user: docs/horizon.md)`);
      return 0;
    }
    case 'down': {
      for (const service of servicesToStop(cfg)) console.log(await service.down());
      return 0;
    }
    case 'status': {
      const statuses = await Promise.all(all.map((s) => s.status()));
      for (const s of statuses) console.log(describe(s));
      return statuses.every((s) => s.healthy) ? 0 : 3;
    }
    case 'env': {
      for (const [k, v] of Object.entries(clientEnv(cfg))) console.log(`export ${k}=${v}`);
      return 0;
    }
    default:
      console.error(USAGE);
      return 2;
  }
}

main(process.argv[2], process.argv.slice(3)).then(
  (code) => process.exit(code),
  (err: Error) => {
    console.error(`stack: ${err.message}`);
    process.exit(1);
  },
);
