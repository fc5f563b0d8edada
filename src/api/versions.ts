// Version discovery and microversion negotiation, as Nova does them: `GET /` lists the versions,
// `GET /v2.1` describes v2.1 with its microversion range, and each request asks for a microversion
// with `OpenStack-API-Version: compute X.Y` (or the older `X-OpenStack-Nova-API-Version: X.Y`);
// none asked is 2.1, "latest" the highest. Each answer says which one it is.
import { ApiError, badRequest } from './errors.js';

/**
 * The range served. 2.45 is where createImage and createBackup answer {"image_id"} instead of a
 * Location header; the server view carries the fields of every microversion up to it.
 */
export const MIN_VERSION = '2.1';
export const MAX_VERSION = '2.45';

export class ApiVersion {
  constructor(
    readonly major: number,
    readonly minor: number,
  ) {}

  static parse(text: string): ApiVersion | undefined {
    const m = /^([1-9]\d*)\.(0|[1-9]\d*)$/.exec(text);
    return m ? new ApiVersion(Number(m[1]), Number(m[2])) : undefined;
  }

  compare(other: ApiVersion): number {
    return this.major - other.major || this.minor - other.minor;
  }

  /** Whether this request's microversion has what `version` brought. */
  atLeast(version: string): boolean {
    return this.compare(ApiVersion.parse(version)!) >= 0;
  }

  toString(): string {
    return `${this.major}.${this.minor}`;
  }
}

const MIN = ApiVersion.parse(MIN_VERSION)!;
const MAX = ApiVersion.parse(MAX_VERSION)!;

/** The microversion a request asks for: the compute entry of OpenStack-API-Version, else the older header, else 2.1. */
export function negotiate(headers: Record<string, string | string[] | undefined>): ApiVersion {
  const asked = requested(headers);
  if (asked === undefined) return MIN;
  if (asked.toLowerCase() === 'latest') return MAX;
  const version = ApiVersion.parse(asked);
  if (!version) throw badRequest(`API Version String ${asked} is of invalid format. Must be of format MajorNum.MinorNum.`);
  if (version.compare(MIN) < 0 || version.compare(MAX) > 0) {
    throw new ApiError(406, `Version ${asked} is not supported by the API. Minimum is ${MIN_VERSION} and maximum is ${MAX_VERSION}.`);
  }
  return version;
}

function requested(headers: Record<string, string | string[] | undefined>): string | undefined {
  const values = (name: string) => [headers[name] ?? []].flat().flatMap((v) => v.split(','));
  for (const entry of values('openstack-api-version')) {
    const [service, version] = entry.trim().split(/\s+/);
    if (service?.toLowerCase() === 'compute' && version) return version;
  }
  const legacy = values('x-openstack-nova-api-version')[0]?.trim();
  return legacy || undefined;
}

/** The headers of an answer at this microversion. */
export function versionHeaders(version: ApiVersion): Record<string, string> {
  return {
    'openstack-api-version': `compute ${version}`,
    'x-openstack-nova-api-version': String(version),
    vary: 'OpenStack-API-Version, X-OpenStack-Nova-API-Version',
  };
}

const V21 = {
  id: 'v2.1',
  status: 'CURRENT',
  version: MAX_VERSION,
  min_version: MIN_VERSION,
  updated: '2013-07-23T11:33:21Z',
};

/** `GET /`: the versions there are (v2.1 only: the legacy v2.0 is not served). */
export function versionsDocument(baseUrl: string) {
  return { versions: [{ ...V21, links: [{ rel: 'self', href: `${baseUrl}/v2.1/` }] }] };
}

/** `GET /v2.1`: v2.1 and its microversion range, which clients read before they ask for one. */
export function versionDocument(baseUrl: string) {
  return {
    version: {
      ...V21,
      links: [
        { rel: 'self', href: `${baseUrl}/v2.1/` },
        { rel: 'describedby', type: 'text/html', href: 'http://docs.openstack.org/' },
      ],
      'media-types': [{ base: 'application/json', type: 'application/vnd.openstack.compute+json;version=2.1' }],
    },
  };
}
