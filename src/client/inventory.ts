// The instance inventory as the host workers recorded it in the store (SQLite or PostgreSQL).
// An operator's `vmsnap instances` never creates a store: a missing SQLite file is reported.
import { existsSync } from 'node:fs';
import type { Config } from '../shared/config.js';
import { createStore } from '../store/index.js';
import type { InstanceRecord, Store } from '../store/store.js';
import { VmsnapError } from '../shared/errors.js';
import { UUID_PATTERN } from '../shared/validation.js';
import { ClientError } from './errors.js';

function isMissingSqlite(config: Config): boolean {
  return config.storeUrl.startsWith('sqlite:') && !existsSync(config.storePath);
}

async function withStore<T>(config: Config, use: (store: Store) => Promise<T>): Promise<T> {
  const store = createStore(config);
  try {
    return await use(store);
  } finally {
    await store.close();
  }
}

/**
 * An instance as the inventory has it, with when its host's worker last read the power states
 * from libvirt (every VMSNAP_DISCOVERY_INTERVAL_MS): the power state is that old.
 */
export type InventoryRow = InstanceRecord & { powerStateAt?: string };

/** Instances the store knows, by name; deleted ones (gone from their host) only when asked. */
export async function listInstances(config: Config, options: { includeDeleted?: boolean } = {}): Promise<InventoryRow[]> {
  if (isMissingSqlite(config)) {
    throw new ClientError(
      'StoreUnavailable',
      `no vmsnap store at ${config.storePath}: start a host worker (npm run worker) to create it and discover instances, or point VMSNAP_STORE_URL ` +
        `(or VMSNAP_DATA_DIR) at its store`,
    );
  }
  try {
    return await withStore(config, async (store) => {
      const seen = new Map((await store.listHosts()).map((h) => [h.host, h.seenAt]));
      return (await store.listInstances(options)).map((r) => {
        const at = seen.get(r.host);
        return at ? { ...r, powerStateAt: at } : r;
      });
    });
  } catch (err) {
    // A store no worker has migrated yet has no tables; an unreachable one says why.
    throw new ClientError(
      'StoreUnavailable',
      `cannot read the vmsnap inventory (${(err as Error).message}): start a host worker (npm run worker), or check VMSNAP_STORE_URL`,
      { cause: err },
    );
  }
}

/**
 * Other references to the instance `ref` names (its UUID for a name, its name for a UUID), when
 * a store is at hand; none otherwise. Lets `status vm1` find a snapshot started by UUID.
 */
export async function instanceAliases(config: Config, ref: string): Promise<string[]> {
  if (isMissingSqlite(config)) return [];
  try {
    const found = await withStore(config, (store) => store.findInstance(ref));
    return found ? [found.id, found.name].filter((r) => r !== ref) : [];
  } catch {
    return []; // only a help for finding snapshots: without it we look by the reference alone
  }
}

/**
 * The UUID of the instance `ref` names (a UUID or an exact name), from the inventory: what
 * acceptSnapshot and acceptRestore make the workflow id from. InstanceNotFound when the store does
 * not know it (discovery has not seen it, or it is gone).
 */
export async function resolveInstanceId(config: Config, ref: string): Promise<string> {
  // A UUID is the id already: the run itself refuses one no host knows (InstanceNotFound).
  if (UUID_PATTERN.test(ref)) return ref.toLowerCase();
  if (isMissingSqlite(config)) {
    throw new ClientError(
      'StoreUnavailable',
      `no vmsnap store at ${config.storePath}: start a host worker (npm run worker) to create it and discover instances`,
    );
  }
  const found = await withStore(config, (store) => store.findInstance(ref));
  if (!found) throw new VmsnapError('InstanceNotFound', `no instance "${ref}" in the vmsnap inventory: check the UUID or name (vmsnap instances)`);
  return found.id;
}
