// The API's HTTP server (fastify): version discovery open to all, everything under /v2.1 behind
// Keystone and at a negotiated microversion, and every error in Nova's shape. Routes are grouped
// under /v2.1 by what they serve (servers, actions, instance actions); what it does not serve is
// Nova's 404; what Horizon's pages read besides servers (flavors, limits, usage, key pairs, server groups) is Nova's answer for a cloud without them.
import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyRequest } from 'fastify';
import { isGrpcServiceError } from '@temporalio/client';
import { VmsnapError } from '../shared/errors.js';
import { actionRoutes } from './actions.js';
import type { ApiDeps } from './deps.js';
import { ApiError, faultBody, forbidden, fromVmsnapError, notFound, unauthorized, unexpected } from './errors.js';
import { flavorRoutes } from './flavors.js';
import { instanceActionRoutes } from './instance-actions.js';
import { keypairRoutes } from './keypairs.js';
import { limitRoutes } from './limits.js';
import { baseUrlOf } from './request.js';
import { serverGroupRoutes } from './server-groups.js';
import { serverRoutes } from './servers.js';
import { usageRoutes } from './usage.js';
import { negotiate, versionDocument, versionHeaders, versionsDocument } from './versions.js';

/** Nova's [oslo_middleware] max_request_body_size: larger bodies are refused before they are read. */
export const MAX_BODY_BYTES = 114_688;

export interface AppOptions {
  /** pino's level, or false for no request log (tests). */
  logLevel: string | false;
}

export function buildApp(deps: ApiDeps, opts: AppOptions): FastifyInstance {
  const app = Fastify({
    logger: opts.logLevel === false ? false : { level: opts.logLevel },
    disableRequestLogging: true,
    bodyLimit: MAX_BODY_BYTES,
    genReqId: () => `req-${randomUUID()}`,
    requestIdHeader: false,
    routerOptions: { ignoreTrailingSlash: true },
  });
  // JSON only, as Nova: any other body is its 415.
  app.removeContentTypeParser('text/plain');
  app.decorateRequest('caller', null as never);
  app.decorateRequest('token', '');
  app.decorateRequest('apiVersion', null as never);

  app.addHook('onRequest', async (req, reply) => {
    reply.header('x-openstack-request-id', req.id);
    reply.header('x-compute-request-id', req.id);
  });
  // One line per request: who, what, how it ended. Never the token or the body.
  app.addHook('onResponse', async (req, reply) => {
    req.log.info(
      { method: req.method, path: req.url.split('?')[0], status: reply.statusCode, ms: Math.round(reply.elapsedTime), user: req.caller?.userId },
      'request',
    );
  });
  app.setErrorHandler((err: FastifyError, req, reply) => {
    const answer = asApiError(err, req);
    if (answer.status >= 500 && !(err instanceof ApiError)) req.log.error({ err }, 'request failed');
    return reply
      .code(answer.status)
      .headers(answer.headers)
      .send(answer.body ?? faultBody(answer.status, answer.message));
  });
  app.setNotFoundHandler((_req, reply) => reply.code(404).send(faultBody(404, 'The resource could not be found.')));

  // Version discovery: open, as Nova's; clients read it before they ask for a microversion.
  app.get('/', async (req) => versionsDocument(baseUrlOf(req, deps)));
  app.get('/v2.1', async (req) => versionDocument(baseUrlOf(req, deps)));

  app.register(
    async (v21) => {
      // Let in (Keystone, as keystonemiddleware in front of Nova), at the microversion asked for.
      const letIn = async (req: FastifyRequest) => {
        await authenticate(deps, req);
        req.apiVersion = negotiate(req.headers);
      };
      v21.addHook('onRequest', letIn);
      v21.addHook('onSend', async (req, reply) => {
        if (req.apiVersion) reply.headers(versionHeaders(req.apiVersion));
      });
      serverRoutes(v21, deps);
      actionRoutes(v21, deps);
      instanceActionRoutes(v21, deps);
      // What Horizon's pages read besides servers: vmsnap has none of them, and answers as Nova does then.
      flavorRoutes(v21);
      limitRoutes(v21, deps);
      usageRoutes(v21);
      keypairRoutes(v21);
      serverGroupRoutes(v21);
      // Unknown paths under /v2.1 are Nova's 404, once the request is let in.
      v21.setNotFoundHandler({ preHandler: letIn }, async () => {
        throw notFound('The resource could not be found.');
      });
    },
    { prefix: '/v2.1' },
  );
  return app;
}

/** Lets in a request whose X-Auth-Token Keystone accepts, scoped to a project. */
async function authenticate(deps: ApiDeps, req: FastifyRequest): Promise<void> {
  const token = req.headers['x-auth-token'];
  if (typeof token !== 'string' || token === '') throw unauthorized(deps.keystoneUrl);
  const caller = await deps.tokens.validate(token);
  if (!caller) throw unauthorized(deps.keystoneUrl);
  if (caller.projectId === null) throw forbidden('The token is not scoped to a project: servers belong to projects, so ask for a project-scoped token.');
  req.caller = caller;
  req.token = token;
}

/** Fastify's own errors (body too large, malformed, wrong media type), vmsnap's and Temporal's, as Nova answers them. */
function asApiError(err: FastifyError, req: FastifyRequest): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof VmsnapError) return fromVmsnapError(err) ?? unexpected(req.id);
  if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return new ApiError(413, 'Request is too large.');
  if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return new ApiError(415, 'Unsupported Content-Type');
  if (err.statusCode === 400 && (err.code?.startsWith('FST_ERR_CTP') || err instanceof SyntaxError)) return new ApiError(400, 'Malformed request body');
  // Temporal out of reach: the request can be tried again later.
  const grpc: unknown = err;
  if (isGrpcServiceError(grpc) && (grpc.code === 14 || grpc.code === 4))
    return new ApiError(503, 'The workflow service (Temporal) is not reachable now; try again later.');
  return unexpected(req.id);
}
