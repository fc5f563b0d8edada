// The main job, end to end on this machine: dev stack up, a test guest running, a vmsnap worker,
// one snapshot (live where the host can) through the client, and proof that the guest runs on. Run by ./scripts/demo.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { acceptSnapshot } from '../src/client/acceptance.js';
import { getProgress } from '../src/client/snapshots.js';
import { loadConfig } from '../src/shared/config.js';
import { installRuntime } from '../src/worker/observability.js';
import { startVmsnapWorker } from '../src/worker/vmsnap-worker.js';
import { LIBVIRT_URI, createGuest, guestState, readCounter } from './lib/guest.js';
import { horizonService, horizonUrl } from './lib/horizon.js';
import { clientEnv, services, stackConfig } from './lib/stack.js';

// Worker lifecycle chatter would bury the demo's own output: warnings and errors only.
installRuntime({ logLevel: 'WARN' });

const GUEST = 'vmsnap-demo';

async function main(): Promise<void> {
  const stack = stackConfig();
  console.log('== dev stack');
  for (const service of services(stack)) {
    const s = await service.up();
    console.log(`   ${s.name}: ${Object.values(s.endpoints).join(' ')}`);
  }
  const config = loadConfig({ ...process.env, ...clientEnv(stack) });

  console.log(`== guest ${GUEST}`);
  const guestsDir = join(stack.dataDir, 'guests');
  const diskPath = join(guestsDir, GUEST, 'disk.qcow2');
  // Reuse the demo guest only if it runs from this data dir; createGuest replaces any other.
  if ((await guestState(GUEST)) !== 'running' || !existsSync(diskPath)) {
    await createGuest({ name: GUEST, guestsDir, assetsDir: join(stack.dataDir, 'guest-assets') });
  }
  console.log(`   running; counter on disk: ${(await readCounter(diskPath, 'qcow2')).a}`);

  console.log('== worker (main + host queues)');
  const worker = await startVmsnapWorker(config, { roles: ['main', 'host'] });
  console.log(`   Glance ${worker.glanceUrl} from the catalog of Keystone, as ${worker.identity}`);
  const client = worker.client;
  try {
    console.log('== snapshot');
    // The workflow id is made from the instance's UUID; the answer comes once the task state is taken.
    const instanceId = (await execa('virsh', ['-c', LIBVIRT_URI, 'domuuid', GUEST])).stdout.trim();
    const request = { instance: instanceId, imageName: `${GUEST}-${new Date().toISOString()}` };
    const { handle, accepted } = await acceptSnapshot(client, request, { instanceId, taskQueue: config.temporal.taskQueue, acceptTimeoutMs: 120_000 });
    console.log(`   workflow ${handle.workflowId}, image ${accepted.imageId} (task state ${accepted.taskState})`);
    let lastPhase = '';
    const watch = (async () => {
      for (;;) {
        const p = await getProgress(handle).catch(() => undefined);
        if (p && p.phase !== lastPhase) console.log(`   phase: ${(lastPhase = p.phase)}`);
        if (p?.phase === 'completed' || p?.phase === 'failed') return;
        await sleep(100);
      }
    })();
    const result = await handle.result();
    await watch;
    const before = await readCounter(diskPath, 'qcow2');
    await sleep(1000);
    const after = await readCounter(diskPath, 'qcow2');

    console.log('== result');
    console.log(`   image id        ${result.imageId} (active in Glance ${worker.glanceUrl}, as ${worker.identity})`);
    console.log(`   size            ${result.size} bytes (${result.diskFormat}, virtual ${result.virtualSize})`);
    console.log(`   sha512          ${result.sha512}`);
    console.log(`   mode            ${result.mode}${result.modeReason ? ` (${result.modeReason})` : ''}, ${result.consistency}`);
    console.log(`   guest pause     ${result.guestPauseMs} ms (as the guest saw it)`);
    console.log(`   phases (ms)     ${JSON.stringify(result.phaseDurationsMs)}`);
    console.log(`   guest           ${await guestState(GUEST)}, counter ${before.a} -> ${after.a} one second later`);
    console.log(`   Web UI          ${clientEnv(stack).VMSNAP_TEMPORAL_UI_URL}/namespaces/${config.temporal.namespace}/workflows/${handle.workflowId}`);
    if (after.a <= before.a) throw new Error('the guest is not counting after the snapshot');
  } finally {
    await worker.shutdown();
  }
  console.log("== the same through Nova's API (the stack's compute endpoint; it needs a worker running, e.g. `npm run worker` in that environment)");
  console.log(`   eval "$(npm run -s stack -- env)"; openstack server image create --name ${GUEST}-nova --wait ${GUEST}`);
  console.log(
    `   Horizon: ${(await horizonService(stack).status()).healthy ? `${horizonUrl(stack)}/` : 'start it with `npm run stack -- up --horizon`'} (docs/horizon.md)`,
  );
  console.log(`The stack and the guest keep running: stop them with \`npm run stack -- down\`.`);
}

main().then(
  () => process.exit(0),
  (err: Error) => {
    console.error(`demo: ${err.message}`);
    process.exit(1);
  },
);
