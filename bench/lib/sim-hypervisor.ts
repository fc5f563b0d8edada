// A simulated hypervisor for the fleet benchmark: the Hypervisor interface with no guests. Each
// instance is a small real qcow2 file and a state file; pause and resume write the state file
// (so a worker killed mid-snapshot leaves its guest "paused" on disk for the next worker, as
// libvirt would), and a live copy takes a set time and writes a real copy of the disk. Copies
// running at once are counted per host, so the benchmark can check the per-host limit.
import { copyFile, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmsnapError } from '../../src/shared/errors.js';
import type {
  InstanceDisk,
  Hypervisor,
  InstanceInfo,
  LiveCopyOptions,
  LiveCopyResult,
  LiveCopySupport,
  PauseWatch,
  PowerState,
  RootDisk,
  Stopped,
} from '../../src/drivers/hypervisor.js';

/** What the benchmark reads back: the most copies this host ran at once. */
export interface SimHostStats {
  host: string;
  maxConcurrentCopies: number;
  copies: number;
}

export class SimulatedHypervisor implements Hypervisor {
  private running = 0;
  private readonly stats: SimHostStats;

  /** `dir` holds <uuid>.qcow2 and <uuid>.state for each instance of this host. */
  constructor(private readonly opts: { host: string; dir: string; copyMs: number }) {
    this.stats = { host: opts.host, maxConcurrentCopies: 0, copies: 0 };
  }

  /** Makes `count` instances from one template disk (idempotent: existing ones keep their state). */
  static async provision(dir: string, host: string, count: number, templateDisk: string, uuidOf: (host: string, i: number) => string): Promise<string[]> {
    await mkdir(dir, { recursive: true });
    const ids: string[] = [];
    for (let i = 0; i < count; i++) {
      const id = uuidOf(host, i);
      ids.push(id);
      if (existsSync(join(dir, `${id}.state`))) continue;
      await copyFile(templateDisk, join(dir, `${id}.qcow2`));
      await writeFile(join(dir, `${id}.name`), `${host}-vm${String(i).padStart(3, '0')}`);
      await writeFile(join(dir, `${id}.state`), 'running');
    }
    return ids;
  }

  private path(id: string, ext: string): string {
    return join(this.opts.dir, `${id}.${ext}`);
  }

  private async state(id: string): Promise<PowerState> {
    if (!/^[0-9a-f-]{36}$/.test(id)) throw new VmsnapError('InvalidInput', `not an instance UUID: ${id}`);
    try {
      return (await readFile(this.path(id, 'state'), 'utf8')).trim() as PowerState;
    } catch {
      throw new VmsnapError('InstanceNotFound', `instance ${id} not found on simulated host ${this.opts.host}`);
    }
  }

  private async setState(id: string, state: PowerState): Promise<void> {
    await this.state(id);
    await writeFile(this.path(id, 'state'), state);
  }

  private async writeStats(): Promise<void> {
    await writeFile(join(this.opts.dir, 'stats.json'), JSON.stringify(this.stats));
  }

  async listInstances(): Promise<InstanceInfo[]> {
    const files = (await readdir(this.opts.dir)).filter((f) => f.endsWith('.state'));
    return Promise.all(files.map((f) => this.getInstance(f.slice(0, -'.state'.length))));
  }

  async getInstance(id: string): Promise<InstanceInfo> {
    const powerState = await this.state(id);
    return { id, name: (await readFile(this.path(id, 'name'), 'utf8')).trim(), powerState };
  }

  async pause(id: string): Promise<void> {
    const s = await this.state(id);
    if (s !== 'running' && s !== 'paused') throw new VmsnapError('InstanceInvalidState', `instance ${id} is ${s}`);
    await this.setState(id, 'paused');
  }

  async resume(id: string): Promise<void> {
    const s = await this.state(id);
    if (s !== 'running' && s !== 'paused') throw new VmsnapError('InstanceInvalidState', `instance ${id} is ${s}`);
    await this.setState(id, 'running');
  }

  async rootDisk(id: string): Promise<RootDisk> {
    await this.state(id);
    return { path: this.path(id, 'qcow2'), format: 'qcow2' };
  }

  async disks(id: string): Promise<InstanceDisk[]> {
    const root = await this.rootDisk(id);
    return [{ dev: 'vda', device: 'disk', type: 'file', bus: 'virtio', ...root, readonly: false, shareable: false }];
  }

  async liveCopySupport(id: string): Promise<LiveCopySupport> {
    const s = await this.state(id);
    return s === 'running' || s === 'paused' ? { supported: true } : { supported: false, reason: `instance is ${s}` };
  }

  async liveCopy(id: string, opts: LiveCopyOptions): Promise<LiveCopyResult> {
    if (opts.targetFormat !== 'qcow2') throw new VmsnapError('InvalidInput', 'the simulated hypervisor copies to qcow2 only');
    await this.state(id);
    return this.copying(async () => {
      const steps = 4;
      for (let i = 1; i <= steps; i++) {
        await sleep(this.opts.copyMs / steps, undefined, opts.signal ? { signal: opts.signal } : undefined);
        opts.onProgress?.((i / steps) * 100, i, steps);
      }
      await copyFile(this.path(id, 'qcow2'), opts.target);
      return { consistency: 'crash-consistent', method: 'push' };
    });
  }

  /** Counts a copy while `fn` runs (the cold path's qemu-img calls this too, through the bench's disk tool). */
  async copying<T>(fn: () => Promise<T>): Promise<T> {
    this.running++;
    this.stats.copies++;
    if (this.running > this.stats.maxConcurrentCopies) {
      this.stats.maxConcurrentCopies = this.running;
      await this.writeStats();
    }
    try {
      return await fn();
    } finally {
      this.running--;
    }
  }

  async thawFilesystems(): Promise<void> {}

  /** No vCPUs to stop in live mode: the watch sees none. */
  async watchPauses(): Promise<PauseWatch> {
    return { stop: () => Promise.resolve({ pausedMs: 0, events: [] }) };
  }

  async stop(): Promise<Stopped> {
    throw new VmsnapError('InvalidInput', 'the simulated hypervisor does not restore');
  }

  async start(): Promise<void> {
    throw new VmsnapError('InvalidInput', 'the simulated hypervisor does not restore');
  }

  async hasGuestAgent(): Promise<boolean> {
    return false;
  }

  async pingGuestAgent(): Promise<boolean> {
    return false;
  }

  async defineCopy(): Promise<string> {
    throw new VmsnapError('InvalidInput', 'the simulated hypervisor does not restore');
  }

  async undefine(): Promise<void> {
    throw new VmsnapError('InvalidInput', 'the simulated hypervisor does not restore');
  }
}
