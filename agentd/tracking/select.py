"""Pick the tracker backend: BCC (ring buffer, exec gate) when it compiles, else cn_proc."""

from __future__ import annotations

from agentd.tracking.backend import BackendUnavailable, TrackerBackend

PREFERENCES = ("auto", "bpf", "cn_proc")


def _bpf(options=None) -> TrackerBackend:
    from agentd.tracking.bpf_backend import BpfBackend

    return BpfBackend(options)


def _cn_proc() -> TrackerBackend:
    from agentd.tracking.cnproc_backend import CnProcBackend

    return CnProcBackend()


def open_backend(
    prefer: str = "auto", *, bpf_options=None, bpf_factory=None, cnproc_factory=_cn_proc
) -> tuple[TrackerBackend, str]:
    """A loaded (not yet started) backend and the one line that says which and why.

    "bpf" and "cn_proc" insist on that backend (BackendUnavailable if it cannot run);
    "auto" tries BPF first and falls back to cn_proc, naming the reason. bpf_options is a
    bpf_source.TrackerOptions (gate, exit_code, watch_subtree, wake_every, ring size)."""
    if bpf_factory is None:
        bpf_factory = lambda: _bpf(bpf_options)  # noqa: E731
    if prefer not in PREFERENCES:
        raise ValueError(f"tracker backend must be one of {', '.join(PREFERENCES)}, not {prefer!r}")
    bpf_reason = ""
    if prefer in ("auto", "bpf"):
        backend = bpf_factory()
        try:
            backend.load()
            gate = "on" if backend.can_gate else "off"
            return backend, f"tracker: bpf (ring buffer, exec gate {gate})"
        except BackendUnavailable as exc:
            if prefer == "bpf":
                raise
            bpf_reason = str(exc)
    backend = cnproc_factory()
    try:
        backend.load()
    except BackendUnavailable as exc:
        if bpf_reason:
            raise BackendUnavailable(f"no tracker: {bpf_reason}; and {exc}") from exc
        raise
    why = bpf_reason or "asked for"
    return backend, f"tracker: cn_proc ({why}; no exec gate, no cgroup ids)"
