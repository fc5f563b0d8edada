// Small XML helpers for libvirt's domain XML. libvirt writes well-formed, predictable XML; these
// read just what vmsnap needs, without an XML library.
import { NOVA_LIBVIRT_NAMESPACES, VMSNAP_LIBVIRT_NAMESPACE } from '../shared/names.js';
import type { InstanceOwner } from './hypervisor.js';

export function decodeEntities(s: string): string {
  return s.replace(/&(#x[0-9a-f]+|#\d+|amp|lt|gt|apos|quot);/gi, (_, e: string) => {
    switch (e.toLowerCase()) {
      case 'amp':
        return '&';
      case 'lt':
        return '<';
      case 'gt':
        return '>';
      case 'apos':
        return "'";
      case 'quot':
        return '"';
      default:
        return String.fromCodePoint(e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10));
    }
  });
}

export function encodeEntities(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

/** Attributes of a start tag's attribute text; values may be quoted with ' or ". */
export function attrs(tagText: string): Record<string, string> {
  const out: Record<string, string> = {};
  const re = /([\w:.-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(tagText)) !== null) {
    out[m[1] as string] = decodeEntities(m[2] ?? m[3] ?? '');
  }
  return out;
}

/** Attributes of the first <tag ...> in xml, or undefined. */
export function firstTagAttrs(xml: string, tag: string): Record<string, string> | undefined {
  const m = new RegExp(`<${tag}(\\s[^>]*)?/?>`).exec(xml);
  return m ? attrs(m[1] ?? '') : undefined;
}

/** Text of the first <tag>text</tag>. The domain's own <name>/<uuid> come first in libvirt's XML. */
export function firstText(xml: string, tag: string): string | undefined {
  const m = new RegExp(`<${tag}(?:\\s[^>]*)?>([^<]*)</${tag}>`).exec(xml);
  return m ? decodeEntities(m[1] ?? '').trim() : undefined;
}

export interface DomainDisk {
  /** 'disk', 'cdrom', 'floppy', 'lun'. */
  device: string;
  /** Source type: 'file', 'block', 'network', 'volume', ... */
  type: string;
  /** Target device name (vda, sda, ...): how libvirt's backup XML names the disk. */
  dev: string;
  /** The iothread that serves the disk (its <driver iothread>), if any. */
  iothread?: string;
}

/** Every <disk> of the domain, in order. */
export function domainDisks(xml: string): DomainDisk[] {
  const out: DomainDisk[] = [];
  const re = /<disk(\s[^>]*)?>([\s\S]*?)<\/disk>/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(xml)) !== null) {
    const a = attrs(m[1] ?? '');
    // In a running domain's XML <target> comes after <backingStore>; neither <backingStore> nor
    // <mirror> holds a <target>, so the first one in the body is the disk's.
    const iothread = firstTagAttrs(m[2] ?? '', 'driver')?.iothread;
    out.push({
      device: a.device ?? 'disk',
      type: a.type ?? 'file',
      dev: firstTagAttrs(m[2] ?? '', 'target')?.dev ?? '',
      ...(iothread ? { iothread } : {}),
    });
  }
  return out;
}

/** What domcapabilities needs to describe the QEMU this domain runs on. */
export interface DomainPlatform {
  virtType?: string;
  emulator?: string;
  arch?: string;
  machine?: string;
}

export function domainPlatform(xml: string): DomainPlatform {
  const os = /<os\b[^>]*>([\s\S]*?)<\/os>/.exec(xml)?.[1] ?? '';
  const type = firstTagAttrs(os, 'type') ?? {};
  const out: DomainPlatform = {};
  const virtType = firstTagAttrs(xml, 'domain')?.type;
  const emulator = firstText(xml, 'emulator');
  if (virtType) out.virtType = virtType;
  if (emulator) out.emulator = emulator;
  if (type.arch) out.arch = type.arch;
  if (type.machine) out.machine = type.machine;
  return out;
}

/** Keystone ids: hex UUIDs without dashes as a rule; anything else is not taken as an owner. */
const KEYSTONE_ID = /^[A-Za-z0-9_-]{1,64}$/;
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&');

/**
 * Who owns the instance, from the domain's <metadata>: Nova's <nova:owner> (<nova:user uuid="…">name
 * </nova:user>, <nova:project …>), else the same shape in vmsnap's namespace; whatever prefix the
 * namespace is declared with. Undefined when neither names a project or user.
 */
export function domainOwner(xml: string): InstanceOwner | undefined {
  const meta = /<metadata>([\s\S]*?)<\/metadata>/.exec(xml)?.[1];
  if (!meta) return undefined;
  for (const namespace of [...NOVA_LIBVIRT_NAMESPACES, VMSNAP_LIBVIRT_NAMESPACE]) {
    const owner = ownerIn(meta, namespace);
    if (owner) return owner;
  }
  return undefined;
}

function ownerIn(meta: string, namespace: string): InstanceOwner | undefined {
  const prefix = new RegExp(`xmlns:([\\w.-]+)\\s*=\\s*["']${escape(namespace)}["']`).exec(meta)?.[1];
  if (!prefix) return undefined;
  const p = escape(prefix);
  const body = new RegExp(`<${p}:owner(?:\\s[^>]*)?>([\\s\\S]*?)</${p}:owner>`).exec(meta)?.[1];
  if (!body) return undefined;
  const part = (tag: string): { id?: string; name?: string } => {
    const m = new RegExp(`<${p}:${tag}(\\s[^>]*?)?(?:/>|>([^<]*)</${p}:${tag}>)`).exec(body);
    if (!m) return {};
    const id = attrs(m[1] ?? '').uuid;
    const name = decodeEntities(m[2] ?? '').trim();
    return { ...(id && KEYSTONE_ID.test(id) ? { id } : {}), ...(name ? { name: name.slice(0, 255) } : {}) };
  };
  const user = part('user');
  const project = part('project');
  if (!user.id && !project.id) return undefined;
  return {
    ...(project.id ? { projectId: project.id } : {}),
    ...(user.id ? { userId: user.id } : {}),
    ...(project.name ? { projectName: project.name } : {}),
    ...(user.name ? { userName: user.name } : {}),
  };
}
