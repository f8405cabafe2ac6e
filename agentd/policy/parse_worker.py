"""Policy parsing in worker processes with a time limit, off the daemon's event loop.

`POST /v1/policies/validate` is open to every local user. A parse on the event loop stalls
every placement while it runs, and a thread cannot be stopped (nor can it give the GIL
back inside libyaml or a regex compile). A process can be killed: each parse runs in one
of a few persistent workers (python -m agentd.policy.parse_worker), and a worker that
overruns its time limit is SIGKILLed and replaced.

Workers also bound their memory (RLIMIT_AS) and, when started by root, drop to nobody
before reading any input: a parser bug is then an unprivileged process's problem.

Wire protocol on the worker's stdin/stdout: 4-byte big-endian length + JSON, request
{"text", "filename"} -> response {"problems": [Problem as JSON]}. JSON, never pickle: the
worker reads untrusted input as an unprivileged process, so what it answers is data the
daemon checks, not objects it would rebuild (fail2ban's pickle is the lesson). When the
caller needs the Policy object (apply, diff: admins only), the daemon parses the text
itself in a thread, once the worker has shown that the text parses within the bounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from agentd.policy.problems import Problem

_LEN = struct.Struct(">I")
WORKER_MEMORY_BYTES = 1 << 30  # address space of a worker; a parse that needs more fails
NOBODY = 65534


MAX_ANSWER_BYTES = 16 << 20
READY = b"R"
START_TIMEOUT_S = 120.0  # a cold worker imports the loader and every kind's schema
MAX_PROBLEMS = 1000


class ParseTimeout(Exception):
    pass


def _problem(obj: dict) -> Problem:
    """A Problem from the worker's JSON, checked field by field."""
    return Problem(str(obj["file"])[:4096], int(obj["line"]), str(obj["key"])[:4096], str(obj["message"])[:4096])


# ------------------------------------------------------------------------- the worker side


def _drop_privileges() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.nice(10)  # a long parse must not take CPU from the daemon's event loop
    if os.geteuid() == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        except PermissionError:  # a unit without CAP_SETUID/CAP_SETGID: still bounded, as root
            print("agentd parse worker: cannot switch to uid nobody (no CAP_SETUID/CAP_SETGID); "
                  "parsing with the daemon's uid", file=sys.stderr, flush=True)


def _serve(stdin, stdout) -> None:
    from agentd.policy.loader import parse_text  # imported before privileges are dropped

    _drop_privileges()
    stdout.write(READY)  # start-up (imports: seconds on a slow host) is not counted in a parse's time limit
    stdout.flush()
    while True:
        head = stdin.read(_LEN.size)
        if len(head) < _LEN.size:
            return
        request = json.loads(stdin.read(_LEN.unpack(head)[0]))
        text, filename = request["text"], request["filename"]
        try:
            problems = parse_text(text, filename)[1]
        except MemoryError:
            problems = [Problem(filename, 0, "", "the policy needs more memory to parse than agentd allows")]
        except Exception as exc:  # a parser bug: a clean problem for the caller, not a dead worker
            problems = [Problem(filename, 0, "", f"agentd could not parse this file ({type(exc).__name__})")]
        out = json.dumps({"problems": [p.to_json() for p in problems]}).encode()
        stdout.write(_LEN.pack(len(out)) + out)
        stdout.flush()


# ------------------------------------------------------------------------- the daemon side


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    @classmethod
    async def start(cls) -> "_Worker":
        root = str(Path(__file__).resolve().parents[2])  # the tree agentd is imported from
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-s", "-m", "agentd.policy.parse_worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, cwd="/",
            start_new_session=True)
        worker = cls(proc)
        try:
            ready = await asyncio.wait_for(proc.stdout.readexactly(len(READY)), START_TIMEOUT_S)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError):
            ready = b""
        if ready != READY:
            await worker.kill()
            raise OSError(f"the policy parse worker did not start within {START_TIMEOUT_S:g} s")
        return worker

    async def call(self, text: str, filename: str) -> list[Problem]:
        data = json.dumps({"text": text, "filename": filename}).encode()
        self.proc.stdin.write(_LEN.pack(len(data)) + data)
        await self.proc.stdin.drain()
        size = _LEN.unpack(await self.proc.stdout.readexactly(_LEN.size))[0]
        if size > MAX_ANSWER_BYTES:
            raise ValueError(f"answer of {size} bytes")
        answer = json.loads(await self.proc.stdout.readexactly(size))
        return [_problem(p) for p in answer["problems"][:MAX_PROBLEMS]]

    async def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        await self.proc.wait()


@dataclass
class ParseWorkers:
    """A few persistent parse workers; parse() waits for a free one."""

    workers: int = 3
    timeout_s: float = 5.0
    stats: dict = field(default_factory=lambda: {"parses": 0, "timeouts": 0, "worker_starts": 0, "worker_deaths": 0})

    def __post_init__(self):
        self._idle: list[_Worker] = []
        self._free: asyncio.Semaphore | None = None
        self._all: set[_Worker] = set()

    async def parse(self, text: str, filename: str, want_policy: bool = False):
        """(Policy | None, [Problem]) as loader.parse_text gives, or ParseTimeout. The Policy
        (only with want_policy, and only when the worker found no problem) is parsed here, in
        a thread, from the text the worker has shown to be well within the bounds."""
        problems = await self._check(text, filename)
        if problems or not want_policy:
            return None, problems
        from agentd.policy.loader import parse_text

        return await asyncio.get_running_loop().run_in_executor(None, parse_text, text, filename)

    async def _check(self, text: str, filename: str) -> list[Problem]:
        if self._free is None:
            self._free = asyncio.Semaphore(self.workers)
        async with self._free:
            worker = self._idle.pop() if self._idle else await self._start()
            t0 = time.monotonic()
            try:
                problems = await asyncio.wait_for(worker.call(text, filename), self.timeout_s)
            except asyncio.TimeoutError:
                self.stats["timeouts"] += 1
                await self._retire(worker)
                raise ParseTimeout(f"parsing {filename} took longer than {self.timeout_s:g} s; "
                                   "expected a smaller or simpler policy") from None
            except (asyncio.IncompleteReadError, BrokenPipeError, ConnectionResetError, EOFError, ValueError, KeyError,
                    TypeError):
                self.stats["worker_deaths"] += 1
                await self._retire(worker)
                return [Problem(filename, 0, "", f"the parse worker ended before answering (exit status "
                                      f"{worker.proc.returncode}): the policy may need more than agentd's memory "
                                      "bound; expected a smaller policy, or see the daemon's log")]
            except BaseException:  # cancelled mid-call: the worker's stream is out of step
                await self._retire(worker)
                raise
            self.stats["parses"] += 1
            self.stats["last_ms"] = round((time.monotonic() - t0) * 1000, 2)
            self._idle.append(worker)
            return problems

    async def _start(self) -> _Worker:
        worker = await _Worker.start()
        self.stats["worker_starts"] += 1
        self._all.add(worker)
        return worker

    async def _retire(self, worker: _Worker) -> None:
        self._all.discard(worker)
        await worker.kill()

    async def close(self) -> None:
        self._idle.clear()
        for worker in list(self._all):
            await self._retire(worker)


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
