"""What a policy kind keeps across a restart: its own records (for re-adoption) and the
original value of every setting it changed (so removing a policy restores them).

One small SQLite file beside the daemon's store (kinds.db, WAL, 0600), one row per key, so a
new kind needs no schema change: `KindState` is a namespaced key/value table of JSON values.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator

MAX_VALUE_BYTES = 1 << 20  # one record; a kind that needs more is keeping the wrong thing

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kind_state (
  kind TEXT NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,             -- JSON
  PRIMARY KEY (kind, key)
);
"""


class KindDatabase:
    """The shared file; each kind gets a `KindState` view of its own rows."""

    def __init__(self, path: Path | str):
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Created 0600 before SQLite opens it: kinds' records may name agents' processes.
            os.close(os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=0.5)
        self._lock = threading.RLock()
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def view(self, kind: str) -> "KindState":
        return KindState(self, kind)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)


class KindState:
    def __init__(self, db: KindDatabase, kind: str):
        self._db = db
        self.kind = kind

    def put(self, key: str, value: Any) -> None:
        text = json.dumps(value, separators=(",", ":"), default=str)
        if len(text) > MAX_VALUE_BYTES:
            raise ValueError(f"{self.kind} record {key!r} is {len(text)} bytes; at most {MAX_VALUE_BYTES}")
        self._db._exec("INSERT OR REPLACE INTO kind_state(kind, key, value) VALUES (?,?,?)", (self.kind, key, text))

    def get(self, key: str, default: Any = None) -> Any:
        row = self._db._exec("SELECT value FROM kind_state WHERE kind = ? AND key = ?", (self.kind, key)).fetchone()
        return json.loads(row[0]) if row else default

    def delete(self, key: str) -> None:
        self._db._exec("DELETE FROM kind_state WHERE kind = ? AND key = ?", (self.kind, key))

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """(key, value) of every record whose key starts with prefix, in key order."""
        rows = self._db._exec(
            "SELECT key, value FROM kind_state WHERE kind = ? AND substr(key, 1, ?) = ? ORDER BY key",
            (self.kind, len(prefix), prefix)).fetchall()
        for key, value in rows:
            yield key, json.loads(value)
