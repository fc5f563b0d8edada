// Public entry of the vmsnap package for programs.
export {
  LISTABLE_STATUSES,
  SNAPSHOT_WORKFLOW_TYPE,
  cancelSnapshot,
  connectClient,
  findSnapshot,
  getProgress,
  listSnapshots,
  snapshotHandle,
  snapshotResult,
  startSnapshot,
  type ListSnapshotsOptions,
  type ListableStatus,
  type SnapshotHandle,
  type SnapshotProgressDetails,
  type SnapshotStatus,
  type SnapshotSummary,
  type StartedSnapshot,
} from './snapshots.js';
export { listInstances, resolveInstanceId } from './inventory.js';
export { acceptRestore, acceptSnapshot, type AcceptOptions, type Accepted } from './acceptance.js';
export {
  RESTORE_WORKFLOW_TYPE,
  ROLLBACK_WORKFLOW_TYPE,
  cancelRestore,
  findRestore,
  getRestoreProgress,
  listRestores,
  resolveImage,
  restoreHandle,
  restoreResult,
  startRestore,
  startRollback,
  type RestoreHandle,
  type RestoreProgressDetails,
  type RestoreSummary,
  type RollbackHandle,
  type StartedRestore,
} from './restores.js';
export { ClientError, type ClientErrorCode } from './errors.js';
export { EXIT, EXIT_CODES_HELP, exitCodeOf } from './exit-codes.js';
export { loadConfig, type Config } from '../shared/config.js';
export { VmsnapError, type ErrorCode } from '../shared/errors.js';
export type { InstanceRecord } from '../store/store.js';
export type { Acceptance, BackupRotation, SnapshotProgress, SnapshotRequest, SnapshotResult, StepProgress } from '../shared/types.js';
export type { RestoreProgress, RestoreRequest, RestoreResult, RollbackRequest, RollbackResult } from '../shared/types.js';
export {
  DEFAULT_CATCHUP_WINDOW,
  SCHEDULE_ID_PREFIX,
  SCHEDULED_WORKFLOW_TYPE,
  ScheduleError,
  createSchedule,
  deleteSchedule,
  describeSchedule,
  listSchedules,
  parseDuration,
  pauseSchedule,
  previewRetention,
  scheduleIdOf,
  triggerSchedule,
  unpauseSchedule,
  validateScheduleOptions,
  type CreateScheduleOptions,
  type ScheduleErrorCode,
  type ScheduleRun,
  type VmsnapSchedule,
  type VmsnapScheduleDetails,
} from './schedules.js';
export type { RetentionDecision, RetentionPlan, RetentionPolicy, RetentionRule } from '../activities/retention.js';
export type { ScheduledSnapshotOutcome, ScheduledSnapshotsInput, ScheduledSnapshotsReport } from '../workflows/scheduled.js';
export type { ReconcileOptions, ReconcileReport } from '../workflows/reconcile.js';
