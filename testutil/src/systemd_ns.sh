#!/bin/bash
# Boots systemd as PID 1 of its own PID, mount, cgroup, UTS and IPC namespaces, fenced off from
# the host (see testutil::systemd). Run by the fixture as root; never by hand.
#
#   systemd_ns.sh outer CGROUP_DIR...   moves itself into the fixture's sub-cgroups, unshares
#   systemd_ns.sh inner                 (in the namespaces) fences, checks the fences, execs systemd
#
# Environment: DROVER_SD_MOUNTS: the host's cgroup mounts, one per line: "TYPE OPTIONS DIR".
set -euo pipefail

fail() { echo "systemd fixture: $*" >&2; exit 97; }

if [ "${1:-}" = outer ]; then
    shift
    # Into a sub-cgroup of our own in every hierarchy, so that the cgroup namespace unshared
    # next is rooted there: systemd's slices go under it, not at the host's roots.
    for dir in "$@"; do
        echo $$ > "$dir/cgroup.procs" || fail "cannot join $dir"
    done
    exec unshare --pid --fork --mount --cgroup --uts --ipc --propagation private --mount-proc \
        "$BASH" "$0" inner
fi

[ "${1:-}" = inner ] || fail "usage: $0 outer CGROUP_DIR... | inner"
[ "$$" = 1 ] || fail "not PID 1 of a new PID namespace"

# Host directories the test shares with the namespace that the private tmpfs below would hide
# (a checkout under /tmp): held on a tmpfs of the namespace's own first, then moved to
# /run/drover-keep/N once /run is private. Never under the namespace's /tmp, which
# systemd-tmpfiles empties at boot.
mount -t tmpfs -o mode=700 tmpfs /sys/fs/cgroup
# systemd logs to /dev/console: the fixture's log file (held here while its path is visible).
touch /sys/fs/cgroup/console
mount --bind "/proc/$$/fd/1" /sys/fs/cgroup/console
i=0
while read -r keep; do
    [ -n "$keep" ] || continue
    mkdir "/sys/fs/cgroup/$i"
    mount --bind "$keep" "/sys/fs/cgroup/$i"
    i=$((i + 1))
done <<< "${DROVER_SD_KEEP:-}"

# systemd-tmpfiles empties /tmp and /var/tmp at boot (Debian's D /tmp); /run, /var/log and
# /var/lib hold what systemd, journald and services write (StateDirectory=, DynamicUser's
# /var/lib/private). All private to this namespace.
for dir in /tmp /var/tmp /run /var/log /var/lib; do
    # The fixture's own test leaves one fence out to see the check below refuse.
    [ "$dir" != "${DROVER_SD_LEAVE_OUT:-}" ] || continue
    mkdir -p "$dir"
    # /var/lib holds services' state, which launchers measure as disk: room to report.
    size=256m
    [ "$dir" != /var/lib ] || size=4g
    mount -t tmpfs -o mode=1777,nosuid,nodev,size=$size tmpfs "$dir"
done
chmod 755 /run /var/log /var/lib
mkdir -p /var/lib/systemd
kept=$i
i=0
while [ "$i" -lt "$kept" ]; do
    mkdir -p "/run/drover-keep/$i"
    mount --move "/sys/fs/cgroup/$i" "/run/drover-keep/$i"
    rmdir "/sys/fs/cgroup/$i"
    i=$((i + 1))
done

# A private /dev: what systemd and journald create there (/dev/log …) stays here.
mkdir /run/.host-dev
mount --bind /dev /run/.host-dev
mount -t tmpfs -o mode=755,nosuid,size=8m tmpfs /dev
for node in null zero full random urandom tty; do
    touch "/dev/$node"
    mount --bind "/run/.host-dev/$node" "/dev/$node"
done
umount /run/.host-dev && rmdir /run/.host-dev
touch /dev/console
mount --move /sys/fs/cgroup/console /dev/console
umount /sys/fs/cgroup
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
ln -s /proc/self/fd /dev/fd

# systemd remounts /sys/fs/cgroup read-only and makes its slices at the roots of the
# hierarchies it finds: give it a tmpfs of its own with fresh mounts of each hierarchy, which
# the cgroup namespace roots at the fixture's sub-cgroup.
mount -t tmpfs -o mode=755,nosuid,nodev,noexec tmpfs /sys/fs/cgroup
while read -r type options dir; do
    [ -n "$type" ] || continue
    mkdir -p "$dir"
    if [ "$type" = cgroup2 ]; then
        mount -t cgroup2 -o "$options" cgroup2 "$dir"
    else
        mount -t cgroup -o "$options" cgroup "$dir"
    fi
done <<< "${DROVER_SD_MOUNTS:-}"

# The fences, checked before systemd may start: each directory's top mount is this
# namespace's own tmpfs, every cgroup mount is rooted at the namespace's root, this process
# sits at the root of every hierarchy, and nothing propagates back to the host.
top_mount() { awk -v d="$1" '$5 == d { line = $0 } END { print line }' /proc/self/mountinfo; }
for dir in /tmp /var/tmp /run /var/log /var/lib /dev /sys/fs/cgroup; do
    line=$(top_mount "$dir")
    case "$line" in *" - tmpfs "*) ;; *) fail "$dir is not a private tmpfs: $line" ;; esac
    case "$line" in *shared:*) fail "$dir propagates to the host: $line" ;; esac
done
# (Copies of the host's mounts are still listed, under the new ones: only the top one counts.)
while read -r _ _ dir; do
    [ -n "$dir" ] || continue
    line=$(top_mount "$dir")
    root=$(echo "$line" | awk '{ print $4 }')
    case "$line" in *" - cgroup"*) ;; *) fail "$dir is not a fresh cgroup mount: $line" ;; esac
    [ "$root" = / ] || fail "$dir is rooted at $root, not at the namespace's root"
done <<< "${DROVER_SD_MOUNTS:-}"
while IFS=: read -r _ _ path; do
    [ "$path" = / ] || fail "this process is in cgroup $path, outside the namespace's root"
done < /proc/self/cgroup
if grep -q ' shared:' /proc/self/mountinfo; then fail "a mount still propagates to the host"; fi

# What touches the kernel or the host's files beyond the fences, and what a test needs not:
# masked at runtime (in the private /run).
mkdir -p /run/systemd/system
for unit in timers.target getty.target systemd-timesyncd.service systemd-pstore.service \
    systemd-binfmt.service proc-sys-fs-binfmt_misc.automount systemd-firstboot.service \
    systemd-journal-flush.service systemd-machine-id-commit.service systemd-modules-load.service \
    systemd-random-seed.service systemd-repart.service systemd-sysctl.service \
    systemd-sysusers.service systemd-update-utmp.service kmod-static-nodes.service \
    systemd-tmpfiles-setup-dev.service dev-hugepages.mount dev-mqueue.mount \
    sys-fs-fuse-connections.mount sys-kernel-config.mount sys-kernel-debug.mount \
    sys-kernel-tracing.mount systemd-remount-fs.service systemd-udevd.service \
    systemd-udevd-control.socket systemd-udevd-kernel.socket systemd-udev-trigger.service \
    systemd-hwdb-update.service ldconfig.service systemd-pcrphase.service \
    systemd-pcrphase-sysinit.service systemd-logind.service e2scrub_reap.service \
    console-getty.service systemd-journald-audit.socket; do
    ln -sf /dev/null "/run/systemd/system/$unit"
done

hostname drover-systemd-test
export container=drover-test
exec /lib/systemd/systemd --system --unit=basic.target --log-target=console --log-level=info
