// More than one host, on the real stack: one main worker and two host workers with their own
// host names and queues, sharing one PostgreSQL store as a fleet does. Both "hosts" share this
// machine's libvirtd, so each host worker's discovery sees only its own guests (a filter on the
// real driver stands in for two machines).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import type { NativeConnection } from '@temporalio/worker';
import { createGuest, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { syncInventory } from '../../src/activities/inventory.js';
import { TemporalWorkflowLookup } from '../../src/activities/workflow-lookup.js';
import { getProgress, startSnapshot } from '../../src/client/snapshots.js';
import type { Hypervisor } from '../../src/drivers/hypervisor.js';
import { LibvirtHypervisor } from '../../src/drivers/libvirt.js';
import { loadConfig, type Config } from '../../src/shared/config.js';
import type { SnapshotProgress } from '../../src/shared/types.js';
import { createStore } from '../../src/store/index.js';
import type { Store } from '../../src/store/store.js';
import { buildDeps } from '../../src/worker/deps.js';
import { closeTestCloud, testCloud } from '../support/cloud.js';
import { connect, startWorkers, type RunningWorkers } from '../../src/worker/workers.js';
import '../support/harness.js'; // installs the quiet runtime
import { eventually } from '../support/cli.js';
import { eventMs, onlyActivityRun } from '../support/history.js';
import { deleteImagesOfInstances } from '../support/images.js';
import { createTestDatabase } from '../support/postgres.js';
import { createSlowGuest, waitForPhase } from '../support/slow-guest.js';

const tag = process.pid;
const dataDir = process.env.VMSNAP_DATA_DIR ?? '.data/test';
const guestsDir = join(dataDir, 'guests');
const assetsDir = join(dataDir, 'guest-assets');
const dir = mkdtempSync(join(tmpdir(), 'vmsnap-hosts-'));
const hostA = `test-host-a-${tag}`;
const hostB = `test-host-b-${tag}`;
/** Which guests each simulated host sees (by name); changed to simulate a migration. */
const sees: Record<string, (name: string) => boolean> = {
  [hostA]: (name) => name.startsWith(`vmsnap-test-${tag}-hosta-`),
  [hostB]: (name) => name.startsWith(`vmsnap-test-${tag}-hostb-`),
};

let db: { url: string; drop(): Promise<void> };
let connection: NativeConnection;
let client: Client;
const stores: Store[] = [];
const running = new Map<string, RunningWorkers>();
const configs = new Map<string, Config>();
let guestA: Guest;
let guestA2: Guest;
let guestB: Guest;

function hostConfig(host: string, extra: Record<string, string> = {}): Config {
  return loadConfig({
    ...process.env,
    VMSNAP_STORE_URL: db.url,
    VMSNAP_HOST: host,
    VMSNAP_TASK_QUEUE: `vmsnap-test-hosts-${tag}`,
    VMSNAP_SNAPSHOTS_DIR: join(dir, host),
    VMSNAP_DISCOVERY_INTERVAL_MS: '3600000',
    VMSNAP_DEFAULT_MODE: 'cold', // the limit test watches the copy phase of a cold snapshot
    ...extra,
  });
}

function seenBy(host: string, real: Hypervisor): Hypervisor {
  const filtered = Object.create(real) as Hypervisor;
  filtered.listInstances = async () => (await real.listInstances()).filter((i) => sees[host]!(i.name));
  return filtered;
}

async function startRole(name: string, role: 'main' | 'host', config: Config): Promise<void> {
  const store = createStore(config);
  await store.migrate();
  stores.push(store);
  configs.set(name, config);
  const deps = buildDeps(config, store, await testCloud(), {
    workflows: new TemporalWorkflowLookup(client),
    hypervisor: seenBy(config.host, new LibvirtHypervisor({ uri: config.libvirtUri })),
  });
  running.set(
    name,
    await startWorkers({
      connection,
      namespace: config.temporal.namespace,
      taskQueue: config.temporal.taskQueue,
      roles: [role],
      deps,
      discoveryIntervalMs: config.discoveryIntervalMs,
      maxConcurrentSnapshots: config.maxConcurrentSnapshots,
      hostPollers: config.hostPollers,
    }),
  );
}

const queue = () => configs.get('main')!.temporal.taskQueue;
const progressOf = (handle: { query: (q: string) => Promise<unknown> }) => handle.query('progress') as Promise<SnapshotProgress>;

describe('two hosts, one fleet', { timeout: 600_000 }, () => {
  before(async () => {
    db = await createTestDatabase('vmsnap_hosts');
    [guestA, guestA2, guestB] = await Promise.all([
      createSlowGuest({ name: `vmsnap-test-${tag}-hosta-1`, guestsDir, assetsDir, dataMiB: 512 }),
      createGuest({ name: `vmsnap-test-${tag}-hosta-2`, guestsDir, assetsDir }),
      createGuest({ name: `vmsnap-test-${tag}-hostb-1`, guestsDir, assetsDir }),
    ]);
    const base = hostConfig(hostA);
    connection = await connect(base.temporal);
    client = new Client({ connection: await Connection.connect({ address: base.temporal.address }) });
    await startRole('main', 'main', hostConfig('test-main'));
    // Host A runs one snapshot at a time, to show the limit; host B the default.
    await startRole(hostA, 'host', hostConfig(hostA, { VMSNAP_MAX_CONCURRENT_SNAPSHOTS: '1' }));
    await startRole(hostB, 'host', hostConfig(hostB));
  });

  after(async () => {
    for (const w of running.values()) await w.shutdown().catch(() => undefined);
    for (const s of stores) await s.close().catch(() => undefined);
    await closeTestCloud();
    await client?.connection.close();
    await connection?.close();
    for (const g of [guestA, guestA2, guestB]) if (g) await removeGuest(g.name, guestsDir).catch(() => undefined);
    await deleteImagesOfInstances([guestA, guestA2, guestB].filter(Boolean).map((g) => g.uuid));
    await db?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('routes each snapshot to the host that holds the instance; both run in parallel', async () => {
    const [a, b] = await Promise.all(
      [guestA2, guestB].map(async (g) => (await startSnapshot(client, { instance: g.uuid, imageName: `vmsnap-test-${tag}-${g.name}` }, queue())).result()),
    );
    assert.equal(a?.host, hostA);
    assert.equal(b?.host, hostB);
    assert.equal((await stores[0]!.getInstance(guestB.uuid))?.host, hostB, 'the shared inventory knows where B lives');
  });

  it("a stopped host worker stalls only its own host's snapshots, which finish when it returns", async () => {
    await running.get(hostB)!.shutdown();
    const stalled = await startSnapshot(client, { instance: guestB.uuid, imageName: `vmsnap-test-${tag}-b-stalled` }, queue());
    const other = await (await startSnapshot(client, { instance: guestA2.uuid, imageName: `vmsnap-test-${tag}-a-meanwhile` }, queue())).result();
    assert.equal(other.host, hostA, 'host A is unaffected');
    const waiting = await progressOf(stalled);
    assert.equal(waiting.phase, 'waiting-for-host', 'B waits, visibly, for its host');

    await startRole(hostB, 'host', hostConfig(hostB));
    const done = await stalled.result();
    assert.equal(done.host, hostB);
  });

  it('holds a host to its snapshot limit: the second snapshot waits for the slot', async () => {
    const slow = await startSnapshot(client, { instance: guestA.uuid, imageName: `vmsnap-test-${tag}-a-slow`, compress: true }, queue());
    await waitForPhase(slow, 'converting');
    const queued = await startSnapshot(client, { instance: guestA2.uuid, imageName: `vmsnap-test-${tag}-a-queued` }, queue());
    await waitForPhase(queued, 'waiting-for-host');
    // The first copy moves on (two heartbeats with more bytes done) while the second still waits.
    const copied = async () => (await getProgress(slow)).bytesDone ?? 0;
    const early = await eventually('the first copy under way', async () => ((await copied()) > 0 ? copied() : undefined), 120_000, 200);
    await eventually('the first copy moving on', async () => ((await copied()) > early ? true : undefined), 120_000, 200);
    assert.equal((await progressOf(queued)).phase, 'waiting-for-host', 'host A runs one at a time');
    await Promise.all([slow.result(), queued.result()]);
    // In order: the second snapshot's copy was scheduled only after the first's copy had ended.
    const firstCopy = onlyActivityRun(await slow.fetchHistory(), 'coldCopyDisk');
    const secondCopy = onlyActivityRun(await queued.fetchHistory(), 'coldCopyDisk');
    assert.ok(
      eventMs(secondCopy.scheduled) >= (firstCopy.endedAt ?? Infinity),
      `second copy scheduled at ${eventMs(secondCopy.scheduled)}, first copy ended at ${firstCopy.endedAt}`,
    );
  });

  it('a migrated instance moves host in the inventory, and its snapshot follows it', async () => {
    const bName = guestB.name;
    sees[hostB] = () => false;
    sees[hostA] = (name) => name.startsWith(`vmsnap-test-${tag}-hosta-`) || name === bName;
    for (const host of [hostB, hostA]) {
      const config = configs.get(host)!;
      const store = createStore(config);
      stores.push(store);
      await syncInventory({ store, host, hypervisor: seenBy(host, new LibvirtHypervisor({ uri: config.libvirtUri })) });
    }
    assert.equal((await stores[0]!.getInstance(guestB.uuid))?.host, hostA);
    const moved = await (await startSnapshot(client, { instance: guestB.uuid, imageName: `vmsnap-test-${tag}-b-migrated` }, queue())).result();
    assert.equal(moved.host, hostA);
  });
});
