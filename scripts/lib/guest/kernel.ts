// The host kernel the test guest boots.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { GuestError } from './common.js';

/** Newest /boot/vmlinuz-*-cloud-amd64 (the cloud kernel has virtio as small loadable modules). */
export async function findKernel(): Promise<{ path: string; version: string }> {
  const names = (await fs.readdir('/boot')).filter((n) => /^vmlinuz-.+-cloud-amd64$/.test(n));
  names.sort((x, y) => x.localeCompare(y, 'en', { numeric: true }));
  const newest = names.at(-1);
  if (!newest) {
    throw new GuestError('no /boot/vmlinuz-*-cloud-amd64 found: install linux-image-cloud-amd64');
  }
  return { path: path.join('/boot', newest), version: newest.slice('vmlinuz-'.length) };
}
