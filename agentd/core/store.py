"""Crash-safe state: agents, tool-call records and the event journal in SQLite. In WAL mode
every committed transaction is in the OS before the call returns, so a SIGKILLed daemon
restarts with every record it wrote (synchronous=NORMAL: only a power loss can take the
last transactions, and the kernel's cgroups, which re-adoption reads, would be gone too).

Records are rotated: only the newest MAX_EVENTS events and MAX_DONE_TOOLCALLS finished
tool calls are kept, so the file (and the daemon's memory) stays flat over time.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

MAX_EVENTS = 20_000
MAX_DONE_TOOLCALLS = 5_000

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


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._inserts = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self):
        """Group writes into one commit (one WAL write instead of several)."""
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            self._db.execute("BEGIN")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def max_seq(self, agent: str) -> int:
        row = self._exec("SELECT MAX(seq) FROM toolcalls WHERE agent = ?", (agent,)).fetchone()
        return int(row[0] or 0)

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    # ------------------------------------------------------------------ agents
    def put_agent(self, a: dict) -> None:
        self._exec(
            "INSERT OR REPLACE INTO agents(name, uid, main_pid, main_start, policy, cgroup, next_seq, state, created, ended)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            (a["name"], a["uid"], a["main_pid"], a["main_start"], a["policy"], a["cgroup"], a["next_seq"], a["state"], a["created"], a.get("ended")),
        )

    def agent_uid(self, name: str) -> int | None:
        """The uid that owns the name (its record's), None for a name never used."""
        row = self._exec("SELECT uid FROM agents WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else None

    def agents(self, live_only: bool = False) -> list[dict]:
        sql = "SELECT * FROM agents" + (" WHERE state = 'live'" if live_only else "") + " ORDER BY created"
        return [dict(r) for r in self._exec(sql).fetchall()]

    # ------------------------------------------------------------------ tool calls
    def put_toolcall(self, t: dict) -> None:
        values = tuple(json.dumps(t.get(c)) if c in _JSON_COLUMNS else t.get(c) for c in _TOOLCALL_COLUMNS)
        self._exec(f"INSERT OR REPLACE INTO toolcalls({', '.join(_TOOLCALL_COLUMNS)}) VALUES ({', '.join('?' * len(_TOOLCALL_COLUMNS))})", values)

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
        cur = self._exec(
            "INSERT INTO events(ts, level, kind, agent, tool_call, message, data) VALUES (?,?,?,?,?,?,?)",
            (ev["ts"], ev["level"], ev["kind"], ev.get("agent"), ev.get("tool_call"), ev["message"], json.dumps(ev.get("data") or {})),
        )
        self._inserts += 1
        if self._inserts % 1000 == 0:
            self.rotate()
        return int(cur.lastrowid)

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
        self._exec("DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?", (MAX_EVENTS,))
        self._exec(
            "DELETE FROM toolcalls WHERE state = 'done' AND id NOT IN "
            "(SELECT id FROM toolcalls WHERE state = 'done' ORDER BY ended DESC LIMIT ?)",
            (MAX_DONE_TOOLCALLS,),
        )
