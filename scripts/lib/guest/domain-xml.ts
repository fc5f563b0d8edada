// The test guest's libvirt domain XML.
import { VMSNAP_LIBVIRT_NAMESPACE } from '../../../src/shared/names.js';
import { GUEST_AGENT_CHANNEL } from './common.js';

/** Who owns the guest: a Keystone project and user, as vmsnap's discovery reads them. */
export interface GuestOwner {
  projectId: string;
  userId: string;
  projectName?: string;
  userName?: string;
}

const xmlEscape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');

/** A disk beside the root disk: a data disk the guest writes its counter to, or a read-only one it leaves alone. */
export interface DomainExtraDisk {
  dev: string;
  path: string;
  format: 'qcow2' | 'raw';
  readonly?: boolean;
}

export function domainXml(o: {
  name: string;
  uuid: string;
  memoryMiB: number;
  kernel: string;
  initrd: string;
  intervalMs: number;
  diskPath: string;
  consoleLog: string;
  guestAgent?: boolean;
  owner?: GuestOwner;
  /** Data disks (vdb, vdc ...), written by the guest; named on its command line. */
  dataDisks?: DomainExtraDisk[];
  /** A read-only disk the guest never writes. */
  readonlyDisk?: DomainExtraDisk;
  /** An empty CD-ROM drive on the IDE bus (hdc). */
  cdrom?: boolean;
}): string {
  const x = xmlEscape;
  const dataDisks = o.dataDisks ?? [];
  // Only a guest with data disks names them: the one-disk guest's command line stays as it was.
  const disksArg = dataDisks.length ? ` vmsnap.disks=${['vda', ...dataDisks.map((d) => d.dev)].join(',')}` : '';
  const extraDisk = (d: DomainExtraDisk) => `
    <disk type='file' device='disk'>
      <driver name='qemu' type='${d.format}' cache='none'/>
      <source file='${x(d.path)}'/>
      <target dev='${x(d.dev)}' bus='virtio'/>${d.readonly ? '\n      <readonly/>' : ''}
    </disk>`;
  const extraDisks = [...dataDisks, ...(o.readonlyDisk ? [o.readonlyDisk] : [])].map(extraDisk).join('');
  // An empty drive on IDE, which the 'pc' machine has built in; the guest loads no driver for it.
  const cdrom = o.cdrom
    ? `
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>`
    : '';
  // The shape of Nova's <nova:owner>, in vmsnap's namespace: these guests are not Nova's.
  const metadata = o.owner
    ? `
  <metadata>
    <vmsnap:instance xmlns:vmsnap='${VMSNAP_LIBVIRT_NAMESPACE}'>
      <vmsnap:owner>
        <vmsnap:user uuid='${x(o.owner.userId)}'>${x(o.owner.userName ?? '')}</vmsnap:user>
        <vmsnap:project uuid='${x(o.owner.projectId)}'>${x(o.owner.projectName ?? '')}</vmsnap:project>
      </vmsnap:owner>
    </vmsnap:instance>
  </metadata>`
    : '';
  // libvirt picks the host socket path and adds the virtio-serial controller itself.
  const agentChannel = o.guestAgent
    ? `
    <channel type='unix'>
      <target type='virtio' name='${GUEST_AGENT_CHANNEL}'/>
    </channel>`
    : '';
  // type='qemu' (TCG): KVM is not usable on this host. No NIC, no graphics, no balloon, no USB:
  // the guest only needs a serial console and its disks. cache='none' so guest writes reach the
  // qcow2 file directly (host page cache bypassed), which is what snapshot tools read.
  return `<domain type='qemu'>
  <name>${x(o.name)}</name>
  <uuid>${x(o.uuid)}</uuid>${metadata}
  <memory unit='MiB'>${o.memoryMiB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${x(o.kernel)}</kernel>
    <initrd>${x(o.initrd)}</initrd>
    <cmdline>console=ttyS0 loglevel=4 vmsnap.interval_ms=${o.intervalMs}${disksArg}</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='${x(o.diskPath)}'/>
      <target dev='vda' bus='virtio'/>
    </disk>${extraDisks}${cdrom}
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='${x(o.consoleLog)}' append='on'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>${agentChannel}
  </devices>
</domain>
`;
}
