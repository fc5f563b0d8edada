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
      [{ TEMPORAL_TLS_CERT: '/nonexistent/cert.pem' }, /TEMPORAL_TLS_CERT names a file that does not exist/],
      [{ VMSNAP_GLANCE_TOKEN: 'gAAAA-secret' }, /VMSNAP_GLANCE_TOKEN is no longer read.*OS_CLOUD/],
      [{ OS_AUTH_TYPE: 'none' }, /VMSNAP_GLANCE_URL is not set, and OS_AUTH_TYPE is none/],
    ];
    for (const [env, message] of bad) assert.throws(() => loadConfig(env), message);
  });

  it('never echoes the Glance credentials it refuses', () => {
    assert.throws(() => loadConfig({ VMSNAP_GLANCE_URL: 'http://admin:s3cr3t@glance:9292' }), (err: Error) => !err.message.includes('s3cr3t'));
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
});
