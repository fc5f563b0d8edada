// Every request's X-Auth-Token, validated with Keystone as keystonemiddleware does: with the API's
// own service token (GET /v3/auth/tokens, X-Subject-Token), and the answer kept for a short while
// (VMSNAP_API_TOKEN_CACHE_S, never past the token's expiry) so that not every request costs a
// Keystone round trip. A revoked token is refused once its cached answer lapses. Tokens are kept
// only as their SHA-256 and never logged.
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { request, type Dispatcher } from 'undici';
import { errorCode } from '../drivers/http-errors.js';
import type { Identity } from '../drivers/identity.js';
import { VmsnapError } from '../shared/errors.js';
import type { Caller } from './policy.js';

interface TokenBody {
  token?: {
    expires_at?: string;
    user?: { id?: string; name?: string };
    project?: { id?: string; name?: string };
    roles?: { name?: string }[];
  };
}

/** Enough for every token of a busy cloud's API at once; the least recently used go first. */
const MAX_CACHED_TOKENS = 10_000;

export class TokenValidator {
  private readonly cache: LRUCache<string, Caller> | undefined;
  /** Validations under way, so that requests with the same new token ask Keystone once. */
  private readonly pending = new Map<string, Promise<Caller | undefined>>();

  constructor(
    private readonly opts: {
      /** Keystone's v3 URL. */
      authUrl: string;
      /** The API's own identity: its token asks Keystone about the others. */
      identity: Identity;
      dispatcher: Dispatcher;
      /** How long an answer is kept (0: not at all). */
      cacheMs: number;
    },
  ) {
    this.cache = opts.cacheMs > 0 ? new LRUCache({ max: MAX_CACHED_TOKENS, ttl: opts.cacheMs }) : undefined;
  }

  /** The caller the token stands for; undefined for a token Keystone does not accept (expired, revoked, made up). */
  async validate(token: string): Promise<Caller | undefined> {
    const key = createHash('sha256').update(token).digest('hex');
    const cached = this.cache?.get(key);
    if (cached) return cached;
    let validation = this.pending.get(key);
    if (!validation) {
      validation = this.ask(token, key).finally(() => this.pending.delete(key));
      this.pending.set(key, validation);
    }
    return validation;
  }

  private async ask(token: string, key: string): Promise<Caller | undefined> {
    for (let attempt = 1; ; attempt++) {
      const headers = { ...(await this.opts.identity.authHeaders()), 'x-subject-token': token, accept: 'application/json' };
      let status: number;
      let text: string;
      try {
        const res = await request(`${this.opts.authUrl}/auth/tokens?nocatalog`, { method: 'GET', headers, dispatcher: this.opts.dispatcher });
        status = res.statusCode;
        text = await res.body.text();
      } catch (err) {
        throw unavailable(this.opts.authUrl, `failed: ${errorCode(err) ?? (err as Error).message}`);
      }
      // Our own token lapsed or was revoked: a new one, once.
      if (status === 401 && attempt === 1) {
        this.opts.identity.invalidate(headers);
        continue;
      }
      if (status === 404) return undefined;
      if (status !== 200) throw unavailable(this.opts.authUrl, `answered ${status} to a token validation`);
      const caller = parseCaller(text);
      if (!caller) return undefined;
      const left = caller.expiresAt - Date.now();
      if (left <= 0) return undefined;
      this.cache?.set(key, caller.caller, { ttl: Math.min(this.opts.cacheMs, left) });
      return caller.caller;
    }
  }
}

function parseCaller(text: string): { caller: Caller; expiresAt: number } | undefined {
  let body: TokenBody;
  try {
    body = JSON.parse(text) as TokenBody;
  } catch {
    return undefined;
  }
  const t = body.token;
  const expiresAt = Date.parse(t?.expires_at ?? '');
  if (!t?.user?.id || Number.isNaN(expiresAt)) return undefined;
  return {
    expiresAt,
    caller: {
      userId: t.user.id,
      userName: t.user.name ?? t.user.id,
      projectId: t.project?.id ?? null,
      projectName: t.project?.name ?? null,
      roles: (t.roles ?? []).map((r) => r.name ?? '').filter(Boolean),
    },
  };
}

function unavailable(url: string, what: string): VmsnapError {
  return new VmsnapError('IdentityServiceUnavailable', `Keystone at ${url} ${what}: the token cannot be checked now; try again`, { url });
}
