"""Launch a command under its class's memory policy: set_mempolicy here, then exec (the
policy is inherited across exec, so the program's first allocation already lands where
the policy says, without changing its code).

    agentctl run -- CMD ARGS...                      (the daemon's policy decides; --no-tiers skips)
    python -m agentd.tiers.launch --policy policy.yaml [--class NAME] -- CMD ARGS...

The class is --class, else the first class whose match (argv, comm = basename of CMD, exe,
uid) fits the command. A fallback the host forces is printed on stderr. A class this host
cannot place (a node that does not exist, a set_mempolicy the kernel refuses) runs CMD
unplaced and says so, unless the class says `fallback: refuse`: then placement is
mandatory and the exit status is 2 without running CMD. `plan_launch` is the one decision
both the daemon (`POST /v1/tiers/launch_plan`, asked by `agentctl run`) and this launcher
make; `numa.place_for_exec` the one place both apply it.
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


def plan_launch(cls, topo, policy: str = "", sys_root: str = "/sys") -> dict:
    """The mempolicy to set at launch for a class on this host, as a JSON document
    (numa.place_for_exec applies it): mode, nodes, weights, stated fallbacks (notes), an
    error when the class cannot be placed here, and whether placement is mandatory."""
    from agentd.tiers.model import plan_class

    plan = plan_class(cls, topo)
    mode, notes = plan.mode, list(plan.notes)
    if not plan.error and mode == "weighted_interleave" and not weights_match(plan.weights, sys_root):
        # the kernel's weights are global (sysfs); the daemon sets them when every class
        # in force agrees. Until then: plain interleave over the same nodes, said aloud.
        notes.append(f"the host's interleave weights are not {plan.weights}; interleaving 1:1 "
                     "(the daemon rebalances running pages to the ratio)")
        mode = "interleave"
    return {"class": cls.name, "policy": policy, "where": cls.where, "mode": mode, "nodes": list(plan.nodes),
            "weights": {str(n): w for n, w in sorted(plan.weights.items())}, "notes": notes, "error": plan.error,
            "mandatory": cls.placement.fallback == "refuse"}


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
        doc = plan_launch(cls, discover(args.sys_root), getattr(policy, "name", ""), args.sys_root)
        refused = numa.place_for_exec(doc, lambda line: print(f"agentd.tiers.launch: {line}", file=sys.stderr))
        if refused is not None:
            return refused
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"agentd.tiers.launch: cannot run {cmd[0]}: {exc.strerror}", file=sys.stderr)
        return 127


def weights_match(weights: dict[int, int], sys_root: str = "/sys") -> bool:
    base = os.path.join(sys_root, "kernel", "mm", "mempolicy", "weighted_interleave")
    try:
        return all(int(open(os.path.join(base, f"node{n}")).read().strip()) == w for n, w in weights.items())
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
