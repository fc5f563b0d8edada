// A private CA for the stack, made once with openssl: it signs the certificate Keystone serves on
// 127.0.0.1, and clients trust it through OS_CACERT / cacert, as they would a cloud's own CA.
import { execa } from 'execa';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface StackTls {
  ca: string;
  cert: string;
  key: string;
}

export function tlsPaths(dataDir: string): StackTls {
  const dir = join(dataDir, 'tls');
  return { ca: join(dir, 'ca.pem'), cert: join(dir, 'server.pem'), key: join(dir, 'server.key') };
}

async function openssl(args: string[], cwd: string): Promise<void> {
  const r = await execa('openssl', args, { cwd, reject: false, all: true });
  if (r.exitCode !== 0) throw new Error(`tls: openssl ${args[0]} failed: ${(r.all ?? '').trim().split('\n').slice(-2).join(' | ')}`);
}

/** Makes the CA and a server certificate for 127.0.0.1 and localhost, unless they are there. */
export async function ensureStackTls(dataDir: string): Promise<StackTls> {
  const paths = tlsPaths(dataDir);
  if (existsSync(paths.ca) && existsSync(paths.cert) && existsSync(paths.key)) return paths;
  const dir = join(dataDir, 'tls');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  await openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '3650', '-subj', '/CN=vmsnap stack CA'], dir);
  await openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1'], dir);
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  await openssl(
    [
      'x509',
      '-req',
      '-in',
      'server.csr',
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      'server.pem',
      '-days',
      '3650',
      '-extfile',
      'server.ext',
    ],
    dir,
  );
  return paths;
}
