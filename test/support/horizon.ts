// Horizon for the tests that need it: started through the stack (scripts/lib/horizon.ts) on the
// stack's settings (VMSNAP_HORIZON_PORT, the data dir), so that every other test pays nothing.
// Stopped again by close() only when this started it; `stack down` stops it in any case.
import { horizonService, horizonUrl } from '../../scripts/lib/horizon.js';
import { stackConfig } from '../../scripts/lib/stack.js';

export interface StackHorizon {
  /** Horizon's root, without the trailing slash. */
  url: string;
  close(): Promise<void>;
}

export async function startStackHorizon(): Promise<StackHorizon> {
  const cfg = stackConfig();
  const service = horizonService(cfg);
  const wasUp = (await service.status()).healthy;
  await service.up();
  return {
    url: horizonUrl(cfg),
    async close() {
      if (!wasUp) await service.down();
    },
  };
}
