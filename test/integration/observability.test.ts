// The worker process as operators run it: JSON log lines that carry the instance id and the
// workflow id, a Prometheus endpoint with vmsnap's metrics, and no secret anywhere: neither the
// Keystone passwords and application-credential secret of the stack's clouds.yaml, nor any token
// the worker sent to Glance (a proxy sees them all), in the logs, the metrics, or the workflow
// history (input, result, search attributes, memo).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { execa } from 'execa';
import { createGuest, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import { readAccounts } from '../../scripts/lib/keystone.js';
import { closeTestCloud, stackGlanceUrl } from '../support/cloud.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { startWorkerProcess, type WorkerProcess } from '../support/worker-process.js';

const guestName = `vmsnap-test-obs-${process.pid}`;
const dataDir = process.env.VMSNAP_DATA_DIR ?? '.data/test';
const dir = mkdtempSync(join(tmpdir(), 'vmsnap-obs-'));
const env = {
  VMSNAP_HOST: `test-obs-${process.pid}`,
  VMSNAP_TASK_QUEUE: `vmsnap-test-obs-${process.pid}`,
  VMSNAP_STORE_PATH: join(dir, 'vmsnap.sqlite'),
  VMSNAP_DEFAULT_MODE: 'cold', // the pause metric is checked too
  VMSNAP_RECONCILE_INTERVAL_MS: '0', // no schedule left behind on the shared Temporal
  VMSNAP_SNAPSHOTS_DIR: join(dir, 'snapshots'),
  VMSNAP_METRICS_ADDRESS: `127.0.0.1:${29464 + (process.pid % 500)}`,
};
let worker: WorkerProcess;
let proxy: FaultProxy;
let guest: Guest;
let client: Client;

describe('worker process: logs, metrics, secrets', { timeout: 400_000 }, () => {
  before(async () => {
    guest = await createGuest({ name: guestName, guestsDir: join(dataDir, 'guests'), assetsDir: join(dataDir, 'guest-assets') });
    proxy = await startFaultProxy(await stackGlanceUrl());
    worker = startWorkerProcess({ ...env, VMSNAP_GLANCE_URL: proxy.url });
    await worker.waitForLine(/vmsnap worker started/);
    client = new Client({ connection: await Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233' }) });
  });

  after(async () => {
    await worker?.stop();
    await proxy?.close();
    await closeTestCloud();
    await client?.connection.close();
    await removeGuest(guestName, join(dataDir, 'guests')).catch(() => undefined);
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
    const secrets: [string, string][] = [
      ['password', accounts.vmsnapPassword],
      ['application-credential secret', accounts.applicationCredentialSecret],
      ['admin password', accounts.adminPassword],
      ['glance password', accounts.glancePassword],
      ...tokens.map((t, i): [string, string] => [`token ${i + 1}`, t]),
    ];
    const history = await execa('.tools/bin/temporal', [
      'workflow',
      'show',
      '--output',
      'json',
      '--address',
      process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:17233',
      '--workflow-id',
      handle.workflowId,
    ]);
    assert.match(history.stdout, /snapshotInstance/);
    const described = JSON.stringify((await handle.describe()).raw);
    for (const [what, text] of [
      ['logs', worker.lines.join('\n')],
      ['history', history.stdout],
      ['description', described],
      ['metrics', metrics],
    ]) {
      for (const [name, secret] of secrets) {
        assert.ok(text && !text.includes(secret), `the ${name} appears in the ${what}`);
        assert.ok(!text.includes(Buffer.from(secret).toString('base64')), `the ${name} appears base64-encoded in the ${what}`);
      }
    }
  });
});
