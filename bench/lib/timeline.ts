// Where a snapshot's wall time goes, read from its workflow history: each millisecond from the
// client's start call to its result is given to one thing (the first that applies): a step
// running, a local activity, the rest of a workflow task, a workflow task waiting for a worker, the
// wait for the host slot, a step waiting for a worker, the slot holder's end; else "between".
import type { WorkflowHandle } from '@temporalio/client';

export type History = Awaited<ReturnType<WorkflowHandle['fetchHistory']>>;
type Event = NonNullable<History['events']>[number];

/** The labels, in the order they win and are shown. */
export const TIMELINE_LABELS = [
  'client → workflow started',
  'steps running (activities)',
  'local activities',
  'workflow tasks (code, commands)',
  'workflow task waiting for a worker',
  'waiting for the host slot (holder start → signal)',
  'step waiting for a worker',
  'slot holder ending (cancel → cancelled)',
  'between',
  'workflow closed → client result',
] as const;
export type TimelineLabel = (typeof TIMELINE_LABELS)[number];

type Span = { from: number; to: number; label: TimelineLabel; name?: string };

const ms = (t: Event['eventTime']) => Number(t?.seconds ?? 0) * 1000 + (t?.nanos ?? 0) / 1e6;
/** The slot holder runs through the whole snapshot: it is not a step. */
const HOLDER = 'holdSnapshotSlot';

/** Milliseconds per label; `steps` gives the running time per activity type as well. */
export function historyTimeline(
  events: Event[],
  clientStartMs: number,
  clientEndMs: number,
): { byLabel: Record<string, number>; steps: Record<string, number> } {
  const spans: Span[] = [];
  const scheduled = new Map<string, { at: number; name: string }>();
  const started = new Map<string, number>();
  let wftScheduled: number | undefined;
  let wftStarted: number | undefined;
  let lastLocalEnd: number | undefined;
  let holderScheduled: number | undefined;
  let holderCancel: number | undefined;
  const first = ms(events[0]?.eventTime);
  let closed = ms(events.at(-1)?.eventTime);
  for (const e of events) {
    const at = ms(e.eventTime);
    const id = String(e.eventId);
    if (e.workflowTaskScheduledEventAttributes) wftScheduled = at;
    if (e.workflowTaskStartedEventAttributes) {
      if (wftScheduled !== undefined) spans.push({ from: wftScheduled, to: at, label: 'workflow task waiting for a worker' });
      wftStarted = lastLocalEnd = at;
    }
    if ((e.workflowTaskCompletedEventAttributes || e.workflowTaskFailedEventAttributes || e.workflowTaskTimedOutEventAttributes) && wftStarted !== undefined) {
      spans.push({ from: wftStarted, to: at, label: 'workflow tasks (code, commands)' });
      wftStarted = undefined;
    }
    const marker = e.markerRecordedEventAttributes;
    if (marker?.markerName === 'core_local_activity') {
      // The marker says when the local activity completed; it ran after the previous one (or the
      // workflow task's start): local activities here run one after another within a task.
      const data = marker.details?.data?.payloads?.[0]?.data;
      const info = data
        ? (JSON.parse(Buffer.from(data).toString('utf8')) as { activity_type?: string; complete_time?: { seconds: number; nanos: number } })
        : {};
      const end = info.complete_time ? info.complete_time.seconds * 1000 + info.complete_time.nanos / 1e6 : undefined;
      if (end !== undefined && lastLocalEnd !== undefined && end > lastLocalEnd) {
        spans.push({ from: lastLocalEnd, to: end, label: 'local activities', name: info.activity_type });
        lastLocalEnd = end;
      }
    }
    const sched = e.activityTaskScheduledEventAttributes;
    if (sched) {
      const name = sched.activityType?.name ?? '?';
      scheduled.set(id, { at, name });
      if (name === HOLDER) holderScheduled = at;
    }
    const start = e.activityTaskStartedEventAttributes;
    if (start) {
      const s = scheduled.get(String(start.scheduledEventId));
      if (s && s.name !== HOLDER) spans.push({ from: s.at, to: at, label: 'step waiting for a worker' });
      started.set(String(start.scheduledEventId), at);
    }
    if (e.workflowExecutionSignaledEventAttributes && holderScheduled !== undefined) {
      spans.push({ from: holderScheduled, to: at, label: 'waiting for the host slot (holder start → signal)' });
      holderScheduled = undefined;
    }
    const cancelRequested = e.activityTaskCancelRequestedEventAttributes;
    if (cancelRequested && scheduled.get(String(cancelRequested.scheduledEventId))?.name === HOLDER) holderCancel = at;
    const done =
      e.activityTaskCompletedEventAttributes ??
      e.activityTaskFailedEventAttributes ??
      e.activityTaskCanceledEventAttributes ??
      e.activityTaskTimedOutEventAttributes;
    if (done) {
      const key = String(done.scheduledEventId);
      const s = scheduled.get(key);
      const from = started.get(key);
      if (s?.name === HOLDER) {
        if (holderCancel !== undefined) spans.push({ from: holderCancel, to: at, label: 'slot holder ending (cancel → cancelled)' });
      } else if (s && from !== undefined) spans.push({ from, to: at, label: 'steps running (activities)', name: s.name });
    }
    if (e.workflowExecutionCompletedEventAttributes || e.workflowExecutionFailedEventAttributes || e.workflowExecutionCanceledEventAttributes) closed = at;
  }
  spans.push({ from: clientStartMs, to: first, label: 'client → workflow started' });
  spans.push({ from: closed, to: Math.max(closed, clientEndMs), label: 'workflow closed → client result' });

  // Each millisecond to the first label (in TIMELINE_LABELS order) whose span covers it.
  const rank = (l: TimelineLabel) => TIMELINE_LABELS.indexOf(l);
  spans.sort((a, b) => rank(a.label) - rank(b.label));
  const byLabel: Record<string, number> = Object.fromEntries(TIMELINE_LABELS.map((l) => [l, 0]));
  const steps: Record<string, number> = {};
  const from = Math.floor(Math.min(clientStartMs, first));
  const to = Math.ceil(Math.max(clientEndMs, closed));
  for (let t = from; t < to; t++) {
    const span = spans.find((s) => s.from <= t && t < s.to);
    const label = span?.label ?? 'between';
    byLabel[label]! += 1;
    if (span?.name) {
      const key = `${label === 'local activities' ? 'local' : 'step'} ${span.name}`;
      steps[key] = (steps[key] ?? 0) + 1;
    }
  }
  return { byLabel, steps };
}
