// The cloud settings, read as openstacksdk reads them: clouds.yaml and secure.yaml in their
// places, the OS_* variables on top, and one clear error per missing or contradictory piece.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { stringify } from 'yaml';
import { describeAuth, loadCloudSettings } from '../../src/shared/cloud-config.js';

const dir = mkdtempSync(join(tmpdir(), 'vmsnap-cloud-config-'));
const ca = join(dir, 'ca.pem');
writeFileSync(ca, 'not really a certificate');
const PASSWORD = 's3cr3t-Pa55word-do-not-show';
const SECRET = 'app-cred-S3CRET-do-not-show';

function files(name: string, clouds: unknown, secure?: unknown): string {
  const folder = join(dir, name);
  mkdirSync(folder, { recursive: true });
  writeFileSync(join(folder, 'clouds.yaml'), stringify({ clouds }));
  if (secure) writeFileSync(join(folder, 'secure.yaml'), stringify({ clouds: secure }));
  return join(folder, 'clouds.yaml');
}

const auth = {
  auth_url: 'https://keystone.example:5000/v3',
  username: 'vmsnap',
  project_name: 'backups',
  user_domain_name: 'Default',
  project_domain_name: 'Default',
};
const mine = files('mine', { prod: { auth, region_name: 'RegionOne', interface: 'internal', cacert: ca } }, { prod: { auth: { password: PASSWORD } } });
// HOME is not this folder, and no clouds.yaml is in the working directory: only what a test names is found.
const base = { HOME: join(dir, 'home'), OS_CLIENT_CONFIG_FILE: mine };

