#!/bin/sh
# /init of the qsf test guest: load 9p and virtio-serial, mount the host's root
# (read-only, QEMU's virtio-9p), chroot into it and run the control agent.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
hostname localhost
while read -r module; do
    insmod "/modules/$module" || echo "qsf-init: insmod $module failed"
done < /modules/order

for word in $(cat /proc/cmdline); do
    case "$word" in
        qsf_python=*) PYTHON=${word#*=} ;;
        qsf_agent=*) AGENT=${word#*=} ;;
        qsf_keep=*) KEEP=${word#*=} ;;
    esac
done

mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host \
    || { echo "qsf-init: cannot mount the host root"; poweroff -f; }
for dir in proc sys dev; do mount -o bind "/$dir" "/host/$dir"; done
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
# The checkout (the agent, the editable install) may lie under /tmp or /run,
# which get a tmpfs here: keep it visible at its own path.
if [ -n "$KEEP" ]; then mkdir -p /keep && mount -o bind "/host$KEEP" /keep; fi
mount -t tmpfs -o mode=0755 tmpfs /host/run
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
if [ -n "$KEEP" ] && [ ! -d "/host$KEEP" ]; then
    mkdir -p "/host$KEEP" && mount -o bind /keep "/host$KEEP"
fi
[ -d /host/etc/sudoers.d ] && mount -o bind /etc/sudoers.d /host/etc/sudoers.d

port=
for dev in /sys/class/virtio-ports/*; do
    [ "$(cat "$dev/name" 2>/dev/null)" = qsf.control ] && port=/dev/${dev##*/}
done
[ -n "$port" ] || { echo "qsf-init: no qsf.control port"; poweroff -f; }
echo "qsf-init: agent on $port"
chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root PYTHONDONTWRITEBYTECODE=1 "$PYTHON" "$AGENT" "$port"
echo "qsf-init: agent exited $?"
poweroff -f
