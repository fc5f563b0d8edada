// The shared Store for more than one host: every worker of the fleet, wherever it runs, sees one
// PostgreSQL database. Same semantics as SqliteStore, method for method; what differs is how:
// a connection pool instead of one file, server time (one clock for all hosts), row locks
// instead of one writer lock, and an advisory lock so concurrent migrations run one at a time.

import { readFileSync, statSync } from 'node:fs';
import { userInfo } from 'node:os';
import pg from 'pg';
import { parsePostgresUrl, type PostgresTarget } from '../shared/config.js';
import { VmsnapError } from '../shared/errors.js';
import { ALL_TASK_STATES, POSTGRES_TYPES, checkTaskState, firstSchema, ownershipMigration } from './schema.js';
import * as mapping from './rows.js';
import type { EventRow, FaultRow, HostRow, InstanceRow } from './rows.js';
import type { DiscoveredInstance, InstanceActionEvent, InstanceFault, InstanceRecord, Store, TaskState } from './store.js';

export interface PostgresStoreOptions {
  /** Most connections this store opens at once. */
  maxConnections?: number;
  /** How long to wait for a connection, when the URL sets no connect_timeout. */
  connectTimeoutMs?: number;
}

/** Ordered schema changes; each runs once, in the migration transaction with its version row. Exported for the upgrade test. */
export const MIGRATIONS: readonly string[] = [
  firstSchema(POSTGRES_TYPES),
  // Restore (Nova's rebuild) task states.
  `
  ALTER TABLE instances DROP CONSTRAINT instances_task_state_check;
  ALTER TABLE instances ADD CONSTRAINT instances_task_state_check ${checkTaskState(ALL_TASK_STATES)};
  `,
  ownershipMigration(POSTGRES_TYPES),
];

/** Advisory lock key that serializes migrations: "vmsnap" in ASCII, as a number. */
const MIGRATION_LOCK = 130212460126576;

/**
 * Worth retrying: connection trouble (class 08), serialization failure, deadlock, a server
 * shutting down or starting up, too many connections, a lock wait cut short, a read-only
 * server (a standby during failover).
 */
const RETRYABLE_STATES = new Set(['40001', '40P01', '57P01', '57P02', '57P03', '53300', '55P03', '25006']);
const RETRYABLE_SYSTEM_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ECONNABORTED']);
// node-postgres reports a lost or timed-out connection as a plain Error without a code.
const RETRYABLE_MESSAGES = /Connection terminated|timeout exceeded when trying to connect|connection error/i;

const placeholder = (i: number) => `$${i}`;
/** json keeps its input text verbatim, so the text compares; the parameter is json where it is inserted. */
const sameDetails = (param: string) => `details::text = ${param}::json::text`;
/** The history tables: their columns, and how a row equal to a new one is found. */
const HISTORY = {
  instance_faults: { columns: mapping.FAULT_COLUMNS, same: mapping.sameFault(placeholder, sameDetails) },
  instance_actions_events: { columns: mapping.EVENT_COLUMNS, same: mapping.sameEvent(placeholder, sameDetails) },
};

/** PostgreSQL text cannot hold NUL (SQLite can): a fault message from a tool's output might. */
function text(value: string): string {
  return value.replaceAll('\u0000', '\uFFFD');
}

/** A password file line's fields: ":" separates, "\\" escapes; the fifth field runs to the end. */
function passfileFields(line: string): string[] {
  const fields: string[] = [];
  let field = '';
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === '\\' && i + 1 < line.length) field += line[++i];
    else if (c === ':' && fields.length < 4) {
      fields.push(field);
      field = '';
    } else field += c;
  }
  return [...fields, field];
}

