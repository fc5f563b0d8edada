// PostgresStore: the shared Store contract against the stack's PostgreSQL, plus what only a
// database server has: processes racing to migrate and to start a task, wrong passwords, a server
// that does not answer. Each run works in a database of its own, dropped at the end; each store
// the contract asks for is a fresh schema in it.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, describe, it } from 'node:test';
import pg from 'pg';
import { loadConfig, parsePostgresUrl, type PostgresTarget } from '../../src/shared/config.js';
import { VmsnapError } from '../../src/shared/errors.js';
import { createStore } from '../../src/store/index.js';
import { MIGRATIONS, PostgresStore, postgresClientConfig } from '../../src/store/postgres.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';
import { storeContract } from '../support/store-contract.js';

const stackUrl = process.env.VMSNAP_POSTGRES_URL;
if (!stackUrl) {
  throw new Error('VMSNAP_POSTGRES_URL is not set: run ./scripts/test, or start the stack and eval "$(npm run -s stack -- env)"');
}
const stack: PostgresTarget = parsePostgresUrl(stackUrl, 'VMSNAP_POSTGRES_URL');
const VM1 = '11111111-1111-4111-8111-111111111111';
const root = mkdtempSync(join(tmpdir(), 'vmsnap-store-pg-'));

// The database of this run: its name is in no other run.
const database = `vmsnap_test_${process.pid}_${randomBytes(4).toString('hex')}`;
const databaseUrl = (() => {
  const url = new URL(stackUrl);
  url.pathname = `/${database}`;
  return url.toString();
})();
let admin: pg.Client | undefined;
let inDatabase: pg.Client | undefined;

/** Percent-encoded as libpq expects (URLSearchParams would write a space as "+"). */
function withParameter(url: string, key: string, value: string): string {
  return `${url}${url.includes('?') ? '&' : '?'}${key}=${encodeURIComponent(value)}`;
}

async function connectClient(url: string): Promise<pg.Client> {
  const client = new pg.Client(postgresClientConfig(parsePostgresUrl(url, 'VMSNAP_POSTGRES_URL')));
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

/** A client on this run's database, creating the database the first time. */
async function testDatabase(): Promise<pg.Client> {
  if (!inDatabase) {
    admin = await connectClient(stackUrl!);
    await admin.query(`CREATE DATABASE ${database}`);
    inDatabase = await connectClient(databaseUrl);
  }
  return inDatabase;
}

after(async () => {
  await inDatabase?.end();
  // FORCE: a store a failed test left open must not keep the database.
  await admin?.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
  await admin?.end();
  rmSync(root, { recursive: true, force: true });
});

let schemas = 0;
/** The URL of a fresh, empty schema of this run's database. */
async function freshSchemaUrl(): Promise<{ url: string; schema: string }> {
  const db = await testDatabase();
  schemas += 1;
  const schema = `s${schemas}`;
  await db.query(`CREATE SCHEMA ${schema}`);
  return { url: withParameter(databaseUrl, 'options', `-c search_path=${schema}`), schema };
}

const urls = new WeakMap<Store, string>();
storeContract(
  'PostgresStore',
  async () => {
    const { url } = await freshSchemaUrl();
    const store = new PostgresStore(url);
    urls.set(store, url);
    return store;
  },
  { connect: async (store) => new PostgresStore(urls.get(store)!) },
);

function isStoreError(retryable: boolean, ...fragments: string[]) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof VmsnapError, String(err));
    assert.equal(err.code, 'StoreError');
    assert.equal(err.retryable, retryable, err.message);
    for (const f of fragments) assert.ok(err.message.includes(f), `${err.message} should mention ${f}`);
    return true;
  };
}

