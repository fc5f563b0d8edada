// Minimal "newc" cpio writer for the guest's initramfs.
export interface CpioEntry {
  name: string;
  mode: number; // including the file type bits
  data?: Buffer;
  rdev?: [number, number];
}

// Minimal "newc" cpio writer: written here rather than shelling out to cpio so the archive can
// contain /dev/console (a device node) without mknod, and is byte-for-byte reproducible.
export function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let offset = 0;
  const push = (b: Buffer) => {
    parts.push(b);
    offset += b.length;
    const pad = (4 - (offset % 4)) % 4;
    if (pad) {
      parts.push(Buffer.alloc(pad));
      offset += pad;
    }
  };
  const all = [...entries, { name: 'TRAILER!!!', mode: 0 }];
  all.forEach((e, i) => {
    const data = e.data ?? Buffer.alloc(0);
    const hex = (n: number) => n.toString(16).padStart(8, '0');
    const fields = [
      i + 1, // ino
      e.mode,
      0, // uid
      0, // gid
      (e.mode & 0o170000) === 0o040000 ? 2 : 1, // nlink
      0, // mtime: fixed, for reproducibility
      data.length,
      0, // devmajor
      0, // devminor
      e.rdev?.[0] ?? 0,
      e.rdev?.[1] ?? 0,
      Buffer.byteLength(e.name) + 1,
      0, // check
    ];
    push(Buffer.concat([Buffer.from('070701' + fields.map(hex).join('') + e.name, 'ascii'), Buffer.alloc(1)]));
    if (data.length) push(data);
  });
  return Buffer.concat(parts);
}
