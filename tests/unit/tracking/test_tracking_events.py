"""Raw event conversion, BPF text rendering, the cn_proc wire format and open_backend."""

import ctypes
import struct

import pytest

from agentd.events import ProcEventKind as K
from agentd.tracking import bpf_source as src
from agentd.tracking.backend import BackendUnavailable, TrackerBackend
from agentd.tracking.bpf_backend import _first_error_line, event_from_record
from agentd.tracking.cnproc_backend import (
    CN_MSG, NLMSGHDR, PROC_EV_HEAD, SeqTracker, control_message, parse_datagram,
)
from agentd.tracking.select import open_backend


def raw(kind, pid, path=b"", **kw):
    r = src.RawEvent()
    r.h.kind, r.h.pid = kind, pid
    r.path = path
    for k, v in kw.items():
        setattr(r.h, k, v)
    return r


def decode(r, full=True):
    """Through the ring-buffer record decoder, as a full record or as a bare head."""
    buf = ctypes.create_string_buffer(bytes(r) if full else bytes(r)[: ctypes.sizeof(src.RawHead)])
    return event_from_record(buf, len(buf.raw))


def test_event_from_raw_exec_gated():
    ev = decode(raw(2, 42, tgid=42, ppid=41, flags=src.F_GATED, comm=b"sh", path=b"/bin/sh", cgroup_id=9))
    assert (ev.kind, ev.pid, ev.old_pid, ev.ppid, ev.gated, ev.filename, ev.cgroup_id, ev.comm) == (
        K.EXEC, 42, 41, 0, True, "/bin/sh", 9, "sh")


def test_event_from_raw_exit_code_only_when_known():
    assert decode(raw(3, 5, exit_code=256), full=False).exit_code_known is False
    ev = decode(raw(3, 5, exit_code=256, flags=src.F_EXIT_CODE), full=False)
    assert (ev.exit_code, ev.exit_code_known) == (256, True)


def test_event_from_raw_attach_and_bad_comm():
    ev = decode(raw(5, 7, cgroup_id=33, flags=src.F_SELF_MOVE, path=b"/a/b", comm=b"x\xffy"))
    assert (ev.kind, ev.cgroup_id, ev.cgroup_path, ev.self_move, ev.comm) == (K.CGROUP_ATTACH, 33, "/a/b", True, "x\ufffdy")


@pytest.mark.parametrize("kind,pid", [(0, 5), (9, 5), (1, 0)])
def test_event_from_raw_rejects(kind, pid):
    assert decode(raw(kind, pid)) is None


def test_short_record_is_rejected():
    buf = ctypes.create_string_buffer(10)
    assert event_from_record(buf, 10) is None


def test_render_defines_checked_values():
    text = src.render_tracker_source(src.TrackerOptions(ringbuf_pages=64, gate=False), "BODY")
    assert "#define AGENTD_RINGBUF_PAGES 64\n" in text
    assert "#define AGENTD_GATE 0\n" in text
    assert "#define AGENTD_WAKE_EVERY 32\n" in text
    assert f"#define AGENTD_EVENT_SIZE {ctypes.sizeof(src.RawEvent)}\n" in text
    assert f"#define AGENTD_HEAD_SIZE {ctypes.sizeof(src.RawHead)}\n" in text
    assert text.endswith("BODY")


@pytest.mark.parametrize("opts", [
    src.TrackerOptions(ringbuf_pages=3), src.TrackerOptions(ringbuf_pages=0),
    src.TrackerOptions(ringbuf_pages="8; evil"), src.TrackerOptions(gate=1),
    src.TrackerOptions(gate_ringbuf_pages=48), src.TrackerOptions(wake_every=0), src.TrackerOptions(wake_every=True), src.TrackerOptions(wake_every="32"),
])
def test_render_refuses_unchecked_values(opts):
    with pytest.raises(ValueError):
        src.render_tracker_source(opts, "")


def _c_fields(text, struct):
    body = text[text.index(f"struct {struct} {{"):text.index("};", text.index(f"struct {struct} {{"))]
    code = [ln.split("//")[0] for ln in body.splitlines()[1:]]
    return [ln.split(";")[0].split()[-1].split("[")[0] for ln in code if ";" in ln]


