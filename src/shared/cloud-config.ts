// Where the OpenStack cloud is and who vmsnap is there, read the way openstacksdk and the
// `openstack` CLI read it: OS_CLOUD names a cloud in clouds.yaml (secrets may sit in secure.yaml
// beside it), and the OS_* variables fill in or override it (the environment wins over the file).
// A missing or contradictory piece is a ConfigError that names the setting and says what to set;
// no message ever quotes a password, secret or token.
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { VmsnapError } from './errors.js';

export type Interface = 'public' | 'internal' | 'admin';

/** Keystone v3 credentials. Names and ids as Keystone takes them; at least one of each pair. */
export type KeystoneAuth =
  | {
      type: 'password';
      authUrl: string;
      username?: string;
      userId?: string;
      password: string;
      userDomainName?: string;
      userDomainId?: string;
      projectName?: string;
      projectId?: string;
      projectDomainName?: string;
      projectDomainId?: string;
    }
  | {
      type: 'v3applicationcredential';
      authUrl: string;
      applicationCredentialId?: string;
      applicationCredentialName?: string;
      applicationCredentialSecret: string;
      username?: string;
      userId?: string;
      userDomainName?: string;
      userDomainId?: string;
    }
  | {
      /** A token somebody else obtained: used as it is, never renewed (it cannot be). */
      type: 'token';
      authUrl: string;
      token: string;
    }
  | { type: 'none' };

export interface CloudSettings {
  /** The clouds.yaml entry used, if any (for messages). */
  cloud?: string;
  /** The clouds.yaml file read, if any (for messages). */
  file?: string;
  auth: KeystoneAuth;
  regionName?: string;
  /** Which endpoint of the catalog to use. */
  interface: Interface;
  /** A CA bundle (PEM) that signs Keystone's and Glance's certificates. */
  cacert?: string;
}

type Env = Record<string, string | undefined>;

function configError(setting: string, message: string): VmsnapError {
  return new VmsnapError('ConfigError', `config: ${setting} ${message}`, { setting });
}

/** The files openstacksdk looks at, in its order; the first that exists is read. */
export function cloudsYamlCandidates(env: Env, cwd = process.cwd()): string[] {
  const home = env.HOME || homedir();
  return [
    ...(env.OS_CLIENT_CONFIG_FILE ? [env.OS_CLIENT_CONFIG_FILE] : []),
    join(cwd, 'clouds.yaml'),
    join(home, '.config', 'openstack', 'clouds.yaml'),
    '/etc/openstack/clouds.yaml',
  ];
}

function secureYamlCandidates(env: Env, cloudsFile: string | undefined, cwd = process.cwd()): string[] {
  const home = env.HOME || homedir();
  return [
    ...(env.OS_CLIENT_SECURE_FILE ? [env.OS_CLIENT_SECURE_FILE] : []),
    ...(cloudsFile ? [join(dirname(cloudsFile), 'secure.yaml')] : []),
    join(cwd, 'secure.yaml'),
    join(home, '.config', 'openstack', 'secure.yaml'),
    '/etc/openstack/secure.yaml',
  ];
}

type Yaml = Record<string, unknown>;
const isObject = (v: unknown): v is Yaml => typeof v === 'object' && v !== null && !Array.isArray(v);

function readYaml(file: string, setting: string): Yaml {
  let parsed: unknown;
  try {
    parsed = parseYaml(readFileSync(file, 'utf8'));
  } catch (err) {
    // YAML errors quote the offending line, which may hold a password: say where, not what.
    const where = (err as { linePos?: { line: number }[] }).linePos?.[0]?.line;
    throw configError(
      setting,
      `names ${file}, which could not be read as YAML${where ? ` (line ${where})` : ''}: ${(err as NodeJS.ErrnoException).code ?? 'check its syntax'}`,
    );
  }
  if (!isObject(parsed) || !isObject(parsed.clouds))
    throw configError(setting, `names ${file}, which has no "clouds:" mapping: see openstacksdk's clouds.yaml format`);
  return parsed.clouds;
}

function merge(base: Yaml, over: Yaml): Yaml {
  const out: Yaml = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = isObject(v) && isObject(out[k]) ? merge(out[k], v) : v;
  return out;
}

/** The named cloud from clouds.yaml, with secure.yaml's entry for it merged on top. */
function cloudFromFiles(env: Env, name: string): { entry: Yaml; file: string } {
  const candidates = cloudsYamlCandidates(env);
  const file = candidates.find((f) => existsSync(f));
  if (!file) {
    throw configError(
      'OS_CLOUD',
      `is "${name}" but no clouds.yaml was found (looked at ${candidates.join(', ')}): set OS_CLIENT_CONFIG_FILE to your clouds.yaml`,
    );
  }
  const clouds = readYaml(file, 'OS_CLIENT_CONFIG_FILE');
  const entry = clouds[name];
  if (!isObject(entry)) {
    throw configError(
      'OS_CLOUD',
      `is "${name}", which ${file} does not define (it has: ${Object.keys(clouds).join(', ') || 'none'}): set OS_CLOUD to one of them`,
    );
  }
  const secureFile = secureYamlCandidates(env, file).find((f) => existsSync(f));
  const secure = secureFile ? readYaml(secureFile, 'OS_CLIENT_SECURE_FILE')[name] : undefined;
  return { entry: isObject(secure) ? merge(entry, secure) : entry, file };
}

