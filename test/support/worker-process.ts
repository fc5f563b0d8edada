// The real worker entry point (src/worker/main.ts, or a deployed command line) as a child
// process: for tests that read its logs, scrape its metrics, or kill it with SIGKILL.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
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

/**
 * `how`: a role of the worker run from source, or a whole command line (e.g. the container's) and
 * its directory. With `logFile`, every line also goes to that file, as a service manager would keep it.
 */
export function startWorkerProcess(
  env: Record<string, string>,
  how: 'all' | 'main' | 'host' | { command: string[]; cwd: string } = 'all',
  opts: { logFile?: string } = {},
): WorkerProcess {
  const [file, ...args] = typeof how === 'string' ? [process.execPath, '--import', 'tsx', 'src/worker/main.ts', '--role', how] : how.command;
  const proc = spawn(file!, args, {
    ...(typeof how === 'string' ? { env: { ...process.env, ...env } } : { env, cwd: how.cwd }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  for (const stream of [proc.stdout!, proc.stderr!]) {
    createInterface({ input: stream }).on('line', (l) => {
      lines.push(l);
      if (opts.logFile) appendFileSync(opts.logFile, `${l}\n`);
    });
  }
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

/**
 * What every worker process of a test runs with: a host and task queue of its own (`tag` and the
 * test's pid), the store and the snapshots below `dir`, no reconciler loop, no metrics endpoint.
 */
export function workerTestEnv(tag: string, dir: string) {
  return {
    VMSNAP_HOST: `test-${tag}-${process.pid}`,
    VMSNAP_TASK_QUEUE: `vmsnap-test-${tag}-${process.pid}`,
    VMSNAP_STORE_PATH: join(dir, 'vmsnap.sqlite'),
    VMSNAP_SNAPSHOTS_DIR: join(dir, 'snapshots'),
    VMSNAP_RECONCILE_INTERVAL_MS: '0',
    VMSNAP_METRICS_ADDRESS: 'off',
  };
}

/** The worker processes of a test, all started with one environment: started one by one, killed together. */
export class WorkerProcesses {
  readonly all: WorkerProcess[] = [];

  constructor(private readonly env: Record<string, string>) {}

  /** One more worker (`extra` settings on top; both roles unless `role` says one), once it has started polling. */
  async start(extra: Record<string, string> = {}, role: 'all' | 'main' | 'host' = 'all'): Promise<WorkerProcess> {
    const w = startWorkerProcess({ ...this.env, ...extra }, role);
    this.all.push(w);
    // A worker builds its workflow bundle as it starts: on a loaded 2-core host that can take minutes.
    await w.waitForLine(/vmsnap worker started/, 180_000);
    return w;
  }

  /** SIGKILL to every worker started, as a dead machine would. */
  async killAll(): Promise<void> {
    for (const w of this.all) await w.stop('SIGKILL');
  }
}
