"""`agentctl run` places COMMAND's memory at launch under the real daemon's tiers policy
(this host: one node, node 0): the daemon matches the caller's own command (its uid from
SO_PEERCRED, its agent) and answers the class and mempolicy; agentctl sets it right before
exec, so numa_maps of the launched program shows it on every mapping from its first
instruction. Also: no class matches, --no-tiers, a class that cannot be placed (unplaced,
or exit 2 when `fallback: refuse`), an unprivileged caller gets only its own plan, no
tiers policy, and the kind moves nothing of a process the launch placed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentd.api.client import ApiClient
from agentd.kinds.registry import KindEntry
from agentd.tiers.kind import ROUND_S
from tests.daemon_thread import DaemonThread, journal_events, journaled, test_config, tmp  # noqa: F401 - tmp is a fixture
from tests.e2e.test_kind_routes import as_nobody

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root (cgroups, peer credentials)")
REPO = Path(__file__).resolve().parents[2]
TIERS = KindEntry("tiers", "agentd.tiers", "cli.tiers_commands")

POLICY = """\
version: 1
name: launching
tiers:
  classes:
    - name: nobodys
      match: {argv: "tiers-launch-e2e", uid: 65534}
      scope: [runtimes]
      placement: {mode: preferred, weights: {node0: 1}}
    - name: pinned
      match: {argv: "tiers-launch-e2e"}
      scope: [runtimes]
      placement: {mode: bind, weights: {node0: 1}}
    - name: tj-class
      match: {cgroup: "jobs/tj$", argv: "tiers-job-e2e"}
      scope: [jobs]
      placement: {mode: preferred, weights: {node0: 1}}
    - name: lenient
      match: {argv: "tiers-lenient-e2e"}
      placement: {mode: bind, weights: {node5: 1}}
    - name: mandatory
      match: {argv: "tiers-refuse-e2e"}
      placement: {mode: bind, weights: {node5: 1}, fallback: refuse}
