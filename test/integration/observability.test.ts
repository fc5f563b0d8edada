// The worker process as operators run it: JSON log lines that carry the instance id and the
// workflow id, a Prometheus endpoint with vmsnap's metrics, and no secret anywhere: neither the
// Keystone passwords and application-credential secret of the stack's clouds.yaml, nor any token
// the worker sent to Glance (a proxy sees them all), in the worker's log file, the metrics, or
// what Temporal keeps of the workflow, every payload decoded (test/support/secrets.ts). The scan
// is shown to work: a secret planted in a workflow input and memo is caught.
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { createGuest, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import { readAccounts } from '../../scripts/lib/keystone.js';
import { closeTestCloud, stackGlanceUrl } from '../support/cloud.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { deleteImagesOfInstances } from '../support/images.js';
import { freePort } from '../support/ports.js';
import { scanLogFiles, scanTemporal, scanText, type Secret } from '../support/secrets.js';
import { startWorkerProcess, type WorkerProcess } from '../support/worker-process.js';

const guestName = `vmsnap-test-obs-${process.pid}`;
const dataDir = process.env.VMSNAP_DATA_DIR ?? '.data/test';
const dir = mkdtempSync(join(tmpdir(), 'vmsnap-obs-'));
/** The worker's output, as a service manager would keep it. */
const workerLog = join(dir, 'worker.log');
const env = {
  VMSNAP_HOST: `test-obs-${process.pid}`,
  VMSNAP_TASK_QUEUE: `vmsnap-test-obs-${process.pid}`,
  VMSNAP_STORE_PATH: join(dir, 'vmsnap.sqlite'),
  VMSNAP_DEFAULT_MODE: 'cold', // the pause metric is checked too
  VMSNAP_RECONCILE_INTERVAL_MS: '0', // no schedule left behind on the shared Temporal
  VMSNAP_SNAPSHOTS_DIR: join(dir, 'snapshots'),
  VMSNAP_METRICS_ADDRESS: '',
};
let worker: WorkerProcess;
let proxy: FaultProxy;
let guest: Guest;
let client: Client;

/** Everything Temporal keeps of a workflow: its history and its description. */
async function keptByTemporal(handle: WorkflowHandle): Promise<unknown[]> {
  return [await handle.fetchHistory(), (await handle.describe()).raw];
}

describe('worker process: logs, metrics, secrets', { timeout: 400_000 }, () => {
  before(async () => {
    env.VMSNAP_METRICS_ADDRESS = `127.0.0.1:${await freePort()}`;
    guest = await createGuest({ name: guestName, guestsDir: join(dataDir, 'guests'), assetsDir: join(dataDir, 'guest-assets') });
    proxy = await startFaultProxy(await stackGlanceUrl());
    worker = startWorkerProcess({ ...env, VMSNAP_GLANCE_URL: proxy.url }, 'all', { logFile: workerLog });
    await worker.waitForLine(/vmsnap worker started/);
    client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
  });

  after(async () => {
    await worker?.stop();
    await proxy?.close();
    await closeTestCloud();
    await client?.connection.close();
    await removeGuest(guestName, join(dataDir, 'guests')).catch(() => undefined);
    if (guest) await deleteImagesOfInstances([guest.uuid]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('logs JSON lines with instance and workflow ids, exposes metrics, and leaks no secret', async () => {
    const handle = await startSnapshot(client, { instance: guest.uuid, imageName: `vmsnap-test-${process.pid}-obs` }, env.VMSNAP_TASK_QUEUE);
    const result = await handle.result();

    // Logs: every line is JSON; every line about this snapshot names the instance and workflow.
    const records = worker.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    const about = records.filter((r) => r.workflowId === handle.workflowId);
    assert.ok(about.length > 0, 'the worker logged about the snapshot');
    for (const r of about) assert.equal(r.instanceId, guest.uuid, `line without instance id: ${JSON.stringify(r)}`);

    // Metrics: Prometheus text with vmsnap's own series.
    const metrics = await (await fetch(`http://${env.VMSNAP_METRICS_ADDRESS}/metrics`)).text();
    assert.match(metrics, /vmsnap_snapshots\w*\{[^}]*outcome="completed"[^}]*\} 1/);
    assert.match(metrics, /vmsnap_pause_duration\w*_count\{[^}]*\} 1/);
    assert.match(metrics, /vmsnap_phase_duration\w*_count\{[^}]*phase="converting"/);
    assert.match(metrics, new RegExp(`vmsnap_uploaded_bytes\\w*\\{[^}]*\\} ${result.size}`));

    // Secrets: the credentials are in the worker's clouds.yaml and secure.yaml only, the tokens
    // in its request headers only.
    const accounts = readAccounts(dataDir);
    assert.ok(accounts, 'the stack made its Keystone accounts');
    const tokens = [...new Set(proxy.requests.map((r) => r.headers['x-auth-token']).filter((t): t is string => typeof t === 'string'))];
    assert.ok(tokens.length >= 1, 'the worker authenticated its Glance requests');
    const secrets: Secret[] = [
      { name: 'password', value: accounts.vmsnapPassword },
      { name: 'application-credential secret', value: accounts.applicationCredentialSecret },
      { name: 'admin password', value: accounts.adminPassword },
      { name: 'glance password', value: accounts.glancePassword },
      ...tokens.map((t, i) => ({ name: `token ${i + 1}`, value: t })),
    ];
    const kept = await keptByTemporal(handle);
    assert.match(JSON.stringify(kept[0]), /snapshotInstance/, 'the history was read');
    assert.deepEqual(
      [...scanTemporal('snapshot', kept, secrets), ...scanLogFiles([workerLog], secrets), ...scanText('metrics', metrics, secrets)],
      [],
      'a secret is in what Temporal keeps, the logs or the metrics',
    );
  });

  it('the scan catches a secret planted in a workflow input and memo', async () => {
    const planted = `planted-${randomBytes(18).toString('base64url')}`;
    // Inside the input's metadata, after a character: Temporal keeps both as base64 payloads.
    const handle = await client.workflow.start('snapshotInstance', {
      taskQueue: env.VMSNAP_TASK_QUEUE,
      workflowId: `vmsnap-test-planted-${randomUUID()}`,
      args: [{ instance: randomUUID(), imageName: 'planted', metadata: { note: `x${planted}` } }],
      memo: { note: `memo ${planted}` },
    });
    await handle.result().catch(() => undefined);
    const found = scanTemporal('planted run', await keptByTemporal(handle), [{ name: 'planted', value: planted }]);
    assert.ok(
      found.some((f) => /workflowExecutionStarted.*input/.test(f.where)),
      `found in the input: ${JSON.stringify(found)}`,
    );
    assert.ok(
      found.some((f) => /memo/.test(f.where)),
      `found in the memo: ${JSON.stringify(found)}`,
    );
  });
});
