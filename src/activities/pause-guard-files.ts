// The pause guard's files in a snapshot's temp dir (<snapshots dir>/<image id>/, 0700): the job
// the cold copy step hands it (guard-job.json), the state it keeps (guard.json) and its log
// (guard.log, what it printed on stderr). The dir outlives any one worker, so a retried step reads
// here what an earlier attempt's guard did, and whether it still runs. Both JSON files are written
// whole by rename: a reader never sees half of one. They hold no secret.
import { readFileSync } from 'node:fs';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ResumeOutcome } from './power.js';
import { bootId } from '../drivers/files.js';
import type { DiskFormat } from '../shared/types.js';

export const GUARD_JOB = 'guard-job.json';
export const GUARD_STATE = 'guard.json';
export const GUARD_LOG = 'guard.log';

/** What one guard does: written by the cold copy step before it starts the guard. */
export interface PauseGuardJob {
  /** This guard run: its state file, and the pause and resume events of its pause, carry it. */
  nonce: string;
  /** The snapshot run (`<workflow id>/<run id>`): a retry adopts only its own run's guard. */
  owner: string;
  instanceId: string;
  imageId: string;
  /** The guard's own connection to the hypervisor. */
  libvirtUri: string;
  source: { path: string; format: string };
  /** The copy's file, in this dir. */
  target: string;
  /** A set's data disks, copied after the root disk in the same pause (one point in time for all). */
  dataDisks?: GuardCopy[];
  targetFormat: DiskFormat;
  compress: boolean;
  forceShare: boolean;
  /** Whether the step pauses the guest (a running guest): the guard then resumes it. */
  pause: boolean;
  /** With pause: the guest is resumed and the copy given up this long after QEMU's STOP (0: no limit). */
  pauseBudgetMs: number;
}

/** One more disk the guard copies. */
export interface GuardCopy {
  dev: string;
  source: { path: string; format: string };
  target: string;
}

/** arming: watching QEMU's events; armed: waiting for the step's "go"; copying; done: the outcome is in. */
export type GuardPhase = 'arming' | 'armed' | 'copying' | 'done';

export interface GuardOutcome {
  /** done: the copy is complete in the job's target; failed: see failure; not-started: the step went away or gave up before "go". */
  copy: 'done' | 'failed' | 'not-started';
  failure?: { type: string; message: string };
  /** With a pause: from the guest's pause to its resume, as QEMU's STOP and RESUME events stamp them. */
  guestPauseMs: number;
  /** qemu: QEMU's events; clock: the guard's own clock (its QEMU watch failed). */
  pauseMeasuredBy?: 'qemu' | 'clock';
  /** What the guard's resume found; resumed-elsewhere: someone else resumed the guest during the copy. */
  resumeOutcome?: ResumeOutcome | 'resumed-elsewhere';
  /** The guard's resume failed (after retries): the step's failure says so, and compensation resumes. */
  resumeError?: string;
}

export interface GuardState {
  nonce: string;
  pid: number;
  /** The process's start time (/proc/<pid>/stat): with bootId, tells it from a later process with its pid. */
  procStart: string;
  bootId: string;
  phase: GuardPhase;
  /** The copy's percent (of all its disks), as qemu-img reports it. */
  percent: number;
  outcome?: GuardOutcome;
}

async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as T;
  } catch {
    return undefined; // none (yet), or the dir is gone
  }
}

async function writeWhole(file: string, value: unknown): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(value)}\n`, { mode: 0o600 });
  await rename(tmp, file);
}

export const readGuardJob = (dir: string) => readJson<PauseGuardJob>(join(dir, GUARD_JOB));
export const writeGuardJob = (dir: string, job: PauseGuardJob) => writeWhole(join(dir, GUARD_JOB), job);
export const readGuardState = (dir: string) => readJson<GuardState>(join(dir, GUARD_STATE));
export const writeGuardState = (dir: string, state: GuardState) => writeWhole(join(dir, GUARD_STATE), state);

/** A process's start time and whether it is a zombie (exited, not yet reaped); undefined when there is no such process. */
export function processStart(pid: number): { start: string; zombie: boolean } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The fields after the command name (which may hold spaces and parentheses) start at field 3, the state; starttime is field 22.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { start: fields[19] ?? '', zombie: fields[0] === 'Z' || fields[0] === 'X' };
  } catch {
    return undefined;
  }
}

/** Whether the guard that wrote this state still runs: this boot, its pid, the same process. */
export async function isGuardRunning(state: Pick<GuardState, 'pid' | 'procStart' | 'bootId'>): Promise<boolean> {
  if (state.bootId !== (await bootId())) return false;
  const proc = processStart(state.pid);
  return proc !== undefined && !proc.zombie && proc.start === state.procStart;
}

// A guard ends within a second or two of SIGTERM (it resumes at once, then waits for qemu-img to die); past this it is killed.
const STOP_TIMEOUT_MS = 30_000;

/**
 * Stops the guard that runs in this dir, if one does: SIGTERM (it resumes the guest it paused and
 * gives up its copy), and waits until it has exited. For whoever removes the dir: a guard must not
 * copy on, or resume a guest later, for a snapshot that is over. True if there was one.
 */
export async function stopPauseGuard(dir: string): Promise<boolean> {
  const state = await readGuardState(dir);
  if (!state || !(await isGuardRunning(state))) return false;
  try {
    process.kill(state.pid, 'SIGTERM');
  } catch {
    return false; // exited in between
  }
  const deadline = Date.now() + STOP_TIMEOUT_MS;
  while (await isGuardRunning(state)) {
    if (Date.now() > deadline) {
      process.kill(state.pid, 'SIGKILL');
      break;
    }
    await sleep(50);
  }
  return true;
}
