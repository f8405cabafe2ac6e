"""Crash-safe state: agents, tool-call records and the event journal in SQLite. In WAL mode
every committed transaction is in the OS before the call returns, so a SIGKILLed daemon
restarts with every record it wrote (synchronous=NORMAL: only a power loss can take the
last transactions, and the kernel's cgroups, which re-adoption reads, would be gone too).

Records are rotated: only the newest MAX_EVENTS events and MAX_DONE_TOOLCALLS finished
tool calls are kept, so the file (and the daemon's memory) stays flat over time.

A busy database (another process holding its write lock: a backup, an operator's sqlite3
shell) must neither fail a placement nor stall the event loop. A write waits at most
BUSY_TIMEOUT_MS for the lock; if it is still held, the write (and every later one, to keep
their order) goes to a queue that a writer thread, with its own connection, commits as soon
as the lock is free. Reads are not blocked by a writer in WAL mode; while writes are queued
they see the database as it was. Only queued writes can be lost to a SIGKILL.

That is the "direct" write path: each write commits on its caller's thread (the event
loop), one transaction per write. The "batched" path (the daemon's default) never commits
on the caller's thread: every write goes to one writer thread (agentd.core.batch_writer)
that commits up to MAX_ITEMS queued writes per transaction, within MAX_WAIT_S of the first,
and hands the committed events to `on_events_committed` (the journal's JSONL lines). Order
is kept (one queue, one thread). A SIGKILL loses at most the writes not yet committed:
milliseconds' worth, or what queued while another process held the lock; a placement's
record survives through its placement note (agentd/toolcalls/notes.py). Reads see their
own writes: a read first waits (up to READ_FLUSH_S) for what was queued before it, except
while the database is locked by another process, when it reads the database as it was.
A full queue never blocks its caller: journal events' rows past the limit are dropped and
counted (the journal reports them), records are always queued.
"""

from __future__ import annotations

import collections
import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from agentd.core.batch_writer import BatchWriter, Busy

MAX_EVENTS = 20_000
MAX_DONE_TOOLCALLS = 5_000
BUSY_TIMEOUT_MS = 20  # the longest a write may hold up its caller (the event loop)
WRITER_RETRY_S = (0.005, 0.05)  # the writer thread's pause between attempts, growing
OPEN_TIMEOUT_S = 10.0  # start-up may wait for the lock: nothing runs yet
READ_FLUSH_S = 1.0  # the longest a read waits for the writes queued before it (batched)
WRITE_PATHS = ("batched", "direct")

