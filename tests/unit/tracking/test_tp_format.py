"""The tracker's C fits each supported kernel's tracepoint layouts: parsing tracefs format
files (committed copies for 5.15, 6.1, 6.8, 6.12, 6.18 under tracefs/) and rendering is
pure, so every kernel's program is checked here; tests/kernel compiles and verifies each."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.tracking import bpf_source as src
from agentd.tracking.tp_format import FormatError, Layout, parse_format, read_format, render_layouts

TRACEFS = Path(__file__).parent / "tracefs"
KERNELS = ("5.15", "6.1", "6.8", "6.12", "6.18")
BTF_OFFSETS = {"exit_code": 1164, "signal": 1848, "live": 4}  # this host's, for the render only


def facts_of(kernel: str, offsets=None) -> src.KernelFacts:
    layouts = {}
    for tp in src.ALL_TRACEPOINTS:
        layout = read_format(tp.category, tp.event, dirs=(str(TRACEFS / kernel),))
        if layout is not None:
            layouts[tp.event] = layout
    return src.KernelFacts(layouts, dict(BTF_OFFSETS if offsets is None else offsets))


def program(kernel: str, offsets=None, **opts) -> src.Program:
    return src.render_program(src.TrackerOptions(**opts), src.load_template(), facts_of(kernel, offsets))


def test_parse_inline_and_data_loc_strings():
    old = read_format("sched", "sched_process_fork", dirs=(str(TRACEFS / "6.1"),))
    new = read_format("sched", "sched_process_fork", dirs=(str(TRACEFS / "6.18"),))
    f_old, f_new = old.field("child_comm"), new.field("child_comm")
    assert (f_old.data_loc, f_old.array_len, f_old.offset, f_old.size) == (False, 16, 28, 16)
    assert (f_new.data_loc, f_new.array_len, f_new.offset, f_new.size) == (True, None, 16, 4)
    assert f_old.is_string and f_new.is_string
    assert new.field("child_pid").signed and new.field("child_pid").size == 4


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_supported_kernel_gets_a_program(kernel):
    p = program(kernel)
    assert [tp.event for tp in p.tracepoints][:5] == [tp.event for tp in src.CORE_TRACEPOINTS]
    assert "oom" in {tp.category for tp in p.tracepoints}
    fork = facts_of(kernel).layouts["sched_process_fork"]
    reader = next(ln for ln in p.text.splitlines() if ln.startswith("#define AGENTD_STR_sched_process_fork_child_comm"))
    if fork.field("child_comm").data_loc:
        assert "(u16)(args->data_loc_child_comm & 0xFFFF)" in reader
    else:
        assert "args->child_comm)" in reader
    # Every field the program reads is at its format-file offset (asserted when compiled).
    assert f"__builtin_offsetof(struct agentd_args_sched_process_fork, {'data_loc_' if fork.field('child_comm').data_loc else ''}child_comm) == {fork.field('child_comm').offset}" in p.text


def test_group_dead_is_used_only_where_the_kernel_has_it():
    assert program("6.18").group_exit == "tracepoint"
    assert "#define AGENTD_GROUP_DEAD_FIELD 1\n" in program("6.18").text
    for kernel in ("5.15", "6.1", "6.8", "6.12"):
        p = program(kernel)
        assert p.group_exit == "signal_live" and "#define AGENTD_GROUP_DEAD_FIELD 0\n" in p.text
        assert "#define AGENTD_TASK_SIGNAL_OFF 1848\n" in p.text and "#define AGENTD_SIGNAL_LIVE_OFF 4\n" in p.text
        assert program(kernel, offsets={}).group_exit == "leader"


def test_exit_codes_from_btf_or_from_signals():
    with_btf = program("6.1")
    assert with_btf.exit_codes == "task" and "#define AGENTD_TASK_EXIT_CODE_OFF 1164\n" in with_btf.text
    assert "signal" not in {tp.category for tp in with_btf.tracepoints}
    bare = program("6.1", offsets={})
    assert bare.exit_codes == "signals" and "#define AGENTD_TASK_EXIT_CODE_OFF -1\n" in bare.text
    assert {"signal_generate", "signal_deliver"} <= {tp.event for tp in bare.tracepoints}
    opted = program("6.1", offsets={}, exit_code=True)
    assert opted.exit_codes == "signals+exit_group" and "sys_enter_exit_group" in {tp.event for tp in opted.tracepoints}


def test_mark_victim_comm_only_where_present():
    assert "#define AGENTD_HAS_mark_victim_comm 1" not in program("6.1").text
    assert "#define AGENTD_HAS_mark_victim_comm 1" in program("6.12").text


def test_missing_tracepoint_or_field_is_named():
    facts = facts_of("6.1")
    no_exec = src.KernelFacts({k: v for k, v in facts.layouts.items() if k != "sched_process_exec"}, facts.offsets)
    with pytest.raises(src.KernelMismatch, match="no tracepoint sched:sched_process_exec"):
        src.render_program(src.TrackerOptions(), "", no_exec)
    fork = facts.layouts["sched_process_fork"]
    bad = Layout(fork.category, fork.event, tuple(f for f in fork.fields if f.name != "child_pid"))
    with pytest.raises(src.KernelMismatch, match="sched_process_fork has no field child_pid"):
        src.render_program(src.TrackerOptions(), "", src.KernelFacts({**facts.layouts, "sched_process_fork": bad}, {}))
    # Without mark_victim the tracker still loads (no OOM-victim events).
    no_oom = src.KernelFacts({k: v for k, v in facts.layouts.items() if k != "mark_victim"}, facts.offsets)
    assert "mark_victim" not in {tp.event for tp in src.render_program(src.TrackerOptions(), "", no_oom).tracepoints}


def test_struct_pads_to_each_offset():
    text = render_layouts([read_format("syscalls", "sys_enter_exit_group", dirs=(str(TRACEFS / "6.18"),))])
    assert "s32 __syscall_nr;\n    u8 __pad5[4];\n    u64 error_code;\n};" in text
    assert "packed" not in text  # byte-wise loads would lose the verifier's bounds on 6.1


@pytest.mark.parametrize("text", [
    "name: x\nformat:\n\tfield:int a;\toffset:zz;\tsize:4;\tsigned:1;\n",
    "name: x\nformat:\n",
    "name: x\nformat:\n\tfield:__rel_loc char[] a;\toffset:8;\tsize:4;\tsigned:0;\n",
])
def test_bad_format_files_are_refused(text):
    with pytest.raises(FormatError):
        parse_format(text)


def test_overlapping_fields_are_refused():
    layout = parse_format("name: x\nformat:\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\n"
                          "\tfield:int b;\toffset:10;\tsize:4;\tsigned:1;\n")
    with pytest.raises(FormatError, match="overlaps"):
        render_layouts([layout])
