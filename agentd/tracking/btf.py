"""Member offsets of kernel structs from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The tracker is compiled against headers that do not match the running kernel, so it cannot
name a struct field; BTF says where a field really is. Only what the exit program needs is
looked up (task_struct.exit_code, task_struct.signal, signal_struct.live; in a child pid
namespace the fields that lead from a task to its pid there). Pure parsing:
`member_offsets(blob, wanted)` takes the BTF bytes and returns byte offsets; the pseudo-member
SIZE gives the struct's own size.
"""

from __future__ import annotations

import struct

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
BTF_MAGIC = 0xEB9F

# kind -> bytes that follow the 12-byte common header (vlen-scaled where noted)
_KIND_STRUCT, _KIND_UNION = 4, 5
_FIXED_EXTRA = {1: 4, 2: 0, 3: 12, 7: 0, 8: 0, 9: 0, 10: 0, 11: 0, 12: 0, 14: 4, 16: 0, 17: 4, 18: 0}
_PER_MEMBER = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}


SIZE = "__size__"  # ask for a struct's size by this name among its members


class BtfError(ValueError):
    pass


def member_offsets(blob: bytes, wanted: dict[str, set[str]]) -> dict[str, dict[str, int]]:
    """{struct name: {member: byte offset}} for the wanted members of the wanted structs
    (first struct of each name; members missing from the BTF are left out)."""
    if len(blob) < 24:
        raise BtfError("BTF blob too short")
    magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
    if magic != BTF_MAGIC:
        raise BtfError(f"not BTF (magic {magic:#x})")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
    types = hdr_len + type_off
    strings = hdr_len + str_off
    end = types + type_len
    if end > len(blob) or strings + str_len > len(blob):
        raise BtfError("BTF sections run past the end of the blob")

    def name(off: int) -> str:
        start = strings + off
        return blob[start:blob.index(b"\0", start)].decode()

    wanted_bytes = {n.encode(): n for n in wanted}
    out: dict[str, dict[str, int]] = {}
    pos = types
    while pos < end and len(out) < len(wanted):
        name_off, info, size = struct.unpack_from("<III", blob, pos)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        pos += 12
        if kind in _PER_MEMBER:
            extra = vlen * _PER_MEMBER[kind]
        elif kind in _FIXED_EXTRA:
            extra = _FIXED_EXTRA[kind]
        else:
            raise BtfError(f"unknown BTF kind {kind}")
        if kind == _KIND_STRUCT and name_off:
            start = strings + name_off
            sname = wanted_bytes.get(blob[start:blob.index(b"\0", start)])
            if sname is not None and sname not in out:
                bitfields = bool(info >> 31)
                found = {SIZE: size} if SIZE in wanted[sname] else {}
                for i in range(vlen):
                    m_name, _m_type, m_off = struct.unpack_from("<III", blob, pos + 12 * i)
                    mname = name(m_name) if m_name else ""
                    if mname in wanted[sname]:
                        bits = m_off & 0xFFFFFF if bitfields else m_off
                        if bits % 8 == 0:
                            found[mname] = bits // 8
                out[sname] = found
        pos += extra
    return out


def read_member_offsets(wanted: dict[str, set[str]], path: str = VMLINUX_BTF) -> dict[str, dict[str, int]] | None:
    """member_offsets of the running kernel, or None when it has no BTF."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    try:
        return member_offsets(blob, wanted)
    except (BtfError, struct.error, ValueError):
        return None
