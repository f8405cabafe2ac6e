"""The BCC tracker: fork/exec/exit/OOM victim/cgroup attach from one ring buffer, and the
exec gate (execs in gated v2 cgroups are stopped with SIGSTOP until the daemon places them).

Stopped processes are never left behind by this backend: each gated exec is remembered until
`release(pid)`; after `gate_timeout_s` it is continued anyway (fail open, counted), and
`stop()` continues every one still owed. If the daemon dies (the program is then unloaded:
no new stops), a guard process (gate_guard.py) continues the ones in flight; and at
start-up the daemon should call `continue_stopped_in(cgroup_dirs)` for its gated cgroups,
for the case where the guard was killed with it.

Who else sees the stop: a parent waiting with WUNTRACED. Plain `sh -c`/`bash -c`, Python's
subprocess and pipelines do not notice; a job-control shell (interactive, or `set -m`) does:
it prints "Stopped", reports status 147 for the command and leaves it to run in the
background once continued. Do not gate a cgroup whose agent drives a job-control shell.
"""

from __future__ import annotations

import ctypes
import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Callable

from agentd.events import ProcEvent, ProcEventKind
from agentd.tracking import bpf_source as src
from agentd import heldsys, procfs
from agentd.tracking.backend import BackendUnavailable, EventSink, TrackerBackend
from agentd.tracking.gate_guard import GateGuard

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 50  # also the longest an ordinary event waits (see TrackerOptions.wake_every)


def _first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower():
            return ln
    return lines[0] if lines else "no compiler output"


