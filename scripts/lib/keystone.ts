// The stack's Keystone: Debian's keystone under uwsgi on 127.0.0.1 over HTTPS (a CA of the stack's
// own), SQLite, fernet tokens. On a new data dir it is bootstrapped and given what a cloud gives a
// vmsnap operator: an `image` service with Glance's endpoints in the catalog, a `glance` service
// user (admin in project `service`) for Glance's token checks, and a `vmsnap` user with the member
// role in its own project, plus an application credential of that user. For vmsnap's compute API
// (made on every `up`, so older data dirs get them too): a `compute` service with the API's
// endpoints, a `vmsnap-service` user with what Nova's service user has (admin in project
// `service`), and for the policy tests a member of a second project (`vmsnap-other`) and a reader
// of project vmsnap (`vmsnap-reader`). What clients need is written as clouds.yaml, with the
// secrets in secure.yaml beside it (both 0600).
import Database from 'better-sqlite3';
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { stringify } from 'yaml';

export interface KeystoneStackConfig {
  dataDir: string;
  keystonePort: number;
  glancePort: number;
  /** Token lifetime in seconds ([token] expiration); the test stack keeps it short. */
  tokenLifetimeS: number;
  /** Port of vmsnap's compute API, named by the catalog's compute endpoints. */
  apiPort: number;
}

export const REGION = 'RegionOne';

/** What provisioning made; kept 0600 in the data dir so that `up` can be run again. */
export interface KeystoneAccounts {
  adminPassword: string;
  glancePassword: string;
  vmsnapPassword: string;
  vmsnapUserId: string;
  vmsnapProjectId: string;
  applicationCredentialId: string;
  applicationCredentialSecret: string;
  /** The compute API's accounts (ensureApiAccounts); absent in data dirs made before it. */
  api?: ApiAccounts;
}

export interface ApiAccounts {
  /** vmsnap-service: admin in project service, as Nova's service user (the API's token checks, workers that own images for others). */
  servicePassword: string;
  /** vmsnap-other: member of project vmsnap-other. */
  otherPassword: string;
  otherUserId: string;
  otherProjectId: string;
  /** vmsnap-reader: reader of project vmsnap. */
  readerPassword: string;
  readerUserId: string;
}

/** The compute endpoint of the stack's API, as clients find it in the catalog. */
export const computeUrl = (cfg: Pick<KeystoneStackConfig, 'apiPort'>) => `http://127.0.0.1:${cfg.apiPort}/v2.1`;

export function keystonePaths(dataDir: string) {
  const dir = join(dataDir, 'keystone');
  return {
    dir,
    conf: join(dir, 'keystone.conf'),
    db: join(dir, 'keystone.sqlite'),
    accounts: join(dir, 'accounts.json'),
    cloudsYaml: join(dataDir, 'clouds.yaml'),
    secureYaml: join(dataDir, 'secure.yaml'),
  };
}

export const keystoneUrl = (cfg: Pick<KeystoneStackConfig, 'keystonePort'>) => `https://127.0.0.1:${cfg.keystonePort}/v3`;

export function readAccounts(dataDir: string): KeystoneAccounts | undefined {
  const file = keystonePaths(dataDir).accounts;
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as KeystoneAccounts) : undefined;
}

export function keystoneConfig(cfg: KeystoneStackConfig): string {
  const { dir } = keystonePaths(cfg.dataDir);
  return `[DEFAULT]
log_file = ${join(cfg.dataDir, 'logs', 'keystone.log')}
use_stderr = false

[database]
connection = sqlite:///${join(dir, 'keystone.sqlite')}

[token]
provider = fernet
expiration = ${cfg.tokenLifetimeS}

[fernet_tokens]
key_repository = ${join(dir, 'fernet-keys')}

[fernet_receipts]
key_repository = ${join(dir, 'fernet-keys')}

[credential]
key_repository = ${join(dir, 'credential-keys')}

[identity]
# A test cloud: cheap password hashing keeps the many token requests of short-lived tokens cheap.
password_hash_rounds = 4
`;
}

