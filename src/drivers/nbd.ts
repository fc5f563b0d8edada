// Reads an NBD export (the pull backup job's point-in-time view, or qemu-nbd's) with libnbd, the
// NBD client QEMU's and libguestfs' people maintain, from Debian: its allocation map with nbdinfo
// (libnbd-bin), and byte ranges through one long-lived python3-libnbd process that answers read
// requests on a pipe. So only allocated extents are ever read, and each read costs a pipe round
// trip, not a process.
//
// Why a Python process: libnbd has no tool that reads a byte range to a pipe (nbdcopy copies a
// whole export, zeros included), and no Node binding. Its Python binding is a thin layer over the
// C library, and the pipe protocol is one line per request ("offset length") answered by exactly
// that many bytes, in order, after an 8-byte big-endian export size once connected.
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { execa } from 'execa';
import { VmsnapError } from '../shared/errors.js';
import type { Extent, ReadRange } from './qcow2-stream.js';

/** Debian's interpreter, which python3-libnbd installs into (a python3 first on PATH, pyenv's or a venv's, lacks it). */
const PYTHON = '/usr/bin/python3';
/** QEMU's NBD server takes at most 32 MiB per request. */
const MAX_READ = 32 << 20;
const NBDINFO_TIMEOUT_MS = 120_000;

const READER = `
import fcntl, struct, sys
try:
    import nbd
except ImportError:
    sys.stderr.write("python3-libnbd is not installed\\n")
    sys.exit(2)
try:
    h = nbd.NBD()
    h.connect_uri(sys.argv[1])
    out = sys.stdout.buffer
    try:
        fcntl.fcntl(1, 1031, 1 << 20)  # F_SETPIPE_SZ: fewer, larger pipe transfers (if stdout is a pipe)
    except OSError:
        pass
    out.write(struct.pack(">Q", h.get_size()))
    out.flush()
    for line in sys.stdin.buffer:
        offset, length = map(int, line.split())
        out.write(h.pread(length, offset))
        out.flush()
except nbd.Error as e:
    sys.stderr.write("%s\\n" % e.string)
    sys.exit(1)
except BrokenPipeError:
    sys.exit(0)
`;

/** The URI of export `name` on a unix socket, as libnbd and nbdinfo take it. */
export function nbdUnixUri(socket: string, name = ''): string {
  return `nbd+unix:///${encodeURIComponent(name)}?socket=${encodeURIComponent(socket)}`;
}

export interface AllocationMap {
  /** The export's size in bytes. */
  virtualSize: number;
  /** Sorted, contiguous from 0 to virtualSize. */
  extents: Extent[];
}

function lastLine(text: string): string {
  return (
    text
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean)
      .at(-1) ?? ''
  );
}

function unreadable(uri: string, why: string): VmsnapError {
  return new VmsnapError('ConvertFailed', `cannot read NBD export ${uri}: ${why || 'no message'}`, { uri });
}

async function nbdinfo(uri: string, args: string[], signal?: AbortSignal): Promise<string> {
  const r = await execa('nbdinfo', [...args, uri], { env: { LC_ALL: 'C' }, reject: false, stdin: 'ignore', timeout: NBDINFO_TIMEOUT_MS, cancelSignal: signal });
  if ((r as { code?: string }).code === 'ENOENT') {
    throw new VmsnapError('ConfigError', 'nbdinfo not found in PATH: install libnbd-bin (scripts/setup does)');
  }
  signal?.throwIfAborted();
  if (r.failed) throw unreadable(uri, r.timedOut ? `nbdinfo gave no answer in ${NBDINFO_TIMEOUT_MS / 1000} s` : lastLine(r.stderr));
  return r.stdout;
}

/**
 * The export's allocation map (NBD block status, base:allocation) as nbdinfo reads it. An extent is
 * `zero` when it reads as zeros (NBD_STATE_ZERO), whether a hole or not.
 */
export async function readAllocationMap(uri: string, signal?: AbortSignal): Promise<AllocationMap> {
  const [sizeText, mapText] = await Promise.all([nbdinfo(uri, ['--size'], signal), nbdinfo(uri, ['--map', '--json'], signal)]);
  const virtualSize = Number(sizeText.trim());
  const raw = JSON.parse(mapText) as { offset: number; length: number; type: number }[];
  const extents: Extent[] = [];
  let pos = 0;
  for (const e of raw) {
    if (e.offset !== pos) throw unreadable(uri, `nbdinfo's map has a gap or overlap at ${pos}`);
    const zero = (e.type & 2) !== 0;
    const last = extents.at(-1);
    // nbdinfo splits long runs; one extent per run keeps the map small.
    if (last && last.zero === zero) last.length += e.length;
    else extents.push({ offset: e.offset, length: e.length, zero });
    pos += e.length;
  }
  if (!Number.isSafeInteger(virtualSize) || pos !== virtualSize) throw unreadable(uri, `nbdinfo's map ends at ${pos}, the export has ${sizeText.trim()} bytes`);
  return { virtualSize, extents };
}

