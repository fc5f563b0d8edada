// The compute API's entry point: `node dist/api/main.js` (compiled), `npm run api` from source.
// Nova's door to vmsnap: the part of Nova's compute API v2.1 that `openstack server …`, openstacksdk
// and novaclient use to list servers, snapshot (createImage, createBackup) and rebuild them, behind
// Keystone and Nova's default policy. It needs Temporal, the store and Keystone, not libvirt.
import { readFileSync } from 'node:fs';
import { connectClient } from '../client/snapshots.js';
import { connectCloud } from '../drivers/cloud.js';
import { cloudDispatcher } from '../drivers/http-errors.js';
import { loadConfig } from '../shared/config.js';
import { VmsnapError } from '../shared/errors.js';
import { createStore } from '../store/index.js';
import { buildApp } from './app.js';
import { TokenValidator } from './keystone-auth.js';

async function main(): Promise<void> {
  const config = loadConfig();
  if (config.cloud?.auth.type === 'none') {
    throw new VmsnapError(
      'ConfigError',
      'config: the API checks every token with Keystone: set OS_CLOUD (or OS_AUTH_URL and credentials) for its service user',
      {
        setting: 'OS_CLOUD',
      },
    );
  }
  const cloud = await connectCloud(config);
  const keystoneUrl = config.cloud!.auth.authUrl;
  const dispatcher = cloudDispatcher(config.cloud!.cacert, 30_000);
  const store = createStore(config);
  const [, client] = await Promise.all([store.migrate(), connectClient(config.temporal)]);
  const app = buildApp(
    {
      store,
      client,
      taskQueue: config.temporal.taskQueue,
      tokens: new TokenValidator({ authUrl: keystoneUrl, identity: cloud.identity, dispatcher, cacheMs: config.api.tokenCacheMs }),
      keystoneUrl,
      glance: { url: cloud.glanceUrl, dispatcher },
      ...(config.api.publicUrl ? { publicUrl: config.api.publicUrl } : {}),
      acceptTimeoutMs: config.api.acceptTimeoutMs,
    },
    { logLevel: config.logLevel.toLowerCase() },
  );
  const close = async () => {
    await app.close();
    await Promise.allSettled([client.connection.close(), store.close(), cloud.close(), dispatcher.close()]);
  };
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      close().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    });
  }
  await app.listen({ host: config.api.host, port: config.api.port });
  // One line that says what this process is and where it points (never a secret).
  app.log.info(
    {
      version: packageVersion(),
      listen: `${config.api.host}:${config.api.port}`,
      temporal: config.temporal.address,
      taskQueue: config.temporal.taskQueue,
      keystone: keystoneUrl,
      identity: cloud.identity.description,
      glance: cloud.glanceUrl,
      tokenCacheS: config.api.tokenCacheMs / 1000,
    },
    'vmsnap api started',
  );
}

/** package.json is two levels up from both src/api and dist/api. */
function packageVersion(): string {
  return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

// Exit 5 for a bad setting, as the worker does: a service manager need not restart what cannot work.
main().catch((err: Error) => {
  console.error(`vmsnap api: ${err.message}`);
  process.exit(err instanceof VmsnapError && err.code === 'ConfigError' ? 5 : 1);
});
