// vmsnap on a production-shaped Temporal: the stack's cluster mode (the Temporal server's four
// services joined by ringpop, persistence and visibility on PostgreSQL, schemas by
// temporal-sql-tool, the Web UI server on its own), brought up by this file on ports of its own
// (chosen free when it runs) and databases of its own on the test stack's PostgreSQL,
// so that restarting it disturbs no other file. vmsnap's store is on PostgreSQL too.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import pg from 'pg';
import { guestState, readCounter, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { postgresAccess, services, stackConfig, type StackConfig } from '../../scripts/lib/stack.js';
import { clusterPorts, TEMPORAL_SERVER_CONNECTIONS, temporalDatabases } from '../../scripts/lib/temporal-cluster.js';
import { portIsFree } from '../../scripts/lib/daemon.js';
import { createSchedule, deleteSchedule, describeSchedule, triggerSchedule } from '../../src/client/schedules.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import { SEARCH_ATTRIBUTES } from '../../src/shared/names.js';
import type { ReconcileReport } from '../../src/workflows/reconcile.js';
import type { ScheduledSnapshotsReport } from '../../src/workflows/scheduled.js';
import { eventually } from '../support/cli.js';
import { startHarness, type Harness } from '../support/harness.js';
import { assertAllHeld, checkRunningGuest, outcomeAcrossOutage } from '../support/invariants.js';
import { freePortRange } from '../support/ports.js';
import { createTestDatabase } from '../support/postgres.js';
import { createSlowGuest, waitForGuestState, waitForPhase } from '../support/slow-guest.js';

const tag = process.pid;
const stackDir = process.env.VMSNAP_DATA_DIR ?? '.data/test';
// 20 ports in a row, free now (the cluster's services sit 10 to 18 above the frontend, the UI at
// 19), at most 32767 (membership ports are stored in a smallint); VMSNAP_TEST_CLUSTER_PORT fixes the first.
const first = Number(process.env.VMSNAP_TEST_CLUSTER_PORT || (await freePortRange(20)));
const dir = mkdtempSync(join(tmpdir(), 'vmsnap-cluster-'));
const cfg: StackConfig = stackConfig({
  ...process.env,
  VMSNAP_TEMPORAL_MODE: 'cluster',
  VMSNAP_DATA_DIR: dir,
  VMSNAP_TEMPORAL_PORT: String(first),
  VMSNAP_TEMPORAL_UI_PORT: String(first + 19),
  VMSNAP_POSTGRES_PASSFILE: join(stackDir, 'postgresql.pgpass'),
  VMSNAP_TEMPORAL_DATABASE: `temporal_ct_${tag}`,
});
const address = `127.0.0.1:${cfg.temporalPort}`;
const [server, ui] = services(cfg).filter((s) => s.name.startsWith('temporal'));
let h: Harness;
let guest: Guest;
let store: { url: string; drop(): Promise<void> };

async function temporalDb<T extends pg.QueryResultRow>(sql: string): Promise<T[]> {
  const access = postgresAccess(cfg);
  const client = new pg.Client({
    host: '127.0.0.1',
    port: cfg.postgresPort,
    user: access.user,
    password: access.password(),
    database: temporalDatabases(cfg).persistence,
  });
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

describe('vmsnap on a Temporal cluster with PostgreSQL', { timeout: 600_000 }, () => {
  before(async () => {
    await server!.up();
    await ui!.up();
    store = await createTestDatabase('vmsnap_cluster');
    h = await startHarness({
      name: 'cluster',
      // The host's pause watch would resume a guest left paused first: the reconciler test is about the reconciler.
      env: {
        TEMPORAL_ADDRESS: address,
        VMSNAP_STORE_URL: store.url,
        VMSNAP_STORE_PATH: '',
        VMSNAP_PAUSE_WATCH_MS: '0',
        VMSNAP_LIVE_BANDWIDTH_MIBPS: '128',
      },
    });
    guest = await createSlowGuest({ name: `vmsnap-test-cluster-${tag}`, guestsDir: h.guestsDir, assetsDir: h.assetsDir, dataMiB: 128 });
  });

  after(async () => {
    if (guest) await removeGuest(guest.name, h.guestsDir).catch(() => undefined);
    await h?.close();
    await store?.drop().catch(() => undefined);
    await ui?.down();
    await server?.down();
    // The cluster's databases go with it.
    const access = postgresAccess(cfg);
    const admin = new pg.Client({
      host: '127.0.0.1',
      port: cfg.postgresPort,
      user: access.user,
      password: access.password(),
      database: access.database,
    });
    await admin.connect();
    for (const db of Object.values(temporalDatabases(cfg))) await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    await admin.end();
    rmSync(dir, { recursive: true, force: true });
  });

  it('is the Temporal server on PostgreSQL, with the namespace, the search attributes and a Web UI', async () => {
    const list = await execa(cfg.temporalBin, ['operator', 'search-attribute', 'list', '--address', address, '-o', 'json']);
    for (const name of Object.values(SEARCH_ATTRIBUTES)) assert.match(list.stdout, new RegExp(`"${name}"`), `search attribute ${name}`);
    const health = await execa(cfg.temporalBin, ['operator', 'cluster', 'health', '--address', address]);
    assert.match(health.stdout, /SERVING/);
    const cluster = JSON.parse((await execa(cfg.temporalBin, ['operator', 'cluster', 'describe', '--address', address, '-o', 'json'])).stdout) as Record<
      string,
      unknown
    >;
    assert.equal(cluster.persistenceStore, 'postgres12');
    assert.equal(cluster.visibilityStore, 'postgres12');
    assert.equal(
      `v${String(cluster.serverVersion)}`,
      /^TEMPORAL_SERVER_VERSION=(\S+)/m.exec(readFileSync('scripts/versions.env', 'utf8'))?.[1],
      'the pinned server',
    );
    // Four services, each on its own port of the derived range, found by one another through the ring.
    const ports = clusterPorts(cfg.temporalPort);
    for (const p of [
      ports.history,
      ports.matching,
      ports.worker,
      ports.historyMembership,
      ports.matchingMembership,
      ports.workerMembership,
      ports.frontendMembership,
    ]) {
      assert.equal(await portIsFree(p), false, `port ${p} is served`);
    }
    const page = await fetch(`http://127.0.0.1:${cfg.temporalUiPort}/`);
    assert.equal(page.status, 200);
    await page.body?.cancel();
    const shards = await temporalDb<{ n: string }>('SELECT count(*) AS n FROM shards');
    assert.ok(Number(shards[0]!.n) > 0, 'history shards live in PostgreSQL');
    // Room for the server's pools at their fullest beside vmsnap's workers (100, the default, was not).
    const [max] = await temporalDb<{ max_connections: string }>('SHOW max_connections');
    assert.ok(Number(max!.max_connections) >= TEMPORAL_SERVER_CONNECTIONS + 100, `max_connections ${max!.max_connections}`);
  });

  it('takes a cold and a live snapshot, found again through SQL visibility', async () => {
    for (const mode of ['cold', 'live'] as const) {
      const result = await (
        await startSnapshot(h.client, { instance: guest.uuid, imageName: `vmsnap-test-${tag}-cluster-${mode}`, mode }, h.config.temporal.taskQueue)
      ).result();
      assert.equal(result.mode, mode);
      assert.ok(await h.glance.getImage(result.imageId), `${mode} image in Glance`);
    }
    assert.equal(await guestState(guest.name), 'running');
    // Custom search attributes are columns of the visibility database: query by them.
    const found = await eventually(
      'both snapshots listed by instance',
      async () => {
        const ids: string[] = [];
        for await (const w of h.client.workflow.list({
          query: `${SEARCH_ATTRIBUTES.instanceId} = '${guest.uuid}' AND ExecutionStatus = 'Completed'`,
        }))
          ids.push(w.workflowId);
        return ids.length >= 2 ? ids : undefined;
      },
      30_000,
      500,
    );
    assert.equal(found.length, 2);
    const executions = await temporalDb<{ n: string }>('SELECT count(*) AS n FROM executions');
    assert.ok(Number(executions[0]!.n) >= 2, 'workflow state in PostgreSQL');
  });

  it('runs a schedule', async () => {
    const name = `test-cluster-${tag}`;
    await createSchedule(h.client, { name, instances: [guest.uuid], every: '1h', retention: { keepLast: 1 } }, h.config.temporal.taskQueue);
    try {
      await triggerSchedule(h.client, name);
      const report = await eventually(
        'the triggered run completed',
        async () => {
          for (const run of (await describeSchedule(h.client, name)).recentRuns) {
            const r = (await h.client.workflow
              .getHandle(run.workflowId, run.runId)
              .result()
              .catch(() => undefined)) as ScheduledSnapshotsReport | undefined;
            if (r) return r;
          }
          return undefined;
        },
        120_000,
        500,
      );
      assert.deepEqual(
        report.snapshots.map((s) => s.status),
        ['completed'],
      );
    } finally {
      await deleteSchedule(h.client, name).catch(() => undefined);
    }
  });

  it('the reconciler undoes a snapshot terminated while the guest was paused', async () => {
    const handle = await startSnapshot(
      h.client,
      { instance: guest.uuid, imageName: `vmsnap-test-${tag}-cluster-terminated`, mode: 'cold', compress: true },
      h.config.temporal.taskQueue,
    );
    await waitForPhase(handle, 'converting');
    // The copy's host step pauses the guest itself: wait until it has.
    await waitForGuestState(guest.name, 'paused');
    const { imageId } = (await handle.query('progress')) as { imageId: string };
    await handle.terminate('test: a workflow lost mid-snapshot');
    assert.equal(await guestState(guest.name), 'paused');
    const report = await h.client.workflow.execute<() => Promise<ReconcileReport>>('reconcile', {
      taskQueue: h.config.temporal.taskQueue,
      workflowId: `vmsnap-test-reconcile-${randomUUID()}`,
    });
    // The host step resumes the guest once it learns its run is gone, or the reconciler does.
    assert.ok(report.resumed.length === 0 || report.resumed[0] === guest.uuid, JSON.stringify(report.resumed));
    assert.ok(report.deletedImages.includes(imageId));
    assert.deepEqual(report.errors, []);
    assert.equal(await guestState(guest.name), 'running');
  });

  it('completes a snapshot across a Temporal server restart mid-copy', async () => {
    const imageName = `vmsnap-test-${tag}-cluster-restart`;
    const handle = await startSnapshot(h.client, { instance: guest.uuid, imageName, mode: 'cold', compress: true }, h.config.temporal.taskQueue);
    await waitForPhase(handle, 'converting');
    await server!.down();
    await sleep(2000);
    await server!.up();
    const outcome = await outcomeAcrossOutage(handle, 30);
    assert.equal(outcome, 'completed');
    assertAllHeld(await checkRunningGuest(h, guest, imageName, outcome));
    const counter = await readCounter(guest.diskPath, 'qcow2');
    assert.ok(counter.a > 0);
  });
});
