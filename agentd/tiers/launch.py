"""Launch a command under its class's memory policy: set_mempolicy here, then exec (the
policy is inherited across exec, so the program's first allocation already lands where
the policy says, without changing its code).

    python -m agentd.tiers.launch --policy policy.yaml [--class NAME] -- CMD ARGS...
    agentctl run -- python -m agentd.tiers.launch --policy policy.yaml -- CMD ARGS...

The class is --class, else the first class whose match (argv, comm = basename of CMD, exe,
uid) fits the command. A fallback the host forces is printed on stderr; a class this host
cannot place (a node that does not exist, a refused fallback) exits 2 without running CMD.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

EXIT_BAD_POLICY = 2


def choose(section, argv: list[str], class_name: str | None):
    """--class by name, else the first class whose match fits the command (any scope:
    the launcher is how a process enters whatever scope it will run in)."""
    from dataclasses import replace

    from agentd.tiers.model import ManagedProc, matches

    exe = shutil.which(argv[0]) or argv[0]
    proc = ManagedProc(pid=os.getpid(), start=0, scope="jobs", cgroup="", name=os.path.basename(argv[0]),
                       comm=os.path.basename(argv[0])[:15], exe=os.path.realpath(exe), argv=tuple(argv),
                       uid=os.getuid())
    for cls in section.classes:
        if class_name is not None:
            if cls.name == class_name:
                return cls
        elif any(matches(cls, replace(proc, scope=s)) for s in cls.scope):
            return cls
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agentd.tiers.launch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="policy file with a tiers: section")
    ap.add_argument("--class", dest="cls", help="the class to use (default: the first that matches CMD)")
    ap.add_argument("--sys-root", default="/sys", help=argparse.SUPPRESS)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("give the command after --")

    from agentd.policy.loader import PolicyInvalid, load_file
    from agentd.tiers import numa
    from agentd.tiers.model import plan_class
    from agentd.tiers.topology import discover

    try:
        policy = load_file(args.policy)
    except PolicyInvalid as exc:
        for p in exc.problems:
            print(f"agentd.tiers.launch: {p}", file=sys.stderr)
        return EXIT_BAD_POLICY
    section = policy.sections.get("tiers")
    cls = choose(section, cmd, args.cls) if section else None
    if cls is None:
        if args.cls:
            print(f"agentd.tiers.launch: {args.policy}: no class named {args.cls!r}", file=sys.stderr)
            return EXIT_BAD_POLICY
        print(f"agentd.tiers.launch: no class of {args.policy} matches {cmd[0]}; running it unplaced",
              file=sys.stderr)
    else:
        plan = plan_class(cls, discover(args.sys_root))
        for note in plan.notes:
            print(f"agentd.tiers.launch: {cls.where}: class {cls.name}: {note}", file=sys.stderr)
        if plan.error:
            print(f"agentd.tiers.launch: {cls.where}: class {cls.name}: {plan.error}", file=sys.stderr)
            return EXIT_BAD_POLICY
        mode = plan.mode
        if mode == "weighted_interleave" and not _weights_match(plan.weights, args.sys_root):
            # the kernel's weights are global (sysfs); the daemon sets them when every class
            # in force agrees. Until then: plain interleave over the same nodes, said aloud.
            print(f"agentd.tiers.launch: class {cls.name}: the host's interleave weights are not "
                  f"{plan.weights}; interleaving 1:1 (the daemon rebalances running pages to the ratio)",
                  file=sys.stderr)
            mode = "interleave"
        try:
            numa.set_mempolicy(mode, plan.nodes)
        except OSError as exc:
            print(f"agentd.tiers.launch: class {cls.name}: {exc}; nothing applied", file=sys.stderr)
            return EXIT_BAD_POLICY
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"agentd.tiers.launch: cannot run {cmd[0]}: {exc.strerror}", file=sys.stderr)
        return 127


def _weights_match(weights: dict[int, int], sys_root: str) -> bool:
    base = os.path.join(sys_root, "kernel", "mm", "mempolicy", "weighted_interleave")
    try:
        return all(int(open(os.path.join(base, f"node{n}")).read().strip()) == w for n, w in weights.items())
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
