import { fileURLToPath } from 'node:url';

/** History of a real snapshot of a running guest, replayed by test/unit/replay.test.ts. */
export const REPLAY_FIXTURE = fileURLToPath(new URL('../fixtures/snapshot-running-history.json', import.meta.url));
