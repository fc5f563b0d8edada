// Identity as vmsnap's drivers need it: headers that authenticate a request, the caller a token
// stands for, and the service catalog. Keystone v3 is the real implementation (keystone.ts);
// NoAuth serves a standalone Glance that authenticates nobody.
import { VmsnapError } from '../shared/errors.js';

/** Who the requests act for: the token's user and project, as Nova records them on a snapshot. */
export interface Caller {
  userId: string;
  userName: string;
  projectId: string;
  projectName: string;
  roles: string[];
}

export interface Identity {
  /** Where and as whom it authenticates, for messages. Never a secret. */
  readonly description: string;
  /**
   * Headers that authenticate one request. The token is renewed before it expires; with
   * `fresh`, also when most of its life is gone (a long upload starts with a fresh token).
   */
  authHeaders(opts?: { fresh?: boolean }): Promise<Record<string, string>>;
  /** A service refused these headers (401): the next authHeaders() gets a new token. */
  invalidate(headers: Record<string, string>): void;
  /** The token's user and project; undefined without authentication. */
  caller(): Promise<Caller | undefined>;
  /** The caller of the latest token, without asking Keystone (for messages). */
  knownCaller(): Caller | undefined;
  /** The URL of a service type from the catalog (configured interface and region). */
  endpoint(serviceType: string): Promise<string>;
}

/** No authentication at all: for a standalone Glance (`OS_AUTH_TYPE=none` with VMSNAP_GLANCE_URL). */
export class NoAuth implements Identity {
  readonly description = 'no authentication';

  async authHeaders(): Promise<Record<string, string>> {
    return {};
  }

  invalidate(): void {}

  async caller(): Promise<Caller | undefined> {
    return undefined;
  }

  knownCaller(): Caller | undefined {
    return undefined;
  }

  async endpoint(serviceType: string): Promise<string> {
    throw new VmsnapError(
      'ConfigError',
      `config: OS_AUTH_TYPE is none, so there is no service catalog to find the ${serviceType} endpoint in: set VMSNAP_GLANCE_URL`,
      {
        setting: 'VMSNAP_GLANCE_URL',
      },
    );
  }
}
