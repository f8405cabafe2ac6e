#!/bin/sh
# Runs inside the VM (started by virtme-ng-init as root) for tests/vm/harness.py.
# $1 is the results folder shared read-write with the host (a --rwdir, same path on both
# sides). It holds env.sh and cmd.sh written by the host; this script writes back:
#   started   guest uptime (s) when the guest reached this script (boot finished)
#   setup.log output of the guest set-up (controllers), with timestamps
#   zram.ready or zram.error (and zram.log) once the zram swap device is prepared
#   stdout, stderr, rc   of the command
#   finished  guest uptime (s) when the command ended
# Nothing is printed on the console: virtme-ng cannot return output or the exit code
# without /dev/virtio-ports, so the host reads these files.
RW=$1
cut -d' ' -f1 /proc/uptime > "$RW/started"
. "$RW/env.sh"
stamp() { echo "[$(cut -d' ' -f1 /proc/uptime)] $*"; }

{
  stamp "guest reached guest_run.sh"
  echo "kernel: $(uname -r)"
  echo "cmdline: $(cat /proc/cmdline)"
  echo "controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
  # Let children of the root cgroup use every controller (the root is exempt from the
  # no-internal-process rule).
  for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || echo "cannot enable $c"
  done
  echo "subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
} > "$RW/setup.log" 2>&1

if [ -n "${AGENTD_VM_ZRAM_SIZE:-}" ]; then
  # zram swap is prepared (module, size, mkswap) but not switched on: tests that need swap
  # run swapon/swapoff themselves (tests/vm/guest/conftest.py: the `zram_swap` fixture,
  # which waits for zram.ready or zram.error). Done in the background, beside the slow
  # Python start-up of the command.
  (
    if { modprobe zram num_devices=1 \
         && echo "$AGENTD_VM_ZRAM_SIZE" > /sys/block/zram0/disksize \
         && mkswap /dev/zram0; } > "$RW/zram.log" 2>&1; then
      stamp "zram0 ready ($AGENTD_VM_ZRAM_SIZE)" > "$RW/zram.ready"
    else
      tail -n 5 "$RW/zram.log" > "$RW/zram.err.tmp" && mv "$RW/zram.err.tmp" "$RW/zram.error"
    fi
  ) &
fi

stamp "command starts" >> "$RW/setup.log"
cd "$AGENTD_VM_CWD" && sh "$RW/cmd.sh" > "$RW/stdout" 2> "$RW/stderr" < /dev/null
rc=$?
cut -d' ' -f1 /proc/uptime > "$RW/finished"
wait
echo "$rc" > "$RW/rc.tmp" && mv "$RW/rc.tmp" "$RW/rc"
sync
