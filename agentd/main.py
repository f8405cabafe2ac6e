"""`agentd`: run the daemon (`agentd run`) or the bundled demo (`agentd demo`)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import click

from agentd import __version__
from agentd.paths import DEFAULT_POLICY, DEFAULT_POLICY_DIR, DEFAULT_SOCKET, DEFAULT_STATE_DIR


def _need_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("agentd must run as root: it loads BPF programs and writes cgroups")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__)
def main() -> None:
    """agentd: one cgroup per AI agent and per tool call, enforced from YAML policies."""


@main.command()
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), default=DEFAULT_SOCKET, show_default=True)
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR, show_default=True)
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="where agents read a result file per tool call (default: results/ next to the socket)")
@click.option("--policy-dir", type=click.Path(path_type=Path), default=DEFAULT_POLICY_DIR, show_default=True)
@click.option("--default-policy", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=DEFAULT_POLICY, show_default=True)
@click.option("--cgroup-root", default=None, help="absolute cgroup path agentd owns (default: own cgroup + /agentd, or the service cgroup under systemd); "
              "outside agentd's own cgroup (systemd/agentd-tree.service), agentd stays where it is, moves what runs in "
              "the root into holder/, and refuses a root an unprivileged user can write")
@click.option("--cgroup-leaf", default="agentd", show_default=True, help="name of agentd's cgroup under the own cgroup, when --cgroup-root is not given")
@click.option("--tracker", type=click.Choice(["auto", "bpf", "cn_proc"]), default="auto", show_default=True)
@click.option("--admin-group", default=None, help="group whose members may change policy and act on any agent")
@click.option("--socket-group", default=None, help="group owning the API socket (mode 0660)")
@click.option("--metrics-listen", default=None, help="HOST:PORT for a Prometheus listener (off by default)")
@click.option("--host-memory-max", default=None, help="memory all agents together may use, e.g. 12G (off by default)")
@click.option("--simulate-gpus", type=click.IntRange(0, 16), default=0, help="SIMULATION: a fake NVML with N GPUs (demos and tests)")
@click.option("--no-move-self", is_flag=True, help="stay in the current cgroup instead of <root>/daemon")
@click.option("--tool-cgroups", type=click.Choice(["needed", "all"]), default="needed", show_default=True,
              help="hybrid: make a tool call's cgroup only in the v1 hierarchies its limits use (needed), or in all of them")
@click.option("--spare-cgroups", type=click.IntRange(0, 8), default=1, show_default=True,
              help="hybrid: v1 tool cgroups made ahead per agent and limits, renamed at placement")
@click.option("--store-writes", type=click.Choice(["batched", "direct"]), default="batched", show_default=True,
              help="batched: journal and records committed by one writer thread, in batches; direct: each on the event loop")
@click.option("-v", "--verbose", is_flag=True)
def run(socket_path, state_dir, results_dir, policy_dir, default_policy, cgroup_root, cgroup_leaf, tracker, admin_group, socket_group,
        metrics_listen, host_memory_max, simulate_gpus, no_move_self, tool_cgroups, spare_cgroups, store_writes, verbose) -> None:
    """Run the daemon in the foreground (systemd: Type=notify)."""
    from agentd.core.daemon import DaemonConfig, run_daemon

    _need_root()
    from agentd.policy.spec import parse_size

    try:
        budget = parse_size(host_memory_max) if host_memory_max else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--host-memory-max") from None
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="agentd: %(message)s", stream=sys.stderr)
    config = DaemonConfig(socket_path=socket_path, state_dir=state_dir, results_dir=results_dir, policy_dir=policy_dir, default_policy=default_policy,
                          cgroup_root=cgroup_root, cgroup_leaf=cgroup_leaf, tracker=tracker, admin_group=admin_group, socket_group=socket_group,
                          metrics_listen=metrics_listen, move_self=not no_move_self,
                          host_memory_max=budget, simulate_gpus=simulate_gpus, tool_cgroups=tool_cgroups,
                          spare_cgroups=spare_cgroups, store_writes=store_writes)
    try:
        asyncio.run(run_daemon(config))
    except Exception as exc:  # one clear line, not a traceback, for the operator
        logging.getLogger("agentd").debug("fatal", exc_info=True)
        raise click.ClickException(f"agentd could not run: {exc}") from exc


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the live view")
@click.option("--tracker", type=click.Choice(["auto", "bpf", "cn_proc"]), default="auto", show_default=True)
@click.option("--trace", default=None, help="task name of a recorded run in the bundled traces to pace the turns")
@click.option("--speed", type=float, default=20.0, show_default=True, help="time compression of the recorded run")
def demo(as_json, tracker, trace, speed) -> None:
    """Run the daemon with its default policy on the bundled demo agent."""
    from agentd.demo import run_demo

    from agentd.tracking.backend import BackendUnavailable

    _need_root()
    try:
        code = run_demo(as_json=as_json, tracker=tracker, trace=trace, speed=speed)
    except BackendUnavailable as exc:  # --tracker bpf|cn_proc that cannot run: say why, exit non-zero
        raise click.ClickException(f"agentd demo could not start: {exc}") from exc
    sys.exit(code)


if __name__ == "__main__":
    main()
