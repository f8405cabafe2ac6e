"""Co-location of inference servers and training jobs on shared GPUs and CPUs (policy kind
"colocation", journal prefix "job", cgroups jobs/<name>/, `agentctl colocation ...`).

What it decides: which job may share which GPU (admission and placement on the estimate's
high end plus the residents' live usage and headroom, and predicted slowdown within each
resident's bound), who waits and in what order (the queue), and how to back off when
sharing hurts (the runtime guard: lower cpu weight, freeze, SIGTERM, SIGKILL on the
best-effort job; thaw with hysteresis). It launches jobs there: CUDA_VISIBLE_DEVICES by
UUID, MPS limits where an MPS daemon is configured, a memory cap for PyTorch, a cpuset
NUMA-local to the GPUs (PCI locality from sysfs) and a cpu weight.

Seed papers (../shared/seeds/papers.txt): "GPU Memory and Utilization Estimation for
Training-Aware Resource Management" (the estimators in agentd/gpu/ and the slowdown
bound), CloudFormer (interference is not additive: predict it, then watch it live),
Nexus and semi-PD (splitting one GPU between latency-critical and throughput work; here by
MPS thread percentage and memory limits, and by the guard).

What it reads from the model: the cgroup layout (SharedModel.job_cgroup), the daemon's GPU
samples (agentd.gpu.sampler.GpuSnapshot: memory, utilization, per-process memory with each
process's cgroup, Xid/ECC health), and the caller's peer credentials.
"""
