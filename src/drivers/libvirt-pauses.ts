// Watching a guest's vCPU stops: `virsh qemu-monitor-event DOMAIN --loop --timestamp` filtered to
// QEMU's STOP and RESUME events. Chosen over `virsh event --event lifecycle` because the timestamp
// it prints is QEMU's own (taken when QEMU emitted the event), while `virsh event --timestamp` stamps
// the moment virsh printed it, after libvirtd relayed it; and QEMU's STOP covers every vCPU stop
// (libvirt's pause, I/O error pause, migration), not libvirt's view of them. Reading QMP events
// does not mark the domain tainted (unlike qemu-monitor-command).
//
// Neither virsh command prints anything once its event registration is in place, so a watch
// could miss a pause that follows at once. libvirt's client log says when the reply to the
// registration call arrived: that line (info level, RPC probe) is what watchPauses waits for.

import type { Readable } from 'node:stream';
import { execa, type ResultPromise } from 'execa';
import { VmsnapError } from '../shared/errors.js';
import type { PauseEvent, PauseWatch, PowerState } from './hypervisor.js';

// Reply (type=1) with status 0 to QEMU_PROC_CONNECT_DOMAIN_MONITOR_EVENT_REGISTER (proc 4) of the
// libvirt-qemu RPC program 0x20008087.
const REGISTERED_RE = /RPC_CLIENT_MSG_RX:.*\bprog=536903815\b.*\bproc=4\b.*\btype=1\b.*\bstatus=0\b/;
// Should a libvirt word that probe differently, the watch goes on after this long (registration
// takes about a millisecond on a local socket) rather than failing.
const REGISTER_FALLBACK_MS = 3_000;
// After stop() is called, a RESUME/STOP already in flight gets this long to arrive.
const SETTLE_MS = 2_000;
// "2026-11-25 07:26:26.007+0000: event STOP for domain 'x': <null>" (virsh prints UTC).
const EVENT_RE = /^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2}\.\d{3})\+0000: event (STOP|RESUME) for domain /;

/** Sums the paused intervals; an interval still open counts up to `now`. */
export function pausedMsOf(events: PauseEvent[], pausedAtStart: boolean, startedAt: number, now: number): number {
  let paused = pausedAtStart;
  let since = startedAt;
  let total = 0;
  for (const e of events) {
    if (e.type === 'STOP' && !paused) {
      paused = true;
      since = e.at;
    } else if (e.type === 'RESUME' && paused) {
      paused = false;
      total += Math.max(0, e.at - since);
    }
  }
  if (paused) total += Math.max(0, now - since);
  return total;
}

export async function startPauseWatch(
  uri: string,
  id: string,
  state: (id: string) => Promise<PowerState>,
  onEvent?: (event: PauseEvent) => void,
): Promise<PauseWatch> {
  const events: PauseEvent[] = [];
  let stderrTail = '';
  let registered = false;
  let onChange: (() => void) | undefined;

  const sub: ResultPromise = execa('virsh', ['-c', uri, 'qemu-monitor-event', id, '--loop', '--timestamp', '--regex', '--event', '^(STOP|RESUME)$'], {
    env: { LC_ALL: 'C', LIBVIRT_LOG_FILTERS: '2:rpc.netclient', LIBVIRT_LOG_OUTPUTS: '2:stderr' },
    reject: false,
    stdin: 'ignore',
    buffer: false,
  });
  const exited = sub.then((r) => r);

  eachLine(sub.stdout, (line) => {
    const m = EVENT_RE.exec(line);
    if (!m) return;
    const event: PauseEvent = { type: m[3] as 'STOP' | 'RESUME', at: Date.parse(`${m[1]}T${m[2]}Z`) };
    events.push(event);
    onChange?.();
    onEvent?.(event);
  });
  eachLine(sub.stderr, (line) => {
    if (REGISTERED_RE.test(line)) {
      registered = true;
      onChange?.();
    } else if (!/^\d{4}-\d\d-\d\d .*: (info|debug) : /.test(line) && line.trim()) {
      // Keep virsh's own error lines for the message, not the log chatter.
      stderrTail = `${stderrTail}\n${line}`.slice(-2000);
    }
  });

  const failed = (what: string) =>
    new VmsnapError('HypervisorError', `watching pauses of instance ${id}: ${what}${stderrTail ? `: ${stderrTail.trim()}` : ''}`);

  // Wait for the registration (or the fallback delay); an early exit is an error.
  let dead = false;
  void exited.then(() => {
    dead = true;
    onChange?.();
  });
  const begun = Date.now();
  while (!registered && !dead && Date.now() - begun < REGISTER_FALLBACK_MS) {
    await new Promise<void>((resolve) => {
      onChange = resolve;
      setTimeout(resolve, 50);
    });
  }
  onChange = undefined;
  if (dead) {
    await exited;
    throw failed('virsh qemu-monitor-event exited');
  }

  const startedAt = Date.now();
  let pausedAtStart: boolean;
  try {
    pausedAtStart = (await state(id)) === 'paused';
  } catch (e) {
    sub.kill('SIGTERM');
    await exited;
    throw e;
  }

  let stopped = false;
  return {
    async stop() {
      if (stopped) throw new VmsnapError('InvalidInput', 'this pause watch was already stopped');
      stopped = true;
      // Let an event already on its way arrive: the domain's state must match what the events say.
      const settleUntil = Date.now() + SETTLE_MS;
      for (;;) {
        const now = await state(id).catch(() => null);
        if (now === null || (now === 'paused') === isPaused(events, pausedAtStart) || Date.now() > settleUntil || dead) break;
        await new Promise<void>((resolve) => {
          onChange = resolve;
          setTimeout(resolve, 50);
        });
      }
      onChange = undefined;
      const wasDead = dead;
      sub.kill('SIGTERM');
      await exited;
      if (wasDead) throw failed('virsh qemu-monitor-event exited while watching');
      const end = Date.now();
      return { pausedMs: pausedMsOf(events, pausedAtStart, startedAt, end), events: [...events] };
    },
  };
}

function isPaused(events: PauseEvent[], pausedAtStart: boolean): boolean {
  const last = events.at(-1);
  return last ? last.type === 'STOP' : pausedAtStart;
}

/** Calls `onLine` with each complete line the stream gives. */
function eachLine(stream: Readable | null | undefined, onLine: (line: string) => void): void {
  let buffered = '';
  stream?.setEncoding('utf8');
  stream?.on('data', (chunk: string) => {
    buffered += chunk;
    const lines = buffered.split('\n');
    buffered = lines.pop() ?? '';
    for (const line of lines) onLine(line);
  });
}
