// A real HTTP reverse proxy on 127.0.0.1 that sits in front of a service (Glance, or Keystone over
// HTTPS with the stack's CA) and injects
// faults on request: a fixed status without forwarding, a delay, a connection reset, a flipped
// byte either way. Bodies are streamed both ways, never buffered whole, so multi-GiB uploads pass
// through it too. It counts what it saw of each request (bytes each way, resets, when it ended):
// the evidence that a fault fired, and where.
import {
  Agent,
  request as httpRequest,
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type ServerResponse,
} from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import { Transform } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';

export type FaultAction =
  /** Answer this status (and body) at once, without forwarding; the request body is drained. */
  | { kind: 'status'; status: number; body?: string }
  /** Wait, then forward as usual. */
  | { kind: 'delay'; delayMs: number }
  /**
   * Destroy the client's connection with no answer. With afterBytes the request is forwarded
   * first and the reset happens once that many request-body bytes have gone upstream (an upload
   * that dies halfway); without it the reset is immediate and nothing reaches upstream.
   */
  | { kind: 'reset'; afterBytes?: number }
  /** Forward, reading the request body evenly over this long (a slow link): a long upload. */
  | { kind: 'stretch'; ms: number }
  /** Forward, but flip (xor 0xff) the byte at this offset of the response body: a corrupt download. */
  | { kind: 'flip'; atByte: number }
  /** Forward, but flip (xor 0xff) the byte at this offset of the request body: an upload corrupted on the way. */
  | { kind: 'flip-request'; atByte: number }
  /** Forward, but cut the connection after this many bytes of the response body: a server dying mid-download. */
  | { kind: 'cut'; afterBytes: number }
  /** Read the whole request body and never answer (a server hung after taking the data). */
  | { kind: 'silent' }
  /**
   * Forward, and once this many request-body bytes have gone upstream, cut the client's connection
   * but keep the one upstream open with nothing more on it (a link that died on the client's side
   * only): Glance keeps such an upload going, its image saving, until releaseHeld() or close().
   */
  | { kind: 'hold'; afterBytes: number };

export type FaultRule = FaultAction & {
  /** HTTP method to match (any when absent). */
  method?: string;
  /** Matched against the request path including the query string. */
  path: RegExp;
  /** Apply to the first N matching requests only; afterwards they are forwarded normally. */
  times?: number;
};

export interface ProxiedRequest {
  method: string;
  path: string;
  /** The status the client got: upstream's, the injected one, 502 if upstream failed, 0 for a reset. */
  status: number;
  /** The request headers as received (tests check what a client sent, e.g. its auth header). */
  headers: IncomingHttpHeaders;
  /** The rule that applied to it, if any. */
  fault?: FaultAction['kind'];
  /** Request body bytes received from the client so far. */
  bytesIn: number;
  /** Response body bytes sent to the client so far. */
  bytesOut: number;
  /** The proxy cut the client's connection (a reset or cut fault). */
  reset: boolean;
  /** When it came in, and when the exchange ended (answered in full, or the connection closed); Date.now(). */
  startedAt: number;
  endedAt?: number;
  /** The answer reached the client in full. */
  complete: boolean;
}

export interface FaultProxy {
  url: string;
  /** Replaces all rules with this one (undefined: no faults, plain forwarding). */
  setRule(rule: FaultRule | undefined): void;
  /** Replaces all rules; the first matching rule with times left applies. */
  setRules(rules: FaultRule[]): void;
  requests: ProxiedRequest[];
  /** Waits until `count` requests were cut (reset), or `timeoutMs` is up: a client may come late, or not at all. */
  untilReset(count: number, timeoutMs: number): Promise<void>;
  /** Ends the upstream connections a 'hold' rule kept open. */
  releaseHeld(): void;
  /** Waits until a request matches, and returns it; throws naming `what` when `timeoutMs` is up. */
  until(what: string, match: (r: ProxiedRequest) => boolean, timeoutMs?: number): Promise<ProxiedRequest>;
  close(): Promise<void>;
}

// Hop-by-hop headers belong to one connection and must not be forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade']);

function endToEnd(headers: IncomingMessage['headers']): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !HOP_BY_HOP.has(name)) out[name] = value;
  }
  return out;
}

