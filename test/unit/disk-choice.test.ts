// Which disks a snapshot takes (activities/disk-choice.ts), how the domain XML names them
// (drivers/libvirt-xml.ts) and the set's manifest on the root image (shared/disk-set.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { chooseDisks } from '../../src/activities/disk-choice.js';
import type { InstanceDisk } from '../../src/drivers/hypervisor.js';
import { domainDisks } from '../../src/drivers/libvirt-xml.js';
import { manifestOf, manifestProperties, type DiskSetManifest } from '../../src/shared/disk-set.js';
import { VmsnapError } from '../../src/shared/errors.js';
import { validateSnapshotRequest } from '../../src/shared/validation.js';

const ID = '9c5ac4d4-4696-4574-b0e2-834b1a3a9721';

function disk(dev: string, more: Partial<InstanceDisk> = {}): InstanceDisk {
  return { dev, device: 'disk', type: 'file', bus: 'virtio', path: `/var/lib/vm/${dev}.img`, format: 'qcow2', readonly: false, shareable: false, ...more };
}

function refusal(fn: () => unknown): VmsnapError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof VmsnapError, String(err));
    return err;
  }
  return assert.fail('expected a refusal');
}

const DOMAIN = [
  disk('vda'),
  disk('sda', { device: 'cdrom', bus: 'sata', format: 'raw', readonly: true }),
  disk('vdb', { format: 'raw' }),
  disk('vdc', { readonly: true }),
  disk('vdd', { shareable: true }),
  disk('vde', { type: 'block', path: '/dev/vg/data', format: 'raw' }),
];

describe('chooseDisks', () => {
  it('root: the first disk device only, as Nova', () => {
    const { chosen, skipped } = chooseDisks(ID, DOMAIN, 'root');
    assert.deepEqual(
      chosen.map((d) => [d.dev, d.role]),
      [['vda', 'root']],
    );
    assert.deepEqual(skipped, []);
  });

  it('all: every writable, unshared disk, root first; CD-ROM, read-only and shareable skipped with a reason', () => {
    const { chosen, skipped } = chooseDisks(ID, DOMAIN, 'all');
    assert.deepEqual(
      chosen.map((d) => [d.dev, d.role, d.format, d.path]),
      [
        ['vda', 'root', 'qcow2', '/var/lib/vm/vda.img'],
        ['vdb', 'data', 'raw', '/var/lib/vm/vdb.img'],
        ['vde', 'data', 'raw', '/dev/vg/data'],
      ],
    );
    assert.deepEqual(
      skipped.map((d) => d.dev),
      ['sda', 'vdc', 'vdd'],
    );
    assert.match(skipped[0]!.reason, /cdrom/);
    assert.match(skipped[1]!.reason, /read-only/);
    assert.match(skipped[2]!.reason, /shareable/);
  });

  it('named: only those, root first whatever the order given', () => {
    const { chosen } = chooseDisks(ID, DOMAIN, ['vde', 'vda']);
    assert.deepEqual(
      chosen.map((d) => d.dev),
      ['vda', 'vde'],
    );
  });

  it('a name the instance has not: InvalidInput naming it and the disks it has', () => {
    const e = refusal(() => chooseDisks(ID, DOMAIN, ['vda', 'vdz']));
    assert.equal(e.code, 'InvalidInput');
    assert.match(e.message, /no disk vdz; its disks are vda, sda, vdb, vdc, vdd, vde/);
  });

  it('a list without the root disk: InvalidInput (the set is restored from the root image)', () => {
    const e = refusal(() => chooseDisks(ID, DOMAIN, ['vdb']));
    assert.equal(e.code, 'InvalidInput');
    assert.match(e.message, /root disk vda must be among/);
  });

  it('a network data disk chosen: DiskNotFound naming it; a network root disk: DiskNotFound as before', () => {
    const withNetwork = [disk('vda'), disk('vdb', { type: 'network', path: undefined })];
    const e = refusal(() => chooseDisks(ID, withNetwork, 'all'));
    assert.equal(e.code, 'DiskNotFound');
    assert.match(e.message, /disk vdb is of type 'network'.*leave it out/);
    assert.deepEqual(
      chooseDisks(ID, withNetwork, 'root').chosen.map((d) => d.dev),
      ['vda'],
    );
    const root = refusal(() => chooseDisks(ID, [disk('vda', { type: 'network', path: undefined })], 'root'));
    assert.equal(root.code, 'DiskNotFound');
  });
});

