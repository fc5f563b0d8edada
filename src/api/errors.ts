// Nova's error shape for every error the API answers: {"<fault name>": {"code": N, "message": "…"}}
// (Nova's Fault names by status), never a stack trace. Keystone's refusal (401) keeps
// keystonemiddleware's own shape, as clients see it in front of Nova.
import { VmsnapError } from '../shared/errors.js';

const FAULT_NAMES: Record<number, string> = {
  400: 'badRequest',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'itemNotFound',
  405: 'badMethod',
  409: 'conflictingRequest',
  413: 'overLimit',
  415: 'badMediaType',
  429: 'overLimit',
  501: 'notImplemented',
  503: 'serviceUnavailable',
};

/** An answer other than success: its status, Nova's message, and headers to send with it. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
    /** The body as it goes out; Nova's fault shape unless given. */
    readonly body?: Record<string, unknown>,
  ) {
    super(message);
  }
}

export function faultBody(status: number, message: string): Record<string, unknown> {
  return { [FAULT_NAMES[status] ?? 'computeFault']: { code: status, message } };
}

export const badRequest = (message: string) => new ApiError(400, message);
export const forbidden = (message: string) => new ApiError(403, message);
export const notFound = (message: string) => new ApiError(404, message);
export const conflict = (message: string) => new ApiError(409, message);

/** The answer to a request without a valid token: keystonemiddleware's, naming Keystone. */
export function unauthorized(keystoneUrl: string): ApiError {
  const message = 'The request you have made requires authentication.';
  return new ApiError(401, message, { 'www-authenticate': `Keystone uri="${keystoneUrl}"` }, { error: { code: 401, title: 'Unauthorized', message } });
}

/** What Nova answers for a failure it did not expect; the details are in the API's log under the request id. */
export function unexpected(requestId: string): ApiError {
  return new ApiError(500, `Unexpected API Error: the vmsnap api log has the details under request id ${requestId}.`);
}

/** How vmsnap's failures answer, as Nova's matching exceptions do. */
const STATUS_OF: Partial<Record<string, number>> = {
  InvalidInput: 400,
  ImageNotFound: 400,
  InstanceNotFound: 404,
  InstanceBusy: 409,
  InstanceInvalidState: 409,
  ImageServiceUnavailable: 503,
  IdentityServiceUnavailable: 503,
  // The API's own settings are fine when it runs: a ConfigError here is a worker that nobody runs.
  ConfigError: 503,
  StoreError: 503,
};

/** A vmsnap failure (a refused request, a service away) as the API answers it; undefined for what no status fits. */
export function fromVmsnapError(err: unknown): ApiError | undefined {
  if (!(err instanceof VmsnapError)) return undefined;
  const status = STATUS_OF[err.code];
  return status === undefined ? undefined : new ApiError(status, err.message);
}
