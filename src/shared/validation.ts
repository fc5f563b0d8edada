// Validation of a snapshot request. Pure code: it runs inside the workflow (deterministic) and in
// clients before they start one, so a bad request is refused before anything changes.

export const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** libvirt domain names we accept: no path separators, no shell metacharacters. */
const INSTANCE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const METADATA_KEY_PATTERN = /^[A-Za-z0-9_.:-]{1,255}$/;
// Glance refuses more than image_property_quota (128 by default) properties per image, and
// vmsnap adds its own and the base image's: a user's metadata gets what leaves room for those.
const MAX_METADATA_ENTRIES = 96;
const MAX_METADATA_VALUE = 255;
/**
 * Characters Glance refuses with a 400 after the snapshot has started: 4-byte UTF-8 (its
 * no_4byte_params check, for MySQL's 3-byte utf8), and lone surrogates, which are not Unicode
 * at all. Checked here so such a request fails before anything changes.
 */
const GLANCE_REFUSED_CHARACTERS = /[\u{10000}-\u{10FFFF}]|\p{Cs}/u;
const REFUSED_MESSAGE = 'must not contain characters outside the Basic Multilingual Plane (emoji and other 4-byte UTF-8): Glance refuses them';

/** Keys vmsnap sets itself or Glance owns: a user's metadata may not set them. */
export const RESERVED_PROPERTY_KEYS = new Set([
  'id',
  'name',
  'status',
  'visibility',
  'protected',
  'os_hidden',
  'owner',
  'owner_id',
  'user_id',
  'size',
  'virtual_size',
  'checksum',
  'os_hash_algo',
  'os_hash_value',
  'disk_format',
  'container_format',
  'min_disk',
  'min_ram',
  'created_at',
  'updated_at',
  'tags',
  'locations',
  'direct_url',
  'self',
  'file',
  'schema',
  'stores',
  'image_type',
  'backup_type',
  'instance_uuid',
  'base_image_ref',
  'image_location',
  'image_state',
]);

/** Prefixes never inherited nor accepted (Nova's list, plus Glance's own namespace). */
export const NEVER_INHERITED_PREFIXES = ['cinder_encryption_key_', 'img_signature', 'os_glance', 'vmsnap_'];
export const NEVER_INHERITED_KEYS = new Set(['cache_in_nova', 'bittorrent']);

export function isNeverInherited(key: string): boolean {
  return NEVER_INHERITED_KEYS.has(key) || NEVER_INHERITED_PREFIXES.some((p) => key.startsWith(p));
}

/** A problem with one field of the request. */
export interface InputProblem {
  field: string;
  message: string;
}

/** Returns the problems with a request; an empty list means it is valid. */
const DISK_NAME = /^[a-z][a-z0-9]{0,31}$/;

/** SnapshotRequest.disks: "root", "all" or a list of target device names (vda, vdb ...). */
function diskSelectionProblems(disks: unknown): InputProblem[] {
  if (disks === 'root' || disks === 'all') return [];
  const message = 'must be "root", "all" or a list of the instance\'s target devices like ["vda", "vdb"] (virsh domblklist shows them)';
  if (!Array.isArray(disks) || disks.length === 0) return [{ field: 'disks', message }];
  const bad = disks.filter((d) => typeof d !== 'string' || !DISK_NAME.test(d));
  if (bad.length) return [{ field: 'disks', message: `${JSON.stringify(bad[0])} is not a device name: ${message}` }];
  if (new Set(disks).size !== disks.length) return [{ field: 'disks', message: 'names a disk twice' }];
  return [];
}

