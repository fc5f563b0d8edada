// Every workflow of vmsnap, for the worker's bundle.
export { snapshotInstance, progressQuery } from './snapshot.js';
