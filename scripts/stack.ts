// Dev stack CLI: `tsx scripts/stack.ts up [--temporal dev|cluster]|down|status|env`. Settings:
// VMSNAP_DATA_DIR, VMSNAP_TEMPORAL_PORT, VMSNAP_TEMPORAL_UI_PORT, VMSNAP_GLANCE_PORT,
// VMSNAP_LIBVIRT_URI, VMSNAP_TEMPORAL_MODE (what --temporal sets; `down` and `status` find the
// mode the data dir was brought up in).
import { clientEnv, recordTemporalMode, services, servicesToStop, stackConfig, type ServiceStatus } from './lib/stack.js';

const USAGE = 'usage: tsx scripts/stack.ts up [--temporal dev|cluster] | down | status | env';

/** `--temporal dev|cluster` (up only) becomes VMSNAP_TEMPORAL_MODE. */
function modeFromArgs(command: string | undefined, args: string[]): NodeJS.ProcessEnv {
  if (!args.length) return process.env;
  if (command !== 'up' || args[0] !== '--temporal' || args.length !== 2) throw new Error(`unexpected arguments "${args.join(' ')}": ${USAGE}`);
  if (args[1] !== 'dev' && args[1] !== 'cluster')
    throw new Error(`--temporal ${args[1]}: choose dev (the dev server, default) or cluster (Temporal server on PostgreSQL)`);
  return { ...process.env, VMSNAP_TEMPORAL_MODE: args[1] };
}

function describe(s: ServiceStatus): string {
  const where = Object.entries(s.endpoints)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  const state = s.healthy ? 'healthy' : 'DOWN';
  return `${s.name.padEnd(9)} ${state.padEnd(8)} ${where}${s.pid ? ` (pid ${s.pid})` : ''}${s.note ? ` - ${s.note}` : ''}`;
}

async function main(command: string | undefined, args: string[]): Promise<number> {
  const cfg = stackConfig(modeFromArgs(command, args));
  const all = services(cfg);
  switch (command) {
    case 'up': {
      recordTemporalMode(cfg);
      for (const service of all) console.log(describe(await service.up()));
      console.log(`Temporal: ${cfg.temporalMode === 'cluster' ? 'cluster (Temporal server on PostgreSQL)' : 'dev server'}`);
      console.log(`data dir ${cfg.dataDir} (logs in ${cfg.dataDir}/logs)`);
      console.log(`Temporal Web UI: http://127.0.0.1:${cfg.temporalUiPort}`);
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
