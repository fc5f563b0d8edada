// Names shared by workflows, workers, clients and the dev stack: one place to change them.

/** Default task queue of the workflows and the steps that may run anywhere (image record, task state). */
export const DEFAULT_TASK_QUEUE = 'vmsnap';

/** Task queue for steps bound to the hypervisor host that holds the instance. */
export function hostTaskQueue(host: string): string {
  return `vmsnap-host-${host}`;
}

/** Task queue of a host's snapshot slots: its worker runs at most max-concurrent-snapshots tasks. */
export function hostSlotTaskQueue(host: string): string {
  return `vmsnap-host-${host}-slots`;
}

/** Signal from a host's slot holder to its snapshot: the slot is held, go on. */
export const SLOT_ACQUIRED_SIGNAL = 'snapshotSlotAcquired';

/** One snapshot workflow per instance at a time: Temporal refuses a second with the same id. */
export function snapshotWorkflowId(instanceId: string): string {
  return `snapshot-${instanceId}`;
}

/** One restore (or rollback) per instance at a time, as for snapshots. */
export function restoreWorkflowId(instanceId: string): string {
  return `restore-${instanceId}`;
}

/** Custom search attributes, all Keyword, registered by the dev stack and kept current by the workflow. */
export const SEARCH_ATTRIBUTES = {
  instanceId: 'VmsnapInstanceId',
  phase: 'VmsnapPhase',
  imageId: 'VmsnapImageId',
  host: 'VmsnapHost',
} as const;

/** Tag on every image vmsnap creates: how the reconciler finds them again. */
export const VMSNAP_IMAGE_TAG = 'vmsnap';

/** The reconciler's schedule and workflow, one per main task queue. */
export function reconcileWorkflowId(taskQueue: string): string {
  return `vmsnap-reconcile-${taskQueue}`;
}

/**
 * Namespaces of the domain <metadata> that say who owns an instance: Nova's (<nova:owner>, as its
 * libvirt driver writes it), and vmsnap's own for domains Nova did not make. The first found wins.
 */
export const NOVA_LIBVIRT_NAMESPACES = ['http://openstack.org/xmlns/libvirt/nova/1.1', 'http://openstack.org/xmlns/libvirt/nova/1.0'];
export const VMSNAP_LIBVIRT_NAMESPACE = 'https://github.com/vmsnap/vmsnap/xmlns/libvirt/1.0';

/**
 * The update a snapshot or restore answers once its task state is taken (or with the failure that
 * refused it): a client that starts one with update-with-start answers only once it is accepted.
 */
export const ACCEPTED_UPDATE = 'accepted';
