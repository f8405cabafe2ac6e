"""The real daemon as a process, for e2e tests and benchmarks: its own socket, state folder,
policy folder and a private cgroup root under the caller's own cgroups, all removed at the
end (processes killed, cgroups removed in every hierarchy)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from agentd.api.client import ApiClient, ApiClientError, DaemonNotRunning
from agentd.cgroups.detect import open_driver

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TEST_POLICY = """\
version: 1
name: default
toolcalls:
  defaults: {memory_high: 64M, memory_max: 128M, swap_max: 0, pids_max: 64, timeout_s: 60}
  ceiling: {memory_high: 256M, memory_max: 512M, pids_max: 256, timeout_s: 120}
  escalation: {psi_full_pct: 40, sustain_s: 1, freeze_s: 1}
"""


class DaemonProcess:
    def __init__(self, tracker: str = "auto", policy: str = TEST_POLICY, policies: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = (), env: dict | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="agentd-e2e-"))
        os.chmod(self.dir, 0o755)
        self.leaf = f"agentd-test-{uuid.uuid4().hex[:8]}"
        self.socket = self.dir / "agentd.sock"
        self.state = self.dir / "state"
        self.policy_dir = self.dir / "policies.d"
        self.policy_dir.mkdir()
        self.default_policy = self.dir / "default.yaml"
        self.default_policy.write_text(policy)
        for name, text in (policies or {}).items():
            (self.policy_dir / f"{name}.yaml").write_text(text)
        self.tracker = tracker
        self.extra_args = list(extra_args)
        self.env = env  # None: this process's environment
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "daemon.log"
        self.client = ApiClient(str(self.socket), timeout=10)

    def start(self, timeout: float = 30) -> "DaemonProcess":
        if self.socket.exists():
            self.socket.unlink()
        argv = [str(BIN / "agentd"), "run", "--socket", str(self.socket), "--state-dir", str(self.state),
                "--policy-dir", str(self.policy_dir), "--default-policy", str(self.default_policy),
                "--cgroup-leaf", self.leaf, "--tracker", self.tracker, *self.extra_args]
        self.proc = subprocess.Popen(argv, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log.read_text()
                why = [l for l in text.splitlines() if "could not run" in l or l.startswith("Error")]
                raise RuntimeError(f"agentd exited with {self.proc.returncode}: {' | '.join(why) or text[-2000:]}")
            try:
                self.client.status()
                return self
            except (DaemonNotRunning, ApiClientError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"agentd did not answer within {timeout} s: {self.log.read_text()[-2000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def agentctl(self, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "agentctl"), "--socket", str(self.socket), *args], capture_output=True, text=True,
                              timeout=timeout, env=env)

    def spawn_agent(self, name: str, script: str | Path, *args: str, policy: str | None = None, **popen) -> subprocess.Popen:
        """`agentctl run --name NAME [--policy P] -- python SCRIPT ARGS` (the cooperative path)."""
        extra = ["--policy", policy] if policy else []
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen([str(BIN / "agentctl"), "--socket", str(self.socket), "run", "--name", name, *extra, "--",
                                 sys.executable, str(script), *args], text=True, **popen)

    def driver(self):
        return open_driver(None, create_root=False, leaf_name=self.leaf)

    def cleanup(self, timeout: float = 20.0) -> None:
        """Stop the daemon, kill what runs in its tree and remove the tree in EVERY hierarchy
        (a v1 directory can outlive the v2 one). Killed processes take a while to leave their
        cgroups on a loaded host: retried until timeout, then an error naming what is left
        (a run that fails must not leave cgroups behind without a word)."""
        self.stop()
        driver = self.driver()
        roots = [t.root_dir for t in (driver.tree, *getattr(driver, "v1", {}).values())]
        deadline = time.monotonic() + timeout
        try:
            while any(os.path.isdir(r) for r in roots):
                try:
                    _kill_tree(driver, "")
                    driver.remove("")
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cgroups left behind: {[r for r in roots if os.path.isdir(r)]}: {exc}") from exc
                    time.sleep(0.2)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def toolcalls(self, agent: str) -> list[dict]:
        return self.client.tool_calls(agent=agent)


def _kill_tree(driver, rel: str) -> None:
    for child in driver.children(rel):
        _kill_tree(driver, f"{rel}/{child}" if rel else child)
    try:
        driver.thaw(rel)
    except OSError:
        pass
    if driver.procs(rel):
        driver.kill(rel)


def parse_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out
