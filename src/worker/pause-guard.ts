// The pause guard: a process of its own on the host that owns a cold copy's pause, so that a
// paused guest never waits for a worker. The cold copy step (activities/cold-copy.ts) starts it
// detached (its own session and process group; under systemd in a scope of its own, outside the
// worker unit's cgroup) and hands it its job; once the guard watches QEMU's events, the step pauses
// the guest and says "go". The guard copies the disk with qemu-img (its child: a dead worker takes
// no copy with it) and resumes the guest at the copy's end, at the pause budget's end counted from
// QEMU's STOP, on SIGTERM (the step's cancellation), and at once when the step goes away before
// "go". It never resumes a guest someone else resumed meanwhile: that copy is no longer one point
// in time, and is given up. Its outcome (copy done or failed, QEMU's measured pause, what the
// resume found) stays in the temp dir, where the step, or its retry on another worker, finds it.
// It talks to libvirt and qemu-img only: no Temporal, no store, no cloud, no secret.
//
//   node dist/worker/pause-guard.js <its stderr's file, moved into the temp dir with the job>
//   stdin, one JSON object a line (activities/pause-guard-launch.ts): {"job":{"dir","nonce"}}, then
//   {"go":<ms since the epoch the step paused at>} or {"abort":true}; stdin's end before the job:
//   not wanted (it exits); before "go": the step is gone
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { rmSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  GUARD_LOG,
  processStart,
  readGuardJob,
  writeGuardState,
  type GuardOutcome,
  type GuardState,
  type PauseGuardJob,
} from '../activities/pause-guard-files.js';
import { resumeIfPresent } from '../activities/power.js';
import { bootId } from '../drivers/files.js';
import type { Hypervisor, PauseEvent, PauseWatch } from '../drivers/hypervisor.js';
import { LibvirtHypervisor } from '../drivers/libvirt.js';
import * as qemuImg from '../drivers/qemu-img.js';
import { VmsnapError } from '../shared/errors.js';

type Command = { kind: 'go'; pausedAt: number } | { kind: 'abort' } | { kind: 'gone' };
type StopReason = 'budget' | 'signal' | 'resumed-elsewhere';

// A step that went away before "go" may have sent a suspend still on its way: its STOP gets this long.
const LATE_STOP_MS = 2000;
// A resume that fails is tried again this often (then the step's failure says so, and compensation resumes).
const RESUME_ATTEMPTS = 3;
// Progress reaches the state file at most this often; phases at once.
const PROGRESS_EVERY_MS = 500;

/** The step's words on stdin, one JSON object a line; undefined once stdin has ended. */
class StepWords {
  private readonly lines: string[] = [];
  private ended = false;
  private wake: () => void = () => undefined;

  constructor() {
    const reader = createInterface({ input: process.stdin });
    reader.on('line', (line) => {
      this.lines.push(line);
      this.wake();
    });
    reader.on('close', () => {
      this.ended = true;
      this.wake();
    });
  }

