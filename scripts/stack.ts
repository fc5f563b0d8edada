// Dev stack CLI: `tsx scripts/stack.ts up|down|status|env`. Settings: VMSNAP_DATA_DIR,
// VMSNAP_TEMPORAL_PORT, VMSNAP_TEMPORAL_UI_PORT, VMSNAP_GLANCE_PORT, VMSNAP_LIBVIRT_URI.
import { clientEnv, services, stackConfig, type ServiceStatus } from './lib/stack.js';

function describe(s: ServiceStatus): string {
  const where = Object.entries(s.endpoints).map(([k, v]) => `${k} ${v}`).join(', ');
  const state = s.healthy ? 'healthy' : 'DOWN';
  return `${s.name.padEnd(9)} ${state.padEnd(8)} ${where}${s.pid ? ` (pid ${s.pid})` : ''}${s.note ? ` - ${s.note}` : ''}`;
}

async function main(command: string | undefined): Promise<number> {
  const cfg = stackConfig();
  const all = services(cfg);
  switch (command) {
    case 'up': {
      for (const service of all) console.log(describe(await service.up()));
      console.log(`data dir ${cfg.dataDir} (logs in ${cfg.dataDir}/logs)`);
      console.log(`Temporal Web UI: http://127.0.0.1:${cfg.temporalUiPort}`);
      return 0;
    }
    case 'down': {
      for (const service of [...all].reverse()) console.log(await service.down());
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
      console.error('usage: tsx scripts/stack.ts up|down|status|env');
      return 2;
  }
}

main(process.argv[2]).then(
  (code) => process.exit(code),
  (err: Error) => {
    console.error(`stack: ${err.message}`);
    process.exit(1);
  },
);
