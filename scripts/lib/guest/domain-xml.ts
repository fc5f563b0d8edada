// The test guest's libvirt domain XML.
import { GUEST_AGENT_CHANNEL } from './common.js';

const xmlEscape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');

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
}): string {
  const x = xmlEscape;
  // libvirt picks the host socket path and adds the virtio-serial controller itself.
  const agentChannel = o.guestAgent
    ? `
    <channel type='unix'>
      <target type='virtio' name='${GUEST_AGENT_CHANNEL}'/>
    </channel>`
    : '';
  // type='qemu' (TCG): KVM is not usable on this host. No NIC, no graphics, no balloon, no USB:
  // the guest only needs a serial console and one disk. cache='none' so guest writes reach the
  // qcow2 file directly (host page cache bypassed), which is what snapshot tools read.
  return `<domain type='qemu'>
  <name>${x(o.name)}</name>
  <uuid>${x(o.uuid)}</uuid>
  <memory unit='MiB'>${o.memoryMiB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${x(o.kernel)}</kernel>
    <initrd>${x(o.initrd)}</initrd>
    <cmdline>console=ttyS0 loglevel=4 vmsnap.interval_ms=${o.intervalMs}</cmdline>
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
    </disk>
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
