// GET /os-server-groups and /os-server-groups/{id}: vmsnap places no instances, so there are no
// server groups. The list is empty, as Nova's for a project without any, and any group is Nova's
// 404; Horizon's Server Groups page then shows an empty table.
import type { FastifyInstance } from 'fastify';
import { notFound } from './errors.js';

export function serverGroupRoutes(app: FastifyInstance): void {
  app.get('/os-server-groups', async () => ({ server_groups: [] }));
  app.get<{ Params: { id: string } }>('/os-server-groups/:id', async (req) => {
    throw notFound(`Instance group ${req.params.id} could not be found.`);
  });
}
