// GET /servers, /servers/detail and /servers/{id}: the inventory as Nova lists servers, each
// caller seeing their project's (admins every project's with all_tenants), with Nova's filters
// name, status, project_id/tenant_id and host (admins), and its paging (limit, marker).
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { UUID_PATTERN } from '../shared/validation.js';
import type { InstanceRecord } from '../store/store.js';
import type { ApiDeps } from './deps.js';
import { badRequest, notFound } from './errors.js';
import { authorize, finds, isAdmin, type Caller } from './policy.js';
import { baseUrlOf } from './request.js';
import { serverSummary, serverView, statusOf } from './server-view.js';

/** Nova's [api] max_limit: the most servers one page holds. */
const MAX_LIMIT = 1000;

/** The server the caller means, or Nova's 404: unknown, gone, or another project's (for a non-admin). */
export async function findServer(deps: ApiDeps, caller: Caller, id: string): Promise<InstanceRecord> {
  const instance = UUID_PATTERN.test(id) ? await deps.store.getInstance(id.toLowerCase()) : undefined;
  if (!instance || instance.deletedAt || !finds(caller, instance)) throw notFound(`Instance ${id} could not be found.`);
  return instance;
}

type Query = Record<string, string | string[] | undefined>;

const one = (value: string | string[] | undefined): string | undefined => (Array.isArray(value) ? value.at(-1) : value);
const all = (value: string | string[] | undefined): string[] => [value ?? []].flat();

/** Nova's is_all_tenants: present and not one of the false words. */
function allTenants(query: Query): boolean {
  const value = one(query.all_tenants);
  if (value === undefined) return false;
  return !['0', 'f', 'false', 'off', 'n', 'no'].includes(value.trim().toLowerCase());
}

function limitOf(query: Query): number {
  const raw = one(query.limit);
  if (raw === undefined) return MAX_LIMIT;
  const limit = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(limit)) throw badRequest('limit param must be an integer');
  return Math.min(limit, MAX_LIMIT);
}

/** The caller's servers that match the query's filters, newest first (Nova's created_at, id order). */
async function listFor(deps: ApiDeps, caller: Caller, query: Query, detail: boolean): Promise<InstanceRecord[]> {
  const everyProject = allTenants(query);
  if (everyProject) authorize(caller, detail ? 'os_compute_api:servers:detail:get_all_tenants' : 'os_compute_api:servers:index:get_all_tenants', caller);
  authorize(caller, detail ? 'os_compute_api:servers:detail' : 'os_compute_api:servers:index', caller);
  const project = everyProject ? (one(query.project_id) ?? one(query.tenant_id)) : (caller.projectId ?? undefined);
  const name = one(query.name)?.toLowerCase();
  const statuses = all(query.status).map((s) => s.toUpperCase());
  // Filters by host are the admins' (Nova ignores them for others).
  const host = isAdmin(caller) ? one(query.host) : undefined;
  const found = (await deps.store.listInstances()).filter(
    (i) =>
      finds(caller, i) &&
      (project === undefined || i.projectId === project) &&
      // Nova matches names by regular expression; vmsnap by substring, case-insensitive (no
      // regular expression from a request runs here).
      (name === undefined || i.name.toLowerCase().includes(name)) &&
      (statuses.length === 0 || statuses.includes(statusOf(i))) &&
      (host === undefined || i.host === host),
  );
  return found.sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.id.localeCompare(a.id));
}

/** One page: the servers after the marker, at most `limit`. */
function page(servers: InstanceRecord[], query: Query): { servers: InstanceRecord[]; more: boolean } {
  const marker = one(query.marker);
  let start = 0;
  if (marker !== undefined) {
    const at = servers.findIndex((s) => s.id === marker);
    if (at < 0) throw badRequest(`marker [${marker}] not found`);
    start = at + 1;
  }
  const limit = limitOf(query);
  return { servers: servers.slice(start, start + limit), more: servers.length > start + limit };
}

export function serverRoutes(app: FastifyInstance, deps: ApiDeps): void {
  const list = async (req: FastifyRequest, detail: boolean) => {
    const query = req.query as Query;
    const { servers, more } = page(await listFor(deps, req.caller, query, detail), query);
    const baseUrl = baseUrlOf(req, deps);
    const context = { caller: req.caller, version: req.apiVersion, baseUrl };
    const body: Record<string, unknown> = { servers: servers.map((s) => (detail ? serverView(s, context) : serverSummary(s, baseUrl))) };
    if (more && servers.length > 0) {
      const next = new URLSearchParams({ ...Object.fromEntries(Object.entries(query).map(([k, v]) => [k, one(v) ?? ''])), marker: servers.at(-1)!.id });
      body.servers_links = [{ rel: 'next', href: `${baseUrl}/v2.1/servers${detail ? '/detail' : ''}?${next}` }];
    }
    return body;
  };
  app.get('/servers', (req) => list(req, false));
  app.get('/servers/detail', (req) => list(req, true));
  app.get<{ Params: { id: string } }>('/servers/:id', async (req) => {
    const instance = await findServer(deps, req.caller, req.params.id);
    authorize(req.caller, 'os_compute_api:servers:show', instance);
    return { server: serverView(instance, { caller: req.caller, version: req.apiVersion, baseUrl: baseUrlOf(req, deps) }) };
  });
}
