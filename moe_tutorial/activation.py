"""SwiGLU's activation, ``silu(gate) * up``, as cuTile kernels.

In an MoE expert the first GEMM writes, for every token, one row of width ``2I``: the *gate* half
``x[:, :I]`` followed by the *up* half ``x[:, I:]``. The activation turns it into the ``(M, I)``
input of the second GEMM::

    out[m, j] = silu(x[m, j]) * x[m, I + j]        silu(g) = g * sigmoid(g) = g / (1 + exp(-g))

Read top to bottom: the fp32 math, two kernels (one row per block, for teaching; a tile of
``TILE_M x TILE_N`` elements per block, for speed), the tile-shape rule, the host wrapper with its
input checks, the float64 reference, and the compile cases.

Numerics (all math in float32, whatever the input and output dtypes):

* Large negative gates: ``exp(-g)`` overflows to ``inf`` for ``g < -88.7``; then
  ``g / (1 + inf) = -0.0``, which is the right limit. No NaN can appear for finite inputs: the only
  NaN-producing forms, ``inf / inf`` and ``0 * inf``, need an infinite gate. (A gate of ``-inf``
  gives ``-inf / inf = NaN``, like PyTorch's ``x * sigmoid(x)``; a gate of ``+inf`` gives ``+inf``.)
* Large positive gates: ``exp(-g)`` underflows to 0, so ``silu(g) = g`` exactly.
* ``approx_div=True`` uses cuTile's approximate division (``RoundingMode.APPROX``: a reciprocal
  and a multiply, about 2 ulp in float32 instead of correctly rounded).
* ``flush_to_zero=True`` flushes float32 subnormals (``|v| < 1.2e-38``) to zero in the add, the
  division and the multiplies. Both options only change the last bits of a float32 result and
  nothing at all after rounding to float16 or bfloat16.
"""
from __future__ import annotations

import numpy as np

import cuda.tile as ct

from . import device

ConstInt = ct.Constant[int]
ConstBool = ct.Constant[bool]
ZERO = ct.PaddingMode.ZERO


# ---------------------------------------------------------------------------------------------
# The math, on float32 tiles
# ---------------------------------------------------------------------------------------------

def silu_mul_f32(g, u, APPROX, FTZ):
    """``silu(g) * u`` for float32 tiles ``g`` and ``u``; ``APPROX``/``FTZ`` are compile-time
    flags (approximate division, flush subnormals to zero)."""
    denom = ct.add(1.0, ct.exp(-g), flush_to_zero=FTZ)          # 1 + exp(-g): inf for g < -88.7
    if APPROX:
        silu = ct.truediv(g, denom, rounding_mode=ct.RoundingMode.APPROX, flush_to_zero=FTZ)
    else:
        silu = ct.truediv(g, denom, flush_to_zero=FTZ)           # g / inf = -0.0, never NaN
    return ct.mul(silu, u, flush_to_zero=FTZ)


# ---------------------------------------------------------------------------------------------
# Kernels. ``gate``, ``up`` and ``out`` are (M, I) arrays; ``gate``/``up`` are usually two views
# of the same (M, 2I) buffer, with any strides.
# ---------------------------------------------------------------------------------------------

@ct.kernel
def silu_and_mul_row_kernel(gate, up, out, TILE_N: ConstInt):
    """The simplest version: block ``m`` computes row ``m`` with one ``(1, TILE_N)`` tile.

    ``TILE_N`` is the next power of two >= I; the columns past I are padded with zeros on load
    (silu(0) * 0 = 0, harmless) and dropped on store."""
    row = ct.bid(0)
    g = ct.load(gate, (row, 0), (1, TILE_N), padding_mode=ZERO).astype(ct.float32)
    u = ct.load(up, (row, 0), (1, TILE_N), padding_mode=ZERO).astype(ct.float32)
    y = g / (1.0 + ct.exp(-g)) * u
    ct.store(out, (row, 0), y.astype(out.dtype))


@ct.kernel
def silu_and_mul_kernel(gate, up, out, TILE_M: ConstInt, TILE_N: ConstInt,
                        APPROX: ConstBool, FTZ: ConstBool):
    """The production version: block ``(i, j)`` of a 2-D grid computes the ``(TILE_M, TILE_N)``
    tile ``(i, j)`` of ``out``. Tiles that stick out past row M or column I are zero-padded on
    load and masked on store, so any M and I work."""
    i, j = ct.bid(0), ct.bid(1)
    g = ct.load(gate, (i, j), (TILE_M, TILE_N), padding_mode=ZERO).astype(ct.float32)
    u = ct.load(up, (i, j), (TILE_M, TILE_N), padding_mode=ZERO).astype(ct.float32)
    ct.store(out, (i, j), silu_mul_f32(g, u, APPROX, FTZ).astype(out.dtype))


