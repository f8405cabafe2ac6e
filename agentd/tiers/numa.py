"""The NUMA memory-policy syscalls through ctypes, with the architecture's numbers (no
libnuma needed): set_mempolicy, get_mempolicy, migrate_pages, move_pages. Thin: each call
is one syscall; errors become NumaError with a message that says what went wrong.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

# <linux/mempolicy.h>
MODES = {"default": 0, "preferred": 1, "bind": 2, "interleave": 3, "local": 4, "preferred_many": 5,
         "weighted_interleave": 6}
MODE_NAMES = {v: k for k, v in MODES.items()}
MPOL_F_NODE = 1
MPOL_F_ADDR = 2
MPOL_F_MEMS_ALLOWED = 4
MPOL_F_STATIC_NODES = 1 << 15
MPOL_F_RELATIVE_NODES = 1 << 14
MPOL_MODE_FLAGS = MPOL_F_STATIC_NODES | MPOL_F_RELATIVE_NODES | (1 << 13)  # + MPOL_F_NUMA_BALANCING
MPOL_MF_MOVE = 1 << 1
MPOL_MF_MOVE_ALL = 1 << 2

_SYSCALLS = {
    "x86_64": {"set_mempolicy": 238, "get_mempolicy": 239, "migrate_pages": 256, "move_pages": 279},
    "aarch64": {"set_mempolicy": 237, "get_mempolicy": 236, "migrate_pages": 238, "move_pages": 239},
}
MASK_BITS = 1024  # the kernel's MAX_NUMNODES is at most 1024
_ULONG_BITS = 8 * ctypes.sizeof(ctypes.c_ulong)
_Mask = ctypes.c_ulong * (MASK_BITS // _ULONG_BITS)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_MESSAGES = {
    errno.EPERM: "not permitted (moving another user's pages needs CAP_SYS_NICE; MPOL_MF_MOVE_ALL needs root)",
    errno.ESRCH: "the process has exited",
    errno.EINVAL: "the kernel refused the mode or node mask (a node that does not exist or is offline, "
                  "or a mode this kernel lacks: preferred_many needs 5.15, weighted_interleave 6.9)",
    errno.ENODEV: "a requested node has no memory online",
    errno.EFAULT: "bad address",
    errno.ENOMEM: "the target node is out of memory",
    errno.ENOSYS: "this kernel was built without NUMA support",
    errno.E2BIG: "too many pages in one call",
    errno.EACCES: "page is shared by several processes (needs MPOL_MF_MOVE_ALL)",
    errno.EBUSY: "page is busy (under I/O or pinned)",
    errno.ENOENT: "page is not present",
    errno.EXDEV: "the pages of the node could not be migrated",
}


class NumaError(OSError):
    def __init__(self, call: str, err: int, detail: str = ""):
        self.call = call
        msg = _MESSAGES.get(err, os.strerror(err))
        super().__init__(err, f"{call}{(' ' + detail) if detail else ''}: {msg}")


def describe_errno(err: int) -> str:
    return _MESSAGES.get(abs(err), os.strerror(abs(err)))


def _nr(name: str) -> int:
    table = _SYSCALLS.get(platform.machine())
    if table is None:
        raise NumaError(name, errno.ENOSYS, f"(no syscall numbers for {platform.machine()})")
    return table[name]


def _mask(nodes) -> _Mask:
    m = _Mask()
    for n in nodes:
        if not 0 <= n < MASK_BITS:
            raise NumaError("nodemask", errno.EINVAL, f"(node {n})")
        m[n // _ULONG_BITS] |= 1 << (n % _ULONG_BITS)
    return m


def _nodes(mask: _Mask) -> list[int]:
    return [i * _ULONG_BITS + b for i, word in enumerate(mask) for b in range(_ULONG_BITS) if word >> b & 1]


def _call(name: str, *args, detail: str = "") -> int:
    ctypes.set_errno(0)
    r = _libc.syscall(ctypes.c_long(_nr(name)), *args)
    if r < 0:
        raise NumaError(name, ctypes.get_errno(), detail)
    return r


def set_mempolicy(mode: str, nodes=(), flags: int = 0) -> None:
    """The calling thread's policy for new allocations (launch: set in the child, then exec)."""
    if mode not in MODES:
        raise NumaError("set_mempolicy", errno.EINVAL, f"(unknown mode {mode!r})")
    nodes = list(nodes)
    if mode in ("default", "local"):
        _call("set_mempolicy", ctypes.c_int(MODES[mode]), None, ctypes.c_ulong(0), detail=mode)
        return
    m = _mask(nodes)
    _call("set_mempolicy", ctypes.c_int(MODES[mode] | flags), ctypes.byref(m), ctypes.c_ulong(MASK_BITS + 1),
          detail=f"{mode} {nodes}")


