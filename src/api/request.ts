// What the API knows about each request once it is let in: who sends it (from Keystone), with
// which token (for the caller's own Glance look-ups, never stored or logged), at which
// microversion; and the URL it was sent to, for links.
import type { FastifyRequest } from 'fastify';
import type { ApiDeps } from './deps.js';
import type { Caller } from './policy.js';
import type { ApiVersion } from './versions.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Set on every route under /v2.1 before its handler runs. */
    caller: Caller;
    token: string;
    apiVersion: ApiVersion;
  }
}

/** The API's URL as the client reached it (VMSNAP_API_PUBLIC_URL when set). */
export function baseUrlOf(req: FastifyRequest, deps: Pick<ApiDeps, 'publicUrl'>): string {
  return deps.publicUrl ?? `${req.protocol}://${req.host}`;
}
