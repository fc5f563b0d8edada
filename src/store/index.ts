// Picks the Store the config names: SQLite for one host (the default), PostgreSQL for a fleet.
import { fileURLToPath } from 'node:url';
import type { Config } from '../shared/config.js';
import { VmsnapError } from '../shared/errors.js';
import { PostgresStore, type PostgresStoreOptions } from './postgres.js';
import { SqliteStore } from './sqlite.js';
import type { Store } from './store.js';

export type { Store } from './store.js';

/** A store on config.storeUrl, not yet migrated. */
export function createStore(config: Pick<Config, 'storeUrl'>, options: PostgresStoreOptions = {}): Store {
  const url = config.storeUrl;
  if (/^postgres(ql)?:/i.test(url)) return new PostgresStore(url, options);
  // loadConfig writes SQLite stores as sqlite:///abs/path, percent-encoded as a file: URL is.
  if (url.startsWith('sqlite:///')) return new SqliteStore(fileURLToPath(`file://${url.slice('sqlite://'.length)}`));
  // The URL is not quoted: whatever it is, it may hold a password.
  throw new VmsnapError('ConfigError', 'config: VMSNAP_STORE_URL must be sqlite:///path or postgresql://...', {
    setting: 'VMSNAP_STORE_URL',
  });
}
