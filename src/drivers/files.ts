// File helpers the drivers and activities share: durable writes, careful removal, QEMU's user.
import { promises as fs } from 'node:fs';
import path from 'node:path';

/** fsync of one file or directory. */
export async function fsyncPath(file: string): Promise<void> {
  const handle = await fs.open(file, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** fsync of a file and, for a regular file just made, of its directory entry too (not for a block device). */
export async function fsyncFileAndEntry(file: string): Promise<void> {
  const st = await fs.stat(file);
  await fsyncPath(file);
  if (st.isFile()) await fsyncPath(path.dirname(path.resolve(file)));
}

/**
 * This boot of the host (the kernel's boot_id): a copy not yet written back from the page cache is
 * lost with a crash, and a copy made in another boot is not to be trusted.
 */
export async function bootId(): Promise<string> {
  return (await fs.readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
}

/** Removes a file we (or libvirt for us) created, but never anything that is not a regular file (a block device target). */
export async function removeRegularFile(file: string): Promise<void> {
  try {
    if ((await fs.lstat(file)).isFile()) await fs.rm(file, { force: true });
  } catch {
    // Already gone (or never created).
  }
}

/** uid and gid QEMU runs as (Debian: libvirt-qemu, RHEL: qemu), if this host has that user. */
export async function qemuUser(): Promise<{ uid: number; gid: number } | undefined> {
  const passwd = await fs.readFile('/etc/passwd', 'utf8').catch(() => '');
  for (const name of ['libvirt-qemu', 'qemu']) {
    const fields = passwd
      .split('\n')
      .find((l) => l.startsWith(`${name}:`))
      ?.split(':');
    if (fields) return { uid: Number(fields[2]), gid: Number(fields[3]) };
  }
  return undefined;
}
