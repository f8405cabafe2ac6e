"""The hard moments of the crash benchmark, seen from outside the daemon: each watcher waits
for its moment in the kernel's own state, SIGKILLs the daemon the instant it sees it, and
then checks that the moment still held once the daemon was dead (a kill that came too late
is not counted as a hit; the cycle still counts as a random kill).

- gate:  an exec of an agent stopped (state T) in its runtime cgroup, waiting for placement
- held:  a tool call paused by the kernel at its memory limit (v1 under_oom 1) or frozen
- apply: `agentctl policy apply` in flight (killed when the daemon writes the policy file;
         a hit when agentctl got no answer)
- mkdir: a tools/<seq>-<name> cgroup just made whose memory limit still holds the default
         (inotify on the memory hierarchy's tools folder)
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import struct
import subprocess
import time
from dataclasses import dataclass, field

from agentd.cgroups import fs

IN_CREATE, IN_MOVED_TO, IN_CLOSE_WRITE, IN_ISDIR = 0x100, 0x80, 0x8, 0x40000000
UNLIMITED_V1 = 1 << 62  # memory.limit_in_bytes reads 9223372036854771712 when never set


@dataclass
class Hit:
    moment: str  # gate | held | apply | mkdir | random
    hit: bool  # the moment was still true after the daemon died
    detail: dict = field(default_factory=dict)


class Inotify:
    def __init__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.dirs: dict[int, str] = {}

    def watch(self, path: str, mask: int) -> None:
        wd = self.libc.inotify_add_watch(self.fd, path.encode(), mask)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.dirs[wd] = path

    def events(self, timeout: float) -> list[tuple[str, str, int]]:
        """(folder, name, mask) of what happened, waiting up to timeout."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        out, i = [], 0
        while i < len(data):
            wd, mask, _, size = struct.unpack_from("iIII", data, i)
            name = data[i + 16:i + 16 + size].rstrip(b"\0").decode()
            out.append((self.dirs.get(wd, ""), name, mask))
            i += 16 + size
        return out

    def close(self) -> None:
        os.close(self.fd)


def proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def read_pids(path: str) -> list[int]:
    try:
        with open(path) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def v2_cgroup(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return next((line[3:].strip() for line in f if line.startswith("0::")), None)
    except OSError:
        return None


def in_runtime(pid: int) -> bool:
    """In its agent's runtime in every hierarchy: the daemon has not begun to move it (on
    hybrid it moves it into the v1 hierarchies first, the v2 one last)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    return (any(line.startswith("0::") and line.endswith("/runtime") for line in lines)
            and not any("/tools/" in line for line in lines))


def held_by_kernel(driver, rel: str) -> str | None:
    """'held' (paused at its v1 limit), 'frozen', or None."""
    try:
        st = driver.stats(rel)
        requested = fs.read(driver.knob_path(rel, "cgroup.freeze")).strip() == "1"
    except OSError:
        return None
    if st.memory_events.get("under_oom", 0):
        return "held"
    if st.frozen or requested:
        return "frozen"
    return None


def held_toolcalls(driver, agents: dict[str, int]) -> dict[str, str]:
    """tool-call id -> held|frozen, for every tool cgroup the kernel holds now."""
    out = {}
    for name in agents:
        tools = f"agents/{name}/tools"
        try:
            children = driver.children(tools)
        except OSError:
            continue
        for child in children:
            how = held_by_kernel(driver, f"{tools}/{child}")
            if how:
                out[f"{name}/{child}"] = how
    return out


def kill(daemon) -> None:
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait(10)


def at_gate(daemon, agents: dict[str, int], timeout: float) -> Hit | None:
    driver = daemon.driver()
    procs = {name: driver.knob_path(f"agents/{name}/runtime", "cgroup.procs") for name in agents}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, path in procs.items():
            for pid in read_pids(path):
                # Still stopped and still in the runtime: the daemon has not moved it yet
                # (after the move only the SIGCONT is left: too late to aim at).
                if pid != agents[name] and proc_state(pid) == "T" and in_runtime(pid):
                    # A hit when the daemon died before it placed the exec: where the exec
                    # was last seen once the daemon was gone (the gate guard that outlives
                    # the daemon continues it; a short one may then exit before we look, and
                    # had it been placed, it would have been seen in its tool cgroup first).
                    os.kill(daemon.proc.pid, signal.SIGKILL)
                    last = None
                    while daemon.proc.poll() is None:
                        last = v2_cgroup(pid) or last
                    last = v2_cgroup(pid) or last
                    stopped = proc_state(pid) == "T"
                    unplaced = last is not None and last.endswith("/runtime")
                    return Hit("gate", unplaced, {"agent": name, "pid": pid, "unplaced": unplaced, "stopped": stopped,
                                                  "exited": proc_state(pid) is None})
    return None


def while_held(daemon, agents: dict[str, int], timeout: float) -> Hit | None:
    driver = daemon.driver()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = held_toolcalls(driver, agents)
        if held:
            kill(daemon)
            still = held_toolcalls(driver, agents)
            return Hit("held", bool(still), {"held": still})
        time.sleep(0.02)
    return None


def during_apply(daemon, policy_text: str, timeout: float, agentctl: str, at: str = "write") -> Hit | None:
    """at "write": when the daemon creates the policy's temporary file (nothing is in force
    yet); "rename": when it renames it into place (the file is the new policy, live tool
    calls not yet re-evaluated)."""
    src = daemon.dir / "apply.yaml"
    src.write_text(policy_text)
    watch = Inotify()
    try:
        watch.watch(str(daemon.policy_dir), IN_CREATE if at == "write" else IN_MOVED_TO)
        cli = subprocess.Popen([agentctl, "--socket", str(daemon.socket), "policy", "apply", str(src)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and cli.poll() is None:
            if watch.events(0.05):
                kill(daemon)
                out = cli.communicate(timeout=30)[0]
                return Hit("apply", cli.returncode != 0, {"at": at, "agentctl_rc": cli.returncode, "agentctl": out.strip()[-200:]})
        cli.communicate(timeout=30)
        return None
    finally:
        watch.close()


def memory_dir(driver, rel: str) -> tuple[str, str]:
    knob = "memory.max" if driver.kind == "v2" else "memory.limit_in_bytes"
    return os.path.dirname(driver.knob_path(rel, knob)), knob


def limit_unset(path: str, knob: str) -> bool:
    try:
        text = fs.read(os.path.join(path, knob)).strip()
    except OSError:
        return False
    return text == "max" if knob == "memory.max" else int(text) >= UNLIMITED_V1


def between_mkdir_and_limits(daemon, agents: dict[str, int], timeout: float) -> Hit | None:
    driver = daemon.driver()
    watch = Inotify()
    try:
        knob = "memory.limit_in_bytes"
        for name in agents:
            folder, knob = memory_dir(driver, f"agents/{name}/tools")
            watch.watch(folder, IN_CREATE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for folder, child, mask in watch.events(0.1):
                if not mask & IN_ISDIR:
                    continue
                path = os.path.join(folder, child)
                if limit_unset(path, knob):
                    kill(daemon)
                    still = os.path.isdir(path) and limit_unset(path, knob)
                    return Hit("mkdir", still, {"cgroup": path.split("/agents/", 1)[1]})
        return None
    finally:
        watch.close()
