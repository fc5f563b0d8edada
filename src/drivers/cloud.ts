// The OpenStack cloud as the config names it: one identity session (Keystone, or none for a
// standalone Glance) and the Glance it finds in the service catalog. Connecting authenticates
// once, so that wrong credentials, a CA that does not fit or a missing endpoint stop a worker at
// start with a message that names the setting, instead of failing every snapshot later.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from '../shared/config.js';
import { VmsnapError } from '../shared/errors.js';
import { GlanceImageService } from './glance.js';
import { NoAuth, type Identity } from './identity.js';
import { KeystoneSession, type KeystoneOptions } from './keystone.js';

export interface Cloud {
  identity: Identity;
  imageService: GlanceImageService;
  /** Where Glance is: VMSNAP_GLANCE_URL, or the catalog's image endpoint. */
  glanceUrl: string;
  close(): Promise<void>;
}

const NO_CLOUD =
  'config: no OpenStack credentials are set: set OS_CLOUD (and OS_CLIENT_CONFIG_FILE if your clouds.yaml is elsewhere), or OS_AUTH_URL with ' +
  'OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME and their domains, or an application credential (OS_APPLICATION_CREDENTIAL_ID and _SECRET); for a ' +
  'standalone Glance without Keystone set OS_AUTH_TYPE=none and VMSNAP_GLANCE_URL';

/**
 * Authenticates and finds Glance. Keystone out of reach is retried for about `patienceMs` (a
 * worker started together with its cloud waits for it); bad settings fail at once.
 */
export async function connectCloud(
  config: Pick<Config, 'cloud' | 'glance'>,
  opts: { patienceMs?: number; onToken?: KeystoneOptions['onToken'] } = {},
): Promise<Cloud> {
  const { cloud } = config;
  if (!cloud) throw new VmsnapError('ConfigError', NO_CLOUD, { setting: 'OS_CLOUD' });
  const session = cloud.auth.type === 'none' ? undefined : new KeystoneSession(cloud, { onToken: opts.onToken });
  const identity: Identity = session ?? new NoAuth();
  try {
    const deadline = Date.now() + (opts.patienceMs ?? 30_000);
    for (let wait = 500; ; wait = Math.min(wait * 2, 5000)) {
      try {
        await identity.caller();
        break;
      } catch (err) {
        if (!(err instanceof VmsnapError) || !err.retryable || Date.now() + wait > deadline) throw err;
        await sleep(wait);
      }
    }
    const glanceUrl = config.glance.url ?? (await identity.endpoint('image'));
    const imageService = new GlanceImageService({
      url: glanceUrl,
      identity,
      cacert: cloud.cacert,
      uploadStallMs: config.glance.uploadStallMs,
    });
    return {
      identity,
      imageService,
      glanceUrl: glanceUrl.replace(/\/+$/, ''),
      async close() {
        await Promise.allSettled([imageService.close(), session?.close()]);
      },
    };
  } catch (err) {
    await session?.close();
    throw err;
  }
}
