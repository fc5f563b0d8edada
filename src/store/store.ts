// vmsnap's own records: instance inventory, task state, faults and action events, plus the
// hosts that run workers. SQLite is the embedded default; PostgreSQL implements the same.

/** Nova's task states for a snapshot and a restore (rebuild); null is Nova's None (no task in progress). */
export type TaskState =
  'image_snapshot_pending' | 'image_snapshot' | 'image_pending_upload' | 'image_uploading' | 'rebuilding' | 'rebuild_block_device_mapping' | 'rebuild_spawning';

export const REBUILD_TASK_STATES: readonly TaskState[] = ['rebuilding', 'rebuild_block_device_mapping', 'rebuild_spawning'];

export interface InstanceRecord {
  id: string;
  name: string;
  host: string;
  powerState: string;
  taskState: TaskState | null;
  /** Who set the task state (snapshot workflow id and run id): lets a reconciler find orphans. */
  taskOwner: string | null;
  baseImageRef: string | null;
  /**
   * Who owns it, as the domain's metadata says (Nova's <nova:owner>, else vmsnap's own): the
   * Keystone project and user, with their names when the metadata gives them. Null when it does
   * not say: then only admins see it through the API.
   */
  projectId: string | null;
  userId: string | null;
  projectName: string | null;
  userName: string | null;
  /** ISO time discovery first saw it. */
  createdAt: string;
  /** ISO time of the last discovery that saw it, or of the last task state change. */
  updatedAt: string;
  /** ISO time discovery last found it missing from its host: it no longer exists there. */
  deletedAt: string | null;
}

export interface InstanceFault {
  instanceId: string;
  code: string;
  message: string;
  details: Record<string, unknown>;
  createdAt: string;
}

export interface InstanceActionEvent {
  instanceId: string;
  action: string; // 'createImage' | 'rebuild'
  event: string; // 'start' | 'finish' | 'error'
  requestId: string; // workflow id
  details: Record<string, unknown>;
  createdAt: string;
}

export interface DiscoveredInstance {
  id: string;
  name: string;
  powerState: string;
  baseImageRef?: string;
  /** The owner, from the domain's metadata; absent when it names none (a sync then clears it). */
  projectId?: string;
  userId?: string;
  projectName?: string;
  userName?: string;
}

export interface Store {
  /** Creates the schema if needed. */
  migrate(): Promise<void>;
  /**
   * Records what a host's discovery saw: upserts these instances on that host (an instance seen
   * on another host moves here) and marks the host's other instances deleted. Task state and the
   * time it was first seen are kept; its owner is what the domain says now.
   */
  syncHostInstances(host: string, instances: DiscoveredInstance[]): Promise<void>;
  /** By instance uuid, or else by exact name; deleted instances are not returned. */
  findInstance(ref: string): Promise<InstanceRecord | undefined>;
  getInstance(id: string): Promise<InstanceRecord | undefined>;
  /** The inventory by name (then id); instances found deleted only when asked. */
  listInstances(options?: { includeDeleted?: boolean }): Promise<InstanceRecord[]>;
  /** Instances with a task state set (for reconciliation). */
  listInstancesWithTask(): Promise<InstanceRecord[]>;
  /**
   * Atomic compare-and-swap: sets task state and owner only if the current task state equals
   * `expected` (null = None) and, when expected is not null, the owner equals `owner`. A task is
   * never started (expected None) on an instance discovery found deleted.
   * Returns false, changing nothing, otherwise.
   */
  compareAndSwapTaskState(instanceId: string, expected: TaskState | null, next: TaskState | null, owner: string): Promise<boolean>;
  /** Sets task state None if `owner` holds it, whatever the state. False when someone else holds it. */
  releaseTaskState(instanceId: string, owner: string): Promise<boolean>;
  recordFault(fault: Omit<InstanceFault, 'createdAt'>): Promise<void>;
  listFaults(instanceId: string): Promise<InstanceFault[]>;
  recordEvent(event: Omit<InstanceActionEvent, 'createdAt'>): Promise<void>;
  listEvents(instanceId: string): Promise<InstanceActionEvent[]>;
  /** A host worker says it is alive and which task queue it serves. */
  registerHost(host: string, taskQueue: string): Promise<void>;
  listHosts(): Promise<{ host: string; taskQueue: string; seenAt: string }[]>;
  close(): Promise<void>;
}
