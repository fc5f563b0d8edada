// Every workflow of vmsnap, for the worker's bundle.
export { snapshotInstance, progressQuery } from './snapshot.js';
export { reconcile, type ReconcileReport } from './reconcile.js';
