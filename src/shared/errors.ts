// Typed errors. Each carries a stable code (it becomes the Temporal failure type, so clients can
// switch on it) and a message that tells an operator what to do. Whether a retry can help is the
// code's, in the table of failures (./failures.ts).
import { ERRORS, type ErrorCode } from './failures.js';

export type { ErrorCode } from './failures.js';

export class VmsnapError extends Error {
  /** True when the same call may succeed later (network blip, 5xx, busy service). */
  readonly retryable: boolean;

  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
    /** For the codes whose retryability is 'transient': whether this one is. */
    options: { transient?: boolean } = {},
  ) {
    super(message);
    this.name = code;
    const rule = ERRORS[code].retryable;
    this.retryable = rule === 'transient' ? options.transient === true : rule;
  }
}
