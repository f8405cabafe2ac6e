"""The real Daemon in-process, on its own event loop in a thread, for tests that need its
objects (a kind's state, the driver) as well as its socket. Policy kinds are chosen per test
(`kinds=`); the tracker is cn_proc (no BPF compile) unless a test asks otherwise."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from agentd.cgroups.detect import open_driver
from agentd.core.daemon import Daemon, DaemonConfig


def test_config(tmp: str, leaf: str, **overrides) -> DaemonConfig:
    """A DaemonConfig in tmp, rooted at <own cgroup>/<leaf>, socket reachable by uid 65534."""
    base = dict(socket_path=Path(tmp, "run", "agentd.sock"), state_dir=Path(tmp, "state"), policy_dir=None,
                cgroup_leaf=leaf, tracker="cn_proc", move_self=False, gpu=False, socket_group="nogroup")
    return DaemonConfig(**{**base, **overrides})


test_config.__test__ = False  # not a test: a helper whose name starts with "test"


class DaemonThread:
    def __init__(self, config: DaemonConfig):
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.daemon: Daemon | None = None
        self.error: BaseException | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main():
            self.daemon = Daemon(self.config)
            await self.daemon.start()
            self._started.set()
            await self.daemon.wait_stopped()
            await self.daemon.stop()

        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:  # reported by __enter__
            self.error = exc
        finally:
            self._started.set()

    def __enter__(self) -> "DaemonThread":
        self._thread.start()
        assert self._started.wait(60) and self.error is None, f"the daemon did not start: {self.error!r}"
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.daemon.request_stop)
        self._thread.join(30)

    def kind(self, name: str):
        return next(k for k in self.daemon.kinds.kinds if k.name == name)

    def call(self, fn, *args):
        """Run fn on the daemon's loop (kinds' state belongs to it) and return its result."""

        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)


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
