// What went wrong below HTTP, read from Node's and undici's errors: shared by the Glance and
// Keystone drivers, so that both say the same about refused ports, timeouts and certificates.
import { readFileSync } from 'node:fs';
import { Agent, type Dispatcher } from 'undici';
import { VmsnapError } from '../shared/errors.js';

/** Every error code in an error, its causes and aggregates, outermost first. */
function codesOf(err: unknown, into: string[] = []): string[] {
  if (typeof err !== 'object' || err === null) return into;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') into.push(code);
  if (err instanceof AggregateError) for (const inner of err.errors) codesOf(inner, into);
  codesOf((err as { cause?: unknown }).cause, into);
  return into;
}

/** The error code of a Node or undici error; connection attempts to several addresses fail as an AggregateError. */
export function errorCode(err: unknown): string | undefined {
  return codesOf(err)[0];
}

// TLS failures that mean "this CA does not sign that certificate": no retry fixes them.
const TLS_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** A certificate the configured CA does not vouch for, as a ConfigError naming OS_CACERT; else undefined. */
export function tlsError(err: unknown, service: string, url: string, cacert: string | undefined): VmsnapError | undefined {
  const code = codesOf(err).find((c) => TLS_CODES.has(c));
  if (!code) return undefined;
  const fix = cacert
    ? `the CA in ${cacert} (OS_CACERT or cacert in clouds.yaml) does not sign it: point OS_CACERT at the CA that does`
    : 'set OS_CACERT (or cacert in clouds.yaml) to the CA that signs it';
  return new VmsnapError('ConfigError', `config: the TLS certificate of ${service} at ${url} is not trusted (${code}): ${fix}`, {
    setting: 'OS_CACERT',
    code,
  });
}

/** The CA bundle to trust, read once, or undefined for the system's. */
export function readCa(cacert: string | undefined): Buffer | undefined {
  return cacert ? readFileSync(cacert) : undefined;
}

/** An undici dispatcher for a cloud's services: the private CA when one is configured. */
export function cloudDispatcher(cacert: string | undefined, timeoutMs: number): Dispatcher {
  const ca = readCa(cacert);
  return new Agent({ connect: { timeout: timeoutMs, ...(ca ? { ca } : {}) }, headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
}
