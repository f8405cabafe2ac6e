"""The daemon-as-a-process harness, shared with the benchmarks (benchmarks/daemon_process.py)."""

from benchmarks.daemon_process import TEST_POLICY, DaemonProcess, parse_lines  # noqa: F401
