// qemu-img as vmsnap needs it: flatten a (possibly backed, possibly live) disk into one standalone
// image, inspect images, and check our own output before it is uploaded. Runs the qemu-img binary
// through execa (argument arrays, never a shell). Errors are VmsnapError.
//
// qemu-img messages are parsed, so it runs with LC_ALL=C. Messages mapped (qemu-img 7.2):
//   Could not open 'X': Could not open 'X': No such file or directory        -> DiskNotFound
//   Could not open 'X': Could not open backing file: ... No such file ...     -> DiskNotFound
//   Could not open 'X': Failed to get shared "write" lock                     -> InstanceInvalidState
//   Could not open 'X': Image is not in qcow2 format / Unsupported qcow2 ...  -> ImageCorrupt
//   ... Image is corrupt / Marking image as corrupt ...                       -> ImageCorrupt
//   ... No space left on device                                               -> NoSpace
//   anything else                                                             -> ConvertFailed (retryable)

import { promises as fs } from 'node:fs';
import { execa } from 'execa';
import { VmsnapError } from '../shared/errors.js';
import { fsyncFileAndEntry, removeRegularFile } from './files.js';

export interface ConvertOptions {
  source: string;
  /** Format of the source, as the domain defines it. Always given: probing is unsafe (a guest can write a qcow2 header into a raw disk). */
  sourceFormat: string;
  /** Created or overwritten. Removed again (if a regular file) when the convert fails or is aborted. */
  target: string;
  targetFormat: 'qcow2' | 'raw';
  /** qcow2 only: zlib-compress clusters (-c). Much slower, smaller output. */
  compress?: boolean;
  /** -U: open the source without taking QEMU's image lock, needed while a VM has it open. */
  forceShare?: boolean;
  /** Percent done, 0..100, as qemu-img reports it (about every 1 %). */
  onProgress?: (percent: number) => void;
  /** Aborting kills qemu-img, waits for it, removes the partial target and rejects with an AbortError. */
  signal?: AbortSignal;
  /** Read the source from an NBD export on this unix socket instead of a file (`source` is then the export name). */
  nbdSocket?: string;
  /** -r: at most this many MiB read per second. */
  rateLimitMiBps?: number;
  /** -m: parallel requests (qemu-img's default is 8). */
  parallel?: number;
  /** fsync the target before resolving (default true). false: a snapshot's temp copy, which needs no durability (see ConvertedDisk.bootId). */
  fsync?: boolean;
  /** Lowest CPU and I/O priority (nice 19, ionice idle): the host's guests go first. */
  lowPriority?: boolean;
  /** -t: the target's cache mode; qemu-img's default for convert is unsafe (page cache, no flush until the end). */
  targetCache?: 'none' | 'writeback' | 'unsafe';
}

export interface ImageInfo {
  format: string;
  /** Size the guest sees, bytes. */
  virtualSize: number;
  /** Bytes allocated on the host (sparse files and unallocated clusters count nothing). */
  actualSize: number;
  /** Set when the image has a backing file (as written in the image, may be relative). */
  backingFile?: string;
}

export interface CheckResult {
  ok: boolean;
  message: string;
}

/** Error thrown when a convert is aborted through its signal (same name/code as Node's own). */
export class AbortError extends Error {
  override name = 'AbortError';
  readonly code = 'ABORT_ERR';
}

// How qemu-img runs: in the C locale, since its messages are parsed.
const QEMU_IMG = 'qemu-img';
const env = { LC_ALL: 'C' };
// A killed convert gets this long after SIGTERM before SIGKILL.
const KILL_GRACE_MS = 2000;
// info/check only read metadata; a hang means stuck storage, not a big image.
const META_TIMEOUT_MS = 120_000;

/** Last non-empty stderr line, without the "qemu-img: " prefix: qemu-img puts the cause there. */
function lastLine(stderr: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  return (lines.at(-1) ?? '').replace(/^qemu-img: /, '');
}

/**
 * Maps a failed qemu-img run to a VmsnapError. `image` is the path whose opening failed when that
 * is recognisable; `what` names the operation for the message.
 */
