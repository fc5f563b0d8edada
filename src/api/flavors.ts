// GET /flavors, /flavors/detail and /flavors/{id}: vmsnap makes no instances, so it has no flavors.
// The lists are empty and every flavor is Nova's 404, as for a cloud whose flavors were all
// deleted; Horizon's Instances page then shows an instance's size as not available.
import type { FastifyInstance } from 'fastify';
import { notFound } from './errors.js';

export function flavorRoutes(app: FastifyInstance): void {
  app.get('/flavors', async () => ({ flavors: [] }));
  app.get('/flavors/detail', async () => ({ flavors: [] }));
  app.get<{ Params: { id: string } }>('/flavors/:id', async (req) => {
    throw notFound(`Flavor ${req.params.id} could not be found.`);
  });
}
