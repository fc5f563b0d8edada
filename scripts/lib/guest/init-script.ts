// /init of the test guest (busybox sh as PID 1): loads the virtio modules, then writes the counter
// records A and B forever (of every disk, in one step, when it has data disks); the guest agent
// variant also starts qemu-ga first.
import path from 'node:path';
import { DEFAULT_INTERVAL_MS, DISKS_MARKER, GUEST_AGENT_CHANNEL, GuestError, READY_MARKER, RECORD_MARGIN, SECTOR } from './common.js';

export const VIRTIO_MODULES = [
  'virtio/virtio_ring',
  'virtio/virtio',
  'virtio/virtio_pci_legacy_dev',
  'virtio/virtio_pci_modern_dev',
  'virtio/virtio_pci',
  'block/virtio_blk',
];

// /init of the guest. Runs as PID 1 under busybox sh; never exits (PID 1 exiting panics the kernel).
// The start every variant shares: busybox, the virtio modules, the interval from the kernel command line.
const PROLOGUE = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "vmsnap-guest: init started, kernel $(uname -r)"

fail() { echo "VMSNAP-GUEST-ERROR $*"; while :; do sleep 3600; done; }

for m in ${VIRTIO_MODULES.map((m) => path.basename(m)).join(' ')}; do
  insmod /modules/$m.ko || fail "insmod $m failed"
done

interval=${DEFAULT_INTERVAL_MS}
for w in $(cat /proc/cmdline); do
  case "$w" in vmsnap.interval_ms=*) interval=\${w#vmsnap.interval_ms=} ;; esac
done
case "$interval" in ''|*[!0-9]*) interval=${DEFAULT_INTERVAL_MS} ;; esac

`;

// The one-disk guest's counter loop: records A and B of /dev/vda.
const ONE_DISK_COUNTER = `i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1)); [ $i -gt 3000 ] && fail "no /dev/vda after 30 s"
  usleep 10000
done

sectors=$(cat /sys/block/vda/size)
a_sec=${RECORD_MARGIN / SECTOR}
b_sec=$((sectors - ${RECORD_MARGIN / SECTOR}))
[ $b_sec -gt $a_sec ] || fail "disk too small: $sectors sectors"
echo "vmsnap-guest: virtio modules loaded, /dev/vda has $sectors sectors"

# Prints the counter in the record at sector $1; 0 when blank or unreadable.
read_rec() {
  v=$(dd if=/dev/vda bs=512 skip=$1 count=1 2>/dev/null | tr -d '\\000')
  v=\${v#VMSNAP-COUNTER }
  case "$v" in ''|*[!0-9]*) echo 0 ;; *) echo "$v" ;; esac
}
# One sector, NUL padded (conv=sync), fsynced before returning so A-then-B order holds on disk.
write_rec() {
  printf 'VMSNAP-COUNTER %d\\n' $2 | dd of=/dev/vda bs=512 seek=$1 count=1 conv=sync,notrunc,fsync 2>/dev/null \\
    || echo "VMSNAP-GUEST-ERROR write of $2 at sector $1 failed"
}

# Continue from what is on disk (A is never behind B). If a previous run stopped between A and B,
# bring B up to A first so the next step cannot leave A == B + 2.
n=$(read_rec $a_sec)
[ "$(read_rec $b_sec)" = "$n" ] || write_rec $b_sec $n
echo "${READY_MARKER} counter=$n interval_ms=$interval sectors=$sectors"

while :; do
  n=$((n + 1))
  write_rec $a_sec $n
  write_rec $b_sec $n
  [ $((n % 500)) -eq 0 ] && echo "VMSNAP-COUNTER $n"
  usleep $((interval * 1000))
done
`;

export const INIT_SCRIPT = PROLOGUE + ONE_DISK_COUNTER;

// The counter loop of a guest with data disks (vmsnap.disks=vda,vdb,... on the kernel command
// line): each step writes the same value to every disk, vda's A and B, then each data disk's A and
// B, each record fsynced before the next. So at any instant the records, in that order, read
// n ... n, n-1 ... n-1: one instant's copy of all disks spans at most one step, and copies from two
// instants (milliseconds apart) break the order or span more.
const DISK_SET_COUNTER = `disks=vda
for w in $(cat /proc/cmdline); do
  case "$w" in vmsnap.disks=*) disks=$(echo "\${w#vmsnap.disks=}" | tr , ' ') ;; esac
done