function mapFailure(what: string, image: string, stderr: string, target?: string): VmsnapError {
  const all = stderr.trim();
  const line = lastLine(stderr) || 'qemu-img failed without a message';
  const details = { image, stderr: all };
  if (/No space left on device/i.test(all)) {
    return new VmsnapError('NoSpace', `${what}: no space left on device: ${line}`, details);
  }
  if (/Failed to get .*lock/i.test(all)) {
    // The disk is in use by a running QEMU: for a shut-off instance that means it was started.
    return new VmsnapError(
      'InstanceInvalidState',
      `${what}: ${image} is locked by another process (a running VM?); open it with forceShare (-U), with the VM paused for a consistent copy: ${line}`,
      details,
    );
  }
  // Source-side open failures read "Could not open '<source>': ...". The target is created first
  // ("Could not create ...") and only then opened, so an open failure naming it is not the source's fault.
  const openedTarget = target !== undefined && all.includes(`Could not open '${target}'`);
  if (!openedTarget && /Could not open/.test(all)) {
    if (/No such file or directory/.test(all)) {
      const backing = /backing file/i.test(all);
      return new VmsnapError('DiskNotFound', `${what}: ${backing ? `a backing file of ${image} is missing` : `${image} does not exist`}: ${line}`, details);
    }
    if (/Permission denied/.test(all)) {
      return new VmsnapError('ConvertFailed', `${what}: cannot read ${image}: ${line}`, details);
    }
    return new VmsnapError('ImageCorrupt', `${what}: ${image} is not a readable image: ${line}`, details);
  }
  if (/corrupt/i.test(all)) {
    return new VmsnapError('ImageCorrupt', `${what}: ${image} is corrupt: ${line}`, details);
  }
  return new VmsnapError('ConvertFailed', `${what} failed: ${line}`, details);
}

function spawnFailure(what: string, err: { code?: string; message: string }): VmsnapError {
  if (err.code === 'ENOENT') {
    return new VmsnapError('ConfigError', `${what}: qemu-img not found in PATH: install qemu-utils`);
  }
  return new VmsnapError('ConvertFailed', `${what}: could not run qemu-img: ${err.message}`);
}

function timedOut(what: string): VmsnapError {
  return new VmsnapError('ConvertFailed', `${what}: no answer after ${META_TIMEOUT_MS / 1000} s (stuck storage?)`);
}

/** Source must exist as a file or block device; a clear DiskNotFound beats qemu-img's message. */
async function requireImage(what: string, file: string): Promise<void> {
  let st;
  try {
    st = await fs.stat(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new VmsnapError('DiskNotFound', `${what}: ${file} does not exist`, { image: file });
    }
    throw e;
  }
  if (!st.isFile() && !st.isBlockDevice()) {
    throw new VmsnapError('DiskNotFound', `${what}: ${file} is not a regular file or block device`, { image: file });
  }
}

function abortError(signal: AbortSignal): AbortError {
  return new AbortError('qemu-img convert aborted', { cause: signal.reason });
}

/**
 * Copies `source` (and its whole backing chain, flattened) into a standalone image at `target`.
 * Zero detection is on (qemu-img's default -S 4k), so holes and zero runs stay unallocated.
 */
