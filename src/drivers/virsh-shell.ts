// virsh commands through a few long-lived interactive `virsh` shells. A process per command costs a
// fork, an exec and a new connection to libvirtd: 20 ms on a quiet host, 70-220 ms here with 20
// guests running; a command in an open shell costs a round trip to libvirtd, 1-3 ms. A snapshot
// runs 10-20 virsh commands, so that was most of a small disk's copy, and of a cold pause's
// resume. The shells speak the interactive protocol below; the caller still gets a command's
// stdout, stderr and whether it failed, as from a process of its own.
//
// Protocol: each command line is followed by `echo --err M` and `echo M` with a fresh marker M;
// the command's output is what comes before them. virsh echoes each line after its prompt (stdin
// is not a terminal; COLUMNS keeps readline from folding long lines) and reports a failed command
// with "error: ..." on stderr, so a command failed if stderr before its marker says so.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';

export interface VirshOutput {
  stdout: string;
  stderr: string;
  failed: boolean;
  timedOut: boolean;
  /** Set when virsh could not be started at all (ENOENT: not installed). */
  spawnError?: NodeJS.ErrnoException;
}

// Idle shells kept for the next command; more run at once when more commands do.
const KEEP_IDLE = 4;
// An idle shell is closed after this long: nothing lingers once the work is done.
const IDLE_MS = 20_000;
// libvirt's words for a connection that is gone or never came (virsh would reconnect on its own;
// a new shell is as cheap and certain).
const LOST_CONNECTION = /connect|connection|End of file while reading|Cannot (recv|write) data|Broken pipe|Reconnected/i;
// Arguments virsh's parser takes as they are; anything else is quoted.
const PLAIN_ARG = /^[A-Za-z0-9_.,:=@%+/-]+$/;

/** One argument as virsh's command parser reads it back; undefined if it cannot be written on one line. */
function quoteArg(arg: string): string | undefined {
  if (/[\r\n\0]/.test(arg)) return undefined;
  if (PLAIN_ARG.test(arg)) return arg;
  if (!arg.includes("'")) return `'${arg}'`;
  return `"${arg.replace(/[\\"]/g, '\\$&')}"`;
}

export function commandLine(args: string[]): string | undefined {
  const quoted = args.map(quoteArg);
  return quoted.every((q) => q !== undefined) ? quoted.join(' ') : undefined;
}

interface Pending {
  line: string;
  marker: string;
  resolve: (out: VirshOutput) => void;
}

class Shell {
  private out = '';
  private err = '';
  private prompt: string | undefined;
  private pending: Pending | undefined;
  private readonly startup: Promise<void>;
  private exited = false;
  private spawnError: NodeJS.ErrnoException | undefined;
  idleTimer: NodeJS.Timeout | undefined;

  private readonly proc: ChildProcessWithoutNullStreams;

