// What a workflow's history says happened, for tests that must show a fault hit a step (its
// attempts, cancellation) or that events came in an order: read from the real history Temporal kept.
import type { WorkflowHandle } from '@temporalio/client';

export type History = Awaited<ReturnType<WorkflowHandle['fetchHistory']>>;
type HistoryEvent = NonNullable<History['events']>[number];

/** An event's time in ms since the epoch (Temporal's clock). */
export function eventMs(event: HistoryEvent): number {
  const t = event.eventTime;
  return Number(t?.seconds ?? 0) * 1000 + Math.floor((t?.nanos ?? 0) / 1e6);
}

export interface ActivityRun {
  scheduled: HistoryEvent;
  /** The attempt that ended the activity (started events are written when an attempt closes). */
  attempt?: number;
  /** How it ended: completed, failed, timed out, canceled; undefined while it runs. */
  ended?: 'completed' | 'failed' | 'timedOut' | 'canceled';
  endedAt?: number;
  cancelRequested: boolean;
}

/** Every run of an activity type (scheduled in this history), in order, with its attempts and end. */
export function activityRuns(history: History, activityType: string): ActivityRun[] {
  const events = history.events ?? [];
  return events
    .filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === activityType)
    .map((scheduled) => {
      const id = String(scheduled.eventId);
      const of = (attrs: { scheduledEventId?: unknown } | null | undefined) => String(attrs?.scheduledEventId) === id;
      const started = events.find((e) => of(e.activityTaskStartedEventAttributes));
      const ends: [ActivityRun['ended'], HistoryEvent | undefined][] = [
        ['completed', events.find((e) => of(e.activityTaskCompletedEventAttributes))],
        ['failed', events.find((e) => of(e.activityTaskFailedEventAttributes))],
        ['timedOut', events.find((e) => of(e.activityTaskTimedOutEventAttributes))],
        ['canceled', events.find((e) => of(e.activityTaskCanceledEventAttributes))],
      ];
      const end = ends.find(([, e]) => e);
      return {
        scheduled,
        ...(started ? { attempt: Number(started.activityTaskStartedEventAttributes?.attempt) } : {}),
        ...(end ? { ended: end[0], endedAt: eventMs(end[1]!) } : {}),
        cancelRequested: events.some((e) => String(e.activityTaskCancelRequestedEventAttributes?.scheduledEventId) === id),
      };
    });
}

/** The one run of an activity type in this history (fails the test if there is not exactly one). */
export function onlyActivityRun(history: History, activityType: string): ActivityRun {
  const runs = activityRuns(history, activityType);
  if (runs.length !== 1) throw new Error(`expected one ${activityType} in the history, found ${runs.length}`);
  return runs[0]!;
}

/** Summaries (the Web UI's text) of the activities scheduled, in order: shows which compensations ran. */
export function activitySummaries(history: History): { type: string; summary: string }[] {
  return (history.events ?? [])
    .filter((e) => e.activityTaskScheduledEventAttributes)
    .map((e) => ({
      type: e.activityTaskScheduledEventAttributes?.activityType?.name ?? '',
      summary: summaryOf(e),
    }));
}

/** The names of the event types, in order (EVENT_TYPE_ prefix dropped). */
export function eventTypes(history: History): string[] {
  return (history.events ?? []).map((e) => eventTypeName(e));
}

function eventTypeName(e: HistoryEvent): string {
  // Attributes name the type: workflowExecutionStartedEventAttributes -> WorkflowExecutionStarted.
  const key = Object.keys(e).find((k) => k.endsWith('EventAttributes') && (e as Record<string, unknown>)[k]);
  return key ? key.replace(/EventAttributes$/, '').replace(/^./, (c) => c.toUpperCase()) : String(e.eventType);
}

function summaryOf(e: HistoryEvent): string {
  const text = Buffer.from(e.userMetadata?.summary?.data ?? new Uint8Array()).toString('utf8');
  try {
    return String(JSON.parse(text));
  } catch {
    return text;
  }
}
