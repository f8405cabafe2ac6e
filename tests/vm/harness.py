"""Boot the test VM once and run one command in it (host side).

The VM is a virtme-ng (`vng`) guest running the Debian 6.12 kernel unpacked into
.vm/kernel by scripts/vm-setup.sh, with software emulation (/dev/kvm here cannot run a
stock kernel). The guest shares the host's root read-only (9p, cache=loose:
tests/vm/virtme_run_cached.py), so the repository and its venv are at the same paths;
/tmp, /etc, /var, /usr are copy-on-write overlays held in guest memory, and a per-boot
results folder (`files_dir`) is shared read-write.

Guest machine:
  - pure cgroup v2 (cgroup_no_v1=all), every controller enabled in the root's
    cgroup.subtree_control (cpuset cpu io memory pids hugetlb rdma misc);
  - 2 CPUs, 2 GiB;
  - numa=True: three NUMA nodes, 1 GiB with cpu 0, 512 MiB with cpu 1, and 512 MiB with no
    CPU; the CPU-less node is slower in the ACPI HMAT (200 ns / 2 GB/s against 10-20 ns /
    10-20 GB/s), so the kernel puts it into its own lower memory tier, and its SLIT
    distance is 40 (20 between the CPU nodes);
  - zram=True: the zram module loaded, /dev/zram0 (512 MiB) sized and formatted as swap,
    in the background while the command starts, but NOT switched on (tests switch it on:
    tests/vm/guest/conftest.py `zram_swap`, which waits for zram.ready).

Environment: AGENTD_VM_KVM=1 uses KVM instead of software emulation (where /dev/kvm can
run the kernel; not on the development hosts).

The command's output and exit status come back through files in the results folder
(virtme-ng returns them only when the guest has udev, which it does not here).

Use:
    from tests.vm.harness import boot_and_run
    r = boot_and_run(["python", "-c", "print(1)"], numa=True, zram=True)
    r.rc, r.stdout, r.stderr, r.files_dir
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# AGENTD_VM_KERNEL_DIR boots another unpacked kernel (scripts/vm-setup.sh: .vm/kernel-6.1).
KERNEL_DIR = Path(os.environ.get("AGENTD_VM_KERNEL_DIR") or REPO / ".vm" / "kernel").resolve()
GUEST_RUNNER = Path(__file__).resolve().parent / "guest_run.sh"
SETUP_HINT = "run `bash scripts/vm-setup.sh` as root"

DEFAULT_TIMEOUT = 300.0
CONSOLE_TAIL_LINES = 25


class VMError(RuntimeError):
    """The VM could not run the command. str() is a one-line reason; `console` holds
    the tail of the guest console (kernel log) when there is one."""

    def __init__(self, reason: str, console: str = "", files_dir: Path | None = None,
                 output: str = "", before_command: bool = False):
        self.reason = reason
        # True when the guest died before it reached the command (nothing of ours ran).
        self.before_command = before_command
        self.console = console
        self.files_dir = files_dir
        self.output = output  # tail of the command's stdout/stderr, when it had started
        super().__init__(reason)

    def describe(self) -> str:
        text = self.reason
        if self.files_dir is not None:
            text += f"\n(files: {self.files_dir})"
        if self.output:
            text += f"\n--- last lines of the command's output ---\n{self.output}"
        if self.console:
            text += f"\n--- last lines of the guest console ---\n{self.console}"
        return text


@dataclasses.dataclass
class GuestResult:
    rc: int
    stdout: str
    stderr: str
    files_dir: Path
    kernel: str = ""
    boot_s: float | None = None  # host seconds from starting vng to the guest command
    command_s: float | None = None  # guest seconds the command ran (guest clock)
    wall_s: float = 0.0  # host seconds, boot to power-off
    host_maxrss_kb: int = 0  # peak resident memory of qemu (largest process of the run)
    setup_log: str = ""
    files_removed: bool = False

    def summary(self) -> str:
        """One measurement line."""
        boot = f"{self.boot_s:.1f}s" if self.boot_s is not None else "?"
        cmd = f"{self.command_s:.1f}s" if self.command_s is not None else "?"
        return (f"vm: kernel {self.kernel}, boot {boot}, guest command {cmd} (guest clock), "
                f"wall {self.wall_s:.1f}s, qemu peak RSS {self.host_maxrss_kb // 1024} MiB, "
                f"rc {self.rc}, files {self.files_dir}"
                + (" (removed)" if self.files_removed else ""))


RUNS: list[GuestResult] = []  # every completed boot of this process, for reports


def _venv_bin() -> Path:
    """Where vng lives: the venv that runs us, else the repository's .venv."""
    for cand in (Path(sys.executable).parent, REPO / ".venv" / "bin"):
        if (cand / "vng").exists():
            return cand
    return REPO / ".venv" / "bin"


