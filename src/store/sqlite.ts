// The embedded Store: one SQLite file shared by the worker processes of a host (or a small
// deployment). WAL lets readers run beside the single writer, and the busy timeout makes a
// writer wait for the lock instead of failing at once. better-sqlite3 is synchronous; the
// methods are still async so callers treat this and the PostgreSQL store alike.

import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { VmsnapError } from '../shared/errors.js';
import { ALL_TASK_STATES, INSTANCE_INDEXES, SQLITE_TYPES, firstSchema, instancesTable, ownershipMigration } from './schema.js';
import * as mapping from './rows.js';
import type { EventRow, FaultRow, HostRow, InstanceRow } from './rows.js';
import type { DiscoveredInstance, InstanceActionEvent, InstanceFault, InstanceRecord, Store, TaskState } from './store.js';

export interface SqliteStoreOptions {
  /** How long a statement waits for another connection's write lock before SQLITE_BUSY. */
  busyTimeoutMs?: number;
}

/** Ordered schema changes; each runs once, in its own transaction with the version bump. Exported for the upgrade test. */
export const MIGRATIONS: readonly string[] = [
  firstSchema(SQLITE_TYPES),
  // Restore (Nova's rebuild) task states. SQLite cannot alter a CHECK: the table is rebuilt.
  `${instancesTable(SQLITE_TYPES, ALL_TASK_STATES, 'instances_v2')}
  INSERT INTO instances_v2 SELECT id, name, host, power_state, task_state, task_owner, base_image_ref, updated_at, deleted_at FROM instances;
  DROP TABLE instances;
  ALTER TABLE instances_v2 RENAME TO instances;${INSTANCE_INDEXES}
  `,
  ownershipMigration(SQLITE_TYPES),
];

function now(): string {
  return new Date().toISOString();
}

/** Details are JSON text as written. */
const sameDetails = (param: string) => `details = ${param}`;
/** The history tables: their columns, and how a row equal to a new one is found. */
const HISTORY = {
  instance_faults: { columns: mapping.FAULT_COLUMNS, same: mapping.sameFault(() => '?', sameDetails) },
  instance_actions_events: { columns: mapping.EVENT_COLUMNS, same: mapping.sameEvent(() => '?', sameDetails) },
};

export class SqliteStore implements Store {
  readonly path: string;
  private readonly db: Database.Database;
  // Prepared lazily: statements on tables that migrate() has not created yet cannot be prepared.
  private readonly statements = new Map<string, Database.Statement<unknown[]>>();

  constructor(path: string, options: SqliteStoreOptions = {}) {
    this.path = path;
    try {
      if (path !== ':memory:') {
        mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
        // Create the file ourselves so it is 0600 from the start; SQLite gives the -wal and
        // -shm files the main file's mode.
        closeSync(openSync(path, 'a', 0o600));
      }
      this.db = new Database(path, { timeout: options.busyTimeoutMs ?? 5000 });
      if (path !== ':memory:') this.db.pragma('journal_mode = WAL');
    } catch (err) {
      throw this.wrap(err, 'open');
    }
  }

