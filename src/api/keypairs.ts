// GET /os-keypairs and /os-keypairs/{name}: vmsnap makes no instances, so it keeps no key pairs.
// Every user's list is empty, as Nova's for a user who has none, and any key pair is Nova's 404;
// Horizon's Key Pairs page then shows an empty table.
import type { FastifyInstance } from 'fastify';
import { notFound } from './errors.js';

export function keypairRoutes(app: FastifyInstance): void {
  app.get('/os-keypairs', async () => ({ keypairs: [] }));
  app.get<{ Params: { name: string } }>('/os-keypairs/:name', async (req) => {
    throw notFound(`Keypair ${req.params.name} not found for user ${req.caller.userId}`);
  });
}
