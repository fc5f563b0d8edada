// The compute API's HTTP surface without a stack: fastify's own inject, a real SQLite store, and
// tokens a fake Keystone knows. Version discovery and microversions, Nova's error shapes, its
// default policy (a project's readers read, members act, admins see all, another project's server
// is a 404), the server view, bad input refused before anything starts, and instance actions from
// the store's events. What reaches Temporal is test/integration/api.test.ts's.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Client } from '@temporalio/client';
import type { FastifyInstance } from 'fastify';
import { buildApp, MAX_BODY_BYTES } from '../../src/api/app.js';
import type { Caller } from '../../src/api/policy.js';
import { SqliteStore } from '../../src/store/sqlite.js';

const A = 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa';
const B = 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb';
const WEB = '11111111-1111-4111-8111-111111111111';
const DB = '22222222-2222-4222-8222-222222222222';
const OTHER = '33333333-3333-4333-8333-333333333333';
const STOPPED = '44444444-4444-4444-8444-444444444444';

const caller = (userId: string, projectId: string, roles: string[]): Caller => ({ userId, userName: userId, projectId, projectName: projectId, roles });
const TOKENS: Record<string, Caller> = {
  member: caller('alice', A, ['member', 'reader']),
  reader: caller('rita', A, ['reader']),
  other: caller('bob', B, ['member', 'reader']),
  admin: caller('root', 'adminproject', ['admin', 'member', 'reader']),
};

let dir: string;
let store: SqliteStore;
let app: FastifyInstance;
// The client is never reached by these requests: a call on it would throw.
const noTemporal = new Proxy({} as Client, {
  get: () => {
    throw new Error('Temporal was reached');
  },
});

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vmsnap-api-'));
  store = new SqliteStore(join(dir, 'vmsnap.sqlite'));
  await store.migrate();
  await store.syncHostInstances('host-1', [
    { id: WEB, name: 'web', powerState: 'running', projectId: A, userId: 'alice', projectName: 'a', userName: 'alice', baseImageRef: OTHER },
    { id: DB, name: 'db', powerState: 'paused', projectId: A, userId: 'alice' },
    { id: STOPPED, name: 'cold', powerState: 'shutdown', projectId: A, userId: 'alice' },
    { id: OTHER, name: 'theirs', powerState: 'running', projectId: B, userId: 'bob' },
  ]);
  app = buildApp(
    {
      store,
      client: noTemporal,
      taskQueue: 'vmsnap',
      tokens: { validate: async (token) => TOKENS[token] },
      keystoneUrl: 'https://keystone.example/v3',
      glance: { url: 'http://glance.example', dispatcher: undefined as never },
      acceptTimeoutMs: 1000,
    },
    { logLevel: false },
  );
  await app.ready();
});

