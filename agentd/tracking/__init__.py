"""Process tracking: eBPF (BCC) backend, cn_proc fallback, the process tree and tool-call model."""