async function manage(conf: string, args: string[]): Promise<void> {
  const r = await execa('keystone-manage', ['--config-file', conf, ...args], { reject: false, all: true });
  if (r.exitCode !== 0) throw new Error(`keystone: keystone-manage ${args[0]} failed: ${(r.all ?? '').trim().split('\n').slice(-3).join(' | ')}`);
}

/**
 * Keystone's SQLite database in WAL mode (kept in the file): Keystone can leave a read cursor open
 * within a request, and in SQLite's default mode that reader blocks the request's own commit
 * until it times out ("database is locked", a 500), now and then, after any earlier read.
 */
export function keystoneWal(dataDir: string): void {
  const db = new Database(keystonePaths(dataDir).db);
  try {
    db.pragma('journal_mode = WAL');
  } finally {
    db.close();
  }
}

/** A fresh Keystone database, bootstrapped with the admin user; the accounts are made once it runs. */
export async function initKeystone(cfg: KeystoneStackConfig, adminPassword: string): Promise<void> {
  const { dir, conf, db } = keystonePaths(cfg.dataDir);
  rmSync(db, { force: true });
  for (const keys of ['fernet-keys', 'credential-keys']) rmSync(join(dir, keys), { recursive: true, force: true });
  await manage(conf, ['db_sync']);
  await manage(conf, ['fernet_setup', '--keystone-user', 'root', '--keystone-group', 'root']);
  await manage(conf, ['credential_setup', '--keystone-user', 'root', '--keystone-group', 'root']);
  await manage(conf, [
    'bootstrap',
    '--bootstrap-password',
    adminPassword,
    '--bootstrap-admin-url',
    `${keystoneUrl(cfg)}/`,
    '--bootstrap-internal-url',
    `${keystoneUrl(cfg)}/`,
    '--bootstrap-public-url',
    `${keystoneUrl(cfg)}/`,
    '--bootstrap-region-id',
    REGION,
  ]);
}

/** A small Keystone v3 client for provisioning, as the admin. */
class KeystoneAdmin {
  private token = '';
  constructor(
    private readonly url: string,
    private readonly dispatcher: Agent,
  ) {}

