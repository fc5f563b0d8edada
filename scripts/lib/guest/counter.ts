// Reading the counter records A and B from an image of the test guest's disk.
import { execa } from 'execa';
import { GuestError, RECORD_MARGIN, SECTOR } from './common.js';

export interface Counter {
  a: number;
  b: number;
}

/** Parses qemu-io `read -v` hex dumps ("00100000:  56 4d ...  VMSNAP...") into offset -> byte. */
function parseHexDump(out: string): Map<number, number> {
  const bytes = new Map<number, number>();
  for (const line of out.split('\n')) {
    const m = /^([0-9a-f]+):\s+((?:[0-9a-f]{2} ){0,15}[0-9a-f]{2})/.exec(line);
    if (!m?.[1] || !m[2]) continue;
    const base = parseInt(m[1], 16);
    m[2].split(' ').forEach((h, i) => bytes.set(base + i, parseInt(h, 16)));
  }
  return bytes;
}

function parseRecord(bytes: Map<number, number>, offset: number, image: string): number {
  const buf = Buffer.alloc(SECTOR);
  for (let i = 0; i < SECTOR; i++) {
    const b = bytes.get(offset + i);
    if (b === undefined) throw new GuestError(`qemu-io did not return byte ${offset + i} of ${image}`);
    buf[i] = b;
  }
  if (buf.every((b) => b === 0)) return 0;
  const text = buf.toString('latin1');
  const m = /^VMSNAP-COUNTER (\d+)\n\0*$/.exec(text);
  if (!m?.[1]) {
    throw new GuestError(
      `sector at byte ${offset} of ${image} is not a counter record: starts ${JSON.stringify(text.slice(0, 32))} ` +
        `(is this an image of a vmsnap test guest, and is the format right?)`,
    );
  }
  return Number(m[1]);
}

/**
 * Reads records A and B from a disk image (qcow2 or raw; format probed when not given). Safe on a
 * running guest's disk: opens read-only with -U (force share), so the guest is not disturbed. Both
 * sectors are read by one qemu-io process, A then B, microseconds apart; the guest needs
 * milliseconds per step, so a live read also sees A == B or A == B + 1.
 */
export async function readCounter(imagePath: string, format?: 'qcow2' | 'raw'): Promise<Counter> {
  const fmtArgs = format ? ['-f', format] : [];
  const info = await execa('qemu-img', ['info', '-U', '--output=json', ...fmtArgs, imagePath], { reject: false });
  if (info.failed) {
    throw new GuestError(`qemu-img info ${imagePath} failed: ${info.stderr.trim()}; is the path a disk image?`);
  }
  const parsed = JSON.parse(info.stdout) as { 'virtual-size': number; format: string };
  const size = parsed['virtual-size'];
  const fmt = format ?? parsed.format;
  if (size < 2 * RECORD_MARGIN + SECTOR) {
    throw new GuestError(`${imagePath} is only ${size} bytes: too small to be a test guest disk`);
  }
  const offA = RECORD_MARGIN;
  const offB = size - RECORD_MARGIN;
  const r = await execa('qemu-io', ['-r', '-U', '-f', fmt, '-c', `read -v ${offA} ${SECTOR}`, '-c', `read -v ${offB} ${SECTOR}`, imagePath], { reject: false });
  if (r.failed || /error|failed/i.test(r.stderr)) {
    throw new GuestError(`qemu-io read of ${imagePath} failed: ${(r.stderr || r.stdout).trim()}`);
  }
  const bytes = parseHexDump(r.stdout);
  return { a: parseRecord(bytes, offA, imagePath), b: parseRecord(bytes, offB, imagePath) };
}

/**
 * Why the counters of a guest's disks (root first, then the data disks in order) cannot come from
 * one instant, or undefined when they can. The guest writes each step's value to vda's A and B,
 * then each data disk's A and B, so one instant's records, in that order, never rise and span at
 * most one step; a copy of the disks at two instants breaks this (unless they fell in one step).
 */
export function checkOneInstant(disks: { dev: string; counter: Counter }[]): string | undefined {
  const records = disks.flatMap((d) => [d.counter.a, d.counter.b]);
  const shown = disks.map((d) => `${d.dev} A=${d.counter.a} B=${d.counter.b}`).join(', ');
  const first = records[0];
  const last = records.at(-1);
  if (first === undefined || last === undefined) return 'no disks';
  if (first === 0) return `no counter on the root disk (${shown})`;
  const rises = records.findIndex((v, i) => i > 0 && v > (records[i - 1] ?? v));
  if (rises > 0) return `a record written later holds a newer value than one written before it (${shown})`;
  if (first - last > 1) return `the records span ${first - last} steps, more than the one step of a single instant (${shown})`;
  return undefined;
}
