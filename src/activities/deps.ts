// What activities need from the outside world; tests pass real or fake implementations.
import type * as qemuImg from '../drivers/qemu-img.js';
import type { Hypervisor } from '../drivers/hypervisor.js';
import type { Identity } from '../drivers/identity.js';
import type { ImageService } from '../drivers/image-service.js';
import type { SnapshotSettings } from '../shared/config.js';
import type { Store } from '../store/store.js';
import type { WorkflowLookup } from './workflow-lookup.js';

export interface ActivityDeps {
  store: Store;
  hypervisor: Hypervisor;
  /** The hypervisor's libvirt URI, for the pause guard's own connection (worker/pause-guard.ts). */
  libvirtUri: string;
  imageService: ImageService;
  /** Who the image service calls act for (Keystone): the owner and user of new images. */
  identity: Identity;
  /** qemu-img operations (src/drivers/qemu-img.ts). */
  diskTool: Pick<typeof qemuImg, 'convert' | 'info' | 'check' | 'measure'>;
  /** This host's name, as its task queue and the inventory know it. */
  host: string;
  /** Where per-snapshot temp dirs are made. */
  snapshotsDir: string;
  /** Pause budget, retry budgets, heartbeat timeout: handed to each snapshot workflow. */
  settings: SnapshotSettings;
  /** Temporal, as the reconciler asks it which snapshots still run. */
  workflows: WorkflowLookup;
}
