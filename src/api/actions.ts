// POST /servers/{id}/action: createImage, createBackup (vmsnap's snapshot) and rebuild (vmsnap's
// restore in place), with Nova's body schemas, policy and state checks, in Nova's order: the body
// first (400), then the server (404), the policy (403) and its state (409). Each starts its
// workflow through the programmatic client and answers only once the run has taken the task state
// (202), or with what refused it. The caller's token never goes into a workflow's input.
import { randomUUID } from 'node:crypto';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { acceptRestore, acceptSnapshot } from '../client/acceptance.js';
import type { SnapshotRequest } from '../shared/types.js';
import { UUID_PATTERN, describeProblems, validateSnapshotRequest } from '../shared/validation.js';
import type { InstanceRecord } from '../store/store.js';
import type { ApiDeps } from './deps.js';
import { badRequest, conflict } from './errors.js';
import { checkImageVisible, imageUrl } from './images.js';
import { authorize, type Rule } from './policy.js';
import { baseUrlOf } from './request.js';
import { findServer } from './servers.js';
import { serverView, vmStateOf } from './server-view.js';

// Nova's parameter types (nova/api/validation/parameter_types.py), as far as these actions use them.
const name = { type: 'string', format: 'name', minLength: 1, maxLength: 255 };
const metadata = {
  type: 'object',
  patternProperties: { '^[a-zA-Z0-9-_:. ]{1,255}$': { type: 'string', maxLength: 255 } },
  additionalProperties: false,
};
const nonNegativeInteger = { type: ['integer', 'string'], pattern: '^[0-9]*$', minimum: 0, minLength: 1 };
const booleanWords = [
  'True',
  'TRUE',
  'true',
  '1',
  'ON',
  'On',
  'on',
  'YES',
  'Yes',
  'yes',
  'False',
  'FALSE',
  'false',
  '0',
  'OFF',
  'Off',
  'off',
  'NO',
  'No',
  'no',
];

const SCHEMAS = {
  createImage: { type: 'object', properties: { name, metadata }, required: ['name'], additionalProperties: false },
  createBackup: {
    type: 'object',
    properties: { name, backup_type: { type: 'string' }, rotation: nonNegativeInteger, metadata },
    required: ['name', 'backup_type', 'rotation'],
    additionalProperties: false,
  },
  rebuild: {
    type: 'object',
    properties: {
      name,
      imageRef: { type: 'string', format: 'uuid' },
      adminPass: { type: 'string' },
      metadata,
      preserve_ephemeral: { type: ['boolean', 'string'], enum: [true, false, ...booleanWords] },
      'OS-DCF:diskConfig': { type: 'string', enum: ['AUTO', 'MANUAL'] },
      accessIPv4: { type: 'string' },
      accessIPv6: { type: 'string' },
      personality: { type: 'array' },
      // 2.19's description: Horizon's Rebuild Instance form sends it when one is typed.
      description: { type: ['string', 'null'], maxLength: 255 },
    },
    required: ['imageRef'],
    additionalProperties: false,
  },
} as const;
type ActionName = keyof typeof SCHEMAS;

const ajv = new Ajv({ allErrors: false, verbose: true, strict: false });
// Nova's "name": printable, not starting or ending with whitespace.
ajv.addFormat('name', (s: string) => /^\S(?:[\s\S]*\S)?$/u.test(s) && !/\p{Cc}/u.test(s));
ajv.addFormat('uuid', UUID_PATTERN);
const validators = Object.fromEntries(Object.entries(SCHEMAS).map(([k, schema]) => [k, ajv.compile(schema)])) as Record<ActionName, ValidateFunction>;

/** Python's repr as Nova's messages show values: strings in single quotes, the rest as JSON. */
function repr(value: unknown): string {
  return typeof value === 'string' ? `'${value}'` : JSON.stringify(value);
}

/** A schema error in the words of Nova's validator (jsonschema's messages, with the field and value). */
function novaMessage(action: string, body: unknown, error: ErrorObject): string {
  const path = error.instancePath.split('/').filter(Boolean);
  const field = path.at(-1) ?? action;
  const value = path.length ? error.data : body;
  const p = error.params as Record<string, unknown>;
  if (error.keyword === 'format' && p.format === 'name') {
    return "An invalid 'name' value was provided. The name must be: printable characters. Can not start or end with whitespace.";
  }
  const messages: Record<string, () => string> = {
    required: () => `'${String(p.missingProperty)}' is a required property`,
    additionalProperties: () => `Additional properties are not allowed ('${String(p.additionalProperty)}' was unexpected)`,
    maxLength: () => `${repr(value)} is too long`,
    minLength: () => `${repr(value)} is too short`,
    type: () =>
      `${repr(value)} is not of type ${[p.type]
        .flat()
        .map((t) => `'${String(t)}'`)
        .join(', ')}`,
    format: () => `${repr(value)} is not a '${String(p.format)}'`,
    pattern: () => `${repr(value)} does not match '${String(p.pattern)}'`,
    enum: () => `${repr(value)} is not one of ${JSON.stringify(p.allowedValues)}`,
    minimum: () => `${repr(value)} is less than the minimum of ${String(p.limit)}`,
  };
  return `Invalid input for field/attribute ${field}. Value: ${repr(value)}. ${messages[error.keyword]?.() ?? error.message ?? 'is not valid'}`;
}

