// vmsnap against a real Keystone (HTTPS, the stack's CA) and a Glance that checks every token with
// it: password and application-credential snapshots owned as Nova owns them, a snapshot that
// outlives several tokens, a token revoked mid-run, Keystone away for a while and for good, and
// the start-up errors of wrong settings. Proxies in front of Glance and Keystone see every token
// and make Keystone vanish; everything behind them is real.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createGuest, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import { readAccounts } from '../../scripts/lib/keystone.js';
import { startSnapshot } from '../../src/client/snapshots.js';
import { connectCloud } from '../../src/drivers/cloud.js';
import { loadConfig } from '../../src/shared/config.js';
import { closeTestCloud, stackGlanceUrl } from '../support/cloud.js';
import { evidence, recordFaultRow } from '../support/fault-report.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { startHarness, type Harness } from '../support/harness.js';
import { findImagesByName, observePause } from '../support/images.js';
import { assertAllHeld, checkRunningGuest, outcomeOf, reconcilerRemovesQueuedImage } from '../support/invariants.js';
import { createSlowGuest } from '../support/slow-guest.js';
import { startWorkerProcess } from '../support/worker-process.js';

const tag = `ks-${process.pid}`;
const dataDir = process.env.VMSNAP_DATA_DIR ?? '.data/test';
const stackCloud = loadConfig(process.env).cloud;
const accounts = readAccounts(dataDir);
const ALL = /.*/;
const lifetimeS = Number(process.env.VMSNAP_KEYSTONE_TOKEN_LIFETIME ?? 3600);

/**
 * Revokes a token as `openstack token revoke` does (DELETE /v3/auth/tokens, as the stack's admin),
 * without the CLI's seconds of start-up: with the test stack's 30 s tokens the workers' session
 * renews a token at half its life, and a revoke that came later would hit a token no longer used.
 */