log = logging.getLogger("agentd.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
  name TEXT PRIMARY KEY,
  uid INTEGER NOT NULL,
  main_pid INTEGER NOT NULL,
  main_start INTEGER NOT NULL,     -- /proc start time: tells a reused pid from ours
  policy TEXT NOT NULL,
  cgroup TEXT NOT NULL,
  next_seq INTEGER NOT NULL DEFAULT 1,
  state TEXT NOT NULL,             -- live | done
  created REAL NOT NULL,
  ended REAL
);
CREATE TABLE IF NOT EXISTS toolcalls (
  id TEXT PRIMARY KEY,             -- <agent>/<seq>-<name>
  agent TEXT NOT NULL,
  seq INTEGER NOT NULL,
  name TEXT NOT NULL,
  cgroup TEXT NOT NULL,
  pid INTEGER NOT NULL,
  argv TEXT NOT NULL,              -- JSON list
  started REAL NOT NULL,
  ended REAL,
  state TEXT NOT NULL,             -- running | frozen | done
  outcome TEXT,
  reason TEXT,
  rule TEXT,
  limits TEXT NOT NULL,            -- JSON
  clips TEXT NOT NULL,             -- JSON
  intent TEXT,                     -- JSON
  peak_bytes INTEGER NOT NULL DEFAULT 0,
  cpu_s REAL NOT NULL DEFAULT 0,
  exit_code INTEGER,
  ladder TEXT                      -- JSON of the escalation state, for re-adoption
);
CREATE INDEX IF NOT EXISTS toolcalls_agent ON toolcalls(agent);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  ts REAL NOT NULL,
  level TEXT NOT NULL,
  kind TEXT NOT NULL,
  agent TEXT,
  tool_call TEXT,
  message TEXT NOT NULL,
  data TEXT NOT NULL
);
"""

_TOOLCALL_COLUMNS = ("id", "agent", "seq", "name", "cgroup", "pid", "argv", "started", "ended", "state", "outcome",
                     "reason", "rule", "limits", "clips", "intent", "peak_bytes", "cpu_s", "exit_code", "ladder")
_JSON_COLUMNS = {"argv", "limits", "clips", "intent", "ladder", "data"}


def _decode(row: sqlite3.Row) -> dict:
    out = dict(row)
    for key in _JSON_COLUMNS & out.keys():
        if out[key] is not None:
            out[key] = json.loads(out[key])
    return out


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _commit(db: sqlite3.Connection, ops: list[tuple[str, tuple]]) -> None:
    """One write or a group of them, all or nothing."""
    if len(ops) == 1:
        db.execute(*ops[0])
        return
    db.execute("BEGIN IMMEDIATE")  # takes the write lock first: busy here means nothing ran
    try:
        for sql, args in ops:
            db.execute(sql, args)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


_EVENT_INSERT = "INSERT INTO events(seq, ts, level, kind, agent, tool_call, message, data) VALUES (?,?,?,?,?,?,?,?)"


def _event_args(seq: int, ev: dict) -> tuple:
    return (seq, ev["ts"], ev["level"], ev["kind"], ev.get("agent"), ev.get("tool_call"), ev["message"],
            json.dumps(ev.get("data") or {}, default=str))


class Store:
    def __init__(self, path: Path, writes: str = "direct"):
        if writes not in WRITE_PATHS:
            raise ValueError(f"store writes: expected one of {', '.join(WRITE_PATHS)}, got {writes!r}")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=OPEN_TIMEOUT_S)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._inserts = 0
        last = self._db.execute("SELECT MAX(seq) FROM events").fetchone()[0] or 0
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        self._next_event_seq = max(last, row[0] if row else 0) + 1  # given here: a queued event has its seq too
        self._batch: list | None = None  # writes of the open transaction()
        self._batch_thread: int | None = None
        self._pending: collections.deque[list] = collections.deque()  # writes waiting for the lock
        self._wake = threading.Condition(self._lock)
        self._writer: threading.Thread | None = None
        self._closing = False
        self.stats = {"writes_deferred": 0, "writer_retries": 0, "writes_failed": 0}
        self.writes = writes
        self.on_events_committed: Callable[[list[dict]], None] | None = None  # on the writer thread
        self.on_events_taken: Callable[[list[dict]], None] | None = None  # writer thread, once per event, before its commit
        self._taken_seq = 0  # the highest event seq handed to on_events_taken (a busy batch is retried)
        self._wdb: sqlite3.Connection | None = None  # the batch writer's own connection
        self.batcher = BatchWriter(self._commit_batch, name="agentd-store-writer", on_start=self._open_writer_db,
                                   on_stop=self._close_writer_db) if writes == "batched" else None

    @property
    def batched(self) -> bool:
        return self.batcher is not None

    def close(self) -> None:
        if self.batcher is not None:
            left = self.batcher.close(timeout=5.0)
            if left:
                log.error("Closing the store with %d writes still queued behind a held database lock; "
                          "they are lost.", left)
            with self._lock:
                self._db.close()
            return
        self.flush(timeout=5.0)
        with self._lock:
            self._closing = True
            self._wake.notify_all()
            if self._pending:
                log.error("Closing the store with %d writes still queued behind a held database lock; "
                          "they are lost.", len(self._pending))
            self._db.close()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until no write is queued (True) or the timeout passes (False)."""
        if self.batcher is not None:
            return self.batcher.flush(timeout)
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.05))
        return True

    @property
    def pending_writes(self) -> int:
        return self.batcher.pending if self.batcher is not None else len(self._pending)

    def take_unreported_drops(self) -> int:
        """Journal events' rows dropped on a full queue since the last call (batched)."""
        return self.batcher.take_unreported_drops() if self.batcher is not None else 0

    # ------------------------------------------------------------------ the batched path
    def _open_writer_db(self) -> None:
        # timeout=0: the writer polls (BatchWriter.RETRY_S) instead of SQLite's busy wait,
        # which sleeps whole seconds where SQLite was built without usleep
        self._wdb = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=0)
        self._wdb.execute("PRAGMA synchronous=NORMAL")

    def _close_writer_db(self) -> None:
        if self._wdb is not None:
            self._wdb.close()
            self._wdb = None

    def _commit_batch(self, batch: list) -> None:
        """On the writer thread: the batch in one transaction, then its events to the hook."""
        db, events = self._wdb, []
        self._run_items(None, batch, events)  # the batch's (seq, event)s, nothing run yet
        fresh = [ev for seq, ev in events if seq > self._taken_seq]
        if events:
            self._taken_seq = max(self._taken_seq, events[-1][0])
        if fresh and self.on_events_taken is not None:
            try:
                self.on_events_taken(fresh)  # the log: at once, even while the lock is held elsewhere
            except Exception as exc:  # noqa: BLE001
                log.warning("event hook failed: %s", exc)
        events = []
        try:
            db.execute("BEGIN IMMEDIATE")  # the write lock first: busy here means nothing ran
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                raise Busy() from exc
            raise
        try:
            self._run_items(db, batch, events)
            db.execute("COMMIT")
        except BaseException as exc:
            db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and _busy(exc):
                raise Busy() from exc
            raise
        if events and self.on_events_committed is not None:
            try:
                self.on_events_committed([ev for _seq, ev in events])
            except Exception as exc:  # noqa: BLE001 - the rows are in; a hook's failure must not redo them
                log.warning("after-commit hook failed: %s", exc)

    @staticmethod
    def _run_items(db: sqlite3.Connection | None, items: list, events: list) -> None:
        """Execute the items on db (None: only collect their events)."""
        for kind, payload in items:
            if kind == "event":
                seq, ev = payload
                if db is not None:
                    db.execute(_EVENT_INSERT, _event_args(seq, ev))
                events.append((seq, ev))
            elif kind == "group":  # a transaction(): its items, in order
                Store._run_items(db, payload, events)
            elif db is not None:
                for sql, args in payload:
                    db.execute(sql, args)

    def _see_own_writes(self) -> None:
        """Before a read (batched): wait for the writes queued before it, unless another
        process holds the lock (then the read sees the database as it was)."""
        b = self.batcher
        if b is not None and b.pending and not b.on_writer_thread() and not b.busy:
            b.flush(READ_FLUSH_S)

    @contextmanager
    def transaction(self):
        """Group writes into one commit (one WAL write instead of several)."""
        with self._lock:
            if self._batch is not None and self._batch_thread == threading.get_ident():
                yield
                return
            self._batch, self._batch_thread = [], threading.get_ident()
            try:
                yield
                ops = self._batch
            finally:
                self._batch, self._batch_thread = None, None
            if ops:
                self._submit(ops)

    def max_seq(self, agent: str) -> int:
        row = self._exec("SELECT MAX(seq) FROM toolcalls WHERE agent = ?", (agent,)).fetchone()
        return int(row[0] or 0)

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        self._see_own_writes()
        with self._lock:
            return self._db.execute(sql, args)

    def _write(self, sql: str, args: tuple = ()) -> None:
        self._queue_or_commit(("ops", [(sql, args)]) if self.batcher is not None else (sql, args))

    def _queue_or_commit(self, item, droppable: bool = False) -> None:
        """Into the open transaction() of this thread, else committed (direct) or queued (batched)."""
        with self._lock:  # held throughout: writes keep the order of their callers
            if self._batch is not None and self._batch_thread == threading.get_ident():
                self._batch.append(item)
            elif self.batcher is not None:
                self.batcher.put(item, droppable=droppable)
            else:
                self._submit([item])

    def _submit(self, ops: list) -> None:
        if self.batcher is not None:
            self.batcher.put(("group", ops))  # one queue item: always in one batch, all or nothing
            return
        with self._lock:
            if not self._pending:
                try:
                    _commit(self._db, ops)
                    return
                except sqlite3.OperationalError as exc:
                    if not _busy(exc):
                        raise
            if not self._pending:
                log.warning("The database is locked by another process; writes are queued until it is free.")
            self._pending.append(ops)
            self.stats["writes_deferred"] += 1
            self._wake.notify_all()
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._drain, name="agentd-store-writer", daemon=True)
                self._writer.start()

    def _drain(self) -> None:
        """The writer thread: commit queued writes in order, with its own connection, so that
        waiting for the lock blocks no one else."""
        # SQLite's own busy wait sleeps in whole seconds where it was built without usleep:
        # the thread polls instead, so the queue drains within WRITER_RETRY_S[1] of the release
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=0)
        pause = WRITER_RETRY_S[0]
        try:
            while True:
                with self._lock:
                    while not self._pending and not self._closing:
                        if not self._wake.wait(5.0) and not self._pending:
                            self._writer = None  # idle: it ends; the next busy write starts another
                            return
                    if self._closing:
                        return
                    ops = self._pending[0]
                try:
                    _commit(db, ops)
                except sqlite3.OperationalError as exc:
                    if _busy(exc):
                        self.stats["writer_retries"] += 1
                        time.sleep(pause)
                        pause = min(pause * 2, WRITER_RETRY_S[1])
                        continue
                    log.error("A queued write failed and is dropped: %s", exc)
                    self.stats["writes_failed"] += 1
                except sqlite3.Error as exc:
                    log.error("A queued write failed and is dropped: %s", exc)
                    self.stats["writes_failed"] += 1
                pause = WRITER_RETRY_S[0]
                with self._lock:
                    self._pending.popleft()  # only now: until it is in, later writes queue behind it
                    if not self._pending:
                        log.info("The database is free again; the queued writes are in.")
                    self._wake.notify_all()
        finally:
            db.close()

    # ------------------------------------------------------------------ agents
    def put_agent(self, a: dict) -> None:
        self._write(
            "INSERT OR REPLACE INTO agents(name, uid, main_pid, main_start, policy, cgroup, next_seq, state, created, ended)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            (a["name"], a["uid"], a["main_pid"], a["main_start"], a["policy"], a["cgroup"], a["next_seq"], a["state"], a["created"], a.get("ended")),
        )

    def agent_uid(self, name: str) -> int | None:
        """The uid that owns the name (its record's), None for a name never used."""
        row = self._exec("SELECT uid FROM agents WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else None

    def agent_names_of(self, uid: int) -> int:
        """How many agent names uid owns (one record each, live or ended)."""
        return int(self._exec("SELECT COUNT(*) FROM agents WHERE uid = ?", (uid,)).fetchone()[0])

    def agents(self, live_only: bool = False) -> list[dict]:
        sql = "SELECT * FROM agents" + (" WHERE state = 'live'" if live_only else "") + " ORDER BY created"
        return [dict(r) for r in self._exec(sql).fetchall()]

    # ------------------------------------------------------------------ tool calls
    def put_toolcall(self, t: dict) -> None:
        values = tuple(json.dumps(t.get(c)) if c in _JSON_COLUMNS else t.get(c) for c in _TOOLCALL_COLUMNS)
        self._write(f"INSERT OR REPLACE INTO toolcalls({', '.join(_TOOLCALL_COLUMNS)}) VALUES ({', '.join('?' * len(_TOOLCALL_COLUMNS))})", values)

    def toolcalls(self, agent: str | None = None, live_only: bool = False, limit: int = 1000) -> list[dict]:
        where, args = [], []
        if agent:
            where.append("agent = ?")
            args.append(agent)
        if live_only:
            where.append("state != 'done'")
        sql = "SELECT * FROM toolcalls" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY started DESC LIMIT ?"
        return [_decode(r) for r in self._exec(sql, (*args, limit)).fetchall()][::-1]

    def toolcall(self, ident: str) -> dict | None:
        row = self._exec("SELECT * FROM toolcalls WHERE id = ?", (ident,)).fetchone()
        return _decode(row) if row else None

    # ------------------------------------------------------------------ events
    def append_event(self, ev: dict) -> int:
        with self._lock:
            seq = self._next_event_seq
            self._next_event_seq += 1
            if self.batcher is not None:  # serialized on the writer thread
                self._queue_or_commit(("event", (seq, ev)), droppable=True)
            else:
                self._write(_EVENT_INSERT, _event_args(seq, ev))
            self._inserts += 1
            if self._inserts % 1000 == 0:
                self.rotate()
        return seq

    def events(self, *, tool_call: str | None = None, agent: str | None = None, after: int = 0, limit: int = 500) -> list[dict]:
        where, args = ["seq > ?"], [after]
        if tool_call:
            where.append("tool_call = ?")
            args.append(tool_call)
        if agent:
            where.append("agent = ?")
            args.append(agent)
        sql = f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
        return [_decode(r) for r in self._exec(sql, (*args, limit)).fetchall()][::-1]

    def rotate(self) -> None:
        self._write("DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?", (MAX_EVENTS,))
        self._write(
            "DELETE FROM toolcalls WHERE state = 'done' AND id NOT IN "
            "(SELECT id FROM toolcalls WHERE state = 'done' ORDER BY ended DESC LIMIT ?)",
            (MAX_DONE_TOOLCALLS,),
        )