/** The password for `target` from a libpq password file (host:port:database:user:password). */
function passwordFromFile(target: PostgresTarget, file: string): string | undefined {
  let content: string;
  try {
    // As libpq does: a password file others can read is a leak waiting to happen.
    if ((statSync(file).mode & 0o077) !== 0) {
      throw new VmsnapError('StoreError', `postgres store ${target.display}: password file ${file} is readable by others: chmod 600 it`);
    }
    content = readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof VmsnapError) throw err;
    throw new VmsnapError('StoreError', `postgres store ${target.display}: password file ${file} cannot be read: ${(err as Error).message}`);
  }
  const user = target.user ?? userInfo().username;
  const wanted = [target.host.startsWith('/') ? 'localhost' : target.host, String(target.port), target.database ?? user, user];
  for (const line of content.split(/\r?\n/)) {
    if (line.trim() === '' || line.startsWith('#')) continue;
    const fields = passfileFields(line);
    if (fields.length === 5 && fields.slice(0, 4).every((f, i) => f === '*' || f === wanted[i])) return fields[4];
  }
  return undefined;
}

/**
 * node-postgres settings for a target, built field by field rather than from the URL, so that
 * nothing in the URL overrides the password source and no URL ends up in an error. Reads the
 * password file now: a password callback that fails mid-handshake leaves the socket open until
 * the server's authentication timeout.
 */
/** libpq's sslmode as node-postgres takes it: verify-ca checks the chain but not the host name. */
function sslOptions(mode: PostgresTarget['sslmode'], ca: string | undefined): pg.PoolConfig['ssl'] {
  if (mode === 'disable') return false;
  if (mode === 'require') return { rejectUnauthorized: false };
  if (mode === 'verify-ca') return { ca, checkServerIdentity: () => undefined };
  return { ca };
}

export function postgresClientConfig(target: PostgresTarget, options: PostgresStoreOptions = {}): pg.PoolConfig {
  let password = target.password;
  if (password === undefined && target.passfile !== undefined) {
    password = passwordFromFile(target, target.passfile);
    if (password === undefined) {
      throw new VmsnapError(
        'StoreError',
        `postgres store ${target.display}: password file ${target.passfile} has no line for this host, port, database and user`,
      );
    }
  }
  const ca = target.sslrootcert === undefined ? undefined : readFileSync(target.sslrootcert, 'utf8');
  const ssl = sslOptions(target.sslmode, ca);
  return {
    host: target.host,
    port: target.port,
    user: target.user,
    database: target.database,
    password,
    ssl,
    options: target.options,
    application_name: target.applicationName ?? 'vmsnap',
    connectionTimeoutMillis: target.connectTimeoutMs ?? options.connectTimeoutMs ?? 10_000,
    max: options.maxConnections ?? 10,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
  };
}

export class PostgresStore implements Store {
  /** The database, for messages: no password. */
  readonly display: string;
  private readonly target: PostgresTarget;
  private readonly options: PostgresStoreOptions;
  private openPool: pg.Pool | undefined;
  private password: string | undefined;
  private closed = false;

  /** Connects on first use: a password file or certificate problem is then a method's StoreError. */
  constructor(url: string, options: PostgresStoreOptions = {}) {
    this.target = parsePostgresUrl(url);
    this.display = this.target.display;
    this.options = options;
  }

  /** Made on first use (read only inside run(), which turns its errors into StoreErrors). */
  private get pool(): pg.Pool {
    if (this.closed) throw new VmsnapError('StoreError', `postgres store ${this.display}: the store is closed`);
    if (!this.openPool) {
      const config = postgresClientConfig(this.target, this.options);
      this.password = typeof config.password === 'string' ? config.password : undefined;
      this.openPool = new pg.Pool(config);
      // An idle connection the server drops is reported here; the pool discards it and the
      // next query opens another. Without a listener the error would end the process.
      this.openPool.on('error', () => undefined);
    }
    return this.openPool;
  }