def get_mempolicy(addr: int | None = None) -> tuple[str, list[int]]:
    """(mode, nodes) of the calling thread, or of the VMA holding addr."""
    mode = ctypes.c_int(0)
    m = _Mask()
    flags = MPOL_F_ADDR if addr is not None else 0
    _call("get_mempolicy", ctypes.byref(mode), ctypes.byref(m), ctypes.c_ulong(MASK_BITS + 1),
          ctypes.c_void_p(addr or 0), ctypes.c_ulong(flags))
    return MODE_NAMES.get(mode.value & ~MPOL_MODE_FLAGS, str(mode.value)), _nodes(m)


def node_of(addr: int) -> int:
    """The node holding the page at addr (faults it in if absent)."""
    node = ctypes.c_int(-1)
    _call("get_mempolicy", ctypes.byref(node), None, ctypes.c_ulong(0), ctypes.c_void_p(addr),
          ctypes.c_ulong(MPOL_F_NODE | MPOL_F_ADDR))
    return node.value


def mems_allowed() -> list[int]:
    mode = ctypes.c_int(0)
    m = _Mask()
    _call("get_mempolicy", ctypes.byref(mode), ctypes.byref(m), ctypes.c_ulong(MASK_BITS + 1), None,
          ctypes.c_ulong(MPOL_F_MEMS_ALLOWED))
    return _nodes(m)


def migrate_pages(pid: int, old_nodes, new_nodes) -> int:
    """Move all of pid's pages on old_nodes to new_nodes; returns the pages that stayed."""
    old, new = _mask(old_nodes), _mask(new_nodes)
    return _call("migrate_pages", ctypes.c_int(pid), ctypes.c_ulong(MASK_BITS + 1), ctypes.byref(old),
                 ctypes.byref(new), detail=f"pid {pid} {list(old_nodes)} -> {list(new_nodes)}")


def move_pages(pid: int, addrs: list[int], nodes: list[int] | int | None, move_all: bool = False) -> list[int]:
    """Move (nodes given) or query (nodes None) the pages at addrs of pid; per page the node
    it is on now, or -errno (describe_errno)."""
    count = len(addrs)
    pages = (ctypes.c_void_p * count)(*addrs)
    status = (ctypes.c_int * count)()
    if nodes is None:
        node_arr = None
    else:
        targets = [nodes] * count if isinstance(nodes, int) else list(nodes)
        node_arr = (ctypes.c_int * count)(*targets)
    _call("move_pages", ctypes.c_int(pid), ctypes.c_ulong(count), pages, node_arr, status,
          ctypes.c_int(MPOL_MF_MOVE_ALL if move_all else MPOL_MF_MOVE), detail=f"pid {pid}")
    return list(status)


def place_for_exec(plan: dict, say) -> int | None:
    """Apply a launch plan (agentd.tiers.launch.plan_launch's document, from the daemon or
    the launcher) to the calling thread right before exec; say(line) tells the user what
    happened, in one line. Returns None to go on and exec (placed, or unplaced by the
    class's own fallback), or 2 when the class makes placement mandatory (`fallback:
    refuse`) and it cannot be applied: then nothing may run."""
    cls = f"class {plan.get('class')}" + (f" (policy {plan['policy']})" if plan.get("policy") else "")
    where = f"{plan['where']}: " if plan.get("where") else ""
    notes = "; ".join(str(n) for n in plan.get("notes") or ())
    failed = str(plan.get("error") or "")
    if not failed:
        try:
            set_mempolicy(str(plan.get("mode")), [int(n) for n in plan.get("nodes") or ()])
        except (OSError, ValueError, TypeError) as exc:
            failed = f"{exc}"
    if failed:
        then = "nothing run (the class says fallback: refuse)" if plan.get("mandatory") else "running it unplaced"
        say(f"{where}{cls}: {failed}; {then}")
        return 2 if plan.get("mandatory") else None
    nodes = ",".join(str(n) for n in plan.get("nodes") or ())
    weights = plan.get("weights") or {}
    ratio = ":".join(str(weights[k]) for k in sorted(weights, key=int)) if plan.get("mode") == "weighted_interleave" \
        else ""
    say(f"{cls}: {plan.get('mode')}" + (f" node {nodes}" if nodes else "") + (f" at {ratio}" if ratio else "")
        + (f" ({notes})" if notes else ""))
    return None
