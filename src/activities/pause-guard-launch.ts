// The cold copy step's side of the pause guard (worker/pause-guard.ts): start it so that it
// outlives the worker, tell it "go" or "abort", and follow it to its outcome, also when an
// earlier attempt on another worker started it.
//
// Outliving the worker: the guard runs in a session and process group of its own (a signal to the
// worker's group never reaches it, and qemu-img is its child, not the worker's). Under systemd
// (INVOCATION_ID set: the worker is a unit's process) it also runs in a transient scope of its own
// (`systemd-run --scope`), outside the unit's cgroup, which `systemctl stop` and a restart kill
// whole (KillMode=control-group); where systemd-run fails it runs without one, and says so.
import { spawn, type ChildProcess } from 'node:child_process';
import { open } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { GUARD_LOG, isGuardRunning, readGuardState, type GuardState } from './pause-guard-files.js';
import { VmsnapError } from '../shared/errors.js';

// The guard arms in well under a second (node's start, libvirt's event registration); on a loaded host, give it time.
const ARM_TIMEOUT_MS = 30_000;
// How often a follower looks at the guard's state; the guard's own child's exit wakes it at once.
const FOLLOW_EVERY_MS = 100;

const HERE = fileURLToPath(import.meta.url);
/** The guard's entry beside the worker's: compiled (dist/, .js) or, run from source, through tsx (.ts). */
const GUARD_ENTRY = join(HERE, '..', '..', 'worker', `pause-guard${extname(HERE)}`);
const LOADER = extname(HERE) === '.ts' ? ['--import', import.meta.resolve('tsx')] : [];

/** The guard's command line; in a systemd scope of its own when asked. */
export function pauseGuardCommand(dir: string, nonce: string, scope: boolean): string[] {
  const node = [process.execPath, ...LOADER, '--max-semi-space-size=1', GUARD_ENTRY, dir, nonce];
  if (!scope) return node;
  // --scope runs the command itself (same pid, our pipes) in a new scope unit; --collect removes the unit once it ends.
  return ['systemd-run', '--scope', '--quiet', '--collect', `--unit=vmsnap-pause-guard-${nonce}`, '--description=vmsnap pause guard', '--', ...node];
}

/** Whether this process runs as a systemd unit's (systemd sets INVOCATION_ID for every unit it starts). */
export function underSystemd(env: NodeJS.ProcessEnv = process.env): boolean {
  return Boolean(env.INVOCATION_ID);
}

/** The guard's environment: what virsh and qemu-img need, and nothing of the worker's (no settings, no secrets). */
function guardEnv(): NodeJS.ProcessEnv {
  const { PATH, HOME, LANG, TZ } = process.env;
  return Object.fromEntries(Object.entries({ PATH, HOME, LANG, TZ }).filter(([, v]) => v !== undefined));
}

export interface LaunchedGuard {
  pid: number;
  /** The state it published once armed (an outcome already when it could not arm). */
  armed: GuardState;
  /** The guest is paused (or needs no pause): copy. */
  go(pausedAt: number): void;
  /** No copy: give back a pause QEMU reported, and end. */
  abort(): void;
  /** Whether it still runs (it is this worker's child). */
  running(): boolean;
  exited: Promise<void>;
}

/**
 * Starts the guard of the job in `dir` and waits until it is armed (watching QEMU's events). In a
 * scope under systemd, else (or when systemd-run fails, e.g. no D-Bus) without one; `warn` says why.
 */
export async function launchPauseGuard(dir: string, nonce: string, warn: (message: string) => void): Promise<LaunchedGuard> {
  if (underSystemd()) {
    const scoped = await start(dir, nonce, true);
    if (scoped) return scoped;
    warn(
      `the pause guard of ${dir} could not start in a systemd scope (systemd-run failed; see ${join(dir, GUARD_LOG)}): it runs in the ` +
        "worker unit's cgroup, where a stop of the unit kills it",
    );
  }
  const guard = await start(dir, nonce, false);
  if (guard) return guard;
  throw new VmsnapError('HypervisorError', `the pause guard did not start; its log: ${join(dir, GUARD_LOG)}`);
}