def find_kernel(kernel_dir: Path | None = None) -> tuple[Path, str]:
    """(vmlinuz path, kernel release) of the unpacked kernel, or VMError."""
    kernel_dir = kernel_dir or KERNEL_DIR
    imgs = sorted((kernel_dir / "boot").glob("vmlinuz-*"))
    if not imgs or not (kernel_dir / ".complete").exists():
        raise VMError(f"no VM kernel in {kernel_dir}: {SETUP_HINT}")
    img = imgs[-1]
    return img, img.name[len("vmlinuz-"):]


def preflight(kernel_dir: Path | None = None) -> tuple[Path, str, Path]:
    """Check that everything needed to boot is here; (vng, kernel release, vmlinuz)."""
    kernel_dir = kernel_dir or KERNEL_DIR
    vng = _venv_bin() / "vng"
    if not vng.exists():
        raise VMError(f"virtme-ng (vng) is not installed in {vng.parent}: {SETUP_HINT}")
    if shutil.which("qemu-system-x86_64") is None:
        raise VMError(f"qemu-system-x86_64 is missing (Debian package qemu-system-x86): {SETUP_HINT}")
    if shutil.which("busybox") is None:
        raise VMError(f"busybox is missing (Debian package busybox-static): {SETUP_HINT}")
    img, kver = find_kernel(kernel_dir)
    if not (kernel_dir / "lib" / "modules" / kver / "modules.dep").exists():
        raise VMError(f"modules of {kver} are missing in {kernel_dir}: {SETUP_HINT}")
    return vng, kver, img


def numa_layout(memory_mb: int, cpus: int) -> list[str]:
    """vng --numa/--numa-distance and QEMU HMAT options: two CPU nodes and a CPU-less,
    slower one (a CXL-like memory expander)."""
    n0, n1 = memory_mb // 2, memory_mb // 4
    n2 = memory_mb - n0 - n1
    cpus1 = "1" if cpus == 2 else f"1-{cpus - 1}"
    args = [
        "--numa", f"{n0}M,cpus=0,initiator=0",
        "--numa", f"{n1}M,cpus={cpus1},initiator=1",
        "--numa", f"{n2}M,initiator=0",
        "--numa-distance", "0,1=20",
        "--numa-distance", "0,2=40",
        "--numa-distance", "1,2=40",
    ]
    hmat = ["-machine hmat=on"]
    for ini in (0, 1):
        for tgt in (0, 1, 2):
            if tgt == 2:
                lat, bw = 200, "2G"
            elif tgt == ini:
                lat, bw = 10, "20G"
            else:
                lat, bw = 20, "10G"
            base = f"-numa hmat-lb,initiator={ini},target={tgt},hierarchy=memory"
            hmat.append(f"{base},data-type=access-latency,latency={lat}")
            hmat.append(f"{base},data-type=access-bandwidth,bandwidth={bw}")
    return args + ["--qemu-opts=" + " ".join(hmat)]


def precompile() -> None:
    """Write the repository's bytecode on the host: the guest sees the tree read-only."""
    dirs = [d for d in ("agentd", "cli", "tests", "benchmarks") if (REPO / d).is_dir()]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", *dirs],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
    )


def _cached_root_shim(rw: Path, venv_bin: Path) -> Path:
    """A folder whose `virtme-run` (what vng starts) mounts the guest's root cache=loose:
    tests/vm/virtme_run_cached.py says why."""
    shim = rw / "host-bin"
    shim.mkdir(exist_ok=True)
    run = shim / "virtme-run"
    run.write_text(f"#!/bin/sh\nexec {shlex.quote(str(venv_bin / 'python'))} "
                   f"{shlex.quote(str(Path(__file__).resolve().parent / 'virtme_run_cached.py'))} \"$@\"\n")
    run.chmod(0o755)
    return shim


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _tail(text: str, n: int = CONSOLE_TAIL_LINES) -> str:
    lines = _ANSI.sub("", text).replace("\r", "").splitlines()
    return "\n".join(lines[-n:])


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait4(proc: subprocess.Popen, deadline: float, poll) -> tuple[int | None, int]:
    """Wait for proc until deadline, calling poll() between checks; (status, maxrss KiB)."""
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru.ru_maxrss
        if poll() or time.monotonic() >= deadline:
            return None, 0
        time.sleep(0.2)


