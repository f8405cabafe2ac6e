"""The tiers kind in the real daemon on this host (one NUMA node, no swap, v1 memory
controller): a job's process matched by a tiers class is placed and observed from the
kernel's own counters, its page cache is reclaimed in PSI-driven steps, delay accounting
is switched on while the policy is in force, `agentctl tiers` shows it, a non-admin can
neither see root's processes nor revert, and removing the policy puts everything back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentd.api.client import ApiClient
from agentd.cgroups import fs
from agentd.kinds.registry import KindEntry
from tests.daemon_thread import DaemonThread, journal_events, test_config, tmp  # noqa: F401 - tmp is a fixture
from tests.e2e.test_kind_routes import as_nobody

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root (cgroups, peer credentials)")
REPO = Path(__file__).resolve().parents[2]
TIERS = KindEntry("tiers", "agentd.tiers", "cli.tiers_commands")
DELAYACCT = Path("/proc/sys/kernel/task_delayacct")

POLICY = """\
version: 1
name: tiered
tiers:
  classes:
    - name: holder
      match: {argv: "tiers-e2e-holder"}
      scope: [jobs]
      placement: {mode: bind, weights: {node0: 1}}
      migrate: {rate_mb_s: 50}
      reclaim: {budget: 256M, step: 16M, interval_s: 1, psi_target_pct: 50}
"""

HOLDER = """
import os, sys, time
path = sys.argv[1]
with open(path, 'wb') as f:
    for _ in range(64):
        f.write(os.urandom(1 << 20))
    f.flush(); os.fsync(f.fileno())
buf = bytearray(32 << 20)
for i in range(0, len(buf), 4096):
    buf[i] = 1
print('ready', flush=True)
time.sleep(600)
"""


def _wait(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    return pred()


def test_a_job_is_placed_reclaimed_shown_and_restored_through_the_real_daemon(tmp):  # noqa: F811
    d, leaf = tmp
    pdir = Path(d) / "policies"
    pdir.mkdir()
    (pdir / "tiered.yaml").write_text(POLICY)
    delayacct_before = DELAYACCT.read_text().strip()
    data = Path("/var/tmp") / f"agentd-tiers-e2e-{os.getpid()}"
    holder = None
    dt = DaemonThread(test_config(d, leaf, kinds=(TIERS,), policy_dir=pdir, require_root_owned_policies=False))
    try:
        with dt:
            kind = dt.daemon.kinds.kinds[0]
            client = ApiClient(dt.config.socket_path)
            drv = dt.daemon.driver
            drv.create("jobs/tj")
            holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()\n" + HOLDER, str(data),
                                       "tiers-e2e-holder"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert drv.move(holder.pid, "jobs/tj")
            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "ready"
            # delay accounting is on while a tiers policy is in force
            assert DELAYACCT.read_text().strip() == "1"
            usage = lambda: int(fs.read(drv.knob_path("jobs/tj", "memory.usage_in_bytes")))  # noqa: E731
            # PSI-driven reclaim steps shrink the job's page cache (v1: limit lowered for a moment)
            events = _wait(lambda: [e for e in journal_events(dt.config.state_dir)
                                    if e["kind"] == "tier.reclaimed" and e["data"]["reclaimed"] > 0])
            assert events, [e["kind"] for e in journal_events(dt.config.state_dir)]
            assert _wait(lambda: usage() < (80 << 20))
            limit = fs.read(drv.knob_path("jobs/tj", "memory.limit_in_bytes")).strip()
            assert int(limit) > 1 << 40  # the limit was put back after each step
            # where the job's memory sits, from numa_maps
            shown = client.kind_get("tiers", "show")
            [row] = [p for p in shown["processes"] if p["pid"] == holder.pid]
            assert row["class"] == "holder" and row["scope"] == "jobs" and row["plan"]["mode"] == "bind"
            assert int(row["node_bytes"]["0"]) >= 32 << 20 and row["on_target_pct"] == 100.0
            assert shown["host"]["nodes"][0]["id"] == 0
            assert any("one NUMA memory node" in line for line in shown["degraded"])
            # the CLI against the real socket: table and --json
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            r = subprocess.run([sys.executable, "-m", "cli.agentctl", "--socket", str(dt.config.socket_path), "tiers"],
                               capture_output=True, text=True, env=env, timeout=60)
            assert r.returncode == 0 and str(holder.pid) in r.stdout and "holder" in r.stdout, r.stderr
            r = subprocess.run([sys.executable, "-m", "cli.agentctl", "--socket", str(dt.config.socket_path), "--json",
                                "tiers", "show", "--pid", str(holder.pid)], capture_output=True, text=True, env=env,
                               timeout=60)
            assert [p["pid"] for p in json.loads(r.stdout)["processes"]] == [holder.pid]
            # a non-admin sees no root process and cannot revert
            sock = str(dt.config.socket_path)
            os.chmod(sock, 0o666)
            seen = as_nobody(lambda: ApiClient(sock).kind_get("tiers", "show"))
            assert seen["processes"] == []
            assert as_nobody(lambda: ApiClient(sock).kind_post("tiers", "revert", {})) == ("error", 403, "forbidden")
            st = client.status()["kinds"]["tiers"]
            assert st["reclaimed_bytes_total"] > 0 and st["saved_settings"] >= 1
            # bad input: 400, not a traceback
            from agentd.api.client import ApiClientError
            with pytest.raises(ApiClientError) as e:
                client.kind_get("tiers", "show", pid="x")
            assert (e.value.status, e.value.code) == (400, "invalid_value")
            # `agentctl tiers revert` (admin): everything back, placement paused until a reload
            assert client.kind_post("tiers", "revert", {})["suspended_until_policy_reload"] is True
            assert DELAYACCT.read_text().strip() == delayacct_before and not kind.ctx.changes.saved()
            assert client.kind_get("tiers", "status")["suspended"] is True
            dt.loop.call_soon_threadsafe(dt.daemon.reload)
            assert _wait(lambda: DELAYACCT.read_text().strip() == "1")
            # removing the policy puts the saved values back
            (pdir / "tiered.yaml").unlink()
            dt.loop.call_soon_threadsafe(dt.daemon.reload)
            assert _wait(lambda: DELAYACCT.read_text().strip() == delayacct_before)
            assert _wait(lambda: not kind.ctx.changes.saved())
            # journal.jsonl is written by the store's writer thread, a moment after the event
            assert _wait(lambda: any(e["kind"] == "tier.reverted" for e in journal_events(dt.config.state_dir)))
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        data.unlink(missing_ok=True)
        DELAYACCT.write_text(delayacct_before)