describe('domainDisks', () => {
  it('reads target, bus, source, format, read-only and shareable; a running domain’s backing chain is not the disk', () => {
    const xml = `<domain><devices>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source file='/vm/root.qcow2' index='2'/>
        <backingStore type='file' index='3'><format type='raw'/><source file='/vm/base.raw'/></backingStore>
        <target dev='vda' bus='virtio'/>
      </disk>
      <disk type='block' device='disk'><source dev='/dev/vg/data'/><target dev='sdb' bus='scsi'/><shareable/></disk>
      <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sda' bus='sata'/><readonly/></disk>
    </devices></domain>`;
    const [root, data, cdrom] = domainDisks(xml);
    assert.deepEqual(root, {
      device: 'disk',
      type: 'file',
      dev: 'vda',
      bus: 'virtio',
      path: '/vm/root.qcow2',
      format: 'qcow2',
      readonly: false,
      shareable: false,
    });
    assert.deepEqual(data, { device: 'disk', type: 'block', dev: 'sdb', bus: 'scsi', path: '/dev/vg/data', format: 'raw', readonly: false, shareable: true });
    assert.deepEqual(cdrom, { device: 'cdrom', type: 'file', dev: 'sda', bus: 'sata', format: 'raw', readonly: true, shareable: false });
  });
});

describe('the set manifest', () => {
  const manifest: DiskSetManifest = {
    set_id: 'b5eb6fc4-8763-40c3-94c8-b2f34d6b3b62',
    disks: [
      { device_name: 'vda', disk_bus: 'virtio', boot_index: 0, image_id: 'cf97b99e-9eb0-40dc-90b5-ed29a96c3500', disk_format: 'qcow2', virtual_size: 64 },
      { device_name: 'vdb', disk_bus: 'virtio', boot_index: null, image_id: '7aa6c6c5-c85b-4e01-b200-c5e4871b1e77', disk_format: 'qcow2', virtual_size: 32 },
    ],
  };

  it('round-trips through the root image’s string properties', () => {
    const properties = manifestProperties(manifest);
    assert.ok(Object.values(properties).every((v) => typeof v === 'string'));
    assert.deepEqual(manifestOf({ ...properties, name: 'x' }), manifest);
  });

  it('is absent from a root-disk snapshot and from a malformed record', () => {
    assert.equal(manifestOf({ name: 'plain snapshot' }), undefined);
    assert.equal(manifestOf({ vmsnap_disk_set: 's', vmsnap_disks: '{not json' }), undefined);
    assert.equal(manifestOf({ vmsnap_disk_set: 's', vmsnap_disks: '[{"device_name":"vda"}]' }), undefined);
  });
});

describe('SnapshotRequest.disks', () => {
  const problems = (disks: unknown) => validateSnapshotRequest({ instance: ID, imageName: 'x', disks }).map((p) => p.field);
  it('takes root, all, or a list of device names', () => {
    assert.deepEqual(problems('root'), []);
    assert.deepEqual(problems('all'), []);
    assert.deepEqual(problems(['vda', 'vdb']), []);
  });
  it('refuses anything else, saying what it takes', () => {
    for (const bad of ['some', [], ['vda', 'vda'], ['/dev/vda'], [3], {}]) assert.deepEqual(problems(bad), ['disks'], JSON.stringify(bad));
    const [problem] = validateSnapshotRequest({ instance: ID, imageName: 'x', disks: ['../etc'] });
    assert.match(problem!.message, /"..\/etc" is not a device name: must be "root", "all" or a list/);
  });
});