def _compile(text: str, cflags: list[str], attach: tuple[src.Tracepoint, ...] = ()):
    """BPF(text=...) and its tracepoint attachments with libbcc's stdout and stderr captured:
    a failure can name its cause, and nothing libbcc prints ("Unable to find kernel
    headers", warnings) reaches the daemon's stdout (`agentd demo --json` is JSON)."""
    try:
        from bcc import BPF  # Debian's python3-bpfcc
    except ImportError as exc:
        raise BackendUnavailable(f"BCC is not importable: {exc}") from exc
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    where = "compile"
    with tempfile.TemporaryFile(mode="w+b") as err:
        os.dup2(err.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            bpf = BPF(text=text.encode(), cflags=cflags)
            for tp in attach:
                where = f"{tp.category}:{tp.event}"
                bpf.attach_tracepoint(tp=where.encode(), fn_name=tp.fn_name.encode())
            failure = None
        except Exception as exc:  # BCC raises bare Exception for compile and load errors
            bpf, failure = locals().get("bpf"), exc
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        err.seek(0)
        output = err.read().decode(errors="replace")
    if failure is not None:
        if bpf is not None:
            bpf.cleanup()
        headers = next((ln.strip() for ln in output.splitlines() if "Unable to find kernel headers" in ln), None)
        if str(failure).startswith("Failed to compile") and headers:
            why = f"BCC could not compile the tracker: {headers.split('. Try')[0]} (install the headers package of the running kernel)"
        elif str(failure).startswith("Failed to compile"):
            why = f"BCC could not compile the tracker: {_first_error_line(output or str(failure))}"
        elif where != "compile":
            why = f"BCC could not attach the tracker to {where}: {_first_error_line(str(failure) + chr(10) + output)}"
        else:  # compiled, but the kernel refused to load or attach a program
            why = f"BCC could not load the tracker: {_first_error_line(str(failure) + chr(10) + output)}"
        exc = BackendUnavailable(why)
        exc.compiler_output = output  # the whole log (the verifier's, on a load failure)
        raise exc from failure
    if output.strip():
        log.debug("BCC compiler output: %s", output.strip())
    return bpf


def event_from_raw(head: src.RawHead, path_bytes: bytes = b"") -> ProcEvent | None:
    """A validated ProcEvent, or None for a record that cannot be right (pid 0, unknown kind)."""
    kind = src.KIND_BY_NUMBER.get(head.kind)
    if kind is None or head.pid <= 0 or head.pid > 1 << 22:
        return None
    comm = bytes(head.comm).split(b"\0", 1)[0].decode(errors="replace")
    path = bytes(path_bytes).split(b"\0", 1)[0].decode(errors="replace")
    flags = head.flags
    fields: dict = dict(kind=kind, pid=head.pid, tgid=head.tgid, comm=comm, cgroup_id=head.cgroup_id, ts_ns=head.ts_ns)
    if kind is ProcEventKind.FORK:
        fields["ppid"] = head.ppid
    elif kind is ProcEventKind.EXEC:
        fields.update(old_pid=head.ppid, filename=path, gated=bool(flags & src.F_GATED))
    elif kind is ProcEventKind.EXIT:
        if flags & src.F_EXIT_CODE:
            fields.update(exit_code=head.exit_code, exit_code_known=True)
    elif kind is ProcEventKind.CGROUP_ATTACH:
        fields.update(cgroup_path=path, self_move=bool(flags & src.F_SELF_MOVE))
    return ProcEvent(**fields)


_HEAD_SIZE = ctypes.sizeof(src.RawHead)
_FULL_SIZE = ctypes.sizeof(src.RawEvent)


def event_from_record(data, size: int) -> ProcEvent | None:
    """Decode one ring-buffer record (a head, or a head and a path)."""
    if size < _HEAD_SIZE:
        return None
    if size >= _FULL_SIZE:
        rec = ctypes.cast(data, ctypes.POINTER(src.RawEvent)).contents
        return event_from_raw(rec.h, rec.path)
    return event_from_raw(ctypes.cast(data, ctypes.POINTER(src.RawHead)).contents)


class BpfBackend(TrackerBackend):
    name = "bpf"
    can_gate = True

    def __init__(
        self,
        options: src.TrackerOptions | None = None,
        *,
        debug: bool = False,
        gate_timeout_s: float = 2.0,
        consumer_nice: int | None = None,
        guard: bool = True,
        template: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        facts: Callable[[], src.KernelFacts] = src.kernel_facts,
    ) -> None:
        self.options = options or src.TrackerOptions()
        self.options.check()
        self.can_gate = self.options.gate
        self.debug = debug
        self.gate_timeout_s = gate_timeout_s
        # Stopped execs wait for this thread: on a busy host it should not queue behind
        # the very processes it places (e.g. -10; None leaves the daemon's own priority).
        self.consumer_nice = consumer_nice
        self._template = template
        self._facts = facts  # tests narrow it to load the no-BTF or older-kernel variants
        self._want_guard = guard and self.options.gate
        self._guard: GateGuard | None = None
        self._clock = clock
        self._bpf = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._gated: set[int] = set()
        self._owed: dict[int, float] = {}  # gated pid -> deadline for the fail-open SIGCONT
        self._sink: EventSink | None = None
        self.invalid_events = 0
        self._final_stats = {name: 0 for name in src.STAT_NAMES.values()}
        self.gate_timeouts = 0
        self.sink_errors = 0
        self.exit_codes = ""  # after load: where exit codes come from (bpf_source.Program)
        self.group_exit = ""
        self.pid_ns = None  # after load: the child pid namespace pids are read in, if any
        self.pidns_forks = False  # after load, with pid_ns: forks reported too (BTF)

    # -- life cycle -------------------------------------------------------------------

    def program(self) -> src.Program:
        """The program rendered for the running kernel's tracepoint layouts and BTF."""
        if self._template is not None:
            template = self._template
        else:
            try:
                template = src.load_template()
            except OSError as exc:
                raise BackendUnavailable(f"the tracker's BPF source is missing: {exc}") from exc
        try:
            return src.render_program(self.options, template, self._facts())
        except ValueError as exc:  # KernelMismatch, FormatError
            raise BackendUnavailable(f"the tracker does not fit this kernel: {exc}") from exc

    def source(self) -> str:
        return self.program().text

    def load(self) -> None:
        """Compile and attach (events wait in the ring buffer until start). Idempotent."""
        if self._bpf is not None:
            return
        program = self.program()
        if self.debug:
            print(program.text, file=sys.stderr)
        # -w: the Debian 6.1 headers produce warnings unrelated to this program.
        try:
            self._bpf = _compile(program.text, ["-w"], program.tracepoints)
        except BackendUnavailable as exc:
            if program.pid_ns is None:
                raise
            # Without pids it can name, a gated exec would stay stopped: no tracker at all.
            raise BackendUnavailable(f"{exc} (in a child pid namespace the tracker needs "
                                     "bpf_get_ns_current_pid_tgid, Linux 5.7+)") from exc
        self.exit_codes = program.exit_codes
        self.group_exit = program.group_exit
        self.pid_ns = program.pid_ns
        self.pidns_forks = program.pidns_forks

    def start(self, sink: EventSink) -> None:
        if self._thread is not None:
            raise RuntimeError("BpfBackend already started")
        self.load()
        if self._want_guard and self._guard is None:
            self._guard = GateGuard()
        self._sink = sink
        self._stop.clear()
        self._bpf[b"gate_events"].open_ring_buffer(self._on_raw)
        self._bpf[b"events"].open_ring_buffer(self._on_raw)
        if self._gated:
            self._write_gated(self._gated, set())
        self._thread = threading.Thread(target=self._poll_loop, name="agentd-bpf-tracker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        bpf = self._bpf
        if bpf is None:
            return
        # No new stops from here on; then hear about any stop already in the ring buffer.
        try:
            bpf[b"gated_cgroups"].clear()
        except Exception:  # the map may already be gone when stop() runs during teardown
            log.exception("could not clear gated_cgroups")
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            if self._sink is None:  # loaded, never started: still hear about every stop
                self._sink = lambda ev: None
                bpf[b"gate_events"].open_ring_buffer(self._on_raw)
            bpf.ring_buffer_consume()
        except Exception:
            log.exception("final ring buffer drain failed")
        with self._lock:
            owed = list(self._owed)
            self._owed.clear()
        continue_stopped(owed)
        for pid in owed:
            self._paid(pid)
        if self._guard is not None:
            self._guard.close()
            self._guard = None
        self._final_stats = self.kernel_stats()  # counters stay readable after stop
        bpf.cleanup()
        self._bpf = None
        self._sink = None

    # -- gate -------------------------------------------------------------------------

    def set_gated_cgroups(self, cgroup_ids: set[int]) -> None:
        ids = {int(c) for c in cgroup_ids}
        if any(c <= 0 for c in ids):
            raise ValueError("cgroup ids are positive")
        if ids and not self.options.gate:
            raise NotImplementedError("this BpfBackend was built with the exec gate off")
        old, self._gated = self._gated, ids
        if self._bpf is not None:
            self._write_gated(ids, old)

    def _write_gated(self, new: set[int], old: set[int]) -> None:
        table = self._bpf[b"gated_cgroups"]
        for c in new - old:
            table[ctypes.c_uint64(c)] = ctypes.c_uint8(1)
        for c in old - new:
            try:
                del table[ctypes.c_uint64(c)]
            except KeyError:
                pass

    def release(self, pid: int) -> bool:
        """SIGCONT a gated pid once it is placed. False when it was not owed a SIGCONT (never
        gated, already released or continued by the timeout) or has gone."""
        with self._lock:
            owed = self._owed.pop(pid, None) is not None
        if not owed:
            return False
        sent = _sigcont(pid)
        self._paid(pid)
        return sent

    def consumer_cpu_s(self) -> float:
        """CPU seconds the consumer thread has used (decoding events and running the sink)."""
        t = self._thread
        if t is None or t.native_id is None:
            return 0.0
        st = procfs.read_task_cpu_ticks(os.getpid(), t.native_id)
        return st / procfs.clock_ticks() if st is not None else 0.0

    def owed_pids(self) -> list[int]:
        with self._lock:
            return list(self._owed)

    # -- watch subtree ----------------------------------------------------------------

    def set_watch_root(self, cgroup_dir: str) -> None:
        """With watch_subtree: fork/exec/exit only for tasks under this v2 cgroup directory."""
        if not self.options.watch_subtree:
            raise RuntimeError("built without watch_subtree")
        if self._bpf is None:
            raise RuntimeError("start() first")
        self._bpf[b"watch_root"][0] = str(cgroup_dir)

    # -- counters ---------------------------------------------------------------------

    def kernel_stats(self) -> dict[str, int]:
        if self._bpf is None:
            return dict(self._final_stats)
        table = self._bpf[b"stats"]
        return {name: int(sum(table[ctypes.c_int(i)])) for i, name in src.STAT_NAMES.items()}

    def lost_events(self) -> int:
        return self.kernel_stats()["lost"]

    def stats(self) -> dict[str, int]:
        out = self.kernel_stats()
        out.update(
            invalid=self.invalid_events,
            gate_timeouts=self.gate_timeouts,
            sink_errors=self.sink_errors,
            gate_owed=len(self._owed),
        )
        return out

    def program_run_stats(self) -> dict[str, dict[str, int]]:
        """run_cnt / run_time_ns per program from the prog fd's fdinfo
        (counted only while sysctl kernel.bpf_stats_enabled=1)."""
        out: dict[str, dict[str, int]] = {}
        if self._bpf is None:
            return out
        for name, fn in self._bpf.funcs.items():
            try:
                with open(f"/proc/self/fdinfo/{fn.fd}") as f:
                    info = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
            except OSError:
                continue
            out[name.decode() if isinstance(name, bytes) else name] = {
                "run_cnt": int(info.get("run_cnt", "0").strip()),
                "run_time_ns": int(info.get("run_time_ns", "0").strip()),
            }
        return out

    # -- consumer thread --------------------------------------------------------------

    def _poll_loop(self) -> None:
        if self.consumer_nice is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.consumer_nice)
            except OSError as exc:
                log.warning("could not set the tracker thread's nice to %d: %s", self.consumer_nice, exc.strerror)
        while not self._stop.is_set():
            try:
                self._bpf.ring_buffer_poll(POLL_TIMEOUT_MS)
                # poll() reads only after a wakeup; events submitted without one wait here.
                self._bpf.ring_buffer_consume()
            except Exception:
                log.exception("ring buffer poll failed; the tracker goes on")
                time.sleep(POLL_TIMEOUT_MS / 1000)
            self._continue_overdue()

    def _on_raw(self, _ctx, data, size) -> int:
        ev = event_from_record(data, size)
        if ev is None:
            self.invalid_events += 1
            return 0
        # A gated exec is stopped until placed: from here to its SIGCONT, syscalls keep the
        # GIL instead of handing it to the event loop at each one (agentd.heldsys).
        with heldsys.holding() if ev.gated else contextlib.nullcontext():
            if ev.gated:
                with self._lock:
                    self._owed[ev.pid] = self._clock() + self.gate_timeout_s
                if self._guard is not None:
                    self._guard.owe(ev.pid)
            try:
                self._sink(ev)
            except Exception:
                self.sink_errors += 1
                log.exception("tracker sink failed on %s", ev)
        return 0

    def _continue_overdue(self) -> None:
        if not self._owed:
            return
        now = self._clock()
        with self._lock:
            overdue = [pid for pid, deadline in self._owed.items() if deadline <= now]
            for pid in overdue:
                del self._owed[pid]
        for pid in overdue:
            self._paid(pid)
            st = procfs.read_stat(pid)
            if st is None or st.state != "T":
                continue  # gone, or already continued by someone else
            self.gate_timeouts += 1
            log.warning(
                "pid %d was stopped at exec and not placed within %.1f s; continuing it where it is",
                pid, self.gate_timeout_s,
            )
            _sigcont(pid)


    def _paid(self, pid: int) -> None:
        guard = self._guard
        if guard is not None:
            guard.paid(pid)

    @property
    def guard_pid(self) -> int | None:
        return self._guard.pid if self._guard is not None else None


def _sigcont(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGCONT)
        return True
    except ProcessLookupError:
        return False


def continue_stopped_in(cgroup_dirs) -> list[int]:
    """SIGCONT every process in state T (stopped) directly in these v2 cgroup directories:
    what a restarted daemon does for execs its dead predecessor had gated."""
    done = []
    for d in cgroup_dirs:
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                pids = [int(x) for x in f.read().split()]
        except OSError:
            continue
        for pid in pids:
            st = procfs.read_stat(pid)
            if st is not None and st.state == "T" and _sigcont(pid):
                done.append(pid)
    return done


def continue_stopped(pids) -> int:
    """SIGCONT each pid (gone ones are fine); returns how many were signalled."""
    return sum(1 for pid in pids if _sigcont(pid))
