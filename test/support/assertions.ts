// Assertions shared by the driver tests.
import assert from 'node:assert/strict';
import { VmsnapError, type ErrorCode } from '../../src/shared/errors.js';

/** The promise rejects with a VmsnapError of this code; returns it for further checks. */
export async function rejectsWith(promise: Promise<unknown>, code: ErrorCode): Promise<VmsnapError> {
  let caught: unknown;
  await promise.then(
    () => assert.fail(`expected ${code}, but it succeeded`),
    (e: unknown) => {
      caught = e;
    },
  );
  assert.ok(caught instanceof VmsnapError, `expected VmsnapError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  return caught;
}
