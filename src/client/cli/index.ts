// vmsnap: the operator's command line. Start a snapshot and follow it, look at snapshots, cancel
// one, list the instance inventory, restore, schedules. `--json` makes every command print one
// JSON document on stdout and nothing else; errors are one line on stderr, `vmsnap: <what>: <what
// to do>`. Each command (or group) lives in its own file here and registers itself on the program
// with register<Group>Commands(program, session).
import { Command, CommanderError } from 'commander';
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { EXIT, EXIT_CODES_HELP } from '../exit-codes.js';
import { registerInstanceCommands } from './instances.js';
import { SETTINGS_HELP, version } from './options.js';
import { registerRestoreCommands } from './restore.js';
import { registerScheduleCommands } from './schedule.js';
import { Session, type CliIo, type GlobalOptions } from './session.js';
import { registerSnapshotCommands } from './snapshot.js';

export type { CliIo } from './session.js';

export function buildProgram(session: Session): Command {
  const { io } = session;
  const program = new Command('vmsnap')
    .description('Snapshot libvirt/QEMU instances into OpenStack Glance as durable Temporal workflows (like Nova createImage).')
    .version(version(), '--version', 'print the version')
    .option('--json', 'print one JSON document on stdout, nothing else')
    .option('--debug', 'print stack traces with errors')
    .configureHelp({ showGlobalOptions: true })
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      // Errors are printed once, our way, by the caller of parseAsync.
      outputError: () => undefined,
    })
    .exitOverride()
    .addHelpText('after', `\n${EXIT_CODES_HELP}\n\n${SETTINGS_HELP}\n`);

  // In the order `vmsnap --help` lists them.
  registerSnapshotCommands(program, session);
  registerRestoreCommands(program, session);
  registerInstanceCommands(program, session);
  registerScheduleCommands(program, session);
  return program;
}

/**
 * A reader that stops reading (`vmsnap ... | head`) closes the pipe: the next write fails with
 * EPIPE. Unix tools end quietly then; without a handler node prints a stack trace and exits 1.
 */
function endQuietlyOnClosedOutput(io: CliIo): void {
  for (const stream of [io.stdout, io.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(EXIT.ok);
      throw err;
    });
  }
}

export async function main(argv: string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  endQuietlyOnClosedOutput(io);
  const session = new Session(io);
  const program = buildProgram(session);
  const g = (): GlobalOptions => ({ json: argv.includes('--json'), debug: argv.includes('--debug') });
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version are not errors; anything else commander refuses is a usage error.
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return EXIT.ok;
      if (err.code === 'commander.help' || err.code === 'commander.executeSubCommandAsync') return EXIT.usage;
      session.fail(g(), err, EXIT.usage);
    } else {
      session.fail(g(), err);
    }
  } finally {
    await session.close();
  }
  return session.exitCode;
}

// Run when executed (bin/vmsnap), not when imported by a test or a program.
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
