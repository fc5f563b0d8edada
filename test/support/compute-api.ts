// What the compute API's tests share: the stack's API and its accounts, the real `openstack` CLI
// and openstacksdk (Debian's, under /usr/bin/python3) as a user runs them, tokens of the stack's
// users, and plain HTTP requests to the API for what the clients do not send (bad input).
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { startHarness, type Harness } from './harness.js';
import { readAccounts, type ApiAccounts, type KeystoneAccounts } from '../../scripts/lib/keystone.js';

/** The stack's clouds.yaml entries: the owner of the test guests, another project's member, a reader, the admin, Nova's service user. */
export type StackCloud = 'vmsnap' | 'vmsnap-other' | 'vmsnap-reader' | 'vmsnap-admin' | 'vmsnap-service';

export interface StackApi {
  /** The compute endpoint, as the catalog names it. */
  url: string;
  dataDir: string;
  accounts: KeystoneAccounts & { api: ApiAccounts };
}

export function stackApi(): StackApi {
  const url = process.env.VMSNAP_API_URL;
  const dataDir = process.env.VMSNAP_DATA_DIR;
  if (!url || !dataDir) throw new Error('VMSNAP_API_URL is not set: run ./scripts/test, or start the stack and eval "$(npm run -s stack -- env)"');
  const accounts = readAccounts(dataDir);
  if (!accounts?.api) throw new Error(`the stack in ${dataDir} has no API accounts: run npm run stack -- up`);
  return { url, dataDir, accounts: accounts as StackApi['accounts'] };
}

/** The environment the OpenStack tools read the stack's clouds from (and nothing else of ours). */
function toolEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !/^OS_/.test(k)) env[k] = v;
  return { ...env, OS_CLIENT_CONFIG_FILE: process.env.OS_CLIENT_CONFIG_FILE!, OS_CLIENT_SECURE_FILE: process.env.OS_CLIENT_SECURE_FILE! };
}

export interface ToolRun {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** `openstack --os-cloud CLOUD …args` (Debian's python3-openstackclient, its defaults); never throws for a non-zero exit. */
export async function openstack(cloud: StackCloud, args: string[], opts: { timeoutMs?: number } = {}): Promise<ToolRun> {
  const r = await execa('/usr/bin/openstack', ['--os-cloud', cloud, ...args], {
    env: toolEnv(),
    extendEnv: false,
    reject: false,
    timeout: opts.timeoutMs ?? 600_000,
  });
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** As openstack(), with `-f json`, requiring success. */
export async function openstackJson<T>(cloud: StackCloud, args: string[], opts: { timeoutMs?: number } = {}): Promise<T> {
  const r = await openstack(cloud, [...args, '-f', 'json'], opts);
  if (r.exitCode !== 0) throw new Error(`openstack ${args.join(' ')} exited ${r.exitCode}: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  return JSON.parse(r.stdout) as T;
}

/** A Python script run by Debian's interpreter, where openstacksdk is (the first python3 on PATH may lack it). */
export async function python(script: string, args: string[]): Promise<ToolRun> {
  const r = await execa('/usr/bin/python3', ['-c', script, ...args], { env: toolEnv(), extendEnv: false, reject: false, timeout: 600_000 });
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const keystone = () => {
  const dataDir = stackApi().dataDir;
  return { dispatcher: new Agent({ connect: { ca: readFileSync(join(dataDir, 'tls', 'ca.pem')) } }) };
};

/** A project-scoped token of one of the stack's users, straight from Keystone. */
export async function issueToken(user: string, password: string, project: string): Promise<string> {
  const authUrl = `https://127.0.0.1:${process.env.VMSNAP_KEYSTONE_PORT ?? '5000'}/v3`;
  const { dispatcher } = keystone();
  try {
    const res = await request(`${authUrl}/auth/tokens`, {
      method: 'POST',
      dispatcher,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        auth: {
          identity: { methods: ['password'], password: { user: { name: user, domain: { id: 'default' }, password } } },
          scope: { project: { name: project, domain: { id: 'default' } } },
        },
      }),
    });
    await res.body.dump();
    const token = res.headers['x-subject-token'];
    if (res.statusCode !== 201 || typeof token !== 'string') throw new Error(`keystone refused a token for ${user}: HTTP ${res.statusCode}`);
    return token;
  } finally {
    await dispatcher.close();
  }
}

/** Revokes a token (DELETE /v3/auth/tokens) with the admin's token. */
export async function revokeToken(adminToken: string, token: string): Promise<void> {
  const authUrl = `https://127.0.0.1:${process.env.VMSNAP_KEYSTONE_PORT ?? '5000'}/v3`;
  const { dispatcher } = keystone();
  try {
    const res = await request(`${authUrl}/auth/tokens`, { method: 'DELETE', dispatcher, headers: { 'x-auth-token': adminToken, 'x-subject-token': token } });
    await res.body.dump();
    if (res.statusCode !== 204) throw new Error(`keystone did not revoke the token: HTTP ${res.statusCode}`);
  } finally {
    await dispatcher.close();
  }
}

export interface ApiAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  // The answer's JSON, read field by field as the assertions need it.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
}

/** A request to the API as a client sends it: JSON (or a raw body), with a token when given. */
export async function apiRequest(
  method: 'GET' | 'POST',
  path: string,
  opts: { token?: string; body?: unknown; raw?: string | Buffer; headers?: Record<string, string> } = {},
): Promise<ApiAnswer> {
  // Paths as Nova's API reference writes them (/v2.1/servers/…), on the endpoint's host.
  const res = await request(`${new URL(stackApi().url).origin}${path}`, {
    method,
    headers: {
      ...(opts.token ? { 'x-auth-token': opts.token } : {}),
      ...(opts.body !== undefined || opts.raw !== undefined ? { 'content-type': 'application/json' } : {}),
      ...opts.headers,
    },
    ...(opts.raw !== undefined ? { body: opts.raw } : opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, body: text ? (JSON.parse(text) as unknown) : undefined };
}

/**
 * The workers behind the stack's API: its task queue and store (the data dir's), acting as Nova's
 * service user would, so that images can be owned by the callers' projects. glanceStallMs: a test
 * that slows the upload on purpose (to keep the task state in view) must not have it taken for a
 * stall (a stalled upload is cut off and its image replaced by a record the client never got).
 */
export function startApiWorkers(api: StackApi, opts: { name: string; glanceUrl: string; glanceStallMs: number }): Promise<Harness> {
  return startHarness({
    name: opts.name,
    glanceUrl: opts.glanceUrl,
    env: {
      VMSNAP_TASK_QUEUE: 'vmsnap',
      VMSNAP_STORE_PATH: join(api.dataDir, 'vmsnap.sqlite'),
      OS_CLOUD: 'vmsnap-service',
      VMSNAP_DEFAULT_MODE: 'auto',
      VMSNAP_RESTORE_SHUTDOWN_TIMEOUT_MS: '0',
      VMSNAP_GLANCE_STALL_MS: String(opts.glanceStallMs),
    },
  });
}
