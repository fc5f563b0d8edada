// Logs and metrics of a vmsnap worker process: JSON lines on stdout with the instance id and
// workflow id on every line that concerns a snapshot, and a Prometheus endpoint that carries
// Temporal's worker metrics and vmsnap's own (snapshots by outcome, pause, phase durations, bytes).
import { DefaultLogger, Runtime, makeTelemetryFilterString, type ActivityInterceptorsFactory, type LogEntry, type LogMetadata } from '@temporalio/worker';
import type { LogLevel } from '@temporalio/common';

function jsonLine(entry: LogEntry): void {
  const { message, level, timestampNanos, meta } = entry;
  const time = new Date(Number(timestampNanos / 1_000_000n)).toISOString();
  process.stdout.write(`${JSON.stringify({ time, level, message, ...meta }, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n`);
}

/**
 * Task queues whose workers have no workflows by design (the host's activity queues). The SDK
 * warns at every start of such a worker, as it would for one that lost its workflows by mistake;
 * for these queues that is the expected state, so it is a debug line. Every other warning stays.
 */
const activityOnlyQueues = new Set<string>();
export function expectNoWorkflows(taskQueue: string): void {
  activityOnlyQueues.add(taskQueue);
}

/**
 * What the SDK says at every start that is vmsnap's normal state: no Nexus services (vmsnap has
 * none), each worker RUNNING (vmsnap's own start-up line says so, once), and no workflows on an
 * activity-only queue. Debug lines, so a start is one line; stops and everything else stay.
 */
function expectedAtStart(level: LogLevel, message: string, meta?: LogMetadata): boolean {
  if (message.startsWith('No Nexus services registered')) return true;
  if (message === 'Worker state changed' && meta?.state === 'RUNNING') return true;
  return level === 'WARN' && message.startsWith('No workflows registered') && activityOnlyQueues.has(String(meta?.taskQueue));
}

class VmsnapLogger extends DefaultLogger {
  override log(level: LogLevel, message: string, meta?: LogMetadata): void {
    super.log(expectedAtStart(level, message, meta) ? 'DEBUG' : level, message, meta);
  }
}

/** Installs the process-wide Temporal runtime; call it once, before any connection is made. */
export function installRuntime(opts: { logLevel?: LogLevel; metricsAddress?: string }): void {
  Runtime.install({
    logger: new VmsnapLogger(opts.logLevel ?? 'INFO', jsonLine),
    telemetryOptions: {
      // The SDK core's own warnings (a slow workflow task, ...) go through the logger too, as JSON
      // lines, instead of text straight to stderr.
      logging: { forward: {}, filter: makeTelemetryFilterString({ core: 'WARN' }) },
      ...(opts.metricsAddress ? { metrics: { prometheus: { bindAddress: opts.metricsAddress } } } : {}),
    },
  });
}

/** The instance an activity works on, from its first argument (an id, or an object with one). */
function instanceOf(args: unknown[]): string | undefined {
  const first = args[0];
  if (typeof first === 'string') return first;
  if (first && typeof first === 'object' && typeof (first as { instanceId?: unknown }).instanceId === 'string') {
    return (first as { instanceId: string }).instanceId;
  }
  return undefined;
}

/** Adds the instance id to every log line of an activity (the SDK adds workflow and run id). */
export const activityLogAttributes: ActivityInterceptorsFactory = () => {
  let instanceId: string | undefined;
  return {
    inbound: {
      execute(input, next) {
        instanceId = instanceOf(input.args);
        return next(input);
      },
    },
    outbound: {
      getLogAttributes(input, next) {
        return next(instanceId ? { ...input, instanceId } : input);
      },
    },
  };
};
