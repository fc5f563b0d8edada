// Public entry of the vmsnap package for programs.
export { connectClient, getProgress, snapshotHandle, snapshotResult, startSnapshot, type SnapshotHandle } from './snapshots.js';
export { loadConfig, type Config } from '../shared/config.js';
export { VmsnapError, type ErrorCode } from '../shared/errors.js';
export type { SnapshotProgress, SnapshotRequest, SnapshotResult } from '../shared/types.js';
