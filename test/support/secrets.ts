// The secrets scan: looks for each secret in what a workflow left in Temporal (every payload
// decoded: inputs, results, heartbeat details, memo, search attributes, markers, failures with
// their causes) and in log files, in every form it could take there: as is, JSON-escaped, and
// base64-encoded at any of the three byte offsets it may start at.
import { readFileSync } from 'node:fs';

export interface Secret {
  name: string;
  value: string;
}

export interface Finding {
  /** Where it was: "history event 1 (workflowExecutionStarted…input…)", "log worker.log line 12". */
  where: string;
  secret: string;
  form: 'plain' | 'JSON-escaped' | 'base64';
}

/**
 * The part of base64(prefix + secret + suffix) that only the secret's bytes decide, for a secret
 * starting `offset` bytes (0, 1 or 2) into a 3-byte group: found in any base64 text that encodes it.
 */
export function base64Core(secret: string, offset: number): string {
  const bytes = Buffer.from(secret, 'utf8');
  const encoded = Buffer.concat([Buffer.alloc(offset), bytes, Buffer.alloc(2)]).toString('base64');
  // Character i holds bits [6i, 6i + 6); the secret's bits are [8 offset, 8 (offset + length)).
  const first = Math.ceil((8 * offset) / 6);
  const last = Math.floor((8 * (offset + bytes.length) - 6) / 6);
  return encoded.slice(first, last + 1);
}

function forms(secret: string): { form: Finding['form']; text: string }[] {
  const escaped = JSON.stringify(secret).slice(1, -1);
  return [
    { form: 'plain', text: secret },
    ...(escaped !== secret ? [{ form: 'JSON-escaped' as const, text: escaped }] : []),
    ...[0, 1, 2].map((offset) => ({ form: 'base64' as const, text: base64Core(secret, offset) })),
  ];
}

/** Every secret found in one text. Secrets shorter than 8 characters cannot be told from chance and are refused. */
export function scanText(where: string, text: string, secrets: Secret[]): Finding[] {
  const found: Finding[] = [];
  for (const s of secrets) {
    if (s.value.length < 8) throw new Error(`secret ${s.name} is too short (${s.value.length} characters) to scan for`);
    for (const f of forms(s.value)) if (text.includes(f.text)) found.push({ where, secret: s.name, form: f.form });
  }
  return found;
}

/**
 * Every text inside an object Temporal gave back (a history, a description): strings as they are,
 * and each byte array (a payload's data or metadata, a failure's encoded attributes) decoded as
 * UTF-8, and again as JSON when it is JSON, with every string inside it, so an escaped secret reads
 * as itself. The path says where each came from.
 */
export function decodedTexts(value: unknown, path = ''): { path: string; text: string }[] {
  if (typeof value === 'string') return [{ path, text: value }];
  if (value instanceof Uint8Array) {
    const text = Buffer.from(value).toString('utf8');
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      return [{ path, text }];
    }
    return [{ path, text }, ...decodedTexts(parsed, `${path}(decoded)`)];
  }
  if (Array.isArray(value)) return value.flatMap((v, i) => decodedTexts(v, `${path}[${i}]`));
  if (value && typeof value === 'object') {
    return Object.entries(value).flatMap(([k, v]) => [{ path: `${path}.${k}`, text: k }, ...decodedTexts(v, path ? `${path}.${k}` : k)]);
  }
  return [];
}

/** Scans everything Temporal keeps of a workflow (its history and its description), decoded. */
export function scanTemporal(what: string, records: unknown[], secrets: Secret[]): Finding[] {
  return records.flatMap((record, i) => decodedTexts(record).flatMap((t) => scanText(`${what} ${i}: ${t.path}`, t.text, secrets)));
}

/** Scans log files, line by line (the worker's today; an API service's beside it). */
export function scanLogFiles(files: string[], secrets: Secret[]): Finding[] {
  return files.flatMap((file) =>
    readFileSync(file, 'utf8')
      .split('\n')
      .flatMap((line, i) => scanText(`log ${file} line ${i + 1}`, line, secrets)),
  );
}
