// Typed errors. Each carries a stable code (it becomes the Temporal failure type, so clients can
// switch on it), whether retrying can help, and a message that tells an operator what to do.

export type ErrorCode =
  | 'InvalidInput'
  | 'InstanceNotFound'
  | 'InstanceBusy'
  | 'InstanceInvalidState'
  | 'DiskNotFound'
  | 'ConvertFailed'
  | 'ImageCorrupt'
  | 'ImageNotFound'
  | 'ImageConflict'
  | 'ImageServiceError'
  | 'ImageServiceUnavailable'
  | 'IdentityServiceUnavailable'
  | 'HypervisorError'
  | 'NoSpace'
  | 'ConfigError'
  | 'StoreError';

export class VmsnapError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** True when the same call may succeed later (network blip, 5xx, busy service). */
    readonly retryable = false,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = code;
  }
}

/** Codes that no retry can fix: the workflow stops retrying at once on these. */
export const PERMANENT_ERROR_CODES: ErrorCode[] = [
  'InvalidInput',
  'InstanceNotFound',
  'InstanceBusy',
  'InstanceInvalidState',
  'DiskNotFound',
  'ImageCorrupt',
  'ImageNotFound',
  'ImageConflict',
  'NoSpace',
  'ConfigError',
];
