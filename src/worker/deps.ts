// The real dependencies of vmsnap's activities, from the config and the cloud connection. Tests
// and the demo use the same builder, wrapping a driver where they need to observe it.
import type { ActivityDeps } from '../activities/index.js';
import type { Cloud } from '../drivers/cloud.js';
import * as qemuImg from '../drivers/qemu-img.js';
import { LibvirtHypervisor } from '../drivers/libvirt.js';
import type { Config } from '../shared/config.js';
import type { Store } from '../store/store.js';

export function buildDeps(
  config: Config,
  store: Store,
  cloud: Pick<Cloud, 'identity' | 'imageService'>,
  extra: Pick<ActivityDeps, 'workflows'> & Partial<ActivityDeps>,
): ActivityDeps {
  return {
    store,
    hypervisor: new LibvirtHypervisor({ uri: config.libvirtUri }),
    libvirtUri: config.libvirtUri,
    imageService: cloud.imageService,
    identity: cloud.identity,
    diskTool: qemuImg,
    host: config.host,
    snapshotsDir: config.snapshotsDir,
    settings: config.snapshot,
    ...extra,
  };
}