async function start(dir: string, nonce: string, scope: boolean): Promise<LaunchedGuard | undefined> {
  const command = pauseGuardCommand(dir, nonce, scope);
  const log = await open(join(dir, GUARD_LOG), 'a', 0o600);
  let child: ChildProcess;
  try {
    child = spawn(command[0]!, command.slice(1), { detached: true, stdio: ['pipe', 'ignore', log.fd], env: guardEnv() });
  } finally {
    await log.close(); // the child has its own copy
  }
  child.unref(); // the worker may exit while its guard runs on
  child.stdin?.on('error', () => undefined); // a guard that died: the follower sees it
  let done = false;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', resolve);
    child.once('error', resolve);
  }).then(() => void (done = true));
  const deadline = Date.now() + ARM_TIMEOUT_MS;
  for (;;) {
    const state = await readGuardState(dir);
    if (state?.nonce === nonce && state.phase !== 'arming') {
      return {
        pid: child.pid!,
        armed: state,
        go: (pausedAt) => child.stdin?.end(`go ${pausedAt}\n`),
        abort: () => child.stdin?.end('abort\n'),
        running: () => !done,
        exited,
      };
    }
    if (done) return undefined;
    if (Date.now() > deadline) {
      child.kill('SIGKILL'); // not armed: it has paused nothing
      await exited;
      return undefined;
    }
    await Promise.race([sleep(25), exited]);
  }
}

/** The cancellation that only means this worker stops (a restart, an upgrade): the guard goes on, for the next attempt. */
export function isWorkerShutdown(signal: AbortSignal): boolean {
  return signal.aborted && (signal.reason as Error | undefined)?.message === 'WORKER_SHUTDOWN';
}

/**
 * Follows the guard to its outcome: the state it ended with, or undefined when it died without
 * one (SIGKILL, OOM, a host restart). `guard` is this worker's own child, or what an earlier
 * attempt's guard published (its pid). A cancellation of the step SIGTERMs the guard, which
 * resumes the guest at once, and is followed to its end; a worker shutdown leaves it running and
 * throws the cancellation at once.
 */
export async function followPauseGuard(
  dir: string,
  guard: LaunchedGuard | GuardState,
  opts: { signal: AbortSignal; onProgress: (percent: number) => void },
): Promise<GuardState | undefined> {
  const own = 'running' in guard ? guard : undefined;
  const nonce = own ? own.armed.nonce : (guard as GuardState).nonce;
  const running = own ? async () => own.running() : () => isGuardRunning(guard as GuardState);
  let terminated = false;
  const aborted = new Promise<void>((resolve) => {
    if (opts.signal.aborted) resolve();
    opts.signal.addEventListener('abort', () => resolve(), { once: true });
  });
  for (;;) {
    if (opts.signal.aborted) {
      if (isWorkerShutdown(opts.signal)) throw opts.signal.reason;
      if (!terminated) {
        terminated = true;
        try {
          process.kill(guard.pid, 'SIGTERM');
        } catch {
          // gone already: its state says how it ended
        }
      }
    }
    const state = await readGuardState(dir);
    if (state?.nonce === nonce) {
      opts.onProgress(state.percent);
      if (state.outcome) return state;
    }
    if (!(await running())) {
      // Its last word may have come just before it exited.
      const last = await readGuardState(dir);
      return last?.nonce === nonce && last.outcome ? last : undefined;
    }
    // Woken by the cancellation once; after it, by the clock and the guard's exit.
    await Promise.race([sleep(FOLLOW_EVERY_MS), ...(own ? [own.exited] : []), ...(terminated ? [] : [aborted])]);
  }
}
