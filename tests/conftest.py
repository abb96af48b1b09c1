"""Shared fixtures. Tests marked ``gpu`` need a CUDA GPU and run with ``pytest -m gpu``; without a
GPU they are reported as skipped, never as passed."""
import os
import zlib

import numpy as np
import pytest

from moe_tutorial import device


# Under ``pytest -m gpu`` every new shape a hypothesis example draws is a kernel specialization
# to compile (1-6 s each), so property tests draw fewer examples there; the emulator run in CI
# keeps the full count.
GPU_MAX_EXAMPLES = 6


def pytest_configure(config):
    if config.option.markexpr.strip() == "gpu":
        os.environ["MOE_TUTORIAL_GPU_TEST_RUN"] = "1"


def examples(n: int) -> int:
    """``max_examples`` for a property test: ``n``, capped under ``pytest -m gpu``."""
    return min(n, GPU_MAX_EXAMPLES) if os.environ.get("MOE_TUTORIAL_GPU_TEST_RUN") else n


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
