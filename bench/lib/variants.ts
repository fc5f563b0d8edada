// The variants compared: "bare", the commands an operator scripts by hand, and vmsnap (cold, and
// live once the workflow takes it) through the programmatic client against a worker process.
import type { Client } from '@temporalio/client';
import { randomUUID } from 'node:crypto';
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import type { Guest } from '../../scripts/lib/guest.js';
import { fsyncPath } from '../../src/drivers/files.js';
import { startSnapshot, type SnapshotHandle } from '../../src/client/snapshots.js';
import type { SnapshotRequest } from '../../src/shared/types.js';
import { validateSnapshotRequest } from '../../src/shared/validation.js';
import { sampleRss, type RssSample } from './proc.js';
import { historyTimeline, type History } from './timeline.js';

export interface VariantResult {
  /** The image (the root disk's, when there are several). */
  imageId: string;
  /** Every image made, root first, when the guest has more than one disk. */
  imageIds?: string[];
  /** Bytes stored in Glance. */
  imageBytes: number;
  /** Start of the first command (bare) or startSnapshot (vmsnap) to the image being in Glance. */
  wallMs: number;
  /** Duration of the upload: `curl -T` (bare); vmsnap: the PUT while hashing and the check against Glance (uploadImage's own clock). */
  uploadMs: number;
  phasesMs: Record<string, number>;
  /** vmsnap's own pause figure (libvirt calls' timestamps), next to the QEMU events. */
  reportedPauseMs?: number;
  /** Peak VmRSS of the uploading process (curl, or the vmsnap worker) while it had the image file open. */
  uploaderPeakRssKiB?: number;
  /** vmsnap: the worker's RSS samples, t in ms from startSnapshot; `open` = uploading. */
  rssSeries?: RssSample[];
  /** vmsnap: upload time as seen from /proc (first to last sample with the file open). */
  uploadFdMs?: number;
  /** bare, diagnostic only (not in its wall time): an fsync of the copy, which vmsnap does inside its pause. */
  fsyncMs?: number;
  /** curl's own average upload speed, bytes/s. */
  curlSpeedBps?: number;
  /** CPU seconds the uploading process used while uploading (curl: all of it; the worker: its upload window). */
  uploaderCpuS?: number;
  /** vmsnap: what the result says beyond the common fields (mode, consistency, guestPauseMs), as it says it. */
  resultExtra?: Record<string, unknown>;
  /** vmsnap: where its wall time went, by the history (bench/lib/timeline.ts), and each step's running time. */
  timelineMs?: Record<string, number>;
  stepsMs?: Record<string, number>;
}

export interface GlanceCtx {
  glanceUrl: string;
  /** Headers with a Keystone token, as an operator's script would send after `openstack token issue`. */
  auth: () => Promise<Record<string, string>>;
  /** Every image id created, for cleanup whatever happens. */
  created: Set<string>;
}

async function curlHeaders(ctx: GlanceCtx): Promise<string[]> {
  return Object.entries(await ctx.auth()).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
}

export async function deleteImage(ctx: GlanceCtx, id: string): Promise<void> {
  const res = await fetch(`${ctx.glanceUrl}/v2/images/${id}`, {
    method: 'DELETE',
    headers: await ctx.auth(),
    signal: AbortSignal.timeout(30_000),
  });
  await res.body?.cancel();
  if (res.ok || res.status === 404) ctx.created.delete(id);
  else throw new Error(`Glance DELETE image ${id}: HTTP ${res.status}`);
}

/** The stored image's size as Glance reports it. */
export async function glanceImageSize(ctx: GlanceCtx, id: string): Promise<number | undefined> {
  const res = await fetch(`${ctx.glanceUrl}/v2/images/${id}`, { headers: await ctx.auth(), signal: AbortSignal.timeout(30_000) });
  if (!res.ok) {
    await res.body?.cancel();
    return undefined;
  }
  const body = (await res.json()) as { size?: number | null };
  return typeof body.size === 'number' ? body.size : undefined;
}

export interface BareCtx extends GlanceCtx {
  libvirtUri: string;
  workDir: string;
  /** Each command's time limit (a stuck Glance must not hang the benchmark). */
  timeoutMs: number;
}

