from __future__ import annotations

import pynvml
import pytest


@pytest.fixture(scope="session")
def nvml_works() -> bool:
    """True on a host whose NVIDIA driver NVML can start (then tests check live data)."""
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except pynvml.NVMLError:
        return False
