"""The batched write path (issue 9 / issue 8 item 12): the event loop only enqueues; one
writer thread commits journal rows, records and JSONL lines in batches, in order. Reads see
their own writes, close flushes, a full queue never blocks and never loses silently, and a
database held by another process blocks neither writes nor reads. Real SQLite throughout;
the generic writer's own tests use a recording commit."""

import json
import sqlite3
import threading
import time
from unittest import mock

import pytest

from agentd.core import journal as journal_mod
from agentd.core.batch_writer import BatchWriter, Busy
from agentd.core.journal import Journal
from agentd.core.store import Store
from tests.unit.core.test_store_and_policies import event, toolcall


# ---------------------------------------------------------------- the generic writer


def test_items_are_committed_in_order_in_batches():
    seen: list[list] = []
    w = BatchWriter(lambda batch: seen.append(list(batch)), max_items=64, max_wait_s=0.01)
    for i in range(1000):
        w.put(i)
    assert w.flush(5)
    assert [i for b in seen for i in b] == list(range(1000))
    assert len(seen) < 100 and max(len(b) for b in seen) <= 64  # batched, bounded
    assert w.close() == 0


def test_a_busy_batch_stays_at_the_head_and_nothing_overtakes_it():
    free = threading.Event()
    seen: list[int] = []

    def commit(batch):
        if not free.is_set():
            raise Busy()
        seen.extend(batch)

    w = BatchWriter(commit, max_wait_s=0)
    for i in range(10):
        w.put(i)
    time.sleep(0.1)
    assert seen == [] and w.busy and w.pending == 10 and w.stats["busy_retries"] > 0
    assert not w.flush(0.05)  # a flush is bounded while the lock is held
    free.set()
    assert w.flush(5) and seen == list(range(10)) and not w.busy
    w.close()


def test_a_bad_item_is_counted_and_does_not_take_the_others_with_it(caplog):
    seen: list[int] = []

    def commit(batch):
        if 3 in batch:
            raise ValueError("bad item")
        seen.extend(batch)

    w = BatchWriter(commit, max_wait_s=0.05)
    for i in range(6):
        w.put(i)
    assert w.flush(5)
    assert seen == [0, 1, 2, 4, 5] and w.stats["failed"] == 1
    assert "failed and is dropped" in caplog.text
    w.close()


def test_a_full_queue_never_blocks_refuses_droppable_items_and_keeps_records():
    gate = threading.Event()
    seen: list = []
    w = BatchWriter(lambda b: (gate.wait(), seen.extend(b)), max_wait_s=0, limit=5)
    w.put("first")  # the writer takes it and waits at the gate
    time.sleep(0.05)
    t0 = time.monotonic()
    accepted = [w.put(f"ev{i}", droppable=True) for i in range(20)]
    w.put("record")  # not droppable: queued past the limit
    assert time.monotonic() - t0 < 0.05  # put never waits for the writer
    # the limit counts the batch being committed ("first") too
    assert accepted.count(True) == 4 and w.stats["dropped"] == 16 and w.take_unreported_drops() == 16
    assert w.take_unreported_drops() == 0
    gate.set()
    assert w.flush(5)
    assert seen == ["first", *[f"ev{i}" for i in range(4)], "record"]
    w.close()


# ---------------------------------------------------------------- the store on it


@pytest.fixture
def batched(tmp_path):
    s = Store(tmp_path / "s.db", writes="batched")
    yield s
    s.close()


def _slow(store: Store) -> None:
    """A writer that would hold a batch 30 s for more items: only a flush commits sooner."""
    store.batcher.max_wait_s = 30.0


def test_writes_return_before_they_are_committed(batched):
    _slow(batched)
    batched.put_toolcall(toolcall(1, "running"))
    time.sleep(0.05)
    other = sqlite3.connect(str(batched.path))
    assert other.execute("SELECT COUNT(*) FROM toolcalls").fetchone()[0] == 0  # queued, not on the loop
    other.close()
    assert batched.pending_writes == 1


def test_reads_see_their_own_writes(batched):
    _slow(batched)
    batched.put_toolcall(toolcall(1, "running"))
    seq = batched.append_event(event(1))
    batched.put_toolcall(toolcall(1, "done"))
    t0 = time.monotonic()
    assert batched.toolcall("a/0001-x")["state"] == "done"  # flushed before the read, last write won
    assert [e["seq"] for e in batched.events()] == [seq]
    assert batched.toolcalls(agent="a")[0]["id"] == "a/0001-x" and batched.max_seq("a") == 1
    assert time.monotonic() - t0 < 1.0


def test_close_flushes_everything(tmp_path):
    s = Store(tmp_path / "s.db", writes="batched")
    j = Journal(s, jsonl=tmp_path / "j.jsonl")
    _slow(s)
    seqs = [j.emit("k", f"m{i}", agent="a", i=i)["seq"] for i in range(300)]
    s.put_toolcall(toolcall(2))
    j.close()
    s.close()
    again = Store(tmp_path / "s.db")
    assert [e["seq"] for e in again.events(limit=1000)] == seqs
    assert again.toolcall("a/0002-x") is not None
    lines = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in lines] == seqs  # the JSONL line by the same writer, same order


def test_committed_batches_survive_without_a_close(tmp_path):
    """As after a SIGKILL: what the writer committed is in; nothing waits for a close."""
    s = Store(tmp_path / "s.db", writes="batched")
    s.put_toolcall(toolcall(1, "running"))
    seq = s.append_event(event(1))
    assert s.flush(5)
    fresh = Store(tmp_path / "s.db")
    assert fresh.toolcall("a/0001-x")["state"] == "running" and fresh.events()[-1]["seq"] == seq
    s.close()


