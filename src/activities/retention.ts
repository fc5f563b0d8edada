// Retention of a schedule's snapshots, with Proxmox's prune semantics, per instance (as Proxmox
// prunes per guest): keep-last N keeps the N newest; keep-daily D keeps the newest image of each of
// the last D days that have one; keep-weekly W likewise per ISO week. Rules apply in that order,
// and a day (week) that already holds an image kept by an earlier rule does not count again, so
// each rule reaches further back. An image kept by any rule is kept. Days and weeks are UTC.
//
// Only images vmsnap made for that schedule are candidates (tag vmsnap, vmsnap_request_id, and
// vmsnap_schedule = the schedule); only active ones are deleted (unfinished ones are the
// reconciler's); protected ones are kept and not counted (as Proxmox does); an image in use as a
// base (an instance of the inventory booted from it, a Glance image whose base_image_ref is it) is
// never deleted, whatever the rules say.
//
// A snapshot of several disks is a set: its root image counts as one snapshot, and deleting it
// deletes the set's data images first (hidden in Glance, found by the set's id), then the root.
// A data image is never a candidate on its own.
import type { ActivityDeps } from './deps.js';
import { deleteSnapshotImages, isSetDataImage } from './image-set.js';
import type { Image, ImageService } from '../drivers/image-service.js';
import { VmsnapError } from '../shared/errors.js';
import { VMSNAP_IMAGE_TAG } from '../shared/names.js';
import type { InputProblem } from '../shared/validation.js';
import type { InstanceRecord, Store } from '../store/store.js';

export interface RetentionPolicy {
  keepLast?: number;
  keepDaily?: number;
  keepWeekly?: number;
}

/** What decided an image's fate; `prune` is the delete of an image no rule keeps. */
export type RetentionRule = 'keep-last' | 'keep-daily' | 'keep-weekly' | 'protected' | 'in-use' | 'not-active' | 'no-rule' | 'prune';

export interface RetentionDecision {
  imageId: string;
  name: string;
  /** The instance it is a snapshot of (instance_uuid): the rules count per instance. */
  instanceId: string;
  status: string;
  /** Glance's created_at (ISO 8601, UTC). */
  createdAt: string;
  action: 'keep' | 'delete';
  rule: RetentionRule;
  reason: string;
}

export interface RetentionPlan {
  scheduleId: string;
  policy: RetentionPolicy;
  /** Every image of the schedule, newest first. */
  decisions: RetentionDecision[];
}

/** What planning reads: the schedule's images, and what could be using them as a base. */
export interface RetentionSources {
  imageService: Pick<ImageService, 'listImages' | 'getImage'>;
  store: Pick<Store, 'listInstances'>;
}

const RULES = [
  ['keepLast', 'keep-last'],
  ['keepDaily', 'keep-daily'],
  ['keepWeekly', 'keep-weekly'],
] as const;

/** Large enough for ten years of dailies; a bigger number is more likely a typo. */
const MAX_KEEP = 10_000;

export function retentionPolicyProblems(policy: unknown): InputProblem[] {
  if (typeof policy !== 'object' || policy === null || Array.isArray(policy)) {
    return [{ field: 'retention', message: 'must be an object like {"keepLast": 7, "keepDaily": 14, "keepWeekly": 8}' }];
  }
  const problems: InputProblem[] = [];
  for (const key of Object.keys(policy)) {
    if (!RULES.some(([k]) => k === key)) problems.push({ field: `retention.${key}`, message: 'unknown rule; known: keepLast, keepDaily, keepWeekly' });
  }
  for (const [key] of RULES) {
    const n = (policy as Record<string, unknown>)[key];
    if (n !== undefined && (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > MAX_KEEP)) {
      problems.push({ field: `retention.${key}`, message: `must be a whole number from 0 to ${MAX_KEEP}` });
    }
  }
  return problems;
}

/** True when the policy has a rule at all; without one retention keeps everything. */
export function hasRetentionRule(policy: RetentionPolicy | undefined): boolean {
  return !!policy && RULES.some(([key]) => (policy[key] ?? 0) > 0);
}

