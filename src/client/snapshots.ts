// Programmatic client: start a snapshot, follow its progress, wait for its result, cancel it.
import { Client, Connection, WorkflowExecutionAlreadyStartedError, type WorkflowHandle } from '@temporalio/client';
import { readFile } from 'node:fs/promises';
import type { Config } from '../shared/config.js';
import { VmsnapError } from '../shared/errors.js';
import { DEFAULT_TASK_QUEUE, snapshotWorkflowId } from '../shared/names.js';
import { INSTANCE_ID } from '../shared/search-attributes.js';
import type { SnapshotProgress, SnapshotRequest, SnapshotResult } from '../shared/types.js';
import { describeProblems, validateSnapshotRequest } from '../shared/validation.js';
import type { snapshotInstance } from '../workflows/snapshot.js';

export type SnapshotHandle = WorkflowHandle<typeof snapshotInstance>;

export async function connectClient(temporal: Config['temporal']): Promise<Client> {
  const tls = temporal.tls
    ? {
        serverNameOverride: temporal.tls.serverName,
        serverRootCACertificate: temporal.tls.caPath ? await readFile(temporal.tls.caPath) : undefined,
        clientCertPair:
          temporal.tls.certPath && temporal.tls.keyPath
            ? { crt: await readFile(temporal.tls.certPath), key: await readFile(temporal.tls.keyPath) }
            : undefined,
      }
    : undefined;
  const connection = await Connection.connect({ address: temporal.address, tls });
  return new Client({ connection, namespace: temporal.namespace });
}

/**
 * Starts a snapshot. Refuses a bad request before anything starts, and a second snapshot of an
 * instance that has one running (InstanceBusy).
 */
export async function startSnapshot(client: Client, request: SnapshotRequest, taskQueue = DEFAULT_TASK_QUEUE): Promise<SnapshotHandle> {
  const problems = validateSnapshotRequest(request);
  if (problems.length) throw new VmsnapError('InvalidInput', `invalid snapshot request: ${describeProblems(problems)}`);
  const workflowId = snapshotWorkflowId(request.instance);
  try {
    return await client.workflow.start<typeof snapshotInstance>('snapshotInstance', {
      taskQueue,
      workflowId,
      args: [request],
      typedSearchAttributes: [{ key: INSTANCE_ID, value: request.instance }],
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) {
      throw new VmsnapError('InstanceBusy', `a snapshot of ${request.instance} is already running (workflow ${workflowId}): wait for it or cancel it`);
    }
    throw err;
  }
}

export function snapshotHandle(client: Client, instance: string, runId?: string): SnapshotHandle {
  return client.workflow.getHandle<typeof snapshotInstance>(snapshotWorkflowId(instance), runId);
}

export async function getProgress(handle: SnapshotHandle): Promise<SnapshotProgress> {
  return handle.query<SnapshotProgress>('progress');
}

export async function snapshotResult(handle: SnapshotHandle): Promise<SnapshotResult> {
  return handle.result();
}