async function revokeToken(token: string): Promise<void> {
  const admin = await connectCloud(loadConfig({ ...process.env, OS_CLOUD: 'vmsnap-admin' }));
  try {
    assert.ok(stackCloud?.auth.type === 'password');
    const url = new URL(`${stackCloud.auth.authUrl.replace(/\/$/, '')}/auth/tokens`);
    const headers = { ...(await admin.identity.authHeaders()), 'x-subject-token': token };
    const status = await new Promise<number>((resolve, reject) => {
      const req = httpsRequest(url, { method: 'DELETE', headers, ca: readFileSync(stackCloud!.cacert!) }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(status, 204, 'Keystone revoked the token');
  } finally {
    await admin.close();
  }
}

/** Distinct tokens the proxy saw, in the order they first came. */
function tokensSeen(proxy: FaultProxy): string[] {
  return [...new Set(proxy.requests.map((r) => r.headers['x-auth-token']).filter((t): t is string => typeof t === 'string'))];
}

describe('Keystone: vmsnap on a real OpenStack', { timeout: 600_000 }, () => {
  let glanceProxy: FaultProxy;
  let keystoneProxy: FaultProxy;

  before(async () => {
    assert.ok(stackCloud && stackCloud.auth.type === 'password', 'the test stack names its cloud (OS_CLOUD) with password auth');
    assert.ok(accounts, `the stack's Keystone accounts are in ${dataDir}`);
    glanceProxy = await startFaultProxy(await stackGlanceUrl());
    keystoneProxy = await startFaultProxy(new URL(stackCloud.auth.authUrl).origin, { ca: readFileSync(stackCloud.cacert!) });
  });

  after(async () => {
    await glanceProxy?.close();
    await keystoneProxy?.close();
    await closeTestCloud();
  });

  describe('snapshots through Keystone', () => {
    let h: Harness;
    let guest: Guest;
    let afterPause: () => Promise<void> = async () => undefined;

    before(async () => {
      h = await startHarness({
        name: 'keystone',
        glanceUrl: glanceProxy.url,
        // Keystone reached through the proxy; a small retry budget, so that "for good" ends soon.
        env: {
          OS_AUTH_URL: `${keystoneProxy.url}/v3`,
          VMSNAP_GLANCE_RETRY_ATTEMPTS: '4',
          VMSNAP_GLANCE_RETRY_INITIAL_MS: '500',
          VMSNAP_GLANCE_RETRY_MAX_MS: '2000',
        },
        wrapHypervisor: (real) => observePause(real, () => afterPause()),
      });
      guest = await createGuest({ name: `vmsnap-test-${tag}`, guestsDir: h.guestsDir, assetsDir: h.assetsDir });
    });

    after(async () => {
      await removeGuest(guest?.name ?? `vmsnap-test-${tag}`, h.guestsDir).catch(() => undefined);
      await h?.close();
    });

    const check = (imageName: string, outcome: string, expectedOutcome = 'completed') => checkRunningGuest(h, guest, imageName, outcome, expectedOutcome);

    it('a token revoked mid-snapshot: Glance answers 401, vmsnap gets a new token and completes', async () => {
      let revoked: string | undefined;
      afterPause = async () => {
        // A token of the workers' session, brand new so that it serves the next requests, then
        // revoked through Keystone's API, as `openstack token revoke` does.
        const identity = h.cloud.identity;
        identity.invalidate(await identity.authHeaders());
        revoked = (await identity.authHeaders())['x-auth-token'];
        await revokeToken(revoked!);
      };
      glanceProxy.requests.length = 0;
      const imageName = `vmsnap-test-${tag}-revoked`;
      try {
        const outcome = await outcomeOf(await startSnapshot(h.client, { instance: guest.uuid, imageName }, h.config.temporal.taskQueue));
        const refused = glanceProxy.requests.filter((r) => r.status === 401);
        const renewed = glanceProxy.requests.filter(
          (r) => r.status < 300 && r.headers['x-auth-token'] !== revoked && r.startedAt > (refused.at(-1)?.startedAt ?? Infinity),
        );
        recordFaultRow({
          fault: 'Keystone token revoked mid-snapshot',
          outcome,
          invariants: await check(imageName, outcome),
          evidence: [
            evidence(
              `${refused.length} request(s) refused by Glance with 401, all with the revoked token`,
              revoked !== undefined && refused.length >= 1 && refused.every((r) => r.headers['x-auth-token'] === revoked),
            ),
            evidence(`${renewed.length} request(s) answered after it, with a new token`, renewed.length >= 1),
          ],
        });
      } finally {
        afterPause = async () => undefined;
      }
    });

    it('Keystone unreachable for a while mid-snapshot: retried with backoff, the snapshot completes', async () => {
      afterPause = async () => {
        // The token in hand is dropped, so the next Glance call needs Keystone, which is away.
        h.cloud.identity.invalidate(await h.cloud.identity.authHeaders());
        keystoneProxy.setRule({ path: ALL, kind: 'reset' });
      };
      keystoneProxy.requests.length = 0;
      const imageName = `vmsnap-test-${tag}-keystone-blip`;
      try {
        const handle = await startSnapshot(h.client, { instance: guest.uuid, imageName }, h.config.temporal.taskQueue);
        // Keystone stays away until it has refused two requests.
        await keystoneProxy.untilReset(2, 120_000);
        keystoneProxy.setRule(undefined);
        const outcome = await outcomeOf(handle);
        const cut = keystoneProxy.requests.filter((r) => r.reset);
        const issued = keystoneProxy.requests.filter((r) => !r.fault && r.status === 201 && r.startedAt > (cut.at(-1)?.startedAt ?? Infinity));
        recordFaultRow({
          fault: 'Keystone unreachable for a while',
          outcome,
          invariants: await check(imageName, outcome),
          evidence: [
            evidence(`${cut.length} token requests cut`, cut.length >= 2),
            evidence(`${issued.length} token(s) issued after Keystone was back`, issued.length >= 1),
          ],
        });
      } finally {
        afterPause = async () => undefined;
        keystoneProxy.setRule(undefined);
      }
    });

    it('Keystone gone for good: compensation, and the reconciler removes the image once Keystone is back', async () => {
      afterPause = async () => {
        h.cloud.identity.invalidate(await h.cloud.identity.authHeaders());
        keystoneProxy.setRule({ path: ALL, kind: 'reset' });
      };
      const imageName = `vmsnap-test-${tag}-keystone-gone`;
      keystoneProxy.requests.length = 0;
      try {
        const outcome = await outcomeOf(await startSnapshot(h.client, { instance: guest.uuid, imageName }, h.config.temporal.taskQueue));
        assert.equal(outcome, 'IdentityServiceUnavailable');
        // Without a token nobody can delete the queued image; everything else is undone.
        const during = await check(imageName, outcome, 'IdentityServiceUnavailable');
        assert.equal(during['no unfinished image'], false, 'the image could not be deleted yet');
        const { 'no unfinished image': _pending, ...rest } = during;
        assertAllHeld(rest);

        afterPause = async () => undefined;
        const cut = keystoneProxy.requests.filter((r) => r.reset);
        const issued = keystoneProxy.requests.filter((r) => !r.fault && r.startedAt > (cut[0]?.startedAt ?? Infinity));
        keystoneProxy.setRule(undefined);
        await reconcilerRemovesQueuedImage(h, imageName);
        recordFaultRow({
          fault: 'Keystone gone for good',
          outcome,
          invariants: await check(imageName, outcome, 'IdentityServiceUnavailable'),
          evidence: [evidence(`${cut.length} token requests cut from the pause on, ${issued.length} answered`, cut.length > 0 && issued.length === 0)],
          note: 'retries exhausted, compensation; the queued image is removed by the reconciler once Keystone answers again',
        });
      } finally {
        afterPause = async () => undefined;
        keystoneProxy.setRule(undefined);
      }
    });
  });

  it('an application credential: the image is owned by its user and project, hashes verified', async () => {
    const h = await startHarness({ name: 'appcred', env: { OS_CLOUD: 'vmsnap-appcred' } });
    const guest = await createGuest({ name: `vmsnap-test-${tag}-ac`, guestsDir: h.guestsDir, assetsDir: h.assetsDir });
    try {
      assert.match(h.cloud.identity.description, /^application credential /);
      const result = await (
        await startSnapshot(h.client, { instance: guest.uuid, imageName: `vmsnap-test-${tag}-appcred` }, h.config.temporal.taskQueue)
      ).result();
      const image = await h.glance.getImage(result.imageId);
      assert.equal(image?.status, 'active');
      assert.equal(image?.owner, accounts!.vmsnapProjectId);
      assert.equal(image?.owner_id, accounts!.vmsnapProjectId);
      assert.equal(image?.user_id, accounts!.vmsnapUserId);
      assert.equal(image?.os_hash_value, result.sha512);
      await h.glance.deleteImage(result.imageId);
    } finally {
      await removeGuest(guest.name, h.guestsDir).catch(() => undefined);
      await h.close();
    }
  });

  it('a request that names another project is refused: a member may not make images for others', async () => {
    const h = await startHarness({ name: 'owner' });
    const guest = await createGuest({ name: `vmsnap-test-${tag}-own`, guestsDir: h.guestsDir, assetsDir: h.assetsDir });
    const imageName = `vmsnap-test-${tag}-other-project`;
    try {
      const handle = await startSnapshot(h.client, { instance: guest.uuid, imageName, projectId: randomUUID().replace(/-/g, '') }, h.config.temporal.taskQueue);
      const outcome = await outcomeOf(handle);
      assert.equal(outcome, 'InvalidInput');
      assert.deepEqual(await findImagesByName(h.glanceUrl, imageName), []);
      assert.equal((await h.store.getInstance(guest.uuid))?.taskState, null);
    } finally {
      await removeGuest(guest.name, h.guestsDir).catch(() => undefined);
      await h.close();
    }
  });

  it('a snapshot that outlives several tokens renews them and is never refused', async () => {
    const h = await startHarness({ name: 'renewal', glanceUrl: glanceProxy.url });
    // 64 MiB of data: far more than the socket buffers hold, so the upload really streams.
    const guest = await createSlowGuest({ name: `vmsnap-test-${tag}-long`, guestsDir: h.guestsDir, assetsDir: h.assetsDir, dataMiB: 64 });
    try {
      glanceProxy.requests.length = 0;
      // A slow link to Glance: the upload alone lasts longer than two token lifetimes.
      glanceProxy.setRule({ kind: 'stretch', ms: lifetimeS * 2_200, method: 'PUT', path: /\/file$/ });
      const started = Date.now();
      const result = await (
        await startSnapshot(h.client, { instance: guest.uuid, imageName: `vmsnap-test-${tag}-long` }, h.config.temporal.taskQueue)
      ).result();
      const tookS = (Date.now() - started) / 1000;
      const tokens = tokensSeen(glanceProxy);
      console.log(`snapshot of ${tookS.toFixed(0)} s with ${lifetimeS} s tokens: ${tokens.length} tokens used, ${glanceProxy.requests.length} Glance requests`);
      assert.ok(tookS > 2 * lifetimeS, `the snapshot outlived two token lifetimes (${tookS} s)`);
      assert.ok(tokens.length >= 2, `tokens were renewed during the snapshot (${tokens.length} used)`);
      assert.deepEqual(
        glanceProxy.requests.filter((r) => r.status === 401),
        [],
        'Glance never had to refuse a token',
      );
      const put = glanceProxy.requests.findIndex((r) => r.method === 'PUT');
      const after = glanceProxy.requests.slice(put + 1).map((r) => r.headers['x-auth-token']);
      assert.ok(after.length > 0 && after.every((t) => t !== glanceProxy.requests[put]!.headers['x-auth-token']), 'after the long upload, a renewed token');
      assert.equal((await h.glance.getImage(result.imageId))?.os_hash_value, result.sha512);
      await h.glance.deleteImage(result.imageId);
    } finally {
      glanceProxy.setRule(undefined);
      await removeGuest(guest.name, h.guestsDir).catch(() => undefined);
      await h.close();
    }
  });

  describe('wrong settings stop the worker at start with one clear line, and create nothing', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmsnap-ks-bad-'));
    after(() => rmSync(dir, { recursive: true, force: true }));

    const cases: [string, Record<string, string>, RegExp][] = [
      [
        'wrong password',
        { OS_PASSWORD: 'not-the-password' },
        /Keystone refused user vmsnap on project vmsnap at https:\/\/127\.0\.0\.1:\d+\/v3: check the password \(OS_PASSWORD\)/,
      ],
      [
        'wrong project',
        { OS_PROJECT_NAME: 'no-such-project' },
        /Keystone refused user vmsnap on project no-such-project at https:.*the user has a role on the project/,
      ],
      [
        'missing endpoint',
        { OS_REGION_NAME: 'Nowhere' },
        /has no image endpoint for interface public in region Nowhere \(it has [^)]*public\/RegionOne[^)]*\): set OS_INTERFACE and OS_REGION_NAME/,
      ],
      [
        'wrong CA',
        { OS_CACERT: '/etc/ssl/certs/ca-certificates.crt' },
        /the TLS certificate of Keystone at https:\/\/127\.0\.0\.1:\d+\/v3 is not trusted \(\w+\): the CA in \/etc\/ssl\/certs\/ca-certificates\.crt .* does not sign it/,
      ],
      ['no credentials at all', { OS_CLOUD: '', OS_CLIENT_CONFIG_FILE: join(dir, 'none.yaml') }, /no OpenStack credentials are set: set OS_CLOUD/],
    ];
    for (const [what, bad, message] of cases) {
      it(what, async () => {
        const store = join(dir, `${what.replace(/\W+/g, '-')}.sqlite`);
        const worker = startWorkerProcess({
          VMSNAP_STORE_PATH: store,
          VMSNAP_HOST: `test-ks-bad-${process.pid}`,
          VMSNAP_METRICS_ADDRESS: 'off',
          ...bad,
        });
        assert.equal(await worker.exited(), 5, worker.lines.join('\n'));
        // Log records are JSON; what the operator reads is the one line that is not.
        const said = worker.lines.filter((l) => !l.startsWith('{'));
        assert.equal(said.length, 1, `one line:\n${worker.lines.join('\n')}`);
        assert.match(said[0]!, /^vmsnap worker: config: /);
        assert.match(said[0]!, message);
        for (const secret of [accounts!.vmsnapPassword, accounts!.applicationCredentialSecret, accounts!.adminPassword])
          assert.ok(!worker.lines.join('\n').includes(secret));
        assert.equal(existsSync(store), false, 'nothing was created: not even the store');
      });
    }
  });
});
