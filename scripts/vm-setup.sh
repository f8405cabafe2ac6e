#!/usr/bin/env bash
# Idempotent set-up for the VM tests (tests/vm), as root, on Debian 12:
#   1. Debian packages: qemu-system-x86 (software emulation is enough), kmod (modprobe/depmod
#      for the guest), busybox-static (virtme-ng's initramfs), numactl and util-linux
#      (mkswap/swapon, unshare/nsenter/setpriv) and systemd (booted in the guest by
#      tests/vm/test_systemd_unit_vm.py) for the guest, which shares the host's root read-only.
#   2. virtme-ng (`vng`) in the project's venv.
#   3. A Debian 6.12 kernel package (the newest linux-image-6.12.*-amd64 that apt knows),
#      downloaded once and unpacked into .vm/kernel/ (gitignored), with modules.dep.
# Only Debian's and PyPI's registries are used. Prints one line per step.
# Environment: VENV (default .venv), AGENTD_VM_KERNEL (a kernel release such as
# 6.12.117+deb12-amd64, to pin one instead of the newest).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
KDIR=.vm/kernel
say() { echo "agentd-vm-setup: $*"; }
die() { echo "agentd-vm-setup: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get)"

# 1. Debian packages -------------------------------------------------------------------
APT_PACKAGES=(qemu-system-x86 kmod busybox-static numactl util-linux systemd)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
apt_updated=0
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  apt_updated=1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages present: ${APT_PACKAGES[*]}"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after installing qemu-system-x86"

# 2. virtme-ng in the venv --------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating venv $VENV from /usr/bin/python3 (with system site packages)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
if [ -x "$VENV/bin/vng" ] && "$VENV/bin/python" -c "import virtme_ng" 2>/dev/null; then
  say "virtme-ng present in $VENV ($("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("virtme-ng"))'))"
else
  say "installing virtme-ng into $VENV"
  "$VENV/bin/python" -m pip install -q "virtme-ng>=1.20"
fi
"$VENV/bin/python" -c "import pytest" 2>/dev/null || {
  say "installing pytest into $VENV"
  "$VENV/bin/python" -m pip install -q "pytest>=7.4"
}

# 3. Debian 6.12 kernel in .vm/kernel -------------------------------------------------------
find_kernel_pkg() {
  if [ -n "${AGENTD_VM_KERNEL:-}" ]; then
    apt-cache show "linux-image-$AGENTD_VM_KERNEL" >/dev/null 2>&1 && echo "linux-image-$AGENTD_VM_KERNEL"
    return 0
  fi
  apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb[0-9]+-amd64$' 2>/dev/null \
    | awk '{print $1}' | sort -V | tail -n1
}
if [ -f "$KDIR/.complete" ] && ls "$KDIR"/boot/vmlinuz-* >/dev/null 2>&1; then
  say "kernel present: $(cat "$KDIR/.complete") in $KDIR"
else
  pkg=$(find_kernel_pkg)
  if [ -z "$pkg" ] && [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    pkg=$(find_kernel_pkg)
  fi
  [ -n "$pkg" ] || die "no linux-image-6.12.*-amd64 package known to apt (check bookworm-security in the apt sources${AGENTD_VM_KERNEL:+, or AGENTD_VM_KERNEL=$AGENTD_VM_KERNEL})"
  say "downloading and unpacking $pkg into $KDIR"
  mkdir -p .vm
  tmp=$(mktemp -d .vm/kernel-dl.XXXXXX)
  trap 'rm -rf "$tmp"' EXIT
  chmod 755 "$tmp"
  (cd "$tmp" && apt-get download -qq "$pkg" 2>&1 | grep -v "unsandboxed" >&2 || true)
  deb=$(ls "$tmp"/*.deb 2>/dev/null | head -n1)
  [ -n "$deb" ] || die "apt-get download $pkg produced no .deb"
  mkdir -p "$tmp/root"
  dpkg-deb -x "$deb" "$tmp/root"
  kimg=$(ls "$tmp"/root/boot/vmlinuz-* 2>/dev/null | head -n1)
  [ -n "$kimg" ] || die "$pkg contains no /boot/vmlinuz-*"
  kver=${kimg##*/vmlinuz-}
  # Newer Debian packages ship modules under usr/lib/modules; virtme-ng looks in lib/modules.
  if [ ! -d "$tmp/root/lib/modules" ] && [ -d "$tmp/root/usr/lib/modules" ]; then
    ln -s usr/lib "$tmp/root/lib"
  fi
  # Debian's packages leave modules.dep to their postinst; build it here, for modprobe in the guest.
  /sbin/depmod -a -b "$tmp/root" "$kver" || die "depmod failed for $kver"
  echo "$kver" > "$tmp/root/.complete"
  rm -rf "$KDIR"
  mv "$tmp/root" "$KDIR"
  say "kernel ready: $kver in $KDIR"
fi
say "ready (run: $VENV/bin/python -m pytest -q -p no:cacheprovider tests/vm)"