/** The action and its body, checked against its schema (Nova's 400s). */
function actionOf(body: unknown): { action: ActionName; args: Record<string, unknown> } {
  if (typeof body !== 'object' || body === null || Array.isArray(body) || Object.keys(body).length === 0) throw badRequest('Malformed request body');
  const action = Object.keys(body)[0]!;
  if (!Object.hasOwn(SCHEMAS, action)) throw badRequest(`There is no such action: ${action}`);
  const args = (body as Record<string, unknown>)[action];
  const validate = validators[action as ActionName];
  if (!validate(args)) throw badRequest(novaMessage(action, args, validate.errors![0]!));
  return { action: action as ActionName, args: args as Record<string, unknown> };
}

/** Nova's check_instance_state: the vm states an action allows, and no task in progress. */
function checkState(instance: InstanceRecord, action: ActionName, vmStates: string[]): void {
  if (instance.taskState !== null) throw conflict(`Cannot '${action}' instance ${instance.id} while it is in task_state ${instance.taskState}`);
  const vmState = vmStateOf(instance);
  if (!vmStates.includes(vmState)) throw conflict(`Cannot '${action}' instance ${instance.id} while it is in vm_state ${vmState}`);
}

const RULE: Record<ActionName, Rule> = {
  createImage: 'os_compute_api:servers:create_image',
  createBackup: 'os_compute_api:os-create-backup',
  rebuild: 'os_compute_api:servers:rebuild',
};

export function actionRoutes(app: FastifyInstance, deps: ApiDeps): void {
  app.post<{ Params: { id: string } }>('/servers/:id/action', async (req, reply) => {
    const { action, args } = actionOf(req.body);
    const instance = await findServer(deps, req.caller, req.params.id);
    authorize(req.caller, RULE[action], instance);
    if (action === 'rebuild') return rebuild(deps, req, reply, instance, args);
    return snapshot(deps, req, reply, instance, action, args);
  });
}

async function snapshot(deps: ApiDeps, req: FastifyRequest, reply: FastifyReply, instance: InstanceRecord, action: ActionName, args: Record<string, unknown>) {
  const backup = action === 'createBackup' ? { type: String(args.backup_type), rotation: Number(args.rotation) } : undefined;
  checkState(instance, action, backup ? ['active', 'stopped'] : ['active', 'stopped', 'paused', 'suspended']);
  const request: SnapshotRequest = {
    instance: instance.id,
    imageName: String(args.name),
    metadata: (args.metadata as Record<string, string> | undefined) ?? {},
    imageId: randomUUID(),
    // Owned as Nova owns it: the caller's project and user. The workers act with their own identity.
    userId: req.caller.userId,
    projectId: req.caller.projectId!,
    ...(backup ? { backup } : {}),
  };
  const problems = validateSnapshotRequest(request);
  if (problems.length) throw badRequest(`Invalid input: ${describeProblems(problems)}`);
  const { accepted } = await acceptSnapshot(deps.client, request, {
    instanceId: instance.id,
    taskQueue: deps.taskQueue,
    acceptTimeoutMs: deps.acceptTimeoutMs,
  });
  reply.code(202);
  // From 2.45 the image id is in the body; before it, in Location (a backup with rotation 0 has none).
  if (req.apiVersion.atLeast('2.45')) return { image_id: accepted.imageId };
  if (!backup) reply.header('location', imageUrl(deps, accepted.imageId));
  else if (backup.rotation > 0) reply.header('location', `${baseUrlOf(req, deps)}/v2.1/images/${accepted.imageId}`);
  return reply.send();
}

async function rebuild(deps: ApiDeps, req: FastifyRequest, reply: FastifyReply, instance: InstanceRecord, args: Record<string, unknown>) {
  const cannot = unsupportedRebuildArgs(instance, args);
  if (cannot.length) {
    throw badRequest(
      `vmsnap rebuilds the root disk from the image only and cannot change ${cannot.join(', ')} of a server: leave ${cannot.length > 1 ? 'them' : 'it'} out`,
    );
  }
  checkState(instance, 'rebuild', ['active', 'stopped']);
  const imageId = String(args.imageRef).toLowerCase();
  await checkImageVisible(deps, req.token, imageId);
  // Nova rebuilds from any image the caller can see, not only snapshots of this server.
  await acceptRestore(
    deps.client,
    { instance: instance.id, imageId, allowOtherImage: true },
    { instanceId: instance.id, taskQueue: deps.taskQueue, acceptTimeoutMs: deps.acceptTimeoutMs },
  );
  const now = (await deps.store.getInstance(instance.id)) ?? instance;
  reply.code(202);
  return { server: serverView(now, { caller: req.caller, version: req.apiVersion, baseUrl: baseUrlOf(req, deps) }) };
}

/** What Nova's rebuild can change and vmsnap's restore cannot: the guest's name, password, metadata, files, addresses, description. */
function unsupportedRebuildArgs(instance: InstanceRecord, args: Record<string, unknown>): string[] {
  const cannot: string[] = [];
  if (args.name !== undefined && args.name !== instance.name) cannot.push('the name');
  if (args.adminPass !== undefined) cannot.push('the admin password (adminPass)');
  if (args.metadata !== undefined && Object.keys(args.metadata as object).length > 0) cannot.push('the metadata');
  if (args.personality !== undefined && (args.personality as unknown[]).length > 0) cannot.push('files (personality)');
  if (args.accessIPv4 !== undefined || args.accessIPv6 !== undefined) cannot.push('the access addresses');
  if (typeof args.description === 'string' && args.description !== '') cannot.push('the description');
  if (args.preserve_ephemeral !== undefined && ![false, ...booleanWords.slice(10)].includes(args.preserve_ephemeral as string)) {
    cannot.push('ephemeral disks (preserve_ephemeral)');
  }
  return cannot;
}
