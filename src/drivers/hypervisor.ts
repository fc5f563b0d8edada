// The hypervisor as vmsnap needs it (libvirt is the first implementation), in the spirit of
// Nova's virt driver interface. Errors are VmsnapError: InstanceNotFound, InstanceInvalidState
// (e.g. resume of a shut-off instance), DiskNotFound, InvalidInput (an id that is not a UUID),
// ConfigError (no virsh), HypervisorError (anything else; retryable).

/** Nova's power states, as far as a snapshot cares. */
export type PowerState = 'running' | 'paused' | 'shutdown' | 'crashed' | 'suspended' | 'nostate';

export interface InstanceInfo {
  /** libvirt domain UUID = Nova instance uuid. */
  id: string;
  name: string;
  powerState: PowerState;
  /** Glance id of the image the instance booted from, when the domain says (Nova metadata). */
  baseImageRef?: string;
}

export interface RootDisk {
  path: string;
  /** Format QEMU uses for it, from the domain definition: 'qcow2', 'raw', ... */
  format: string;
}

export interface Hypervisor {
  listInstances(): Promise<InstanceInfo[]>;
  /** Throws InstanceNotFound for an unknown id. */
  getInstance(id: string): Promise<InstanceInfo>;
  /** Pausing a paused instance is success. */
  pause(id: string): Promise<void>;
  /** Resuming a running instance is success. */
  resume(id: string): Promise<void>;
  /** The root disk as the domain defines it (the first disk device). */
  rootDisk(id: string): Promise<RootDisk>;
}