/**
 * The bare commands: virsh suspend, qemu-img convert -U -O qcow2 (of each disk), virsh resume,
 * then curl for each disk in turn: create the image, PATCH its formats, upload with -T. Whatever
 * fails, the guest is resumed and the copies removed.
 */
export async function runBare(ctx: BareCtx, guest: Guest, imageName: string): Promise<VariantResult> {
  // Every disk the guest writes, root first: one pause for the copies of all, then one image each.
  const disks = [{ dev: 'vda', path: guest.diskPath }, ...guest.dataDisks.map((d) => ({ dev: d.dev, path: d.path }))].map((d) => ({
    ...d,
    copy: join(ctx.workDir, `bare-${guest.name}-${d.dev}-${randomUUID()}.qcow2`),
  }));
  const phasesMs: Record<string, number> = {};
  // A step run once per disk adds up under its one name.
  const step = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    const t = performance.now();
    const out = await fn();
    phasesMs[name] = (phasesMs[name] ?? 0) + performance.now() - t;
    return out;
  };
  const limit = { timeout: ctx.timeoutMs };
  const virsh = (...args: string[]) => execa('virsh', ['-c', ctx.libvirtUri, ...args], limit);
  // The token is had before the clock starts, as a script would have it from its environment.
  const auth = await curlHeaders(ctx);
  const curl = (...args: string[]) => execa('curl', ['-sS', '--fail-with-body', ...auth, ...args], limit);
  let suspended = false;
  let fsyncMs: number | undefined;
  try {
    await step('suspend', () => virsh('suspend', guest.name));
    suspended = true;
    for (const d of disks) await step('convert', () => execa('qemu-img', ['convert', '-U', '-O', 'qcow2', d.path, d.copy], limit));
    await step('resume', () => virsh('resume', guest.name));
    suspended = false;

    // Diagnostic, outside the timed steps: what flushing the copies costs (vmsnap fsyncs inside its pause).
    const f0 = performance.now();
    for (const d of disks) await fsyncPath(d.copy);
    fsyncMs = performance.now() - f0;

    const imageIds: string[] = [];
    let imageBytes = 0;
    let peak = 0;
    let cpu: number | undefined;
    const speeds: number[] = [];
    for (const [i, d] of disks.entries()) {
      const name = i === 0 ? imageName : `${imageName}-${d.dev}`;
      const created = await step('create', () =>
        curl('-X', 'POST', '-H', 'Content-Type: application/json', '-d', JSON.stringify({ name }), `${ctx.glanceUrl}/v2/images`),
      );
      const imageId = (JSON.parse(created.stdout) as { id: string }).id;
      ctx.created.add(imageId);
      imageIds.push(imageId);
      const patch = [
        { op: 'add', path: '/disk_format', value: 'qcow2' },
        { op: 'add', path: '/container_format', value: 'bare' },
      ];
      await step('patch', () =>
        curl(
          '-X',
          'PATCH',
          '-H',
          'Content-Type: application/openstack-images-v2.1-json-patch',
          '-d',
          JSON.stringify(patch),
          `${ctx.glanceUrl}/v2/images/${imageId}`,
        ),
      );
      imageBytes += (await stat(d.copy)).size;
      const upload = await step('upload', async () => {
        const sub = execa(
          'curl',
          [
            '-sS',
            '--fail-with-body',
            ...auth,
            '-T',
            d.copy,
            '-H',
            'Content-Type: application/octet-stream',
            '-w',
            '%{speed_upload}',
            `${ctx.glanceUrl}/v2/images/${imageId}/file`,
          ],
          limit,
        );
        const sampler = sub.pid ? sampleRss(sub.pid, 50) : undefined;
        try {
          return await sub;
        } finally {
          // The last sample before curl exited holds (nearly) all the CPU it used.
          let last: number | undefined;
          for (const s of sampler?.stop() ?? []) {
            peak = Math.max(peak, s.kib);
            last = s.cpu ?? last;
          }
          if (last !== undefined) cpu = (cpu ?? 0) + last;
        }
      });
      speeds.push(Number(upload.stdout.trim()) || 0);
    }
    await step('cleanup', () => Promise.all(disks.map((d) => rm(d.copy, { force: true }))));
    const wallMs = Object.values(phasesMs).reduce((a, b) => a + b, 0);
    return {
      imageId: imageIds[0]!,
      ...(imageIds.length > 1 ? { imageIds } : {}),
      imageBytes,
      wallMs,
      uploadMs: phasesMs.upload ?? 0,
      phasesMs,
      ...(peak ? { uploaderPeakRssKiB: peak } : {}),
      ...(fsyncMs !== undefined ? { fsyncMs } : {}),
      curlSpeedBps: speeds.reduce((a, b) => a + b, 0) / speeds.length,
      ...(cpu !== undefined ? { uploaderCpuS: cpu } : {}),
    };
  } finally {
    if (suspended) await execa('virsh', ['-c', ctx.libvirtUri, 'resume', guest.name], { reject: false });
    await Promise.all(disks.map((d) => rm(d.copy, { force: true })));
  }
}

