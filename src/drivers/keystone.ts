// Keystone v3 as vmsnap's identity: one session per process, as keystoneauth keeps one. It gets a
// project-scoped token (password or application credential), caches it, and renews it before it
// expires; a token a service refused (401) is dropped and the next request gets a new one.
// Requests that need a token wait for one renewal together rather than each starting their own.
// Secrets live in the request body and the token in headers only: no message quotes either.
import { request, type Dispatcher } from 'undici';
import { describeAuth, type CloudSettings, type KeystoneAuth } from '../shared/cloud-config.js';
import { VmsnapError } from '../shared/errors.js';
import { cloudDispatcher, errorCode, tlsError } from './http-errors.js';
import type { Caller, Identity } from './identity.js';

/** keystoneauth treats a token with less than this left as expired. */
const EXPIRY_MARGIN_MS = 120_000;

interface CatalogEntry {
  type: string;
  endpoints: { interface: string; region_id?: string | null; region?: string | null; url: string }[];
}

interface Token {
  value: string;
  /** Local clock: received + Keystone's lifetime, so a skewed clock does not matter. */
  receivedAt: number;
  expiresAt: number;
  caller: Caller;
  catalog: CatalogEntry[];
}

interface KeystoneTokenBody {
  token?: {
    expires_at?: string;
    issued_at?: string;
    user?: { id?: string; name?: string };
    project?: { id?: string; name?: string };
    roles?: { name?: string }[];
    catalog?: CatalogEntry[];
  };
}

function authBody(auth: Exclude<KeystoneAuth, { type: 'none' | 'token' }>): unknown {
  const domain = (name?: string, id?: string) => {
    if (id) return { id };
    return name ? { name } : undefined;
  };
  if (auth.type === 'v3applicationcredential') {
    const credential = auth.applicationCredentialId
      ? { id: auth.applicationCredentialId, secret: auth.applicationCredentialSecret }
      : {
          name: auth.applicationCredentialName,
          secret: auth.applicationCredentialSecret,
          user: auth.userId ? { id: auth.userId } : { name: auth.username, domain: domain(auth.userDomainName, auth.userDomainId) },
        };
    return { auth: { identity: { methods: ['application_credential'], application_credential: credential } } };
  }
  const user = auth.userId
    ? { id: auth.userId, password: auth.password }
    : { name: auth.username, domain: domain(auth.userDomainName, auth.userDomainId), password: auth.password };
  const project = auth.projectId ? { id: auth.projectId } : { name: auth.projectName, domain: domain(auth.projectDomainName, auth.projectDomainId) };
  return { auth: { identity: { methods: ['password'], password: { user } }, scope: { project } } };
}

export interface KeystoneOptions {
  /** How long Keystone may stay silent. */
  timeoutMs?: number;
  /** Told of each new token (a log line: renewals are worth seeing). */
  onToken?: (info: { expiresInMs: number; caller: Caller; renewal: boolean }) => void;
}

export class KeystoneSession implements Identity {
  readonly description: string;
  /** Tokens obtained from Keystone so far (for tests and logs: renewals show here). */
  tokensIssued = 0;
  private current: Token | undefined;
  private lastCaller: Caller | undefined;
  private pending: Promise<Token> | undefined;
  private readonly dispatcher: Dispatcher;
  private readonly auth: Exclude<KeystoneAuth, { type: 'none' }>;

  constructor(
    private readonly settings: CloudSettings,
    private readonly opts: KeystoneOptions = {},
  ) {
    if (settings.auth.type === 'none') throw new Error('KeystoneSession needs credentials: use NoAuth for OS_AUTH_TYPE=none');
    this.auth = settings.auth;
    this.description = describeAuth(settings.auth);
    this.dispatcher = cloudDispatcher(settings.cacert, opts.timeoutMs ?? 30_000);
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }

  /** Renew at keystoneauth's margin, or half the lifetime for short-lived tokens; `fresh`: at a quarter gone. */
  private usable(token: Token | undefined, fresh: boolean): token is Token {
    if (!token) return false;
    const life = token.expiresAt - token.receivedAt;
    const left = token.expiresAt - Date.now();
    return left > Math.min(EXPIRY_MARGIN_MS, life / 2) && (!fresh || left > life * 0.75);
  }

  private async token(fresh = false): Promise<Token> {
    if (this.usable(this.current, fresh)) return this.current;
    // One renewal at a time; everybody who needs a token waits for it.
    this.pending ??= this.obtain().then(
      (token) => {
        this.current = token;
        this.lastCaller = token.caller;
        this.pending = undefined;
        return token;
      },
      (err: unknown) => {
        this.pending = undefined;
        throw err;
      },
    );
    return this.pending;
  }

  async authHeaders(opts: { fresh?: boolean } = {}): Promise<Record<string, string>> {
    return { 'x-auth-token': (await this.token(opts.fresh)).value };
  }

  invalidate(headers: Record<string, string>): void {
    if (this.current && headers['x-auth-token'] === this.current.value) this.current = undefined;
  }

  async caller(): Promise<Caller> {
    return (await this.token()).caller;
  }

  knownCaller(): Caller | undefined {
    return this.lastCaller;
  }

