// One of a host's snapshot slots, as Nova's max_concurrent_snapshots: held by an activity on the
// host's slot queue (whose worker runs at most N at once), which signals when it has the slot and
// holds it until the snapshot lets go. Deterministic code only.
import { CancellationScope, condition, defineSignal, log, setHandler, type ActivityOptions } from '@temporalio/workflow';
import type { InspectInput, InstanceInspection, SlotAcquired } from '../activities/inspection.js';
import { messageOf } from './failures.js';
import { onSlots } from './steps.js';
import { SLOT_ACQUIRED_SIGNAL } from '../shared/names.js';

export class HostSlot {
  private acquired = false;
  private inspection?: InstanceInspection;
  private readonly scope = new CancellationScope();
  private held?: Promise<unknown>;

  constructor(private readonly owner: string) {
    setHandler(defineSignal<[SlotAcquired]>(SLOT_ACQUIRED_SIGNAL), (acquired) => {
      this.acquired = true;
      this.inspection = acquired.inspection;
    });
  }

  /**
   * Resolves once the slot is ours, with the instance as the holder read it when it took the slot
   * (undefined when it could not read it).
   */
  async acquire(options: ActivityOptions, host: string, inspect: InspectInput): Promise<InstanceInspection | undefined> {
    this.held = this.scope
      .run(() => onSlots(options, `hold a snapshot slot of ${host}`).holdSnapshotSlot({ owner: this.owner, inspect }))
      .catch(() => undefined); // it ends when we let go
    await condition(() => this.acquired);
    return this.inspection;
  }

  /** Lets go by cancelling the holder: reaches it with its next heartbeat. */
  release(): void {
    this.scope.cancel();
  }

  /**
   * Lets go of the slot through `step`, a host step that ends the holder in its own process at
   * once; when it cannot (the holder runs elsewhere), by the cancel. Resolves once the holder has ended.
   */
  async letGo(step: () => Promise<boolean>): Promise<void> {
    const ended = await step().catch((err: unknown) => {
      log.warn('the host step did not let go of the snapshot slot: its holder is cancelled instead', { error: messageOf(err) });
      return false;
    });
    if (!ended) this.release();
    await this.released();
  }

  /**
   * Waits until the slot holder has ended. Without this a finished snapshot closes with the holder
   * still pending (cancel requested) in the Web UI and `temporal workflow describe`.
   */
  async released(): Promise<void> {
    await this.held;
  }
}
