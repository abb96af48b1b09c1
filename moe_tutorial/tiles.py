"""The first tile program: vector addition (notebook 00).

A cuTile kernel is written for ONE block. The launch grid says how many blocks run; each block
asks ``ct.bid(0)`` which one it is, loads its tile of each input, computes, and stores its tile
of the output. The last tile may stick out past the end of the array: loads pad it, stores drop
the out-of-bounds elements, so sizes need not be multiples of the tile.
"""
from __future__ import annotations

import cuda.tile as ct
import numpy as np

from . import arguments, device
from .compile import array

DEFAULT_TILE = 1024
FN = "vector_add"     # the name argument errors start with
# dtypes the host wrapper accepts (bfloat16 only on the CPU: CuPy has no bfloat16)
_DTYPES = ("float16", "bfloat16", "float32", "float64", "int32", "int64")


@ct.kernel
def vector_add_kernel(a, b, c, TILE: ct.Constant[int]):
    """c[i] = a[i] + b[i] for the TILE elements of block ``ct.bid(0)``."""
    bid = ct.bid(0)
    a_tile = ct.load(a, index=(bid,), shape=(TILE,))
    b_tile = ct.load(b, index=(bid,), shape=(TILE,))
    ct.store(c, index=(bid,), tile=a_tile + b_tile)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def vector_add(a, b, *, out=None, tile: int = DEFAULT_TILE):
    """``a + b`` for two 1-D arrays of the same shape and dtype, computed by
    ``vector_add_kernel`` (on the GPU for CuPy arrays, on the CPU emulator for NumPy arrays).
    ``out``: optional array of the same shape, dtype and device to write into."""
    for name, x in (("a", a), ("b", b)):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            arguments.fail(FN, TypeError, f"{name} must be a NumPy or CuPy array, "
                                          f"got {type(x).__name__}")
        if x.ndim != 1:
            arguments.fail(FN, ValueError, f"{name} must be 1-D, got shape {tuple(x.shape)}")
        if np.dtype(x.dtype).name not in _DTYPES:
            arguments.fail(FN, TypeError, f"{name} has dtype {x.dtype}; supported: "
                                          f"{', '.join(_DTYPES)}")
    if a.shape != b.shape:
        arguments.fail(FN, ValueError,
                       f"a and b must have the same shape, got {tuple(a.shape)} "
                       f"and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        arguments.fail(FN, TypeError,
                       f"a and b must have the same dtype, got {a.dtype} and "
                       f"{b.dtype}")
    if device.is_gpu_array(a) != device.is_gpu_array(b):
        arguments.fail(FN, TypeError,
                       "a and b must be on the same device (both CuPy or both NumPy)")
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) \
            or not _is_power_of_two(int(tile)):
        arguments.fail(FN, ValueError, f"tile must be a positive power of two, got {tile!r}")
    if out is None:
        out = device.array_module(a, b).empty_like(a)
    elif (not hasattr(out, "shape") or out.shape != a.shape or out.dtype != a.dtype
          or device.is_gpu_array(out) != device.is_gpu_array(a)):
        arguments.fail(FN, ValueError,
                       f"out must be a {a.dtype} array of shape {tuple(a.shape)} "
                       f"on the same device as a, got "
                       f"{getattr(out, 'dtype', type(out).__name__)} "
                       f"{tuple(getattr(out, 'shape', ()))}")
    n = a.shape[0]
    if n == 0:
        return out
    grid = (ct.cdiv(n, int(tile)),)
    device.launch(grid, vector_add_kernel, (a, b, out, int(tile)))
    return out


def vector_add_reference(a, b):
    """float64 NumPy reference."""
    return device.to_numpy(a).astype(np.float64) + device.to_numpy(b).astype(np.float64)


def compile_cases():
    """The specializations notebook 00 launches."""
    return [
        (f"vector_add_{dt}_tile{tile}", vector_add_kernel,
         [array(getattr(ct, dt), 1)] * 3 + [tile])
        for dt in ("float32", "float16")
        for tile in (DEFAULT_TILE, 256)
    ]