describe('cloud settings (clouds.yaml, secure.yaml, OS_*)', () => {
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('reads the named cloud, with its secret from secure.yaml beside clouds.yaml', () => {
    const c = loadCloudSettings({ ...base, OS_CLOUD: 'prod' });
    assert.deepEqual(c, {
      cloud: 'prod',
      file: mine,
      regionName: 'RegionOne',
      interface: 'internal',
      cacert: ca,
      auth: {
        type: 'password',
        authUrl: 'https://keystone.example:5000/v3',
        username: 'vmsnap',
        userId: undefined,
        password: PASSWORD,
        userDomainName: 'Default',
        userDomainId: undefined,
        projectName: 'backups',
        projectId: undefined,
        projectDomainName: 'Default',
        projectDomainId: undefined,
      },
    });
    assert.equal(describeAuth(c.auth), 'user vmsnap on project backups at https://keystone.example:5000/v3');
  });

  it('lets the environment win: a value, and a name that replaces the file id', () => {
    const withId = files('withid', { prod: { auth: { ...auth, project_name: undefined, project_id: 'p-from-file' } } });
    const c = loadCloudSettings({
      ...base,
      OS_CLIENT_CONFIG_FILE: withId,
      OS_CLOUD: 'prod',
      OS_PASSWORD: 'from-env',
      OS_PROJECT_NAME: 'other',
      OS_REGION_NAME: 'RegionTwo',
      OS_INTERFACE: 'publicURL',
    });
    assert.ok(c && c.auth.type === 'password');
    assert.equal(c.auth.password, 'from-env');
    assert.equal(c.auth.projectName, 'other');
    assert.equal(c.auth.projectId, undefined, 'the file project id gives way to the name from the environment');
    assert.equal(c.regionName, 'RegionTwo');
    assert.equal(c.interface, 'public');
  });

  it('finds clouds.yaml in ~/.config/openstack when nothing names a file', () => {
    const home = join(dir, 'home2');
    mkdirSync(join(home, '.config', 'openstack'), { recursive: true });
    writeFileSync(join(home, '.config', 'openstack', 'clouds.yaml'), stringify({ clouds: { h: { auth: { ...auth, password: PASSWORD } } } }));
    const c = loadCloudSettings({ HOME: home, OS_CLOUD: 'h' });
    assert.equal(c?.file, join(home, '.config', 'openstack', 'clouds.yaml'));
    assert.equal(c?.interface, 'public');
  });

  it('works from OS_* alone, as an openrc file, and adds /v3 to a bare auth URL', () => {
    const c = loadCloudSettings({
      HOME: base.HOME,
      OS_AUTH_URL: 'https://keystone.example:5000/',
      OS_USERNAME: 'u',
      OS_PASSWORD: PASSWORD,
      OS_USER_DOMAIN_ID: 'default',
      OS_PROJECT_ID: 'p1',
    });
    assert.ok(c && c.auth.type === 'password');
    assert.equal(c.auth.authUrl, 'https://keystone.example:5000/v3');
    assert.equal(c.auth.projectId, 'p1');
  });

  it('takes an application credential, by id alone or by name with its user', () => {
    const byId = loadCloudSettings({
      HOME: base.HOME,
      OS_AUTH_URL: auth.auth_url,
      OS_APPLICATION_CREDENTIAL_ID: 'ac1',
      OS_APPLICATION_CREDENTIAL_SECRET: SECRET,
    });
    assert.ok(byId && byId.auth.type === 'v3applicationcredential', 'the type follows from the credential');
    assert.equal(byId.auth.applicationCredentialSecret, SECRET);
    assert.equal(describeAuth(byId.auth), 'application credential ac1 at https://keystone.example:5000/v3');
    const byName = loadCloudSettings({
      HOME: base.HOME,
      OS_AUTH_TYPE: 'v3applicationcredential',
      OS_AUTH_URL: auth.auth_url,
      OS_APPLICATION_CREDENTIAL_NAME: 'nightly',
      OS_APPLICATION_CREDENTIAL_SECRET: SECRET,
      OS_USERNAME: 'u',
      OS_USER_DOMAIN_NAME: 'Default',
    });
    assert.ok(byName && byName.auth.type === 'v3applicationcredential');
    assert.equal(byName.auth.applicationCredentialName, 'nightly');
  });

  it('takes a fixed token, and none for a standalone Glance', () => {
    const t = loadCloudSettings({ HOME: base.HOME, OS_AUTH_URL: auth.auth_url, OS_TOKEN: 'gAAAA-token' });
    assert.equal(t?.auth.type, 'token');
    assert.deepEqual(loadCloudSettings({ HOME: base.HOME, OS_AUTH_TYPE: 'none' })?.auth, { type: 'none' });
    assert.equal(loadCloudSettings({ HOME: base.HOME }), undefined, 'nothing named: no cloud');
  });

  it('stops on a missing or contradictory piece, naming the setting and what to set', () => {
    const bad: [Record<string, string>, RegExp][] = [
      [
        { OS_CLOUD: 'nope', OS_CLIENT_CONFIG_FILE: mine },
        /OS_CLOUD is "nope", which .*clouds\.yaml does not define \(it has: prod\): set OS_CLOUD to one of them/,
      ],
      [{ OS_CLOUD: 'prod', OS_CLIENT_CONFIG_FILE: join(dir, 'missing.yaml') }, /OS_CLOUD is "prod" but no clouds\.yaml was found \(looked at .*missing\.yaml/],
      [{ OS_AUTH_URL: auth.auth_url, OS_USERNAME: 'u', OS_USER_DOMAIN_NAME: 'Default', OS_PROJECT_ID: 'p' }, /OS_PASSWORD is not set .*secure\.yaml/],
      [
        { OS_AUTH_URL: auth.auth_url, OS_USERNAME: 'u', OS_PASSWORD: PASSWORD, OS_PROJECT_ID: 'p' },
        /OS_USER_DOMAIN_NAME or OS_USER_DOMAIN_ID is not set .*a user by name needs its domain/,
      ],
      [{ OS_AUTH_URL: auth.auth_url, OS_USER_ID: 'u', OS_PASSWORD: PASSWORD }, /OS_PROJECT_NAME or OS_PROJECT_ID is not set .*project-scoped token/],
      [
        { OS_AUTH_URL: auth.auth_url, OS_USER_ID: 'u', OS_PASSWORD: PASSWORD, OS_PROJECT_NAME: 'p' },
        /OS_PROJECT_DOMAIN_NAME or OS_PROJECT_DOMAIN_ID is not set/,
      ],
      [
        {
          OS_AUTH_URL: auth.auth_url,
          OS_AUTH_TYPE: 'password',
          OS_USER_ID: 'u',
          OS_PASSWORD: PASSWORD,
          OS_PROJECT_ID: 'p',
          OS_APPLICATION_CREDENTIAL_SECRET: SECRET,
        },
        /OS_APPLICATION_CREDENTIAL_SECRET is set, but the auth type is password/,
      ],
      [
        { OS_AUTH_URL: auth.auth_url, OS_APPLICATION_CREDENTIAL_ID: 'ac', OS_APPLICATION_CREDENTIAL_SECRET: SECRET, OS_PASSWORD: PASSWORD },
        /OS_PASSWORD is set, but an application credential/,
      ],
      [
        {
          OS_AUTH_URL: auth.auth_url,
          OS_AUTH_TYPE: 'v3applicationcredential',
          OS_APPLICATION_CREDENTIAL_NAME: 'n',
          OS_APPLICATION_CREDENTIAL_SECRET: SECRET,
        },
        /OS_USERNAME or OS_USER_ID is not set .*needs its user/,
      ],
      [{ OS_AUTH_URL: auth.auth_url, OS_AUTH_TYPE: 'saml2' }, /OS_AUTH_TYPE is "saml2": vmsnap knows password, v3applicationcredential, token and none/],
      [{ OS_AUTH_URL: auth.auth_url, OS_TOKEN: 't', OS_INTERFACE: 'private' }, /OS_INTERFACE is "private": use public, internal or admin/],
      [{ OS_AUTH_URL: auth.auth_url, OS_TOKEN: 't', OS_CACERT: join(dir, 'no-ca.pem') }, /OS_CACERT names a file that does not exist/],
      [{ OS_AUTH_URL: 'https://keystone.example:5000/v2.0', OS_TOKEN: 't' }, /points at Keystone v2\.0, which is gone/],
      [{ OS_AUTH_URL: `https://admin:${PASSWORD}@keystone.example/v3`, OS_TOKEN: 't' }, /must not carry credentials/],
      [{ OS_AUTH_TYPE: 'password', OS_USERNAME: 'u' }, /OS_AUTH_URL is not set .*set it to Keystone's URL/],
    ];
    for (const [env, message] of bad) {
      assert.throws(
        () => loadCloudSettings({ HOME: base.HOME, ...env }),
        (err: Error & { code?: string }) => {
          assert.equal(err.code, 'ConfigError');
          assert.match(err.message, message);
          assert.ok(!err.message.includes(PASSWORD) && !err.message.includes(SECRET), `a secret in: ${err.message}`);
          return true;
        },
        JSON.stringify(env),
      );
    }
  });

  it('names the file of a setting that came from clouds.yaml, and never quotes a broken YAML line', () => {
    const noDomain = files('nodomain', { c: { auth: { auth_url: auth.auth_url, username: 'u', password: PASSWORD, project_id: 'p' } } });
    assert.throws(
      () => loadCloudSettings({ ...base, OS_CLIENT_CONFIG_FILE: noDomain, OS_CLOUD: 'c' }),
      /OS_USER_DOMAIN_NAME or OS_USER_DOMAIN_ID is not set \(nor in cloud "c"\)/,
    );
    const broken = join(dir, 'broken.yaml');
    writeFileSync(broken, `clouds:\n  c:\n    auth:\n      password: "${PASSWORD}\n     x: [\n`);
    assert.throws(
      () => loadCloudSettings({ ...base, OS_CLIENT_CONFIG_FILE: broken, OS_CLOUD: 'c' }),
      (err: Error) => /could not be read as YAML/.test(err.message) && !err.message.includes(PASSWORD),
    );
  });
});