/** Whether the workflow takes `disks: 'all'` now: a snapshot of every disk of an instance (issue 28). */
export function diskSetAvailable(): { available: boolean; reason?: string } {
  const problems = validateSnapshotRequest({ instance: 'vmsnap-bench-probe', imageName: 'probe', disks: 'all' });
  if (problems.length === 0) return { available: true };
  return {
    available: false,
    reason: `validateSnapshotRequest refuses disks "all": ${problems.map((p) => `${p.field}: ${p.message}`).join('; ')}`,
  };
}

/** Whether the workflow takes `mode: 'live'` now (the client refuses what the workflow would). */
export function liveModeAvailable(): { available: boolean; reason?: string } {
  const problems = validateSnapshotRequest({ instance: 'vmsnap-bench-probe', imageName: 'probe', mode: 'live' });
  if (problems.length === 0) return { available: true };
  return {
    available: false,
    reason: `validateSnapshotRequest refuses mode "live": ${problems.map((p) => `${p.field}: ${p.message}`).join('; ')}`,
  };
}

export interface VmsnapCtx extends GlanceCtx {
  client: Client;
  taskQueue: string;
  workerPid: number;
  timeoutMs: number;
  /** Snapshots started and not yet ended, so an interrupted benchmark can cancel them. */
  running: Map<string, SnapshotHandle>;
}

class SnapshotTimeout extends Error {
  constructor(ms: number) {
    super(`the snapshot did not finish within ${ms / 1000} s: cancelled`);
  }
}

/**
 * Cancels a snapshot (vmsnap then resumes the guest and removes its image) and waits for it to
 * end; terminates it if it does not end in time (e.g. no worker left to compensate).
 */
export async function cancelAndWait(handle: SnapshotHandle, waitMs: number): Promise<void> {
  await handle.cancel().catch(() => undefined);
  const ended = await Promise.race([
    handle.result().then(
      () => true,
      () => true,
    ),
    sleep(waitMs).then(() => false),
  ]);
  if (!ended) await handle.terminate('vmsnap benchmark: cancelled snapshot did not end').catch(() => undefined);
}

/**
 * The samples of the upload: the last unbroken run of samples with the file open. The worker also
 * opens the copy briefly to fsync it after the convert; that earlier run is not the upload.
 */
export function lastOpenStretch(samples: RssSample[]): RssSample[] {
  let end = samples.length - 1;
  while (end >= 0 && !samples[end]?.open) end--;
  let start = end;
  while (start > 0 && samples[start - 1]?.open) start--;
  return end < 0 ? [] : samples.slice(start, end + 1);
}

/**
 * The upload step's own clock (uploadImage's sendAndVerifyMs: the PUT while hashing, then the
 * check against Glance's record), read from the workflow's history: what compares with `curl -T`.
 */
export function uploadStepMs(history: History): number | undefined {
  const scheduled = new Set<string>();
  let ms: number | undefined;
  for (const e of history.events ?? []) {
    const type = e.activityTaskScheduledEventAttributes?.activityType?.name;
    if (type === 'uploadImage' || type === 'uploadLiveExport') scheduled.add(String(e.eventId));
    const done = e.activityTaskCompletedEventAttributes;
    if (done && scheduled.has(String(done.scheduledEventId))) {
      const data = done.result?.payloads?.[0]?.data;
      const value = data ? (JSON.parse(Buffer.from(data).toString('utf8')) as { sendAndVerifyMs?: unknown }).sendAndVerifyMs : undefined;
      if (typeof value === 'number') ms = value;
    }
  }
  return ms;
}