export async function convert(opts: ConvertOptions): Promise<void> {
  const what = `qemu-img convert ${opts.source}`;
  if (opts.compress && opts.targetFormat !== 'qcow2') {
    throw new VmsnapError('InvalidInput', `${what}: compression needs targetFormat qcow2, not ${opts.targetFormat}`);
  }
  if (opts.source === opts.target) {
    throw new VmsnapError('InvalidInput', `${what}: source and target are the same file`);
  }
  if (opts.signal?.aborted) throw abortError(opts.signal);
  if (!opts.nbdSocket) await requireImage(what, opts.source);
  // json: takes any socket path as is (an nbd+unix:// URL would need it escaped).
  const source = opts.nbdSocket
    ? `json:${JSON.stringify({ driver: opts.sourceFormat, file: { driver: 'nbd', server: { type: 'unix', path: opts.nbdSocket }, export: opts.source } })}`
    : opts.source;

  const args = [
    'convert',
    '-p',
    ...(opts.forceShare ? ['-U'] : []),
    '-f',
    opts.sourceFormat,
    '-O',
    opts.targetFormat,
    ...(opts.compress ? ['-c'] : []),
    ...(opts.rateLimitMiBps ? ['-r', `${opts.rateLimitMiBps}M`] : []),
    ...(opts.parallel ? ['-m', String(opts.parallel)] : []),
    ...(opts.targetCache ? ['-t', opts.targetCache] : []),
    // "--" keeps a path starting with "-" from being read as an option.
    '--',
    source,
    opts.target,
  ];
  // If the worker dies (SIGKILL, OOM), the kernel kills qemu-img too: an orphaned copy would go
  // on writing into a temp dir that the retry on another worker starts over in. setpriv execs
  // qemu-img, so the pid, the signals and the exit status are qemu-img's own.
  const command = ['setpriv', '--pdeathsig', 'KILL', QEMU_IMG, ...args];
  // ionice and nice exec what follows, as setpriv does: still one process, qemu-img's own pid.
  if (opts.lowPriority) command.unshift('ionice', '-c', '3', 'nice', '-n', '19');
  const sub = execa(command[0]!, command.slice(1), {
    env,
    reject: false,
    // Progress is consumed as it streams; nothing to keep.
    buffer: { stdout: false, stderr: true },
    stdin: 'ignore',
    cancelSignal: opts.signal,
    forceKillAfterDelay: KILL_GRACE_MS,
  });

  // -p writes "    (12.34/100%)\r" to stdout; a chunk can end mid-record, so keep the tail.
  let pending = '';
  let last = -1;
  sub.stdout?.setEncoding('utf8');
  sub.stdout?.on('data', (chunk: string) => {
    pending += chunk;
    const re = /\((\d+(?:\.\d+)?)\/100%\)/g;
    let m: RegExpExecArray | null;
    let consumed = 0;
    while ((m = re.exec(pending)) !== null) {
      consumed = re.lastIndex;
      const pct = Math.min(100, Number(m[1]));
      if (pct > last) {
        last = pct;
        try {
          opts.onProgress?.(pct);
        } catch {
          // A broken progress callback must not break the copy.
        }
      }
    }
    pending = pending.slice(consumed).slice(-64);
  });

  // With reject: false execa resolves once the process has exited, also after a cancel.
  const r = await sub;
  if (r.isCanceled && opts.signal) {
    await removeRegularFile(opts.target);
    throw abortError(opts.signal);
  }
  if (r.failed) {
    await removeRegularFile(opts.target);
    if (r.exitCode === undefined && !r.signal) throw spawnFailure(what, r as { code?: string; message: string });
    if (r.signal) {
      throw new VmsnapError('ConvertFailed', `${what}: qemu-img was killed by ${r.signal}`, { stderr: r.stderr });
    }
    throw mapFailure(what, opts.source, r.stderr ?? '', opts.target);
  }
  // qemu-img convert writes its output with cache=unsafe (no flush at all): make the image durable
  // so a host crash cannot leave a file that looks complete but holds stale or zero blocks.
  if (opts.fsync !== false) await fsyncFileAndEntry(opts.target);
}

interface QemuImgInfoJson {
  format: string;
  'virtual-size': number;
  'actual-size'?: number;
  'backing-filename'?: string;
}

/**
 * `qemu-img info --output=json`. Pass `format` whenever it is known: without it qemu-img probes,
 * which on a raw guest disk lets the guest choose the format. `forceShare` (-U) reads an image a
 * running VM holds (the numbers may then be slightly stale).
 */
export async function info(file: string, opts: { forceShare?: boolean; format?: string } = {}): Promise<ImageInfo> {
  const what = `qemu-img info ${file}`;
  await requireImage(what, file);
  const args = ['info', '--output=json', ...(opts.forceShare ? ['-U'] : []), ...(opts.format ? ['-f', opts.format] : []), '--', file];
  const r = await execa(QEMU_IMG, args, { env, reject: false, stdin: 'ignore', timeout: META_TIMEOUT_MS });
  if (r.timedOut) throw timedOut(what);
  if (r.failed) {
    if (r.exitCode === undefined && !r.signal) throw spawnFailure(what, r as { code?: string; message: string });
    throw mapFailure(what, file, r.stderr);
  }
  let j: QemuImgInfoJson;
  try {
    j = JSON.parse(r.stdout) as QemuImgInfoJson;
  } catch {
    throw new VmsnapError('ConvertFailed', `${what}: unexpected output: ${r.stdout.slice(0, 200)}`);
  }
  const out: ImageInfo = {
    format: j.format,
    virtualSize: j['virtual-size'],
    // Absent for some protocols: nothing known to be allocated.
    actualSize: j['actual-size'] ?? 0,
  };
  if (j['backing-filename']) out.backingFile = j['backing-filename'];
  return out;
}