export function validateSnapshotRequest(input: unknown): InputProblem[] {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    return [{ field: 'input', message: 'must be a JSON object like {"instance": "<uuid or name>", "imageName": "..."}' }];
  }
  const r = input as Record<string, unknown>;
  const problems: InputProblem[] = [];
  const known = new Set([
    'instance',
    'imageName',
    'metadata',
    'mode',
    'quiesce',
    'diskFormat',
    'compress',
    'imageId',
    'userId',
    'projectId',
    'scheduleId',
    'backup',
    'disks',
  ]);
  for (const key of Object.keys(r)) {
    if (!known.has(key)) problems.push({ field: key, message: `unknown field; known fields: ${[...known].join(', ')}` });
  }

  if (typeof r.instance !== 'string' || r.instance === '') {
    problems.push({ field: 'instance', message: 'required: the instance UUID or name' });
  } else if (!UUID_PATTERN.test(r.instance) && !INSTANCE_NAME_PATTERN.test(r.instance)) {
    problems.push({
      field: 'instance',
      message: 'must be a UUID or a name of letters, digits, "_", "." and "-" (at most 128 characters)',
    });
  }

  if (typeof r.imageName !== 'string' || r.imageName.trim() === '') {
    problems.push({ field: 'imageName', message: 'required: a name for the new image' });
  } else if ([...r.imageName].length > 255) {
    problems.push({ field: 'imageName', message: "must be at most 255 characters (Glance's limit)" });
  } else if (/\p{Cc}/u.test(r.imageName)) {
    problems.push({ field: 'imageName', message: 'must not contain control characters' });
  } else if (GLANCE_REFUSED_CHARACTERS.test(r.imageName)) {
    problems.push({ field: 'imageName', message: REFUSED_MESSAGE });
  }

  if (r.metadata !== undefined) problems.push(...metadataProblems(r.metadata));
  if (r.mode !== undefined && r.mode !== 'cold' && r.mode !== 'live' && r.mode !== 'auto') {
    problems.push({ field: 'mode', message: 'must be "auto", "cold" or "live"' });
  }
  if (r.quiesce !== undefined && r.quiesce !== 'never' && r.quiesce !== 'try' && r.quiesce !== 'require') {
    problems.push({ field: 'quiesce', message: 'must be "never", "try" or "require"' });
  }
  if (r.diskFormat !== undefined && r.diskFormat !== 'qcow2' && r.diskFormat !== 'raw') {
    problems.push({ field: 'diskFormat', message: 'must be "qcow2" or "raw"' });
  }
  if (r.compress !== undefined && typeof r.compress !== 'boolean') problems.push({ field: 'compress', message: 'must be true or false' });
  if (r.disks !== undefined) problems.push(...diskSelectionProblems(r.disks));
  if (r.compress === true && r.diskFormat === 'raw') problems.push({ field: 'compress', message: 'compression needs diskFormat "qcow2"' });
  if (r.imageId !== undefined && (typeof r.imageId !== 'string' || !UUID_PATTERN.test(r.imageId))) {
    problems.push({ field: 'imageId', message: 'must be a UUID' });
  }
  if (r.scheduleId !== undefined && (typeof r.scheduleId !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$/.test(r.scheduleId))) {
    problems.push({ field: 'scheduleId', message: 'must be 1-200 letters, digits, "_", "." or "-"' });
  }
  if (r.backup !== undefined) problems.push(...backupProblems(r.backup));
  for (const field of ['userId', 'projectId'] as const) {
    const v = r[field];
    if (v !== undefined && (typeof v !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(v))) {
      problems.push({ field, message: 'must be 1-64 letters, digits, "_" or "-"' });
    }
  }
  return problems;
}

/** Nova's createBackup: any backup type of up to 255 characters (empty too), a rotation of 0 or more. */
function backupProblems(backup: unknown): InputProblem[] {
  if (typeof backup !== 'object' || backup === null || Array.isArray(backup)) {
    return [{ field: 'backup', message: 'must be an object like {"type": "daily", "rotation": 7}' }];
  }
  const b = backup as Record<string, unknown>;
  const problems: InputProblem[] = Object.keys(b)
    .filter((k) => k !== 'type' && k !== 'rotation')
    .map((k) => ({ field: `backup.${k.slice(0, 64)}`, message: 'unknown field; known fields: type, rotation' }));
  if (typeof b.type !== 'string' || [...b.type].length > 255 || /\p{Cc}/u.test(b.type) || GLANCE_REFUSED_CHARACTERS.test(b.type)) {
    problems.push({ field: 'backup.type', message: 'must be a string of at most 255 printable characters (Glance takes it as a property)' });
  }
  if (!Number.isInteger(b.rotation) || (b.rotation as number) < 0) problems.push({ field: 'backup.rotation', message: 'must be a whole number, 0 or more' });
  return problems;
}

