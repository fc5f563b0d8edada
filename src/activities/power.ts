// Power state of the instance on its host. Pause and resume are idempotent, so a retry after a
// lost completion is harmless; the workflow reads the prior state before pausing, so that a
// retried pause can never make a running VM look "already paused" and stay paused.
import type { ActivityDeps } from './deps.js';
import type { PowerState } from '../drivers/hypervisor.js';
import { VmsnapError } from '../shared/errors.js';

export function powerActivities({ hypervisor }: ActivityDeps) {
  return {
    async getPowerState(instanceId: string): Promise<PowerState> {
      return (await hypervisor.getInstance(instanceId)).powerState;
    },

    async pauseInstance(instanceId: string): Promise<{ pausedAt: number }> {
      await hypervisor.pause(instanceId);
      return { pausedAt: Date.now() };
    },

    /**
     * Runs on every path, also as compensation. An instance that is gone or no longer paused
     * (shut down, crashed) has nothing to resume: that is reported, not retried forever.
     */
    async resumeInstance(instanceId: string): Promise<{ resumedAt: number; outcome: 'resumed' | 'gone' | 'not-paused' }> {
      try {
        await hypervisor.resume(instanceId);
        return { resumedAt: Date.now(), outcome: 'resumed' };
      } catch (err) {
        if (err instanceof VmsnapError && err.code === 'InstanceNotFound') return { resumedAt: Date.now(), outcome: 'gone' };
        if (err instanceof VmsnapError && err.code === 'InstanceInvalidState') return { resumedAt: Date.now(), outcome: 'not-paused' };
        throw err;
      }
    },
  };
}
