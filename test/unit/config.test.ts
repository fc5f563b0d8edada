import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { loadConfig } from '../../src/shared/config.js';

describe('config', () => {
  it('has working defaults for a single host', () => {
    const c = loadConfig({ VMSNAP_DATA_DIR: '/var/lib/vmsnap', VMSNAP_HOST: 'kvm1' });
    assert.equal(c.temporal.address, '127.0.0.1:7233');
    assert.equal(c.temporal.namespace, 'default');
    assert.equal(c.temporal.taskQueue, 'vmsnap');
    // Glance comes from the service catalog unless named; no cloud named, none assumed.
    assert.equal(c.glance.url, undefined);
    assert.equal(c.cloud, undefined);
    assert.equal(c.snapshotsDir, '/var/lib/vmsnap/snapshots');
    assert.equal(c.storePath, '/var/lib/vmsnap/vmsnap.sqlite');
    assert.equal(c.host, 'kvm1');
    // The compute API: Nova's address and port, a minute's token cache.
    assert.deepEqual(c.api, { host: '0.0.0.0', port: 8774, tokenCacheMs: 60_000, acceptTimeoutMs: 60_000 });
    const api = loadConfig({ VMSNAP_API_PORT: '18774', VMSNAP_API_TOKEN_CACHE_S: '0', VMSNAP_API_PUBLIC_URL: 'https://compute.example:8774/' }).api;
    assert.deepEqual([api.port, api.tokenCacheMs, api.publicUrl], [18774, 0, 'https://compute.example:8774']);
  });

  it('stops on a bad value with a message naming the setting', () => {
    const bad: [Record<string, string>, RegExp][] = [
      [{ VMSNAP_GLANCE_URL: 'not a url' }, /VMSNAP_GLANCE_URL is not a URL/],
      [{ VMSNAP_GLANCE_URL: 'ftp://x' }, /VMSNAP_GLANCE_URL must be an http or https URL/],
      [{ VMSNAP_GLANCE_URL: 'http://admin:secret@glance:9292' }, /VMSNAP_GLANCE_URL must not carry credentials/],
      [{ TEMPORAL_ADDRESS: 'localhost' }, /TEMPORAL_ADDRESS must be host:port/],
      [{ VMSNAP_HOST: 'a/b' }, /VMSNAP_HOST must be/],
      [{ VMSNAP_TASK_QUEUE: 'a b' }, /VMSNAP_TASK_QUEUE must be/],
      [{ VMSNAP_DISCOVERY_INTERVAL_MS: '-1' }, /VMSNAP_DISCOVERY_INTERVAL_MS must be a positive whole number/],
      [
        { TEMPORAL_TLS_CLIENT_CERT_PATH: '/nonexistent/cert.pem', TEMPORAL_TLS_CLIENT_KEY_PATH: '/nonexistent/key.pem' },
        /TEMPORAL_TLS_CLIENT_CERT_PATH names a file that does not exist/,
      ],
      [{ TEMPORAL_TLS_CERT: '/etc/hostname' }, /TEMPORAL_TLS_CERT is no longer read: use Temporal's name TEMPORAL_TLS_CLIENT_CERT_PATH/],
      [{ TEMPORAL_CONFIG_FILE: '/nonexistent/temporal.toml' }, /TEMPORAL_CONFIG_FILE names a file that does not exist/],
      [{ VMSNAP_STORE_URL_FILE: '/nonexistent/store-url' }, /VMSNAP_STORE_URL_FILE could not be read/],
      [{ VMSNAP_GLANCE_TOKEN: 'gAAAA-secret' }, /VMSNAP_GLANCE_TOKEN is no longer read.*OS_CLOUD/],
      [{ OS_AUTH_TYPE: 'none' }, /VMSNAP_GLANCE_URL is not set, and OS_AUTH_TYPE is none/],
      [{ VMSNAP_API_PORT: '70000' }, /VMSNAP_API_PORT must be a TCP port/],
      [{ VMSNAP_API_HOST: 'a b' }, /VMSNAP_API_HOST must be an IP address or host name/],
      [{ VMSNAP_API_TOKEN_CACHE_S: '-5' }, /VMSNAP_API_TOKEN_CACHE_S must be a whole number/],
      [{ VMSNAP_API_PUBLIC_URL: 'compute:8774' }, /VMSNAP_API_PUBLIC_URL must be an http or https URL|VMSNAP_API_PUBLIC_URL is not a URL/],
    ];
    for (const [env, message] of bad) assert.throws(() => loadConfig(env), message);
  });

  it('never echoes the Glance credentials it refuses', () => {
    assert.throws(
      () => loadConfig({ VMSNAP_GLANCE_URL: 'http://admin:s3cr3t@glance:9292' }),
      (err: Error) => !err.message.includes('s3cr3t'),
    );
  });

  it('reads a JSON config file, with the environment taking precedence', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'vmsnap-config-')), 'vmsnap.json');
    writeFileSync(file, JSON.stringify({ VMSNAP_GLANCE_URL: 'http://glance.example:9292/', OS_AUTH_TYPE: 'none', VMSNAP_HOST: 'from-file' }));
    const c = loadConfig({ VMSNAP_CONFIG_FILE: file, VMSNAP_HOST: 'from-env' });
    assert.equal(c.glance.url, 'http://glance.example:9292');
    assert.equal(c.cloud?.auth.type, 'none');
    assert.equal(c.host, 'from-env');
    writeFileSync(file, '{not json');
    assert.throws(() => loadConfig({ VMSNAP_CONFIG_FILE: file }), /VMSNAP_CONFIG_FILE could not be read as JSON/);
  });

  it("reads Temporal's connection as the temporal CLI does: temporal.toml profiles under the environment", () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmsnap-config-'));
    const toml = join(dir, 'temporal.toml');
    const ca = join(dir, 'ca.pem');
    writeFileSync(ca, '-----BEGIN CERTIFICATE-----\n');
    writeFileSync(
      toml,
      [
        '[profile.default]',
        'address = "temporal.example:7233"',
        'namespace = "ops"',
        '[profile.cloud]',
        'address = "ns.a1b2c.tmprl.cloud:7233"',
        'namespace = "ns.a1b2c"',
        'api_key = "key-from-file"',
        '[profile.mtls]',
        'address = "t.example:7233"',
        '[profile.mtls.tls]',
        `server_ca_cert_path = "${ca}"`,
        'server_name = "t.internal"',
      ].join('\n'),
    );
    const d = loadConfig({ TEMPORAL_CONFIG_FILE: toml });
    assert.equal(d.temporal.address, 'temporal.example:7233');
    assert.equal(d.temporal.namespace, 'ops');
    assert.equal(d.temporal.profile, 'default');
    assert.equal(d.temporal.tls, undefined);

    const c = loadConfig({ TEMPORAL_CONFIG_FILE: toml, TEMPORAL_PROFILE: 'cloud', TEMPORAL_NAMESPACE: 'from-env' });
    assert.equal(c.temporal.address, 'ns.a1b2c.tmprl.cloud:7233');
    assert.equal(c.temporal.namespace, 'from-env', 'the environment wins over the file');
    assert.equal(c.temporal.apiKey, 'key-from-file');
    assert.equal(c.temporal.tls, true, 'an API key turns TLS on, as in the temporal CLI');

    const m = loadConfig({ TEMPORAL_CONFIG_FILE: toml, TEMPORAL_PROFILE: 'mtls' });
    assert.ok(typeof m.temporal.tls === 'object');
    assert.equal(m.temporal.tls.serverNameOverride, 't.internal');
    assert.equal(Buffer.from(m.temporal.tls.serverRootCACertificate ?? []).toString(), '-----BEGIN CERTIFICATE-----\n');

    assert.throws(() => loadConfig({ TEMPORAL_CONFIG_FILE: toml, TEMPORAL_PROFILE: 'nope' }), /TEMPORAL_PROFILE names no profile/);
    writeFileSync(toml, '[profile.default]\nadress = "typo:7233"\n');
    assert.throws(() => loadConfig({ TEMPORAL_CONFIG_FILE: toml }), /TEMPORAL_CONFIG_FILE could not be read/);
    assert.equal(loadConfig({ TEMPORAL_TLS: 'true' }).temporal.tls && true, true);
  });

  it('reads secrets from <NAME>_FILE (systemd credentials), never quoting them', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmsnap-config-'));
    writeFileSync(join(dir, 'store-url'), 'postgresql://vmsnap:pw-s3cr3t@db:5432/vmsnap\n');
    writeFileSync(join(dir, 'api-key'), 'key-s3cr3t');
    const c = loadConfig({ VMSNAP_STORE_URL_FILE: join(dir, 'store-url'), TEMPORAL_API_KEY_FILE: join(dir, 'api-key') });
    assert.equal(c.storeUrl, 'postgresql://vmsnap:pw-s3cr3t@db:5432/vmsnap');
    assert.equal(c.temporal.apiKey, 'key-s3cr3t');
    assert.throws(
      () => loadConfig({ TEMPORAL_API_KEY_FILE: join(dir, 'api-key'), TEMPORAL_API_KEY: 'x' }),
      (err: Error) => /TEMPORAL_API_KEY_FILE and TEMPORAL_API_KEY are both set/.test(err.message) && !err.message.includes('s3cr3t'),
    );
  });
});