// OS_* variable -> key of clouds.yaml's `auth:` section.
const AUTH_VARIABLES: Record<string, string> = {
  OS_AUTH_URL: 'auth_url',
  OS_USERNAME: 'username',
  OS_USER_ID: 'user_id',
  OS_PASSWORD: 'password',
  OS_PROJECT_NAME: 'project_name',
  OS_PROJECT_ID: 'project_id',
  OS_USER_DOMAIN_NAME: 'user_domain_name',
  OS_USER_DOMAIN_ID: 'user_domain_id',
  OS_PROJECT_DOMAIN_NAME: 'project_domain_name',
  OS_PROJECT_DOMAIN_ID: 'project_domain_id',
  OS_APPLICATION_CREDENTIAL_ID: 'application_credential_id',
  OS_APPLICATION_CREDENTIAL_NAME: 'application_credential_name',
  OS_APPLICATION_CREDENTIAL_SECRET: 'application_credential_secret',
  OS_TOKEN: 'token',
  // The older names some openrc files still carry.
  OS_TENANT_NAME: 'project_name',
  OS_TENANT_ID: 'project_id',
};
const VARIABLE_OF = Object.fromEntries(
  Object.entries(AUTH_VARIABLES)
    .filter(([v]) => !v.includes('TENANT'))
    .map(([v, k]) => [k, v]),
);
// A name and an id say the same thing: one given in the environment replaces both from the file.
const PAIRS = [
  ['username', 'user_id'],
  ['project_name', 'project_id'],
  ['user_domain_name', 'user_domain_id'],
  ['project_domain_name', 'project_domain_id'],
  ['application_credential_id', 'application_credential_name'],
];

const AUTH_TYPES: Record<string, KeystoneAuth['type']> = {
  password: 'password',
  v3password: 'password',
  v3applicationcredential: 'v3applicationcredential',
  applicationcredential: 'v3applicationcredential',
  token: 'token',
  v3token: 'token',
  none: 'none',
  noauth: 'none',
};

/** The auth type a cloud implies when it names none: what its credentials are. */
function impliedAuthType(get: (key: string) => string | undefined): KeystoneAuth['type'] {
  if (get('application_credential_secret') || get('application_credential_id')) return 'v3applicationcredential';
  if (get('token') && !get('password')) return 'token';
  return 'password';
}

function text(value: unknown, setting: string): string | undefined {
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  throw configError(setting, 'must be a string');
}

/**
 * The cloud settings, or undefined when nothing names a cloud (no OS_CLOUD, OS_AUTH_URL or
 * OS_AUTH_TYPE): a worker then refuses to start, a client that needs no image service goes on.
 */
