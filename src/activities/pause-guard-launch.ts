// The cold copy step's side of the pause guard (worker/pause-guard.ts): start it so that it
// outlives the worker, hand it its job, tell it "go" or "abort", and follow it to its outcome,
// also when an earlier attempt on another worker started it.
//
// Outliving the worker: the guard runs in a session and process group of its own (a signal to the
// worker's group never reaches it, and qemu-img is its child, not the worker's). Under systemd
// (INVOCATION_ID set: the worker is a unit's process) it also runs in a transient scope of its own
// (`systemd-run --scope`), outside the unit's cgroup, which `systemctl stop` and a restart kill
// whole (KillMode=control-group); where systemd-run fails it runs without one, and says so.
//
// Started ahead: the step starts the guard's process first thing, so that node's start and the
// guard's imports (hundreds of ms on a busy host) overlap the step's own lookups; the process waits
// for its job on stdin, and is dismissed (stdin closed) when the step adopts an earlier attempt's
// guard instead, or fails first. Lines on its stdin, JSON: {"job":{"dir","nonce"}}, then
// {"go":<ms since the epoch the guest was paused at>} or {"abort":true}.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { dirname, extname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { isGuardRunning, readGuardState, type GuardState } from './pause-guard-files.js';
import { VmsnapError } from '../shared/errors.js';

// The guard arms in well under a second (node's start, libvirt's event registration); on a loaded host, give it time.
const ARM_TIMEOUT_MS = 30_000;
// How often a follower looks at the guard's state; the guard's own child's exit wakes it at once.
const FOLLOW_EVERY_MS = 100;
/** Where a guard that never got going left what it said (e.g. systemd-run's refusal), in the temp dir. */
export const GUARD_NOT_STARTED_LOG = 'guard-not-started.log';

const HERE = fileURLToPath(import.meta.url);
/** The guard's entry beside the worker's: compiled (dist/, .js) or, run from source, through tsx (.ts). */
const GUARD_ENTRY = join(HERE, '..', '..', 'worker', `pause-guard${extname(HERE)}`);
const LOADER = extname(HERE) === '.ts' ? ['--import', import.meta.resolve('tsx')] : [];

/** The guard's command line (its stderr's file, which it moves into the temp dir with its job); in a systemd scope of its own when asked. */
export function pauseGuardCommand(log: string, scope: boolean, token: string = randomUUID()): string[] {
  const node = [process.execPath, ...LOADER, '--max-semi-space-size=1', GUARD_ENTRY, log];
  if (!scope) return node;
  // --scope runs the command itself (same pid, our pipes) in a new scope unit; --collect removes the unit once it ends.
  return ['systemd-run', '--scope', '--quiet', '--collect', `--unit=vmsnap-pause-guard-${token}`, '--description=vmsnap pause guard', '--', ...node];
}

/** Whether this process runs as a systemd unit's (systemd sets INVOCATION_ID for every unit it starts). */
export function underSystemd(env: NodeJS.ProcessEnv = process.env): boolean {
  return Boolean(env.INVOCATION_ID);
}

/**
 * The guard's environment: what virsh and qemu-img need (libvirt's own settings, and the runtime dir
 * a qemu:///session URI is found in), and nothing of the worker's (no vmsnap settings, no secrets).
 */
function guardEnv(): NodeJS.ProcessEnv {
  const wanted = (name: string) => ['PATH', 'HOME', 'LANG', 'TZ', 'USER', 'XDG_RUNTIME_DIR'].includes(name) || name.startsWith('LIBVIRT_');
  return Object.fromEntries(Object.entries(process.env).filter(([name, value]) => value !== undefined && wanted(name)));
}

/** A guard's process, started ahead of its job; this worker's child. */
export class GuardProcess {
  readonly exited: Promise<void>;
  private done = false;
  private handed = false;
  private dismissed = false;

