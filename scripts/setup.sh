#!/usr/bin/env bash
# Idempotent set-up for agentd on Debian, as root: system packages (BCC from Debian, never
# PyPI's unrelated `bcc`), kernel headers for BCC, tracefs/debugfs, and a venv that sees
# the Debian python3-bpfcc module (--system-site-packages).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-}          # e.g. "test,torch" for the test suite
say() { echo "agentd-setup: $*"; }

[ "$(id -u)" = 0 ] || { echo "agentd-setup: must run as root (BPF, cgroups, apt)" >&2; exit 1; }

APT_PACKAGES=(python3-bpfcc bpfcc-tools python3-venv python3-pip kmod systemd)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
kver=$(uname -r)
headers_pkg=""
if [ ! -e "/lib/modules/$kver/build/Makefile" ]; then
  if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
    headers_pkg="linux-headers-$kver"
  else
    headers_pkg="linux-headers-amd64"
  fi
  dpkg-query -W -f='${Status}' "$headers_pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$headers_pkg")
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # linux-headers-$kver may appear only after the update.
  if [ "$headers_pkg" = linux-headers-amd64 ] && apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "linux-headers-$kver" >/dev/null && headers_pkg="linux-headers-$kver"
  fi
fi

# BCC looks for headers under /lib/modules/$(uname -r)/{build,source}.
if [ ! -e "/lib/modules/$kver/build/Makefile" ]; then
  generic=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  if [ -n "$generic" ] && [ -n "$common" ]; then
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$generic" "/lib/modules/$kver/build"
    ln -sfn "$common" "/lib/modules/$kver/source"
    say "warning: no headers for kernel $kver; linked the distribution's generic $(basename "$generic") (BPF code reads no struct fields, so this is safe)"
  else
    say "warning: no kernel headers found; BCC will not compile and agentd will fall back to the proc connector"
  fi
fi

mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true

if [ ! -x "$VENV/bin/python" ]; then
  say "creating venv $VENV from /usr/bin/python3 (with system site packages, for BCC)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.agentd-installed${EXTRAS:+-${EXTRAS//,/-}}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing agentd${EXTRAS:+[$EXTRAS]} into $VENV"
  # pip's and setuptools' own chatter (build warnings) goes to a log, shown only on failure.
  log=$(mktemp /tmp/agentd-pip.XXXXXX)
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip && \
         "$VENV/bin/python" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "agentd-setup: error: pip install failed (output above)" >&2
    exit 1
  fi
  rm -f "$log"
  touch "$stamp"
fi
"$VENV/bin/python" -c "import bcc" 2>/dev/null || say "warning: python3-bpfcc is not importable from the venv; the eBPF tracker will be unavailable"
say "ready ($VENV)"