/** An image vmsnap made for this schedule (a set's root, not its data images): only these may ever be pruned by it. */
export function isScheduleImage(image: Image, scheduleId: string): boolean {
  return (
    Array.isArray(image.tags) &&
    image.tags.includes(VMSNAP_IMAGE_TAG) &&
    typeof image.vmsnap_request_id === 'string' &&
    image.vmsnap_schedule === scheduleId &&
    !isSetDataImage(image)
  );
}

function createdAt(image: Image): string {
  const t = Date.parse(String(image.created_at ?? ''));
  return Number.isNaN(t) ? '' : new Date(t).toISOString();
}

/** ISO 8601 week (Monday first; week 1 holds the year's first Thursday), e.g. 2026-W48. */
export function isoWeek(iso: string): string {
  const d = new Date(`${iso.slice(0, 10)}T00:00:00Z`);
  const weekday = d.getUTCDay() || 7;
  d.setUTCDate(d.getUTCDate() + 4 - weekday); // the Thursday of the same week decides the year
  const firstOfYear = Date.UTC(d.getUTCFullYear(), 0, 1);
  const week = Math.floor((d.getTime() - firstOfYear) / 86_400_000 / 7) + 1;
  return `${d.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}

interface Entry {
  decision: RetentionDecision;
  /** Set once a rule kept the image, or passed over it as an older one of a period it kept. */
  marked: boolean;
}

/**
 * The rules' verdict on the schedule's images, before the in-use check (which needs look-ups).
 * Pure: the same images and policy give the same plan.
 */
export function decideRetention(images: Image[], policy: RetentionPolicy): RetentionDecision[] {
  const decisions = images
    .map((image): RetentionDecision => ({
      imageId: image.id,
      name: image.name,
      instanceId: typeof image.instance_uuid === 'string' ? image.instance_uuid : '',
      status: image.status,
      createdAt: createdAt(image),
      action: 'keep',
      rule: 'no-rule',
      reason: 'no retention rule: every image is kept',
    }))
    // Newest first; the name (it ends in the run's time) and the id break ties of Glance's seconds.
    .sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.name.localeCompare(a.name) || b.imageId.localeCompare(a.imageId));
  const byId = new Map(images.map((i) => [i.id, i]));
  const ruled = hasRetentionRule(policy);
  const entries: Entry[] = [];
  for (const d of decisions) {
    const image = byId.get(d.imageId)!;
    if (image.status !== 'active') {
      Object.assign(d, {
        rule: 'not-active',
        reason: `${image.status}: only active images are pruned (an unfinished one is the reconciler's)`,
      });
    } else if (image.protected === true) {
      Object.assign(d, { rule: 'protected', reason: 'protected in Glance: kept, and not counted by the rules' });
    } else if (ruled) {
      entries.push({ decision: d, marked: false });
    }
  }
  if (!ruled) return decisions;

  const day = (e: Entry) => e.decision.createdAt.slice(0, 10);
  const week = (e: Entry) => isoWeek(e.decision.createdAt);
  const instances = new Map<string, Entry[]>();
  for (const e of entries) instances.set(e.decision.instanceId, [...(instances.get(e.decision.instanceId) ?? []), e]);
  for (const group of instances.values()) {
    mark(
      group,
      policy.keepLast ?? 0,
      (e) => e.decision.imageId,
      (e, n, of) => ['keep-last', `keep-last ${of}: newest #${n} of its instance`],
    );
    mark(group, policy.keepDaily ?? 0, day, (e, n, of) => ['keep-daily', `keep-daily ${of}: newest of ${day(e)} (day #${n})`]);
    mark(group, policy.keepWeekly ?? 0, week, (e, n, of) => ['keep-weekly', `keep-weekly ${of}: newest of ${week(e)} (week #${n})`]);
  }

  const rules = RULES.filter(([key]) => (policy[key] ?? 0) > 0).map(([key, flag]) => `${flag} ${policy[key]}`);
  for (const { decision } of entries) {
    if (decision.rule === 'no-rule') Object.assign(decision, { action: 'delete', rule: 'prune', reason: `kept by none of ${rules.join(', ')}` });
  }
  return decisions;
}

