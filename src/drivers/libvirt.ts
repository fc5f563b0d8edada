// Hypervisor on libvirt, by running `virsh -c URI ...` (no native bindings, never a shell).
// Instance ids are libvirt domain UUIDs (= Nova instance uuids) and are checked to be UUIDs before
// they reach a command line, so nothing a caller sends can become an option or a domain name.
// virsh output and messages are parsed, so it runs with LC_ALL=C.

import { execa } from 'execa';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VmsnapError } from '../shared/errors.js';
import type {
  Hypervisor,
  InstanceDisk,
  InstanceInfo,
  LiveCopyOptions,
  LiveCopyResult,
  LiveCopySupport,
  LiveExportOptions,
  LiveExportStart,
  PauseEvent,
  PauseWatch,
  PowerState,
  RootDisk,
  Stopped,
  WriteWatch,
} from './hypervisor.js';
import { LiveCopier } from './libvirt-live.js';
import { startPauseWatch } from './libvirt-pauses.js';
import { startWriteWatch } from './libvirt-writes.js';
import { attrs, domainDisks, domainOwner, firstTagAttrs, firstText } from './libvirt-xml.js';
import { VirshShells, type VirshOutput } from './virsh-shell.js';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// A stuck libvirtd (e.g. a domain job holding its lock) should fail the call, not hang it.
const VIRSH_TIMEOUT_MS = 60_000;
// listInstances looks at domains a few at a time: enough to be quick, few enough not to flood libvirtd.
const LIST_CONCURRENCY = 8;

/** `virsh domstate` text -> Nova power state. */
const STATES: Record<string, PowerState> = {
  running: 'running',
  paused: 'paused',
  'shut off': 'shutdown',
  crashed: 'crashed',
  pmsuspended: 'suspended',
};

// libvirt's wording for an unknown domain (virsh 9: "failed to get domain 'x'"; older and API
// errors: "Domain not found: no domain with matching uuid ...").
const NOT_FOUND_RE = /failed to get domain|Domain not found|no domain with matching/i;
// VIR_ERR_OPERATION_INVALID, e.g. "Requested operation is not valid: domain is not running".
const INVALID_STATE_RE = /Requested operation is not valid/i;

function checkId(id: string): string {
  if (typeof id !== 'string' || !UUID_RE.test(id)) {
    throw new VmsnapError('InvalidInput', `instance id must be a UUID, got ${JSON.stringify(String(id)).slice(0, 80)}`);
  }
  return id.toLowerCase();
}

/** Nova's `<nova:root type="image" uuid="..."/>` in the domain <metadata>, any namespace prefix. */
function novaImageRef(xml: string): string | undefined {
  const meta = /<metadata>([\s\S]*?)<\/metadata>/.exec(xml)?.[1];
  if (!meta) return undefined;
  const re = /<[\w.-]+:root(\s[^>]*)?\/?>/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(meta)) !== null) {
    const a = attrs(m[1] ?? '');
    if (a.type === 'image' && a.uuid) return a.uuid;
  }
  return undefined;
}

function parseRootDisk(xml: string, id: string): RootDisk {
  const root = domainDisks(xml).find((d) => d.device === 'disk');
  if (!root) throw new VmsnapError('DiskNotFound', `instance ${id} has no disk device`, { instance: id });
  if (!root.path) {
    const local = root.type === 'file' || root.type === 'block';
    throw new VmsnapError(
      'DiskNotFound',
      `instance ${id}: the root disk is of type '${root.type}'${local ? ' without a source' : ''}; only local file and block disks can be snapshotted`,
      { instance: id, diskType: root.type },
    );
  }
  return { path: root.path, format: root.format };
}

// ---------------------------------------------------------------------------------------------

export class LibvirtHypervisor implements Hypervisor {
  private readonly uri: string;
  private readonly live: LiveCopier;
  private readonly shells: VirshShells | undefined;

  /** shells: false runs a virsh process per command (as a virsh wrapper in PATH sees each command). */
  constructor(opts: { uri: string; shells?: boolean }) {
    if (!opts.uri) throw new VmsnapError('ConfigError', 'libvirt URI is empty (e.g. qemu:///system)');
    this.uri = opts.uri;
    this.shells = opts.shells === false ? undefined : new VirshShells(opts.uri);
    this.live = new LiveCopier(
      (args, id, timeoutMs) => this.virsh(args, id, timeoutMs),
      (id) => this.state(id),
    );
  }

