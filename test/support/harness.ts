// Runs vmsnap's real workers in the test process against the test stack (real Temporal, Glance,
// libvirt, qemu-img), with a store of its own and a host name of its own, so test files do not
// see each other's work. Tests may wrap the real drivers to observe them (never to fake them).
// Every image its workers create is deleted when it closes: no test leaves images in Glance.
import type { Client } from '@temporalio/client';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectCloud, type Cloud } from '../../src/drivers/cloud.js';
import type { GlanceImageService } from '../../src/drivers/glance.js';
import type { Hypervisor } from '../../src/drivers/hypervisor.js';
import type { ImageService } from '../../src/drivers/image-service.js';
import { LibvirtHypervisor } from '../../src/drivers/libvirt.js';
import { loadConfig, type Config } from '../../src/shared/config.js';
import type { Store } from '../../src/store/index.js';
import type { ActivityDeps } from '../../src/activities/index.js';
import * as qemuImg from '../../src/drivers/qemu-img.js';
import { installRuntime } from '../../src/worker/observability.js';
import { startVmsnapWorker } from '../../src/worker/vmsnap-worker.js';

// Worker lifecycle chatter hides test output: warnings and errors only.
installRuntime({ logLevel: 'WARN' });

export interface Harness {
  config: Config;
  store: Store;
  client: Client;
  hypervisor: Hypervisor;
  /** The tests' own Glance client (through Keystone, as the test user). */
  glance: GlanceImageService;
  /** The real Glance, from the catalog. */
  glanceUrl: string;
  /** The workers' own cloud session (Keystone), for tests that act on its tokens. */
  cloud: Cloud;
  /** Ids of the images its workers created (deleted at close). */
  madeImages: Set<string>;
  /** Where the test guests and their assets live. */
  guestsDir: string;
  assetsDir: string;
  close(): Promise<void>;
}

export async function startHarness(opts: {
  name: string;
  /** Wraps the real hypervisor, e.g. to observe the guest right after pause. */
  wrapHypervisor?: (real: Hypervisor) => Hypervisor;
  /** Glance URL the workers use (a fault proxy in front of the real one); default the real one. */
  glanceUrl?: string;
  wrapImageService?: (real: ImageService) => ImageService;
  /** Config settings for this harness's workers (pause budget, retry budgets, ...). */
  env?: Record<string, string>;
  /** Wraps qemu-img, e.g. to look at the temp files it wrote. */
  wrapDiskTool?: (real: ActivityDeps['diskTool']) => ActivityDeps['diskTool'];
}): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), `vmsnap-${opts.name}-`));
  chmodSync(dir, 0o711); // QEMU's user reaches live copy targets below it
  const config = loadConfig({
    ...process.env,
    VMSNAP_HOST: `test-${opts.name}-${process.pid}`,
    VMSNAP_TASK_QUEUE: `vmsnap-test-${opts.name}-${process.pid}`,
    VMSNAP_SNAPSHOTS_DIR: join(dir, 'snapshots'),
    VMSNAP_STORE_PATH: join(dir, 'vmsnap.sqlite'),
    VMSNAP_DISCOVERY_INTERVAL_MS: '3600000',
    // Most suites test what happens around a pause; the live-mode tests ask for their modes.
    VMSNAP_DEFAULT_MODE: 'cold',
    ...opts.env,
  });
  const hypervisor = new LibvirtHypervisor({ uri: config.libvirtUri });
  // The tests' own session, and the workers' own, as a worker process would have.
  const tests = await connectCloud(config);
  const cloud = await connectCloud({ ...config, glance: opts.glanceUrl ? { ...config.glance, url: opts.glanceUrl } : config.glance });
  const madeImages = new Set<string>();
  const recording = recordCreated(cloud.imageService, madeImages);
  const worker = await startVmsnapWorker(config, {
    roles: ['main', 'host'],
    cloud,
    overrides: {
      hypervisor: opts.wrapHypervisor ? opts.wrapHypervisor(hypervisor) : hypervisor,
      imageService: opts.wrapImageService ? opts.wrapImageService(recording) : recording,
      ...(opts.wrapDiskTool ? { diskTool: opts.wrapDiskTool(qemuImg) } : {}),
    },
  });
  return {
    config,
    store: worker.store,
    client: worker.client,
    hypervisor,
    glance: tests.imageService,
    glanceUrl: tests.glanceUrl,
    cloud,
    madeImages,
    guestsDir: join(config.dataDir, 'guests'),
    assetsDir: join(config.dataDir, 'guest-assets'),
    async close() {
      await worker.shutdown();
      for (const id of madeImages) await tests.imageService.deleteImage(id).catch(() => undefined);
      await cloud.close();
      await tests.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The real image service; the id of every image created through it is noted. */
function recordCreated(real: ImageService, ids: Set<string>): ImageService {
  const recording = Object.create(real) as ImageService;
  recording.createImage = async (image) => {
    ids.add(image.id);
    return real.createImage(image);
  };
  return recording;
}
