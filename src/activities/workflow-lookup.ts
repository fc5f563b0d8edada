// What activities need from Temporal itself, behind a small interface: the reconciler asks which
// snapshots still run; a host's slot holder tells a snapshot it may go on.
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import { SLOT_ACQUIRED_SIGNAL } from '../shared/names.js';
import { IMAGE_ID } from '../shared/search-attributes.js';
import type { SlotAcquired } from './inspection.js';

export type RunStatus = 'running' | 'completed' | 'closed' | 'unknown';

export interface WorkflowLookup {
  /** Status of the run that owns a task state: "<workflow id>/<run id>". */
  runStatus(owner: string): Promise<RunStatus>;
  /**
   * Image ids of the snapshots running now (from visibility, which may lag a little), and of the
   * images they replaced (stuck saving): the first of those names the snapshot's temp dir.
   */
  runningSnapshotImageIds(): Promise<string[]>;
  /** Tells the snapshot run "<workflow id>/<run id>" that it holds a slot on its host (with what the holder found, if it could look). */
  signalSlotAcquired(owner: string, acquired: SlotAcquired): Promise<void>;
}

function splitOwner(owner: string): [string, string] | undefined {
  // Run ids are UUIDs; a workflow id may itself contain "/".
  const cut = owner.lastIndexOf('/');
  return cut > 0 ? [owner.slice(0, cut), owner.slice(cut + 1)] : undefined;
}

export class TemporalWorkflowLookup implements WorkflowLookup {
  constructor(private readonly client: Client) {}

  async runStatus(owner: string): Promise<RunStatus> {
    const ids = splitOwner(owner);
    if (!ids) return 'unknown';
    try {
      const { status } = await this.client.workflow.getHandle(...ids).describe();
      if (status.name === 'RUNNING') return 'running';
      return status.name === 'COMPLETED' ? 'completed' : 'closed';
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) return 'unknown';
      throw err;
    }
  }

  async runningSnapshotImageIds(): Promise<string[]> {
    const ids: string[] = [];
    for await (const wf of this.client.workflow.list({ query: `WorkflowType = 'snapshotInstance' AND ExecutionStatus = 'Running'` })) {
      const id = wf.typedSearchAttributes.get(IMAGE_ID);
      if (id) ids.push(id);
      const replaced = wf.memo?.replacedImageIds;
      if (Array.isArray(replaced)) ids.push(...replaced.filter((r): r is string => typeof r === 'string'));
    }
    return ids;
  }

  async signalSlotAcquired(owner: string, acquired: SlotAcquired): Promise<void> {
    const ids = splitOwner(owner);
    if (ids) await this.client.workflow.getHandle(...ids).signal(SLOT_ACQUIRED_SIGNAL, acquired);
  }
}