/** The stack's password, read from its password file, to check that no message shows it. */
function stackPassword(): string {
  return readFileSync(stack.passfile!, 'utf8').trim().split(':').slice(4).join(':');
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A child process that runs its script and talks in lines: "up" and the like. */
function child(script: string, env: Record<string, string>) {
  const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    env: { ...process.env, ...env },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
  const exited = new Promise<number | null>((resolve, reject) => {
    proc.on('error', reject);
    proc.on('exit', resolve);
  });
  return {
    async expect(line: string): Promise<void> {
      const { value } = await lines.next();
      assert.equal(value, line);
    },
    async read(): Promise<string> {
      return String((await lines.next()).value);
    },
    say(line: string) {
      proc.stdin.write(`${line}\n`);
    },
    exited,
  };
}

describe('PostgresStore', () => {
  it('4 processes migrate one fresh schema at once, then 20 concurrent starts: exactly one wins', async () => {
    const { url, schema } = await freshSchemaUrl();
    // Each child opens its store, migrates when told, then fires its CAS attempts on "go", so
    // that the migrations of all processes overlap, and then their attempts do.
    const script = `
      const { createInterface } = await import('node:readline');
      const { PostgresStore } = await import(process.env.STORE_MODULE);
      const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
      const store = new PostgresStore(process.env.STORE_URL);
      const owners = JSON.parse(process.env.OWNERS);
      process.stdout.write('up\\n');
      await lines.next();
      await store.migrate();
      process.stdout.write('migrated\\n');
      await lines.next();
      const results = await Promise.all(owners.map((o) => store.compareAndSwapTaskState(process.env.INSTANCE, null, 'image_snapshot_pending', o)));
      process.stdout.write(JSON.stringify(owners.filter((_, i) => results[i])) + '\\n');
      await store.close();
      process.exit(0);
    `;
    const procs = Array.from({ length: 4 }, (_, p) =>
      child(script, {
        STORE_MODULE: new URL('../../src/store/postgres.ts', import.meta.url).href,
        STORE_URL: url,
        INSTANCE: VM1,
        OWNERS: JSON.stringify(Array.from({ length: 5 }, (_, i) => `proc-${p}-owner-${i}`)),
      }),
    );
    await Promise.all(procs.map((p) => p.expect('up')));
    for (const p of procs) p.say('migrate');
    await Promise.all(procs.map((p) => p.expect('migrated')));

    const store = new PostgresStore(url);
    try {
      await store.migrate();
      const db = await testDatabase();
      const versions = await db.query<{ version: number }>(`SELECT version FROM ${schema}.schema_version ORDER BY version`);
      assert.deepEqual(
        versions.rows.map((r) => r.version),
        [1, 2, 3],
        'each migration ran once (2: the rebuild task states, 3: owners)',
      );
      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running' }]);

      for (const p of procs) p.say('go');
      const winners = (await Promise.all(procs.map(async (p) => JSON.parse(await p.read()) as string[]))).flat();
      assert.deepEqual(await Promise.all(procs.map((p) => p.exited)), [0, 0, 0, 0]);
      assert.equal(winners.length, 1, `winners: ${winners.join(', ')}`);
      assert.equal((await store.getInstance(VM1))?.taskOwner, winners[0]);
    } finally {
      await store.close();
    }
  });

  it('migration 2 upgrades a schema of version 1 in place: rows kept, the rebuild task states accepted, others still refused', async () => {
    const { url, schema } = await freshSchemaUrl();
    const db = await testDatabase();
    // The schema as a vmsnap before restore left it: migration 1 only, an instance mid-snapshot.
    await db.query(`SET search_path = ${schema}`);
    try {
      await db.query('CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL)');
      await db.query(MIGRATIONS[0]!);
      await db.query('INSERT INTO schema_version (version, applied_at) VALUES (1, now())');
      await db.query(
        `INSERT INTO instances (id, name, host, power_state, task_state, task_owner, updated_at) VALUES ($1, 'web', 'host-a', 'running', 'image_uploading', 'wf-old', now())`,
        [VM1],
      );
      await db.query(
        `INSERT INTO instance_faults (instance_id, code, message, details, created_at) VALUES ($1, 'UploadFailed', 'before the upgrade', '{"n":1}', now())`,
        [VM1],
      );
      await assert.rejects(
        db.query(`UPDATE instances SET task_state = 'rebuilding' WHERE id = $1`, [VM1]),
        /instances_task_state_check/,
        'version 1 refuses the rebuild states',
      );
    } finally {
      await db.query('SET search_path = public');
    }

    const store = new PostgresStore(url);
    try {
      await store.migrate();
      const versions = await db.query<{ version: number }>(`SELECT version FROM ${schema}.schema_version ORDER BY version`);
      assert.deepEqual(
        versions.rows.map((r) => r.version),
        [1, 2, 3],
      );
      // What was there is there: the running snapshot's task state and its fault.
      const before = await store.getInstance(VM1);
      assert.equal(before?.taskState, 'image_uploading');
      assert.equal(before?.taskOwner, 'wf-old');
      assert.deepEqual(
        (await store.listFaults(VM1)).map((f) => [f.code, f.message, f.details]),
        [['UploadFailed', 'before the upgrade', { n: 1 }]],
      );
      assert.ok(await store.releaseTaskState(VM1, 'wf-old'));
      // A restore's task states, step by step as the workflow moves them.
      assert.ok(await store.compareAndSwapTaskState(VM1, null, 'rebuilding', 'wf-restore'));
      assert.ok(await store.compareAndSwapTaskState(VM1, 'rebuilding', 'rebuild_block_device_mapping', 'wf-restore'));
      assert.ok(await store.compareAndSwapTaskState(VM1, 'rebuild_block_device_mapping', 'rebuild_spawning', 'wf-restore'));
      assert.equal((await store.getInstance(VM1))?.taskState, 'rebuild_spawning');
      assert.deepEqual(
        (await store.listInstancesWithTask()).map((i) => i.taskState),
        ['rebuild_spawning'],
      );
      assert.ok(await store.compareAndSwapTaskState(VM1, 'rebuild_spawning', null, 'wf-restore'));
      // The constraint was replaced, not dropped.
      await assert.rejects(db.query(`UPDATE ${schema}.instances SET task_state = 'deleting' WHERE id = $1`, [VM1]), /instances_task_state_check/);
      // Migrating again changes nothing.
      await store.migrate();
      assert.deepEqual(
        (await db.query<{ version: number }>(`SELECT version FROM ${schema}.schema_version ORDER BY version`)).rows.map((r) => r.version),
        [1, 2, 3],
      );
    } finally {
      await store.close();
    }
  });

  it('migration 3 gives a schema of version 2 owners and first sightings: rows and tasks kept', async () => {
    const { url, schema } = await freshSchemaUrl();
    const db = await testDatabase();
    const seen = new Date('2026-01-02T03:04:05.000Z');
    await db.query(`SET search_path = ${schema}`);
    try {
      await db.query('CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL)');
      for (const [i, migration] of MIGRATIONS.slice(0, 2).entries()) {
        await db.query(migration);
        await db.query('INSERT INTO schema_version (version, applied_at) VALUES ($1, now())', [i + 1]);
      }
      await db.query(
        `INSERT INTO instances (id, name, host, power_state, task_state, task_owner, updated_at) VALUES ($1, 'web', 'host-a', 'running', 'rebuilding', 'wf-old', $2)`,
        [VM1, seen],
      );
    } finally {
      await db.query('SET search_path = public');
    }
    const store = new PostgresStore(url);
    try {
      await store.migrate();
      const before = await store.getInstance(VM1);
      assert.deepEqual(
        [before?.taskState, before?.taskOwner, before?.projectId, before?.userId, before?.createdAt, before?.updatedAt],
        ['rebuilding', 'wf-old', null, null, seen.toISOString(), seen.toISOString()],
      );
      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running', projectId: 'p1', userId: 'u1', userName: 'alice' }]);
      const after = await store.getInstance(VM1);
      assert.deepEqual(
        [after?.projectId, after?.userId, after?.userName, after?.createdAt, after?.taskState],
        ['p1', 'u1', 'alice', seen.toISOString(), 'rebuilding'],
      );
      assert.deepEqual(
        (await db.query<{ version: number }>(`SELECT version FROM ${schema}.schema_version ORDER BY version`)).rows.map((r) => r.version),
        [1, 2, 3],
      );
    } finally {
      await store.close();
    }
  });

  it('a wrong password is a permanent StoreError that shows no password', async () => {
    const wrong = `wrong-${randomBytes(12).toString('hex')}`;
    const store = new PostgresStore(`postgresql://${stack.user}:${wrong}@127.0.0.1:${stack.port}/${stack.database}`);
    try {
      await assert.rejects(store.findInstance(VM1), (err: unknown) => {
        isStoreError(false, 'findInstance', 'password authentication failed', `postgresql://${stack.user}@127.0.0.1:${stack.port}/${stack.database}`)(err);
        const e = err as VmsnapError;
        assert.equal(e.details.sqlState, '28P01');
        for (const secret of [wrong, stackPassword()]) {
          assert.ok(!e.message.includes(secret) && !JSON.stringify(e.details).includes(secret) && !String(e.stack).includes(secret));
        }
        return true;
      });
    } finally {
      await store.close();
    }
  });

  it('a server that does not answer is a retryable StoreError', async () => {
    const port = await freePort();
    const store = new PostgresStore(`postgresql://vmsnap:not-needed@127.0.0.1:${port}/vmsnap`);
    try {
      await assert.rejects(store.compareAndSwapTaskState(VM1, null, 'image_snapshot_pending', 'wf-1'), isStoreError(true, `127.0.0.1:${port}`, 'ECONNREFUSED'));
    } finally {
      await store.close();
    }
  });

  it('other failures are permanent StoreErrors naming the database', async () => {
    const { url } = await freshSchemaUrl();
    const store = new PostgresStore(url);
    try {
      await assert.rejects(store.findInstance(VM1), isStoreError(false, `/${database}`, 'findInstance', 'does not exist'));
    } finally {
      await store.close();
    }
  });

  it('refuses a schema newer than it knows', async () => {
    const { url, schema } = await freshSchemaUrl();
    const store = new PostgresStore(url);
    try {
      await store.migrate();
      await (await testDatabase()).query(`INSERT INTO ${schema}.schema_version (version, applied_at) VALUES (999, now())`);
      await assert.rejects(store.migrate(), isStoreError(false, 'schema version 999'));
    } finally {
      await store.close();
    }
  });

  it('reads a libpq password file, and refuses one that others can read', async () => {
    const file = join(root, 'pgpass');
    writeFileSync(file, `# comment\nother:*:*:*:nope\n127.0.0.1:${stack.port}:*:${stack.user}:${stackPassword().replace(/[\\:]/g, '\\$&')}\n`, { mode: 0o600 });
    const { schema } = await freshSchemaUrl();
    const url = withParameter(
      withParameter(`postgresql://${stack.user}@127.0.0.1:${stack.port}/${database}`, 'passfile', file),
      'options',
      `-c search_path=${schema}`,
    );
    const good = new PostgresStore(url);
    await good.migrate();
    assert.deepEqual(await good.listHosts(), []);
    await good.close();

    chmodSync(file, 0o644);
    const loose = new PostgresStore(url);
    await assert.rejects(loose.listHosts(), isStoreError(false, file, 'chmod 600'));
    await loose.close();

    writeFileSync(file, 'elsewhere:5432:*:*:secret\n', { mode: 0o600 });
    chmodSync(file, 0o600);
    const none = new PostgresStore(url);
    await assert.rejects(none.listHosts(), isStoreError(false, file, 'has no line'));
    await none.close();
  });

  it('keeps a NUL in a fault message as U+FFFD and details exactly', async () => {
    const { url } = await freshSchemaUrl();
    const store = new PostgresStore(url);
    try {
      await store.migrate();
      const details = { stderr: 'a\u0000b', nested: { n: 1.5, big: 2 ** 53 - 1, empty: {}, list: [null, true, 'x'] } };
      await store.recordFault({ instanceId: VM1, code: 'ConvertFailed', message: 'qemu-img: \u0000 junk', details });
      const [fault] = await store.listFaults(VM1);
      assert.equal(fault?.message, 'qemu-img: \uFFFD junk');
      assert.deepEqual(fault?.details, details);
    } finally {
      await store.close();
    }
  });

  it('CAS latency, SQLite and PostgreSQL in the same run', async (t) => {
    const { url } = await freshSchemaUrl();
    const stores: [string, Store][] = [
      ['sqlite', new SqliteStore(join(root, 'latency', 'vmsnap.sqlite'))],
      ['postgres', new PostgresStore(url)],
    ];
    for (const [name, store] of stores) {
      await store.migrate();
      await store.syncHostInstances('host-a', [{ id: VM1, name: 'web', powerState: 'running' }]);
      const times: number[] = [];
      for (let i = 0; i < 200; i++) {
        const start = process.hrtime.bigint();
        assert.ok(await store.compareAndSwapTaskState(VM1, i % 2 ? 'image_snapshot_pending' : null, i % 2 ? null : 'image_snapshot_pending', 'wf'));
        times.push(Number(process.hrtime.bigint() - start) / 1e6);
      }
      times.sort((a, b) => a - b);
      t.diagnostic(`${name}: CAS p50 ${times[100]!.toFixed(3)} ms, p95 ${times[190]!.toFixed(3)} ms, max ${times[199]!.toFixed(3)} ms (200 sequential)`);
      await store.close();
    }
  });
});

describe('VMSNAP_STORE_URL', () => {
  const dataDir = join(root, 'data');
  const base = { VMSNAP_DATA_DIR: dataDir, VMSNAP_HOST: 'kvm1' };

  it('defaults to SQLite in the data dir; VMSNAP_STORE_PATH, sqlite:/// and plain paths pick SQLite', async () => {
    const cases: [Record<string, string>, string][] = [
      [{}, join(dataDir, 'vmsnap.sqlite')],
      [{ VMSNAP_STORE_PATH: join(root, 'a b', 'old.sqlite') }, join(root, 'a b', 'old.sqlite')],
      [{ VMSNAP_STORE_URL: `sqlite://${join(root, 'c%20d', 'x.sqlite')}` }, join(root, 'c d', 'x.sqlite')],
      [{ VMSNAP_STORE_URL: join(root, 'plain.sqlite') }, join(root, 'plain.sqlite')],
      [{ VMSNAP_STORE_URL: 'relative/r.sqlite' }, join(process.cwd(), 'relative/r.sqlite')],
    ];
    for (const [env, path] of cases.slice(0, 4)) {
      const config = loadConfig({ ...base, ...env });
      assert.equal(config.storePath, path);
      assert.match(config.storeUrl, /^sqlite:\/\/\//);
      const store = createStore(config);
      assert.ok(store instanceof SqliteStore);
      assert.equal(store.path, path);
      await store.close();
    }
    assert.equal(loadConfig({ ...base, ...cases[4]![0] }).storePath, cases[4]![1]);
    const both = loadConfig({ ...base, VMSNAP_STORE_PATH: '/old.sqlite', VMSNAP_STORE_URL: 'sqlite:///new.sqlite' });
    assert.equal(both.storePath, '/new.sqlite', 'the URL wins');
  });

  it('picks PostgreSQL for postgres:// and postgresql:// URLs', async () => {
    for (const scheme of ['postgres', 'postgresql']) {
      const config = loadConfig({ ...base, VMSNAP_STORE_URL: `${scheme}://vmsnap:s3cr3t-pw@db.example:6432/vmsnap?sslmode=verify-full` });
      const store = createStore(config);
      assert.ok(store instanceof PostgresStore);
      assert.equal(store.display, `${scheme}://vmsnap@db.example:6432/vmsnap`);
      await store.close();
    }
    const socket = parsePostgresUrl('postgresql:///vmsnap?host=/run/postgresql');
    assert.equal(socket.host, '/run/postgresql');
    assert.equal(socket.display, 'postgresql:///vmsnap?host=/run/postgresql');
    assert.equal(parsePostgresUrl('postgresql://u@[::1]/d').host, '::1');
  });

  it('stops on a bad store URL naming the setting, and never shows a password', () => {
    const secret = 's3cr3t-pw';
    const bad: [Record<string, string>, RegExp][] = [
      [{ VMSNAP_STORE_URL: 'sqlite://host/x.sqlite' }, /VMSNAP_STORE_URL must be sqlite:\/\/\/absolute\/path/],
      [{ VMSNAP_STORE_URL: 'sqlite:relative.sqlite' }, /VMSNAP_STORE_URL must be sqlite:\/\/\/absolute\/path/],
      [{ VMSNAP_STORE_URL: `mysql://root:${secret}@db/vmsnap` }, /VMSNAP_STORE_URL has an unknown scheme "mysql:"/],
      [{ VMSNAP_STORE_URL: 'postgresql:///vmsnap' }, /VMSNAP_STORE_URL names no host/],
      [{ VMSNAP_STORE_URL: `postgresql://vmsnap:${secret}@/vmsnap` }, /VMSNAP_STORE_URL is not a valid URL/],
      [{ VMSNAP_STORE_URL: `postgresql://vmsnap:${secret}@db:99999/vmsnap` }, /VMSNAP_STORE_URL is not a valid URL/],
      [{ VMSNAP_STORE_URL: `postgresql://vmsnap:${secret}#x@db/vmsnap` }, /VMSNAP_STORE_URL (is not a valid URL|has a "#" part)/],
      [{ VMSNAP_STORE_URL: `postgresql://vmsnap:${secret}%zz@db/vmsnap` }, /VMSNAP_STORE_URL has a badly percent-encoded password/],
      [{ VMSNAP_STORE_URL: `postgresql://vmsnap:${secret}@db/vmsnap?sslmode=prefer` }, /VMSNAP_STORE_URL has sslmode=prefer/],
      [{ VMSNAP_STORE_URL: `postgresql://vmsnap@db/vmsnap?password=${secret}` }, /VMSNAP_STORE_URL has an unknown parameter "password"/],
      [{ VMSNAP_STORE_URL: `postgresql://vmsnap:${secret}@db/a/b` }, /VMSNAP_STORE_URL must name one database/],
    ];
    for (const [env, message] of bad) {
      assert.throws(
        () => loadConfig({ ...base, ...env }),
        (err: unknown) => {
          assert.ok(err instanceof VmsnapError);
          assert.equal(err.code, 'ConfigError');
          assert.match(err.message, message);
          assert.ok(!err.message.includes(secret), err.message);
          return true;
        },
        JSON.stringify(env),
      );
    }
  });
});
