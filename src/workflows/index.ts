// Every workflow of vmsnap, for the worker's bundle.
export { snapshotInstance } from './snapshot.js';
export { progressQuery } from './tracker.js';
export { reconcile, type ReconcileReport } from './reconcile.js';
export { scheduledSnapshots, type ScheduledSnapshotsInput, type ScheduledSnapshotsReport, type ScheduledSnapshotOutcome } from './scheduled.js';
export { restoreInstance, rollbackRestore } from './restore.js';