export function loadCloudSettings(env: Env): CloudSettings | undefined {
  const name = env.OS_CLOUD || undefined;
  if (!name && !env.OS_AUTH_URL && !env.OS_AUTH_TYPE) return undefined;
  const where = name ? `cloud "${name}"` : 'the environment';
  const fromFile = name ? cloudFromFiles(env, name) : undefined;
  const entry = fromFile?.entry ?? {};
  if (entry.auth !== undefined && !isObject(entry.auth)) throw configError('OS_CLOUD', `names ${where}, whose "auth:" is not a mapping`);

  const auth: Yaml = { ...((entry.auth as Yaml | undefined) ?? {}) };
  const envAuth: Yaml = {};
  for (const [variable, key] of Object.entries(AUTH_VARIABLES)) if (env[variable]) envAuth[key] = env[variable];
  for (const pair of PAIRS) if (pair.some((k) => envAuth[k] !== undefined)) for (const k of pair) delete auth[k];
  Object.assign(auth, envAuth);
  const setting = (key: string) => (envAuth[key] !== undefined || !fromFile ? (VARIABLE_OF[key] ?? key) : `auth.${key} of ${where} in ${fromFile.file}`);
  const get = (key: string) => text(auth[key], setting(key));

  const rawType = env.OS_AUTH_TYPE || text(entry.auth_type, 'auth_type');
  const type = rawType ? AUTH_TYPES[rawType.toLowerCase()] : impliedAuthType(get);
  if (!type)
    throw configError(env.OS_AUTH_TYPE ? 'OS_AUTH_TYPE' : 'auth_type', `is "${rawType}": vmsnap knows password, v3applicationcredential, token and none`);

  const rawInterface = (env.OS_INTERFACE || env.OS_ENDPOINT_TYPE || text(entry.interface, 'interface') || 'public').replace(/URL$/, '');
  if (!['public', 'internal', 'admin'].includes(rawInterface)) throw configError('OS_INTERFACE', `is "${rawInterface}": use public, internal or admin`);
  const cacert = env.OS_CACERT || text(entry.cacert, 'cacert');
  if (cacert && !existsSync(cacert)) throw configError(env.OS_CACERT ? 'OS_CACERT' : `cacert of ${where}`, `names a file that does not exist: ${cacert}`);
  const settings = {
    ...(name ? { cloud: name, file: fromFile?.file } : {}),
    regionName: env.OS_REGION_NAME || text(entry.region_name, 'region_name'),
    interface: rawInterface as Interface,
    ...(cacert ? { cacert: resolve(cacert) } : {}),
  };
  if (type === 'none') return { ...settings, auth: { type } };

  const authUrl = get('auth_url');
  if (!authUrl) throw configError('OS_AUTH_URL', `is not set (nor auth.auth_url of ${where}): set it to Keystone's URL, like https://keystone.example:5000/v3`);
  let parsed: URL;
  try {
    parsed = new URL(authUrl);
  } catch {
    throw configError(setting('auth_url'), `is not a URL: set it like https://keystone.example:5000/v3`);
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') throw configError(setting('auth_url'), 'must be an http or https URL');
  if (parsed.username || parsed.password) throw configError(setting('auth_url'), 'must not carry credentials: set OS_USERNAME and OS_PASSWORD');
  // Keystone v3 lives under /v3; an auth URL without a version is the identity root (as keystoneauth finds it).
  const v3 = /\/v3\/?$/.test(parsed.pathname) ? authUrl.replace(/\/+$/, '') : `${authUrl.replace(/\/+$/, '')}/v3`;
  if (/\/v2\.0\/?$/.test(parsed.pathname)) throw configError(setting('auth_url'), 'points at Keystone v2.0, which is gone: use the /v3 URL');

  const forbidden = (keys: string[], why: string) => {
    const given = keys.filter((k) => get(k) !== undefined);
    if (given.length) throw configError(setting(given[0]!), `is set, but ${why}: unset it, or set OS_AUTH_TYPE to match`);
  };
  const need = (keys: string[], what: string) => {
    if (keys.every((k) => get(k) === undefined)) throw configError(keys.map((k) => VARIABLE_OF[k] ?? k).join(' or '), `is not set (nor in ${where}): ${what}`);
  };
  const domainFor = (nameKey: string, domainKeys: string[], who: string) => {
    if (get(nameKey) !== undefined) need(domainKeys, `${who} by name needs its domain (usually "Default")`);
  };
  const needUser = (what: string, who: string) => {
    need(['username', 'user_id'], what);
    domainFor('username', ['user_domain_name', 'user_domain_id'], who);
  };
  const user = () => ({
    username: get('username'),
    userId: get('user_id'),
    userDomainName: get('user_domain_name'),
    userDomainId: get('user_domain_id'),
  });

  if (type === 'token') {
    forbidden(['password', 'application_credential_secret'], `the auth type is token (OS_TOKEN)`);
    need(['token'], 'set OS_TOKEN to the token to use');
    return { ...settings, auth: { type, authUrl: v3, token: get('token')! } };
  }
  if (type === 'v3applicationcredential') {
    forbidden(['password', 'token', 'project_name', 'project_id'], 'an application credential carries its own project and is used with its secret only');
    need(['application_credential_secret'], 'an application credential needs its secret');
    need(['application_credential_id', 'application_credential_name'], 'name the application credential by id, or by name with its user');
    if (!get('application_credential_id')) {
      needUser('an application credential named by name needs its user', 'the user');
    }
    return {
      ...settings,
      auth: {
        type,
        authUrl: v3,
        applicationCredentialId: get('application_credential_id'),
        applicationCredentialName: get('application_credential_name'),
        applicationCredentialSecret: get('application_credential_secret')!,
        ...user(),
      },
    };
  }
  forbidden(['application_credential_secret', 'application_credential_id', 'token'], 'the auth type is password');
  need(['password'], 'set OS_PASSWORD (or keep it in secure.yaml beside clouds.yaml)');
  needUser('name the user', 'a user');
  need(['project_name', 'project_id'], 'vmsnap needs a project-scoped token: name the project whose images it makes');
  domainFor('project_name', ['project_domain_name', 'project_domain_id'], 'a project');
  return {
    ...settings,
    auth: {
      type,
      authUrl: v3,
      ...user(),
      password: get('password')!,
      projectName: get('project_name'),
      projectId: get('project_id'),
      projectDomainName: get('project_domain_name'),
      projectDomainId: get('project_domain_id'),
    },
  };
}

/** Who authenticates where, for messages: auth URL, user or credential, project. Never a secret. */
export function describeAuth(auth: KeystoneAuth): string {
  switch (auth.type) {
    case 'none':
      return 'no authentication';
    case 'token':
      return `a fixed token (OS_TOKEN) at ${auth.authUrl}`;
    case 'v3applicationcredential':
      return (
        `application credential ` +
        `${auth.applicationCredentialId ?? `"${auth.applicationCredentialName}" of user ${auth.username ?? auth.userId}`} at ${auth.authUrl}`
      );
    case 'password':
      return `user ${auth.username ?? auth.userId} on project ${auth.projectName ?? auth.projectId} at ${auth.authUrl}`;
  }
}
