// Shows a snapshot's progress while the CLI waits: one line rewritten in place on a terminal;
// plain lines in a pipe or a log (one per phase change, at most one progress line every few
// seconds), so logs stay short and readable.
import { formatBytes } from '../shared/format.js';
import type { StepDetails } from './snapshots.js';

/** What a progress line is made of: the phase and its running step (a snapshot's or a restore's). */
export type WorkProgress = { phase: string } & StepDetails;

export { formatBytes } from '../shared/format.js';

export function formatDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (ms < 1000) return `${(ms / 1000).toFixed(1)} s`;
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor(s / 60) % 60).padStart(2, '0')} min`;
}

/** Time spent in each phase, in the order the workflow went through them: "converting 3 s, uploading 1 min 02 s". */
export function formatPhases(phaseDurationsMs: Partial<Record<string, number>>): string {
  return Object.entries(phaseDurationsMs)
    .map(([phase, ms]) => `${phase} ${formatDuration(ms ?? 0)}`)
    .join(', ');
}

/**
 * Bytes per second of the running step from its heartbeats. Heartbeats reach Temporal throttled,
 * so the rate is measured between heartbeat times, not between our polls.
 */
class RateMeter {
  private samples: { at: number; bytes: number }[] = [];
  private key = '';

  add(key: string, at: number, bytes: number): void {
    const last = this.samples.at(-1);
    // A new step, or a retry starting over, starts a new measurement.
    if (key !== this.key || (last && bytes < last.bytes)) {
      this.samples = [];
      this.key = key;
    }
    if (last && last.at === at) return;
    this.samples.push({ at, bytes });
    // Thirty seconds of history: recent enough to follow a change of speed, long enough to be smooth.
    while (this.samples.length > 2 && at - this.samples[0]!.at > 30_000) this.samples.shift();
  }

  /** Bytes per second, once two heartbeats apart in time are known. */
  rate(): number | undefined {
    const first = this.samples[0];
    const last = this.samples.at(-1);
    if (!first || !last || last.at <= first.at) return undefined;
    return ((last.bytes - first.bytes) * 1000) / (last.at - first.at);
  }
}

export interface ProgressLine {
  phase: string;
  percent?: number;
  bytesDone?: number;
  bytesTotal?: number;
  bytesPerSecond?: number;
  etaMs?: number;
  /** Shown instead of speed and ETA: what the step waits for. */
  note?: string;
}

export class ProgressView {
  private readonly meter = new RateMeter();
  private lastPhase: string | undefined;
  private lastPlainProgressAt = 0;
  private lastPlainPercent: number | undefined;
  private lastPlainNote: string | undefined;
  private lineOpen = false;

  constructor(
    private readonly out: NodeJS.WritableStream & { columns?: number },
    private readonly mode: 'tty' | 'plain',
    /** Least time between two plain progress lines. */
    private readonly plainIntervalMs = 5000,
    private readonly now: () => number = Date.now,
  ) {}

  /** What to show for a progress report: phase, percent, bytes, speed and time left. */
  line(p: WorkProgress): ProgressLine {
    // A set's disks moving side by side: each one's percent beside the phase.
    const disks = p.disks?.map((d) => `${d.dev} ${Math.floor(d.percent)}%`).join(', ');
    const line: ProgressLine = { phase: disks ? `${p.phase} [${disks}]` : p.phase };
    if (p.percent === undefined || p.bytesDone === undefined || p.bytesTotal === undefined) {
      if (p.note) line.note = p.note; // a wait without bytes (a guest shutting down)
      return line;
    }
    const at = p.step?.lastHeartbeatAt ? Date.parse(p.step.lastHeartbeatAt) : this.now();
    this.meter.add(`${p.phase}/${p.step?.activityType}/${p.step?.attempt}`, at, p.bytesDone);
    const rate = this.meter.rate();
    Object.assign(line, { percent: p.percent, bytesDone: p.bytesDone, bytesTotal: p.bytesTotal });
    const retrying = retryText(p);
    if (retrying && p.bytesDone === 0) {
      // An attempt after a failed one, not under way yet: "0 % (0 B)" would read as a stall.
      line.note = retrying;
      return line;
    }
    if (p.note) {
      // Every byte is out and the other side has not answered yet: a speed or an ETA would lie.
      line.note = p.note;
      return line;
    }
    if (rate !== undefined && rate > 0) {
      line.bytesPerSecond = rate;
      line.etaMs = ((p.bytesTotal - p.bytesDone) * 1000) / rate;
    }
    return line;
  }

  update(p: WorkProgress): void {
    const line = this.line(p);
    if (this.mode === 'tty') {
      const text = describeLine(line, 'tty');
      // A pty without a size (script(1), some CI runners) reports 0 columns.
      const width = this.out.columns || 100;
      // \r and erase-line: the same terminal line shows the latest state.
      this.out.write(`\r\x1b[2K${text.length >= width ? text.slice(0, width - 1) : text}`);
      this.lineOpen = true;
      return;
    }
    if (line.phase !== this.lastPhase) {
      this.lastPhase = line.phase;
      this.lastPlainPercent = undefined;
      this.lastPlainNote = line.percent === undefined ? line.note : undefined;
      this.out.write(`${clock(this.now())} ${this.lastPlainNote ? describeLine(line, 'plain') : line.phase}\n`);
      this.lastPlainProgressAt = this.now();
      return;
    }
    // A wait that says what it waits for, once (it comes with the step's first heartbeat).
    if (line.percent === undefined && line.note && line.note !== this.lastPlainNote) {
      this.lastPlainNote = line.note;
      this.out.write(`${clock(this.now())} ${describeLine(line, 'plain')}\n`);
      return;
    }
    if (line.percent === undefined || line.percent === this.lastPlainPercent) return;
    if (this.now() - this.lastPlainProgressAt < this.plainIntervalMs) return;
    this.lastPlainProgressAt = this.now();
    this.lastPlainPercent = line.percent;
    this.out.write(`${clock(this.now())} ${describeLine(line, 'plain')}\n`);
  }

  /** The last word: how the snapshot ended, then the line is closed. */
  finish(status: string): void {
    if (this.mode === 'tty') {
      this.out.write(`\r\x1b[2K${status}`);
      this.lineOpen = true;
    } else if (status !== this.lastPhase) {
      this.lastPhase = status;
      this.out.write(`${clock(this.now())} ${status}\n`);
    }
    this.end();
  }

  /** Ends the terminal line so what follows starts on a line of its own. */
  end(): void {
    if (this.lineOpen) this.out.write('\n');
    this.lineOpen = false;
  }
}

/** "retrying (attempt 2 of 8)" for a step past its first attempt; undefined for a first attempt. */
export function retryText(p: Pick<WorkProgress, 'step'>): string | undefined {
  return p.step && p.step.attempt > 1 ? `retrying (${attemptText(p.step)})` : undefined;
}

/** "attempt 2 of 8" ("attempt 2" when the attempts are not limited). */
export function attemptText(step: { attempt: number; maximumAttempts?: number }): string {
  return `attempt ${step.attempt}${step.maximumAttempts ? ` of ${step.maximumAttempts}` : ''}`;
}

function clock(ms: number): string {
  return new Date(ms).toTimeString().slice(0, 8);
}

export function describeLine(line: ProgressLine, mode: 'tty' | 'plain'): string {
  if (line.percent === undefined || line.bytesDone === undefined || line.bytesTotal === undefined) {
    return line.note ? `${line.phase}: ${line.note}` : line.phase;
  }
  const pct = `${Math.floor(line.percent)}%`;
  const bytes = `${formatBytes(line.bytesDone)} of ${formatBytes(line.bytesTotal)}`;
  const speed = line.note ?? (line.bytesPerSecond !== undefined ? `${formatBytes(line.bytesPerSecond)}/s` : undefined);
  const eta = line.note === undefined && line.etaMs !== undefined ? `ETA ${formatDuration(line.etaMs)}` : undefined;
  if (mode === 'plain') return `${line.phase} ${pct} (${[bytes, speed, eta].filter(Boolean).join(', ')})`;
  const width = 20;
  const filled = Math.max(0, Math.min(width, Math.round((line.percent / 100) * width)));
  const bar = `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}]`;
  return [line.phase.padEnd(11), bar, pct.padStart(4), bytes, speed ?? '', eta ?? ''].filter(Boolean).join('  ');
}
