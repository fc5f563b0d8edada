// Background processes of the dev stack: started detached, remembered by pid file, stopped by pid.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie still answers kill(0) but is gone for our purposes.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** The pid in a pid file, if that process is alive and still runs the expected program. */
export function runningPid(pidFile: string, program: string): number | undefined {
  if (!existsSync(pidFile)) return undefined;
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return undefined;
  // Pids are reused: only trust the file when the process still runs our program.
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmdline.includes(program) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Starts a program detached in its own process group, output appended to a log file. */
export function startDetached(opts: {
  command: string;
  args: string[];
  logFile: string;
  pidFile: string;
  cwd?: string;
  /** Set on top of this process's environment. */
  env?: Record<string, string>;
}): number {
  mkdirSync(dirname(opts.logFile), { recursive: true });
  mkdirSync(dirname(opts.pidFile), { recursive: true });
  const log = openSync(opts.logFile, 'a');
  const env = opts.env ? { ...process.env, ...opts.env } : undefined;
  const child = spawn(opts.command, opts.args, { detached: true, stdio: ['ignore', log, log], cwd: opts.cwd, env });
  closeSync(log);
  if (child.pid === undefined) throw new Error(`could not start ${opts.command}: is it installed? (run ./scripts/setup)`);
  child.unref();
  writeFileSync(opts.pidFile, `${child.pid}\n`);
  return child.pid;
}

/** Stops a process group by pid: SIGTERM, then SIGKILL after a grace period. */
export async function stopByPid(pid: number, pidFile?: string, graceMs = 10_000): Promise<void> {
  const signalGroup = (signal: NodeJS.Signals) => {
    try {
      process.kill(-pid, signal);
    } catch {
      try {
        process.kill(pid, signal);
      } catch {
        /* already gone */
      }
    }
  };
  signalGroup('SIGTERM');
  const deadline = Date.now() + graceMs;
  while (isAlive(pid) && Date.now() < deadline) await sleep(100);
  if (isAlive(pid)) signalGroup('SIGKILL');
  while (isAlive(pid)) await sleep(50);
  if (pidFile) rmSync(pidFile, { force: true });
}

/** True when nothing listens on host:port. */
export function portIsFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

/** Polls until check() is true; throws with the given hint when the time runs out. */
export async function waitUntil(check: () => Promise<boolean>, timeoutMs: number, hint: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    await sleep(250);
  }
  throw new Error(hint);
}