# Software emulation (TCG) now and then panics a guest kernel while it boots (seen in CI:
# "Fatal exception in interrupt" in sched_clock_cpu at 2 s, at a code site the kernel was
# patching on another vCPU). Nothing of ours has run then, so the boot is tried again.
# Once it struck mid-command too (a debug exception in kernel mode with impossible RFLAGS
# bits, in the 9p client's slab allocation, then "Fatal exception in interrupt"): a panic
# after the command started runs the command once more in a fresh guest, its first results
# folder kept beside as <folder>.attempt<N>; a second one fails. Other crashes, time-outs
# and a command that fails are never retried.
BOOT_ATTEMPTS = 3
MID_COMMAND_PANIC_RETRIES = 1


def boot_and_run(command: list[str], **kwargs) -> GuestResult:
    """Boot the VM once, run `command` as root in it (cwd: the repository), power off.

    Raises VMError with a one-line reason (and the console tail) when the VM cannot be
    started, does not boot, crashes or runs past `timeout` seconds (boot included). A
    command that runs and fails is not an error: see GuestResult.rc. A guest kernel that
    panics is booted again (before the command: up to BOOT_ATTEMPTS boots in all; after the
    command started: once, in a fresh results folder).
    """
    mid_command_retries = 0
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        try:
            return _boot_once(command, **kwargs)
        except VMError as e:
            if "panicked" not in e.reason or attempt == BOOT_ATTEMPTS or e.files_dir is None:
                raise
            if e.before_command:
                kept = e.files_dir / f"console.attempt{attempt}.log"
                (e.files_dir / "console.log").replace(kept)
                when = "before the command started"
            elif mid_command_retries < MID_COMMAND_PANIC_RETRIES:
                mid_command_retries += 1
                # what the first run wrote must not count for the second (checks.jsonl appends)
                kept = e.files_dir.with_name(f"{e.files_dir.name}.attempt{attempt}")
                e.files_dir.rename(kept)
                e.files_dir.mkdir()
                when = "while the command ran; the command runs again from the start"
            else:
                raise
            kwargs["files_dir"] = e.files_dir
            print(f"vm: boot {attempt} of {BOOT_ATTEMPTS}: {e.reason} {when} (kept in {kept})",
                  file=sys.stderr)
    raise AssertionError("unreachable")


