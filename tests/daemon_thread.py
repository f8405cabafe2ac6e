"""The real Daemon in-process, on its own event loop in a thread, for tests that need its
objects (a kind's state, the driver, the journal) as well as its socket: the API and CLI
tests run the daemon's own command set (agentd.core.controller) this way, never a stand-in.
Policy kinds are chosen per test (`kinds=`); the tracker is cn_proc (no BPF compile) unless
a test asks otherwise."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from agentd.api.client import ApiClient
from agentd.api.limits import ApiLimits
from agentd.cgroups.detect import open_driver
from agentd.core.daemon import Daemon, DaemonConfig


def test_config(tmp: str, leaf: str, **overrides) -> DaemonConfig:
    """A DaemonConfig in tmp, rooted at <own cgroup>/<leaf>, socket reachable by uid 65534."""
    base = dict(socket_path=Path(tmp, "run", "agentd.sock"), state_dir=Path(tmp, "state"), policy_dir=None,
                cgroup_leaf=leaf, tracker="cn_proc", move_self=False, gpu=False, socket_group="nogroup")
    return DaemonConfig(**{**base, **overrides})


test_config.__test__ = False  # not a test: a helper whose name starts with "test"


class DaemonThread:
    """`with DaemonThread(config) as dt:` the daemon runs until the block ends.

    api_limits: serve the API with these bounds (agentd.api.limits.ApiLimits) instead of the
    defaults, e.g. a tighter rate limit or stream queue for the server's own tests."""

    def __init__(self, config: DaemonConfig, api_limits: ApiLimits | None = None):
        self.config = config
        self.api_limits = api_limits
        self.loop = asyncio.new_event_loop()
        self.daemon: Daemon | None = None
        self.error: BaseException | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.agent_procs: list[subprocess.Popen] = []  # start_agent's, killed by stop()

    @property
    def socket_path(self) -> str:
        return str(self.config.socket_path)

    @property
    def server(self):
        """The API server (agentd.api.server.ApiServer) serving the socket."""
        return self.daemon.api

    @property
    def controller(self):
        """The daemon's command set behind the API (agentd.core.controller.DaemonController)."""
        return self.daemon.controller

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        own_api = self.api_limits is not None and self.config.api

        async def main():
            config = dataclasses.replace(self.config, api=False) if own_api else self.config
            self.daemon = Daemon(config)
            try:
                await self.daemon.start()
            except BaseException:
                self.daemon.abort()
                raise
            if own_api:  # the daemon's own start_api, with the test's bounds
                from agentd.api.server import start_api

                try:
                    self.daemon.api = await start_api(
                        self.daemon.controller, config.socket_path, admin_group=config.admin_group,
                        sock_group=config.socket_group, metrics_listen=config.metrics_listen,
                        limits=self.api_limits)
                except BaseException:
                    await self.daemon.stop()
                    raise
            self._started.set()
            await self.daemon.wait_stopped()
            await self.daemon.stop()

        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:  # reported by __enter__
            self.error = exc
        finally:
            self._started.set()

    def start(self) -> "DaemonThread":
        self._thread.start()
        assert self._started.wait(60), "the daemon did not start in 60 s"
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        for proc in self.agent_procs:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            proc.wait(10)
        self.agent_procs = []
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.daemon.request_stop)
            self._thread.join(30)

    def __enter__(self) -> "DaemonThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def kind(self, name: str):
        return next(k for k in self.daemon.kinds.kinds if k.name == name)

    def call(self, fn, *args, **kwargs):
        """Run fn on the daemon's loop (its state belongs to it) and return its result; a
        coroutine it returns is awaited there."""

        async def run():
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def emit(self, kind: str, message: str, **fields) -> dict:
        """A journal event, as the daemon's own decisions write them (stored, streamed)."""
        return self.call(self.daemon.journal.emit, kind, message, **fields)

    def start_agent(self, name: str, script: str = "sleep 300 & wait", uid: int | None = None,
                    gid: int = 65534) -> subprocess.Popen:
        """`agentctl run --name NAME -- sh -c SCRIPT` in its own session, as uid/gid if a uid
        is given (gid nogroup can reach test_config's socket); returns once the daemon
        manages it. stop() kills its whole session. The default script's `sleep` is a tool
        call (live_tool_call)."""
        def as_uid() -> None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

        repo = Path(__file__).resolve().parents[1]
        proc = subprocess.Popen([sys.executable, "-m", "cli.agentctl", "--socket", self.socket_path, "run",
                                 "--name", name, "--", "sh", "-c", script], cwd=repo, start_new_session=True,
                                preexec_fn=as_uid if uid is not None else None,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.agent_procs.append(proc)
        client = ApiClient(self.socket_path)
        wait_for(lambda: any(a["name"] == name and a["state"] == "live" for a in client.agents()), f"agent {name}")
        return proc

    def live_tool_call(self, agent: str) -> str:
        """The id of the agent's (first) live tool call, once the tracker placed it."""
        client = ApiClient(self.socket_path)
        wait_for(lambda: client.tool_calls(agent=agent, live=True), f"a live tool call of {agent}")
        return client.tool_calls(agent=agent, live=True)[0]["id"]

    def subscribers(self) -> int:
        """How many event streams are open (`agentctl events -f`, GET /v1/events?follow)."""
        return self.call(lambda: len(self.daemon.journal._subscribers))


def journal_events(state_dir: Path) -> list[dict]:
    """journal.jsonl's events as written so far."""
    path = state_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def journaled(state_dir: Path, match, timeout: float = 30) -> list[dict]:
    """journal.jsonl's events that match, once there are any: the store's writer thread
    writes the file in batches, a moment after the event (empty after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in journal_events(state_dir) if match(e)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def wait_for(check, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


@pytest.fixture
def tmp():
    """(a 0755 temporary directory, a cgroup leaf name); afterwards the leaf is removed in
    every hierarchy and checked gone."""
    d = tempfile.mkdtemp(prefix="agentd-inproc-")
    os.chmod(d, 0o755)
    leaf = f"agentd-test-{uuid.uuid4().hex[:8]}"
    yield d, leaf
    shutil.rmtree(d, ignore_errors=True)
    driver = open_driver(leaf_name=leaf)
    roots = [t.root_dir for t in (driver.tree, *getattr(driver, "v1", {}).values())]
    driver.remove("")
    assert not [r for r in roots if os.path.exists(r)], "test cgroups left behind"