/**
 * `qemu-img measure --output=json`: the bytes a convert of `file` into `targetFormat` needs
 * (`required`: allocated data and metadata; `fullyAllocated`: every cluster written). Read with
 * -U, so a running guest's disk can be measured before it is touched.
 */
export async function measure(file: string, opts: { format?: string; targetFormat: string }): Promise<{ required: number; fullyAllocated: number }> {
  const what = `qemu-img measure ${file}`;
  await requireImage(what, file);
  const args = ['measure', '--output=json', '-U', ...(opts.format ? ['-f', opts.format] : []), '-O', opts.targetFormat, '--', file];
  const r = await execa(QEMU_IMG, args, { env, reject: false, stdin: 'ignore', timeout: META_TIMEOUT_MS });
  if (r.timedOut) throw timedOut(what);
  if (r.failed) {
    if (r.exitCode === undefined && !r.signal) throw spawnFailure(what, r as { code?: string; message: string });
    throw mapFailure(what, file, r.stderr);
  }
  const j = JSON.parse(r.stdout) as { required?: number; 'fully-allocated'?: number };
  if (typeof j.required !== 'number') throw new VmsnapError('ConvertFailed', `${what}: unexpected output: ${r.stdout.slice(0, 200)}`);
  return { required: j.required, fullyAllocated: j['fully-allocated'] ?? j.required };
}

interface QemuImgCheckJson {
  'check-errors'?: number;
  corruptions?: number;
  leaks?: number;
  'corruptions-fixed'?: number;
}

/**
 * `qemu-img check` of an image we wrote, before it is uploaded. ok=false when the image has
 * corruptions or cannot be opened or checked at all. Leaked clusters (exit code 3) only waste space
 * and count as ok. Formats without metadata (raw) have nothing to check: ok, said so in the message.
 * Throws only when the file is missing (DiskNotFound) or locked (InstanceInvalidState).
 */
export async function check(file: string, format: string): Promise<CheckResult> {
  const what = `qemu-img check ${file}`;
  await requireImage(what, file);
  if (format === 'raw') return { ok: true, message: 'raw image: no metadata to check' };
  const r = await execa(QEMU_IMG, ['check', '--output=json', '-f', format, '--', file], {
    env,
    reject: false,
    stdin: 'ignore',
    timeout: META_TIMEOUT_MS,
  });
  if (r.timedOut) throw timedOut(what);
  if (r.exitCode === undefined && !r.signal && r.failed) throw spawnFailure(what, r as { code?: string; message: string });
  let j: QemuImgCheckJson = {};
  try {
    j = JSON.parse(r.stdout) as QemuImgCheckJson;
  } catch {
    // No JSON: qemu-img could not even open the image; the reason is on stderr.
  }
  switch (r.exitCode) {
    case 0:
      return { ok: true, message: 'no errors found' };
    case 3:
      return { ok: true, message: `no corruptions; ${j.leaks ?? 'some'} leaked clusters (harmless, space only)` };
    case 2:
      return {
        ok: false,
        message: `${j.corruptions ?? 'some'} corruptions found${j.leaks ? `, ${j.leaks} leaked clusters` : ''}`,
      };
    case 63:
      return { ok: true, message: `format ${format} does not support checks` };
    default: {
      const e = mapFailure(what, file, r.stderr ?? '');
      if (e.code === 'DiskNotFound' || e.code === 'InstanceInvalidState') throw e;
      return { ok: false, message: `check failed: ${lastLine(r.stderr ?? '') || `exit code ${r.exitCode}`}` };
    }
  }
}
