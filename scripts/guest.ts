// CLI over scripts/lib/guest.ts, for poking at the test guest by hand:
//   tsx scripts/guest.ts build|create NAME|counter NAME_OR_IMAGE_PATH|state NAME|remove NAME [--data-dir DIR]
// create also takes --interval-ms N and --disk-size-mib N.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildGuestAssets, createGuest, guestState, readCounter, removeGuest } from './lib/guest.js';

const USAGE = `usage: tsx scripts/guest.ts <command> [--data-dir DIR]
  build                        build kernel + initramfs into DIR/guest-assets
  create NAME                  create and start guest NAME (replaces an existing one)
         [--interval-ms N] [--disk-size-mib N]
  counter NAME_OR_IMAGE_PATH   print {"a":..,"b":..} from a guest's disk or any qcow2/raw image
  state NAME                   print the libvirt domain state ("absent" if not defined)
  remove NAME                  destroy, undefine and delete guest NAME
DIR defaults to .data/dev`;

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      'data-dir': { type: 'string', default: '.data/dev' },
      'interval-ms': { type: 'string' },
      'disk-size-mib': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const [cmd, arg] = positionals;
  if (values.help || !cmd) {
    console.log(USAGE);
    process.exit(cmd || values.help ? 0 : 2);
  }
  const dataDir = path.resolve(values['data-dir']);
  const assetsDir = path.join(dataDir, 'guest-assets');
  const guestsDir = path.join(dataDir, 'guests');
  const needArg = (what: string): string => {
    if (!arg) {
      console.error(`${cmd}: missing ${what}\n${USAGE}`);
      process.exit(2);
    }
    return arg;
  };
  const num = (v: string | undefined, flag: string): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`${flag} must be a non-negative integer, got ${v}`);
    return n;
  };

  switch (cmd) {
    case 'build':
      console.log(JSON.stringify(await buildGuestAssets(assetsDir), null, 2));
      break;
    case 'create': {
      const guest = await createGuest({
        name: needArg('NAME'),
        guestsDir,
        assetsDir,
        intervalMs: num(values['interval-ms'], '--interval-ms'),
        diskSizeMiB: num(values['disk-size-mib'], '--disk-size-mib'),
      });
      console.log(JSON.stringify(guest, null, 2));
      break;
    }
    case 'counter': {
      const target = needArg('NAME_OR_IMAGE_PATH');
      // A path (has a slash or exists) is read as an image; otherwise it names a guest.
      const image = target.includes('/') || existsSync(target) ? target : path.join(guestsDir, target, 'disk.qcow2');
      console.log(JSON.stringify(await readCounter(image)));
      break;
    }
    case 'state':
      console.log((await guestState(needArg('NAME'))) ?? 'absent');
      break;
    case 'remove':
      await removeGuest(needArg('NAME'), guestsDir);
      break;
    default:
      console.error(`unknown command ${cmd}\n${USAGE}`);
      process.exit(2);
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
