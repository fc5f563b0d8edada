// A PostgreSQL database of a test run's own, on the stack's server, dropped afterwards.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { parsePostgresUrl } from '../../src/shared/config.js';
import { postgresClientConfig } from '../../src/store/postgres.js';

export async function createTestDatabase(prefix: string): Promise<{ url: string; drop(): Promise<void> }> {
  const stackUrl = process.env.VMSNAP_POSTGRES_URL;
  if (!stackUrl) throw new Error('VMSNAP_POSTGRES_URL is not set: run ./scripts/test, or eval "$(npm run -s stack -- env)"');
  const database = `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client(postgresClientConfig(parsePostgresUrl(stackUrl, 'VMSNAP_POSTGRES_URL')));
  admin.on('error', () => undefined);
  await admin.connect();
  await admin.query(`CREATE DATABASE ${database}`);
  const url = new URL(stackUrl);
  url.pathname = `/${database}`;
  return {
    url: url.toString(),
    async drop() {
      await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
      await admin.end();
    },
  };
}