def _boot_once(
    command: list[str],
    *,
    numa: bool = False,
    zram: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    cpus: int = 2,
    memory_mb: int = 2048,
    zram_size: str = "512M",
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    files_dir: str | os.PathLike | None = None,
    qemu_opts: list[str] | None = None,
    kernel_dir: str | os.PathLike | None = None,
) -> GuestResult:
    """One boot of boot_and_run."""
    vng, kver, img = preflight(Path(kernel_dir).resolve() if kernel_dir else None)
    if numa and cpus < 2:
        raise VMError("numa=True needs cpus >= 2")
    rw = Path(files_dir) if files_dir else Path(tempfile.mkdtemp(prefix="agentd-vm-"))
    rw.mkdir(parents=True, exist_ok=True)
    rw = rw.resolve()
    for name in ("started", "finished", "rc", "stdout", "stderr", "setup.log",
                 "zram.ready", "zram.error", "zram.log"):
        (rw / name).unlink(missing_ok=True)

    guest_env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), str(_venv_bin()),
                                 "/usr/local/sbin", "/usr/local/bin", "/usr/sbin",
                                 "/usr/bin", "/sbin", "/bin"]),
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "AGENTD_IN_VM": "1",
        "AGENTD_VM_RESULTS": str(rw),
        "AGENTD_VM_NUMA": "1" if numa else "0",
        "AGENTD_VM_ZRAM": "/dev/zram0" if zram else "",
        "AGENTD_VM_ZRAM_SIZE": zram_size if zram else "",
        "AGENTD_VM_CWD": str(Path(cwd) if cwd else REPO),
        **(env or {}),
    }
    (rw / "env.sh").write_text(
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in guest_env.items()))
    (rw / "cmd.sh").write_text("exec " + shlex.join(command) + "\n")

    precompile()
    args = [
        str(vng), "--run", str(img), "--force-9p", "--verbose",
        "--cpus", str(cpus), "--memory", f"{memory_mb}M",
        "--append", "cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1",
        "--rwdir", str(rw),
        "--cwd", str(REPO),
    ]
    if os.environ.get("AGENTD_VM_KVM") != "1":
        # This host's /dev/kvm cannot run a stock kernel: software emulation (TCG).
        args.append("--disable-kvm")
    if numa:
        args += numa_layout(memory_mb, cpus)
    if qemu_opts:
        args.append("--qemu-opts=" + " ".join(qemu_opts))
    args += ["--exec", f"sh {shlex.quote(str(GUEST_RUNNER))} {shlex.quote(str(rw))}"]
    (rw / "vng-command").write_text(shlex.join(args) + "\n")

    console_path = rw / "console.log"
    host_env = dict(os.environ)
    host_env["PATH"] = os.pathsep.join([str(_cached_root_shim(rw, vng.parent)), str(vng.parent),
                                        host_env.get("PATH", "/usr/bin:/bin")])
    t0 = time.monotonic()
    boot_s: float | None = None
    with open(console_path, "wb") as console:
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=console,
                                    stderr=subprocess.STDOUT, cwd=REPO, env=host_env,
                                    start_new_session=True)
        except OSError as e:
            raise VMError(f"cannot start vng: {e}", files_dir=rw) from e

        def poll() -> bool:
            nonlocal boot_s
            if boot_s is None and (rw / "started").exists():
                boot_s = time.monotonic() - t0
            return False

        try:
            status, maxrss = _wait4(proc, t0 + timeout, poll)
            if status is None and (rw / "rc").exists():
                # The command is done; give the guest a moment to power off.
                status, maxrss = _wait4(proc, time.monotonic() + 30, poll)
        finally:
            if proc.returncode is None:
                _kill_group(proc)
                _wait4(proc, time.monotonic() + 10, lambda: False)
    poll()
    wall = time.monotonic() - t0
    console_text = _read(console_path)
    tail = _tail(console_text)

    if not (rw / "rc").exists():
        panic = re.search(r"Kernel panic[^\n]*", console_text)
        if panic:
            reason = f"guest kernel panicked: {panic.group(0).strip()}"
        elif status is None and boot_s is None:
            reason = f"VM boot timed out: the guest did not reach the command within {timeout:.0f}s"
        elif status is None:
            reason = (f"guest command timed out after {timeout:.0f}s "
                      f"(booted in {boot_s:.1f}s); see {rw}/stdout")
        elif boot_s is None:
            reason = (f"VM exited with status {status} before the guest reached the command "
                      f"(qemu/vng failure or boot crash)")
        else:
            reason = (f"guest crashed or powered off while the command ran "
                      f"(vng exit status {status})")
        output = ""
        if boot_s is not None:
            output = _tail(_read(rw / "stdout") + _read(rw / "stderr"), 15)
        raise VMError(reason, tail, rw, output, before_command=boot_s is None)

    rc_text = _read(rw / "rc").strip()
    try:
        rc = int(rc_text)
    except ValueError:
        raise VMError(f"unreadable exit status {rc_text!r} from the guest", tail, rw) from None
    command_s = None
    try:
        command_s = float(_read(rw / "finished")) - float(_read(rw / "started"))
    except ValueError:
        pass
    result = GuestResult(
        rc=rc, stdout=_read(rw / "stdout"), stderr=_read(rw / "stderr"), files_dir=rw,
        kernel=kver, boot_s=boot_s, command_s=command_s, wall_s=wall,
        host_maxrss_kb=maxrss, setup_log=_read(rw / "setup.log"),
    )
    RUNS.append(result)
    return result


if __name__ == "__main__":
    # python tests/vm/harness.py [--numa] [--zram] -- command...
    import argparse

    ap = argparse.ArgumentParser(description="boot the agentd test VM and run a command")
    ap.add_argument("--numa", action="store_true")
    ap.add_argument("--zram", action="store_true")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    ap.add_argument("command", nargs="+")
    a = ap.parse_args()
    try:
        r = boot_and_run(a.command, numa=a.numa, zram=a.zram, timeout=a.timeout)
    except VMError as e:
        print(f"vm: {e.describe()}", file=sys.stderr)
        sys.exit(125)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    print(r.summary(), file=sys.stderr)
    sys.exit(r.rc)