  constructor(uri: string) {
    this.proc = spawn('virsh', ['-c', uri], {
      env: { ...process.env, LC_ALL: 'C', TERM: 'dumb', COLUMNS: '1000000' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.proc.stdout.setEncoding('utf8');
    this.proc.stderr.setEncoding('utf8');
    this.proc.stdin.on('error', () => undefined);
    let ready!: () => void;
    this.startup = new Promise((resolve) => (ready = resolve));
    const first = `__vmsnap_ready_${randomBytes(6).toString('hex')}__`;
    this.pending = { line: '', marker: first, resolve: () => ready() };
    this.proc.stdout.on('data', (chunk: string) => {
      this.out += chunk;
      this.settle();
    });
    this.proc.stderr.on('data', (chunk: string) => {
      this.err += chunk;
      this.settle();
    });
    this.proc.on('error', (e: NodeJS.ErrnoException) => {
      this.spawnError = e;
      this.onExit();
    });
    this.proc.on('close', () => this.onExit());
    this.write(`echo --err ${first}\necho ${first}\n`);
  }

  get alive(): boolean {
    return !this.exited;
  }

  private write(text: string): void {
    if (this.proc.stdin.writable) this.proc.stdin.write(text);
  }

  /** Runs one command line; resolves with its output (never rejects). The timeout counts from now, start-up included. */
  async run(line: string, timeoutMs: number): Promise<VirshOutput> {
    this.setBusy(true);
    try {
      return await new Promise<VirshOutput>((resolve) => {
        let done = false;
        const finish = (out: VirshOutput) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          resolve(out);
        };
        const timer = setTimeout(() => {
          this.pending = undefined;
          this.close();
          finish({ stdout: '', stderr: this.err, failed: true, timedOut: true });
        }, timeoutMs);
        void this.startup.then(() => {
          if (done) return;
          if (this.exited) return finish(this.deadOutput());
          const marker = `__vmsnap_${randomBytes(6).toString('hex')}__`;
          this.pending = { line, marker, resolve: finish };
          this.write(`${line}\necho --err ${marker}\necho ${marker}\n`);
        });
      });
    } finally {
      this.setBusy(false);
    }
  }

  /** Completes the pending command once both its markers have come. */
  private settle(): void {
    const p = this.pending;
    if (!p) return;
    const outEnd = `echo ${p.marker}\n${p.marker}\n`;
    const errEnd = `error: ${p.marker}\n`;
    const o = this.out.indexOf(outEnd);
    const e = this.err.indexOf(errEnd);
    if (o < 0 || e < 0) return;
    const before = this.out.slice(0, o);
    const stderr = this.err.slice(0, e);
    this.out = this.out.slice(o + outEnd.length);
    this.err = this.err.slice(e + errEnd.length);
    this.pending = undefined;
    if (this.prompt === undefined) {
      // The startup marker: what stands before its echo on that line is the prompt.
      this.prompt = before.slice(before.lastIndexOf('\n') + 1);
      p.resolve({ stdout: '', stderr: '', failed: false, timedOut: false });
      return;
    }
    // "<prompt><line>\n<output><prompt>echo --err M\n\n<prompt>"
    const echoed = `${this.prompt}${p.line}\n`;
    const start = before.startsWith(echoed) ? echoed.length : 0;
    const end = before.lastIndexOf(`${this.prompt}echo --err ${p.marker}\n`);
    const stdout = before.slice(start, end >= start ? end : undefined).replace(/\n$/, '');
    p.resolve({ stdout, stderr: stderr.replace(/\n$/, ''), failed: /^error: /m.test(stderr), timedOut: false });
  }

  private onExit(): void {
    if (this.exited) return;
    this.exited = true;
    clearTimeout(this.idleTimer);
    const p = this.pending;
    this.pending = undefined;
    p?.resolve(this.deadOutput());
  }

  private deadOutput(): VirshOutput {
    return {
      stdout: '',
      stderr: this.err || 'virsh exited',
      failed: true,
      timedOut: false,
      ...(this.spawnError ? { spawnError: this.spawnError } : {}),
    };
  }

  /** An idle shell must not keep the process alive; a busy one must. */
  private setBusy(busy: boolean): void {
    const handles = [this.proc, this.proc.stdout, this.proc.stderr, this.proc.stdin] as unknown as { ref(): void; unref(): void }[];
    for (const handle of handles) {
      if (busy) handle.ref();
      else handle.unref();
    }
  }

  close(): void {
    clearTimeout(this.idleTimer);
    this.proc.stdin.end();
    // virsh leaves on end of input; one that hangs is killed.
    setTimeout(() => {
      if (!this.exited) this.proc.kill('SIGKILL');
    }, 5000).unref();
  }
}

/** A small pool of virsh shells for one libvirt URI. */
export class VirshShells {
  private readonly idle: Shell[] = [];

  constructor(private readonly uri: string) {}

  /** Runs `virsh args...`; undefined when the arguments cannot go through a shell (the caller runs a process). */
  async run(args: string[], timeoutMs: number): Promise<VirshOutput | undefined> {
    const line = commandLine(args);
    if (line === undefined) return undefined;
    let shell = this.idle.pop();
    while (shell && !shell.alive) shell = this.idle.pop();
    shell ??= new Shell(this.uri);
    clearTimeout(shell.idleTimer);
    const out = await shell.run(line, timeoutMs);
    // A failed command (no such domain, no guest agent) leaves the shell as good as before, unless
    // its connection to libvirtd is what failed: then the next command gets a fresh shell.
    if (out.timedOut || (out.failed && LOST_CONNECTION.test(out.stderr)) || !shell.alive || this.idle.length >= KEEP_IDLE) {
      shell.close();
      return out;
    }
    const kept = shell;
    kept.idleTimer = setTimeout(() => {
      this.idle.splice(this.idle.indexOf(kept), 1);
      kept.close();
    }, IDLE_MS).unref();
    this.idle.push(kept);
    return out;
  }

  /** Closes the idle shells (those running a command close when it ends). */
  close(): void {
    for (const shell of this.idle.splice(0)) shell.close();
  }
}
