// The bookkeeping of one snapshot, restore or rollback: the `progress` query, the phase with the time
// spent in each, its metrics, search attributes and the Web UI's current details. Deterministic code only.
import { defineQuery, isCancellation, log, metricMeter, setCurrentDetails, setHandler, upsertMemo, upsertSearchAttributes } from '@temporalio/workflow';
import { HOST, IMAGE_ID, INSTANCE_ID, PHASE } from '../shared/search-attributes.js';
import type { TaskState } from '../store/store.js';

export type Kind = 'snapshot' | 'restore' | 'rollback';

/** What the `progress` query answers (SnapshotProgress, RestoreProgress). */
export interface Progress<Phase extends string> {
  phase: Phase;
  instanceId?: string;
  imageId: string;
  taskState: string | null;
  /** Milliseconds spent in each phase that has ended so far. */
  phaseDurationsMs: Partial<Record<Phase, number>>;
  error?: string;
}

export const progressQuery = defineQuery<Progress<string>>('progress');

// Snapshots keep the metric names they were published with; restores and rollbacks have their own.
const METRICS = {
  snapshot: {
    outcomes: metricMeter.createCounter('vmsnap_snapshots', 'snapshots', 'Snapshots by outcome'),
    phases: metricMeter.createHistogram('vmsnap_phase_duration', 'int', 'ms', 'Time spent in each snapshot phase'),
  },
  restore: {
    outcomes: metricMeter.createCounter('vmsnap_restores', 'restores', 'Restores and rollbacks by action and outcome'),
    phases: metricMeter.createHistogram('vmsnap_restore_phase_duration', 'int', 'ms', 'Time spent in each restore phase'),
  },
};

/**
 * Sets the workflow's current details (Web UI, `temporal workflow metadata`): one markdown
 * paragraph per entry. The Web UI (2.42) renders them in an iframe sized to the body's
 * scrollHeight, which leaves out the first paragraph's collapsed top margin, so the last ~14 px
 * were cut off: a trailing blank paragraph (a no-break space) takes that cut instead of the text.
 */
function setDetails(paragraphs: string[]): void {
  setCurrentDetails([...paragraphs, '\u00a0'].join('\n\n'));
}

export class Tracker<Phase extends string> {
  readonly progress: Progress<Phase>;
  private phaseStartedAt = Date.now();
  private readonly metrics;

  /**
   * @param imageId the image made or restored ('' for a rollback).
   * @param headline the Web UI's second line: what is copied where (the instance, the image).
   * @param memo what the Web UI's list shows of the run before it has an instance id.
   */
  constructor(
    private readonly kind: Kind,
    imageId: string,
    private readonly headline: (instance: string, imageId: string) => string,
    private readonly instanceRef: string,
    memo: Record<string, unknown>,
  ) {
    this.metrics = kind === 'snapshot' ? METRICS.snapshot : METRICS.restore;
    this.progress = { phase: 'starting' as Phase, imageId, taskState: null, phaseDurationsMs: {} };
    setHandler(progressQuery, () => this.progress);
    upsertSearchAttributes([...(imageId ? [{ key: IMAGE_ID, value: imageId }] : []), { key: PHASE, value: 'starting' }]);
    upsertMemo(memo);
    this.describe();
  }

  found(instanceId: string, host: string): void {
    this.progress.instanceId = instanceId;
    upsertSearchAttributes([
      { key: INSTANCE_ID, value: instanceId },
      { key: HOST, value: host },
    ]);
    this.describe();
  }

  /** The run goes on with another image (a snapshot's first was left stuck): the progress, search attribute, memo and details follow. */
  imageReplaced(imageId: string, memo: Record<string, unknown>): void {
    this.progress.imageId = imageId;
    upsertSearchAttributes([{ key: IMAGE_ID, value: imageId }]);
    upsertMemo({ ...memo, imageId });
    this.describe();
  }

  enter(phase: Phase): void {
    const { progress } = this;
    const spent = Date.now() - this.phaseStartedAt;
    progress.phaseDurationsMs[progress.phase] = (progress.phaseDurationsMs[progress.phase] ?? 0) + spent;
    this.tagged(this.metrics.phases, { phase: progress.phase }).record(spent);
    this.phaseStartedAt = Date.now();
    progress.phase = phase;
    upsertSearchAttributes([{ key: PHASE, value: phase }]);
    this.describe();
    log.info(`${this.kind} phase ${phase}`, { imageId: progress.imageId, phase, ...(progress.error ? { error: progress.error } : {}) });
  }

  taskState(next: TaskState | null): void {
    this.progress.taskState = next;
    this.describe();
  }

  /**
   * Refused before it took the instance (unknown instance, busy, bad image): nothing was done. The
   * phase says so, so that `vmsnap status` passes over it for the latest run that did take it.
   */
  refused(result: unknown): void {
    this.progress.error = (result as Error).message;
    this.enter((isCancellation(result) ? 'cancelled' : 'refused') as Phase);
    this.tagged(this.metrics.outcomes, { outcome: 'refused' }).add(1);
  }

  completed(): void {
    this.enter('completed' as Phase);
    this.tagged(this.metrics.outcomes, { outcome: 'completed' }).add(1);
  }

  compensating(result: unknown): void {
    this.progress.error = (result as Error).message;
    this.enter('compensating' as Phase);
  }

  /** The end of a run that failed or was cancelled; `refused`: it never took the instance. */
  ended(result: unknown, refused = false): void {
    if (refused) return this.refused(result);
    const phase = this.endPhase(result);
    this.enter(phase);
    this.tagged(this.metrics.outcomes, { outcome: phase }).add(1);
  }

  private endPhase(result: unknown): Phase {
    return (isCancellation(result) ? 'cancelled' : 'failed') as Phase;
  }

  /** Snapshot metrics keep their tags; restore metrics also say which action. */
  private tagged<M extends { withTags(tags: Record<string, string>): M }>(metric: M, tags: Record<string, string>): M {
    return metric.withTags(this.kind === 'snapshot' ? tags : { ...tags, action: this.kind });
  }

  private describe(): void {
    const { progress, kind } = this;
    setDetails([
      kind === 'snapshot' ? `**${progress.phase}**` : `**${kind}: ${progress.phase}**`,
      this.headline(progress.instanceId ?? this.instanceRef, progress.imageId),
      `task state: ${progress.taskState ?? 'None'}`,
      ...(progress.error ? [`error: ${progress.error}`] : []),
    ]);
  }
}
