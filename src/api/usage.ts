// GET /os-simple-tenant-usage/{tenant_id}: Nova's usage report of a project, which Horizon's
// Overview page shows. vmsnap does not meter instances (no flavors, no hours), so the report is
// Nova's answer for a project without usage: {"tenant_usage": {}}. Another project's report is
// the admins' (Nova's policy); the listing of every project's is the admins' too.
import type { FastifyInstance } from 'fastify';
import { authorize } from './policy.js';

export function usageRoutes(app: FastifyInstance): void {
  app.get('/os-simple-tenant-usage', async (req) => {
    authorize(req.caller, 'os_compute_api:os-simple-tenant-usage:list', { projectId: null });
    return { tenant_usages: [] };
  });
  app.get<{ Params: { tenantId: string } }>('/os-simple-tenant-usage/:tenantId', async (req) => {
    authorize(req.caller, 'os_compute_api:os-simple-tenant-usage:show', { projectId: req.params.tenantId });
    return { tenant_usage: {} };
  });
}