/** One rule, as Proxmox's prune applies it to entries sorted newest first. */
function mark(entries: Entry[], count: number, period: (e: Entry) => string, keep: (e: Entry, n: number, of: number) => [RetentionRule, string]): void {
  if (count <= 0) return;
  // Periods that already hold a kept image do not count for this rule.
  const covered = new Set(entries.filter((e) => e.decision.rule !== 'no-rule').map(period));
  const kept = new Set<string>();
  for (const e of entries) {
    if (e.marked) continue;
    const p = period(e);
    if (covered.has(p)) continue;
    if (kept.has(p)) {
      e.marked = true; // an older image of a period this rule kept: later rules pass it over too
      continue;
    }
    if (kept.size >= count) break;
    kept.add(p);
    e.marked = true;
    const [rule, reason] = keep(e, kept.size, count);
    Object.assign(e.decision, { rule, reason });
  }
}

/** Why the image must stay as a base: an instance booted from it, or an image made from it. */
async function inUseBy(sources: RetentionSources, imageId: string, instances: InstanceRecord[]): Promise<string | undefined> {
  const instance = instances.find((i) => i.baseImageRef === imageId);
  if (instance) return `in use: base image of instance ${instance.name} (${instance.id})`;
  // Glance filters on extra properties; the check below guards against a filter it ignored.
  const derived = (await sources.imageService.listImages({ base_image_ref: imageId })).find((i) => i.base_image_ref === imageId && i.id !== imageId);
  if (derived) return `in use: base image of image ${derived.id} ("${derived.name}")`;
  return undefined;
}

/** The plan for one schedule: the rules' verdict, with images in use as a base taken back. */
export async function planRetention(sources: RetentionSources, scheduleId: string, policy: RetentionPolicy): Promise<RetentionPlan> {
  const problems = retentionPolicyProblems(policy);
  if (problems.length) {
    throw new VmsnapError('InvalidInput', `invalid retention policy: ${problems.map((p) => `${p.field} ${p.message}`).join('; ')}`, {
      problems,
    });
  }
  // The filters narrow the listing; isScheduleImage is what makes an image a candidate.
  const images = (await sources.imageService.listImages({ tag: VMSNAP_IMAGE_TAG, vmsnap_schedule: scheduleId })).filter((i) => isScheduleImage(i, scheduleId));
  const decisions = decideRetention(images, policy);
  const doomed = decisions.filter((d) => d.action === 'delete');
  if (doomed.length) {
    const instances = await sources.store.listInstances();
    for (const d of doomed) {
      const use = await inUseBy(sources, d.imageId, instances);
      if (use) Object.assign(d, { action: 'keep', rule: 'in-use', reason: use });
    }
  }
  return { scheduleId, policy, decisions };
}

export function retentionActivities({ imageService, store }: Pick<ActivityDeps, 'imageService' | 'store'>) {
  return {
    async planScheduleRetention(input: { scheduleId: string; policy: RetentionPolicy }): Promise<RetentionPlan> {
      return planRetention({ imageService, store }, input.scheduleId, input.policy);
    },

    /**
     * Deletes an image the plan let go, after checking again that it may go: time passes between
     * plan and delete (and a retry may come much later), and somebody may have protected it,
     * booted from it or made an image from it meanwhile.
     */
    async deleteExpiredImage(input: {
      scheduleId: string;
      imageId: string;
    }): Promise<{ deleted: boolean; kept?: { rule: RetentionRule; reason: string }; dataImages?: string[] }> {
      const image = await imageService.getImage(input.imageId);
      if (!image) return { deleted: false }; // gone already: nothing to keep
      const kept = (rule: RetentionRule, reason: string) => ({
        deleted: false,
        kept: { rule, reason: `${reason} (found when about to delete it)` },
      });
      if (!isScheduleImage(image, input.scheduleId)) return kept('not-active', `no longer an image vmsnap made for ${input.scheduleId}`);
      if (image.status !== 'active') return kept('not-active', `${image.status}, no longer active`);
      if (image.protected === true) return kept('protected', 'protected in Glance');
      const use = await inUseBy({ imageService, store }, image.id, await store.listInstances());
      if (use) return kept('in-use', use);
      // A set goes whole: its data images, then the root.
      const dataImages = await deleteSnapshotImages(imageService, image);
      return { deleted: true, ...(dataImages.length ? { dataImages } : {}) };
    },
  };
}