# ---------------------------------------------------------------------------------------------
# Choosing the tile shape
# ---------------------------------------------------------------------------------------------

TILE_ELEMS = 4096   # elements per tile: 16 KiB of float16 input (gate + up) per block
MAX_TILE_N = 256    # widest column tile; wider rows are split over several column tiles
MAX_GRID_Y = 65535  # CUDA's limit on the second grid axis (column tiles)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def choose_tiles(M: int, I: int) -> tuple[int, int]:
    """The default ``(tile_m, tile_n)`` for an ``(M, 2I)`` input.

    The rule: a memory-bound kernel wants every block to move a decent chunk of contiguous
    bytes and the grid to have many blocks.

    * ``tile_n = min(next_pow2(I), MAX_TILE_N)``: whole rows when they are narrow, else
      ``MAX_TILE_N``-wide slices (long contiguous runs in every row of the tile);
    * ``tile_m = min(next_pow2(M), TILE_ELEMS // tile_n)``: stack rows until the tile holds
      ``TILE_ELEMS`` elements, but no more rows than the problem has.

    Tile sides are powers of two (a cuTile rule); partial edge tiles are masked. 256 columns
    is also the widest box one TMA copy moves on Hopper. The constants are a starting point;
    ``python -m moe_tutorial.bench_activation`` sweeps tile shapes on a GPU to check them.
    """
    tile_n = min(next_pow2(I), MAX_TILE_N)
    tile_m = max(1, min(next_pow2(M), TILE_ELEMS // tile_n))
    return tile_m, tile_n


def bytes_moved(M: int, I: int, in_dtype, out_dtype=None) -> int:
    """Bytes a perfect kernel moves through DRAM: read (M, 2I) inputs, write (M, I) outputs."""
    out_dtype = in_dtype if out_dtype is None else out_dtype
    return M * 2 * I * np.dtype(in_dtype).itemsize + M * I * np.dtype(out_dtype).itemsize


# ---------------------------------------------------------------------------------------------
# Host wrappers
# ---------------------------------------------------------------------------------------------

def _supported_dtypes(xp):
    names = [np.float16, np.float32]
    if xp is np:
        import ml_dtypes
        names.append(ml_dtypes.bfloat16)
    return tuple(np.dtype(d) for d in names)


def _check_tile(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int (a power of two), got {value!r}")
    value = int(value)
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a positive power of two, got {value}")
    return value


def _usable_strides(a) -> bool:
    """cuTile takes arrays with non-negative strides that are whole elements."""
    return all(s >= 0 and s % a.itemsize == 0 for s in a.strides)


def _overlaps(xp, a, b) -> bool:
    if not xp.may_share_memory(a, b):        # cheap test of the address ranges
        return False
    return bool(xp.shares_memory(a, b))      # exact (only reached when the ranges intersect)


def _prepare(x, out):
    """Validate ``x`` and ``out``; return ``(xp, x, out, M, I)`` ready for a launch."""
    xp = device.array_module(x)
    if not (isinstance(x, np.ndarray) or device.is_gpu_array(x)):
        raise TypeError(f"x must be a NumPy or CuPy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D with shape (M, 2*I) (gate half, then up half); "
                         f"got shape {tuple(x.shape)}")
    if x.shape[1] % 2:
        raise ValueError(f"x's last dimension must be even (gate and up halves of width I); "
                         f"got shape {tuple(x.shape)}")
    dtypes = _supported_dtypes(xp)
    if x.dtype not in dtypes:
        raise TypeError(f"x.dtype must be one of {[str(d) for d in dtypes]}, got {x.dtype}")
    M, I = x.shape[0], x.shape[1] // 2
    if x.size and not _usable_strides(x):   # e.g. a reversed view: cuTile needs strides >= 0
        x = xp.ascontiguousarray(x)

    if out is None:
        return xp, x, xp.empty((M, I), dtype=x.dtype), M, I
    same_kind = device.is_gpu_array(out) if xp is not np else isinstance(out, np.ndarray)
    if not same_kind:
        raise TypeError(f"out must be a {xp.__name__} array like x, got {type(out).__name__}")
    if xp is not np and out.device != x.device:
        raise ValueError(f"out is on {out.device} but x is on {x.device}")
    if tuple(out.shape) != (M, I):
        raise ValueError(f"out must have shape (M, I) = {(M, I)} for x of shape "
                         f"{tuple(x.shape)}; got {tuple(out.shape)}")
    if out.dtype not in dtypes:
        raise TypeError(f"out.dtype must be one of {[str(d) for d in dtypes]}, got {out.dtype}")
    if xp is np and not out.flags.writeable:
        raise ValueError("out is read-only")
    if out.size and (not _usable_strides(out)
                     or any(s == 0 and n > 1 for s, n in zip(out.strides, out.shape))):
        raise ValueError(f"out must have positive strides that are whole elements; "
                         f"got strides {out.strides} (bytes)")
    if _overlaps(xp, out, x):
        raise ValueError("out must not overlap x (the kernel reads x while it writes out)")
    return xp, x, out, M, I


def silu_and_mul(x, out=None, *, tile_m=None, tile_n=None, approx_div=False,
                 flush_to_zero=False):
    """``silu(x[:, :I]) * x[:, I:]`` for ``x`` of shape ``(M, 2I)``, computed in float32.

    Args:
        x: NumPy (CPU emulator) or CuPy (GPU) array, float16/float32 (and bfloat16 on the CPU
            via ml_dtypes); any M (0 and 1 included), any I, any non-negative strides (views of
            a bigger buffer are fine; other views are copied first).
        out: optional ``(M, I)`` array on the same device, any supported float dtype (the
            result is rounded to it); by default a new array of ``x.dtype``.
        tile_m, tile_n: override the tile shape (powers of two); default ``choose_tiles(M, I)``.
        approx_div, flush_to_zero: faster float32 math, see the module docstring.

    Returns:
        ``out``.
    """
    xp, x, out, M, I = _prepare(x, out)
    auto_m, auto_n = choose_tiles(M, I)
    tile_m = auto_m if tile_m is None else _check_tile("tile_m", tile_m)
    tile_n = auto_n if tile_n is None else _check_tile("tile_n", tile_n)
    if M == 0 or I == 0:
        return out                                   # nothing to compute: no launch
    grid = (-(-M // tile_m), -(-I // tile_n), 1)
    if grid[1] > MAX_GRID_Y:
        raise ValueError(f"tile_n={tile_n} gives {grid[1]} column tiles, more than the grid "
                         f"allows ({MAX_GRID_Y}); use a larger tile_n")
    device.launch(grid, silu_and_mul_kernel,
                  (x[:, :I], x[:, I:], out, tile_m, tile_n, bool(approx_div), bool(flush_to_zero)))
    return out


def silu_and_mul_rowwise(x, out=None):
    """The same result with the teaching kernel: one block per row, one tile per row."""
    xp, x, out, M, I = _prepare(x, out)
    if M == 0 or I == 0:
        return out
    device.launch((M, 1, 1), silu_and_mul_row_kernel, (x[:, :I], x[:, I:], out, next_pow2(I)))
    return out


# ---------------------------------------------------------------------------------------------
# Reference and tolerances
# ---------------------------------------------------------------------------------------------

def silu_and_mul_reference(x) -> np.ndarray:
    """float64 NumPy reference (accepts NumPy or CuPy input; returns NumPy float64)."""
    x64 = device.to_numpy(x).astype(np.float64)
    I = x64.shape[-1] // 2
    g, u = x64[..., :I], x64[..., I:]
    with np.errstate(over="ignore", invalid="ignore"):
        return g / (1.0 + np.exp(-g)) * u


def tolerance(dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing an output of ``dtype`` with the float64 reference:
    |out - ref| <= atol + rtol * |ref|.

    float16/bfloat16: two units of rounding of the output format (the fp32 math is far more
    accurate than the final rounding); atol covers subnormal outputs. float32: 1e-5, i.e. ~80
    ulp, room for the GPU's exp (a few ulp, growing with |g|) and approximate division; any real
    bug (wrong half, wrong formula, unmasked tile) is off by O(1)."""
    name = np.dtype(dtype).name
    return {"float16": (1e-3, 1e-7), "bfloat16": (8e-3, 1e-30),
            "float32": (1e-5, 1e-30)}[name]


# ---------------------------------------------------------------------------------------------
# Compile cases: the specializations the notebook and the benchmark use
# ---------------------------------------------------------------------------------------------

def compile_cases():
    from .compile import array
    f16, f32, bf16 = array(ct.float16, 2), array(ct.float32, 2), array(ct.bfloat16, 2)
    return [
        ("row_f16_n2048", silu_and_mul_row_kernel, [f16, f16, f16, 2048]),
        ("row_f32_n128", silu_and_mul_row_kernel, [f32, f32, f32, 128]),
        ("tiled_f16_16x256", silu_and_mul_kernel, [f16, f16, f16, 16, 256, False, False]),
        ("tiled_f16_1x64", silu_and_mul_kernel, [f16, f16, f16, 1, 64, False, False]),
        ("tiled_f16_16x256_approx_ftz", silu_and_mul_kernel, [f16, f16, f16, 16, 256, True, True]),
        ("tiled_f32_16x256", silu_and_mul_kernel, [f32, f32, f32, 16, 256, False, False]),
        ("tiled_bf16_16x256", silu_and_mul_kernel, [bf16, bf16, bf16, 16, 256, False, False]),
        ("tiled_f32_to_f16_8x256", silu_and_mul_kernel, [f32, f32, f16, 8, 256, False, True]),
    ]
