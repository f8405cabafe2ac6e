"""The colocation kind through the real daemon on real processes and real cgroups.

GPUs are SIMULATED (DaemonConfig(simulate_gpus=2): agentd's fake NVML backend, whose GPUs
are named "Simulated GPU n (agentd fake NVML)"); everything else is real: `agentctl run
--class` is a real process that the daemon moves into jobs/<name> after checking its peer
credentials and /proc start time, the cpuset and cpu weight are the kernel's files, and
the guard's freeze/thaw/terminate act on real processes whose state is read from /proc
and cgroup.events.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from agentd.api.client import ApiClient, ApiClientError
from agentd.cgroups import fs
from agentd.cgroups.detect import open_driver
from agentd.cgroups.parse import weight_to_shares
from agentd.kinds.registry import KindEntry
from agentd import procfs
from tests.daemon_thread import DaemonThread, test_config
from tests.e2e.test_kind_routes import as_nobody

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root (cgroups, peer credentials)")

REPO = str(Path(__file__).resolve().parents[2])
COLOCATION = KindEntry("colocation", "agentd.colocation", "cli.colocation_commands")
G = 2**30
POLICY = """\
version: 1
name: gpu-sharing
colocation:
  guard: {step_s: 0.6, hold_s: 1.0, term_grace_s: 1.0, memory_high_pct: 95, memory_low_pct: 85}
  classes:
    - name: inference
      type: latency-critical
      priority: 100
      slo_tpot_ms: 40
      max_slowdown: 2.0
      expected_util_pct: 40
      cpu_cores: 1
      cpu_weight: 500
    - name: training
      type: best-effort
      priority: 10
      expected_util_pct: 20
      cpu_weight: 100
