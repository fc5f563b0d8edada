// Reads an NBD export (the pull backup job's point-in-time view, or qemu-nbd's) with libnbd, the
// NBD client QEMU's and libguestfs' people maintain, from Debian: its allocation map with nbdinfo
// (libnbd-bin), and byte ranges through one long-lived python3-libnbd process that answers read
// requests. So only allocated extents are ever read, and each read costs a round trip, not a process.
//
// Why a Python process: libnbd has no tool that reads a byte range to a pipe (nbdcopy copies a
// whole export, zeros included), and no Node binding. Its Python binding is a thin layer over the
// C library. The reader connects to the export, listens on a unix socket in a private (0700) temp
// dir, prints the export's size, and takes one connection: a line per request, answered in order.
// "offset length 0" is answered by those bytes; "offset length cluster" by one byte per cluster,
// 1 if it holds a non-zero byte (the measuring pass: the data is looked at where it is read, and
// only the verdict crosses over). Node reads the answers with `onread` straight
// into each request's buffer: no 64 KiB chunk per read to allocate, copy and collect (through the
// child's stdout that cost more CPU than the reading itself).
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { VmsnapError } from '../shared/errors.js';
import type { DiskSource, Extent, ReadRange } from './qcow2-stream.js';

/** Debian's interpreter, which python3-libnbd installs into (a python3 first on PATH, pyenv's or a venv's, lacks it). */
const PYTHON = '/usr/bin/python3';
/** QEMU's NBD server takes at most 32 MiB per request. */
const MAX_READ = 32 << 20;
const NBDINFO_TIMEOUT_MS = 120_000;
/** Reads into a request's own buffer; this one only takes bytes that arrive before their request is known. */
const SCRATCH = 64 << 10;

const READER = `
import socket, sys
try:
    import nbd
except ImportError:
    sys.stderr.write("python3-libnbd is not installed\\n")
    sys.exit(2)
try:
    h = nbd.NBD()
    h.connect_uri(sys.argv[1])
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sys.argv[2])
    server.listen(1)
    print(h.get_size(), flush=True)
    conn, _ = server.accept()
    server.close()
    # One buffer, read into and sent from: no allocation per request.
    h.set_pread_initialize(False)
    data = bytearray(0)
    zero = b""
    for line in conn.makefile("rb"):
        offset, length, cluster = map(int, line.split())
        if length > len(data):
            data = bytearray(length)
        part = memoryview(data)[:length]
        cookie = h.aio_pread(nbd.Buffer.from_buffer(part), offset)
        while not h.aio_command_completed(cookie):
            h.poll(-1)
        if cluster == 0:
            conn.sendall(part)
            continue
        # A zero scan: one byte per cluster, 1 if it holds a non-zero byte (a slice compare is a memcmp).
        if len(zero) != cluster:
            zero = bytes(cluster)
        flags = bytearray()
        for at in range(0, length, cluster):
            end = min(at + cluster, length)  # the buffer may be longer than this request
            flags.append(data[at:end] != zero[: end - at])
        conn.sendall(flags)
except nbd.Error as e:
    sys.stderr.write("%s\\n" % e.string)
    sys.exit(1)
except (BrokenPipeError, ConnectionResetError):
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
  const raw = JSON.parse(await nbdinfo(uri, ['--map', '--json'], signal)) as { offset: number; length: number; type: number }[];
  const extents: Extent[] = [];
  // nbdinfo maps the whole export, so the map ends at its size.
  let virtualSize = 0;
  for (const e of raw) {
    if (e.offset !== virtualSize) throw unreadable(uri, `nbdinfo's map has a gap or overlap at ${virtualSize}`);
    const zero = (e.type & 2) !== 0;
    const last = extents.at(-1);
    // nbdinfo splits long runs; one extent per run keeps the map small.
    if (last && last.zero === zero) last.length += e.length;
    else extents.push({ offset: e.offset, length: e.length, zero });
    virtualSize += e.length;
  }
  return { virtualSize, extents };
}

export interface NbdReader extends DiskSource {
  /** The export's size in bytes. */
  readonly size: number;
  /** Reads exactly `length` bytes at `offset`; calls may overlap, they are answered in order. */
  readonly read: ReadRange;
  /** Which clusters of a range hold a non-zero byte (1) or not (0), without moving the data. */
  readonly nonZeroClusters: NonNullable<DiskSource['nonZeroClusters']>;
  /** Bytes read from the export so far (by either call). */
  readonly bytesRead: number;
  /** Ends the reader process; reads still waiting fail. */
  close(): Promise<void>;
}

interface Pending {
  buf: Buffer;
  filled: number;
  /** Bytes of the export the request reads. */
  reads: number;
  resolve: (buf: Buffer) => void;
  reject: (err: Error) => void;
}

