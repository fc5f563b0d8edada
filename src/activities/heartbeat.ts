// Heartbeats carry progress to the Web UI and are how a cancellation reaches an activity, so a
// long step heartbeats on a timer too, even while its progress does not move.
import { Context } from '@temporalio/activity';

export interface Heartbeat {
  /** Heartbeats now, e.g. when progress moved: the SDK throttles (1 s on host workers), so this is cheap. */
  beat(): void;
  stop(): void;
}

export function keepHeartbeating(details: () => unknown, intervalMs = 2000): (() => void) & Heartbeat {
  const ctx = Context.current();
  ctx.heartbeat(details());
  const timer = setInterval(() => ctx.heartbeat(details()), intervalMs);
  const stop = () => clearInterval(timer);
  return Object.assign(stop, { stop, beat: () => ctx.heartbeat(details()) });
}
