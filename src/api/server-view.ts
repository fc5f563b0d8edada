// An instance of vmsnap's inventory as Nova's server view shows it (GET /servers/{id}): Nova's
// vm_state, task_state and power_state and the status they make, the owner, the image it booted
// from, and the fields each microversion up to the highest served adds. What vmsnap does not have
// (networks, flavors, volumes, key pairs) is empty, as Nova shows it for a server without them.
import { createHash } from 'node:crypto';
import type { InstanceRecord } from '../store/store.js';
import { isAdmin, type Caller } from './policy.js';
import type { ApiVersion } from './versions.js';

/** Nova's power_state numbers (nova/compute/power_state.py). */
const POWER_STATE: Record<string, number> = { nostate: 0, running: 1, paused: 3, shutdown: 4, crashed: 6, suspended: 7 };

/** Nova's vm_state, from the power state libvirt reports. */
const VM_STATE: Record<string, string> = {
  running: 'active',
  paused: 'paused',
  shutdown: 'stopped',
  suspended: 'suspended',
  crashed: 'error',
  nostate: 'stopped',
};

/** Nova's server status from vm_state and task_state (nova/api/openstack/common.py's state map). */
const STATUS: Record<string, string> = { active: 'ACTIVE', paused: 'PAUSED', stopped: 'SHUTOFF', suspended: 'SUSPENDED', error: 'ERROR', deleted: 'DELETED' };
const REBUILDING = new Set(['rebuilding', 'rebuild_block_device_mapping', 'rebuild_spawning']);

export function vmStateOf(instance: InstanceRecord): string {
  if (instance.deletedAt) return 'deleted';
  return VM_STATE[instance.powerState] ?? 'stopped';
}

export function statusOf(instance: InstanceRecord): string {
  const vmState = vmStateOf(instance);
  if (instance.taskState && REBUILDING.has(instance.taskState) && (vmState === 'active' || vmState === 'stopped')) return 'REBUILD';
  return STATUS[vmState] ?? 'UNKNOWN';
}

/** Nova's times: seconds, UTC, with a Z. */
function isoSeconds(iso: string): string {
  return `${iso.slice(0, 19)}Z`;
}

export interface ViewContext {
  caller: Caller;
  version: ApiVersion;
  /** The API's URL, for links. */
  baseUrl: string;
}

function links(baseUrl: string, id: string) {
  return [
    { rel: 'self', href: `${baseUrl}/v2.1/servers/${id}` },
    { rel: 'bookmark', href: `${baseUrl}/servers/${id}` },
  ];
}

/** GET /servers: id, name and links. */
export function serverSummary(instance: InstanceRecord, baseUrl: string) {
  return { id: instance.id, name: instance.name, links: links(baseUrl, instance.id) };
}

/** GET /servers/{id} and /servers/detail: the whole view. */
export function serverView(instance: InstanceRecord, { caller, version, baseUrl }: ViewContext): Record<string, unknown> {
  const vmState = vmStateOf(instance);
  const image = instance.baseImageRef ? { id: instance.baseImageRef, links: [{ rel: 'bookmark', href: `${baseUrl}/images/${instance.baseImageRef}` }] } : '';
  const view: Record<string, unknown> = {
    id: instance.id,
    name: instance.name,
    status: statusOf(instance),
    tenant_id: instance.projectId ?? '',
    user_id: instance.userId ?? '',
    metadata: {},
    hostId: instance.projectId ? createHash('sha224').update(`${instance.projectId}${instance.host}`).digest('hex') : '',
    image,
    // No flavor: vmsnap does not make instances. An id the flavor API does not know, as for a deleted flavor.
    flavor: { id: 'unknown', links: [] },
    created: isoSeconds(instance.createdAt),
    updated: isoSeconds(instance.updatedAt),
    addresses: {},
    accessIPv4: '',
    accessIPv6: '',
    links: links(baseUrl, instance.id),
    'OS-DCF:diskConfig': 'MANUAL',
    progress: 0,
    'OS-EXT-AZ:availability_zone': 'nova',
    config_drive: '',
    key_name: null,
    'OS-SRV-USG:launched_at': null,
    'OS-SRV-USG:terminated_at': null,
    'OS-EXT-STS:task_state': instance.taskState,
    'OS-EXT-STS:vm_state': vmState,
    'OS-EXT-STS:power_state': POWER_STATE[instance.powerState] ?? 0,
    'os-extended-volumes:volumes_attached': [],
    security_groups: [],
  };
  if (isAdmin(caller)) {
    view['OS-EXT-SRV-ATTR:host'] = instance.host;
    view['OS-EXT-SRV-ATTR:hypervisor_hostname'] = instance.host;
    view['OS-EXT-SRV-ATTR:instance_name'] = instance.name;
    if (version.atLeast('2.3')) {
      Object.assign(view, {
        'OS-EXT-SRV-ATTR:reservation_id': '',
        'OS-EXT-SRV-ATTR:launch_index': 0,
        'OS-EXT-SRV-ATTR:hostname': instance.name,
        'OS-EXT-SRV-ATTR:kernel_id': '',
        'OS-EXT-SRV-ATTR:ramdisk_id': '',
        'OS-EXT-SRV-ATTR:root_device_name': null,
        'OS-EXT-SRV-ATTR:user_data': null,
      });
    }
    // The host's state is vmsnap's to know only as far as its worker reports: not shown.
    if (version.atLeast('2.16')) view.host_status = 'UNKNOWN';
  }
  if (version.atLeast('2.9')) view.locked = false;
  if (version.atLeast('2.19')) view.description = null;
  if (version.atLeast('2.26')) view.tags = [];
  return view;
}
