// Heartbeats carry progress to the Web UI and are how a cancellation reaches an activity, so a
// long step heartbeats on a timer too, even while its progress does not move.
import { Context } from '@temporalio/activity';
import { formatBytes } from '../shared/format.js';

export interface Heartbeat {
  /** Heartbeats now, e.g. when progress moved: the SDK throttles (1 s on host workers), so this is cheap. */
  beat(): void;
  stop(): void;
}

export function keepHeartbeating(details: () => unknown, intervalMs = 2000): (() => void) & Heartbeat {
  const ctx = Context.current();
  const beat = () => ctx.heartbeat(readable(details(), ctx.info.attempt));
  beat();
  const timer = setInterval(beat, intervalMs);
  const stop = () => clearInterval(timer);
  return Object.assign(stop, { stop, beat });
}

/**
 * Progress details with a line a person reads first (the Web UI shows heartbeat details as JSON):
 * "uploading 42% (430.0 MiB of 1.0 GiB), attempt 2", or a wait's "stopping: <what it waits for>".
 */
export function readable(details: unknown, attempt: number): unknown {
  const d = details as { phase?: unknown; percent?: unknown; bytesDone?: unknown; bytesTotal?: unknown; note?: unknown; dev?: unknown } | undefined;
  if (typeof d !== 'object' || d === null || typeof d.phase !== 'string') return details;
  const phase = typeof d.dev === 'string' ? `${d.phase} ${d.dev}` : d.phase;
  const again = attempt > 1 ? `, attempt ${attempt}` : '';
  const note = typeof d.note === 'string' ? d.note : undefined;
  if (typeof d.percent === 'number' && typeof d.bytesDone === 'number' && typeof d.bytesTotal === 'number') {
    const bytes = `${formatBytes(d.bytesDone)} of ${formatBytes(d.bytesTotal)}${note ? `, ${note}` : ''}`;
    return { summary: `${phase} ${Math.floor(d.percent)}% (${bytes})${again}`, ...d };
  }
  return note ? { summary: `${phase}: ${note}${again}`, ...d } : details;
}

type Activities = Record<string, (...args: never[]) => Promise<unknown>>;

/**
 * The named activities, heartbeating every second from their start until they end. With a
 * heartbeat timeout on their options, a short host step whose task went to a worker that died is
 * tried again after that timeout, not after its whole start-to-close timeout.
 */
export function heartbeatingFromStart<A extends Activities>(activities: A, names: readonly (keyof A & string)[]): A {
  const wrapped: Activities = { ...activities };
  for (const name of names) {
    const step = activities[name]!;
    wrapped[name] = async (...args) => {
      const stop = keepHeartbeating(() => undefined, 1000);
      try {
        return await step(...args);
      } finally {
        stop();
      }
    };
  }
  return wrapped as A;
}
