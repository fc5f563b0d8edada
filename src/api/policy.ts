// Nova's default policy (its secure RBAC defaults) for what the API serves: a project's readers
// read its servers, its members act on them, admins read and act on every project's; another
// project's server is not found at all (404), as Nova's project-scoped lookup answers. Roles come
// from the Keystone token; admin implies member and member implies reader, as Keystone's implied
// roles make them.
import { forbidden } from './errors.js';

/** Who sends a request, as Keystone validated its token. */
export interface Caller {
  userId: string;
  userName: string;
  /** Null for a token that is not scoped to a project (Nova acts on projects only). */
  projectId: string | null;
  projectName: string | null;
  roles: string[];
}

/** Nova's rule names (os_compute_api:…) and who passes each. */
export const RULES = {
  'os_compute_api:servers:index': 'project-reader',
  'os_compute_api:servers:detail': 'project-reader',
  'os_compute_api:servers:index:get_all_tenants': 'admin',
  'os_compute_api:servers:detail:get_all_tenants': 'admin',
  'os_compute_api:servers:show': 'project-reader',
  'os_compute_api:os-extended-server-attributes': 'admin',
  'os_compute_api:servers:create_image': 'project-member',
  'os_compute_api:os-create-backup': 'project-member',
  'os_compute_api:servers:rebuild': 'project-member',
  'os_compute_api:os-instance-actions:list': 'project-reader',
  'os_compute_api:os-instance-actions:show': 'project-reader',
  'os_compute_api:os-instance-actions:events': 'admin',
  'os_compute_api:os-instance-actions:events:details': 'admin',
  'os_compute_api:os-simple-tenant-usage:show': 'project-reader',
  'os_compute_api:os-simple-tenant-usage:list': 'admin',
} as const;
export type Rule = keyof typeof RULES;

const IMPLIED: Record<string, string[]> = { admin: ['admin', 'member', 'reader'], member: ['member', 'reader'], reader: ['reader'] };

function hasRole(caller: Caller, role: 'admin' | 'member' | 'reader'): boolean {
  return caller.roles.some((r) => IMPLIED[r.toLowerCase()]?.includes(role));
}

export function isAdmin(caller: Caller): boolean {
  return hasRole(caller, 'admin');
}

/** Whether the caller passes the rule for a target project (its own for a listing). */
export function allowed(caller: Caller, rule: Rule, target: { projectId: string | null }): boolean {
  if (isAdmin(caller)) return true;
  const kind = RULES[rule];
  if (kind === 'admin') return false;
  const inProject = caller.projectId !== null && target.projectId === caller.projectId;
  return inProject && hasRole(caller, kind === 'project-member' ? 'member' : 'reader');
}

/** As allowed(), refusing with Nova's 403 when not. */
export function authorize(caller: Caller, rule: Rule, target: { projectId: string | null }): void {
  if (!allowed(caller, rule, target)) throw forbidden(`Policy doesn't allow ${rule} to be performed.`);
}

/** Whether the caller finds the server at all: admins find every one, others their project's. */
export function finds(caller: Caller, instance: { projectId: string | null }): boolean {
  return isAdmin(caller) || (caller.projectId !== null && instance.projectId === caller.projectId);
}