"""

# prints its own numa_maps (anonymous and heap mappings) after touching 8 MiB, then waits
SHOW = ("import sys; b = bytearray(8 << 20)\n"
        "print(''.join(l for l in open('/proc/self/numa_maps') if 'file=' not in l), flush=True)\n"
        "print('ready', flush=True); sys.stdin.readline()")


def _agentctl(sock: str, *args: str, nobody: bool = False, wait: bool = True):
    argv = [sys.executable, "-m", "cli.agentctl", "--socket", sock, "run", *args]
    if nobody:
        argv = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=REPO)
    if not wait:
        return p
    out, err = p.communicate("go\n", timeout=120)
    return p.returncode, out, err


def _policies(out: str) -> set[str]:
    """The mempolicy numa_maps shows on each anonymous mapping: 'bind:0', 'prefer:0', 'default'."""
    return {line.split()[1] for line in out.splitlines() if line[:1].isalnum() and len(line.split()) > 2}


def test_agentctl_run_sets_the_classs_mempolicy_before_exec(tmp):  # noqa: F811
    d, leaf = tmp
    pdir = Path(d) / "policies"
    pdir.mkdir()
    (pdir / "launching.yaml").write_text(POLICY)
    with DaemonThread(test_config(d, leaf, kinds=(TIERS,), policy_dir=pdir, require_root_owned_policies=False)) as dt:
        sock = dt.socket_path
        os.chmod(sock, 0o666)
        # the class's policy on every anonymous mapping, heap included: set before exec
        rc, out, err = _agentctl(sock, "--name", "pinned", "--", sys.executable, "-c", SHOW, "tiers-launch-e2e")
        assert rc == 0, err
        assert _policies(out) == {"bind:0"} and "heap" in out, out
        assert "agentctl: tiers: class pinned (policy launching): bind node 0" in err, err
        [ev] = journaled(dt.config.state_dir, lambda e: e["kind"] == "tier.launch")
        assert ev["agent"] == "pinned" and ev["data"]["cls"] == "pinned" and ev["data"]["mode"] == "bind"
        # --no-tiers: nothing asked, nothing set
        rc, out, err = _agentctl(sock, "--name", "skipped", "--no-tiers", "--", sys.executable, "-c", SHOW,
                                 "tiers-launch-e2e")
        assert rc == 0 and _policies(out) == {"default"} and "tiers" not in err, (out, err)
        # no class matches: the default policy, no line
        rc, out, err = _agentctl(sock, "--name", "other", "--", sys.executable, "-c", SHOW, "something-else")
        assert rc == 0 and _policies(out) == {"default"} and "tiers" not in err, (out, err)
        # a class this host cannot place (node 5): said in one line, run unplaced...
        rc, out, err = _agentctl(sock, "--name", "lenient", "--", sys.executable, "-c", SHOW, "tiers-lenient-e2e")
        assert rc == 0 and _policies(out) == {"default"}, (out, err)
        assert "class lenient" in err and "node 5 does not exist" in err and "running it unplaced" in err, err
        # ...or refused with exit 2 and nothing run when the class says fallback: refuse
        marker = Path(d) / "ran"
        rc, out, err = _agentctl(sock, "--name", "refused", "--", "touch", str(marker), "tiers-refuse-e2e")
        assert rc == 2 and not marker.exists(), (rc, err)
        assert "class mandatory" in err and "fallback: refuse" in err, err
        # an unprivileged caller is matched as itself (uid 65534 from SO_PEERCRED): its own class
        rc, out, err = _agentctl(sock, "--name", "nobodys", "--", sys.executable, "-c", SHOW, "tiers-launch-e2e",
                                 nobody=True)
        assert rc == 0 and _policies(out) == {"prefer:0"}, (out, err)
        assert "class nobodys" in err, err
        # it cannot ask for another process's plan: the body names no pid or uid
        body = {"argv": ["x", "tiers-launch-e2e"], "scope": "agents"}
        assert as_nobody(lambda: ApiClient(sock).kind_post("tiers", "launch_plan", {**body, "uid": 0})) == \
            ("error", 400, "unknown_field")
        assert as_nobody(lambda: ApiClient(sock).kind_post("tiers", "launch_plan", body))["class"] == "nobodys"
        assert ApiClient(sock).kind_post("tiers", "launch_plan", body)["class"] == "pinned"
        # a flood of plans by one user is answered, but journals at most the burst of rows (each
        # row would push an older one out of the journal); root's rows are not limited
        def flood() -> list:
            client = ApiClient(sock)
            return [client.kind_post("tiers", "launch_plan", body)["class"] for _ in range(150)]

        assert as_nobody(flood) == ["nobodys"] * 150
        assert ApiClient(sock).kind_post("tiers", "launch_plan", body)["class"] == "pinned"
        def rows() -> tuple[list, list]:
            launches = [e for e in journal_events(dt.config.state_dir) if e["kind"] == "tier.launch"]
            return ([e for e in launches if e["data"]["uid"] == 0 and e["data"]["pid"] == os.getpid()],
                    [e for e in launches if e["data"]["uid"] == 65534])

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(rows()[0]) < 2:  # journal.jsonl is written in batches
            time.sleep(0.2)
        roots, nobodys = rows()
        status = ApiClient(sock).kind_get("tiers", "status")
        assert len(roots) == 2 and len(nobodys) <= 33, (len(roots), len(nobodys))
        assert status["launch_plans_unjournaled_total"] >= 150 + 2 - 33, status
        # a class by name (as the launcher's --class): whatever the command; an unknown name is a 404
        named = ApiClient(sock).kind_post("tiers", "launch_plan", {"argv": ["x"], "scope": "jobs", "class": "pinned"})
        assert (named["class"], named["mode"], named["nodes"]) == ("pinned", "bind", [0])
        assert as_nobody(lambda: ApiClient(sock).kind_post("tiers", "launch_plan", {**body, "class": "nope"})) == \
            ("error", 404, "not_found")
        assert as_nobody(lambda: ApiClient(sock).kind_post("tiers", "launch_plan", {**body, "scope": "x"})) == \
            ("error", 400, "invalid_value")
        # a job (`agentctl run --class`, scope jobs): matched by the jobs/<name> cgroup holding the caller
        drv = dt.daemon.driver
        drv.create("jobs/tj")
        ask = ("import json, sys; sys.stdin.readline(); from agentd.api.client import ApiClient; "
               f"print(json.dumps(ApiClient({sock!r}).kind_post('tiers', 'launch_plan', "
               "{'argv': ['python', 'tiers-job-e2e'], 'scope': 'jobs'})))")
        job = subprocess.Popen([sys.executable, "-c", ask], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            assert drv.move(job.pid, "jobs/tj")
            out, _ = job.communicate("go\n", timeout=60)
        finally:
            if job.poll() is None:
                job.kill()
            job.wait()
        plan = json.loads(out)
        assert plan["class"] == "tj-class" and plan["mode"] == "preferred" and plan["nodes"] == [0], plan
        [ev] = journaled(dt.config.state_dir, lambda e: e["kind"] == "tier.launch" and e["data"]["name"] == "tj")
        assert ev["data"]["scope"] == "jobs" and ev["data"]["pid"] == job.pid
        # outside the job's cgroup the same request matches nothing
        assert ApiClient(sock).kind_post("tiers", "launch_plan", {"argv": ["python", "tiers-job-e2e"],
                                                                   "scope": "jobs"})["class"] is None
        # the kind sees the launch placement on a running agent and moves nothing of it
        held = _agentctl(sock, "--name", "held", "--", sys.executable, "-c", SHOW, "tiers-launch-e2e", wait=False)
        loose = _agentctl(sock, "--name", "loose", "--no-tiers", "--", sys.executable, "-c", SHOW, "tiers-launch-e2e",
                          wait=False)
        try:
            for p in (held, loose):
                while p.stdout.readline().strip() != "ready":
                    assert p.poll() is None, p.stderr.read()
            kind = dt.kind("tiers")
            deadline = time.monotonic() + 30
            def pids() -> set[int]:
                return {int(k.split(":")[0]) for k in dt.call(lambda: set(kind.planner.kernel_placed))}

            while time.monotonic() < deadline and held.pid not in pids():
                time.sleep(0.2)
            time.sleep(2 * ROUND_S)  # more rounds: the unplaced one (same class) is still not counted
            assert pids() == {held.pid}
            assert ApiClient(sock).kind_get("tiers", "status")["placed_at_launch"] == 1
        finally:
            for p in (held, loose):
                p.kill()
                p.wait()
        # no tiers policy in force: nothing asked of the kernel, no line, no error
        (pdir / "launching.yaml").unlink()
        dt.loop.call_soon_threadsafe(dt.daemon.reload)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ApiClient(sock).kind_get("tiers", "status")["classes"]:
            time.sleep(0.2)
        rc, out, err = _agentctl(sock, "--name", "nopolicy", "--", sys.executable, "-c", SHOW, "tiers-launch-e2e")
        assert rc == 0 and _policies(out) == {"default"} and "tiers" not in err, (out, err)


def test_agentctl_run_without_a_tiers_kind_runs_unplaced(tmp):  # noqa: F811
    d, leaf = tmp
    with DaemonThread(test_config(d, leaf, kinds=())) as dt:
        rc, out, err = _agentctl(dt.socket_path, "--name", "plain", "--", sys.executable, "-c", SHOW,
                                 "tiers-launch-e2e")
        assert rc == 0 and _policies(out) == {"default"} and "tiers" not in err, (out, err)


JOB_POLICY = """\
version: 1
name: gpu-and-tiers
colocation:
  classes:
    - name: training
      type: best-effort
      priority: 10
      expected_util_pct: 20
