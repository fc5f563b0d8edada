// `npx tsx bench/qcow2-stream.ts [--rounds N] [--data-mib N] [--size-gib N] [--skip-compressed]`: the streamed qcow2
// writer reading an NBD export (src/drivers/nbd.ts + qcow2-stream.ts) against `qemu-img convert
// -O qcow2` from the same export, both into a file on this machine. The export is qemu-nbd serving
// a sparse raw disk (default 10 GiB with 100 MiB of data: half random, half compressible text);
// its data stays in the page cache, so the figures are of the reading and writing code, not of a
// disk. Variants alternate within each round, and every figure is a ratio to qemu-img in the same
// round (this machine is shared: absolute times move from run to run). Writes
// bench/results/qcow2-stream.md and .json (other shapes: qcow2-stream-<data>mib-<size>gib.*).
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { openNbdReader, readAllocationMap } from '../src/drivers/nbd.js';
import { planQcow2Stream, type Qcow2StreamOptions } from '../src/drivers/qcow2-stream.js';
import { serveDisk, type ServedDisk } from '../test/support/qemu-nbd.js';
import { cpuTimes } from './lib/proc.js';

const MiB = 1024 * 1024;
const RESULTS = fileURLToPath(new URL('results/', import.meta.url));

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    'data-mib': { type: 'string', default: '100' },
    'size-gib': { type: 'string', default: '10' },
    'skip-compressed': { type: 'boolean', default: false },
  },
});
const rounds = Number(args.rounds);
const dataMiB = Number(args['data-mib']);
const sizeGiB = Number(args['size-gib']);

interface Variant {
  name: string;
  /** Which qemu-img variant this one is measured against. */
  baseline: string;
  run(served: ServedDisk, out: string): Promise<{ bytesRead?: number }>;
}

function qemuImg(name: string, compress: boolean): Variant {
  return {
    name,
    baseline: name,
    async run(served, out) {
      const source = `json:${JSON.stringify({ driver: 'raw', file: { driver: 'nbd', server: { type: 'unix', path: served.socket }, export: '' } })}`;
      await execa('qemu-img', ['convert', ...(compress ? ['-c'] : []), '-O', 'qcow2', source, out]);
      return {};
    },
  };
}

function streamed(name: string, baseline: string, options: Qcow2StreamOptions): Variant {
  return {
    name,
    baseline,
    async run(served, out) {
      const map = await readAllocationMap(served.uri);
      const reader = await openNbdReader(served.uri);
      try {
        const plan = await planQcow2Stream(map, reader, options);
        // As an upload body sends it: each chunk written before the next is pulled, so buffers are reused.
        const file = await open(out, 'w');
        try {
          for await (const chunk of plan.chunks({ reuseBuffers: true })) await file.write(chunk);
        } finally {
          await file.close();
        }
        return { bytesRead: reader.bytesRead };
      } finally {
        await reader.close();
      }
    },
  };
}

const variants: Variant[] = [
  qemuImg('qemu-img convert', false),
  streamed('stream (measuring pass)', 'qemu-img convert', {}),
  streamed('stream (map only)', 'qemu-img convert', { scanZeros: false }),
  ...(args['skip-compressed'] ? [] : [qemuImg('qemu-img convert -c', true), streamed('stream compressed', 'qemu-img convert -c', { compress: true })]),
];

interface Sample {
  round: number;
  variant: string;
  wallMs: number;
  /** CPU seconds of this process and of the children it reaped (qemu-img, the NBD reader, nbdinfo). */
  clientCpuS: number;
  /** CPU seconds of the NBD server (qemu-nbd). */
  serverCpuS: number;
  outputBytes: number;
  bytesRead?: number;
}

function cpuNow(pid: number): number {
  const t = cpuTimes(pid);
  return t ? t.own + t.children : 0;
}