export async function startFaultProxy(targetUrl: string, opts: { ca?: Buffer } = {}): Promise<FaultProxy> {
  const target = new URL(targetUrl);
  const tls = target.protocol === 'https:';
  const agent = tls ? new HttpsAgent({ keepAlive: true, ca: opts.ca }) : new Agent({ keepAlive: true });
  const send = tls ? httpsRequest : httpRequest;
  let rules: { rule: FaultRule; left: number }[] = [];
  const requests: ProxiedRequest[] = [];
  const held = new Set<{ destroy(): void }>();

  function matchRule(method: string, path: string): FaultRule | undefined {
    for (const entry of rules) {
      if (entry.left <= 0) continue;
      if (entry.rule.method !== undefined && entry.rule.method.toUpperCase() !== method) continue;
      if (!entry.rule.path.test(path)) continue;
      entry.left -= 1;
      return entry.rule;
    }
    return undefined;
  }

  function forward(
    req: IncomingMessage,
    res: ServerResponse,
    record: ProxiedRequest,
    resetAfterBytes?: number,
    stretchMs?: number,
    flipAt?: number,
    cutAfter?: number,
    holdAfter?: number,
    requestFlipAt?: number,
  ): void {
    const headers = endToEnd(req.headers);
    headers.host = target.host;
    const upstream = send({
      protocol: target.protocol,
      hostname: target.hostname,
      port: target.port,
      method: req.method,
      path: req.url,
      headers,
      agent,
    });

    let done = false;
    res.on('finish', () => {
      record.complete = true;
      record.endedAt ??= Date.now();
    });
    res.on('close', () => (record.endedAt ??= Date.now()));
    upstream.on('response', (up) => {
      record.status = up.statusCode ?? 0;
      // Bytes for the client; a cut counts only what it let through.
      if (cutAfter === undefined) up.on('data', (chunk: Buffer) => (record.bytesOut += chunk.length));
      res.writeHead(up.statusCode ?? 502, up.statusMessage, endToEnd(up.headers));
      if (cutAfter !== undefined) {
        let sent = 0;
        up.on('data', (chunk: Buffer) => {
          if (sent + chunk.length >= cutAfter) {
            record.reset = true;
            const head = chunk.subarray(0, Math.max(0, cutAfter - sent));
            record.bytesOut += head.length;
            res.write(head, () => res.socket?.destroy());
            up.destroy();
            sent = cutAfter;
            return;
          }
          sent += chunk.length;
          record.bytesOut += chunk.length;
          if (!res.write(chunk)) up.pause();
        });
        res.on('drain', () => up.resume());
        up.on('end', () => res.end());
      } else if (flipAt === undefined) {
        up.pipe(res);
      } else {
        let offset = 0;
        up.pipe(
          new Transform({
            transform(chunk: Buffer, _encoding, callback) {
              if (flipAt >= offset && flipAt < offset + chunk.length) {
                const copy = Buffer.from(chunk);
                copy[flipAt - offset] = copy[flipAt - offset]! ^ 0xff;
                chunk = copy;
              }
              offset += chunk.length;
              callback(null, chunk);
            },
          }),
        ).pipe(res);
      }
      up.on('error', () => res.destroy());
    });
    upstream.on('error', (err) => {
      if (done) return;
      done = true;
      if (res.headersSent) {
        res.destroy();
        return;
      }
      record.status = 502;
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`fault-proxy: upstream failed: ${err.message}\n`);
      req.resume();
    });
    // The client went away (or we reset it): stop the upstream request too, as a real
    // connection loss would (unless the rule holds it open).
    res.on('close', () => {
      if (!res.writableFinished && !held.has(upstream)) upstream.destroy();
    });

    // Pump the body by hand so bytes can be counted for a mid-body reset; backpressure is kept
    // by pausing the client while upstream's buffer is full.
    let forwarded = 0;
    const started = Date.now();
    const length = Number(req.headers['content-length'] ?? 0);
    let holdUntil = 0;
    req.on('data', (chunk: Buffer) => {
      if (holdAfter !== undefined && forwarded + chunk.length >= holdAfter) {
        const head = chunk.subarray(0, Math.max(0, holdAfter - forwarded));
        forwarded += head.length;
        done = true;
        record.status = 0;
        record.reset = true;
        record.bytesIn += head.length;
        record.endedAt = Date.now();
        req.pause();
        held.add(upstream);
        upstream.write(head, () => req.socket.destroy());
        return;
      }
      if (resetAfterBytes !== undefined && forwarded + chunk.length >= resetAfterBytes) {
        const head = chunk.subarray(0, Math.max(0, resetAfterBytes - forwarded));
        forwarded += head.length;
        done = true;
        record.status = 0;
        record.reset = true;
        record.bytesIn += head.length;
        req.pause();
        const reset = (): void => {
          upstream.destroy();
          req.socket.destroy();
        };
        // Let the bytes before the cut reach upstream first, so it sees a truncated body.
        if (head.length > 0) upstream.write(head, reset);
        else reset();
        return;
      }
      if (requestFlipAt !== undefined && requestFlipAt >= forwarded && requestFlipAt < forwarded + chunk.length) {
        const copy = Buffer.from(chunk);
        copy[requestFlipAt - forwarded] = copy[requestFlipAt - forwarded]! ^ 0xff;
        chunk = copy;
      }
      forwarded += chunk.length;
      record.bytesIn += chunk.length;
      if (!upstream.write(chunk)) req.pause();
      if (stretchMs !== undefined && length > 0) {
        // Hold the client back until this many bytes are due.
        const wait = started + (forwarded / length) * stretchMs - Date.now();
        if (wait > 0) {
          holdUntil = Date.now() + wait;
          req.pause();
          setTimeout(() => {
            if (!done && upstream.writableNeedDrain === false) req.resume();
          }, wait);
        }
      }
    });
    upstream.on('drain', () => {
      if (!done && Date.now() >= holdUntil) req.resume();
    });
    req.on('end', () => {
      if (!done) upstream.end();
    });
    req.on('error', () => {
      if (!held.has(upstream)) upstream.destroy();
    });
  }

  const server = createServer((req, res) => {
    const method = req.method ?? 'GET';
    const path = req.url ?? '/';
    const record: ProxiedRequest = {
      method,
      path,
      status: 0,
      headers: req.headers,
      bytesIn: 0,
      bytesOut: 0,
      reset: false,
      startedAt: Date.now(),
      complete: false,
    };
    requests.push(record);
    const rule = matchRule(method, path);
    if (rule) record.fault = rule.kind;

    if (rule?.kind === 'status') {
      record.status = rule.status;
      // Read and discard whatever the client still sends, so it sees the answer rather than a
      // broken pipe, as it would from a server that rejects a body.
      req.on('data', (chunk: Buffer) => (record.bytesIn += chunk.length));
      res.on('finish', () => {
        record.complete = true;
        record.endedAt ??= Date.now();
      });
      const body = rule.body ?? `fault-proxy: injected ${rule.status}\n`;
      res.writeHead(rule.status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    if (rule?.kind === 'silent') {
      record.status = 0;
      // Every byte is taken; no answer follows until the client gives up.
      req.on('data', (chunk: Buffer) => (record.bytesIn += chunk.length));
      res.on('close', () => (record.endedAt ??= Date.now()));
      return;
    }
    if (rule?.kind === 'reset') {
      if (rule.afterBytes === undefined) {
        record.status = 0;
        record.reset = true;
        record.endedAt = Date.now();
        req.socket.destroy();
        return;
      }
      forward(req, res, record, rule.afterBytes);
      return;
    }
    if (rule?.kind === 'hold') {
      forward(req, res, record, undefined, undefined, undefined, undefined, rule.afterBytes);
      return;
    }
    if (rule?.kind === 'cut') {
      forward(req, res, record, undefined, undefined, undefined, rule.afterBytes);
      return;
    }
    if (rule?.kind === 'flip') {
      forward(req, res, record, undefined, undefined, rule.atByte);
      return;
    }
    if (rule?.kind === 'flip-request') {
      forward(req, res, record, undefined, undefined, undefined, undefined, undefined, rule.atByte);
      return;
    }
    if (rule?.kind === 'stretch') {
      forward(req, res, record, undefined, rule.ms);
      return;
    }
    if (rule?.kind === 'delay') {
      const timer = setTimeout(() => forward(req, res, record), rule.delayMs);
      res.on('close', () => clearTimeout(timer));
      return;
    }
    forward(req, res, record);
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    setRule(rule) {
      rules = rule ? [{ rule, left: rule.times ?? Infinity }] : [];
    },
    setRules(list) {
      rules = list.map((rule) => ({ rule, left: rule.times ?? Infinity }));
    },
    requests,
    async untilReset(count, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (requests.filter((r) => r.reset).length < count && Date.now() < deadline) await sleep(100);
    },
    async until(what, match, timeoutMs = 120_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = requests.find(match);
        if (found) return found;
        if (Date.now() > deadline) throw new Error(`the proxy saw no ${what} within ${timeoutMs} ms`);
        await sleep(50);
      }
    },
    releaseHeld() {
      for (const upstream of held) upstream.destroy();
      held.clear();
    },
    close() {
      for (const upstream of held) upstream.destroy();
      held.clear();
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        agent.destroy();
      });
    },
  };
}
