// GET /limits: Nova's absolute limits of the caller's project, as Horizon reads them for its
// overview and its Launch Instance button. vmsnap makes no instances, so the quotas for new ones
// (instances, cores, RAM) are 0, and what is in use counts the project's instances only: vmsnap
// does not meter cores or memory. Rate limits are an empty list, as in every Nova since Havana.
import type { FastifyInstance } from 'fastify';
import type { ApiDeps } from './deps.js';

/** Nova's fixed limits of what a server carries (its [quota] defaults), which vmsnap does not use. */
const FIXED = {
  maxServerMeta: 128,
  maxPersonality: 5,
  maxPersonalitySize: 10240,
  maxTotalKeypairs: 100,
  maxServerGroups: 10,
  maxServerGroupMembers: 10,
};
/** What microversion 2.36 dropped (the network proxies) and 2.39 (image metadata). */
const BEFORE_2_36 = { maxSecurityGroups: 10, maxSecurityGroupRules: 20, maxTotalFloatingIps: 10, totalFloatingIpsUsed: 0, totalSecurityGroupsUsed: 0 };
const BEFORE_2_39 = { maxImageMeta: 128 };

export function limitRoutes(app: FastifyInstance, deps: ApiDeps): void {
  app.get('/limits', async (req) => {
    const caller = req.caller;
    const instances = (await deps.store.listInstances()).filter((i) => !i.deletedAt && i.projectId === caller.projectId);
    const absolute: Record<string, number> = {
      ...FIXED,
      maxTotalInstances: 0,
      maxTotalCores: 0,
      maxTotalRAMSize: 0,
      totalInstancesUsed: instances.length,
      totalCoresUsed: 0,
      totalRAMUsed: 0,
      totalServerGroupsUsed: 0,
    };
    if (!req.apiVersion.atLeast('2.36')) Object.assign(absolute, BEFORE_2_36);
    if (!req.apiVersion.atLeast('2.39')) Object.assign(absolute, BEFORE_2_39);
    return { limits: { rate: [], absolute } };
  });
}