tiers:
  classes:
    - name: offload
      match: {argv: "tiers-job-e2e"}
      scope: [jobs]
      placement: {mode: preferred, weights: {node0: 1}}
"""


def test_agentctl_run_class_places_a_gpu_jobs_memory_too(tmp):  # noqa: F811
    # the job path (`agentctl run --class`): admitted by the colocation kind (simulated GPUs),
    # moved into jobs/<name>, then matched by the tiers class of scope jobs and placed
    d, leaf = tmp
    pdir = Path(d) / "policies"
    pdir.mkdir()
    (pdir / "p.yaml").write_text(JOB_POLICY)
    coloc = KindEntry("colocation", "agentd.colocation", "cli.colocation_commands")
    config = test_config(d, leaf, kinds=(coloc, TIERS), policy_dir=pdir, require_root_owned_policies=False, gpu=True,
                         simulate_gpus=2)
    with DaemonThread(config) as dt:
        rc, out, err = _agentctl(dt.socket_path, "--class", "training", "--name", "tj1", "--estimate-bytes", "1G",
                                 "--", sys.executable, "-c", SHOW, "tiers-job-e2e")
        assert rc == 0 and _policies(out) == {"prefer:0"}, (out, err)
        assert "agentctl: tiers: class offload (policy gpu-and-tiers): preferred node 0" in err, err
        [ev] = journaled(dt.config.state_dir, lambda e: e["kind"] == "tier.launch")
        assert ev["data"]["scope"] == "jobs" and ev["data"]["name"] == "tj1"
        rc, out, err = _agentctl(dt.socket_path, "--class", "training", "--name", "tj2", "--estimate-bytes", "1G",
                                 "--no-tiers", "--", sys.executable, "-c", SHOW, "tiers-job-e2e")
        assert rc == 0 and _policies(out) == {"default"} and "tiers:" not in err, (out, err)
