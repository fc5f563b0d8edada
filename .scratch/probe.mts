import { LibvirtHypervisor } from '../src/drivers/libvirt.js';
const h = new LibvirtHypervisor({ uri: 'qemu:///system' } as any);
const t0 = Date.now();
const r = await h.liveCopy('0b2e5923-5150-4ea7-ad3c-bfff9a169ea7', { target: '/tmp/wt13b/t.qcow2', targetFormat: 'qcow2', quiesce: 'try', onProgress: (p, d, t) => console.log(Date.now() - t0, p.toFixed(1), d, t) });
console.log(Date.now() - t0, r);
