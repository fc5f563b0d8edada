// The API's token checks against a small stand-in for Keystone's GET /v3/auth/tokens: an answer is
// kept no longer than the cache time nor past the token's expiry (the bound on a revoked token),
// concurrent checks of one token ask once, and the API's own token is renewed once when refused.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, beforeEach, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent } from 'undici';
import { TokenValidator } from '../../src/api/keystone-auth.js';
import type { Identity } from '../../src/drivers/identity.js';

let server: Server;
let url: string;
const dispatcher = new Agent();
/** What the stand-in knows: valid tokens and their expiry; the service tokens it accepts. */
const valid = new Map<string, number>();
let serviceTokens = new Set(['service-1']);
let asked: string[] = [];

before(async () => {
  server = createServer((req, res) => {
    const subject = String(req.headers['x-subject-token']);
    asked.push(subject);
    if (!serviceTokens.has(String(req.headers['x-auth-token']))) return res.writeHead(401).end();
    const expires = valid.get(subject);
    if (expires === undefined) return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        token: {
          expires_at: new Date(expires).toISOString(),
          user: { id: `u-${subject}`, name: subject },
          project: { id: 'p1', name: 'web' },
          roles: [{ name: 'member' }, { name: 'reader' }],
        },
      }),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v3`;
});

after(async () => {
  await new Promise((resolve) => server.close(resolve));
  await dispatcher.close();
});

beforeEach(() => {
  valid.clear();
  serviceTokens = new Set(['service-1']);
  asked = [];
});

/** The API's own identity: a service token that a test can make Keystone refuse. */
function service(): Identity & { renewed: number } {
  let current = 'service-1';
  const identity = {
    renewed: 0,
    description: 'test service',
    authHeaders: async () => ({ 'x-auth-token': current }),
    invalidate: () => {
      current = 'service-2';
      identity.renewed++;
    },
    caller: async () => undefined,
    knownCaller: () => undefined,
    endpoint: async () => url,
  };
  return identity;
}

it('keeps an answer for the cache time, then asks again: a revoked token is refused after at most that long', async () => {
  const tokens = new TokenValidator({ authUrl: url, identity: service(), dispatcher, cacheMs: 300 });
  valid.set('t1', Date.now() + 60_000);
  const first = await tokens.validate('t1');
  assert.deepEqual([first?.userId, first?.projectId, first?.roles], ['u-t1', 'p1', ['member', 'reader']]);
  valid.delete('t1'); // revoked in Keystone
  assert.equal((await tokens.validate('t1'))?.userId, 'u-t1', 'still the cached answer');
  assert.deepEqual(asked, ['t1']);
  await sleep(350);
  assert.equal(await tokens.validate('t1'), undefined, 'refused once the answer lapsed');
  assert.equal(await tokens.validate('made-up'), undefined);
});

it("never keeps an answer past the token's expiry, and asks once for checks that come together", async () => {
  const tokens = new TokenValidator({ authUrl: url, identity: service(), dispatcher, cacheMs: 60_000 });
  valid.set('short', Date.now() + 300);
  const together = await Promise.all([tokens.validate('short'), tokens.validate('short'), tokens.validate('short')]);
  assert.ok(together.every((c) => c?.userId === 'u-short'));
  assert.deepEqual(asked, ['short'], 'one question for three checks');
  await sleep(350);
  valid.delete('short');
  assert.equal(await tokens.validate('short'), undefined, 'expired: asked again, and refused');
  assert.deepEqual(asked, ['short', 'short']);
});

it('with no cache every check asks Keystone', async () => {
  const tokens = new TokenValidator({ authUrl: url, identity: service(), dispatcher, cacheMs: 0 });
  valid.set('t2', Date.now() + 60_000);
  await tokens.validate('t2');
  await tokens.validate('t2');
  assert.deepEqual(asked, ['t2', 't2']);
});

it('renews its own token once when Keystone refuses it, and says Keystone is unavailable when it is', async () => {
  const identity = service();
  const tokens = new TokenValidator({ authUrl: url, identity, dispatcher, cacheMs: 0 });
  valid.set('t3', Date.now() + 60_000);
  serviceTokens = new Set(['service-2']);
  assert.equal((await tokens.validate('t3'))?.userId, 'u-t3');
  assert.equal(identity.renewed, 1);
  const away = new TokenValidator({ authUrl: 'http://127.0.0.1:9/v3', identity: service(), dispatcher, cacheMs: 0 });
  await assert.rejects(away.validate('t3'), (err: Error & { code?: string }) => err.code === 'IdentityServiceUnavailable');
});