/** Connects to the export; resolves once connected (a bad socket or export name fails here). */
export async function openNbdReader(uri: string): Promise<NbdReader> {
  const dir = await mkdtemp(join(tmpdir(), 'vmsnap-nbd-'));
  const path = join(dir, 'reader.sock');
  // The kernel kills the reader if the worker dies; setpriv execs it, so the pid is python's.
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', PYTHON, '-c', READER, uri, path], { env: { LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
  const pending: Pending[] = [];
  const scratch = Buffer.allocUnsafe(SCRATCH);
  let stderr = '';
  let stdout = '';
  let failure: Error | undefined;
  let bytesRead = 0;
  let socket: net.Socket | undefined;
  let onReady: { resolve: (size: number) => void; reject: (err: Error) => void } | undefined;
  const ready = new Promise<number>((resolve, reject) => (onReady = { resolve, reject }));
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));

  const fail = (err: Error) => {
    failure ??= err;
    onReady?.reject(failure);
    for (const p of pending.splice(0)) p.reject(failure);
    socket?.destroy();
  };
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (text: string) => (stderr = (stderr + text).slice(-4096)));
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (text: string) => {
    stdout += text;
    if (stdout.includes('\n')) onReady?.resolve(Number(stdout.trim()));
  });
  child.once('error', (err: NodeJS.ErrnoException) => {
    fail(err.code === 'ENOENT' ? new VmsnapError('ConfigError', 'setpriv not found in PATH: install util-linux') : unreadable(uri, err.message));
  });
  child.once('close', (code, signal) => {
    const why = lastLine(stderr) || `the reader exited (${signal ?? code})`;
    if (code === 2) fail(new VmsnapError('ConfigError', `cannot read NBD export ${uri}: ${why}: install python3-libnbd (scripts/setup does)`));
    else fail(unreadable(uri, why));
  });

  /** Where the next bytes go: the rest of the oldest request's buffer, so the kernel copies them there. */
  const nextBuffer = () => {
    const p = pending[0];
    return p ? p.buf.subarray(p.filled) : scratch;
  };
  /** Bytes arrived in `buf`: in place when it was a request's buffer, else handed on to the requests waiting. */
  const arrived = (nread: number, buf: Uint8Array): boolean => {
    let at = 0;
    while (at < nread) {
      const p = pending[0];
      if (!p) {
        fail(unreadable(uri, 'the reader sent bytes nobody asked for'));
        return false;
      }
      const n = Math.min(nread - at, p.buf.length - p.filled);
      const inPlace = buf.buffer === p.buf.buffer && buf.byteOffset === p.buf.byteOffset + p.filled;
      if (!inPlace) p.buf.set(buf.subarray(at, at + n), p.filled);
      p.filled += n;
      at += n;
      if (p.filled === p.buf.length) {
        pending.shift();
        bytesRead += p.reads;
        p.resolve(p.buf);
      }
    }
    return true;
  };

  let size: number;
  try {
    size = await ready;
    socket = net.connect({ path, onread: { buffer: nextBuffer, callback: arrived } });
    socket.on('error', (err) => fail(unreadable(uri, err.message)));
    // The reader closes its end as it exits: its exit (above) says why, with libnbd's message.
    socket.on('close', () => void exited.then(() => fail(unreadable(uri, lastLine(stderr) || 'the reader closed its connection'))));
    await new Promise<void>((resolve, reject) => {
      socket!.once('connect', resolve);
      socket!.once('error', reject);
    });
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    await rm(dir, { recursive: true, force: true });
    throw failure ?? err;
  }

  /** Sends a request whose answer is `answer` bytes long, read into `into` when it fits. */
  const request = (offset: number, length: number, cluster: number, answer: number, into?: Buffer): Promise<Buffer> => {
    if (failure) return Promise.reject(failure);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || length > MAX_READ || offset + length > size) {
      return Promise.reject(
        new VmsnapError('InvalidInput', `NBD read of ${length} bytes at ${offset}: outside the export's ${size} bytes or over ${MAX_READ}`),
      );
    }
    return new Promise<Buffer>((resolve, reject) => {
      pending.push({ buf: into?.length === answer ? into : Buffer.allocUnsafe(answer), filled: 0, reads: length, resolve, reject });
      socket!.write(`${offset} ${length} ${cluster}\n`);
    });
  };
  const read: ReadRange = (offset, length, into) => request(offset, length, 0, length, into);
  const nonZeroClusters = (offset: number, length: number, cluster: number) => {
    if (!Number.isSafeInteger(cluster) || cluster <= 0) return Promise.reject(new VmsnapError('InvalidInput', `NBD zero scan: cluster size ${cluster}`));
    return request(offset, length, cluster, Math.ceil(length / cluster));
  };

  let closing: Promise<void> | undefined;
  return {
    size,
    read,
    nonZeroClusters,
    get bytesRead() {
      return bytesRead;
    },
    close() {
      closing ??= (async () => {
        fail(unreadable(uri, 'the reader was closed'));
        // It only reads: nothing to finish, and the interpreter's own exit takes tens of ms.
        child.kill('SIGKILL');
        await exited;
        await rm(dir, { recursive: true, force: true });
      })();
      return closing;
    },
  };
}

let toolsChecked: Promise<string | undefined> | undefined;

/** Why this host cannot read an NBD export (nbdinfo or python3-libnbd missing), or undefined; asked once per process. */
export function missingNbdTools(): Promise<string | undefined> {
  toolsChecked ??= (async () => {
    const info = await execa('nbdinfo', ['--version'], { reject: false, stdin: 'ignore' });
    if (info.failed) return 'nbdinfo is not installed (Debian: libnbd-bin)';
    const python = await execa(PYTHON, ['-c', 'import nbd'], { reject: false, stdin: 'ignore' });
    if (python.failed) return 'the libnbd Python binding is not installed (Debian: python3-libnbd)';
    return undefined;
  })();
  return toolsChecked;
}
