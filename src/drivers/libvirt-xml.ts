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
  /** Target bus (virtio, scsi, sata, ide ...); '' when the XML names none. */
  bus: string;
  /** The image a local (file or block) disk reads, if it has one. */
  path?: string;
  /** Format QEMU uses for it (<driver type>; raw when none is given). */
  format: string;
  readonly: boolean;
  shareable: boolean;
  /** The iothread that serves the disk (its <driver iothread>), if any. */
  iothread?: string;
}

/** Where a local disk's <source> names its image, by disk type. */
const SOURCE_OF: Record<string, (source: Record<string, string>) => string | undefined> = {
  file: (source) => source.file,
  block: (source) => source.dev,
};

/** Every <disk> of the domain, in order. */
export function domainDisks(xml: string): DomainDisk[] {
  const out: DomainDisk[] = [];
  const re = /<disk(\s[^>]*)?>([\s\S]*?)<\/disk>/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(xml)) !== null) {
    const a = attrs(m[1] ?? '');
    // The disk's own <source>/<driver> come before <backingStore> and <mirror>, which hold <source>s
    // of other images; cut there so those are never mistaken for the disk's. In a running domain's
    // XML <target> comes after <backingStore>; neither holds a <target>, so the first is the disk's.
    const whole = m[2] ?? '';
    const own = whole.split(/<backingStore\b|<mirror\b/)[0] ?? '';
    const driver = firstTagAttrs(own, 'driver');
    const target = firstTagAttrs(whole, 'target');
    const type = a.type ?? 'file';
    const path = SOURCE_OF[type]?.(firstTagAttrs(own, 'source') ?? {});
    out.push({
      device: a.device ?? 'disk',
      type,
      dev: target?.dev ?? '',
      bus: target?.bus ?? '',
      ...(path ? { path } : {}),
      // No driver type means libvirt lets QEMU treat the disk as raw.
      format: driver?.type ?? 'raw',
      readonly: /<readonly\s*\/>/.test(whole),
      shareable: /<shareable\s*\/>/.test(whole),
      ...(driver?.iothread ? { iothread: driver.iothread } : {}),
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
