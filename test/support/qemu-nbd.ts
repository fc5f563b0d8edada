// A disk image served read-only over NBD by qemu-nbd on a unix socket, as the tests and the bench
// read one: the stand-in for the pull backup job's export (same server code, QEMU's NBD server).
import { execa } from 'execa';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { nbdUnixUri } from '../../src/drivers/nbd.js';

async function running(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

export interface ServedDisk {
  uri: string;
  socket: string;
  /** qemu-nbd's pid. */
  pid: number;
  stop(): Promise<void>;
}

/**
 * Serves `file` (of `format`) on `<dir>/<name>.sock` until stop(). --fork returns once the socket
 * listens; --persistent serves any number of connections (nbdinfo and the reader each open one).
 */
export async function serveDisk(dir: string, file: string, format: 'raw' | 'qcow2', name = 'disk'): Promise<ServedDisk> {
  const socket = join(dir, `${name}.sock`);
  const pidFile = join(dir, `${name}.pid`);
  await execa('qemu-nbd', ['--fork', '--persistent', '--read-only', '--pid-file', pidFile, '-f', format, '-k', socket, file], { stdin: 'ignore' });
  const pid = Number((await readFile(pidFile, 'utf8')).trim());
  return {
    uri: nbdUnixUri(socket),
    socket,
    pid,
    async stop() {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        return;
      }
      // Read-only, so nothing is lost. Wait until it is gone (or a zombie: its parent exited at
      // --fork, and whoever adopted it reaps it in its own time), so no server outlives the test.
      while (await running(pid)) await new Promise((resolve) => setTimeout(resolve, 10));
    },
  };
}
