// SqliteStore: the shared Store contract on a temp file, plus what only SQLite has: file
// permissions, WAL, lock contention errors, and several processes sharing one file.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { VmsnapError } from '../../src/shared/errors.js';
import { MIGRATIONS, SqliteStore } from '../../src/store/sqlite.js';
import { storeContract } from '../support/store-contract.js';

const root = mkdtempSync(join(tmpdir(), 'vmsnap-store-'));
after(() => rmSync(root, { recursive: true, force: true }));

let counter = 0;
function freshPath(): string {
  counter += 1;
  return join(root, `db-${counter}`, 'vmsnap.sqlite');
}

const VM1 = '11111111-1111-4111-8111-111111111111';

function isStoreError(retryable: boolean, ...fragments: string[]) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof VmsnapError, String(err));
    assert.equal(err.code, 'StoreError');
    assert.equal(err.retryable, retryable);
    for (const f of fragments) assert.ok(err.message.includes(f), `${err.message} should mention ${f}`);
    return true;
  };
}

storeContract('SqliteStore', async () => new SqliteStore(freshPath()), {
  connect: async (store) => new SqliteStore((store as SqliteStore).path),
});

describe('SqliteStore', () => {
  it('creates its parent directory and a 0600 file in WAL mode', async () => {
    const path = join(root, 'nested', 'deeper', 'vmsnap.sqlite');
    const store = new SqliteStore(path);
    try {
      await store.migrate();
      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running' }]);
      assert.equal(statSync(path).mode & 0o777, 0o600);
      assert.equal(statSync(`${path}-wal`).mode & 0o777, 0o600, 'the WAL holds the same data');
      const raw = new Database(path, { readonly: true });
      assert.equal(raw.pragma('journal_mode', { simple: true }), 'wal');
      raw.close();
    } finally {
      await store.close();
    }
  });

  it('reports a held write lock as a retryable StoreError, and still reads meanwhile', async () => {
    const path = freshPath();
    const store = new SqliteStore(path, { busyTimeoutMs: 50 });
    await store.migrate();
    await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running' }]);
    const other = new Database(path);
    other.exec('BEGIN IMMEDIATE');
    try {
      await assert.rejects(store.compareAndSwapTaskState(VM1, null, 'image_snapshot_pending', 'wf-1'), isStoreError(true, path, 'compareAndSwapTaskState'));
      assert.equal((await store.findInstance('web'))?.id, VM1, 'WAL readers do not wait for the writer');
    } finally {
      other.exec('ROLLBACK');
      other.close();
    }
    assert.equal(await store.compareAndSwapTaskState(VM1, null, 'image_snapshot_pending', 'wf-1'), true);
    await store.close();
  });

  it('reports other failures as permanent StoreErrors naming the file', async () => {
    const path = freshPath();
    const store = new SqliteStore(path);
    await assert.rejects(store.findInstance(VM1), isStoreError(false, path, 'no such table'));
    await store.close();

    const blocker = join(root, 'not-a-dir');
    writeFileSync(blocker, '');
    assert.throws(() => new SqliteStore(join(blocker, 'vmsnap.sqlite')), isStoreError(false, blocker));
  });

  it('refuses a schema newer than it knows', async () => {
    const path = freshPath();
    const store = new SqliteStore(path);
    await store.migrate();
    const raw = new Database(path);
    raw.prepare('INSERT INTO schema_version (version, applied_at) VALUES (999, ?)').run(new Date().toISOString());
    raw.close();
    await assert.rejects(store.migrate(), isStoreError(false, 'schema version 999'));
    await store.close();
  });

  it('migration 3 gives a store of version 2 owners and first sightings: rows and tasks kept', async () => {
    const path = freshPath();
    mkdirSync(dirname(path), { recursive: true });
    const raw = new Database(path);
    raw.exec('CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)');
    for (const [i, migration] of MIGRATIONS.slice(0, 2).entries()) {
      raw.exec(migration);
      raw.prepare('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)').run(i + 1, new Date().toISOString());
    }
    const seen = '2026-01-02T03:04:05.000Z';
    raw
      .prepare(
        `INSERT INTO instances (id, name, host, power_state, task_state, task_owner, updated_at) VALUES (?, 'web', 'host-a', 'running', 'rebuilding', 'wf-old', ?)`,
      )
      .run(VM1, seen);
    raw.close();

    const store = new SqliteStore(path);
    try {
      await store.migrate();
      const before = await store.getInstance(VM1);
      assert.deepEqual(
        [before?.taskState, before?.taskOwner, before?.projectId, before?.userId, before?.createdAt, before?.updatedAt],
        ['rebuilding', 'wf-old', null, null, seen, seen],
      );
      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running', projectId: 'p1', userId: 'u1' }]);
      const after = await store.getInstance(VM1);
      assert.deepEqual([after?.projectId, after?.userId, after?.createdAt, after?.taskState], ['p1', 'u1', seen, 'rebuilding']);
      const check = new Database(path, { readonly: true });
      const versions = check.prepare('SELECT version FROM schema_version ORDER BY version').all() as { version: number }[];
      check.close();
      assert.deepEqual(
        versions.map((v) => v.version),
        [1, 2, 3],
      );
    } finally {
      await store.close();
    }
  });

  it('20 concurrent starts from 4 processes on one file: exactly one wins', async () => {
    const path = freshPath();
    const store = new SqliteStore(path);
    await store.migrate();
    await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running' }]);

    // Each child opens its own store, says ready, and fires its CAS attempts when told "go",
    // so the attempts of all processes overlap.
    const child = `
      const { SqliteStore } = await import(process.env.STORE_MODULE);
      const store = new SqliteStore(process.env.STORE_PATH);
      const owners = JSON.parse(process.env.OWNERS);
      process.stdout.write('ready\\n');
      await new Promise((resolve) => process.stdin.once('data', resolve));
      const results = await Promise.all(owners.map((o) => store.compareAndSwapTaskState(process.env.INSTANCE, null, 'image_snapshot_pending', o)));
      process.stdout.write(JSON.stringify(owners.filter((_, i) => results[i])) + '\\n');
      await store.close();
      process.exit(0);
    `;
    const procs = Array.from({ length: 4 }, (_, p) => {
      const owners = Array.from({ length: 5 }, (_, i) => `proc-${p}-owner-${i}`);
      const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', child], {
        env: {
          ...process.env,
          STORE_MODULE: new URL('../../src/store/sqlite.ts', import.meta.url).href,
          STORE_PATH: path,
          INSTANCE: VM1,
          OWNERS: JSON.stringify(owners),
        },
        stdio: ['pipe', 'pipe', 'inherit'],
      });
      let out = '';
      const ready = new Promise<void>((resolve) => {
        proc.stdout.on('data', (chunk: Buffer) => {
          out += chunk.toString();
          if (out.startsWith('ready\n')) resolve();
        });
      });
      const exited = new Promise<string[]>((resolve, reject) => {
        proc.on('error', reject);
        proc.on('exit', (code) => {
          if (code !== 0) reject(new Error(`child ${p} exited ${code}: ${out}`));
          else resolve(JSON.parse(out.slice('ready\n'.length)) as string[]);
        });
      });
      return { proc, ready, exited };
    });

    await Promise.all(procs.map((p) => p.ready));
    for (const p of procs) p.proc.stdin.end('go\n');
    const winners = (await Promise.all(procs.map((p) => p.exited))).flat();

    assert.equal(winners.length, 1, `winners: ${winners.join(', ')}`);
    assert.equal((await store.getInstance(VM1))?.taskOwner, winners[0]);
    await store.close();
  });
});
