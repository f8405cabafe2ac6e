#!/usr/bin/env bash
# Idempotent set-up for the VM tests (tests/vm), as root, on Debian 12:
#   1. Debian packages: qemu-system-x86 (software emulation is enough), kmod (modprobe/depmod
#      for the guest), busybox-static (virtme-ng's initramfs), numactl and util-linux
#      (mkswap/swapon, unshare/nsenter/setpriv) and systemd (booted in the guest by
#      tests/vm/test_systemd_unit_vm.py) for the guest, which shares the host's root read-only.
#   2. virtme-ng (`vng`) in the project's venv.
#   3. Debian kernel packages, downloaded once and unpacked (gitignored), each with
#      modules.dep and its headers packages (linux-headers-<release>, -common) so BCC can
#      compile the tracker for the guest kernel: the newest linux-image-6.12.*-amd64 into
#      .vm/kernel/ and Debian 12's own newest linux-image-6.1.0-*-amd64 into .vm/kernel-6.1/.
# Only Debian's and PyPI's registries are used. Prints one line per step.
# Environment: VENV (default .venv), AGENTD_VM_KERNEL (a kernel release such as
# 6.12.117+deb12-amd64, to pin one instead of the newest).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
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

# 3. Debian kernels, each with its headers (BCC compiles the tracker against them in the guest)
#    .vm/kernel      the newest linux-image-6.12.*+deb12-amd64 (or AGENTD_VM_KERNEL)
#    .vm/kernel-6.1  the newest linux-image-6.1.0-*-amd64 (Debian 12's own kernel)
# Each is the image package and linux-headers-<release> plus linux-headers-<version>-common,
# unpacked with dpkg-deb -x; lib/modules/<release>/build and source point at the unpacked
# headers by absolute path (the guest sees the host's root, so the same path works there).
apt_download() {  # apt_download DIR PKG...: .deb files of PKG into DIR
  local dir=$1; shift
  (cd "$dir" && apt-get download -qq "$@" 2>&1 | grep -v "unsandboxed" >&2 || true)
}
find_pkg() {  # find_pkg REGEX: the newest package name apt knows that matches
  apt-cache search --names-only "$1" 2>/dev/null | awk '{print $1}' | sort -V | tail -n1
}
kernel_pkg_612() {
  if [ -n "${AGENTD_VM_KERNEL:-}" ]; then
    apt-cache show "linux-image-$AGENTD_VM_KERNEL" >/dev/null 2>&1 && echo "linux-image-$AGENTD_VM_KERNEL"
    return 0
  fi
  find_pkg '^linux-image-6\.12\.[0-9]+\+deb[0-9]+-amd64$'
}
kernel_pkg_61() { find_pkg '^linux-image-6\.1\.0-[0-9]+-amd64$'; }

install_kernel() {  # install_kernel DIR FINDER LABEL: image + modules.dep into DIR
  local kdir=$1 finder=$2 label=$3 pkg tmp deb kimg kver
  if [ -f "$kdir/.complete" ] && ls "$kdir"/boot/vmlinuz-* >/dev/null 2>&1; then
    say "kernel present: $(cat "$kdir/.complete") in $kdir"
    return 0
  fi
  pkg=$($finder)
  if [ -z "$pkg" ] && [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
    pkg=$($finder)
  fi
  [ -n "$pkg" ] || die "no $label package known to apt (check bookworm-security in the apt sources${AGENTD_VM_KERNEL:+, or AGENTD_VM_KERNEL=$AGENTD_VM_KERNEL})"
  say "downloading and unpacking $pkg into $kdir"
  mkdir -p .vm
  tmp=$(mktemp -d .vm/kernel-dl.XXXXXX)
  chmod 755 "$tmp"
  apt_download "$tmp" "$pkg"
  deb=$(ls "$tmp"/*.deb 2>/dev/null | head -n1)
  [ -n "$deb" ] || { rm -rf "$tmp"; die "apt-get download $pkg produced no .deb"; }
  mkdir -p "$tmp/root"
  dpkg-deb -x "$deb" "$tmp/root"
  kimg=$(ls "$tmp"/root/boot/vmlinuz-* 2>/dev/null | head -n1)
  [ -n "$kimg" ] || { rm -rf "$tmp"; die "$pkg contains no /boot/vmlinuz-*"; }
  kver=${kimg##*/vmlinuz-}
  # Newer Debian packages ship modules under usr/lib/modules; virtme-ng looks in lib/modules.
  if [ ! -d "$tmp/root/lib/modules" ] && [ -d "$tmp/root/usr/lib/modules" ]; then
    ln -s usr/lib "$tmp/root/lib"
  fi
  # Debian's packages leave modules.dep to their postinst; build it here, for modprobe in the guest.
  /sbin/depmod -a -b "$tmp/root" "$kver" || { rm -rf "$tmp"; die "depmod failed for $kver"; }
  echo "$kver" > "$tmp/root/.complete"
  rm -rf "$kdir"
  mv "$tmp/root" "$kdir"
  rm -rf "$tmp"
  say "kernel ready: $kver in $kdir"
}

install_headers() {  # install_headers DIR: linux-headers-<release> and -common into DIR
  local kdir=$1 kver common tmp deb abs
  kver=$(cat "$kdir/.complete")
  common="linux-headers-${kver%-amd64}-common"
  abs=$(cd "$kdir" && pwd)
  if [ -f "$kdir/.headers" ] && [ -e "$kdir/lib/modules/$kver/build/include" ] && [ -e "$kdir/lib/modules/$kver/source/include" ]; then
    say "headers present for $kver in $kdir"
    return 0
  fi
  say "downloading and unpacking linux-headers-$kver and $common into $kdir"
  tmp=$(mktemp -d .vm/headers-dl.XXXXXX)
  chmod 755 "$tmp"
  apt_download "$tmp" "linux-headers-$kver" "$common"
  [ "$(ls "$tmp"/*.deb 2>/dev/null | wc -l)" -ge 2 ] || { rm -rf "$tmp"; die "apt-get download linux-headers-$kver $common did not give both packages"; }
  for deb in "$tmp"/*.deb; do
    dpkg-deb -x "$deb" "$kdir"
  done
  rm -rf "$tmp"
  [ -d "$kdir/usr/src/linux-headers-$kver/include" ] || die "linux-headers-$kver has no usr/src/linux-headers-$kver/include"
  [ -d "$kdir/usr/src/${common#linux-headers-}" ] || [ -d "$kdir/usr/src/linux-headers-${kver%-amd64}-common" ] \
    || die "$common has no usr/src/linux-headers-${kver%-amd64}-common"
  # The packages' own build link is absolute (/usr/src/...): point both links into this tree.
  mkdir -p "$kdir/lib/modules/$kver"
  ln -sfn "$abs/usr/src/linux-headers-$kver" "$kdir/lib/modules/$kver/build"
  ln -sfn "$abs/usr/src/linux-headers-${kver%-amd64}-common" "$kdir/lib/modules/$kver/source"
  echo "$kver" > "$kdir/.headers"
  say "headers ready for $kver (lib/modules/$kver/build and source)"
}

install_kernel .vm/kernel kernel_pkg_612 "linux-image-6.12.*-amd64"
install_headers .vm/kernel
install_kernel .vm/kernel-6.1 kernel_pkg_61 "linux-image-6.1.0-*-amd64"
install_headers .vm/kernel-6.1
say "ready (run: $VENV/bin/python -m pytest -q -p no:cacheprovider tests/vm)"