  async migrate(): Promise<void> {
    await this.transaction('migrate', async (client) => {
      // Held to the end of the transaction: a second process migrating at once waits here, then
      // sees the first one's version and has nothing left to do.
      await client.query(`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`);
      await client.query('CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL)');
      const { rows } = await client.query<{ version: number }>('SELECT COALESCE(MAX(version), 0) AS version FROM schema_version');
      const version = rows[0]!.version;
      if (version > MIGRATIONS.length) {
        throw new VmsnapError(
          'StoreError',
          `postgres store ${this.display}: schema version ${version} is newer than this vmsnap knows (${MIGRATIONS.length}): upgrade vmsnap`,
        );
      }
      for (let v = version + 1; v <= MIGRATIONS.length; v++) {
        await client.query(MIGRATIONS[v - 1]!);
        await client.query('INSERT INTO schema_version (version, applied_at) VALUES ($1, now())', [v]);
      }
    });
  }

  async syncHostInstances(host: string, instances: DiscoveredInstance[]): Promise<void> {
    // The last report of an id wins, as in SQLite's row-by-row upsert (one INSERT may not touch
    // a row twice). Sorted, so that concurrent syncs lock shared rows in the same order.
    const unique = [...new Map(instances.map((i) => [i.id, i])).values()].sort((a, b) => (a.id < b.id ? -1 : 1)); // ids are unique here
    const ids = unique.map((i) => i.id);
    await this.transaction('syncHostInstances', async (client) => {
      // now() is the transaction's start: every row of this sync gets the same time.
      if (unique.length > 0) {
        const column = (pick: (i: DiscoveredInstance) => string | undefined) => unique.map((i) => pick(i) ?? null);
        await client.query(
          `INSERT INTO instances (id, name, host, power_state, base_image_ref, project_id, user_id, project_name, user_name, created_at, updated_at)
           SELECT t.id, t.name, $1, t.power_state, t.base_image_ref, t.project_id, t.user_id, t.project_name, t.user_name, now(), now()
           FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])
             AS t (id, name, power_state, base_image_ref, project_id, user_id, project_name, user_name)
           ON CONFLICT (id) DO UPDATE SET
             name = excluded.name, host = excluded.host, power_state = excluded.power_state,
             base_image_ref = excluded.base_image_ref, project_id = excluded.project_id, user_id = excluded.user_id,
             project_name = excluded.project_name, user_name = excluded.user_name, updated_at = excluded.updated_at, deleted_at = NULL`,
          [
            host,
            ids,
            column((i) => i.name),
            column((i) => i.powerState),
            column((i) => i.baseImageRef),
            column((i) => i.projectId),
            column((i) => i.userId),
            column((i) => i.projectName),
            column((i) => i.userName),
          ],
        );
      }
      await client.query('UPDATE instances SET deleted_at = now() WHERE host = $1 AND deleted_at IS NULL AND id <> ALL ($2::text[])', [host, ids]);
    });
  }

  async findInstance(ref: string): Promise<InstanceRecord | undefined> {
    return this.run('findInstance', async () => {
      if (mapping.UUID.test(ref)) {
        const { rows } = await this.pool.query<InstanceRow>(`SELECT ${mapping.INSTANCE_COLUMNS} FROM instances WHERE id = $1 AND deleted_at IS NULL`, [ref]);
        return rows[0] && mapping.toInstance(rows[0]);
      }
      const { rows } = await this.pool.query<InstanceRow>(`SELECT ${mapping.INSTANCE_COLUMNS} FROM instances WHERE name = $1 AND deleted_at IS NULL LIMIT 2`, [
        ref,
      ]);
      if (rows.length > 1) throw new VmsnapError('InvalidInput', `instance name ${ref} is ambiguous: use its UUID`);
      return rows[0] && mapping.toInstance(rows[0]);
    });
  }

  /** By id, deleted or not (deletedAt tells): a running workflow must still see its instance. */
  async getInstance(id: string): Promise<InstanceRecord | undefined> {
    return this.run('getInstance', async () => {
      const { rows } = await this.pool.query<InstanceRow>(`SELECT ${mapping.INSTANCE_COLUMNS} FROM instances WHERE id = $1`, [id]);
      return rows[0] && mapping.toInstance(rows[0]);
    });
  }

