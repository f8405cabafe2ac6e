"""The house drawn from the imports: every policy kind is a room of the same shape.

A room is a package (agentd/<kind>/) with `kind.py` (KIND), `policy.py` (SPEC) and `model.py`
(the pure decisions). Rooms talk through the shared model (agentd.kinds.context) and never
import one another; a model reads no clock and touches no kernel. `python -m
agentd.kinds.house` prints the plan and the breaches; tests/unit/kinds holds the house to it.

Reads source files only (ast): nothing is imported, so it runs anywhere.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agentd.kinds.registry import KINDS

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # agentd/
ENGINE = "toolcalls"  # the tool-call engine: the room whose model every other room reads
SHAPE = ("kind.py", "policy.py", "model.py")
# What a pure model must not reach for: the kernel, processes, sockets, the clock.
IMPURE_IMPORTS = ("subprocess", "socket", "ctypes", "fcntl", "agentd.cgroups.fs", "agentd.cgroups.v2",
                  "agentd.cgroups.hybrid", "agentd.tracking", "agentd.gpu.nvml")
IMPURE_CALLS = ("open", "time.time", "time.monotonic", "os.read", "os.write", "os.kill")


@dataclass
class Room:
    name: str
    modules: list[str]
    imports: dict[str, set[str]]  # module file -> agentd modules it imports
    breaches: list[str] = field(default_factory=list)

    def shared(self) -> set[str]:
        """The agentd modules outside the room that it leans on (top two levels)."""
        out = set()
        for mods in self.imports.values():
            for m in mods:
                if not m.startswith(f"agentd.{self.name}"):
                    out.add(".".join(m.split(".")[:2]))
        return out


def room_names() -> list[str]:
    return [ENGINE] + [k.name for k in KINDS]


def _imports(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _calls(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                out.add(f.id)
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                out.add(f"{f.value.id}.{f.attr}")
    return out


def survey(root: Path = PACKAGE_ROOT) -> list[Room]:
    names = room_names()
    rooms = []
    for name in names:
        pkg = root / name
        files = sorted(p.name for p in pkg.glob("*.py"))
        room = Room(name, files, {})
        for missing in [f for f in SHAPE if f not in files]:
            room.breaches.append(f"{name}: no {missing}")
        for f in files:
            tree = ast.parse((pkg / f).read_text(), filename=str(pkg / f))
            mods = _imports(tree)
            room.imports[f] = {m for m in mods if m.startswith("agentd.")}
            for other in names:
                if other != name and any(m == f"agentd.{other}" or m.startswith(f"agentd.{other}.") for m in mods):
                    room.breaches.append(f"{name}/{f} imports the room {other}")
            if f == "model.py":
                for m in sorted(mods):
                    if m.startswith(IMPURE_IMPORTS):
                        room.breaches.append(f"{name}/model.py imports {m} (a model touches no kernel)")
                for c in sorted(_calls(tree) & set(IMPURE_CALLS)):
                    room.breaches.append(f"{name}/model.py calls {c}() (a model takes `now` and its inputs)")
        rooms.append(room)
    return rooms


def draw(rooms: list[Room]) -> str:
    lines = ["room        files  shape                 leans on"]
    for r in rooms:
        shape = " ".join(f if f in r.modules else f"({f}?)" for f in SHAPE)
        lines.append(f"{r.name:<11} {len(r.modules):>5}  {shape:<21} {', '.join(sorted(r.shared()))}")
    breaches = [b for r in rooms for b in r.breaches]
    lines.append("breaches: " + ("none" if not breaches else ""))
    lines += [f"  {b}" for b in breaches]
    return "\n".join(lines)


def main() -> int:
    rooms = survey()
    print(draw(rooms))
    return 1 if any(r.breaches for r in rooms) else 0


if __name__ == "__main__":
    sys.exit(main())
