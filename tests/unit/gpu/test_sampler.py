"""NvmlSampler: the real NVML path on this host, and the fake backend for what a host
without a GPU cannot show (several GPUs, MIG, lost GPUs, Xid events)."""

from __future__ import annotations

import os

import pynvml
import pytest

from agentd.procfs import read_cgroup, read_ns_pids
from agentd.gpu.fake_nvml import FakeNvmlBackend
from agentd.gpu.sampler import GpuSnapshot, NvmlSampler, describe_init_error




def test_real_nvml_on_this_host(nvml_works):
    s = NvmlSampler()
    ok, line = s.probe()
    snap = s.sample()
    assert isinstance(snap, GpuSnapshot)
    if nvml_works:  # a GPU host: live data
        assert ok and "GPU" in line and snap.available and snap.backend == "nvml"
        assert all(g.memory_total_bytes and g.memory_total_bytes > 0 for g in snap.gpus)
    else:
        assert not ok
        assert line.startswith("no NVIDIA driver") or "driver not loaded" in line
        assert line.endswith("GPU features off")
        assert not snap.available and snap.status == line and snap.gpus == []
    s.close()


@pytest.mark.parametrize("err,expected", [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "no NVIDIA driver (libnvidia-ml.so.1 not found); GPU features off"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "NVIDIA driver not loaded"),
    (pynvml.NVML_ERROR_NO_PERMISSION, "no permission to use NVML"),
])
def test_init_failures_become_one_line_and_samples_never_raise(err, expected):
    exc = pynvml.NVMLError(err)
    assert describe_init_error(exc).startswith(expected)
    s = NvmlSampler(backend=FakeNvmlBackend(fail={"init": exc}))
    ok, line = s.probe()
    assert not ok and line.startswith(expected)
    snap = s.sample()
    assert not snap.available and snap.status.startswith(expected)


def test_fake_gpus_are_labelled_simulated_everywhere():
    s = NvmlSampler(backend=FakeNvmlBackend(gpus=2))
    ok, line = s.probe()
    snap = s.sample()
    assert ok and line.startswith("simulated ")
    assert snap.backend == "simulated" and snap.status.startswith("simulated ")
    assert all("Simulated" in g.name for g in snap.gpus)
    assert [g.index for g in snap.gpus] == [0, 1]
    assert snap.gpus[0].memory_total_bytes == 80 * 2**30


def test_processes_are_identified_through_real_proc():
    me, parent = os.getpid(), os.getppid()
    fake = FakeNvmlBackend(gpus=2, processes={0: [(me, 3 * 2**30)], 1: [(parent, 2**30)]})
    snap = NvmlSampler(backend=fake).sample()
    procs = {p.host_pid: p for p in snap.processes()}
    assert procs[me].gpu == 0 and procs[parent].gpu == 1
    assert procs[me].used_memory_bytes == 3 * 2**30
    assert procs[me].sm_util == 30  # from the per-process utilization samples
    assert procs[me].ns_pids == list(read_ns_pids(me)) and procs[me].ns_pids[0] == me
    assert procs[me].cgroup == read_cgroup(me) and procs[me].cgroup.startswith("/")
    assert procs[me].comm == open(f"/proc/{me}/comm").read().strip()
    # gone processes stay listed (NVML still holds their memory) but without identity
    fake.procs[0].append((2**22 + 12345, 2**20))
    gone = [p for p in NvmlSampler(backend=fake).sample().processes() if p.host_pid == 2**22 + 12345][0]
    assert gone.unit == "" and gone.ns_pids == []


def test_a_lost_gpu_degrades_the_snapshot_without_raising():
    fake = FakeNvmlBackend(gpus=2, fail={(1, "memory"): pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)})
    snap = NvmlSampler(backend=fake).sample()
    assert snap.available and snap.degraded
    assert snap.gpus[0].health == "ok" and snap.gpus[0].memory_used_bytes is not None
    assert snap.gpus[1].health.startswith("lost")
    assert snap.gpus[1].memory_total_bytes is None
    assert "degraded: GPU 1 lost" in snap.status


def test_an_unsupported_field_is_none_not_an_error():
    fake = FakeNvmlBackend(gpus=1, fail={(0, "power"): pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)})
    g = NvmlSampler(backend=fake).sample().gpus[0]
    assert g.power_w is None and g.health == "ok" and g.errors == []


def test_xid_events_and_mig_instances():
    fake = FakeNvmlBackend(gpus=2, mig=(1,), xids={0: [79]})
    s = NvmlSampler(backend=fake)
    first = s.sample()
    assert first.gpus[0].xid_events == [79] and first.gpus[0].health == "degraded: Xid 79"
    assert first.gpus[1].mig_enabled and len(first.gpus[1].mig) == 2
    assert first.gpus[1].mig[0].memory_total_bytes > 0
    second = s.sample()  # events are drained: reported once
    assert second.gpus[0].xid_events == [] and second.gpus[0].health == "ok"


def test_costly_parts_can_be_switched_off():
    fake = FakeNvmlBackend(gpus=1, processes={0: [(os.getpid(), 1)]})
    s = NvmlSampler(backend=fake, processes=False, health=False)
    s.probe()
    before = fake.calls
    snap = s.sample()
    assert snap.gpus[0].processes == [] and snap.gpus[0].ecc_uncorrected is None
    full = NvmlSampler(backend=FakeNvmlBackend(gpus=1, processes={0: [(os.getpid(), 1)]}))
    full.probe()
    b2 = full.nvml.calls
    full.sample()
    assert fake.calls - before < full.nvml.calls - b2
    assert snap.sample_seconds > 0


def test_snapshot_json_round_trips():
    import json
    snap = NvmlSampler(backend=FakeNvmlBackend(gpus=1, processes={0: [(os.getpid(), 5)]})).sample()
    d = json.loads(snap.dumps())
    assert d["backend"] == "simulated" and d["gpus"][0]["processes"][0]["host_pid"] == os.getpid()
    assert d["degraded"] is False


def test_sampler_thread_polls_until_stopped_and_stops_at_once_without_a_driver():
    import threading
    from agentd.gpu.sampler import SamplerThread

    got, three = [], threading.Event()

    def sink(snap):
        got.append(snap)
        if len(got) >= 3:
            three.set()

    t = SamplerThread(NvmlSampler(backend=FakeNvmlBackend(gpus=1)), sink, interval_s=0.01)
    t.start()
    assert three.wait(5)
    t.stop()
    n = len(got)
    assert all(s.available for s in got)
    import time
    time.sleep(0.05)
    assert len(got) == n  # stopped

    none: list = []
    off = SamplerThread(NvmlSampler(backend=FakeNvmlBackend(fail={"init": pynvml.NVMLError(
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)})), none.append, interval_s=0.01)
    off.start()
    off._thread.join(5)
    assert len(none) == 1 and not none[0].available and none[0].status.startswith("no NVIDIA driver")