  private constructor(
    private readonly child: ChildProcess,
    /** Started through systemd-run, in a scope of its own. */
    readonly scoped: boolean,
    /** Its stderr's file, in the snapshots dir until the job moves it into the temp dir. */
    private readonly log: string,
  ) {
    child.unref(); // the worker may exit while its guard runs on
    child.stdin?.on('error', () => undefined); // a guard that died: the follower sees it
    this.exited = new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.once('error', () => resolve());
    }).then(async () => {
      this.done = true;
      if (this.dismissed) await rm(this.log, { force: true });
    });
  }

  /** Starts a guard process (in a systemd scope under systemd) that waits for its job. */
  static async start(snapshotsDir: string, scope = underSystemd()): Promise<GuardProcess> {
    await mkdir(snapshotsDir, { recursive: true, mode: 0o711 });
    const log = join(snapshotsDir, `.pause-guard-${randomUUID()}.log`);
    const command = pauseGuardCommand(log, scope);
    const file = await open(log, 'a', 0o600);
    try {
      const child = spawn(command[0]!, command.slice(1), { detached: true, stdio: ['pipe', 'ignore', file.fd], env: guardEnv() });
      return new GuardProcess(child, scope, log);
    } finally {
      await file.close(); // the child has its own copy
    }
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  running(): boolean {
    return !this.done;
  }

  /**
   * Hands it the job in `dir` and waits until it is armed (watching QEMU's events): the state it
   * published then (an outcome already when it could not arm), or undefined when it exited first
   * (its words kept in the temp dir as GUARD_NOT_STARTED_LOG) or did not arm in time.
   */
  async arm(dir: string, nonce: string): Promise<GuardState | undefined> {
    this.handed = true;
    if (!this.done) this.send({ job: { dir, nonce } });
    const deadline = Date.now() + ARM_TIMEOUT_MS;
    for (;;) {
      const state = await readGuardState(dir);
      if (state?.nonce === nonce && state.phase !== 'arming') return state;
      if (this.done) {
        await rename(this.log, join(dir, GUARD_NOT_STARTED_LOG)).catch(() => undefined);
        return undefined;
      }
      if (Date.now() > deadline) {
        this.child.kill('SIGKILL'); // not armed: it has paused nothing
        await this.exited;
        return undefined;
      }
      await Promise.race([sleep(25), this.exited]);
    }
  }

  /** The guest is paused (or needs no pause): copy. */
  go(pausedAt: number): void {
    this.send({ go: pausedAt }, true);
  }

  /** No copy: give back a pause QEMU reported, and end. */
  abort(): void {
    this.send({ abort: true }, true);
  }

  /** Not wanted (the step adopts an earlier guard's work, or failed before the job): it exits. Harmless once it has its job. */
  dismiss(): void {
    if (this.handed || this.dismissed) return;
    this.dismissed = true;
    this.child.stdin?.end();
    if (this.done) void rm(this.log, { force: true });
  }

  private send(message: object, last = false): void {
    const line = `${JSON.stringify(message)}\n`;
    if (last) this.child.stdin?.end(line);
    else this.child.stdin?.write(line);
  }
}

/**
 * Hands the job in `dir` to the process started ahead and waits until it is armed. When that one
 * could not start in a systemd scope (systemd-run failed: no D-Bus, a policy), `warn` says so and a
 * guard without a scope takes the job.
 */
export async function launchPauseGuard(
  ahead: GuardProcess,
  dir: string,
  nonce: string,
  warn: (message: string) => void,
): Promise<GuardProcess & { armed: GuardState }> {
  let guard = ahead;
  let armed = await guard.arm(dir, nonce);
  if (!armed && guard.scoped) {
    warn(
      `the pause guard of ${dir} could not start in a systemd scope (systemd-run failed; see ${GUARD_NOT_STARTED_LOG} there): it runs in the ` +
        "worker unit's cgroup, where a stop of the unit kills it",
    );
    guard = await GuardProcess.start(dirname(dir), false);
    armed = await guard.arm(dir, nonce);
  }
  if (!armed) throw new VmsnapError('HypervisorError', `the pause guard did not start; what it said: ${join(dir, GUARD_NOT_STARTED_LOG)}`);
  return Object.assign(guard, { armed });
}

/** The cancellation that only means this worker stops (a restart, an upgrade): the guard goes on, for the next attempt. */
export function isWorkerShutdown(signal: AbortSignal): boolean {
  return signal.aborted && (signal.reason as Error | undefined)?.message === 'WORKER_SHUTDOWN';
}

/**
 * Follows the guard to its outcome: the state it ended with, or undefined when it died without
 * one (SIGKILL, OOM, a host restart). `guard` is this worker's own process, or what an earlier
 * attempt's guard published (its pid). A cancellation of the step SIGTERMs the guard, which
 * resumes the guest at once, and is followed to its end; a worker shutdown leaves it running and
 * throws the cancellation at once.
 */
export async function followPauseGuard(
  dir: string,
  guard: (GuardProcess & { armed: GuardState }) | GuardState,
  opts: { signal: AbortSignal; onProgress: (percent: number) => void },
): Promise<GuardState | undefined> {
  const own = guard instanceof GuardProcess ? guard : undefined;
  // The pid the guard itself published (under systemd-run, the process started may be its parent).
  const { nonce, pid } = guard instanceof GuardProcess ? guard.armed : guard;
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
          process.kill(pid, 'SIGTERM');
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
