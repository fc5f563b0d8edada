// The undo stack of a saga, and the one way a step is tried whose failure must not stop the steps
// after it (compensation, the reconciler's items). Deterministic code only.
import { log } from '@temporalio/workflow';
import { messageOf } from './failures.js';

/** Runs `step`; a failure is returned as its message, not thrown. */
export async function attempt(step: () => Promise<unknown>): Promise<string | undefined> {
  try {
    await step();
    return undefined;
  } catch (err) {
    return messageOf(err);
  }
}

interface Compensation {
  what: string;
  undo: () => Promise<unknown>;
  guest: boolean;
  dropped: boolean;
}

/**
 * The saga's undo steps. Each is pushed as its step is scheduled, not when it completes: a step
 * counts from that moment, since its result may be lost while its effect is real. `run` undoes in
 * reverse order, except that what gives the guest back (thaw, resume, start) goes first of all: a
 * guest does not wait for cleanup. A step that is done with (the guest resumed, the image verified)
 * is dropped. An undo step that fails is logged and the others still run; what it leaves is the
 * reconciler's. Run it in a non-cancellable scope.
 */
export class Compensations {
  private readonly stack: Compensation[] = [];

  constructor(private readonly context: Record<string, unknown>) {}

  push(what: string, undo: () => Promise<unknown>, opts: { guest?: boolean } = {}): { drop(): void } {
    const entry: Compensation = { what, undo, guest: opts.guest ?? false, dropped: false };
    this.stack.push(entry);
    return {
      drop() {
        entry.dropped = true;
      },
    };
  }

  async run(): Promise<void> {
    const pending = this.stack.filter((c) => !c.dropped).reverse();
    for (const c of [...pending.filter((c) => c.guest), ...pending.filter((c) => !c.guest)]) await this.attempt(c.what, c.undo);
  }

  /** Runs one undo step; a failure is logged, not thrown. */
  async attempt(what: string, step: () => Promise<unknown>): Promise<void> {
    const error = await attempt(step);
    if (error !== undefined) log.error(`compensation step failed: ${what}`, { ...this.context, error });
  }
}
