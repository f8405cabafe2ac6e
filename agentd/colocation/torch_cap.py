"""A small launcher that holds a PyTorch job to the GPU memory agentd planned for it:

    agentctl run --class training --estimate-bytes 20G -- python -m agentd.colocation.torch_cap train.py ARGS

It calls torch.cuda.set_per_process_memory_fraction(AGENTD_GPU_MEMORY_FRACTION) on every
visible device (agentd sets the variable at admission: the planned peak over the GPU's
memory), then runs the script as __main__. A job that outgrows its estimate then fails in
its own allocator instead of pushing a neighbour out of memory. Without torch or CUDA it
says so on stderr and runs the script uncapped.
"""

from __future__ import annotations

import os
import runpy
import sys


def apply_cap(environ=os.environ) -> str:
    frac = environ.get("AGENTD_GPU_MEMORY_FRACTION")
    if not frac:
        return "no AGENTD_GPU_MEMORY_FRACTION: not started by agentd run --class; uncapped"
    try:
        value = float(frac)
        if not 0.0 < value <= 1.0:
            raise ValueError
    except ValueError:
        return f"AGENTD_GPU_MEMORY_FRACTION={frac!r} is not within (0, 1]; uncapped"
    try:
        import torch
    except ImportError:
        return "torch is not installed; uncapped"
    if not torch.cuda.is_available():
        return "CUDA is not available to torch; uncapped"
    for dev in range(torch.cuda.device_count()):
        torch.cuda.set_per_process_memory_fraction(value, dev)
    return f"capped at {value:.4f} of each visible GPU's memory"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m agentd.colocation.torch_cap SCRIPT [ARGS...]", file=sys.stderr)
        return 2
    print(f"agentd torch_cap: {apply_cap()}", file=sys.stderr)
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
