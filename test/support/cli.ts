// Helpers for tests that run vmsnap's operator interfaces as an operator would: the `vmsnap` CLI
// through its bin launcher, the Temporal CLI, and guests big enough for a snapshot to take a while.
import { execa, type ResultPromise } from 'execa';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { createGuest, readCounter, type Guest } from '../../scripts/lib/guest.js';
import type { Harness } from './harness.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const VMSNAP_BIN = join(ROOT, 'bin', 'vmsnap.js');
export const TEMPORAL_BIN = join(ROOT, '.tools', 'bin', 'temporal');

/** The environment that points the CLI at a harness: its Temporal, task queue, store and Glance. */
export function cliEnv(h: Harness, extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !/^(TEMPORAL_|VMSNAP_)/.test(k)) env[k] = v;
  return {
    ...env,
    TEMPORAL_ADDRESS: h.config.temporal.address,
    TEMPORAL_NAMESPACE: h.config.temporal.namespace,
    VMSNAP_TASK_QUEUE: h.config.temporal.taskQueue,
    VMSNAP_STORE_PATH: h.config.storePath,
    VMSNAP_DATA_DIR: h.config.dataDir,
    VMSNAP_GLANCE_URL: h.glanceUrl,
    ...(process.env.VMSNAP_TEMPORAL_UI_URL ? { VMSNAP_TEMPORAL_UI_URL: process.env.VMSNAP_TEMPORAL_UI_URL } : {}),
    ...extra,
  };
}

export interface CliRun {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs `vmsnap ...args` to its end; never throws for a non-zero exit. */
export async function vmsnap(h: Harness, args: string[], extraEnv: Record<string, string> = {}, timeoutMs = 120_000): Promise<CliRun> {
  const r = await execa(VMSNAP_BIN, args, {
    env: cliEnv(h, extraEnv),
    extendEnv: false,
    reject: false,
    timeout: timeoutMs,
    stdin: 'ignore',
  });
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Starts `vmsnap ...args` and returns the running process, its output collected as it comes. */
export function vmsnapRunning(h: Harness, args: string[]): { proc: ResultPromise; output: () => { stdout: string; stderr: string } } {
  const proc = execa(VMSNAP_BIN, args, {
    env: cliEnv(h),
    extendEnv: false,
    reject: false,
    timeout: 180_000,
    stdin: 'ignore',
    buffer: false,
  });
  let stdout = '';
  let stderr = '';
  proc.stdout?.on('data', (c: Buffer) => (stdout += c.toString()));
  proc.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  return { proc, output: () => ({ stdout, stderr }) };
}

/** Polls `check` until it returns a value (not undefined) or the time is up. */
export async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 15_000, intervalMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(intervalMs);
  }
}

/**
 * A test guest whose disk holds `randomMiB` of random data (away from the counter records at
 * both ends), so that a compressed copy takes seconds: long enough to watch and to cancel.
 */
export async function createBusyGuest(h: Harness, name: string, diskSizeMiB = 1024, randomMiB = 512): Promise<Guest> {
  // A slower counter than the default: the guest runs under TCG and its CPU is the tests' CPU.
  const guest = await createGuest({ name, guestsDir: h.guestsDir, assetsDir: h.assetsDir, diskSizeMiB, start: false, intervalMs: 100 });
  const dir = await mkdtemp(join(tmpdir(), 'vmsnap-random-'));
  try {
    const data = join(dir, 'random');
    // Random bytes do not compress: qemu-img's compressed copy of them is slow for real.
    const chunk = 64 * 1024 * 1024;
    await writeFile(data, '');
    for (let done = 0; done < randomMiB * 1024 * 1024; done += chunk) await writeFile(data, randomBytes(chunk), { flag: 'a' });
    const offset = Math.floor((diskSizeMiB - randomMiB) / 2);
    await execa('qemu-io', ['-f', 'qcow2', '-c', `write -q -s ${data} ${offset}M ${randomMiB}M`, guest.diskPath]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  await execa('virsh', ['-c', h.config.libvirtUri, 'start', name]);
  await eventually(`guest ${name} counting`, async () => ((await readCounter(guest.diskPath, 'qcow2')).a > 0 ? true : undefined), 120_000, 500);
  return guest;
}

/**
 * Ends snapshots a failed test left running on the harness's queue, while its workers still run:
 * cancelled first, so they undo their work; terminated if that takes too long. Without this, a
 * workflow whose workers are gone would run on forever in the shared Temporal.
 */
export async function stopLeftoverSnapshots(h: Harness): Promise<void> {
  const query = `TaskQueue = '${h.config.temporal.taskQueue}' AND ExecutionStatus = 'Running'`;
  const running: string[] = [];
  for await (const w of h.client.workflow.list({ query })) running.push(w.workflowId);
  await Promise.all(
    running.map(async (id) => {
      const handle = h.client.workflow.getHandle(id);
      await handle.cancel().catch(() => undefined);
      const ended = await Promise.race([
        handle.result().then(
          () => true,
          () => true,
        ),
        sleep(30_000).then(() => false),
      ]);
      if (!ended) await handle.terminate('left running by a test').catch(() => undefined);
    }),
  );
}

/** Deletes images from Glance, ignoring those already gone. */
export async function deleteImages(h: Harness, ids: Iterable<string>): Promise<void> {
  for (const id of ids) await h.glance.deleteImage(id).catch(() => undefined);
}