  async next(): Promise<Record<string, unknown> | undefined> {
    for (;;) {
      const line = this.lines.shift();
      if (line !== undefined) {
        try {
          return JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue; // not a word of the step's
        }
      }
      if (this.ended) return undefined;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  /** The step's "go" or "abort"; "gone" when stdin ends first. */
  async command(): Promise<Command> {
    for (;;) {
      const word = await this.next();
      if (!word) return { kind: 'gone' };
      if (typeof word.go === 'number') return { kind: 'go', pausedAt: word.go };
      if (word.abort) return { kind: 'abort' };
    }
  }
}

class PauseGuard {
  private readonly state: GuardState;
  private readonly copyStop = new AbortController();
  private stopReason: StopReason | undefined;
  private stopped!: () => void;
  private readonly stop$ = new Promise<void>((resolve) => (this.stopped = resolve));
  /** QEMU's STOP (ms since the epoch): the guest's pause began. */
  private stoppedAt: number | undefined;
  /** The step said "go" after pausing the guest. */
  private went = false;
  private resumedElsewhere = false;
  private resuming = false;
  private resumed: Promise<Pick<GuardOutcome, 'resumeOutcome' | 'resumeError'>> | undefined;
  private resumedAt: number | undefined;
  private budgetFrom: number | undefined;
  private budgetTimer: NodeJS.Timeout | undefined;
  private lastWrite = 0;
  private writes = Promise.resolve();

  constructor(
    private readonly job: PauseGuardJob,
    private readonly dir: string,
    private readonly hypervisor: Hypervisor,
    self: Pick<GuardState, 'pid' | 'procStart' | 'bootId'>,
    private readonly words: StepWords,
  ) {
    this.state = { nonce: job.nonce, ...self, phase: 'arming', percent: 0 };
  }

  /** SIGTERM, the budget, or a resume by someone else: the copy ends, and the guest is given back (unless someone else did). */
  stop(reason: StopReason): void {
    this.stopReason ??= reason;
    this.copyStop.abort();
    if (reason !== 'resumed-elsewhere' && this.pausedByUs()) void this.resumeOnce();
    this.stopped();
  }

  async run(): Promise<void> {
    await this.publish({ phase: 'arming' });
    let watch: PauseWatch | undefined;
    let outcome: GuardOutcome;
    try {
      if (this.job.pause) watch = await this.hypervisor.watchPauses(this.job.instanceId, (e) => this.onPauseEvent(e));
      await this.publish({ phase: 'armed' });
      outcome = await this.copyWhenTold();
    } catch (err) {
      outcome = { copy: 'not-started', failure: failureOf(err), guestPauseMs: 0 };
    }
    clearTimeout(this.budgetTimer);
    const resume = this.resumed ?? (this.pausedByUs() ? this.resumeOnce() : undefined);
    if (resume) Object.assign(outcome, await resume);
    else if (this.resumedElsewhere) outcome.resumeOutcome = 'resumed-elsewhere';
    Object.assign(outcome, await this.measuredPause(watch));
    await this.publish({ phase: 'done', outcome });
  }

  private async copyWhenTold(): Promise<GuardOutcome> {
    const command = await Promise.race([this.words.command(), this.stop$.then((): Command => ({ kind: 'abort' }))]);
    if (command.kind === 'gone' && this.job.pause) await this.lateStop();
    // Over budget or resumed by someone else before "go": a failure of the copy, not a step to start over.
    if (this.stopReason === 'budget' || this.stopReason === 'resumed-elsewhere') return { copy: 'failed', failure: this.stopFailure(), guestPauseMs: 0 };
    if (command.kind !== 'go' || this.stopReason) {
      const why = command.kind === 'gone' ? 'the cold copy step went away' : 'the cold copy step gave up';
      return { copy: 'not-started', failure: { type: 'HypervisorError', message: `${why} before the copy began` }, guestPauseMs: 0 };
    }
    this.went = true;
    if (this.job.pause && this.job.pauseBudgetMs > 0) this.armBudget(this.stoppedAt ?? command.pausedAt);
    await this.publish({ phase: 'copying' });
    // The root disk, then each data disk of a set, all inside the one pause.
    const copies = [{ source: this.job.source, target: this.job.target }, ...(this.job.dataDisks ?? [])];
    try {
      for (const [i, copy] of copies.entries()) {
        await qemuImg.convert({
          source: copy.source.path,
          sourceFormat: copy.source.format,
          target: copy.target,
          targetFormat: this.job.targetFormat,
          compress: this.job.compress,
          forceShare: this.job.forceShare,
          onProgress: (percent) => void this.progress((i * 100 + percent) / copies.length),
          signal: this.copyStop.signal,
          fsync: false, // a temp file: see ConvertedDisk.bootId
        });
      }
    } catch (err) {
      return { copy: 'failed', failure: this.stopFailure() ?? failureOf(err), guestPauseMs: 0 };
    }
    // Stopped as qemu-img ended: the guest may have run again before its last reads (the resume
    // does not wait for qemu-img to die), so the copy may hold writes from after the pause.
    if (this.stopReason) return { copy: 'failed', failure: this.stopFailure(), guestPauseMs: 0 };
    return { copy: 'done', guestPauseMs: 0 };
  }

  private onPauseEvent(event: PauseEvent): void {
    if (event.type === 'STOP' && this.stoppedAt === undefined) {
      this.stoppedAt = event.at;
      // The budget runs from the pause itself, "go" or not.
      if (this.job.pauseBudgetMs > 0) this.armBudget(event.at);
    } else if (event.type === 'RESUME' && this.stoppedAt !== undefined && !this.resuming && !this.resumedElsewhere) {
      this.resumedElsewhere = true;
      this.stop('resumed-elsewhere');
    }
  }

  /** The budget's end, from the earliest pause time known (QEMU's STOP, or the step's word). */
  private armBudget(pausedAt: number): void {
    if (this.budgetFrom !== undefined && this.budgetFrom <= pausedAt) return;
    this.budgetFrom = pausedAt;
    clearTimeout(this.budgetTimer);
    this.budgetTimer = setTimeout(() => this.stop('budget'), Math.max(0, pausedAt + this.job.pauseBudgetMs - Date.now()));
  }

  /** Whether the guest is paused by this guard's step: the step said so, or QEMU did; and nobody else resumed it since. */
  private pausedByUs(): boolean {
    return this.job.pause && !this.resumedElsewhere && (this.went || this.stoppedAt !== undefined);
  }

  /** The step went away without a word: a suspend it sent may still land, and is then given back. */
  private async lateStop(): Promise<void> {
    const until = Date.now() + LATE_STOP_MS;
    while (this.stoppedAt === undefined && Date.now() < until && !this.stopReason) await sleep(50);
  }

  private resumeOnce(): Promise<Pick<GuardOutcome, 'resumeOutcome' | 'resumeError'>> {
    this.resumed ??= (async () => {
      this.resuming = true;
      for (let attempt = 1; ; attempt++) {
        try {
          const resumeOutcome = await resumeIfPresent(this.hypervisor, this.job.instanceId);
          this.resumedAt = Date.now();
          return { resumeOutcome };
        } catch (err) {
          if (attempt >= RESUME_ATTEMPTS) return { resumeError: (err as Error).message };
          await sleep(200 * attempt);
        }
      }
    })();
    return this.resumed;
  }

  /** The pause as QEMU stamped it; the guard's own clock when its watch failed. */
  private async measuredPause(watch: PauseWatch | undefined): Promise<Pick<GuardOutcome, 'guestPauseMs' | 'pauseMeasuredBy'>> {
    if (!this.job.pause) return { guestPauseMs: 0 };
    const watched = await watch?.stop().catch(() => undefined);
    if (watched) return { guestPauseMs: watched.pausedMs, pauseMeasuredBy: 'qemu' };
    const from = this.stoppedAt ?? this.budgetFrom;
    return { guestPauseMs: from && this.resumedAt ? this.resumedAt - from : 0, pauseMeasuredBy: 'clock' };
  }

  private stopFailure(): GuardOutcome['failure'] {
    switch (this.stopReason) {
      case 'budget':
        return { type: 'PauseBudgetExceeded', message: `the copy took longer than the pause budget of ${this.job.pauseBudgetMs} ms; the guest was resumed` };
      case 'resumed-elsewhere':
        return {
          type: 'HypervisorError',
          message: 'the guest was resumed by someone else during the copy, so the copy is not one point in time; it was given up',
        };
      case 'signal':
        return { type: 'ConvertFailed', message: 'the pause guard was stopped (SIGTERM) during the copy; the guest was resumed' };
      default:
        return undefined;
    }
  }

  private async progress(percent: number): Promise<void> {
    this.state.percent = percent;
    if (Date.now() - this.lastWrite >= PROGRESS_EVERY_MS) await this.publish({});
  }

  /** Writes the state, one write after another (progress and phases may overlap). */
  private publish(change: Partial<GuardState>): Promise<void> {
    Object.assign(this.state, change);
    this.lastWrite = Date.now();
    const state = structuredClone(this.state);
    // The dir may be gone (the snapshot is over and its files removed): nothing is left to tell.
    const write = () => writeGuardState(this.dir, state).catch((err: Error) => console.error(`pause guard: state not written: ${err.message}`));
    this.writes = this.writes.then(write);
    return this.writes;
  }
}

function failureOf(err: unknown): NonNullable<GuardOutcome['failure']> {
  if (err instanceof VmsnapError) return { type: err.code, message: err.message };
  return { type: 'ConvertFailed', message: (err as Error).message ?? String(err) };
}

async function main(): Promise<void> {
  const [log] = process.argv.slice(2);
  if (!log) throw new Error('usage: pause-guard <log file>');
  // From the first instant: a SIGTERM before there is a guard ends the process (nothing is paused yet).
  let onSignal = (): void => {
    rmSync(log, { force: true });
    process.exit(0);
  };
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(signal, () => onSignal());
  const words = new StepWords();
  const job = (await words.next())?.job as { dir?: unknown; nonce?: unknown } | undefined;
  if (typeof job?.dir !== 'string' || typeof job.nonce !== 'string') {
    await rm(log, { force: true }); // dismissed before its job: nothing to tell
    return;
  }
  const dir = job.dir;
  await rename(log, join(dir, GUARD_LOG)).catch(() => undefined);
  const found = await readGuardJob(dir);
  // A newer attempt wrote another job here: this guard is not wanted.
  if (found?.nonce !== job.nonce) throw new Error(`no job ${job.nonce} in ${dir}`);
  const self = { pid: process.pid, procStart: processStart(process.pid)?.start ?? '', bootId: await bootId() };
  const guard = new PauseGuard(found, dir, new LibvirtHypervisor({ uri: found.libvirtUri }), self, words);
  onSignal = () => guard.stop('signal');
  await guard.run();
}

main().then(
  () => process.exit(0),
  (err: Error) => {
    console.error(`pause guard: ${err.message}`); // stderr is its log file: written at once
    process.exit(1);
  },
);