/** One snapshot through the programmatic client, with the worker's RSS sampled every 50 ms. */
export async function runVmsnap(
  ctx: VmsnapCtx,
  guest: Guest,
  imageName: string,
  mode: 'cold' | 'live',
  opts: { sampleRss?: boolean; disks?: 'all' } = {},
): Promise<VariantResult> {
  const imageId = randomUUID();
  // 'live' goes in as data: the request type may not name it yet, validation decides.
  const request = { instance: guest.uuid, imageName, imageId, mode, ...(opts.disks ? { disks: opts.disks } : {}) } as SnapshotRequest;
  ctx.created.add(imageId);
  // The worker holds the snapshot file (under <snapshots dir>/<image id>/) open while it uploads; a
  // stream's reader child names the export's socket there.
  // Off for many snapshots at once: one /proc scan per snapshot every 50 ms would load the host.
  const sampler = opts.sampleRss === false ? { stop: (): RssSample[] => [] } : sampleRss(ctx.workerPid, 50, `/${imageId}/`);
  const t0 = performance.now();
  const clientStart = Date.now(); // the history's clock
  let samples: RssSample[] = [];
  try {
    const handle = await startSnapshot(ctx.client, request, ctx.taskQueue);
    ctx.running.set(handle.workflowId, handle);
    const timeout = new SnapshotTimeout(ctx.timeoutMs);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(timeout), ctx.timeoutMs);
    });
    const result = await Promise.race([handle.result(), timedOut])
      .catch(async (err: unknown) => {
        if (err === timeout) await cancelAndWait(handle, Math.min(60_000, ctx.timeoutMs / 2));
        throw err;
      })
      .finally(() => {
        clearTimeout(timer);
        ctx.running.delete(handle.workflowId);
      });
    const wallMs = performance.now() - t0;
    const clientEnd = Date.now();
    samples = sampler.stop();
    const history = await handle.fetchHistory().catch(() => undefined);
    const sendMs = history ? uploadStepMs(history) : undefined;
    const timeline = history?.events ? historyTimeline(history.events, clientStart, clientEnd) : undefined;
    // A stretch of one sample is too short to tell the upload from the fsync before it.
    const stretch = lastOpenStretch(samples);
    const open = stretch.length >= 2 ? stretch : [];
    const first = open[0];
    const last = open.at(-1);
    const phasesMs = Object.fromEntries(Object.entries(result.phaseDurationsMs).map(([k, v]) => [k, v ?? 0]));
    const known = new Set([
      'imageId',
      'imageName',
      'instanceId',
      'host',
      'diskFormat',
      'size',
      'virtualSize',
      'sha512',
      'priorPowerState',
      'phaseDurationsMs',
      'disks',
    ]);
    const resultExtra = Object.fromEntries(Object.entries(result).filter(([k]) => !known.has(k)));
    const cpuFirst = first?.cpu;
    const cpuLast = last?.cpu;
    // A snapshot of several disks: every image, root first, and the bytes of all.
    const images = result.disks ?? [];
    for (const d of images) ctx.created.add(d.imageId);
    return {
      imageId,
      ...(images.length > 1 ? { imageIds: images.map((d) => d.imageId) } : {}),
      imageBytes: images.length > 1 ? images.reduce((a, d) => a + d.size, 0) : result.size,
      wallMs,
      // The PUT and its check, as the worker timed them; the phase (which adds the PATCH and the
      // activity's dispatch) when the history does not say.
      uploadMs: sendMs ?? phasesMs.uploading ?? 0,
      phasesMs,
      reportedPauseMs: result.guestPauseMs,
      ...(open.length ? { uploaderPeakRssKiB: Math.max(...open.map((s) => s.kib)) } : {}),
      ...(samples.length ? { rssSeries: samples } : {}),
      ...(first && last && last.t > first.t ? { uploadFdMs: last.t - first.t } : {}),
      ...(cpuFirst !== undefined && cpuLast !== undefined && last !== first ? { uploaderCpuS: cpuLast - cpuFirst } : {}),
      ...(Object.keys(resultExtra).length ? { resultExtra } : {}),
      ...(timeline ? { timelineMs: timeline.byLabel, stepsMs: timeline.steps } : {}),
    };
  } finally {
    if (!samples.length) sampler.stop(); // after a failure; harmless twice
  }
}
