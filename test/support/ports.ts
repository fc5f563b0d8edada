// Ports for the services a test brings up itself, chosen free when it runs: fixed ones collide
// with another stack on the machine (another checkout's tests, a dev stack).
import { randomInt } from 'node:crypto';
import { createServer } from 'node:net';
import { portIsFree } from '../../scripts/lib/daemon.js';

/** A port nothing listens on now, handed out by the kernel. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Several distinct free ports. */
export async function freePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

/**
 * The first of `count` consecutive free ports, none above `highest` (a Temporal cluster derives
 * its services' ports from its frontend's, and stores membership ports in a smallint).
 */
export async function freePortRange(count: number, highest = 32767): Promise<number> {
  for (let tries = 0; tries < 100; tries++) {
    const first = randomInt(20000, highest - count + 2);
    const free = await Promise.all(Array.from({ length: count }, (_, i) => portIsFree(first + i)));
    if (free.every(Boolean)) return first;
  }
  throw new Error(`no ${count} consecutive free ports below ${highest} in 100 tries`);
}