  /**
   * Runs virsh; returns stdout. Failures: InstanceNotFound when libvirt does not know the domain,
   * InstanceInvalidState for an operation the domain's state does not allow, HypervisorError
   * (retryable) otherwise.
   */
  private async virsh(args: string[], id?: string, timeoutMs = VIRSH_TIMEOUT_MS): Promise<string> {
    const r = (await this.shells?.run(args, timeoutMs)) ?? (await this.virshProcess(args, timeoutMs));
    if (!r.failed) return r.stdout;
    if (r.spawnError?.code === 'ENOENT') {
      throw new VmsnapError('ConfigError', 'virsh not found in PATH: install libvirt-clients');
    }
    const said = r.stderr
      .split('\n')
      .map((l) => l.replace(/^error: /, '').trim())
      .filter(Boolean)
      .join('; ');
    const why = r.timedOut ? `no answer after ${timeoutMs / 1000} s${said ? ` (${said})` : ''}` : said || 'virsh failed without a message';
    const details = { command: ['virsh', ...args].join(' '), stderr: r.stderr };
    if (id && NOT_FOUND_RE.test(why)) {
      throw new VmsnapError('InstanceNotFound', `instance ${id} does not exist on this host (${this.uri})`, details);
    }
    if (id && INVALID_STATE_RE.test(why)) {
      throw new VmsnapError('InstanceInvalidState', `instance ${id}: virsh ${args[0]}: ${why}`, details);
    }
    throw new VmsnapError('HypervisorError', `virsh ${args[0]} failed: ${why}`, details);
  }

  /** A virsh process of its own, for arguments a shell line cannot carry. */
  private async virshProcess(args: string[], timeoutMs: number): Promise<VirshOutput> {
    const r = await execa('virsh', ['-c', this.uri, ...args], { env: { LC_ALL: 'C' }, reject: false, stdin: 'ignore', timeout: timeoutMs });
    const code = (r as { code?: string }).code;
    return {
      stdout: r.stdout,
      stderr: r.stderr || (r.failed ? (r.shortMessage ?? '') : ''),
      failed: r.failed,
      timedOut: r.timedOut,
      ...(r.exitCode === undefined && !r.signal && code ? { spawnError: Object.assign(new Error(r.shortMessage), { code }) } : {}),
    };
  }

  private async state(id: string): Promise<PowerState> {
    const text = (await this.virsh(['domstate', id], id)).trim();
    return STATES[text] ?? 'nostate';
  }

