// The stores' tables, written once for SQLite and PostgreSQL: only the column types differ.
// Each store keeps its own ordered migrations; these build the DDL they run.

export interface ColumnTypes {
  text: string;
  time: string;
  json: string;
  /** An id column that numbers rows in recording order. */
  id: string;
}

export const SQLITE_TYPES: ColumnTypes = { text: 'TEXT', time: 'TEXT', json: 'TEXT', id: 'INTEGER PRIMARY KEY AUTOINCREMENT' };
// json, not jsonb: details come back as they were written.
export const POSTGRES_TYPES: ColumnTypes = {
  text: 'text',
  time: 'timestamptz',
  json: 'json',
  id: 'bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY',
};

export const SNAPSHOT_TASK_STATES = ['image_snapshot_pending', 'image_snapshot', 'image_pending_upload', 'image_uploading'];
export const ALL_TASK_STATES = [...SNAPSHOT_TASK_STATES, 'rebuilding', 'rebuild_block_device_mapping', 'rebuild_spawning'];

export const checkTaskState = (states: string[]) => `CHECK (task_state IN (${states.map((s) => `'${s}'`).join(', ')}))`;

/** The instances table (named `table`) and, when it is the real one, its indexes. */
export function instancesTable(t: ColumnTypes, states: string[], table = 'instances'): string {
  return `
  CREATE TABLE ${table} (
    id             ${t.text} PRIMARY KEY,
    name           ${t.text} NOT NULL,
    host           ${t.text} NOT NULL,
    power_state    ${t.text} NOT NULL,
    task_state     ${t.text} ${checkTaskState(states)},
    task_owner     ${t.text},
    base_image_ref ${t.text},
    updated_at     ${t.time} NOT NULL,
    deleted_at     ${t.time}
  );`;
}

/**
 * Schema version 3: who owns each instance (Nova's <nova:owner>, or vmsnap's own metadata) and when
 * discovery first saw it. Added columns, not a rebuilt table: migration 2 copies the table of
 * version 1 column for column. Rows from before keep no owner; their first sighting is unknown,
 * so their last one stands in for it.
 */
export function ownershipMigration(t: ColumnTypes): string {
  const columns = ['project_id', 'user_id', 'project_name', 'user_name'].map((c) => `ALTER TABLE instances ADD COLUMN ${c} ${t.text};`);
  return `
  ${columns.join('\n  ')}
  ALTER TABLE instances ADD COLUMN created_at ${t.time};
  UPDATE instances SET created_at = updated_at;
  CREATE INDEX instances_project ON instances (project_id) WHERE deleted_at IS NULL;
  `;
}

export const INSTANCE_INDEXES = `
  CREATE INDEX instances_name ON instances (name) WHERE deleted_at IS NULL;
  CREATE INDEX instances_host ON instances (host);
  CREATE INDEX instances_task_state ON instances (task_state) WHERE task_state IS NOT NULL;`;

/** A history table (faults, action events): an instance's rows in recording order, with details and a time. */
function historyTable(t: ColumnTypes, table: string, textColumns: string[]): string {
  return `
  CREATE TABLE ${table} (
    id          ${t.id},
    instance_id ${t.text} NOT NULL,
${textColumns.map((c) => `    ${c.padEnd(11)} ${t.text} NOT NULL,`).join('\n')}
    details     ${t.json} NOT NULL,
    created_at  ${t.time} NOT NULL
  );
  CREATE INDEX ${table}_instance ON ${table} (instance_id, id);`;
}

/** Schema version 1: instances (snapshot task states only), faults, action events, hosts. */
export function firstSchema(t: ColumnTypes): string {
  // No foreign keys to instances: a fault or event must be recordable even for an instance
  // discovery has not seen (yet), and history outlives the inventory row.
  return `${instancesTable(t, SNAPSHOT_TASK_STATES)}${INSTANCE_INDEXES}

${historyTable(t, 'instance_faults', ['code', 'message'])}
${historyTable(t, 'instance_actions_events', ['action', 'event', 'request_id'])}

  CREATE TABLE hosts (
    host       ${t.text} PRIMARY KEY,
    task_queue ${t.text} NOT NULL,
    seen_at    ${t.time} NOT NULL
  );
  `;
}
