// A test guest whose disk holds bulk data, so that copying it takes seconds: time for a test to
// kill, cancel or terminate something in the middle of a snapshot.
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { createGuest, guestState, readCounter, type DomainState, type Guest } from '../../scripts/lib/guest.js';

const dataDir = process.env.VMSNAP_DATA_DIR ?? '.data/test';
/** Where a test without a harness keeps its guests: below the test stack's data dir. */
export const STACK_GUESTS = { guestsDir: join(dataDir, 'guests'), assetsDir: join(dataDir, 'guest-assets') };

/** `diskSizeMiB`: the virtual size, by default just room for the data and the counter. */
export async function createSlowGuest(opts: { name: string; guestsDir: string; assetsDir: string; dataMiB: number; diskSizeMiB?: number }): Promise<Guest> {
  const guest = await createGuest({
    name: opts.name,
    guestsDir: opts.guestsDir,
    assetsDir: opts.assetsDir,
    diskSizeMiB: opts.diskSizeMiB ?? opts.dataMiB + 64,
    start: false,
  });
  // Pattern data from 8 MiB on: clear of the counter records at 1 MiB and at size - 1 MiB.
  await execa('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a 8M ${opts.dataMiB}M`, guest.diskPath]);
  await execa('virsh', ['-c', 'qemu:///system', 'start', opts.name]);
  const deadline = Date.now() + 120_000;
  while ((await readCounter(guest.diskPath, 'qcow2').catch(() => ({ a: 0 }))).a === 0) {
    if (Date.now() > deadline) throw new Error(`guest ${opts.name} did not start counting within 120 s`);
    await sleep(200);
  }
  return guest;
}

/** Polls until the snapshot's progress query reports the phase. */
export async function waitForPhase(handle: { query: (name: string) => Promise<unknown> }, phase: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const progress = (await handle.query('progress').catch(() => undefined)) as { phase?: string } | undefined;
    if (progress?.phase === phase) return;
    if (Date.now() > deadline) throw new Error(`snapshot did not reach phase ${phase} within ${timeoutMs} ms (now ${progress?.phase})`);
    await sleep(50);
  }
}

/** Polls until libvirt reports the guest in this state (the copy's host step pauses it after its phase has begun). */
export async function waitForGuestState(name: string, state: DomainState, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let now = await guestState(name); now !== state; now = await guestState(name)) {
    if (Date.now() > deadline) throw new Error(`guest ${name} not ${state} within ${timeoutMs} ms (now ${now})`);
    await sleep(50);
  }
}
