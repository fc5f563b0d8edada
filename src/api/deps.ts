// What the API's routes need: the store (inventory, task states, faults, action events), Temporal
// (snapshot and restore workflows are started through the programmatic client, never their
// activities), Keystone's token checks, and Glance for the caller's own image look-ups.
import type { Client } from '@temporalio/client';
import type { Dispatcher } from 'undici';
import type { Store } from '../store/store.js';
import type { Caller } from './policy.js';

export interface ApiDeps {
  store: Store;
  client: Client;
  /** The main task queue the snapshot and restore workflows run on. */
  taskQueue: string;
  /** Keystone's answer about a token (TokenValidator): its caller, or undefined for a token it does not accept. */
  tokens: { validate(token: string): Promise<Caller | undefined> };
  /** Keystone's URL, named in WWW-Authenticate when a request has no valid token. */
  keystoneUrl: string;
  /** Glance, for the images a caller may see (with the caller's token) and image links. */
  glance: { url: string; dispatcher: Dispatcher };
  /** The URL clients reach the API at; else taken from each request's Host. */
  publicUrl?: string;
  /** How long an action waits for a worker to accept it. */
  acceptTimeoutMs: number;
}