def test_template_structs_match_ctypes_fields():
    """The C structs and RawHead/RawEvent list the same fields in the same order."""
    text = src.load_template()
    assert _c_fields(text, "event_head") == [f[0] for f in src.RawHead._fields_]
    assert _c_fields(text, "event") == [f[0] for f in src.RawEvent._fields_]


def test_first_error_line():
    out = "/virtual/main.c:259:34: warning: x\n/virtual/main.c:260:1: error: too many arguments\n1 error generated."
    assert _first_error_line(out) == "/virtual/main.c:260:1: error: too many arguments"


def proc_msg(what, cpu, seq, payload):
    cn = CN_MSG.pack(1, 1, seq, 0, PROC_EV_HEAD.size + len(payload), 0) + PROC_EV_HEAD.pack(what, cpu, 123) + payload
    return NLMSGHDR.pack(NLMSGHDR.size + len(cn), 3, 0, 0, 0) + cn


def test_cnproc_parse_fork_exec_exit_and_thread_filter():
    data = (
        proc_msg(1, 0, 5, struct.pack("=IIII", 10, 10, 11, 11))
        + proc_msg(1, 0, 6, struct.pack("=IIII", 10, 10, 12, 10))  # a thread
        + proc_msg(2, 0, 7, struct.pack("=II", 11, 11))
        + proc_msg(0x80000000, 1, 3, struct.pack("=IIIIII", 11, 11, 9, 17, 10, 10))
        + proc_msg(0x80000000, 1, 4, struct.pack("=IIIIII", 12, 10, 0, 17, 10, 10))  # thread exit
    )
    seqs = SeqTracker()
    evs = parse_datagram(data, seqs, read_comm=lambda pid: f"c{pid}")
    assert [(e.kind, e.pid, e.ppid) for e in evs] == [(K.FORK, 11, 10), (K.EXEC, 11, 0), (K.EXIT, 11, 0)]
    assert evs[0].comm == "c11" and evs[2].exit_code == 9 and evs[2].exit_code_known
    assert all(e.cgroup_id == 0 for e in evs)
    assert seqs.gaps == 0


def test_cnproc_sequence_gaps_count_as_lost():
    seqs = SeqTracker()
    parse_datagram(proc_msg(2, 0, 1, struct.pack("=II", 5, 5)) + proc_msg(2, 0, 5, struct.pack("=II", 6, 6)), seqs)
    assert seqs.gaps == 3


def test_cnproc_control_message_layout():
    msg = control_message(True)
    length, mtype = struct.unpack_from("=IH", msg)
    assert length == len(msg) == 16 + 20 + 4 and mtype == 3
    assert struct.unpack_from("=IIIIHH", msg, 16) == (1, 1, 0, 0, 4, 0)
    assert struct.unpack_from("=I", msg, 36) == (1,)


class Fake(TrackerBackend):
    def __init__(self, name, fail=None, gate=False):
        self.name, self.can_gate, self.fail = name, gate, fail

    def load(self):
        if self.fail:
            raise BackendUnavailable(self.fail)

    def start(self, sink): ...
    def stop(self): ...
    def lost_events(self): return 0


def test_open_backend_prefers_bpf():
    b, why = open_backend("auto", bpf_factory=lambda: Fake("bpf", gate=True), cnproc_factory=lambda: Fake("cn_proc"))
    assert b.name == "bpf" and why == "tracker: bpf (ring buffer, exec gate on)"


def test_open_backend_falls_back_with_the_reason():
    b, why = open_backend("auto", bpf_factory=lambda: Fake("bpf", "BCC could not compile the tracker: x.c:1: error: y"),
                          cnproc_factory=lambda: Fake("cn_proc"))
    assert b.name == "cn_proc"
    assert why.startswith("tracker: cn_proc (BCC could not compile the tracker: x.c:1: error: y")


def test_open_backend_insisting_on_bpf_raises():
    with pytest.raises(BackendUnavailable):
        open_backend("bpf", bpf_factory=lambda: Fake("bpf", "nope"), cnproc_factory=lambda: Fake("cn_proc"))
    with pytest.raises(ValueError):
        open_backend("ebpf")


def test_open_backend_both_failing_names_both():
    with pytest.raises(BackendUnavailable, match="a-reason.*b-reason"):
        open_backend("auto", bpf_factory=lambda: Fake("bpf", "a-reason"), cnproc_factory=lambda: Fake("cn_proc", "b-reason"))
