"""Tracepoint layouts of the running kernel, read from tracefs format files, rendered as C.

The tracker's tracepoints change shape between kernels (5.15 ... 6.18): `sched_process_fork`
names its comms `char child_comm[16]` before 6.x and `__data_loc char[] child_comm` after;
`sched_process_exit` gained `group_dead` around 6.16; `mark_victim` gained `comm` in 6.8.
So the program does not use BCC's TRACEPOINT_PROBE (whose generated struct the C text must
then fit): `render_layouts` turns the parsed format files into one packed struct per
tracepoint plus a string-read macro per char field and a HAVE_ macro per optional field.
Parsing and rendering are pure; only `read_format` touches the file system.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TRACEFS_DIRS = ("/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events")

_FIELD = re.compile(r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>[01]);")


class FormatError(ValueError):
    pass


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str  # as the format file spells it, e.g. "pid_t", "char", "__data_loc char[]"
    offset: int
    size: int
    signed: bool
    data_loc: bool = False  # __data_loc: a u32 (len << 16 | offset) pointing into the record
    array_len: int | None = None  # char comm[16] -> 16

    @property
    def is_string(self) -> bool:
        return "char" in self.ctype and (self.data_loc or self.array_len is not None)


@dataclass(frozen=True)
class Layout:
    category: str
    event: str
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def size(self) -> int:
        return max((f.offset + f.size for f in self.fields), default=0)


def parse_format(text: str, category: str = "", event: str = "") -> Layout:
    """A tracefs `format` file -> Layout. Raises FormatError on anything unexpected."""
    fields: list[Field] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith("name:") and not event:
            event = line.split(":", 1)[1].strip()
        if "field:" not in line:
            continue
        m = _FIELD.match(line)
        if m is None:
            raise FormatError(f"format line {lineno}: cannot read field declaration {line.strip()!r}")
        decl = m.group("decl").strip()
        data_loc = decl.startswith("__data_loc ") or decl.startswith("__rel_loc ")
        if decl.startswith("__rel_loc "):
            raise FormatError(f"format line {lineno}: __rel_loc fields are not supported ({decl!r})")
        array_len = None
        am = re.match(r"^(?P<type>.+?)\s*(?P<name>[A-Za-z_]\w*)\s*\[(?P<n>\d*)\]$", decl)
        if am is not None and not data_loc:
            ctype, name = am.group("type"), am.group("name")
            array_len = int(am.group("n")) if am.group("n") else 0
        else:
            nm = re.match(r"^(?P<type>.+?)\s*(?P<name>[A-Za-z_]\w*)$", decl)
            if nm is None:
                raise FormatError(f"format line {lineno}: no field name in {decl!r}")
            ctype, name = nm.group("type"), nm.group("name")
        fields.append(Field(name, ctype.strip(), int(m.group("offset")), int(m.group("size")), m.group("signed") == "1",
                            data_loc, array_len))
    if not fields:
        raise FormatError(f"{category}/{event}: no fields in the format file")
    return Layout(category, event, tuple(sorted(fields, key=lambda f: f.offset)))


def read_format(category: str, event: str, dirs: tuple[str, ...] = TRACEFS_DIRS) -> Layout | None:
    """The running kernel's layout of category:event, or None if no tracefs has it."""
    for d in dirs:
        try:
            with open(f"{d}/{category}/{event}/format") as f:
                return parse_format(f.read(), category, event)
        except FileNotFoundError:
            continue
        except PermissionError:
            continue
    return None


_SCALAR = {(1, False): "u8", (1, True): "s8", (2, False): "u16", (2, True): "s16",
           (4, False): "u32", (4, True): "s32", (8, False): "u64", (8, True): "s64"}


def _c_member(f: Field) -> str:
    if f.data_loc:
        if f.size != 4:
            raise FormatError(f"__data_loc field {f.name} has size {f.size}, expected 4")
        return f"u32 data_loc_{f.name}"  # BCC's TP_DATA_LOC_READ_STR naming
    if f.array_len is not None:
        n = f.array_len or f.size
        elem = f.size // n if n else 1
        base = "char" if "char" in f.ctype else _SCALAR.get((elem, f.signed), "u8")
        return f"{base} {f.name}[{n}]"
    scalar = _SCALAR.get((f.size, f.signed))
    if scalar is None:
        return f"u8 {f.name}[{f.size}]"
    return f"{scalar} {f.name}"


def struct_name(layout: Layout) -> str:
    return f"agentd_args_{layout.event}"


def render_struct(layout: Layout) -> str:
    """A C struct with every field at its format-file offset: gaps are explicit padding, the
    rest is the kernel's own natural alignment (not packed: clang would then read each
    field byte by byte, and older verifiers lose the bounds of a __data_loc offset put
    together that way). The static asserts make any disagreement a compile error."""
    lines = [f"struct {struct_name(layout)} {{"]
    at = 0
    for i, f in enumerate(layout.fields):
        if f.offset < at:
            raise FormatError(f"{layout.category}/{layout.event}: field {f.name} overlaps the previous one")
        if f.offset > at:
            lines.append(f"    u8 __pad{i}[{f.offset - at}];")
        lines.append(f"    {_c_member(f)};")
        at = f.offset + f.size
    lines.append("};")
    for f in layout.fields:
        member = f"data_loc_{f.name}" if f.data_loc else f.name
        lines.append(f"_Static_assert(__builtin_offsetof(struct {struct_name(layout)}, {member}) == {f.offset}, "
                     f"\"{layout.event}.{f.name} offset\");")
    return "\n".join(lines) + "\n"


def render_string_reader(layout: Layout, f: Field) -> str:
    """AGENTD_STR_<event>_<field>(dst, len): copy the string field, whichever way it is stored."""
    macro = f"AGENTD_STR_{layout.event}_{f.name}(dst, len)"
    if f.data_loc:
        return (f"#define {macro} bpf_probe_read_kernel_str((void *)(dst), (len), "
                f"(char *)args + (u16)(args->data_loc_{f.name} & 0xFFFF))\n")
    return f"#define {macro} bpf_probe_read_kernel_str((void *)(dst), (len), args->{f.name})\n"


def render_layouts(layouts: list[Layout]) -> str:
    """Structs, string readers and AGENTD_HAS_<event>_<field> for each field present."""
    parts = []
    for layout in layouts:
        parts.append(render_struct(layout))
        for f in layout.fields:
            if f.name.startswith("common_"):
                continue
            parts.append(f"#define AGENTD_HAS_{layout.event}_{f.name} 1\n")
            if f.is_string:
                parts.append(render_string_reader(layout, f))
    return "".join(parts)