  async endpoint(serviceType: string): Promise<string> {
    const { catalog } = await this.token();
    const { interface: wanted, regionName } = this.settings;
    const services = catalog.filter((s) => s.type === serviceType);
    const url = services
      .flatMap((s) => s.endpoints)
      .find((e) => e.interface === wanted && (!regionName || e.region_id === regionName || e.region === regionName))?.url;
    if (url) return url;
    const offered = services.flatMap((s) => s.endpoints.map((e) => `${e.interface}/${e.region_id ?? e.region ?? 'no region'}`));
    throw new VmsnapError(
      'ConfigError',
      `config: the service catalog of ${this.auth.authUrl} has no ${serviceType} endpoint for interface ` +
        `${wanted}${regionName ? ` in region ${regionName}` : ''} ` +
        `(${offered.length ? `it has ${offered.join(', ')}` : `no ${serviceType} service at all`}): set OS_INTERFACE and OS_REGION_NAME to one it has, ` +
        `register the endpoint in Keystone, or name it with VMSNAP_GLANCE_URL`,
      { setting: 'OS_REGION_NAME', serviceType, interface: wanted, region: regionName },
    );
  }

  private async obtain(): Promise<Token> {
    const path = `${this.auth.authUrl}/auth/tokens`;
    const sent = Date.now();
    const headers: Record<string, string> = { 'content-type': 'application/json', accept: 'application/json', 'user-agent': 'vmsnap' };
    let reply: { statusCode: number; headers: Record<string, string | string[] | undefined>; text: string };
    try {
      // A fixed token cannot be renewed, only looked at: Keystone says whether it is still good
      // and hands out its catalog.
      const res =
        this.auth.type === 'token'
          ? await request(`${path}`, {
              method: 'GET',
              headers: { ...headers, 'x-auth-token': this.auth.token, 'x-subject-token': this.auth.token },
              dispatcher: this.dispatcher,
            })
          : await request(path, { method: 'POST', headers, body: JSON.stringify(authBody(this.auth)), dispatcher: this.dispatcher });
      reply = { statusCode: res.statusCode, headers: res.headers, text: await res.body.text() };
    } catch (err) {
      throw tlsError(err, 'Keystone', this.auth.authUrl, this.settings.cacert) ?? this.unavailable(`failed: ${errorCode(err) ?? (err as Error).message}`);
    }
    const { statusCode } = reply;
    if (statusCode >= 500 || statusCode === 408 || statusCode === 429) throw this.unavailable(`answered ${statusCode}`);
    if (statusCode === 401 || statusCode === 404 || statusCode === 403) {
      throw new VmsnapError('ConfigError', `config: Keystone refused ${this.refusedWhat()} (HTTP ${statusCode})`, {
        setting: 'OS_PASSWORD',
        status: statusCode,
      });
    }
    if (statusCode !== 200 && statusCode !== 201) {
      throw new VmsnapError(
        'ConfigError',
        `config: Keystone at ${this.auth.authUrl} answered ${statusCode} to the token request for ${this.description}: check the auth settings ` +
          `(OS_AUTH_URL must be Keystone's v3 URL)`,
        {
          setting: 'OS_AUTH_URL',
          status: statusCode,
        },
      );
    }
    const value = this.auth.type === 'token' ? this.auth.token : reply.headers['x-subject-token'];
    let body: KeystoneTokenBody;
    try {
      body = JSON.parse(reply.text) as KeystoneTokenBody;
    } catch {
      body = {};
    }
    const t = body.token;
    const expires = Date.parse(t?.expires_at ?? '');
    const issued = Date.parse(t?.issued_at ?? '');
    if (typeof value !== 'string' || !t || Number.isNaN(expires) || !t.user?.id || !t.project?.id) {
      throw new VmsnapError(
        'ConfigError',
        `config: ${this.auth.authUrl} did not answer with a project-scoped Keystone v3 token: is OS_AUTH_URL Keystone's v3 URL, and does the ` +
          `credential name a project?`,
        {
          setting: 'OS_AUTH_URL',
        },
      );
    }
    // Keystone's clock decides the lifetime; ours when it started, seen from here. A fixed token
    // was issued long ago: what is left of it is all it has.
    const lifetime = this.auth.type === 'token' || Number.isNaN(issued) ? expires - Date.now() : expires - issued;
    const token: Token = {
      value,
      receivedAt: sent,
      expiresAt: sent + lifetime,
      caller: {
        userId: t.user.id,
        userName: t.user.name ?? t.user.id,
        projectId: t.project.id,
        projectName: t.project.name ?? t.project.id,
        roles: (t.roles ?? []).map((r) => r.name ?? '').filter(Boolean),
      },
      catalog: t.catalog ?? [],
    };
    this.tokensIssued++;
    this.opts.onToken?.({ expiresInMs: token.expiresAt - Date.now(), caller: token.caller, renewal: this.tokensIssued > 1 });
    return token;
  }

  /** What Keystone refused, and what to check. */
  private refusedWhat(): string {
    if (this.auth.type === 'token') {
      const fix = 'Set a new one, or use a password or application credential so that vmsnap renews tokens itself';
      return `the fixed token (OS_TOKEN): it has expired or was revoked. ${fix}`;
    }
    if (this.auth.type === 'v3applicationcredential') {
      const check = "the application credential's id or name and its secret (OS_APPLICATION_CREDENTIAL_SECRET), and that it has not expired";
      return `${this.description}: check ${check}`;
    }
    const check = 'the password (OS_PASSWORD), that the user and the project exist in their domains, and that the user has a role on the project';
    return `${this.description}: check ${check}`;
  }

  private unavailable(what: string): VmsnapError {
    return new VmsnapError(
      'IdentityServiceUnavailable',
      `Keystone at ${this.auth.authUrl} ${what} while authenticating ${this.description}: is Keystone running and reachable?`,
      {
        url: this.auth.authUrl,
      },
    );
  }
}