function metadataProblems(metadata: unknown): InputProblem[] {
  if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) {
    return [{ field: 'metadata', message: 'must be an object of string keys and string values' }];
  }
  const entries = Object.entries(metadata);
  if (entries.length > MAX_METADATA_ENTRIES) {
    return [
      {
        field: 'metadata',
        message: `at most ${MAX_METADATA_ENTRIES} entries (Glance keeps at most 128 properties per image, and vmsnap sets some)`,
      },
    ];
  }
  const problems: InputProblem[] = [];
  for (const [key, value] of entries) {
    const field = `metadata.${key.slice(0, 64)}`;
    if (!METADATA_KEY_PATTERN.test(key)) {
      problems.push({ field, message: 'keys are 1-255 letters, digits, "_", ".", ":" or "-"' });
    } else if (RESERVED_PROPERTY_KEYS.has(key) || isNeverInherited(key)) {
      problems.push({ field, message: 'is reserved: vmsnap or Glance sets it' });
    }
    if (typeof value !== 'string') problems.push({ field, message: 'values must be strings' });
    else if ([...value].length > MAX_METADATA_VALUE) problems.push({ field, message: `values are at most ${MAX_METADATA_VALUE} characters` });
    else if (GLANCE_REFUSED_CHARACTERS.test(value)) problems.push({ field, message: REFUSED_MESSAGE });
    else if (value.includes('\u0000')) problems.push({ field, message: 'must not contain NUL characters' });
  }
  return problems;
}

export function describeProblems(problems: InputProblem[]): string {
  return problems.map((p) => `${p.field}: ${p.message}`).join('; ');
}

function instanceProblems(value: unknown): InputProblem[] {
  if (typeof value !== 'string' || value === '') return [{ field: 'instance', message: 'required: the instance UUID or name' }];
  if (!UUID_PATTERN.test(value) && !INSTANCE_NAME_PATTERN.test(value)) {
    return [{ field: 'instance', message: 'must be a UUID or a name of letters, digits, "_", "." and "-" (at most 128 characters)' }];
  }
  return [];
}

/** Problems of a restore request (restoreInstance's input), each naming its field. */
export function validateRestoreRequest(input: unknown): InputProblem[] {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    return [{ field: 'input', message: 'must be a JSON object like {"instance": "<uuid or name>", "imageId": "<image uuid>"}' }];
  }
  const r = input as Record<string, unknown>;
  const problems: InputProblem[] = [];
  const known = new Set(['instance', 'imageId', 'allowOtherImage', 'allowGrow', 'forceStop', 'asNew']);
  for (const key of Object.keys(r)) {
    if (!known.has(key)) problems.push({ field: key, message: `unknown field; known fields: ${[...known].join(', ')}` });
  }
  problems.push(...instanceProblems(r.instance));
  if (typeof r.imageId !== 'string' || !UUID_PATTERN.test(r.imageId)) problems.push({ field: 'imageId', message: 'required: the Glance image id (a UUID)' });
  for (const field of ['allowOtherImage', 'allowGrow', 'forceStop'] as const) {
    if (r[field] !== undefined && typeof r[field] !== 'boolean') problems.push({ field, message: 'must be true or false' });
  }
  if (r.asNew !== undefined && (typeof r.asNew !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(r.asNew))) {
    problems.push({
      field: 'asNew',
      message: 'the new instance name: 1-64 letters, digits, "_", "." and "-", starting with a letter or digit',
    });
  }
  return problems;
}

/** Problems of a rollback request (rollbackRestore's input). */
export function validateRollbackRequest(input: unknown): InputProblem[] {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    return [{ field: 'input', message: 'must be a JSON object like {"instance": "<uuid or name>"}' }];
  }
  const r = input as Record<string, unknown>;
  const problems: InputProblem[] = Object.keys(r)
    .filter((k) => k !== 'instance')
    .map((k) => ({ field: k, message: 'unknown field; known fields: instance' }));
  return [...problems, ...instanceProblems(r.instance)];
}
