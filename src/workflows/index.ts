// Every workflow of vmsnap, for the worker's bundle.
export { snapshotInstance, progressQuery } from './snapshot.js';
export { reconcile, type ReconcileReport } from './reconcile.js';
export { scheduledSnapshots, type ScheduledSnapshotsInput, type ScheduledSnapshotsReport, type ScheduledSnapshotOutcome } from './scheduled.js';
export { restoreInstance, rollbackRestore, restoreProgressQuery } from './restore.js';