  async migrate(): Promise<void> {
    this.run('migrate', () => {
      // IMMEDIATE takes the write lock first, so two processes migrating at once run one after
      // the other and the second sees the first's version.
      this.db
        .transaction(() => {
          this.db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)');
          const { version } = this.db.prepare('SELECT COALESCE(MAX(version), 0) AS version FROM schema_version').get() as {
            version: number;
          };
          if (version > MIGRATIONS.length) {
            throw new VmsnapError(
              'StoreError',
              `sqlite store ${this.path}: schema version ${version} is newer than this vmsnap knows (${MIGRATIONS.length}): upgrade vmsnap`,
            );
          }
          for (let v = version + 1; v <= MIGRATIONS.length; v++) {
            this.db.exec(MIGRATIONS[v - 1]!);
            this.db.prepare('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)').run(v, now());
          }
        })
        .immediate();
    });
  }

  async syncHostInstances(host: string, instances: DiscoveredInstance[]): Promise<void> {
    this.run('syncHostInstances', () => {
      const upsert = this.stmt(`
        INSERT INTO instances (id, name, host, power_state, task_state, task_owner, base_image_ref,
                               project_id, user_id, project_name, user_name, created_at, updated_at, deleted_at)
        VALUES (?, ?, ?, ?, NULL, NULL, ?, ?, ?, ?, ?, ?, ?, NULL)
        ON CONFLICT (id) DO UPDATE SET
          name = excluded.name, host = excluded.host, power_state = excluded.power_state,
          base_image_ref = excluded.base_image_ref, project_id = excluded.project_id, user_id = excluded.user_id,
          project_name = excluded.project_name, user_name = excluded.user_name, updated_at = excluded.updated_at, deleted_at = NULL`);
      // One JSON parameter instead of one per id: a host may report more ids than SQLite
      // allows bound variables.
      const markDeleted = this.stmt(`
        UPDATE instances SET deleted_at = ?
        WHERE host = ? AND deleted_at IS NULL AND id NOT IN (SELECT value FROM json_each(?))`);
      this.db
        .transaction(() => {
          const at = now();
          for (const i of instances) {
            const owner = [i.projectId, i.userId, i.projectName, i.userName].map((v) => v ?? null);
            upsert.run(i.id, i.name, host, i.powerState, i.baseImageRef ?? null, ...owner, at, at);
          }
          markDeleted.run(at, host, JSON.stringify(instances.map((i) => i.id)));
        })
        .immediate();
    });
  }

  async findInstance(ref: string): Promise<InstanceRecord | undefined> {
    return this.run('findInstance', () => {
      if (mapping.UUID.test(ref)) {
        const row = this.stmt(`SELECT ${mapping.INSTANCE_COLUMNS} FROM instances WHERE id = ? AND deleted_at IS NULL`).get(ref) as InstanceRow | undefined;
        return row && mapping.toInstance(row);
      }
      const rows = this.stmt(`SELECT ${mapping.INSTANCE_COLUMNS} FROM instances WHERE name = ? AND deleted_at IS NULL LIMIT 2`).all(ref) as InstanceRow[];
      if (rows.length > 1) throw new VmsnapError('InvalidInput', `instance name ${ref} is ambiguous: use its UUID`);
      return rows[0] && mapping.toInstance(rows[0]);
    });
  }

  /** By id, deleted or not (deletedAt tells): a running workflow must still see its instance. */
  async getInstance(id: string): Promise<InstanceRecord | undefined> {
    return this.run('getInstance', () => {
      const row = this.stmt(`SELECT ${mapping.INSTANCE_COLUMNS} FROM instances WHERE id = ?`).get(id) as InstanceRow | undefined;
      return row && mapping.toInstance(row);
    });
  }

  /** Deleted instances included: their tasks still need reconciling. */
  async listInstances(options: { includeDeleted?: boolean } = {}): Promise<InstanceRecord[]> {
    return this.run('listInstances', () => {
      const where = options.includeDeleted ? '' : 'WHERE deleted_at IS NULL';
      const rows = this.stmt(`SELECT ${mapping.INSTANCE_COLUMNS} FROM instances ${where} ORDER BY name, id`).all() as InstanceRow[];
      return rows.map(mapping.toInstance);
    });
  }

  async listInstancesWithTask(): Promise<InstanceRecord[]> {
    return this.run('listInstancesWithTask', () => {
      const rows = this.stmt(`SELECT ${mapping.INSTANCE_COLUMNS} FROM instances WHERE task_state IS NOT NULL ORDER BY id`).all() as InstanceRow[];
      return rows.map(mapping.toInstance);
    });
  }

  /** Setting None also clears the owner: no task, nobody holds it. */
  async compareAndSwapTaskState(instanceId: string, expected: TaskState | null, next: TaskState | null, owner: string): Promise<boolean> {
    return this.run('compareAndSwapTaskState', () => {
      // One statement: the check and the write are atomic, whatever other connections do.
      const set = 'UPDATE instances SET task_state = ?, task_owner = ?, updated_at = ? WHERE id = ? AND task_state IS ?';
      const nextOwner = next === null ? null : owner;
      const result =
        expected === null
          ? // A new task only on an instance that still exists.
            this.stmt(`${set} AND deleted_at IS NULL`).run(next, nextOwner, now(), instanceId, null)
          : this.stmt(`${set} AND task_owner = ?`).run(next, nextOwner, now(), instanceId, expected, owner);
      return result.changes === 1;
    });
  }

  /**
   * True also when no task is held any more (a retried release after it already succeeded),
   * false when another owner holds the task or the instance is unknown.
   */
  async releaseTaskState(instanceId: string, owner: string): Promise<boolean> {
    return this.run('releaseTaskState', () => {
      const result = this.stmt('UPDATE instances SET task_state = NULL, task_owner = NULL, updated_at = ? WHERE id = ? AND task_owner = ?').run(
        now(),
        instanceId,
        owner,
      );
      if (result.changes === 1) return true;
      const row = this.stmt('SELECT task_state FROM instances WHERE id = ?').get(instanceId) as { task_state: TaskState | null } | undefined;
      return row !== undefined && row.task_state === null;
    });
  }

  async recordFault(fault: Omit<InstanceFault, 'createdAt'>): Promise<void> {
    this.run('recordFault', () => this.insertOnce('instance_faults', mapping.faultValues(fault)));
  }

  /** Oldest first, in recording order (timestamps can tie). */
  async listFaults(instanceId: string): Promise<InstanceFault[]> {
    return this.run('listFaults', () => {
      const rows = this.stmt(`SELECT ${mapping.FAULT_COLUMNS} FROM instance_faults WHERE instance_id = ? ORDER BY id`).all(instanceId) as FaultRow[];
      return rows.map(mapping.toFault);
    });
  }

  async recordEvent(event: Omit<InstanceActionEvent, 'createdAt'>): Promise<void> {
    this.run('recordEvent', () => this.insertOnce('instance_actions_events', mapping.eventValues(event)));
  }

  /** A history row (its values, then created_at), unless an equal one is there already. */
  private insertOnce(table: keyof typeof HISTORY, values: string[]): void {
    const { columns, same } = HISTORY[table];
    const marks = [...values, now()].map(() => '?').join(', ');
    this.stmt(`INSERT INTO ${table} (${columns}) SELECT ${marks} WHERE NOT EXISTS (SELECT 1 FROM ${table} WHERE ${same})`).run(...values, now(), ...values);
  }

  /** Oldest first, in recording order (timestamps can tie). */
  async listEvents(instanceId: string): Promise<InstanceActionEvent[]> {
    return this.run('listEvents', () => {
      const rows = this.stmt(`SELECT ${mapping.EVENT_COLUMNS} FROM instance_actions_events WHERE instance_id = ? ORDER BY id`).all(instanceId) as EventRow[];
      return rows.map(mapping.toEvent);
    });
  }

  async registerHost(host: string, taskQueue: string): Promise<void> {
    this.run('registerHost', () => {
      this.stmt(
        'INSERT INTO hosts (host, task_queue, seen_at) VALUES (?, ?, ?) ON CONFLICT (host) DO UPDATE SET task_queue = excluded.task_queue, seen_at = ' +
          'excluded.seen_at',
      ).run(host, taskQueue, now());
    });
  }

  /** Sorted by host name. */
  async listHosts(): Promise<{ host: string; taskQueue: string; seenAt: string }[]> {
    return this.run('listHosts', () => {
      return (this.stmt('SELECT host, task_queue, seen_at FROM hosts ORDER BY host').all() as HostRow[]).map(mapping.toHost);
    });
  }

  async close(): Promise<void> {
    this.run('close', () => {
      this.statements.clear();
      if (this.db.open) this.db.close();
    });
  }

  private stmt(sql: string): Database.Statement<unknown[]> {
    let statement = this.statements.get(sql);
    if (!statement) {
      statement = this.db.prepare(sql);
      this.statements.set(sql, statement);
    }
    return statement;
  }

  private run<T>(operation: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      throw this.wrap(err, operation);
    }
  }

  private wrap(err: unknown, operation: string): VmsnapError {
    if (err instanceof VmsnapError) return err;
    const code = err instanceof Database.SqliteError ? err.code : undefined;
    const message = err instanceof Error ? err.message : String(err);
    // Every SQLITE_BUSY* (plain, _SNAPSHOT, _RECOVERY, _TIMEOUT) means another connection held
    // the lock: trying again later can succeed. Anything else is a bug, a bad file or a full disk.
    const transient = code?.startsWith('SQLITE_BUSY') ?? false;
    return new VmsnapError('StoreError', `sqlite store ${this.path}: ${operation}: ${message}`, code ? { sqliteCode: code } : {}, {
      transient,
    });
  }
}
