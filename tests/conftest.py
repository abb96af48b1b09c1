"""Shared fixtures. Tests marked ``gpu`` need a CUDA GPU and run with ``pytest -m gpu``; without a
GPU they are reported as skipped, never as passed."""
import zlib

import numpy as np
import pytest

from moe_tutorial import device


def pytest_collection_modifyitems(config, items):
    ok, why = device.gpu_status()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"needs a GPU: {why}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def xp(request):
    """The array module of each backend: NumPy (kernels run on the emulator) and, under
    ``-m gpu``, CuPy (kernels run through ``ct.launch``)."""
    return device.get_xp(request.param)


@pytest.fixture
def rng(request):
    """A fresh, reproducible-per-test random generator (seeded from the test id)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)