# Prints the counter in the record at sector $2 of /dev/$1; 0 when blank or unreadable.
read_rec() {
  v=$(dd if=/dev/$1 bs=512 skip=$2 count=1 2>/dev/null | tr -d '\\000')
  v=\${v#VMSNAP-COUNTER }
  case "$v" in ''|*[!0-9]*) echo 0 ;; *) echo "$v" ;; esac
}
# One sector, NUL padded (conv=sync), fsynced before returning so the write order holds on disk.
write_rec() {
  printf 'VMSNAP-COUNTER %d\\n' $3 | dd of=/dev/$1 bs=512 seek=$2 count=1 conv=sync,notrunc,fsync 2>/dev/null \\
    || echo "VMSNAP-GUEST-ERROR write of $3 at sector $2 of $1 failed"
}

# Every record as dev:sector, in the order a step writes them; what each disk holds at boot is
# printed (a restored set shows there whether its disks agree).
recs=
seen=
for d in $disks; do
  i=0
  while [ ! -b /dev/$d ]; do
    i=$((i + 1)); [ $i -gt 3000 ] && fail "no /dev/$d after 30 s"
    usleep 10000
  done
  s=$(cat /sys/block/$d/size)
  a=${RECORD_MARGIN / SECTOR}
  b=$((s - ${RECORD_MARGIN / SECTOR}))
  [ $b -gt $a ] || fail "disk $d too small: $s sectors"
  recs="$recs $d:$a $d:$b"
  seen="$seen $d=$(read_rec $d $a)/$(read_rec $d $b)"
done
sectors=$(cat /sys/block/vda/size)
echo "vmsnap-guest: virtio modules loaded, /dev/vda has $sectors sectors"
echo "${DISKS_MARKER}$seen"

# Continue from vda's A (no record is ever ahead of it): bring every other record up to it first,
# so the next step cannot leave two records more than one apart.
first=\${recs# }
first=\${first%% *}
n=$(read_rec \${first%:*} \${first#*:})
for r in $recs; do
  [ "$(read_rec \${r%:*} \${r#*:})" = "$n" ] || write_rec \${r%:*} \${r#*:} $n
done
echo "${READY_MARKER} counter=$n interval_ms=$interval sectors=$sectors disks=$(echo $disks | tr ' ' ,)"

while :; do
  n=$((n + 1))
  for r in $recs; do write_rec \${r%:*} \${r#*:} $n; done
  [ $((n % 500)) -eq 0 ] && echo "VMSNAP-COUNTER $n"
  usleep $((interval * 1000))
done
`;

/** The init script of a guest with data disks: the disks are named on its kernel command line (vmsnap.disks=). */
export const DISK_SET_INIT_SCRIPT = PROLOGUE + DISK_SET_COUNTER;

// The guest agent variant: qemu-ga needs virtio_console for its port. No udev in the guest, so
// nothing makes /dev/virtio-ports/<name>: the port is found by its name in sysfs instead.
export const QEMU_GA = '/usr/sbin/qemu-ga';
export const AGENT_MODULES = ['char/virtio_console'];
const AGENT_READY_MARKER = 'VMSNAP-GUEST-AGENT-STARTED';
const AGENT_INIT_ANCHOR = 'echo "vmsnap-guest: virtio modules loaded, /dev/vda has $sectors sectors"\n';
const AGENT_INIT_BLOCK = `
insmod /modules/virtio_console.ko || fail "insmod virtio_console failed"
port=
i=0
while :; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = ${GUEST_AGENT_CHANNEL} ] && port=/dev/\${p##*/}
  done
  [ -n "$port" ] && [ -c "$port" ] && break
  i=$((i + 1)); [ $i -gt 3000 ] && fail "no virtio port ${GUEST_AGENT_CHANNEL} after 30 s"
  usleep 10000
done
# -t/-f: qemu-ga's state dir and pid file default to /var/run, which this initramfs lacks.
/usr/sbin/qemu-ga -m virtio-serial -p $port -t /tmp -f /tmp/qemu-ga.pid &
echo "${AGENT_READY_MARKER} on $port"
`;

/** The init script of the guest agent variant: the plain one (or `base`) plus qemu-ga started before the counter loop. */
export function agentInitScript(base = INIT_SCRIPT): string {
  if (!base.includes(AGENT_INIT_ANCHOR)) throw new GuestError('internal: agent anchor missing from the init script');
  return base.replace(AGENT_INIT_ANCHOR, AGENT_INIT_ANCHOR + AGENT_INIT_BLOCK);
}