  async call<T>(method: 'GET' | 'POST' | 'PUT' | 'PATCH', path: string, body?: unknown, token = this.token): Promise<{ body: T; subjectToken?: string }> {
    const res = await request(`${this.url}${path}`, {
      method,
      dispatcher: this.dispatcher,
      headers: { 'content-type': 'application/json', accept: 'application/json', ...(token ? { 'x-auth-token': token } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.body.text();
    if (res.statusCode >= 300) throw new Error(`keystone: ${method} ${path} answered ${res.statusCode}: ${text.slice(0, 200)}`);
    const subject = res.headers['x-subject-token'];
    return { body: (text ? JSON.parse(text) : {}) as T, subjectToken: typeof subject === 'string' ? subject : undefined };
  }

  async login(user: string, password: string, project: string): Promise<string> {
    const { subjectToken } = await this.call(
      'POST',
      '/auth/tokens',
      {
        auth: {
          identity: { methods: ['password'], password: { user: { name: user, domain: { id: 'default' }, password } } },
          scope: { project: { name: project, domain: { id: 'default' } } },
        },
      },
      '',
    );
    if (!subjectToken) throw new Error('keystone: no token in the answer to a login');
    return subjectToken;
  }

  async asAdmin(password: string): Promise<void> {
    this.token = await this.login('admin', password, 'admin');
  }

  /** The id of the named item, or undefined (where names are unique: the stack keeps one domain). */
  async find(collection: string, query: string): Promise<string | undefined> {
    const { body } = await this.call<Record<string, { id: string }[]>>('GET', `/${collection}?${query}`);
    return body[collection]?.[0]?.id;
  }

  async id(collection: string, name: string): Promise<string> {
    const { body } = await this.call<Record<string, { id: string }[]>>('GET', `/${collection}?name=${encodeURIComponent(name)}`);
    const found = body[collection]?.[0]?.id;
    if (!found) throw new Error(`keystone: no ${collection} named ${name}`);
    return found;
  }

  async create(collection: string, item: Record<string, unknown>): Promise<string> {
    const key = collection.replace(/s$/, '');
    const { body } = await this.call<Record<string, { id: string }>>('POST', `/${collection}`, { [key]: item });
    return body[key]!.id;
  }
}

/** Makes the image service and endpoints, the glance and vmsnap users, and the application credential. */
export async function provisionKeystone(cfg: KeystoneStackConfig, ca: string, adminPassword: string): Promise<KeystoneAccounts> {
  const dispatcher = new Agent({ connect: { ca: readFileSync(ca) } });
  const admin = new KeystoneAdmin(keystoneUrl(cfg), dispatcher);
  try {
    await admin.asAdmin(adminPassword);
    const serviceId = await admin.create('services', { type: 'image', name: 'glance', description: 'OpenStack Image service' });
    for (const iface of ['public', 'internal', 'admin']) {
      await admin.create('endpoints', {
        service_id: serviceId,
        interface: iface,
        region_id: REGION,
        url: `http://127.0.0.1:${cfg.glancePort}`,
      });
    }
    const adminRole = await admin.id('roles', 'admin');
    const memberRole = await admin.id('roles', 'member');
    const account = async (user: string, project: string, role: string, password: string) => {
      const projectId = await admin.create('projects', {
        name: project,
        domain_id: 'default',
        description: `${project} project of the vmsnap stack`,
      });
      const userId = await admin.create('users', { name: user, domain_id: 'default', password, default_project_id: projectId });
      await admin.call('PUT', `/projects/${projectId}/users/${userId}/roles/${role}`);
      return { userId, projectId };
    };
    const glancePassword = randomBytes(18).toString('base64url');
    const vmsnapPassword = randomBytes(18).toString('base64url');
    await account('glance', 'service', adminRole, glancePassword);
    const vmsnap = await account('vmsnap', 'vmsnap', memberRole, vmsnapPassword);
    // An application credential is made by its own user, with a token of that user.
    const userToken = await admin.login('vmsnap', vmsnapPassword, 'vmsnap');
    const { body } = await admin.call<{ application_credential: { id: string; secret: string } }>(
      'POST',
      `/users/${vmsnap.userId}/application_credentials`,
      { application_credential: { name: 'vmsnap-stack', description: 'vmsnap workers of this stack' } },
      userToken,
    );
    return {
      adminPassword,
      glancePassword,
      vmsnapPassword,
      vmsnapUserId: vmsnap.userId,
      vmsnapProjectId: vmsnap.projectId,
      applicationCredentialId: body.application_credential.id,
      applicationCredentialSecret: body.application_credential.secret,
    };
  } finally {
    await dispatcher.close();
  }
}

/**
 * What vmsnap's compute API needs in Keystone, made where missing (every `up`: a data dir made before
 * the API gets them): the compute service and its endpoints at the API's port, and its accounts.
 */
export async function ensureApiAccounts(cfg: KeystoneStackConfig, ca: string, accounts: KeystoneAccounts): Promise<KeystoneAccounts> {
  const dispatcher = new Agent({ connect: { ca: readFileSync(ca) } });
  const admin = new KeystoneAdmin(keystoneUrl(cfg), dispatcher);
  try {
    await admin.asAdmin(accounts.adminPassword);
    const serviceId =
      (await admin.find('services', 'type=compute')) ??
      (await admin.create('services', { type: 'compute', name: 'vmsnap', description: "vmsnap's compute API (Nova's)" }));
    const { body } = await admin.call<{ endpoints: { id: string; interface: string; url: string }[] }>('GET', `/endpoints?service_id=${serviceId}`);
    for (const iface of ['public', 'internal', 'admin']) {
      const existing = body.endpoints.find((e) => e.interface === iface);
      if (!existing) await admin.create('endpoints', { service_id: serviceId, interface: iface, region_id: REGION, url: computeUrl(cfg) });
      else if (existing.url !== computeUrl(cfg)) await admin.call('PATCH', `/endpoints/${existing.id}`, { endpoint: { url: computeUrl(cfg) } });
    }
    if (accounts.api) return accounts;
    const role = (name: string) => admin.id('roles', name);
    // A user with a password of our making, in a project, with a role there: made, or (a run that
    // stopped half way) found and given the password.
    const account = async (user: string, project: string, roleName: string) => {
      const projectId =
        (await admin.find('projects', `name=${project}`)) ??
        (await admin.create('projects', { name: project, domain_id: 'default', description: `${project} project of the vmsnap stack` }));
      const password = randomBytes(18).toString('base64url');
      const found = await admin.find('users', `name=${user}`);
      const userId = found ?? (await admin.create('users', { name: user, domain_id: 'default', password, default_project_id: projectId }));
      if (found) await admin.call('PATCH', `/users/${found}`, { user: { password } });
      await admin.call('PUT', `/projects/${projectId}/users/${userId}/roles/${await role(roleName)}`);
      return { userId, projectId, password };
    };
    const service = await account('vmsnap-service', 'service', 'admin');
    const other = await account('vmsnap-other', 'vmsnap-other', 'member');
    const reader = await account('vmsnap-reader', 'vmsnap', 'reader');
    return {
      ...accounts,
      api: {
        servicePassword: service.password,
        otherPassword: other.password,
        otherUserId: other.userId,
        otherProjectId: other.projectId,
        readerPassword: reader.password,
        readerUserId: reader.userId,
      },
    };
  } finally {
    await dispatcher.close();
  }
}

/** clouds.yaml (no secrets) and secure.yaml (the secrets), both 0600, in the stack's data dir. */
export function writeCloudsYaml(cfg: KeystoneStackConfig, ca: string, accounts: KeystoneAccounts): void {
  const paths = keystonePaths(cfg.dataDir);
  const common = { region_name: REGION, interface: 'public', identity_api_version: 3, cacert: ca };
  const user = (name: string, project: string) => ({
    auth_url: keystoneUrl(cfg),
    username: name,
    project_name: project,
    user_domain_name: 'Default',
    project_domain_name: 'Default',
  });
  const clouds = {
    clouds: {
      vmsnap: { ...common, auth: user('vmsnap', 'vmsnap') },
      'vmsnap-appcred': {
        ...common,
        auth_type: 'v3applicationcredential',
        auth: { auth_url: keystoneUrl(cfg), application_credential_id: accounts.applicationCredentialId },
      },
      'vmsnap-admin': { ...common, auth: user('admin', 'admin') },
      ...(accounts.api
        ? {
            'vmsnap-service': { ...common, auth: user('vmsnap-service', 'service') },
            'vmsnap-other': { ...common, auth: user('vmsnap-other', 'vmsnap-other') },
            'vmsnap-reader': { ...common, auth: user('vmsnap-reader', 'vmsnap') },
          }
        : {}),
    },
  };
  const secure = {
    clouds: {
      vmsnap: { auth: { password: accounts.vmsnapPassword } },
      'vmsnap-appcred': { auth: { application_credential_secret: accounts.applicationCredentialSecret } },
      'vmsnap-admin': { auth: { password: accounts.adminPassword } },
      ...(accounts.api
        ? {
            'vmsnap-service': { auth: { password: accounts.api.servicePassword } },
            'vmsnap-other': { auth: { password: accounts.api.otherPassword } },
            'vmsnap-reader': { auth: { password: accounts.api.readerPassword } },
          }
        : {}),
    },
  };
  for (const [file, doc] of [
    [paths.cloudsYaml, clouds],
    [paths.secureYaml, secure],
  ] as const) {
    writeFileSync(file, `# Written by the vmsnap stack (scripts/lib/keystone.ts).\n${stringify(doc)}`, { mode: 0o600 });
    chmodSync(file, 0o600);
  }
}

export function saveAccounts(dataDir: string, accounts: KeystoneAccounts): void {
  const file = keystonePaths(dataDir).accounts;
  mkdirSync(keystonePaths(dataDir).dir, { recursive: true });
  writeFileSync(file, JSON.stringify(accounts, null, 2), { mode: 0o600 });
  chmodSync(file, 0o600);
}
