"""sd_notify(3) without libsystemd: READY, STATUS, WATCHDOG and STOPPING to systemd.

Every function is a no-op (returning False) when NOTIFY_SOCKET is unset, so the daemon
calls them unconditionally, under systemd or not.
"""

from __future__ import annotations

import os
import socket


def _address(env: dict[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    addr = env.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr.startswith("@"):  # abstract namespace
        return "\0" + addr[1:]
    if addr.startswith("/"):
        return addr
    return None  # vsock and other forms are not used for services


def notify(*lines: str, env: dict[str, str] | None = None) -> bool:
    """Send `lines` (e.g. "READY=1", "STATUS=...") in one datagram; False when not under systemd."""
    addr = _address(env)
    if addr is None or not lines:
        return False
    payload = "\n".join(line.replace("\n", " ") for line in lines).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(addr)
            sock.sendall(payload)
        except OSError:
            return False  # systemd went away: never fatal for the daemon
    return True


def ready(status: str | None = None) -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def stopping(status: str | None = None) -> bool:
    return notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def reloading(status: str | None = None) -> bool:
    return notify("RELOADING=1", *([f"STATUS={status}"] if status else []))


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when not asked for.

    Like sd_watchdog_enabled(3): WATCHDOG_PID, when set, must be this process.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None