"""


class ColocationDaemon(DaemonThread):
    """The real Daemon with the colocation kind and 2 simulated GPUs (a labelled fake NVML)."""

    def __init__(self, tmp: str, leaf: str, policy: str = POLICY):
        pdir = Path(tmp, "policies")
        pdir.mkdir(exist_ok=True)
        (pdir / "gpu.yaml").write_text(policy)
        super().__init__(test_config(tmp, leaf, policy_dir=pdir, gpu=True, simulate_gpus=2, kinds=(COLOCATION,)))

    def __enter__(self):
        super().__enter__()
        self.daemon.gpu.interval_s = 0.3
        if self.daemon._gpu_thread is not None:
            self.daemon._gpu_thread.interval_s = 0.3
        wait_for(lambda: self.kind.views, what="a simulated GPU sample")
        return self

    @property
    def kind(self):
        return super().kind("colocation")


def wait_for(cond, timeout=15.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def env():
    d = tempfile.mkdtemp(prefix="agentd-coloc-")
    os.chmod(d, 0o755)
    leaf = f"agentd-test-{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen] = []
    yield d, leaf, procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    driver = open_driver(leaf_name=leaf)
    roots = [t.root_dir for t in (driver.tree, *getattr(driver, "v1", {}).values())]
    for rel in ("jobs",):
        for name in driver.children(rel) if driver.exists(rel) else []:
            try:
                fs.write(driver.knob_path(f"{rel}/{name}", "cgroup.freeze"), "0")
            except OSError:
                pass
    driver.remove("")
    shutil.rmtree(d, ignore_errors=True)
    assert not [r for r in roots if os.path.exists(r)], "test cgroups left behind"


SPIN = "import time\nwhile True:\n    sum(range(1000))\n"
IGNORE_TERM_SPIN = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + SPIN


def run_job(dt, procs, job_class, name, code, size="10G"):
    cmd = [sys.executable, "-m", "cli.agentctl", "--socket", str(dt.config.socket_path), "run", "--class", job_class,
           "--name", name, "--estimate-bytes", size, "--", sys.executable, "-c", code]
    p = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    procs.append(p)
    return p


def execd(pid):
    """The job's own command runs (agentctl exec'd it: same pid, argv python -c ...)."""
    argv = procfs.read_cmdline(pid) or []
    return len(argv) > 1 and argv[1] == "-c"


def environ(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(kv.split("=", 1) for kv in f.read().decode().split("\0") if "=" in kv)


def cgroup_v2(pid):
    return procfs.read_cgroup_v2(pid)


def utime(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[11])


def advancing(pid, dt_s=0.4):
    a = utime(pid)
    time.sleep(dt_s)
    return utime(pid) > a


def events(client, kind_prefix="job."):
    return [e for e in client.recent_events(limit=1000) if e["kind"].startswith(kind_prefix)]


def test_run_class_places_real_processes_with_env_cpuset_and_weight(env):
    d, leaf, procs = env
    with ColocationDaemon(d, leaf) as dt:
        driver = dt.daemon.driver
        client = ApiClient(dt.config.socket_path)
        inf = run_job(dt, procs, "inference", "inf", "import time; time.sleep(60)")
        wait_for(lambda: (cgroup_v2(inf.pid) or "").endswith("/jobs/inf"), what="inf in jobs/inf")
        # the process is the one agentctl started (exec keeps the pid), with the job's environment
        wait_for(lambda: execd(inf.pid), what="exec of the job's command")
        e = environ(inf.pid)
        assert e["CUDA_VISIBLE_DEVICES"] == "GPU-simulated-0000" and e["AGENTD_JOB"] == "inf"
        assert e["AGENTD_GPU_MEMORY_LIMIT_BYTES"] == str(10 * G)
        assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in e  # no MPS daemon configured
        # cpuset: one core kept apart for the latency-critical class (the top one), cpu weight 500
        online = dt.kind.topo.online
        assert fs.read(driver.knob_path("jobs/inf", "cpuset.cpus")).strip() == str(online[-1])
        w = fs.read(driver.knob_path("jobs/inf", "cpu.weight")) if os.path.exists(driver.knob_path("jobs/inf", "cpu.weight")) \
            else None
        if w is not None:
            assert w.strip() == "500"
        else:
            assert fs.read(driver.knob_path("jobs/inf", "cpu.shares")).strip() == str(weight_to_shares(500))
        # a best-effort job next to it: the kept core is not in its cpuset
        tr = run_job(dt, procs, "training", "tr", "import time; time.sleep(60)")
        wait_for(lambda: (cgroup_v2(tr.pid) or "").endswith("/jobs/tr"), what="tr in jobs/tr")
        tr_cpus = fs.read(driver.knob_path("jobs/tr", "cpuset.cpus")).strip()
        if len(online) > 1:
            assert str(online[-1]) not in tr_cpus.split(",") and tr_cpus
        # the API and the CLI show both
        rows = {j["name"]: j for j in client.kind_get("colocation", "jobs")}
        assert rows["inf"]["state"] == rows["tr"]["state"] == "placed" and rows["inf"]["pid"] == inf.pid
        out = subprocess.run([sys.executable, "-m", "cli.agentctl", "--socket", str(dt.config.socket_path),
                              "colocation", "explain", "tr"], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": REPO})
        assert out.returncode == 0 and "tr (training): placed" in out.stdout and "GPU 0: fits" in out.stdout, out
        out = subprocess.run([sys.executable, "-m", "cli.agentctl", "--socket", str(dt.config.socket_path),
                              "explain", "inf"], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": REPO})
        assert out.returncode == 0 and "inf (inference): placed" in out.stdout, out
        out = subprocess.run([sys.executable, "-m", "cli.agentctl", "--socket", str(dt.config.socket_path),
                              "top", "--once"], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": REPO})
        assert out.returncode == 0 and "GPU JOBS" in out.stdout and "inference" in out.stdout, out
        # another uid sees none of root's jobs and cannot report for them
        sock = str(dt.config.socket_path)
        assert as_nobody(lambda: ApiClient(sock).kind_get("colocation", "jobs")) == []
        assert as_nobody(lambda: ApiClient(sock).kind_get("colocation", "explain", name="inf")) == ("error", 404,
                                                                                                  "unknown_job")
        assert as_nobody(lambda: ApiClient(sock).kind_post("colocation", "slo", {"name": "inf", "tpot_ms": 1.0})) == \
            ("error", 404, "unknown_job")
        # agentctl gpu asks the daemon's sampler (simulated GPUs, labelled) and shows who holds what
        out = subprocess.run([sys.executable, "-m", "cli.agentctl", "--socket", str(dt.config.socket_path),
                              "gpu", "--json"], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": REPO})
        import json

        snap = json.loads(out.stdout)
        assert snap["source"] == "daemon" and snap["backend"] == "simulated" and len(snap["gpus"]) == 2
        assert {j["name"] for j in snap["jobs"]} == {"inf", "tr"}
        status = client.status()["kinds"]["colocation"]
        assert {j["name"] for j in status["jobs"]} == {"inf", "tr"}
        # bad input: more GPUs than exist, an absurd size, a malformed config -> clear 400s, nothing placed
        bad = subprocess.run([sys.executable, "-m", "cli.agentctl", "--socket", str(dt.config.socket_path), "run",
                              "--class", "training", "--gpus", "3", "--estimate-bytes", "1G", "--", "true"],
                             cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
        assert bad.returncode == 1 and "asks for 3 GPUs; this host has 2" in bad.stderr, bad.stderr
        cfg = Path(d, "bad.json")
        cfg.write_text('{"hidden_size": "big"}')
        bad = subprocess.run([sys.executable, "-m", "cli.agentctl", "--socket", str(dt.config.socket_path), "run",
                              "--class", "training", "--model-config", str(cfg), "--", "true"],
                             cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
        assert bad.returncode == 1 and "give --estimate-bytes" in bad.stderr, bad.stderr
        with pytest.raises(ApiClientError) as exc:
            client.kind_post("colocation", "admit", {"class": "training", "estimate_bytes": 1 << 60})
        assert exc.value.status == 400 and exc.value.code == "estimate_refused"
        # when the job ends, its cgroup goes and the journal says so with the numbers
        inf.kill()
        inf.wait(5)
        wait_for(lambda: not driver.exists("jobs/inf"), what="jobs/inf removed")
        placed = [e for e in events(client) if e["kind"] == "job.placed"]
        assert {e["data"]["job"] for e in placed} == {"inf", "tr"} and placed[0]["data"]["predicted_bytes"] == 10 * G
        assert any(e["kind"] == "job.ended" and e["data"]["job"] == "inf" for e in events(client))


def test_a_job_that_does_not_fit_waits_with_its_position_and_starts_when_room_appears(env):
    d, leaf, procs = env
    with ColocationDaemon(d, leaf) as dt:
        driver = dt.daemon.driver
        a = run_job(dt, procs, "training", "a", "import time; time.sleep(60)", size="70G")
        b = run_job(dt, procs, "training", "b", "import time; time.sleep(60)", size="70G")
        wait_for(lambda: driver.exists("jobs/a") and driver.exists("jobs/b") and driver.procs("jobs/a")
                 and driver.procs("jobs/b"), what="a and b placed")
        c = run_job(dt, procs, "training", "c", "import time; time.sleep(60)", size="70G")
        client = ApiClient(dt.config.socket_path)
        job = wait_for(lambda: client.kind_get("colocation", "jobs", name="c"), what="c queued")[0]
        assert job["state"] == "queued" and job["position"] == 1 and "predicted peak 70.00 GiB" in job["reason"]
        assert (cgroup_v2(c.pid) or "").find("/jobs/") < 0  # not moved while it waits
        a.kill()
        a.wait(5)
        wait_for(lambda: (cgroup_v2(c.pid) or "").endswith("/jobs/c"), what="c placed after a ended")
        wait_for(lambda: execd(c.pid), what="c's command started")
        assert environ(c.pid)["CUDA_VISIBLE_DEVICES"] in ("GPU-simulated-0000", "GPU-simulated-0001")
        kinds = [e["kind"] for e in events(client) if e["data"].get("job") == "c"]
        assert kinds[:2] == ["job.queued", "job.placed"]


def test_guard_lowers_freezes_thaws_and_terminates_a_real_best_effort_process(env):
    d, leaf, procs = env
    with ColocationDaemon(d, leaf) as dt:
        driver = dt.daemon.driver
        client = ApiClient(dt.config.socket_path)
        inf = run_job(dt, procs, "inference", "inf", "import time; time.sleep(60)")
        wait_for(lambda: (cgroup_v2(inf.pid) or "").endswith("/jobs/inf"), what="inf placed")
        tr = run_job(dt, procs, "training", "tr", IGNORE_TERM_SPIN)
        wait_for(lambda: (cgroup_v2(tr.pid) or "").endswith("/jobs/tr"), what="tr placed")
        wait_for(lambda: execd(tr.pid), what="tr exec")
        assert client.kind_get("colocation", "jobs", name="tr")[0]["gpus"] == [0]  # shares GPU 0 with inf
        assert advancing(tr.pid)

        def events_of(kind):
            return [e for e in events(client) if e["kind"] == kind and e["data"].get("job") == "tr"]

        def frozen():
            text = fs.read(driver.knob_path("jobs/tr", "cgroup.events"))
            return "frozen 1" in text

        # the inference server misses its SLO: cpu weight first, then freeze
        client.kind_post("colocation", "slo", {"name": "inf", "tpot_ms": 80.0})
        wait_for(lambda: events_of("job.lower_cpu"), what="lower_cpu")
        weight_file = driver.knob_path("jobs/tr", "cpu.weight")
        if os.path.exists(weight_file):
            assert fs.read(weight_file).strip() == "1"
        else:
            assert fs.read(driver.knob_path("jobs/tr", "cpu.shares")).strip() == str(weight_to_shares(1))
        wait_for(lambda: events_of("job.freeze"), what="freeze")
        wait_for(frozen, what="cgroup.events frozen 1")
        ev = events_of("job.freeze")[0]
        assert ev["data"]["tpot_ms"] == 80.0 and ev["data"]["slo_tpot_ms"] == 40
        assert not advancing(tr.pid)  # a frozen process gets no CPU time
        # under 0.9 x SLO: the pressure is gone; after hold_s the job is thawed (hysteresis: unit tests)
        client.kind_post("colocation", "slo", {"name": "inf", "tpot_ms": 30.0})
        wait_for(lambda: events_of("job.thaw"), what="thaw")
        wait_for(lambda: not frozen(), what="thawed")
        assert advancing(tr.pid)
        # pressure again and it stays: freeze, SIGTERM (ignored by the job), SIGKILL after the grace
        client.kind_post("colocation", "slo", {"name": "inf", "tpot_ms": 90.0})
        wait_for(lambda: events_of("job.sigterm"), timeout=20, what="sigterm")
        wait_for(lambda: events_of("job.sigkill"), timeout=20, what="sigkill")
        assert tr.wait(10) == -signal.SIGKILL
        wait_for(lambda: not driver.exists("jobs/tr"), what="jobs/tr removed")
        steps = [e["kind"] for e in events(client) if e["data"].get("job") == "tr"
                 and e["kind"] in ("job.lower_cpu", "job.freeze", "job.thaw", "job.restore_cpu", "job.sigterm",
                                   "job.sigkill")]
        assert steps[:3] == ["job.lower_cpu", "job.freeze", "job.thaw"] and steps[-2:] == ["job.sigterm", "job.sigkill"]
        # the latency-critical job was never touched
        assert inf.poll() is None and fs.read(driver.knob_path("jobs/inf", "cgroup.freeze")).strip() == "0"


def test_memory_pressure_freezes_the_best_effort_job_that_outgrew_its_estimate(env):
    d, leaf, procs = env
    # A 3 s step: the frozen job is checked and its memory freed before the guard's next
    # step (SIGTERM), also on a loaded host (0.6 s was a race with the checks below).
    with ColocationDaemon(d, leaf, POLICY.replace("step_s: 0.6", "step_s: 3.0")) as dt:
        driver = dt.daemon.driver
        client = ApiClient(dt.config.socket_path)
        inf = run_job(dt, procs, "inference", "inf", "import time; time.sleep(60)", size="20G")
        wait_for(lambda: (cgroup_v2(inf.pid) or "").endswith("/jobs/inf"), what="inf placed")
        tr = run_job(dt, procs, "training", "tr", SPIN, size="5G")
        wait_for(lambda: (cgroup_v2(tr.pid) or "").endswith("/jobs/tr"), what="tr placed")
        wait_for(lambda: execd(tr.pid), what="tr exec")
        # SIMULATED GPU memory: the fake NVML now reports the training process holding 58 GiB
        # on GPU 0 (it said 5); the sampler attributes it to jobs/tr through /proc/<pid>/cgroup
        dt.daemon.gpu.nvml.procs = {0: [(inf.pid, 18 * G), (tr.pid, 58 * G)]}
        wait_for(lambda: [e for e in events(client) if e["kind"] == "job.over_estimate"], what="over_estimate")
        wait_for(lambda: [e for e in events(client) if e["kind"] == "job.freeze"], what="freeze")
        ev = [e for e in events(client) if e["kind"] == "job.freeze"][0]
        assert ev["data"]["job"] == "tr" and ev["data"]["used_pct"] >= 95
        wait_for(lambda: "frozen 1" in fs.read(driver.knob_path("jobs/tr", "cgroup.events")), what="frozen")
        assert not advancing(tr.pid)
        # the job frees its memory (simulated): after hold_s below the low mark it is thawed
        dt.daemon.gpu.nvml.procs = {0: [(inf.pid, 18 * G), (tr.pid, 4 * G)]}
        wait_for(lambda: "frozen 0" in fs.read(driver.knob_path("jobs/tr", "cgroup.events")), what="thawed")
        assert advancing(tr.pid)


def test_a_restarted_daemon_readopts_running_jobs_and_drops_gone_ones(env):
    d, leaf, procs = env
    with ColocationDaemon(d, leaf) as dt:
        keep = run_job(dt, procs, "training", "keep", "import time; time.sleep(60)")
        gone = run_job(dt, procs, "training", "gone", "import time; time.sleep(60)")
        for p, n in ((keep, "keep"), (gone, "gone")):
            wait_for(lambda p=p, n=n: (cgroup_v2(p.pid) or "").endswith(f"/jobs/{n}") and execd(p.pid), what=n)
    gone.kill()  # ends while no daemon runs
    gone.wait(5)
    with ColocationDaemon(d, leaf) as dt2:
        assert dt2.daemon.kind_readopt == {"colocation": {"jobs": 1, "gone": 1}}
        rows = ApiClient(dt2.config.socket_path).kind_get("colocation", "jobs")
        assert [(r["name"], r["state"], r["pid"]) for r in rows] == [("keep", "placed", keep.pid)]
        assert not dt2.daemon.driver.exists("jobs/gone")


def test_a_user_has_a_bounded_number_of_jobs_root_is_not_limited(env, monkeypatch):
    """Performed as uid 65534 through setpriv: with the per-uid bound at 2, a third queued or
    running job of that user is refused with the reason and nothing is made for it; root's
    job is admitted; when one of the user's jobs ends, the user may admit again."""
    import agentd.colocation.kind as coloc

    monkeypatch.setattr(coloc, "MAX_JOBS_PER_UID", 2)
    d, leaf, procs = env

    def run_nobody(dt, name):
        p = subprocess.Popen(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable,
                              "-m", "cli.agentctl", "--socket", str(dt.config.socket_path), "run", "--class", "training",
                              "--name", name, "--estimate-bytes", "1G", "--", "sleep", "60"],
                             cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        procs.append(p)
        return p

    with ColocationDaemon(d, leaf) as dt:
        os.chmod(dt.config.socket_path, 0o666)
        driver = dt.daemon.driver
        first = [run_nobody(dt, name) for name in ("u1", "u2")]
        wait_for(lambda: all(driver.exists(f"jobs/{n}") and driver.procs(f"jobs/{n}") for n in ("u1", "u2")),
                 what="u1 and u2 placed")
        third = run_nobody(dt, "u3")
        _, err = third.communicate(timeout=60)
        assert third.returncode != 0 and "uid 65534 already has 2 jobs queued or running" in err, (third.returncode, err)
        assert not driver.exists("jobs/u3")
        root = run_job(dt, procs, "training", "r1", "import time; time.sleep(60)", size="1G")
        wait_for(lambda: driver.exists("jobs/r1") and driver.procs("jobs/r1"), what="root's job placed")
        first[0].kill()
        first[0].wait(5)
        client = ApiClient(dt.config.socket_path)
        wait_for(lambda: not client.kind_get("colocation", "jobs", name="u1"), what="u1 ended")
        again = run_nobody(dt, "u4")
        wait_for(lambda: driver.exists("jobs/u4") and driver.procs("jobs/u4"), what="u4 placed")
        assert root.poll() is None and again.poll() is None
