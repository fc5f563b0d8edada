// The benchmark's guests: the counter test guest (scripts/lib/guest.ts) with a disk of a given
// size and random data written into it before it boots, and the guest's counter as a measure of
// how much work it gets done.
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { once } from 'node:events';
import { execa } from 'execa';
import { createGuest, readCounter, removeGuest, type Guest } from '../../scripts/lib/guest.js';
import type { DiskSpec } from './options.js';

/** Random data goes into a disk in pieces of at most this much: the random file needs no more. */
export const RANDOM_PIECE_MIB = 1024;

/** Writes `mib` MiB of random bytes (kept if already there and big enough). */
export async function ensureRandomFile(file: string, mib: number): Promise<void> {
  const have = await stat(file).then(
    (s) => s.size,
    () => 0,
  );
  if (have >= mib * 1024 * 1024) return;
  const out = createWriteStream(file, { mode: 0o600 });
  for (let i = 0; i < mib; i++) {
    if (!out.write(randomBytes(1024 * 1024))) await once(out, 'drain');
  }
  out.end();
  await once(out, 'finish');
}

export interface GuestPlace {
  guestsDir: string;
  assetsDir: string;
}

/** Writes `dataMiB` of random data into an image from 8 MiB on; qemu-io writes less than 2 GiB at once: 1 GiB pieces, each from the random file's start. */
async function writeRandom(image: string, format: 'qcow2' | 'raw', dataMiB: number, randomFile: string): Promise<void> {
  for (let at = 0; at < dataMiB; at += RANDOM_PIECE_MIB) {
    const piece = Math.min(RANDOM_PIECE_MIB, dataMiB - at);
    await execa('qemu-io', ['-f', format, '-c', `write -q -s ${randomFile} ${8 + at}M ${piece}M`, image]);
  }
}

/**
 * Creates and boots a counter guest. Random data goes from 8 MiB on, clear of the counter's
 * records at 1 MiB and size - 1 MiB; random so that neither zero detection nor compression can
 * make it smaller than it is. A spec with a data disk gets one (vdb), filled the same way, which
 * the guest writes its counter to in the same step as the root's.
 */
export async function createDataGuest(
  opts: GuestPlace & { name: string; spec: Pick<DiskSpec, 'virtualMiB' | 'dataMiB' | 'dataDisk'>; randomFile?: string; intervalMs?: number },
): Promise<Guest> {
  const { spec } = opts;
  const dataDisk = spec.dataDisk;
  return createGuest({
    name: opts.name,
    guestsDir: opts.guestsDir,
    assetsDir: opts.assetsDir,
    diskSizeMiB: spec.virtualMiB,
    ...(dataDisk ? { dataDisks: [{ format: dataDisk.format, sizeMiB: dataDisk.virtualMiB }] } : {}),
    ...(opts.intervalMs !== undefined ? { intervalMs: opts.intervalMs } : {}),
    // A loaded host boots a TCG guest slowly.
    readyTimeoutMs: 300_000,
    beforeStart: async (guest) => {
      if (spec.dataMiB <= 0 && !dataDisk?.dataMiB) return;
      if (!opts.randomFile) throw new Error(`guest ${opts.name}: data requested but no random file`);
      if (spec.dataMiB > 0) await writeRandom(guest.diskPath, 'qcow2', spec.dataMiB, opts.randomFile);
      const disk = guest.dataDisks[0];
      if (dataDisk && disk && dataDisk.dataMiB > 0) await writeRandom(disk.path, disk.format, dataDisk.dataMiB, opts.randomFile);
    },
  });
}

export async function removeGuestQuietly(name: string, guestsDir: string): Promise<string | undefined> {
  try {
    await removeGuest(name, guestsDir);
    return undefined;
  } catch (err) {
    return `${name}: ${(err as Error).message}`;
  }
}

export interface CounterReading {
  /** Record A (the guest's latest step). */
  value: number;
  /** Mid-point of the read, performance.now() ms: the value was on disk about then. */
  at: number;
}

export async function counterNow(guest: Guest): Promise<CounterReading> {
  const t0 = performance.now();
  const c = await readCounter(guest.diskPath, 'qcow2');
  return { value: c.a, at: (t0 + performance.now()) / 2 };
}

/** Counter steps per second between two readings. */
export function rate(from: CounterReading, to: CounterReading): number {
  const seconds = (to.at - from.at) / 1000;
  return seconds > 0 ? (to.value - from.value) / seconds : 0;
}
