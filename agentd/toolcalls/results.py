"""Result files for agents, written so that no agent can redirect root's writes.

Layout (all directories root's; nothing here is writable by an agent):

    <results root>/          root 0711: reachable, but nobody lists the agents' names
      <agent>/               root 0755: the agent reads (and lists) it, cannot create in it
        <pid>.json           owned by the agent's uid, 0400: only that uid (and root) reads it

The root and each agent's directory are opened once, as directory fds (O_NOFOLLOW), and
every file is made with openat(O_CREAT|O_EXCL|O_NOFOLLOW) and renamed with renameat inside
that fd: no path an agent could have changed is ever resolved again. The file is handed to
the agent's uid (fchown on the open fd, needs CAP_CHOWN) rather than made world-readable:
results name the agent's tool calls, which other users must not see.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

ROOT_MODE = 0o711
AGENT_DIR_MODE = 0o755
FILE_MODE = 0o400
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class ResultsDirError(RuntimeError):
    """The results root cannot be used safely: one line for the operator."""


def _own_dir(fd: int, what: str, mode: int) -> None:
    """The directory behind fd must be ours; then give it exactly `mode`."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise ResultsDirError(f"{what} is owned by uid {st.st_uid}, not by uid {os.geteuid()}: refusing to write results there")
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


class ResultsDir:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        try:
            os.mkdir(path, ROOT_MODE)
        except FileExistsError:
            pass
        try:
            self._root = os.open(path, _DIR_FLAGS)
        except OSError as exc:
            raise ResultsDirError(f"results directory {path}: {os.strerror(exc.errno or 0)} (a symlink is refused)") from None
        try:
            _own_dir(self._root, f"results directory {path}", ROOT_MODE)
        except BaseException:
            os.close(self._root)
            raise
        self._agents: dict[str, int] = {}

    def agent_path(self, agent: str) -> Path:
        """What the agent is told ($AGENTD_RESULTS_DIR); never opened by path here."""
        return self.path / agent

    def _agent_fd(self, agent: str) -> int:
        fd = self._agents.get(agent)
        if fd is not None:
            return fd
        if "/" in agent or agent in ("", ".", ".."):
            raise ValueError(f"agent name {agent!r} cannot name a results directory")
        try:
            os.mkdir(agent, AGENT_DIR_MODE, dir_fd=self._root)
        except FileExistsError:
            pass
        fd = os.open(agent, _DIR_FLAGS, dir_fd=self._root)
        try:
            _own_dir(fd, f"results directory {self.path / agent}", AGENT_DIR_MODE)
        except BaseException:
            os.close(fd)
            raise
        self._agents[agent] = fd
        return fd

    def write(self, agent: str, uid: int, pid: int, result: dict) -> None:
        """<agent>/<pid>.json, readable by `uid` only. OSError when it cannot be written."""
        dir_fd = self._agent_fd(agent)
        tmp, final = f".{pid}.json.tmp", f"{pid}.json"
        try:
            fd = os.open(tmp, _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
        except FileExistsError:  # left by a crash in the middle of a write: ours, remove it
            os.unlink(tmp, dir_fd=dir_fd)
            fd = os.open(tmp, _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            try:
                data = json.dumps(result).encode()
                while data:
                    data = data[os.write(fd, data):]
                os.fchmod(fd, FILE_MODE)
                if uid != os.geteuid():
                    os.fchown(fd, uid, -1)
            finally:
                os.close(fd)
            os.rename(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise

    def forget(self, agent: str) -> None:
        """The agent ended: close its directory fd (reopened if another result comes)."""
        fd = self._agents.pop(agent, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for agent in list(self._agents):
            self.forget(agent)
        if self._root >= 0:
            os.close(self._root)
            self._root = -1


def default_results_root(socket_path: Path) -> Path:
    """Next to the API socket (/run/agentd/results under the unit): outside the 0700 state
    directory, since agents must read their results."""
    return socket_path.parent / "results"

