// What the test guest's parts share: its errors, where libvirt is, and the constants of its disk
// and console that the init script writes and the host side reads.

export const LIBVIRT_URI = 'qemu:///system';
export const READY_MARKER = 'VMSNAP-GUEST-READY';
/** A guest with data disks prints, before it writes, what each disk held at boot: "VMSNAP-GUEST-DISKS vda=A/B vdb=A/B". */
export const DISKS_MARKER = 'VMSNAP-GUEST-DISKS';
export const SECTOR = 512;
/** Byte offset of record A; record B sits at (virtual size - RECORD_MARGIN). */
export const RECORD_MARGIN = 1024 * 1024;
/** How often the test guest writes its counter, unless told otherwise. */
export const DEFAULT_INTERVAL_MS = 20;
export const GUEST_AGENT_CHANNEL = 'org.qemu.guest_agent.0';

export class GuestError extends Error {
  override name = 'GuestError';
}