  /** Deleted instances included: their tasks still need reconciling. Byte order, as SQLite. */
  async listInstances(options: { includeDeleted?: boolean } = {}): Promise<InstanceRecord[]> {
    return this.run('listInstances', async () => {
      const where = options.includeDeleted ? '' : 'WHERE deleted_at IS NULL';
      const { rows } = await this.pool.query<InstanceRow>(
        `SELECT ${mapping.INSTANCE_COLUMNS} FROM instances ${where} ORDER BY name COLLATE "C", id COLLATE "C"`,
      );
      return rows.map(mapping.toInstance);
    });
  }

  async listInstancesWithTask(): Promise<InstanceRecord[]> {
    return this.run('listInstancesWithTask', async () => {
      const { rows } = await this.pool.query<InstanceRow>(
        `SELECT ${mapping.INSTANCE_COLUMNS} FROM instances WHERE task_state IS NOT NULL ORDER BY id COLLATE "C"`,
      );
      return rows.map(mapping.toInstance);
    });
  }

  /** Setting None also clears the owner: no task, nobody holds it. */
  async compareAndSwapTaskState(instanceId: string, expected: TaskState | null, next: TaskState | null, owner: string): Promise<boolean> {
    return this.run('compareAndSwapTaskState', async () => {
      // One statement: a concurrent UPDATE of the row waits for ours to commit and then
      // re-checks the WHERE clause against our result, so only one of them can match.
      const set = 'UPDATE instances SET task_state = $1, task_owner = $2, updated_at = now() WHERE id = $3';
      const nextOwner = next === null ? null : owner;
      const result =
        expected === null
          ? // A new task only on an instance that still exists.
            await this.pool.query(`${set} AND task_state IS NULL AND deleted_at IS NULL`, [next, nextOwner, instanceId])
          : await this.pool.query(`${set} AND task_state = $4 AND task_owner = $5`, [next, nextOwner, instanceId, expected, owner]);
      return result.rowCount === 1;
    });
  }

  /**
   * True also when no task is held any more (a retried release after it already succeeded),
   * false when another owner holds the task or the instance is unknown.
   */
  async releaseTaskState(instanceId: string, owner: string): Promise<boolean> {
    return this.run('releaseTaskState', async () => {
      // One round trip; the SELECT sees the row as it was before the UPDATE, which is what the
      // "nothing held" answer needs when the UPDATE matched nothing.
      const { rows } = await this.pool.query<{ released: boolean; free: boolean | null }>(
        `WITH released AS (
           UPDATE instances SET task_state = NULL, task_owner = NULL, updated_at = now()
           WHERE id = $1 AND task_owner = $2 RETURNING id)
         SELECT EXISTS (SELECT 1 FROM released) AS released, (SELECT task_state IS NULL FROM instances WHERE id = $1) AS free`,
        [instanceId, owner],
      );
      return rows[0]!.released || rows[0]!.free === true;
    });
  }

  async recordFault(fault: Omit<InstanceFault, 'createdAt'>): Promise<void> {
    await this.run('recordFault', () => this.insertOnce('instance_faults', mapping.faultValues(fault)));
  }

  /** Oldest first, in recording order (timestamps can tie). */
  async listFaults(instanceId: string): Promise<InstanceFault[]> {
    return this.run('listFaults', async () => {
      const { rows } = await this.pool.query<FaultRow>(`SELECT ${mapping.FAULT_COLUMNS} FROM instance_faults WHERE instance_id = $1 ORDER BY id`, [instanceId]);
      return rows.map(mapping.toFault);
    });
  }

  async recordEvent(event: Omit<InstanceActionEvent, 'createdAt'>): Promise<void> {
    await this.run('recordEvent', () => this.insertOnce('instance_actions_events', mapping.eventValues(event)));
  }