async function makeDisk(dir: string): Promise<string> {
  const file = join(dir, 'disk.raw');
  const fh = await open(file, 'w');
  const piece = 10 * MiB;
  const text = Buffer.from('the quick brown vmsnap jumps over the lazy qcow2 writer; '.repeat(Math.ceil(piece / 57))).subarray(0, piece);
  try {
    // Pieces spread over the disk, alternating random and compressible, 10 MiB each.
    const pieces = Math.max(1, Math.round(dataMiB / 10));
    const stride = Math.floor((sizeGiB * 1024) / pieces) * MiB;
    for (let i = 0; i < pieces; i++) await fh.write(i % 2 ? text : randomBytes(piece), 0, piece, i * stride);
    await fh.truncate(sizeGiB * 1024 * MiB);
  } finally {
    await fh.close();
  }
  return file;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(os.tmpdir(), 'vmsnap-bench-qcow2-'));
  let served: ServedDisk | undefined;
  try {
    const disk = await makeDisk(dir);
    served = await serveDisk(dir, disk, 'raw');
    const samples: Sample[] = [];
    // One unmeasured pass of each: page cache, code caches.
    for (const v of variants) await v.run(served, join(dir, 'warm.qcow2'));
    for (let round = 1; round <= rounds; round++) {
      // Rotate the order so no variant always runs right after the same neighbour.
      const order = variants.map((_, i) => variants[(i + round) % variants.length]!);
      for (const v of order) {
        const out = join(dir, 'out.qcow2');
        await rm(out, { force: true });
        const client0 = cpuNow(process.pid);
        const server0 = cpuNow(served.pid);
        const t0 = performance.now();
        const { bytesRead } = await v.run(served, out);
        const wallMs = performance.now() - t0;
        samples.push({
          round,
          variant: v.name,
          wallMs,
          clientCpuS: cpuNow(process.pid) - client0,
          serverCpuS: cpuNow(served.pid) - server0,
          outputBytes: (await stat(out)).size,
          bytesRead,
        });
        console.log(`round ${round} ${v.name}: ${wallMs.toFixed(0)} ms`);
      }
    }
    await report(samples);
  } finally {
    await served?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

async function report(samples: Sample[]): Promise<void> {
  const of = (name: string) => samples.filter((s) => s.variant === name);
  const ratio = (v: Variant, pick: (s: Sample) => number) =>
    median(of(v.name).map((s) => pick(s) / pick(samples.find((b) => b.round === s.round && b.variant === v.baseline)!)));
  const rows = variants.map((v) => {
    const mine = of(v.name);
    const read = mine[0]?.bytesRead;
    return (
      `| ${v.name} | ${v.baseline === v.name ? '1.00' : ratio(v, (s) => s.wallMs).toFixed(2)} | ` +
      `${v.baseline === v.name ? '1.00' : ratio(v, (s) => s.clientCpuS + s.serverCpuS).toFixed(2)} | ` +
      `${median(mine.map((s) => s.wallMs)).toFixed(0)} | ${median(mine.map((s) => s.clientCpuS * 1000)).toFixed(0)} | ` +
      `${median(mine.map((s) => s.serverCpuS * 1000)).toFixed(0)} | ${(median(mine.map((s) => s.outputBytes)) / MiB).toFixed(1)} | ` +
      `${read === undefined ? '-' : (read / MiB).toFixed(1)} |`
    );
  });
  const machine = `${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'}), load ${os
    .loadavg()
    .map((l) => l.toFixed(1))
    .join(' ')}, node ${process.version}, ${(await execa('qemu-img', ['--version'])).stdout.split('\n')[0]}`;
  const md = [
    '# Streamed qcow2 from an NBD export against qemu-img convert',
    '',
    `\`npx tsx bench/qcow2-stream.ts --rounds ${rounds} --data-mib ${dataMiB} --size-gib ${sizeGiB}${args['skip-compressed'] ? ' --skip-compressed' : ''}\`: ` +
      `a ${sizeGiB} GiB sparse raw disk ` +
      `with ${dataMiB} MiB of data (10 MiB pieces spread over it, half random, half compressible text), served by qemu-nbd on a unix ` +
      'socket; each variant writes a qcow2 file from the export. Ratios are the median over rounds of the variant against its qemu-img ' +
      'baseline in the same round; times are medians. CPU is this process plus the children it reaped (qemu-img, the NBD reader, nbdinfo), ' +
      'and the server (qemu-nbd) apart.',
    '',
    `Machine: ${machine}. ${new Date().toISOString()}.`,
    '',
    '| variant | wall × baseline | CPU × baseline | wall ms | client CPU ms | server CPU ms | output MiB | read from the export MiB |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows,
    '',
  ].join('\n');
  console.log(`\n${md}`);
  // The default shape keeps the plain name; others get theirs, so one run does not overwrite another's.
  const name = dataMiB === 100 && sizeGiB === 10 ? 'qcow2-stream' : `qcow2-stream-${dataMiB}mib-${sizeGiB}gib`;
  await writeFile(join(RESULTS, `${name}.md`), md);
  await writeFile(join(RESULTS, `${name}.json`), `${JSON.stringify({ rounds, dataMiB, sizeGiB, machine, samples }, null, 2)}\n`);
}

await main();