def test_a_transaction_is_one_item_all_or_nothing_with_its_jsonl_lines(tmp_path):
    s = Store(tmp_path / "s.db", writes="batched")
    j = Journal(s, jsonl=tmp_path / "j.jsonl")
    with pytest.raises(RuntimeError):
        with s.transaction():
            s.put_toolcall(toolcall(7))
            j.emit("toolcall.end", "x", tool_call="a/0007-x")
            raise RuntimeError("boom")
    with s.transaction():  # as the ladder ends a tool call: record and event in one commit
        s.put_toolcall(toolcall(8))
        ev = j.emit("toolcall.end", "y", tool_call="a/0008-x")
    assert s.toolcall("a/0007-x") is None and s.toolcall("a/0008-x") is not None
    assert [e["seq"] for e in s.events()] == [ev["seq"]]
    j.close()
    assert [json.loads(line)["seq"] for line in (tmp_path / "j.jsonl").read_text().splitlines()] == [ev["seq"]]
    s.close()


def test_a_full_queue_drops_event_rows_counts_them_and_journals_the_drop(tmp_path):
    s = Store(tmp_path / "s.db", writes="batched")
    j = Journal(s, jsonl=tmp_path / "j.jsonl")
    s.batcher.limit = 20
    other = sqlite3.connect(str(tmp_path / "s.db"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the writer cannot commit: the queue fills
    sub = j.subscribe()
    t0 = time.monotonic()
    for i in range(50):
        j.emit("k", f"m{i}", agent="a")
    s.put_toolcall(toolcall(3))  # a record is never dropped
    assert time.monotonic() - t0 < 0.5  # the loop never waited for the lock
    assert s.batcher.stats["dropped"] >= 29 and sub.qsize() == 50  # subscribers got every event
    other.execute("COMMIT")
    other.close()
    assert s.flush(5)
    j.emit("k", "after", agent="a")  # room again: the drop is reported
    assert s.flush(5)
    rows = s.events(limit=1000)
    report = [e for e in rows if e["kind"] == "journal.dropped"]
    assert len(report) == 1 and report[0]["level"] == "error"
    assert report[0]["data"]["dropped"] == s.batcher.stats["dropped"]
    assert len([e for e in rows if e["kind"] == "k"]) + s.batcher.stats["dropped"] == 51
    assert s.toolcall("a/0003-x") is not None
    j.close()
    s.close()


def test_a_held_lock_blocks_neither_writes_nor_reads_and_everything_lands_in_order(tmp_path):
    s = Store(tmp_path / "s.db", writes="batched")
    s.put_toolcall(toolcall(1, "running"))
    assert s.flush(5)
    other = sqlite3.connect(str(tmp_path / "s.db"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    seqs = []
    t0 = time.monotonic()
    for i in range(2, 30):
        with s.transaction():
            s.put_toolcall(toolcall(i, "running"))
            seqs.append(s.append_event(event(i)))
        s.put_toolcall(toolcall(1, "done" if i == 29 else "running"))
    time.sleep(0.1)  # the writer meets the lock
    assert s.toolcall("a/0001-x")["state"] == "running"  # a read under a held lock: the old state, at once
    assert time.monotonic() - t0 < 0.5
    other.execute("COMMIT")
    other.close()
    assert s.flush(5)
    assert s.toolcall("a/0001-x")["state"] == "done"
    assert [e["seq"] for e in s.events(limit=1000)] == seqs
    s.close()


def test_a_debug_event_is_not_formatted_for_the_log_unless_debug_is_on(tmp_path):
    s = Store(tmp_path / "s.db", writes="batched")
    j = Journal(s)
    fake = mock.Mock()
    fake.isEnabledFor.return_value = False
    with mock.patch.object(journal_mod, "log", fake):
        j.emit("k", "quiet", level="debug", agent="a")
        assert s.flush(5)
        assert not fake.log.called
        fake.isEnabledFor.return_value = True
        j.emit("k", "loud", level="debug", agent="a")
        assert s.flush(5)
        assert fake.log.call_args[0][0] == 10
    s.close()


def test_log_lines_come_from_the_writer_in_order_even_while_the_lock_is_held(tmp_path, caplog):
    """The loop does not write log lines (a file or journald pipe write and flush each);
    the writer does, as it takes the events, before (and whether or not) the commit succeeds."""
    caplog.set_level("INFO", logger="agentd")
    s = Store(tmp_path / "s.db", writes="batched")
    j = Journal(s)
    other = sqlite3.connect(str(tmp_path / "s.db"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    for i in range(5):
        j.emit("k", f"line{i}", agent="a")
    deadline = time.monotonic() + 5
    while sum("line" in r.getMessage() for r in caplog.records) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    mine = [r for r in caplog.records if "line" in r.getMessage()]
    assert [r.getMessage() for r in mine] == [f"[a] line{i}" for i in range(5)]  # once each, in order
    assert {r.threadName for r in mine} == {"agentd-store-writer"}
    assert s.pending_writes == 5  # not committed yet: the lock is still held
    other.execute("COMMIT")
    other.close()
    assert s.flush(5)
    assert len([r for r in caplog.records if "line" in r.getMessage()]) == 5  # retries log nothing twice
    s.close()
