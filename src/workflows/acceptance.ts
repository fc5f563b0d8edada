// "Accepted before answering": Nova takes the task state before it answers 202, and answers 409
// when it cannot. A snapshot or restore answers its `accepted` update once its task state is taken,
// or with the failure that refused it, so a client that starts one with update-with-start knows
// the outcome before it answers anyone. Deterministic code only.
import { ApplicationFailure, CancellationScope, allHandlersFinished, condition, defineUpdate, setHandler, workflowInfo } from '@temporalio/workflow';
import { failureTypeOfCause } from '../shared/failures.js';
import { ACCEPTED_UPDATE } from '../shared/names.js';
import type { Acceptance } from '../shared/types.js';

export const acceptedUpdate = defineUpdate<Acceptance>(ACCEPTED_UPDATE);

type Outcome = { accepted: Acceptance } | { refused: ApplicationFailure };

/** The run's answer to `accepted`: given once, by accept() or refuse(), whichever comes first. */
export class AcceptanceGate {
  private outcome?: Outcome;

  constructor() {
    // Registered first thing: update-with-start delivers the update with the start itself.
    setHandler(acceptedUpdate, async () => {
      await condition(() => this.outcome !== undefined);
      const outcome = this.outcome!;
      if ('refused' in outcome) throw outcome.refused;
      return outcome.accepted;
    });
  }

  /** Whether the request was accepted (its task state taken): a run that ends before was refused. */
  get isAccepted(): boolean {
    return this.outcome !== undefined && 'accepted' in this.outcome;
  }

  /** The task state is taken: the request is accepted. */
  accept(what: Pick<Acceptance, 'instanceId' | 'imageId' | 'taskState'>): void {
    const { workflowId, runId } = workflowInfo();
    this.outcome ??= { accepted: { ...what, workflowId, runId } };
  }

  /**
   * The run ends before it was accepted: its failure is the answer (nothing when it was accepted
   * already). Resolves once the answer is out: a run that ended first would leave it unsaid.
   */
  async refuse(failure: unknown): Promise<void> {
    this.outcome ??= { refused: asApplicationFailure(failure) };
    await CancellationScope.nonCancellable(() => condition(allHandlersFinished));
  }
}

/** An update fails with an ApplicationFailure only (anything else would fail the workflow task). */
function asApplicationFailure(failure: unknown): ApplicationFailure {
  if (failure instanceof ApplicationFailure) return failure;
  const message = failure instanceof Error ? failure.message : String(failure);
  return ApplicationFailure.create({ type: failureTypeOfCause(failure), message, nonRetryable: true });
}