  async listInstances(): Promise<InstanceInfo[]> {
    const ids = (await this.virsh(['list', '--all', '--uuid']))
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => UUID_RE.test(l));
    const out: InstanceInfo[] = [];
    for (let i = 0; i < ids.length; i += LIST_CONCURRENCY) {
      const batch = await Promise.all(
        ids.slice(i, i + LIST_CONCURRENCY).map((id) =>
          this.getInstance(id).catch((e: unknown) => {
            // Undefined between the list and the lookup: it is simply not there any more.
            if (e instanceof VmsnapError && e.code === 'InstanceNotFound') return undefined;
            throw e;
          }),
        ),
      );
      for (const inst of batch) if (inst) out.push(inst);
    }
    return out;
  }

  async getInstance(id: string): Promise<InstanceInfo> {
    const uuid = checkId(id);
    const xml = await this.virsh(['dumpxml', uuid], uuid);
    const xmlUuid = firstText(xml, 'uuid')?.toLowerCase();
    // virsh falls back to a lookup by name; a domain *named* like this UUID is not this instance.
    if (xmlUuid !== uuid) {
      throw new VmsnapError('InstanceNotFound', `instance ${uuid} does not exist on this host (${this.uri})`);
    }
    const info: InstanceInfo = {
      id: uuid,
      name: firstText(xml, 'name') ?? '',
      powerState: await this.state(uuid),
    };
    const ref = novaImageRef(xml);
    if (ref) info.baseImageRef = ref;
    const owner = domainOwner(xml);
    if (owner) info.owner = owner;
    return info;
  }

  async pause(id: string): Promise<void> {
    await this.suspendOrResume(id, 'suspend', 'paused');
  }

  async resume(id: string): Promise<void> {
    await this.suspendOrResume(id, 'resume', 'running');
  }

  /**
   * virsh suspend or resume; a domain already in the state asked for counts as done ("domain is
   * already running" is an error to libvirt, success to us; suspending a paused one it accepts).
   */
  private async suspendOrResume(id: string, verb: 'suspend' | 'resume', wanted: PowerState): Promise<void> {
    const uuid = checkId(id);
    try {
      await this.virsh([verb, uuid], uuid);
    } catch (e) {
      if (e instanceof VmsnapError && e.code !== 'InstanceNotFound' && (await this.stateOrNull(uuid)) === wanted) return;
      throw e;
    }
  }

  async rootDisk(id: string): Promise<RootDisk> {
    const uuid = checkId(id);
    return parseRootDisk(await this.virsh(['dumpxml', uuid], uuid), uuid);
  }

  async disks(id: string): Promise<InstanceDisk[]> {
    const uuid = checkId(id);
    return domainDisks(await this.virsh(['dumpxml', uuid], uuid)).map(({ iothread: _, ...disk }) => disk);
  }

  async liveCopySupport(id: string): Promise<LiveCopySupport> {
    const uuid = checkId(id);
    await this.getInstance(uuid); // InstanceNotFound, and never a domain merely *named* like the UUID
    return this.live.support(uuid);
  }

  async liveCopy(id: string, opts: LiveCopyOptions): Promise<LiveCopyResult> {
    return this.live.copy(checkId(id), opts); // which checks the domain's UUID itself
  }

  async abortLiveCopy(id: string, dir: string): Promise<boolean> {
    return this.live.abortLeftover(checkId(id), dir);
  }

  async startLiveExport(id: string, opts: LiveExportOptions): Promise<LiveExportStart> {
    return this.live.startExport(checkId(id), opts); // which checks the domain's UUID itself
  }

  async liveExportRunning(id: string, socket: string): Promise<boolean> {
    return this.live.exportRunning(checkId(id), socket);
  }

  async thawFilesystems(id: string): Promise<void> {
    const uuid = checkId(id);
    try {
      await this.virsh(['domfsthaw', uuid], uuid);
    } catch (e) {
      if (e instanceof VmsnapError && (e.code === 'InstanceNotFound' || /not configured|not running|not connected|not responding/i.test(e.message))) return;
      throw e;
    }
  }

  async watchWrites(id: string, device: string): Promise<WriteWatch> {
    return startWriteWatch(this.uri, checkId(id), device);
  }

  async watchPauses(id: string, onEvent?: (event: PauseEvent) => void): Promise<PauseWatch> {
    const uuid = checkId(id);
    await this.getInstance(uuid);
    return startPauseWatch(this.uri, uuid, (i) => this.state(i), onEvent);
  }

  async stop(id: string, timeoutMs: number, signal?: AbortSignal): Promise<Stopped> {
    const uuid = checkId(id);
    let runningUntil = Date.now();
    if ((await this.state(uuid)) === 'shutdown') return { stoppedBy: 'none', runningUntil, shutdownWaitMs: 0 };
    let shutdownWaitMs = 0;
    if (timeoutMs > 0) {
      // The guest may ignore the request (no ACPI handling) or be slow: that is what destroy is for.
      const asked = Date.now();
      await this.virsh(['shutdown', uuid, '--mode', 'acpi'], uuid).catch(() => undefined);
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        const lookedAt = Date.now();
        if ((await this.state(uuid)) === 'shutdown') return { stoppedBy: 'shutdown', runningUntil, shutdownWaitMs: Date.now() - asked };
        runningUntil = lookedAt;
        // A step whose restore is gone (terminated) must not destroy the guest after the fact.
        signal?.throwIfAborted();
        await new Promise((r) => setTimeout(r, 100));
      }
      shutdownWaitMs = Date.now() - asked;
    }
    signal?.throwIfAborted();
    runningUntil = Date.now();
    try {
      await this.virsh(['destroy', uuid], uuid);
    } catch (e) {
      // It went off by itself between the last look and destroy.
      if (e instanceof VmsnapError && e.code === 'InstanceInvalidState' && (await this.stateOrNull(uuid)) === 'shutdown') {
        return { stoppedBy: 'shutdown', runningUntil, shutdownWaitMs };
      }
      throw e;
    }
    return { stoppedBy: 'destroy', runningUntil, shutdownWaitMs };
  }

  async start(id: string, opts: { paused?: boolean } = {}): Promise<void> {
    const uuid = checkId(id);
    try {
      await this.virsh(['start', uuid, ...(opts.paused ? ['--paused'] : [])], uuid);
    } catch (e) {
      // "domain is already active" is an error to libvirt, success to us.
      if (e instanceof VmsnapError && e.code !== 'InstanceNotFound' && ['running', 'paused'].includes((await this.stateOrNull(uuid)) ?? '')) return;
      throw e;
    }
  }

  async hasGuestAgent(id: string): Promise<boolean> {
    const uuid = checkId(id);
    return /name=['"]org\.qemu\.guest_agent\.0['"]/.test(await this.virsh(['dumpxml', uuid], uuid));
  }

  async pingGuestAgent(id: string): Promise<boolean> {
    const uuid = checkId(id);
    return this.virsh(['domtime', uuid], uuid, 10_000).then(
      () => true,
      () => false,
    );
  }

  async defineCopy(id: string, opts: { name: string; diskPath: string; dataDisks?: Record<string, string> }): Promise<string> {
    const uuid = checkId(id);
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(opts.name))
      throw new VmsnapError('InvalidInput', `new instance name ${JSON.stringify(opts.name)}: use letters, digits, ".", "_", "-" (at most 64)`);
    const taken = await this.virsh(['domuuid', opts.name]).then(
      () => true,
      () => false,
    );
    if (taken) throw new VmsnapError('InvalidInput', `an instance named ${opts.name} exists already on this host: choose another name`);
    const disk = await this.rootDisk(uuid);
    const esc = (v: string) => v.replace(/&/g, '&amp;').replace(/'/g, '&apos;').replace(/</g, '&lt;');
    const dataDisks = opts.dataDisks ?? {};
    let xml = (await this.virsh(['dumpxml', '--inactive', uuid], uuid))
      .replace(/<name>[^<]*<\/name>/, `<name>${esc(opts.name)}</name>`)
      // libvirt makes a new UUID and new MACs for what is left out.
      .replace(/\s*<uuid>[^<]*<\/uuid>/, '')
      .replace(/\s*<mac address=['"][^'"]*['"]\s*\/>/g, '')
      .replace(/(<disk\b[^>]*>[\s\S]*?<source\s+(?:file|dev)=)(['"])([^'"]*)\2/, (m, head: string, q: string, path: string) =>
        path === disk.path || path === esc(disk.path) ? `${head}${q}${esc(opts.diskPath)}${q}` : m,
      )
      // Console files and logs of the original stay its own.
      .replace(/(<(?:source path|log file)=)(['"])([^'"]*)\2/g, (_m, head: string, q: string, path: string) => `${head}${q}${path}.${esc(opts.name)}${q}`);
    // A set's data disks, each on its new file: found by the target device their <disk> names.
    xml = xml.replace(/<disk\b[^>]*>[\s\S]*?<\/disk>/g, (block) => {
      const dev = firstTagAttrs(block, 'target')?.dev;
      const path = dev === undefined ? undefined : dataDisks[dev];
      if (path === undefined) return block;
      return block.replace(/(<source\s+file=)(['"])([^'"]*)\2/, (_m, head: string, q: string) => `${head}${q}${esc(path)}${q}`);
    });
    for (const path of [opts.diskPath, ...Object.values(dataDisks)]) {
      if (!xml.includes(esc(path))) throw new VmsnapError('DiskNotFound', `instance ${uuid}: could not point a copy of its definition at ${path}`);
    }
    const dir = await mkdtemp(join(tmpdir(), 'vmsnap-define-'));
    try {
      const file = join(dir, 'domain.xml');
      await writeFile(file, xml, { mode: 0o600 });
      await this.virsh(['define', file]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    return (await this.virsh(['domuuid', opts.name])).trim().toLowerCase();
  }

  async undefine(id: string): Promise<void> {
    const uuid = checkId(id);
    try {
      if ((await this.state(uuid)) !== 'shutdown') await this.virsh(['destroy', uuid], uuid).catch(() => undefined);
      await this.virsh(['undefine', uuid], uuid);
    } catch (e) {
      if (e instanceof VmsnapError && e.code === 'InstanceNotFound') return;
      throw e;
    }
  }

  /** State for deciding how to read a failure; null when it cannot be read either. */
  private async stateOrNull(id: string): Promise<PowerState | null> {
    return this.state(id).catch(() => null);
  }
}
