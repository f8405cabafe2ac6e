"""A stand-in for pynvml with made-up GPUs, for unit tests and --simulate-gpus (agentctl gpu,
agentd run): the same calls NvmlSampler makes, made-up numbers, and every snapshot it
produces says "simulated" (backend, status line and GPU names)."""

from __future__ import annotations

import time

try:
    import pynvml as _pynvml  # only for its NVMLError class, so injected errors look real
except ImportError:  # pragma: no cover - nvidia-ml-py is a declared dependency
    _pynvml = None


class _Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class FakeNvmlBackend:
    """A stand-in for pynvml with made-up GPUs. For unit tests and --simulate-gpus only:
    every name it reports says "simulated" so no reader mistakes it for a real GPU.

    processes: {gpu index: [(host pid, used bytes), ...]}; fail: {"init": exc, or
    (gpu index, "call name"): exc} to inject NVML errors; mig: GPU indices with MIG on.
    """

    BACKEND_NAME = "simulated"
    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    nvmlEventTypeXidCriticalError = 8

    def __init__(self, gpus: int = 1, memory_total: int = 80 * 2**30, processes: dict | None = None,
                 fail: dict | None = None, mig: tuple = (), xids: dict | None = None):
        self.n = gpus
        self.memory_total = memory_total
        self.procs = processes or {}
        self.fail = fail or {}
        self.mig = set(mig)
        self.xids = {k: list(v) for k, v in (xids or {}).items()}
        self.calls = 0
        self.initialized = False
        err = _pynvml.NVMLError if _pynvml else RuntimeError
        self._nvml_error = err

    def _check(self, gpu: int | None, name: str) -> None:
        self.calls += 1
        exc = self.fail.get((gpu, name)) or self.fail.get(name)
        if exc is not None:
            raise exc

    def nvmlInit(self):
        self._check(None, "init")
        self.initialized = True

    def nvmlShutdown(self):
        self.initialized = False

    def nvmlSystemGetDriverVersion(self):
        return "simulated"

    def nvmlSystemGetNVMLVersion(self):
        return "simulated"

    def nvmlSystemGetCudaDriverVersion_v2(self):
        return 12080

    def nvmlDeviceGetCount(self):
        self._check(None, "count")
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetName(self, h):
        self._check(h[1], "name")
        return f"Simulated GPU {h[1]} (agentd fake NVML)"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-simulated-{h[1]:04d}"

    def _used(self, gpu):
        return sum(b for _, b in self.procs.get(gpu, [])) + 600 * 2**20

    def nvmlDeviceGetMemoryInfo(self, h):
        if h[0] == "mig":
            total = self.memory_total // 7
            return _Obj(total=total, used=600 * 2**20, free=total - 600 * 2**20)
        self._check(h[1], "memory")
        used = self._used(h[1])
        return _Obj(total=self.memory_total, used=used, free=self.memory_total - used)

    def nvmlDeviceGetUtilizationRates(self, h):
        self._check(h[1], "utilization")
        busy = min(100, 35 * len(self.procs.get(h[1], [])))
        return _Obj(gpu=busy, memory=busy // 2)

    def nvmlDeviceGetClockInfo(self, h, kind):
        self._check(h[1], "clock")
        return 1755

    def nvmlDeviceGetPowerUsage(self, h):
        self._check(h[1], "power")
        return 120000 + 1000 * self._used(h[1]) // 2**30

    def nvmlDeviceGetPowerManagementLimit(self, h):
        return 700000

    def nvmlDeviceGetTemperature(self, h, kind):
        self._check(h[1], "temperature")
        return 41

    def nvmlDeviceGetTotalEccErrors(self, h, kind, counter):
        self._check(h[1], "ecc")
        return 0

    def nvmlDeviceGetMigMode(self, h):
        self._check(h[1], "mig")
        on = 1 if h[1] in self.mig else 0
        return (on, on)

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        return 7 if h[1] in self.mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, j):
        if j >= 2:
            raise self._nvml_error(6) if _pynvml else RuntimeError("not found")
        return ("mig", h[1], j)

    def nvmlDeviceGetGpuInstanceId(self, mh):
        return mh[2] + 1

    def nvmlDeviceGetComputeInstanceId(self, mh):
        return 0

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        self._check(h[1], "processes")
        return [_Obj(pid=pid, usedGpuMemory=b, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
                for pid, b in self.procs.get(h[1], [])]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return []

    def nvmlDeviceGetProcessUtilization(self, h, last_seen):
        self._check(h[1], "process_util")
        now = int(time.time() * 1e6)
        return [_Obj(pid=pid, smUtil=30, memUtil=12, encUtil=0, decUtil=0, timeStamp=now)
                for pid, _ in self.procs.get(h[1], [])]

    def nvmlEventSetCreate(self):
        return "events"

    def nvmlDeviceRegisterEvents(self, h, kind, es):
        return None

    def nvmlEventSetWait_v2(self, es, timeout_ms):
        for gpu, pending in self.xids.items():
            if pending:
                return _Obj(device=("gpu", gpu), eventData=pending.pop(0), eventType=8)
        raise self._nvml_error(10) if _pynvml else RuntimeError("timeout")

    def nvmlEventSetFree(self, es):
        return None
