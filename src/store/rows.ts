// The stores' rows and how they become records, for SQLite and PostgreSQL alike. SQLite hands
// times back as ISO strings and details as JSON text; PostgreSQL as Date and parsed json.
import type { InstanceActionEvent, InstanceFault, InstanceRecord, TaskState } from './store.js';

type Time = string | Date;
type Details = string | Record<string, unknown>;

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export const INSTANCE_COLUMNS =
  'id, name, host, power_state, task_state, task_owner, base_image_ref, project_id, user_id, project_name, user_name, created_at, updated_at, deleted_at';
export const FAULT_COLUMNS = 'instance_id, code, message, details, created_at';
export const EVENT_COLUMNS = 'instance_id, action, event, request_id, details, created_at';

/**
 * Conditions that find a row equal to a new one: recording it again is a no-op. Steps are
 * at-least-once (a local activity reruns when its workflow task fails), so a fault or event may be
 * recorded twice; the instance's history must show it once. `param(i)` is the store's placeholder
 * for the i-th value; `sameDetails(param)` compares the details column with its JSON text.
 */
export function sameFault(param: (i: number) => string, sameDetails: (param: string) => string): string {
  return `instance_id = ${param(1)} AND code = ${param(2)} AND message = ${param(3)} AND ${sameDetails(param(4))}`;
}
export function sameEvent(param: (i: number) => string, sameDetails: (param: string) => string): string {
  return `instance_id = ${param(1)} AND action = ${param(2)} AND event = ${param(3)} AND request_id = ${param(4)} AND ${sameDetails(param(5))}`;
}

/** A new fault's or event's values in the order of its COLUMNS, all but created_at (the store's clock). */
export function faultValues(f: Omit<InstanceFault, 'createdAt'>): string[] {
  return [f.instanceId, f.code, f.message, JSON.stringify(f.details)];
}

export function eventValues(e: Omit<InstanceActionEvent, 'createdAt'>): string[] {
  return [e.instanceId, e.action, e.event, e.requestId, JSON.stringify(e.details)];
}

export interface InstanceRow {
  id: string;
  name: string;
  host: string;
  power_state: string;
  task_state: TaskState | null;
  task_owner: string | null;
  base_image_ref: string | null;
  project_id: string | null;
  user_id: string | null;
  project_name: string | null;
  user_name: string | null;
  /** Null only in a row migrated a moment ago (migration 3 fills it). */
  created_at: Time | null;
  updated_at: Time;
  deleted_at: Time | null;
}
export interface FaultRow {
  instance_id: string;
  code: string;
  message: string;
  details: Details;
  created_at: Time;
}
export interface EventRow {
  instance_id: string;
  action: string;
  event: string;
  request_id: string;
  details: Details;
  created_at: Time;
}
export interface HostRow {
  host: string;
  task_queue: string;
  seen_at: Time;
}

const iso = (t: Time): string => (typeof t === 'string' ? t : t.toISOString());
const details = (d: Details): Record<string, unknown> => (typeof d === 'string' ? (JSON.parse(d) as Record<string, unknown>) : d);

export function toInstance(row: InstanceRow): InstanceRecord {
  return {
    id: row.id,
    name: row.name,
    host: row.host,
    powerState: row.power_state,
    taskState: row.task_state,
    taskOwner: row.task_owner,
    baseImageRef: row.base_image_ref,
    projectId: row.project_id,
    userId: row.user_id,
    projectName: row.project_name,
    userName: row.user_name,
    createdAt: iso(row.created_at ?? row.updated_at),
    updatedAt: iso(row.updated_at),
    deletedAt: row.deleted_at === null ? null : iso(row.deleted_at),
  };
}

export function toFault(r: FaultRow): InstanceFault {
  return { instanceId: r.instance_id, code: r.code, message: r.message, details: details(r.details), createdAt: iso(r.created_at) };
}

export function toEvent(r: EventRow): InstanceActionEvent {
  return {
    instanceId: r.instance_id,
    action: r.action,
    event: r.event,
    requestId: r.request_id,
    details: details(r.details),
    createdAt: iso(r.created_at),
  };
}

export function toHost(r: HostRow): { host: string; taskQueue: string; seenAt: string } {
  return { host: r.host, taskQueue: r.task_queue, seenAt: iso(r.seen_at) };
}
