// The real worker entry point (src/worker/main.ts, or a deployed command line) as a child
// process: for tests that read its logs, scrape its metrics, or kill it with SIGKILL.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';

export interface WorkerProcess {
  proc: ChildProcess;
  /** Every stdout and stderr line so far. */
  lines: string[];
  /** Resolves when a log line matches. */
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** Sends the signal and waits for the process to exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Waits for the process to exit by itself; its exit code. */
  exited(): Promise<number | null>;
}

/** `how`: a role of the worker run from source, or a whole command line (e.g. the container's) and its directory. */
export function startWorkerProcess(env: Record<string, string>, how: 'all' | 'main' | 'host' | { command: string[]; cwd: string } = 'all'): WorkerProcess {
  const [file, ...args] = typeof how === 'string' ? [process.execPath, '--import', 'tsx', 'src/worker/main.ts', '--role', how] : how.command;
  const proc = spawn(file!, args, {
    ...(typeof how === 'string' ? { env: { ...process.env, ...env } } : { env, cwd: how.cwd }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  for (const stream of [proc.stdout!, proc.stderr!]) createInterface({ input: stream }).on('line', (l) => lines.push(l));
  const exited = once(proc, 'exit');
  return {
    proc,
    lines,
    async waitForLine(pattern, timeoutMs = 60_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const line = lines.find((l) => pattern.test(l));
        if (line) return line;
        if (proc.exitCode !== null) throw new Error(`worker exited (${proc.exitCode}) before logging ${pattern}:\n${lines.slice(-20).join('\n')}`);
        if (Date.now() > deadline) throw new Error(`worker did not log ${pattern} within ${timeoutMs} ms:\n${lines.slice(-20).join('\n')}`);
        await sleep(100);
      }
    },
    async exited() {
      await exited;
      return proc.exitCode;
    },
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
    },
  };
}