export interface NbdReader {
  /** The export's size in bytes. */
  readonly size: number;
  /** Reads exactly `length` bytes at `offset`; calls may overlap, they are answered in order. */
  readonly read: ReadRange;
  /** Bytes read so far. */
  readonly bytesRead: number;
  /** Ends the reader process; reads still waiting fail. */
  close(): Promise<void>;
}

interface Pending {
  buf: Buffer;
  filled: number;
  resolve: (buf: Buffer) => void;
  reject: (err: Error) => void;
}

/** Connects to the export; resolves once connected (a bad socket or export name fails here). */
export async function openNbdReader(uri: string): Promise<NbdReader> {
  // The kernel kills the reader if the worker dies; setpriv execs it, so the pid is python's.
  const child: ChildProcessByStdio<Writable, Readable, Readable> = spawn('setpriv', ['--pdeathsig', 'KILL', PYTHON, '-c', READER, uri], {
    env: { LC_ALL: 'C' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const pending: Pending[] = [];
  let stderr = '';
  let failure: Error | undefined;
  let size = -1;
  let bytesRead = 0;
  let head = Buffer.alloc(0);
  let onConnected: { resolve: () => void; reject: (err: Error) => void } | undefined;
  const connected = new Promise<void>((resolve, reject) => (onConnected = { resolve, reject }));
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));

  const fail = (err: Error) => {
    failure ??= err;
    onConnected?.reject(failure);
    for (const p of pending.splice(0)) p.reject(failure);
  };
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (s: string) => (stderr = (stderr + s).slice(-4096)));
  child.once('error', (err: NodeJS.ErrnoException) => {
    fail(err.code === 'ENOENT' ? new VmsnapError('ConfigError', 'setpriv not found in PATH: install util-linux') : unreadable(uri, err.message));
  });
  child.once('close', (code, signal) => {
    const why = lastLine(stderr) || `the reader exited (${signal ?? code})`;
    if (code === 2) fail(new VmsnapError('ConfigError', `cannot read NBD export ${uri}: ${why}: install python3-libnbd (scripts/setup does)`));
    else fail(unreadable(uri, why));
  });
  // A closed pipe shows as the process's exit, reported above.
  child.stdin.on('error', () => undefined);

  child.stdout.on('data', (chunk: Buffer) => {
    let at = 0;
    if (size < 0) {
      head = Buffer.concat([head, chunk]);
      if (head.length < 8) return;
      size = Number(head.readBigUInt64BE(0));
      chunk = head;
      at = 8;
      onConnected?.resolve();
    }
    while (at < chunk.length) {
      const p = pending[0];
      if (!p) {
        fail(unreadable(uri, 'the reader sent bytes nobody asked for'));
        child.kill('SIGKILL');
        return;
      }
      const n = Math.min(chunk.length - at, p.buf.length - p.filled);
      chunk.copy(p.buf, p.filled, at, at + n);
      p.filled += n;
      at += n;
      if (p.filled === p.buf.length) {
        pending.shift();
        bytesRead += p.buf.length;
        p.resolve(p.buf);
      }
    }
  });

  try {
    await connected;
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    throw err;
  }

  const read: ReadRange = (offset, length) => {
    if (failure) return Promise.reject(failure);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || length > MAX_READ || offset + length > size) {
      return Promise.reject(
        new VmsnapError('InvalidInput', `NBD read of ${length} bytes at ${offset}: outside the export's ${size} bytes or over ${MAX_READ}`),
      );
    }
    return new Promise<Buffer>((resolve, reject) => {
      pending.push({ buf: Buffer.allocUnsafe(length), filled: 0, resolve, reject });
      child.stdin.write(`${offset} ${length}\n`);
    });
  };

  return {
    size,
    read,
    get bytesRead() {
      return bytesRead;
    },
    async close() {
      if (child.exitCode === null && child.signalCode === null) {
        fail(unreadable(uri, 'the reader was closed'));
        child.stdin.end();
        // A read in progress ends at its next request line; one stuck on a hung server needs the kill.
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
}
