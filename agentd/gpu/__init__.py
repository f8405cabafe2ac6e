"""GPU memory and utilization: estimates before a job runs, NVML samples while it runs.

- spec.py        ModelSpec (HF config.json or a parameter count), WorkloadSpec, Estimate
- analytical.py  peak memory derived part by part (ZeRO, TP, recomputation, KV cache)
- cpu_side.py    peak traced with fake tensors on the CPU (needs torch)
- learned.py     analytical parts re-weighted from measured peaks; knows its range
- estimate.py    one entry point for all three, and the fit check
- utilization.py solo utilization roofline and the slowdown of two jobs sharing a GPU
- sampler.py     NVML sampler (never raises after probe), fake backend, poller thread
- procinfo.py    host pid → pids in nested namespaces, command, agentd unit
- torch_models.py the reference decoder measured in data/gpu/ (needs torch)

Nothing here imports the daemon; the CLI and the co-location policy import it directly.
"""
