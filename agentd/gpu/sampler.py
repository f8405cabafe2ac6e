"""Live GPU sampling through NVML (pynvml, from the nvidia-ml-py package).

    s = NvmlSampler()
    ok, line = s.probe()      # (False, "no NVIDIA driver (libnvidia-ml.so.1 not found); GPU features off")
    snap = s.sample()         # GpuSnapshot; never raises on NVML errors after probe
    snap.to_json()

Per GPU (and per MIG instance where MIG is on): memory total/used/free, utilization (GPU
and memory), SM clock, power and its limit, temperature, uncorrected ECC errors (volatile)
and Xid critical-error events since the last sample. Per process: memory from the compute
and graphics process lists, SM/memory utilization from NVML's per-process samples, and who
it is: NVML's host pid, its pids in nested pid namespaces (a container's pid is not the
host's), its command and agentd unit (agentd.gpu.procinfo).

Errors never escape `sample()`: a field NVML will not give (NotSupported) is None; a lost
GPU, a permission problem or any other NVML error marks that GPU and the snapshot
"degraded" with one line saying why. Without a driver, `probe()` says so once and every
sample is an unavailable snapshot carrying that line, so the daemon runs on without GPU
features.

Cost: one sample is a few dozen NVML calls per GPU plus a /proc read per GPU process;
`sample_seconds` in each snapshot reports it, and the knobs `processes`,
`process_utilization`, `health` turn the costlier parts off. `interval_s` is the period a
poller should use (the daemon's thread calls sample() that often).

agentd.gpu.fake_nvml.FakeNvmlBackend stands in for pynvml in unit tests and for `agentctl
gpu --simulate-gpus N` (and `agentd run --simulate-gpus N`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from agentd.gpu.procinfo import PROC, IdentityCache

try:  # nvidia-ml-py; the daemon's dependency, but keep the module importable without it
    import pynvml as _pynvml
except ImportError:  # pragma: no cover
    _pynvml = None


@dataclass
class GpuProcess:
    host_pid: int
    gpu: int
    kind: str  # "compute" or "graphics"
    used_memory_bytes: int | None
    sm_util: int | None = None  # percent, from NVML's per-process samples
    mem_util: int | None = None
    ns_pids: list = field(default_factory=list)
    container_pid: int | None = None
    comm: str = ""
    cgroup: str = ""
    unit: str = ""
    mig: str = ""  # "gi/ci" ids when the process runs in a MIG instance


@dataclass
class MigInstance:
    index: int
    uuid: str
    gpu_instance_id: int | None
    compute_instance_id: int | None
    memory_total_bytes: int | None
    memory_used_bytes: int | None


@dataclass
class GpuInfo:
    index: int
    name: str = ""
    uuid: str = ""
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    util_gpu: int | None = None  # percent of time a kernel ran over NVML's sample period
    util_memory: int | None = None
    sm_clock_mhz: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    temperature_c: int | None = None
    ecc_uncorrected: int | None = None
    xid_events: list = field(default_factory=list)
    mig_enabled: bool | None = None
    mig: list = field(default_factory=list)
    processes: list = field(default_factory=list)
    health: str = "ok"  # "ok", or "degraded: <why>", or "lost: <why>"
    errors: list = field(default_factory=list)


@dataclass
class GpuSnapshot:
    available: bool
    status: str  # one line: what the sampler sees, or why GPU features are off
    backend: str  # "nvml", "simulated" or "none"
    timestamp: float
    driver: str = ""
    nvml_version: str = ""
    cuda_version: str = ""
    gpus: list = field(default_factory=list)
    sample_seconds: float = 0.0

    @property
    def degraded(self) -> bool:
        return any(g.health != "ok" for g in self.gpus)

    def processes(self) -> list:
        return [p for g in self.gpus for p in g.processes]

    def to_json(self) -> dict:
        d = asdict(self)
        d["degraded"] = self.degraded
        return d

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def _err_name(exc: Exception) -> str:
    return type(exc).__name__.replace("NVMLError_", "")


def describe_init_error(exc: BaseException) -> str:
    """One line a person on call understands, for an NVML that will not start."""
    name = type(exc).__name__
    if name in ("NVMLError_LibraryNotFound",) or isinstance(exc, (ImportError, OSError)):
        return "no NVIDIA driver (libnvidia-ml.so.1 not found); GPU features off"
    if name == "NVMLError_DriverNotLoaded":
        return "NVIDIA driver not loaded (is the nvidia kernel module in?); GPU features off"
    if name == "NVMLError_NoPermission":
        return "no permission to use NVML (check /dev/nvidia* access); GPU features off"
    if name == "NVMLError_GpuIsLost":
        return "a GPU has fallen off the bus (NVML: GPU is lost); GPU features off"
    return f"NVML failed to start ({exc}); GPU features off"


class NvmlSampler:
    """Samples every GPU through an NVML backend (pynvml by default, or agentd.gpu.fake_nvml.FakeNvmlBackend)."""

    def __init__(self, backend: Any = None, proc_root: Path = PROC, interval_s: float = 2.0,
                 processes: bool = True, process_utilization: bool = True, health: bool = True,
                 clock: Callable[[], float] = time.time):
        self.nvml = backend if backend is not None else _pynvml
        self.backend_name = getattr(self.nvml, "BACKEND_NAME", "nvml")
        self.interval_s = interval_s
        self.want_processes = processes
        self.want_process_util = process_utilization
        self.want_health = health
        self.clock = clock
        self.ids = IdentityCache(proc_root)
        self._ok: bool | None = None
        self._line = ""
        self._handles: list = []
        self._last_seen: dict[int, int] = {}
        self._event_set = None
        self._info: dict[str, str] = {}
        self._uuid_index: dict[str, int] = {}

    # --- start-up -------------------------------------------------------------------
    def probe(self) -> tuple[bool, str]:
        if self._ok is not None:
            return self._ok, self._line
        if self.nvml is None:
            self._ok, self._line = False, "no NVIDIA driver (nvidia-ml-py not installed); GPU features off"
            return self._ok, self._line
        try:
            self.nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - any failure here means no GPU features
            self._ok, self._line = False, describe_init_error(exc)
            return self._ok, self._line
        try:
            n = self.nvml.nvmlDeviceGetCount()
            self._handles = [self.nvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
            names = [self._str(self.nvml.nvmlDeviceGetName(h)) for h in self._handles]
        except Exception as exc:  # noqa: BLE001
            self._ok, self._line = False, f"NVML started but cannot list GPUs ({exc}); GPU features off"
            return self._ok, self._line
        self._info = {"driver": self._opt(self.nvml.nvmlSystemGetDriverVersion),
                      "nvml": self._opt(self.nvml.nvmlSystemGetNVMLVersion)}
        cuda = self._opt(self.nvml.nvmlSystemGetCudaDriverVersion_v2)
        if cuda and str(cuda).isdigit():
            cuda = f"{int(cuda) // 1000}.{int(cuda) % 1000 // 10}"
        self._info["cuda"] = str(cuda or "")
        if self.want_health:
            self._uuid_index = {self._opt(lambda h=h: self.nvml.nvmlDeviceGetUUID(h)): i
                                for i, h in enumerate(self._handles)}
            self._register_xid_events()
        label = "simulated " if self.backend_name == "simulated" else ""
        if n == 0:
            self._ok, self._line = False, f"{label}NVML {self._info['nvml']} works but sees no GPU; GPU features off"
            return self._ok, self._line
        kinds = ", ".join(sorted(set(names)))
        self._ok = True
        self._line = (f"{label}NVML {self._info['nvml']}, driver {self._info['driver']}, "
                      f"{n} GPU{'s' if n > 1 else ''}: {kinds}")
        return self._ok, self._line

    def close(self) -> None:
        if self._ok:
            try:
                if self._event_set is not None:
                    self.nvml.nvmlEventSetFree(self._event_set)
                self.nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
        self._ok = None

    # --- sampling -------------------------------------------------------------------
    def sample(self) -> GpuSnapshot:
        t0 = time.perf_counter()
        ok, line = self.probe()
        if not ok:
            return GpuSnapshot(available=False, status=line, backend=self.backend_name if self.nvml else "none",
                               timestamp=self.clock(), sample_seconds=time.perf_counter() - t0)
        xids = self._drain_xid_events() if self.want_health else {}
        gpus = []
        for i, h in enumerate(self._handles):
            try:
                gpus.append(self._sample_gpu(i, h, xids.get(i, [])))
            except Exception as exc:  # noqa: BLE001 - a GPU that fails entirely is reported, not raised
                gpus.append(GpuInfo(index=i, health=self._health_for(exc), errors=[f"sample: {exc}"]))
        bad = [g for g in gpus if g.health != "ok"]
        status = line if not bad else (line + "; degraded: " + "; ".join(f"GPU {g.index} {g.health}" for g in bad))
        return GpuSnapshot(available=True, status=status, backend=self.backend_name, timestamp=self.clock(),
                           driver=self._info.get("driver", ""), nvml_version=self._info.get("nvml", ""),
                           cuda_version=self._info.get("cuda", ""), gpus=gpus,
                           sample_seconds=time.perf_counter() - t0)

    def _sample_gpu(self, i: int, h: Any, xids: list) -> GpuInfo:
        nv = self.nvml
        g = GpuInfo(index=i, xid_events=xids)
        errors: list[str] = []

        def call(what, fn, *args):
            try:
                return fn(*args)
            except Exception as exc:  # noqa: BLE001
                if _err_name(exc) != "NotSupported":
                    errors.append(f"{what}: {_err_name(exc)}")
                    if _err_name(exc) in ("GpuIsLost", "NoPermission", "Unknown") and g.health == "ok":
                        g.health = self._health_for(exc)
                return None

        g.name = self._str(call("name", nv.nvmlDeviceGetName, h) or "")
        g.uuid = self._str(call("uuid", nv.nvmlDeviceGetUUID, h) or "")
        mem = call("memory", nv.nvmlDeviceGetMemoryInfo, h)
        if mem is not None:
            g.memory_total_bytes, g.memory_used_bytes, g.memory_free_bytes = int(mem.total), int(mem.used), int(mem.free)
        util = call("utilization", nv.nvmlDeviceGetUtilizationRates, h)
        if util is not None:
            g.util_gpu, g.util_memory = int(util.gpu), int(util.memory)
        g.sm_clock_mhz = call("sm clock", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)
        mw = call("power", nv.nvmlDeviceGetPowerUsage, h)
        g.power_w = mw / 1000.0 if mw is not None else None
        lim = call("power limit", nv.nvmlDeviceGetPowerManagementLimit, h)
        g.power_limit_w = lim / 1000.0 if lim is not None else None
        g.temperature_c = call("temperature", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
        if self.want_health:
            g.ecc_uncorrected = call("ecc", nv.nvmlDeviceGetTotalEccErrors, h,
                                     nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC)
            if g.ecc_uncorrected and g.health == "ok":
                g.health = f"degraded: {g.ecc_uncorrected} uncorrected ECC errors"
            if xids and g.health == "ok":
                g.health = f"degraded: Xid {', '.join(str(x) for x in xids)}"
        mig_mode = call("mig mode", nv.nvmlDeviceGetMigMode, h)
        g.mig_enabled = bool(mig_mode[0]) if mig_mode is not None else None
        if g.mig_enabled:
            g.mig = self._sample_mig(h, errors)
        if self.want_processes:
            g.processes = self._sample_processes(i, h, call)
        g.errors = errors
        return g

    def _sample_mig(self, h: Any, errors: list) -> list:
        nv, out = self.nvml, []
        try:
            count = nv.nvmlDeviceGetMaxMigDeviceCount(h)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"mig count: {_err_name(exc)}")
            return out
        for j in range(count):
            try:
                mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
            except Exception:  # noqa: BLE001 - NotFound: the slot is empty
                continue
            def opt(fn, *a):
                try:
                    return fn(*a)
                except Exception:  # noqa: BLE001
                    return None
            mem = opt(nv.nvmlDeviceGetMemoryInfo, mh)
            out.append(MigInstance(index=j, uuid=self._str(opt(nv.nvmlDeviceGetUUID, mh) or ""),
                                   gpu_instance_id=opt(nv.nvmlDeviceGetGpuInstanceId, mh),
                                   compute_instance_id=opt(nv.nvmlDeviceGetComputeInstanceId, mh),
                                   memory_total_bytes=int(mem.total) if mem else None,
                                   memory_used_bytes=int(mem.used) if mem else None))
        return out

    def _sample_processes(self, i: int, h: Any, call) -> list:
        nv = self.nvml
        procs: dict[int, GpuProcess] = {}
        for kind, fn in (("compute", nv.nvmlDeviceGetComputeRunningProcesses),
                         ("graphics", nv.nvmlDeviceGetGraphicsRunningProcesses)):
            for p in call(f"{kind} processes", fn, h) or []:
                used = getattr(p, "usedGpuMemory", None)
                gi, ci = getattr(p, "gpuInstanceId", None), getattr(p, "computeInstanceId", None)
                mig = f"{gi}/{ci}" if gi is not None and gi != 0xFFFFFFFF else ""
                prev = procs.get(p.pid)
                if prev is not None:  # a process in both lists: one row, kinds joined
                    prev.kind = "compute+graphics"
                    continue
                procs[p.pid] = GpuProcess(host_pid=int(p.pid), gpu=i, kind=kind,
                                          used_memory_bytes=int(used) if used is not None else None, mig=mig)
        if self.want_process_util and procs:
            try:
                samples = nv.nvmlDeviceGetProcessUtilization(h, self._last_seen.get(i, 0))
            except Exception:  # noqa: BLE001 - NotFound when no sample since last time; NotSupported on MIG
                samples = []
            newest = self._last_seen.get(i, 0)
            for s in samples:
                p = procs.get(s.pid)
                if p is not None:
                    p.sm_util, p.mem_util = int(s.smUtil), int(s.memUtil)
                newest = max(newest, int(s.timeStamp))
            self._last_seen[i] = newest
        for p in procs.values():
            ident = self.ids.get(p.host_pid)
            p.ns_pids, p.container_pid = list(ident.ns_pids), ident.container_pid
            p.comm, p.cgroup, p.unit = ident.comm, ident.cgroup, ident.unit
        return sorted(procs.values(), key=lambda p: p.host_pid)

    # --- Xid events -----------------------------------------------------------------
    def _register_xid_events(self) -> None:
        nv = self.nvml
        try:
            self._event_set = nv.nvmlEventSetCreate()
            for h in self._handles:
                nv.nvmlDeviceRegisterEvents(h, nv.nvmlEventTypeXidCriticalError, self._event_set)
        except Exception:  # noqa: BLE001 - not supported on every GPU/driver; ECC still works
            self._event_set = None

    def _drain_xid_events(self) -> dict[int, list]:
        out: dict[int, list] = {}
        if self._event_set is None:
            return out
        nv = self.nvml
        for _ in range(64):
            try:
                ev = nv.nvmlEventSetWait_v2(self._event_set, 0)
            except Exception:  # noqa: BLE001 - Timeout: nothing pending
                break
            # ctypes handles compare by identity, so events are matched to GPUs by UUID
            try:
                idx = self._uuid_index.get(self._str(nv.nvmlDeviceGetUUID(ev.device)), -1)
            except Exception:  # noqa: BLE001
                idx = -1
            out.setdefault(idx, []).append(int(ev.eventData))
        return out

    # --- helpers --------------------------------------------------------------------
    @staticmethod
    def _str(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    def _opt(self, fn) -> str:
        try:
            return self._str(fn())
        except Exception:  # noqa: BLE001
            return ""

    @staticmethod
    def _health_for(exc: BaseException) -> str:
        name = _err_name(exc)
        if name == "GpuIsLost":
            return "lost: GPU has fallen off the bus"
        if name == "NoPermission":
            return "degraded: no permission"
        return f"degraded: {name}"


class SamplerThread:
    """Calls sampler.sample() every `interval_s` in a daemon thread and hands each snapshot
    to `sink` (which should only pass it to the event loop, e.g. loop.call_soon_threadsafe).
    When NVML is unavailable it hands over one unavailable snapshot and stops: the daemon
    runs on without GPU features and has said why."""

    def __init__(self, sampler: NvmlSampler, sink: Callable[[GpuSnapshot], None], interval_s: float | None = None):
        import threading

        self.sampler, self.sink = sampler, sink
        self.interval_s = interval_s if interval_s is not None else sampler.interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentd-nvml", daemon=True)
        self.samples = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.sampler.close()

    def _run(self) -> None:
        ok, _ = self.sampler.probe()
        while not self._stop.is_set():
            snap = self.sampler.sample()
            self.samples += 1
            try:
                self.sink(snap)
            except Exception:  # noqa: BLE001 - a failing sink must not kill the poller
                pass
            if not ok:
                return
            self._stop.wait(self.interval_s)