  /** A history row (its values, details last, then created_at), unless an equal one is there already. */
  private async insertOnce(table: keyof typeof HISTORY, values: string[]): Promise<void> {
    const { columns, same } = HISTORY[table];
    // The details go in as json, as sameDetails compares them.
    const params = values.map((_, i) => (i === values.length - 1 ? `${placeholder(i + 1)}::json` : placeholder(i + 1)));
    await this.pool.query(
      `INSERT INTO ${table} (${columns}) SELECT ${params.join(', ')}, now() WHERE NOT EXISTS (SELECT 1 FROM ${table} WHERE ${same})`,
      values.map(text),
    );
  }

  /** Oldest first, in recording order (timestamps can tie). */
  async listEvents(instanceId: string): Promise<InstanceActionEvent[]> {
    return this.run('listEvents', async () => {
      const { rows } = await this.pool.query<EventRow>(`SELECT ${mapping.EVENT_COLUMNS} FROM instance_actions_events WHERE instance_id = $1 ORDER BY id`, [
        instanceId,
      ]);
      return rows.map(mapping.toEvent);
    });
  }

  async registerHost(host: string, taskQueue: string): Promise<void> {
    await this.run('registerHost', () =>
      this.pool.query(
        'INSERT INTO hosts (host, task_queue, seen_at) VALUES ($1, $2, now()) ON CONFLICT (host) DO UPDATE SET task_queue = excluded.task_queue, ' +
          'seen_at = excluded.seen_at',
        [host, taskQueue],
      ),
    );
  }

  /** Sorted by host name, in byte order as SQLite does. */
  async listHosts(): Promise<{ host: string; taskQueue: string; seenAt: string }[]> {
    return this.run('listHosts', async () => {
      const { rows } = await this.pool.query<HostRow>('SELECT host, task_queue, seen_at FROM hosts ORDER BY host COLLATE "C"');
      return rows.map(mapping.toHost);
    });
  }

  /** Waits for running queries, then closes every connection. A second close does nothing. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const pool = this.openPool;
    if (pool) await this.run('close', () => pool.end());
  }

  private async transaction<T>(operation: string, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    return this.run(operation, async () => {
      const client = await this.pool.connect();
      let broken = false;
      try {
        await client.query('BEGIN');
        const result = await fn(client);
        await client.query('COMMIT');
        return result;
      } catch (err) {
        // A connection that cannot even roll back is not given back to the pool.
        await client.query('ROLLBACK').catch(() => (broken = true));
        throw err;
      } finally {
        client.release(broken);
      }
    });
  }

  private async run<T>(operation: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw this.wrap(err, operation);
    }
  }

  /** Whether a retry may succeed: a lost connection or a conflict, not a bad statement. */
  private transient(sqlState: string | undefined, systemCode: string | undefined, message: string): boolean {
    if (sqlState) return sqlState.startsWith('08') || RETRYABLE_STATES.has(sqlState);
    if (systemCode) return RETRYABLE_SYSTEM_CODES.has(systemCode) || (systemCode === 'ENOENT' && this.target.host.startsWith('/'));
    return RETRYABLE_MESSAGES.test(message);
  }

  private wrap(err: unknown, operation: string): VmsnapError {
    if (err instanceof VmsnapError) return err;
    const sqlState = err instanceof pg.DatabaseError ? err.code : undefined;
    const systemCode =
      !sqlState && err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string' ? (err as NodeJS.ErrnoException).code : undefined;
    let message = err instanceof Error ? err.message : String(err);
    // Servers and drivers do not put passwords in messages; this makes sure of it.
    for (const secret of [this.target.password, this.password]) if (secret) message = message.replaceAll(secret, '***');
    const transient = this.transient(sqlState, systemCode, message);
    const details = sqlState ? { sqlState } : { ...(systemCode ? { systemCode } : {}) };
    return new VmsnapError('StoreError', `postgres store ${this.display}: ${operation}: ${message}`, details, { transient });
  }
}
