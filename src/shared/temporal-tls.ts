// TLS options of a connection to Temporal, from the config: one reading for workers and clients.
import { readFile } from 'node:fs/promises';
import type { TLSConfig } from '@temporalio/client';
import type { Config } from './config.js';

export async function temporalTls(temporal: Config['temporal']): Promise<TLSConfig | undefined> {
  const tls = temporal.tls;
  if (!tls) return undefined;
  return {
    serverNameOverride: tls.serverName,
    serverRootCACertificate: tls.caPath ? await readFile(tls.caPath) : undefined,
    clientCertPair: tls.certPath && tls.keyPath ? { crt: await readFile(tls.certPath), key: await readFile(tls.keyPath) } : undefined,
  };
}
