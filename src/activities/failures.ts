// Turns vmsnap's typed errors into Temporal failures whose type is the error code, so that the
// workflow and clients can tell an InstanceBusy from a passing Glance outage.
import { ApplicationFailure } from '@temporalio/activity';
import { VmsnapError } from '../shared/errors.js';

export function toFailure(err: unknown): unknown {
  if (err instanceof VmsnapError) {
    return ApplicationFailure.create({ type: err.code, message: err.message, nonRetryable: !err.retryable, details: [err.details] });
  }
  return err;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AsyncFn = (...args: any[]) => Promise<unknown>;

/** Wraps every activity so a VmsnapError leaves it as a typed Temporal failure. */
export function withTypedFailures<T extends Record<string, AsyncFn>>(activities: T): T {
  const wrapped: Record<string, AsyncFn> = {};
  for (const [name, fn] of Object.entries(activities)) {
    wrapped[name] = async (...args: unknown[]) => {
      try {
        return await fn(...args);
      } catch (err) {
        throw toFailure(err);
      }
    };
  }
  return wrapped as T;
}
