// Glance as the caller sees it: rebuild takes an image only when the caller's own token can read it
// (the workers act with their own identity, which may read more). The token goes to Glance in a
// header and nowhere else.
import { request } from 'undici';
import { errorCode } from '../drivers/http-errors.js';
import { VmsnapError } from '../shared/errors.js';
import type { ApiDeps } from './deps.js';
import { badRequest } from './errors.js';

/** Refuses, as Nova does for a rebuild, an image the caller cannot see (400). */
export async function checkImageVisible(deps: Pick<ApiDeps, 'glance'>, token: string, imageId: string): Promise<void> {
  let status: number;
  try {
    const res = await request(`${deps.glance.url}/v2/images/${encodeURIComponent(imageId)}`, {
      method: 'GET',
      headers: { 'x-auth-token': token, accept: 'application/json' },
      dispatcher: deps.glance.dispatcher,
    });
    status = res.statusCode;
    await res.body.dump();
  } catch (err) {
    throw new VmsnapError('ImageServiceUnavailable', `Glance at ${deps.glance.url} failed: ${errorCode(err) ?? (err as Error).message}`);
  }
  if (status === 200) return;
  if (status === 404 || status === 403) throw badRequest(`Image ${imageId} could not be found.`);
  throw new VmsnapError('ImageServiceUnavailable', `Glance at ${deps.glance.url} answered ${status} to a look-up of image ${imageId}`);
}

/** Where Glance serves an image, as Nova's Location header of createImage names it. */
export function imageUrl(deps: Pick<ApiDeps, 'glance'>, imageId: string): string {
  return `${deps.glance.url}/images/${imageId}`;
}
