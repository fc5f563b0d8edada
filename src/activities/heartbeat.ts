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
