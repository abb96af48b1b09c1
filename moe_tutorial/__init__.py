"""moe-tutorial: Mixture-of-Experts kernels in cuTile Python, step by step.

    import moe_tutorial as mt
    print(mt.describe())
    x = mt.xp.ones(10)          # CuPy on a GPU, NumPy on the CPU emulator
    mt.launch(grid, kernel, args)
"""
from . import device, emulator
from .device import (array_module, backend, describe, get_xp, gpu_status, is_gpu_array, launch,
                     to_numpy)

__all__ = ["device", "emulator", "array_module", "backend", "describe", "get_xp", "gpu_status",
           "is_gpu_array", "launch", "to_numpy", "xp"]


def __getattr__(name):
    if name == "xp":  # resolved on use, so MOE_TUTORIAL_DEVICE set before first use counts
        return get_xp()
    raise AttributeError(f"module 'moe_tutorial' has no attribute {name!r}")
