"""moe-tutorial: Mixture-of-Experts kernels in cuTile Python, step by step.

    import moe_tutorial as mt
    print(mt.describe())
    x = mt.xp.ones(10)          # CuPy on a GPU, NumPy on the CPU emulator
    mt.launch(grid, kernel, args)
"""
from . import device, emulator
from .device import (array_module, backend, describe, get_xp, gpu_status, is_gpu_array, launch,
                     to_numpy)

# Notebook 00: the first tile program; the compiler-as-a-test helpers; exercise checkers.
from . import check, compile, records, source, tiles
from .tiles import vector_add, vector_add_kernel

# Notebook 01: routing and alignment.
from . import routing
from .routing import (align, align_reference, grouped_topk, grouped_topk_reference, topk_softmax,
                      topk_softmax_reference)

# Notebook 02: the SwiGLU activation.
from . import activation
from .activation import silu_and_mul, silu_and_mul_reference

# Notebooks 03-04: the fused gather/scatter matmul and the whole layer.
from . import fused_moe, layer, presets, reference
from .fused_moe import (LayerConfig, TileConfig, default_layer_config, default_tile_config,
                        fused_moe_matmul, moe_sum, permute_rows)
from .layer import moe_forward

# Every notebook: a picture of what each block of a kernel read and wrote (CPU emulator).
from .trace import Trace, trace

__all__ = ["device", "emulator", "array_module", "backend", "describe", "get_xp", "gpu_status",
           "is_gpu_array", "launch", "to_numpy", "xp",
           "check", "compile", "records", "source", "tiles", "vector_add", "vector_add_kernel",
           "routing", "align", "align_reference", "grouped_topk", "grouped_topk_reference",
           "topk_softmax", "topk_softmax_reference",
           "activation", "silu_and_mul", "silu_and_mul_reference",
           "fused_moe", "layer", "presets", "reference", "TileConfig", "default_tile_config",
           "default_layer_config", "LayerConfig", "fused_moe_matmul", "moe_sum", "permute_rows",
           "moe_forward",
           "Trace", "trace"]


def __getattr__(name):
    if name == "xp":  # resolved on use, so MOE_TUTORIAL_DEVICE set before first use counts
        return get_xp()
    raise AttributeError(f"module 'moe_tutorial' has no attribute {name!r}")
