"""EndWork: jobs off the caller's thread in submission order, their `then` only back on the
loop (through notify), drain settles everything, inline before start()."""

from __future__ import annotations

import queue
import threading

from agentd.toolcalls.endwork import EndWork


def test_before_start_a_job_and_its_then_run_at_once_on_the_caller():
    work, seen = EndWork(), []
    work.submit(lambda: threading.current_thread(), seen.append)
    assert seen == [threading.current_thread()] and not work.threaded


def test_jobs_run_in_order_on_the_worker_and_then_only_on_the_loop():
    loop: queue.Queue = queue.Queue()
    work = EndWork()
    work.start(loop.put)
    ran, settled = [], []
    gate = threading.Event()
    work.submit(lambda: (gate.wait(5), ran.append((0, threading.current_thread())))[1] or 0, settled.append)
    for n in range(1, 5):
        work.submit(lambda n=n: (ran.append((n, threading.current_thread())), n)[1], settled.append)
    assert settled == []  # nothing settles on the submitting thread
    gate.set()
    while len(settled) < 5:
        loop.get(timeout=5)()  # the loop runs what the worker handed back
    assert [n for n, _ in ran] == [0, 1, 2, 3, 4] and settled == [0, 1, 2, 3, 4]
    assert all(t is not threading.current_thread() for _, t in ran)
    work.close()


def test_drain_settles_every_submitted_job_now_and_a_failing_job_does_not_stop_the_rest():
    work, settled = EndWork(), []
    work.start(lambda fn: None)  # a loop that never gets round to it: drain must settle them
    work.submit(lambda: 1 / 0, settled.append)
    for n in range(3):
        work.submit(lambda n=n: n, settled.append)
    work.drain()
    assert isinstance(settled[0], ZeroDivisionError) and settled[1:] == [0, 1, 2]
    assert work.pending() == 0
    work.close()
    work.submit(lambda: "inline", settled.append)  # closed: inline again
    assert settled[-1] == "inline"


def test_one_loop_callback_settles_for_a_bounded_time_and_schedules_the_rest():
    import time

    loop: queue.Queue = queue.Queue()
    work, settled = EndWork(), []
    work.start(loop.put)
    for n in range(6):
        work.submit(lambda n=n: n, lambda v: (time.sleep(0.015), settled.append(v)))
    work._queue.join()  # every job done: their `then`s wait for the loop
    callbacks = 0
    while len(settled) < 6:
        before = len(settled)
        loop.get(timeout=5)()
        callbacks += 1
        assert len(settled) - before <= 2  # 20 ms budget, 15 ms each: never all six at once
    assert settled == list(range(6)) and callbacks >= 3
    work.close()
