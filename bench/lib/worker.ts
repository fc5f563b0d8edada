// A real vmsnap worker in a process of its own, so its memory can be read from /proc without the
// benchmark's own heap in the figure: from source through tsx (bundling its workflows at start),
// or compiled as deployed (dist/, the prebuilt workflow bundle).
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { hashFile } from '../../src/drivers/upload-body.js';
import { rssKiB } from './proc.js';

/** How the worker runs: node's arguments, from the repository root. */
export const WORKER_COMMANDS = {
  tsx: ['--import', 'tsx', 'src/worker/main.ts', '--role', 'all'],
  compiled: ['dist/worker/main.js', '--role', 'all'],
  /** As the container and the systemd units run it (plus MALLOC_ARENA_MAX=2, WORKER_ENV). */
  deployed: ['--max-semi-space-size=1', 'dist/worker/main.js', '--role', 'all'],
} as const;
export const WORKER_ENV: Partial<Record<keyof typeof WORKER_COMMANDS, Record<string, string>>> = { deployed: { MALLOC_ARENA_MAX: '2' } };
export type WorkerKind = keyof typeof WORKER_COMMANDS;

/** Builds dist/ (compiled worker, prebuilt workflow bundle) when src/ changed since, as setup does. */
export async function ensureBuilt(root: string): Promise<void> {
  await execa(join(root, 'scripts/build-if-changed'), { cwd: root, stdio: 'inherit' });
}

export interface BenchWorker {
  pid: number;
  /** From spawn to its start-up line, which it logs once every worker of it polls. */
  startMs: number;
  /** The last log lines, for error messages. */
  tail(): string;
  /** SIGTERM, then SIGKILL after graceMs. */
  stop(graceMs?: number): Promise<void>;
}

export async function startBenchWorker(env: Record<string, string>, cwd: string, timeoutMs = 120_000, kind: WorkerKind = 'tsx'): Promise<BenchWorker> {
  const t0 = performance.now();
  let startMs = 0;
  const proc: ChildProcess = spawn(process.execPath, [...WORKER_COMMANDS[kind]], {
    cwd,
    env: { ...process.env, ...env, ...WORKER_ENV[kind] },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (proc.pid === undefined) throw new Error('could not start the vmsnap worker process');
  // Only a tail is kept: a long run logs a lot, and it is our memory, not the worker's.
  const lines: string[] = [];
  let started = false;
  for (const stream of [proc.stdout!, proc.stderr!]) {
    createInterface({ input: stream }).on('line', (line) => {
      if (!started && line.includes('vmsnap worker started')) {
        started = true;
        startMs = performance.now() - t0;
      }
      lines.push(line);
      if (lines.length > 200) lines.shift();
    });
  }
  const exited = once(proc, 'exit');
  const tail = () => lines.slice(-20).join('\n');
  const deadline = Date.now() + timeoutMs;
  while (!started) {
    if (proc.exitCode !== null || proc.signalCode !== null)
      throw new Error(`the vmsnap worker exited (${proc.exitCode ?? proc.signalCode}) during start:\n${tail()}`);
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`the vmsnap worker did not start within ${timeoutMs / 1000} s:\n${tail()}`);
    }
    await sleep(100);
  }
  return {
    pid: proc.pid,
    startMs,
    tail,
    async stop(graceMs = 30_000) {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      // A worker shuts down once its running activities end; normally none are left by now.
      const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * RSS of an idle `node` and of an idle `node --import tsx`: the floor under the worker's figure,
 * to tell what vmsnap's own code and its Temporal worker add.
 */
export async function runtimeFloorKiB(cwd: string): Promise<{ node?: number; nodeTsx?: number }> {
  const idle = async (args: string[]): Promise<number | undefined> => {
    const proc = spawn(process.execPath, [...args, '-e', 'setTimeout(() => {}, 10000)'], { cwd, stdio: 'ignore' });
    await sleep(2000);
    const kib = proc.pid ? rssKiB(proc.pid) : undefined;
    proc.kill('SIGKILL');
    await once(proc, 'exit');
    return kib;
  };
  const [node, nodeTsx] = [await idle([]), await idle(['--import', 'tsx'])];
  return { ...(node ? { node } : {}), ...(nodeTsx ? { nodeTsx } : {}) };
}

/**
 * The floor under the worker's CPU per GiB uploaded: CPU seconds per GiB that Node needs to read
 * `file` in large chunks and sha512 it (what the upload does besides sending), here, now. The
 * median of three passes over the file (from the page cache after the first).
 */
export async function sha512FloorCpuSPerGiB(file: string): Promise<number> {
  const runs: number[] = [];
  for (let i = 0; i < 3; i++) {
    const before = process.cpuUsage();
    const { size } = await hashFile(file);
    const used = process.cpuUsage(before);
    runs.push((used.user + used.system) / 1e6 / (size / 1024 ** 3));
  }
  return runs.sort((a, b) => a - b)[1]!;
}
