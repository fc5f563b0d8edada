// Waiting on a condition in the real-stack tests: polled, never a guessed sleep.
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Polls `check` until it answers a truthy value, and returns it; fails with `what` when none comes
 * within `ms`. An error of `check` fails at once (it is not a condition that may still come).
 */
export async function until<T>(what: string, ms: number, check: () => Promise<T | undefined | false>, everyMs = 250): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${ms / 1000} s`);
    await sleep(everyMs);
  }
}
