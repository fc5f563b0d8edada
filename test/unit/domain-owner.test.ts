// Who owns an instance, as discovery reads it from the domain's <metadata>: Nova's <nova:owner>
// as its libvirt driver writes it, else the same in vmsnap's own namespace.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { domainOwner } from '../../src/drivers/libvirt-xml.js';
import { VMSNAP_LIBVIRT_NAMESPACE } from '../../src/shared/names.js';

const PROJECT = '4f1d3c2b1a0948e7b6a5c4d3e2f1a0b9';
const USER = '9b0a1f2e3d4c5b6a7e8f9a0b1c2d3e4f';

const domain = (metadata: string) => `<domain type='kvm' id='3'>
  <name>instance-0000000a</name>
  <uuid>8f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0</uuid>
  <metadata>${metadata}</metadata>
  <memory unit='KiB'>524288</memory>
</domain>`;

// As Nova's libvirt driver writes it (nova/virt/libvirt/config.py, LibvirtConfigGuestMetaNova*).
const NOVA = `
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="26.2.0"/>
      <nova:name>web-1</nova:name>
      <nova:creationTime>2026-01-02 03:04:05</nova:creationTime>
      <nova:flavor name="m1.small"><nova:memory>2048</nova:memory></nova:flavor>
      <nova:owner>
        <nova:user uuid="${USER}">alice</nova:user>
        <nova:project uuid="${PROJECT}">web &amp; co</nova:project>
      </nova:owner>
      <nova:root type="image" uuid="0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"/>
    </nova:instance>`;

it("reads Nova's <nova:owner>: ids and names", () => {
  assert.deepEqual(domainOwner(domain(NOVA)), { projectId: PROJECT, userId: USER, projectName: 'web & co', userName: 'alice' });
});

it("reads vmsnap's own namespace, under any prefix, when Nova's is absent", () => {
  const own = `<v:instance xmlns:v='${VMSNAP_LIBVIRT_NAMESPACE}'><v:owner><v:user uuid='${USER}'/><v:project uuid='${PROJECT}'>ops</v:project></v:owner></v:instance>`;
  assert.deepEqual(domainOwner(domain(own)), { projectId: PROJECT, userId: USER, projectName: 'ops' });
  // Both: Nova's wins.
  assert.equal(domainOwner(domain(`${own}${NOVA}`))?.userName, 'alice');
});

it('names no owner without the metadata, in a namespace of someone else, or with ids that are not Keystone ids', () => {
  assert.equal(domainOwner('<domain><name>x</name></domain>'), undefined);
  assert.equal(domainOwner(domain('')), undefined);
  const foreign = `<o:instance xmlns:o="http://example.com/other"><o:owner><o:user uuid="${USER}"/><o:project uuid="${PROJECT}"/></o:owner></o:instance>`;
  assert.equal(domainOwner(domain(foreign)), undefined);
  const odd = NOVA.replace(`uuid="${USER}"`, 'uuid="a b;c"').replace(`uuid="${PROJECT}"`, 'uuid=""');
  assert.equal(domainOwner(domain(odd)), undefined);
  // A project alone is an owner (the user may be unknown).
  const projectOnly = NOVA.replace(`<nova:user uuid="${USER}">alice</nova:user>`, '');
  assert.deepEqual(domainOwner(domain(projectOnly)), { projectId: PROJECT, projectName: 'web & co' });
});
