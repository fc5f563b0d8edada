// Nova's door, end to end on the real stack: the stack's compute API (Keystone in front, found in
// the catalog), real workers (the stack's vmsnap-service identity, as Nova's service user), a real
// guest owned by the stack's vmsnap project, and the clients people use, unchanged: Debian's
// `openstack` CLI with its defaults and openstacksdk. Then Nova's default policy with the stack's
// other users, and bad input through the API. One guest for the whole file.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createGuest, guestState, readCounter, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { syncInventory } from '../../src/activities/inventory.js';
import { snapshotWorkflowId } from '../../src/shared/names.js';
import { closeTestCloud, stackGlanceUrl } from '../support/cloud.js';
import { apiRequest, issueToken, openstack, openstackJson, python, revokeToken, stackApi, startApiWorkers, type StackApi } from '../support/compute-api.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import type { Harness } from '../support/harness.js';
import { findImagesByName } from '../support/images.js';
import { until } from '../support/until.js';

const tag = randomBytes(3).toString('hex');
const named = (what: string) => `vmsnap-test-api-${tag}-${what}`;

describe("Nova's door: the compute API with the real openstack CLI and openstacksdk", { timeout: 30 * 60_000 }, () => {
  let api: StackApi;
  let h: Harness;
  let guest: Guest;
  let proxy: FaultProxy;
  let snapshotId: string;
  const member = () => issueToken('vmsnap', api.accounts.vmsnapPassword, 'vmsnap');
  const other = () => issueToken('vmsnap-other', api.accounts.api.otherPassword, 'vmsnap-other');
  const reader = () => issueToken('vmsnap-reader', api.accounts.api.readerPassword, 'vmsnap');
  const admin = () => issueToken('admin', api.accounts.adminPassword, 'admin');

  before(async () => {
    api = stackApi();
    proxy = await startFaultProxy(await stackGlanceUrl());
    // The workers the stack's API starts workflows for: its task queue and store (the data dir's),
    // acting as Nova's service user would, so that images can be owned by the callers' projects.
    h = await startApiWorkers(api, { name: 'api', glanceUrl: proxy.url, glanceStallMs: 120_000 });
    guest = await createGuest({ name: named('guest'), guestsDir: h.guestsDir, assetsDir: h.assetsDir });
    await syncInventory({ hypervisor: h.hypervisor, store: h.store, host: h.config.host });
  });

  after(async () => {
    const glanceUrl = await stackGlanceUrl().catch(() => undefined);
    for (const what of ['snap', 'sdk', 'bk-1', 'bk-2', 'bk-3', 'second', 'foreign', 'read-only', 'bad']) {
      const images = glanceUrl ? await findImagesByName(glanceUrl, named(what)).catch(() => []) : [];
      for (const image of images) await h?.glance.deleteImage(image.id).catch(() => undefined);
    }
    await removeGuest(guest?.name ?? named('guest'), h?.guestsDir ?? join(api.dataDir, 'guests')).catch(() => undefined);
    await h?.close();
    await proxy?.close();
    await closeTestCloud();
  });

  it('server list and show: the owner sees the guest, another project does not, an admin sees all with its host', async () => {
    type Row = { ID: string; Name: string; Status: string };
    const mine = await openstackJson<Row[]>('vmsnap', ['server', 'list']);
    assert.deepEqual(
      mine.filter((s) => s.ID === guest.uuid).map((s) => [s.Name, s.Status]),
      [[guest.name, 'ACTIVE']],
    );
    const theirs = await openstackJson<Row[]>('vmsnap-other', ['server', 'list']);
    assert.ok(!theirs.some((s) => s.ID === guest.uuid), "another project's member does not see it");
    const all = await openstackJson<Row[]>('vmsnap-admin', ['server', 'list', '--all-projects']);
    assert.ok(all.some((s) => s.ID === guest.uuid));
    const shown = await openstackJson<Record<string, unknown>>('vmsnap-admin', ['server', 'show', guest.uuid]);
    assert.equal(shown['OS-EXT-SRV-ATTR:host'], h.config.host);
    assert.equal(shown.project_id, api.accounts.vmsnapProjectId);
    const refused = await openstack('vmsnap-other', ['server', 'show', guest.uuid]);
    assert.notEqual(refused.exitCode, 0);
    assert.match(refused.stderr, /No server with a name or ID|could not be found/);
  });

  it('server image create --wait: the task state shows while it runs, a second request meanwhile is a 409, the image is owned as Nova owns it', async () => {
    // Glance takes the data slowly, so the snapshot stays in image_uploading for a while.
    proxy.setRule({ kind: 'stretch', ms: 40_000, method: 'PUT', path: /\/file$/, times: 1 });
    const created = openstackJson<{ id: string; status: string }>('vmsnap', ['server', 'image', 'create', '--name', named('snap'), '--wait', guest.uuid]);
    created.catch(() => undefined);
    await until('task state image_uploading', 120_000, async () => {
      const seen = await apiRequest('GET', `/v2.1/servers/${guest.uuid}`, { token: await member() });
      return seen.body?.server?.['OS-EXT-STS:task_state'] === 'image_uploading';
    });
    const shown = await openstackJson<Record<string, unknown>>('vmsnap', ['server', 'show', guest.uuid]);
    assert.equal(shown['OS-EXT-STS:task_state'], 'image_uploading', 'openstack server show shows the running task');
    const second = await apiRequest('POST', `/v2.1/servers/${guest.uuid}/action`, { token: await member(), body: { createImage: { name: named('second') } } });
    assert.equal(second.status, 409);
    assert.match(second.body.conflictingRequest.message, /task_state image_uploading/);

    const image = await created;
    assert.equal(image.status, 'active');
    snapshotId = image.id;
    const record = await h.glance.getImage(image.id);
    assert.ok(record);
    assert.equal(record.owner, api.accounts.vmsnapProjectId, "the caller's project owns it");
    assert.equal(record.user_id, api.accounts.vmsnapUserId);
    assert.equal(record.image_type, 'snapshot');
    assert.equal(record.instance_uuid, guest.uuid);
    assert.equal(record.owner_project_name, 'vmsnap');
    assert.equal(record.owner_user_name, 'vmsnap');
    assert.equal(record.visibility, 'private');
    assert.match(String(record.os_hash_value), /^[0-9a-f]{128}$/);
    assert.deepEqual(await findImagesByName(await stackGlanceUrl(), named('second')), [], 'the refused request made no image');
    const after = await openstackJson<Record<string, unknown>>('vmsnap', ['server', 'show', guest.uuid]);
    assert.equal(after['OS-EXT-STS:task_state'], null);
  });

  it('openstacksdk: create_server_image(wait=True)', async () => {
    const script = [
      'import sys, openstack',
      "conn = openstack.connect(cloud='vmsnap')",
      'server = conn.compute.find_server(sys.argv[1], ignore_missing=False)',
      'image = conn.compute.create_server_image(server, sys.argv[2], wait=True, timeout=600)',
      'print(image.id, image.status)',
    ].join('\n');
    const r = await python(script, [guest.name, named('sdk')]);
    assert.equal(r.exitCode, 0, r.stderr);
    const [id, status] = r.stdout.trim().split(/\s+/);
    assert.equal(status, 'active');
    const record = await h.glance.getImage(id!);
    assert.equal(record?.image_type, 'snapshot');
    assert.equal(record?.instance_uuid, guest.uuid);
  });

  it('server backup create --rotate 2, three times: the two newest backups stay', async () => {
    const made: string[] = [];
    for (const n of [1, 2, 3]) {
      const image = await openstackJson<{ id: string; status: string }>('vmsnap', [
        'server',
        'backup',
        'create',
        '--name',
        named(`bk-${n}`),
        '--type',
        'daily',
        '--rotate',
        '2',
        '--wait',
        guest.uuid,
      ]);
      assert.equal(image.status, 'active');
      made.push(image.id);
    }
    // The rotation runs after the upload: the first backup goes once the third is made.
    await until('the oldest backup rotated out', 60_000, async () => (await h.glance.getImage(made[0]!)) === undefined);
    const backups = (await h.glance.listImages({ instance_uuid: guest.uuid })).filter((i) => i.image_type === 'backup' && i.backup_type === 'daily');
    assert.deepEqual(backups.map((i) => i.name).sort(), [named('bk-2'), named('bk-3')]);
    for (const b of backups) assert.equal(b.owner, api.accounts.vmsnapProjectId);
  });

  it('server rebuild --image: the guest runs on the snapshot again', async () => {
    assert.ok(snapshotId, 'the snapshot test ran');
    const before = await readCounter(guest.diskPath, 'qcow2');
    const r = await openstack('vmsnap', ['server', 'rebuild', '--image', snapshotId, '--wait', guest.uuid]);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.equal(await guestState(guest.name), 'running');
    // The counter went back to the snapshot's and counts on from there.
    const now = await until('the guest counting again', 120_000, async () => {
      const c = await readCounter(guest.diskPath, 'qcow2');
      return c.a > 0 && c;
    });
    assert.ok(now.a < before.a, `the counter restarted from the snapshot (${now.a} < ${before.a})`);
    const shown = await openstackJson<Record<string, unknown>>('vmsnap', ['server', 'show', guest.uuid]);
    assert.equal(shown.status, 'ACTIVE');
    assert.equal(shown['OS-EXT-STS:task_state'], null);
  });

  it('server event list: each request, and for an admin how it ended', async () => {
    const events = await openstackJson<{ 'Request ID': string; Action: string }[]>('vmsnap', ['server', 'event', 'list', guest.uuid]);
    const actions = events.map((e) => e.Action);
    assert.equal(actions.filter((a) => a === 'createImage').length, 2, actions.join(', '));
    assert.equal(actions.filter((a) => a === 'createBackup').length, 3, actions.join(', '));
    assert.equal(actions[0], 'rebuild', 'newest first');
    const rebuild = events[0]!['Request ID'];
    const shown = await openstackJson<{ events: { event: string; result: string }[] }>('vmsnap-admin', ['server', 'event', 'show', guest.uuid, rebuild]);
    assert.deepEqual(
      shown.events.map((e) => [e.event, e.result]),
      [['compute_rebuild_instance', 'Success']],
    );
  });

  it("policy: another project's member finds nothing and makes nothing; a reader reads but may not act; no token or a revoked one is refused", async () => {
    const foreign = await apiRequest('POST', `/v2.1/servers/${guest.uuid}/action`, { token: await other(), body: { createImage: { name: named('foreign') } } });
    assert.equal(foreign.status, 404);
    assert.equal(foreign.body.itemNotFound.message, `Instance ${guest.uuid} could not be found.`);
    const readerToken = await reader();
    assert.equal((await apiRequest('GET', `/v2.1/servers/${guest.uuid}`, { token: readerToken })).status, 200);
    const readOnly = await apiRequest('POST', `/v2.1/servers/${guest.uuid}/action`, {
      token: readerToken,
      body: { createImage: { name: named('read-only') } },
    });
    assert.equal(readOnly.status, 403);
    assert.equal(readOnly.body.forbidden.message, "Policy doesn't allow os_compute_api:servers:create_image to be performed.");
    const glanceUrl = await stackGlanceUrl();
    assert.deepEqual(await findImagesByName(glanceUrl, named('foreign')), []);
    assert.deepEqual(await findImagesByName(glanceUrl, named('read-only')), []);

    const anonymous = await apiRequest('GET', '/v2.1/servers');
    assert.equal(anonymous.status, 401);
    assert.match(String(anonymous.headers['www-authenticate']), /^Keystone uri="https:\/\/127\.0\.0\.1:\d+\/v3"$/);

    // A revoked token: refused once the API's cached answer lapses (VMSNAP_API_TOKEN_CACHE_S).
    const token = await member();
    assert.equal((await apiRequest('GET', '/v2.1/servers', { token })).status, 200);
    await revokeToken(await admin(), token);
    const revokedAt = Date.now();
    const cacheS = Number(process.env.VMSNAP_API_TOKEN_CACHE_S ?? '60');
    await until('the revoked token refused', (cacheS + 15) * 1000, async () => (await apiRequest('GET', '/v2.1/servers', { token })).status === 401);
    const lapse = (Date.now() - revokedAt) / 1000;
    console.log(`a revoked token was refused ${lapse.toFixed(1)} s after its revocation (token cache ${cacheS} s)`);
    assert.ok(lapse <= cacheS + 15, `refused within the cache bound (${lapse} s)`);
  });

  it("bad input through the API: Nova's 400s (413 for a body too large), and nothing started", async () => {
    const token = await member();
    const before = await h.client.workflow.getHandle(snapshotWorkflowId(guest.uuid)).describe();
    const post = (body: unknown) => apiRequest('POST', `/v2.1/servers/${guest.uuid}/action`, { token, body });
    const cases: [string, Promise<Awaited<ReturnType<typeof apiRequest>>>, number, RegExp][] = [
      ['unknown action', post({ forceSnapshot: { name: named('bad') } }), 400, /^There is no such action: forceSnapshot$/],
      ['missing name', post({ createImage: {} }), 400, /'name' is a required property/],
      ['300-character name', post({ createImage: { name: 'x'.repeat(300) } }), 400, /is too long/],
      ['reserved metadata key', post({ createImage: { name: named('bad'), metadata: { instance_uuid: 'x' } } }), 400, /metadata\.instance_uuid: is reserved/],
      [
        'malformed JSON',
        apiRequest('POST', `/v2.1/servers/${guest.uuid}/action`, { token, raw: '{"createImage": {"name": "x"' }),
        400,
        /^Malformed request body$/,
      ],
      [
        '10 MB body',
        apiRequest('POST', `/v2.1/servers/${guest.uuid}/action`, { token, raw: Buffer.alloc(10 * 1024 * 1024, 0x20) }),
        413,
        /^Request is too large\.$/,
      ],
    ];
    for (const [what, answer, status, message] of cases) {
      const res = await answer;
      assert.equal(res.status, status, `${what}: ${JSON.stringify(res.body)}`);
      const [fault] = Object.values(res.body as Record<string, { code: number; message: string }>);
      assert.equal(fault!.code, status, what);
      assert.match(fault!.message, message, what);
    }
    const now = await h.client.workflow.getHandle(snapshotWorkflowId(guest.uuid)).describe();
    assert.equal(now.runId, before.runId, 'no snapshot was started');
    assert.deepEqual(await findImagesByName(await stackGlanceUrl(), named('bad')), []);
  });
});
