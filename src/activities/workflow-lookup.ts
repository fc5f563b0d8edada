// What the reconciler needs to know from Temporal, behind a small interface.
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import { IMAGE_ID } from '../shared/search-attributes.js';

export type RunStatus = 'running' | 'completed' | 'closed' | 'unknown';

export interface WorkflowLookup {
  /** Status of the run that owns a task state: "<workflow id>/<run id>". */
  runStatus(owner: string): Promise<RunStatus>;
  /** Image ids of the snapshots running now (from visibility, which may lag a little). */
  runningSnapshotImageIds(): Promise<string[]>;
}

export class TemporalWorkflowLookup implements WorkflowLookup {
  constructor(private readonly client: Client) {}

  async runStatus(owner: string): Promise<RunStatus> {
    // Run ids are UUIDs; a workflow id may itself contain "/".
    const cut = owner.lastIndexOf('/');
    if (cut <= 0) return 'unknown';
    try {
      const { status } = await this.client.workflow.getHandle(owner.slice(0, cut), owner.slice(cut + 1)).describe();
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
    }
    return ids;
  }
}
