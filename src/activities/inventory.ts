// Instance discovery: the host's libvirt domains are its instances (domain UUID = instance id),
// so operators snapshot existing VMs by UUID or name without writing inventory rows by hand. Each
// comes with its owner as the domain's metadata names it (the API's policy reads it).
import type { ActivityDeps } from './deps.js';

export async function syncInventory({ hypervisor, store, host }: Pick<ActivityDeps, 'hypervisor' | 'store' | 'host'>): Promise<number> {
  const instances = await hypervisor.listInstances();
  await store.syncHostInstances(
    host,
    instances.map((i) => ({
      id: i.id,
      name: i.name,
      powerState: i.powerState,
      ...(i.baseImageRef ? { baseImageRef: i.baseImageRef } : {}),
      ...i.owner,
    })),
  );
  return instances.length;
}

export function inventoryActivities(deps: ActivityDeps) {
  return {
    async discoverInstances(): Promise<{ host: string; instances: number }> {
      return { host: deps.host, instances: await syncInventory(deps) };
    },
  };
}
