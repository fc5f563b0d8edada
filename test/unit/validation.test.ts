import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { validateSnapshotRequest } from '../../src/shared/validation.js';

const fields = (input: unknown) => validateSnapshotRequest(input).map((p) => p.field);

describe('snapshot request validation', () => {
  it('accepts a minimal request by UUID and by name', () => {
    assert.deepEqual(validateSnapshotRequest({ instance: '6f1c1c3e-0d7a-4c8e-9a43-2b2c7f0e5a11', imageName: 'daily' }), []);
    assert.deepEqual(validateSnapshotRequest({ instance: 'web-01.prod', imageName: 'daily', metadata: { backup: 'yes' } }), []);
  });

  it('names every bad field', () => {
    assert.deepEqual(fields(null), ['input']);
    assert.deepEqual(fields({}), ['instance', 'imageName']);
    assert.deepEqual(fields({ instance: 'x', imageName: 'y', colour: 'red' }), ['colour']);
    assert.deepEqual(fields({ instance: 'x', imageName: 'y', mode: 'hot', diskFormat: 'vmdk', compress: 'yes' }), ['mode', 'diskFormat', 'compress']);
    assert.deepEqual(fields({ instance: 'x', imageName: 'y', imageId: 'not-a-uuid', userId: 'a b' }), ['imageId', 'userId']);
  });

  it('keeps path separators and shell metacharacters out of instance references', () => {
    for (const instance of ['../etc/passwd', 'a/b', 'vm; rm -rf /', '$(reboot)', 'a`b`', '-rf', ' vm', 'vm\n']) {
      assert.deepEqual(fields({ instance, imageName: 'y' }), ['instance'], instance);
    }
  });

  it("holds image names to Glance's 255 characters and refuses control characters", () => {
    assert.deepEqual(fields({ instance: 'x', imageName: 'é'.repeat(255) }), []);
    assert.deepEqual(fields({ instance: 'x', imageName: 'a'.repeat(256) }), ['imageName']);
    assert.deepEqual(fields({ instance: 'x', imageName: 'a\u0000b' }), ['imageName']);
    assert.deepEqual(fields({ instance: 'x', imageName: '   ' }), ['imageName']);
  });

  it('refuses metadata that sets reserved or never-inherited keys, or is too big', () => {
    for (const key of ['image_type', 'instance_uuid', 'owner', 'os_glance_foo', 'img_signature', 'cache_in_nova', 'status', 'vmsnap_schedule']) {
      assert.deepEqual(fields({ instance: 'x', imageName: 'y', metadata: { [key]: 'v' } }), [`metadata.${key}`], key);
    }
    assert.deepEqual(fields({ instance: 'x', imageName: 'y', metadata: { k: 'v'.repeat(256) } }), ['metadata.k']);
    assert.deepEqual(fields({ instance: 'x', imageName: 'y', metadata: { k: 1 } }), ['metadata.k']);
    // What Glance refuses with a 400 once the snapshot has started: 4-byte UTF-8, lone surrogates.
    assert.deepEqual(fields({ instance: 'x', imageName: 'y', metadata: { note: 'ok \u{1F600}' } }), ['metadata.note']);
    assert.deepEqual(fields({ instance: 'x', imageName: 'y', metadata: { note: 'half \uD83D' } }), ['metadata.note']);
    assert.deepEqual(fields({ instance: 'x', imageName: 'y', metadata: { note: 'a\u0000b' } }), ['metadata.note']);
    assert.deepEqual(fields({ instance: 'x', imageName: 'nightly \u{1F4BE}' }), ['imageName']);
    // Three-byte UTF-8 is fine for Glance.
    assert.deepEqual(fields({ instance: 'x', imageName: 'Sicherung für München €', metadata: { note: 'ünïcødé ✓' } }), []);
    const many = Object.fromEntries(Array.from({ length: 97 }, (_, i) => [`k${i}`, 'v']));
    assert.deepEqual(fields({ instance: 'x', imageName: 'y', metadata: many }), ['metadata']);
  });
});
