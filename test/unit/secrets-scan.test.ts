// The secrets scan itself (test/support/secrets.ts): a secret is found in every form it can take
// in what Temporal keeps and in logs, whatever byte offset its base64 starts at.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { decodedTexts, scanLogFiles, scanTemporal, scanText, type Secret } from '../support/secrets.js';

// A password with the characters that JSON escapes, and one without.
const secrets: Secret[] = [
  { name: 'password', value: 'pa"ss\\w0rd-Xq81Zk' },
  { name: 'token', value: 'gAAAAABnT0ken1234567890abcdef' },
];
const json = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
const payload = (v: unknown) => ({ metadata: { encoding: new TextEncoder().encode('json/plain') }, data: json(v) });

describe('secrets scan', () => {
  it('finds a secret base64-encoded at each byte offset, with any bytes around it', () => {
    for (const secret of secrets) {
      for (let before = 0; before < 6; before++) {
        const text = Buffer.from(`${'x'.repeat(before)}${secret.value}${'y'.repeat(before % 4)}`).toString('base64');
        const found = scanText('text', text, [secret]);
        assert.deepEqual(
          found.map((f) => f.form),
          ['base64'],
          `${secret.name} after ${before} bytes: ${text}`,
        );
      }
    }
  });

  it('finds a secret as is and JSON-escaped (a JSON log line), and nothing in a text without it', () => {
    const line = JSON.stringify({ level: 'INFO', message: 'auth', detail: `with ${secrets[0]!.value}` });
    assert.deepEqual(scanText('line', line, secrets), [{ where: 'line', secret: 'password', form: 'JSON-escaped' }]);
    assert.deepEqual(
      scanText('line', `x ${secrets[1]!.value} y`, secrets).map((f) => f.form),
      ['plain'],
    );
    assert.deepEqual(scanText('line', JSON.stringify({ level: 'INFO', message: 'snapshot completed' }), secrets), []);
    assert.throws(() => scanText('t', 'anything', [{ name: 'short', value: 'abc' }]), /too short/);
  });

  it('decodes every payload of a history: input, heartbeat details, memo, search attributes, failure causes, markers', () => {
    const [password, token] = secrets;
    const history = {
      events: [
        { workflowExecutionStartedEventAttributes: { input: { payloads: [payload({ instance: 'vm', metadata: { note: password!.value } })] } } },
        { activityTaskStartedEventAttributes: { lastFailure: { message: 'x', cause: { encodedAttributes: payload({ message: token!.value }) } } } },
        { markerRecordedEventAttributes: { details: { data: { payloads: [payload({ result: { ok: 1 } })] } } } },
      ],
    };
    const description = {
      memo: { fields: { owner: payload(`bearer ${token!.value}`) } },
      searchAttributes: { indexedFields: { VmsnapPhase: payload('done') } },
      pendingActivities: [{ heartbeatDetails: { payloads: [payload({ bytesDone: 1 })] } }],
    };
    const found = scanTemporal('run', [history, description], secrets);
    // The password is found as itself in the decoded input, not only in its escaped JSON form.
    assert.ok(
      found.some((f) => f.secret === 'password' && f.form === 'plain' && f.where.includes('workflowExecutionStarted')),
      JSON.stringify(found),
    );
    assert.ok(found.some((f) => f.secret === 'token' && f.where.includes('cause.encodedAttributes')));
    assert.ok(found.some((f) => f.secret === 'token' && f.where.startsWith('run 1: memo')));
    assert.deepEqual(scanTemporal('run', [{ events: [history.events[2]] }, { searchAttributes: description.searchAttributes }], secrets), []);
    assert.ok(decodedTexts(history).some((t) => t.text === password!.value));
  });

  it('scans log files line by line', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmsnap-scan-'));
    try {
      const file = join(dir, 'worker.log');
      writeFileSync(file, `{"message":"started"}\n{"message":"token ${Buffer.from(`..${secrets[1]!.value}`).toString('base64')}"}\n`);
      assert.deepEqual(scanLogFiles([file], secrets), [{ where: `log ${file} line 2`, secret: 'token', form: 'base64' }]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
