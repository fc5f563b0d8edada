// The test stack's cloud as tests reach it: through Keystone, with the same session code the
// workers use (OS_CLOUD and OS_CLIENT_CONFIG_FILE from `stack env`). One per test process.
import { connectCloud, type Cloud } from '../../src/drivers/cloud.js';
import { loadConfig } from '../../src/shared/config.js';

let cloud: Promise<Cloud> | undefined;

export function testCloud(): Promise<Cloud> {
  cloud ??= connectCloud(loadConfig(process.env));
  return cloud;
}

/** Headers that authenticate a test's own request to Glance. */
export async function glanceAuth(): Promise<Record<string, string>> {
  return (await testCloud()).identity.authHeaders();
}

/** The real Glance of the test stack, from the service catalog (proxies go in front of it). */
export async function stackGlanceUrl(): Promise<string> {
  return (await testCloud()).glanceUrl;
}

export async function closeTestCloud(): Promise<void> {
  const open = cloud;
  cloud = undefined;
  await (await open?.catch(() => undefined))?.close();
}
