"""The daemon's pid namespace: detected from /proc/self/ns/pid (the init namespace has a fixed
inode), and passed into the tracker program so that it reads pids in that namespace."""

from __future__ import annotations

import os

from agentd.tracking import bpf_source as src
from agentd.tracking import pidns

from test_tp_format import facts_of


def test_the_init_namespace_is_known_by_its_fixed_inode():
    assert not pidns.PidNamespace(dev=4, ino=pidns.PROC_PID_INIT_INO).is_child
    assert pidns.PidNamespace(dev=4, ino=4026532178).is_child


def test_current_reads_this_process_namespace():
    ns = pidns.current()
    st = os.stat("/proc/self/ns/pid")
    assert (ns.dev, ns.ino) == (st.st_dev, st.st_ino)


def _defines(text: str) -> dict[str, str]:
    return dict(ln.split()[1:3] for ln in text.splitlines() if ln.startswith("#define AGENTD_PIDNS"))


def test_the_init_namespace_builds_the_plain_program():
    prog = src.render_program(src.TrackerOptions(), src.load_template(), facts_of("6.18"))
    assert prog.pid_ns is None
    assert _defines(prog.text) == {"AGENTD_PIDNS": "0", "AGENTD_PIDNS_DEV": "0", "AGENTD_PIDNS_INO": "0"}


def test_a_child_namespace_is_passed_into_the_program_for_every_kernel():
    ns = pidns.PidNamespace(dev=4, ino=4026532178)
    for kernel in ("5.15", "6.1", "6.18"):
        f = facts_of(kernel)
        prog = src.render_program(src.TrackerOptions(), src.load_template(), src.KernelFacts(f.layouts, f.offsets, ns))
        assert prog.pid_ns == ns and not prog.pidns_forks  # no BTF offsets for the fork path
        assert _defines(prog.text) == {"AGENTD_PIDNS": "1", "AGENTD_PIDNS_DEV": "4", "AGENTD_PIDNS_INO": "4026532178"}
        assert "#define AGENTD_OFF_CHILDREN -1\n" in prog.text


def test_forks_in_a_child_namespace_need_every_btf_offset():
    ns = pidns.PidNamespace(dev=4, ino=4026532178)
    f = facts_of("6.18")
    offs = {**f.offsets, "children": 1296, "sibling": 1312, "task_pid": 1264, "thread_pid": 1368, "pid_level": 4,
            "pid_numbers": 144, "upid_nr": 0, "upid_ns": 8, "upid_size": 16}
    prog = src.render_program(src.TrackerOptions(), src.load_template(), src.KernelFacts(f.layouts, offs, ns))
    assert prog.pidns_forks and "#define AGENTD_OFF_PID_NUMBERS 144\n" in prog.text
    del offs["upid_size"]
    prog = src.render_program(src.TrackerOptions(), src.load_template(), src.KernelFacts(f.layouts, offs, ns))
    assert not prog.pidns_forks and "#define AGENTD_OFF_PID_NUMBERS -1\n" in prog.text
    # The init namespace never takes the fork path, offsets or not.
    prog = src.render_program(src.TrackerOptions(), src.load_template(), src.KernelFacts(f.layouts, offs))
    assert not prog.pidns_forks

def test_the_degraded_line_is_one_line_that_names_the_namespace_and_what_is_lost():
    ns = pidns.PidNamespace(dev=4, ino=4026532178)
    for forks in (True, False):
        line = pidns.degraded_line(ns, forks)
        assert line.startswith("tracker: in a child pid namespace") and "\n" not in line
        assert "pid:[4026532178]" in line and "neither seen nor gated" in line
        assert ("forks" in line) is not forks