after(async () => {
  await app?.close();
  await store?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function call(method: 'GET' | 'POST', url: string, opts: { token?: string; body?: unknown; headers?: Record<string, string>; raw?: string } = {}) {
  const res = await app.inject({
    method,
    url,
    headers: {
      ...(opts.token ? { 'x-auth-token': opts.token } : {}),
      ...(opts.body !== undefined || opts.raw ? { 'content-type': 'application/json' } : {}),
      ...opts.headers,
    },
    ...(opts.raw !== undefined ? { payload: opts.raw } : opts.body !== undefined ? { payload: JSON.stringify(opts.body) } : {}),
  });
  // An answer's JSON, read field by field as the assertions need it.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  return { status: res.statusCode, headers: res.headers, body: res.body ? (JSON.parse(res.body) as Record<string, any>) : undefined };
}

const action = (id: string, body: unknown, token = 'member') => call('POST', `/v2.1/servers/${id}/action`, { token, body });

describe('version discovery and microversions', () => {
  it('lists v2.1 with its range at / and /v2.1, without a token', async () => {
    const root = await call('GET', '/');
    assert.equal(root.status, 200);
    assert.deepEqual(
      root.body!.versions.map((v: Record<string, unknown>) => [v.id, v.status, v.min_version, v.version]),
      [['v2.1', 'CURRENT', '2.1', '2.45']],
    );
    assert.equal(root.body!.versions[0].links[0].href, 'http://localhost:80/v2.1/');
    for (const path of ['/v2.1', '/v2.1/']) {
      const v = await call('GET', path);
      assert.equal(v.status, 200, path);
      assert.equal(v.body!.version.id, 'v2.1');
      assert.equal(v.body!.version.version, '2.45');
    }
  });

  it('answers at the microversion asked for, 2.1 when none, and refuses what it does not serve', async () => {
    const at = async (headers: Record<string, string>) => (await call('GET', `/v2.1/servers/${WEB}`, { token: 'member', headers })).headers;
    assert.equal((await at({}))['openstack-api-version'], 'compute 2.1');
    assert.equal((await at({ 'OpenStack-API-Version': 'compute 2.19' }))['openstack-api-version'], 'compute 2.19');
    assert.equal((await at({ 'OpenStack-API-Version': 'volume 3.1, compute latest' }))['x-openstack-nova-api-version'], '2.45');
    assert.equal((await at({ 'X-OpenStack-Nova-API-Version': '2.9' }))['openstack-api-version'], 'compute 2.9');
    assert.match(String((await at({}))['vary']), /OpenStack-API-Version/);
    const bad = await call('GET', '/v2.1/servers', { token: 'member', headers: { 'OpenStack-API-Version': 'compute 2.x' } });
    assert.equal(bad.status, 400);
    assert.match(bad.body!.badRequest.message, /invalid format/);
    const high = await call('GET', '/v2.1/servers', { token: 'member', headers: { 'OpenStack-API-Version': 'compute 2.99' } });
    assert.equal(high.status, 406);
    assert.match(high.body!.computeFault.message, /Version 2.99 is not supported by the API. Minimum is 2.1 and maximum is 2.45/);
  });
});

describe('Keystone and the policy', () => {
  it('refuses a request without a token, or with one Keystone does not accept, naming Keystone', async () => {
    for (const token of [undefined, 'made-up']) {
      const res = await call('GET', '/v2.1/servers', token ? { token } : {});
      assert.equal(res.status, 401);
      assert.equal(res.headers['www-authenticate'], 'Keystone uri="https://keystone.example/v3"');
      assert.deepEqual(res.body, { error: { code: 401, title: 'Unauthorized', message: 'The request you have made requires authentication.' } });
    }
    assert.equal((await call('GET', '/v2.1/nothing-here')).status, 401, 'unknown paths too: nothing is told before the token');
  });

  it("lists the caller's project only; admins see all projects with all_tenants; others may not ask", async () => {
    const names = async (token: string, query = '') =>
      ((await call('GET', `/v2.1/servers${query}`, { token })).body!.servers as { name: string }[]).map((s) => s.name).sort();
    assert.deepEqual(await names('member'), ['cold', 'db', 'web']);
    assert.deepEqual(await names('reader'), ['cold', 'db', 'web']);
    assert.deepEqual(await names('other'), ['theirs']);
    assert.deepEqual(await names('admin'), [], "an admin's own project has none");
    assert.deepEqual(await names('admin', '?all_tenants=1'), ['cold', 'db', 'theirs', 'web']);
    assert.deepEqual(await names('admin', `?all_tenants=true&project_id=${B}`), ['theirs']);
    const refused = await call('GET', '/v2.1/servers/detail?all_tenants=1', { token: 'member' });
    assert.equal(refused.status, 403);
    assert.equal(refused.body!.forbidden.message, "Policy doesn't allow os_compute_api:servers:detail:get_all_tenants to be performed.");
    assert.deepEqual(await names('member', '?name=EB'), ['web'], 'name: a substring, any case');
    assert.deepEqual(await names('member', '?status=paused'), ['db']);
    const page = await call('GET', '/v2.1/servers?limit=1', { token: 'member' });
    assert.equal(page.body!.servers.length, 1);
    assert.match(page.body!.servers_links[0].href, /marker=/);
    assert.equal((await call('GET', '/v2.1/servers?marker=nope', { token: 'member' })).status, 400);
  });

  it("shows another project's server to nobody but admins: a 404, as for one that does not exist", async () => {
    for (const [token, id] of [
      ['other', WEB],
      ['member', OTHER],
      ['member', '99999999-9999-4999-8999-999999999999'],
      ['member', 'web'],
    ] as const) {
      const res = await call('GET', `/v2.1/servers/${id}`, { token });
      assert.equal(res.status, 404, `${token} ${id}`);
      assert.equal(res.body!.itemNotFound.message, `Instance ${id} could not be found.`);
    }
    assert.equal((await call('GET', `/v2.1/servers/${OTHER}`, { token: 'admin' })).status, 200);
  });

  it('lets readers read and members act, and tells a reader it may not act (403)', async () => {
    assert.equal((await call('GET', `/v2.1/servers/${WEB}`, { token: 'reader' })).status, 200);
    for (const body of [{ createImage: { name: 'x' } }, { createBackup: { name: 'x', backup_type: 'daily', rotation: 1 } }, { rebuild: { imageRef: OTHER } }]) {
      const res = await action(WEB, body, 'reader');
      assert.equal(res.status, 403, JSON.stringify(body));
      assert.match(
        res.body!.forbidden.message,
        /^Policy doesn't allow os_compute_api:(servers:create_image|os-create-backup|servers:rebuild) to be performed\.$/,
      );
    }
    const foreign = await action(WEB, { createImage: { name: 'x' } }, 'other');
    assert.equal(foreign.status, 404);
  });
});

describe('the server view', () => {
  it("shows Nova's states, the owner and the image; the host to admins only", async () => {
    const member = (await call('GET', `/v2.1/servers/${WEB}`, { token: 'member', headers: { 'OpenStack-API-Version': 'compute 2.45' } })).body!.server;
    assert.equal(member.status, 'ACTIVE');
    assert.equal(member['OS-EXT-STS:vm_state'], 'active');
    assert.equal(member['OS-EXT-STS:power_state'], 1);
    assert.equal(member['OS-EXT-STS:task_state'], null);
    assert.equal(member.tenant_id, A);
    assert.equal(member.user_id, 'alice');
    assert.equal(member.image.id, OTHER);
    assert.equal(member.locked, false, '2.9');
    assert.equal(member.description, null, '2.19');
    assert.deepEqual(member.tags, [], '2.26');
    assert.ok(!('OS-EXT-SRV-ATTR:host' in member));
    const admin = (await call('GET', `/v2.1/servers/${WEB}`, { token: 'admin' })).body!.server;
    assert.equal(admin['OS-EXT-SRV-ATTR:host'], 'host-1');
    assert.ok(!('locked' in admin), 'not at 2.1');
    const paused = (await call('GET', `/v2.1/servers/${DB}`, { token: 'member' })).body!.server;
    assert.deepEqual([paused.status, paused['OS-EXT-STS:power_state'], paused.image], ['PAUSED', 3, '']);
    assert.equal((await call('GET', `/v2.1/servers/${STOPPED}`, { token: 'member' })).body!.server.status, 'SHUTOFF');
  });
});

describe('bad input: Nova shapes, and nothing started (Temporal is never reached)', () => {
  const refused = async (res: Awaited<ReturnType<typeof call>>, status: number, fault: string, message: RegExp) => {
    assert.equal(res.status, status, JSON.stringify(res.body));
    assert.match(res.body![fault].message, message);
    assert.equal(res.body![fault].code, status);
  };

  it('an unknown action, a missing or too long name, reserved metadata keys, other fields', async () => {
    await refused(await action(WEB, { reboot: { type: 'SOFT' } }), 400, 'badRequest', /^There is no such action: reboot$/);
    await refused(
      await action(WEB, { createImage: {} }),
      400,
      'badRequest',
      /Invalid input for field\/attribute createImage\. .*'name' is a required property/,
    );
    await refused(await action(WEB, { createImage: { name: 'x'.repeat(300) } }), 400, 'badRequest', /Invalid input for field\/attribute name\. .* is too long/);
    await refused(await action(WEB, { createImage: { name: ' lead' } }), 400, 'badRequest', /Can not start or end with whitespace/);
    await refused(await action(WEB, { createImage: { name: 'x', metadata: { image_type: 'mine' } } }), 400, 'badRequest', /metadata\.image_type: is reserved/);
    await refused(await action(WEB, { createImage: { name: 'x', metadata: { 'bad/key': 'v' } } }), 400, 'badRequest', /Additional properties are not allowed/);
    await refused(await action(WEB, { createImage: { name: 'x', color: 'red' } }), 400, 'badRequest', /'color' was unexpected/);
    await refused(await action(WEB, { createBackup: { name: 'x', backup_type: 'daily' } }), 400, 'badRequest', /'rotation' is a required property/);
    await refused(await action(WEB, { createBackup: { name: 'x', backup_type: 'daily', rotation: -1 } }), 400, 'badRequest', /rotation/);
    await refused(await action(WEB, { rebuild: { imageRef: 'not-a-uuid' } }), 400, 'badRequest', /is not a 'uuid'/);
    await refused(await action(WEB, { rebuild: { imageRef: OTHER, name: 'renamed' } }), 400, 'badRequest', /cannot change the name/);
    await refused(await action(WEB, { rebuild: { imageRef: OTHER, description: 'mine' } }), 400, 'badRequest', /cannot change the description/);
  });

  it('a body that is not JSON, too large, or of another type', async () => {
    await refused(
      await call('POST', `/v2.1/servers/${WEB}/action`, { token: 'member', raw: '{"createImage": {"name": ' }),
      400,
      'badRequest',
      /^Malformed request body$/,
    );
    await refused(await call('POST', `/v2.1/servers/${WEB}/action`, { token: 'member', raw: '[]' }), 400, 'badRequest', /^Malformed request body$/);
    const huge = JSON.stringify({ createImage: { name: 'x', metadata: { k: 'v'.repeat(10 * 1024 * 1024) } } });
    assert.ok(huge.length > MAX_BODY_BYTES);
    await refused(await call('POST', `/v2.1/servers/${WEB}/action`, { token: 'member', raw: huge }), 413, 'overLimit', /^Request is too large\.$/);
    const text = await call('POST', `/v2.1/servers/${WEB}/action`, { token: 'member', raw: 'x', headers: { 'content-type': 'text/plain' } });
    await refused(text, 415, 'badMediaType', /Unsupported Content-Type/);
  });

  it("an instance whose state Nova's check refuses: 409", async () => {
    await refused(
      await action(DB, { createBackup: { name: 'x', backup_type: 'daily', rotation: 1 } }),
      409,
      'conflictingRequest',
      /Cannot 'createBackup' instance .* vm_state paused/,
    );
    await refused(await action(DB, { rebuild: { imageRef: OTHER } }), 409, 'conflictingRequest', /Cannot 'rebuild' instance .* vm_state paused/);
    assert.ok(await store.compareAndSwapTaskState(WEB, null, 'image_uploading', 'snapshot-x/run-1'));
    try {
      await refused(
        await action(WEB, { createImage: { name: 'x' } }),
        409,
        'conflictingRequest',
        /Cannot 'createImage' instance .* task_state image_uploading/,
      );
      const shown = (await call('GET', `/v2.1/servers/${WEB}`, { token: 'member' })).body!.server;
      assert.equal(shown['OS-EXT-STS:task_state'], 'image_uploading');
    } finally {
      await store.releaseTaskState(WEB, 'snapshot-x/run-1');
    }
  });

  it('an unknown path is a 404 in the fault shape, never a stack trace', async () => {
    const res = await call('GET', '/v2.1/os-hypervisors', { token: 'member' });
    assert.equal(res.status, 404);
    assert.deepEqual(res.body, { itemNotFound: { code: 404, message: 'The resource could not be found.' } });
  });
});

describe("what Horizon's pages read besides servers: Nova's answers for a cloud without flavors, quotas or usage", () => {
  it('flavors: none, and any flavor is a 404', async () => {
    assert.deepEqual((await call('GET', '/v2.1/flavors/detail?is_public=True', { token: 'reader' })).body, { flavors: [] });
    assert.deepEqual((await call('GET', '/v2.1/flavors', { token: 'member' })).body, { flavors: [] });
    const one = await call('GET', '/v2.1/flavors/unknown', { token: 'member' });
    assert.equal(one.status, 404);
    assert.deepEqual(one.body, { itemNotFound: { code: 404, message: 'Flavor unknown could not be found.' } });
    assert.equal((await call('GET', '/v2.1/flavors/detail')).status, 401, 'behind Keystone like the rest');
  });

  it('key pairs and server groups: none, and any one is a 404', async () => {
    assert.deepEqual((await call('GET', '/v2.1/os-keypairs', { token: 'member' })).body, { keypairs: [] });
    assert.deepEqual((await call('GET', '/v2.1/os-server-groups', { token: 'member' })).body, { server_groups: [] });
    assert.equal((await call('GET', '/v2.1/os-keypairs/mine', { token: 'member' })).body!.itemNotFound.code, 404);
    assert.equal((await call('GET', `/v2.1/os-server-groups/${OTHER}`, { token: 'member' })).body!.itemNotFound.code, 404);
  });

  it("limits: no quota for new instances, the project's instances in use, the fields of the microversion", async () => {
    const old = (await call('GET', '/v2.1/limits?reserved=1', { token: 'member' })).body!.limits;
    assert.deepEqual(old.rate, []);
    assert.equal(old.absolute.maxTotalInstances, 0);
    assert.equal(old.absolute.totalInstancesUsed, 3, "project A's three servers");
    assert.equal(old.absolute.maxSecurityGroups, 10, 'before 2.36');
    assert.equal(old.absolute.maxImageMeta, 128, 'before 2.39');
    const latest = (await call('GET', '/v2.1/limits', { token: 'other', headers: { 'openstack-api-version': 'compute latest' } })).body!.limits;
    assert.equal(latest.absolute.totalInstancesUsed, 1, "project B's one server");
    assert.equal(latest.absolute.maxSecurityGroups, undefined);
    assert.equal(latest.absolute.maxImageMeta, undefined);
  });

  it("simple tenant usage: a project's readers read its empty report; other projects' and the listing are the admins'", async () => {
    assert.deepEqual((await call('GET', `/v2.1/os-simple-tenant-usage/${A}?start=2026-01-01T00:00:00`, { token: 'reader' })).body, { tenant_usage: {} });
    assert.equal((await call('GET', `/v2.1/os-simple-tenant-usage/${A}`, { token: 'other' })).status, 403);
    assert.equal((await call('GET', '/v2.1/os-simple-tenant-usage', { token: 'member' })).status, 403);
    assert.deepEqual((await call('GET', '/v2.1/os-simple-tenant-usage', { token: 'admin' })).body, { tenant_usages: [] });
  });
});

describe('instance actions', () => {
  it('one action per run, newest first; its events for admins only', async () => {
    await store.recordEvent({ instanceId: STOPPED, action: 'createImage', event: 'start', requestId: 'snapshot-x/run-a', details: {} });
    await store.recordEvent({ instanceId: STOPPED, action: 'createImage', event: 'finish', requestId: 'snapshot-x/run-a', details: {} });
    await store.recordEvent({ instanceId: STOPPED, action: 'rebuild', event: 'start', requestId: 'restore-x/run-b', details: {} });
    await store.recordEvent({ instanceId: STOPPED, action: 'rebuild', event: 'error', requestId: 'restore-x/run-b', details: { code: 'ImageCorrupt' } });
    await store.recordFault({
      instanceId: STOPPED,
      code: 'ImageCorrupt',
      message: 'the download did not match',
      details: { workflowId: 'restore-x', runId: 'run-b' },
    });
    const list = await call('GET', `/v2.1/servers/${STOPPED}/os-instance-actions`, { token: 'reader' });
    assert.equal(list.status, 200);
    assert.deepEqual(
      list.body!.instanceActions.map((a: Record<string, unknown>) => [a.action, a.request_id, a.message, a.project_id]),
      [
        ['rebuild', 'req-run-b', 'Error', A],
        ['createImage', 'req-run-a', null, A],
      ],
    );
    assert.match(list.body!.instanceActions[0].start_time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$/);
    const member = (await call('GET', `/v2.1/servers/${STOPPED}/os-instance-actions/req-run-b`, { token: 'member' })).body!.instanceAction;
    assert.ok(!('events' in member));
    const admin = (await call('GET', `/v2.1/servers/${STOPPED}/os-instance-actions/req-run-b`, { token: 'admin' })).body!.instanceAction;
    assert.deepEqual(
      admin.events.map((e: Record<string, unknown>) => [e.event, e.result, e.traceback]),
      [['compute_rebuild_instance', 'Error', 'the download did not match']],
    );
    assert.equal((await call('GET', `/v2.1/servers/${STOPPED}/os-instance-actions/req-nope`, { token: 'member' })).status, 404);
    assert.equal((await call('GET', `/v2.1/servers/${STOPPED}/os-instance-actions`, { token: 'other' })).status, 404);
  });
});
