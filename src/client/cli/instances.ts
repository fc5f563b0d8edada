// vmsnap instances: the inventory the host workers discovered, read from the store.
import type { Command } from 'commander';
import { listInstances } from '../inventory.js';
import { age, since } from './options.js';
import { withGlobals, type Session } from './session.js';

export function registerInstanceCommands(program: Command, session: Session): void {
  program
    .command('instances')
    .description('list the instances the host workers discovered (read from the store, read-only)')
    .option('--all', 'include instances gone from their host')
    .action(
      withGlobals(async (g, opts: { all?: boolean }) => {
        const rows = await listInstances(session.getConfig(), { includeDeleted: opts.all });
        session.showList(g, rows, {
          empty: 'no instances known yet: a host worker discovers them from libvirt when it starts',
          note: 'power states as their host worker last read them from libvirt (POWER READ); vmsnap status shows a running snapshot live',
          header: ['ID', 'NAME', 'HOST', 'POWER', 'TASK', 'UPDATED', 'POWER READ'],
          row: (r) => [r.id, r.name, r.host, r.deletedAt ? 'deleted' : r.powerState, r.taskState ?? 'None', since(r.updatedAt), age(r.powerStateAt)],
        });
      }),
    );
}
