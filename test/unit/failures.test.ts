import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ApplicationFailure, CancelledFailure, TerminatedFailure, TimeoutFailure } from '@temporalio/common';
import { ClientError, ScheduleError } from '../../src/client/errors.js';
import { exitCodeOf, exitCodeOfType } from '../../src/client/exit-codes.js';
import { VmsnapError } from '../../src/shared/errors.js';
import { ERRORS, EXIT, FAILURES, PERMANENT_FAILURE_TYPES, failureKind, failureTypeOfCause, type ErrorCode } from '../../src/shared/failures.js';

describe('the table of failures', () => {
  it('says once whether a retry can help, and a VmsnapError follows it', () => {
    const retried: ErrorCode[] = ['ConvertFailed', 'ImageServiceUnavailable', 'IdentityServiceUnavailable', 'HypervisorError'];
    for (const code of Object.keys(ERRORS) as ErrorCode[]) {
      const err = new VmsnapError(code, 'x');
      assert.equal(err.retryable, retried.includes(code), code);
      assert.equal(PERMANENT_FAILURE_TYPES.includes(code), !retried.includes(code) && code !== 'StoreError', code);
    }
    // A store error is retried when the store says it is passing (a lock, a lost connection).
    assert.equal(new VmsnapError('StoreError', 'locked', {}, { transient: true }).retryable, true);
    assert.equal(new VmsnapError('StoreError', 'bad password file').retryable, false);
    assert.ok(PERMANENT_FAILURE_TYPES.includes('PauseBudgetExceeded'));
  });

  it('gives every type an exit code and a hint', () => {
    for (const [type, kind] of Object.entries(FAILURES)) {
      assert.ok(Object.values(EXIT).includes(kind.exit), type);
      assert.ok(kind.hint.length > 10, type);
    }
    assert.equal(exitCodeOfType('InvalidInput'), EXIT.usage);
    assert.equal(exitCodeOfType('InstanceNotFound'), EXIT.notFound);
    assert.equal(exitCodeOfType('InstanceBusy'), EXIT.busy);
    assert.equal(exitCodeOfType('ConfigError'), EXIT.unavailable);
    assert.equal(exitCodeOfType('ImageServiceUnavailable'), EXIT.failed);
    assert.equal(exitCodeOfType('SomethingANewerWorkerSays'), EXIT.failed);
    assert.equal(exitCodeOfType(undefined), EXIT.failed);
    assert.equal(failureKind('toString').exit, EXIT.failed, 'no prototype keys');
  });

  it('maps client-side errors as before', () => {
    assert.equal(exitCodeOf(new ClientError('SnapshotNotFound', 'x')), EXIT.notFound);
    assert.equal(exitCodeOf(new ClientError('Terminated', 'x')), EXIT.failed);
    assert.equal(exitCodeOf(new ClientError('TemporalUnavailable', 'x')), EXIT.unavailable);
    assert.equal(exitCodeOf(new ClientError('StoreUnavailable', 'x')), EXIT.unavailable);
    assert.equal(exitCodeOf(new VmsnapError('StoreError', 'x')), EXIT.unavailable);
    assert.equal(exitCodeOf(new ScheduleError('ScheduleNotFound', 'x')), EXIT.notFound);
    assert.equal(new ScheduleError('ScheduleExists', 'x').exitCode, EXIT.usage);
    assert.equal(exitCodeOf(new Error('x')), EXIT.failed);
  });

  it('names what ended a workflow', () => {
    assert.equal(failureTypeOfCause(ApplicationFailure.create({ type: 'InstanceBusy', message: 'x' })), 'InstanceBusy');
    assert.equal(failureTypeOfCause(ApplicationFailure.create({ message: 'x' })), 'SnapshotFailed');
    assert.equal(failureTypeOfCause(ApplicationFailure.create({ message: 'x' }), 'RestoreFailed'), 'RestoreFailed');
    assert.equal(failureTypeOfCause(new CancelledFailure('x')), 'Cancelled');
    assert.equal(failureTypeOfCause(new TerminatedFailure('x')), 'Terminated');
    assert.equal(failureTypeOfCause(new TimeoutFailure('x', undefined, 'START_TO_CLOSE')), 'TimedOut');
    assert.equal(failureTypeOfCause(new Error('x')), 'SnapshotFailed');
  });
});
