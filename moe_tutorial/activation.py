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
  and a multiply, about 2 ulp in float32 instead of correctly rounded). It is the default for
  16-bit outputs and off for float32 outputs (``default_approx_div``).
* ``flush_to_zero=True`` flushes float32 subnormals (``|v| < 1.2e-38``) to zero in the add, the
  division and the multiplies. Both options only change the last bits of a float32 result;
  after rounding to float16 they do not change the maximum error (``division_error_study``).
"""
from __future__ import annotations

import functools

import numpy as np

import cuda.tile as ct

from . import arguments, device, reference
from .routing import next_power_of_2

FN = "silu_and_mul"     # the name argument errors start with

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
                        APPROX: ConstBool, FTZ: ConstBool,
                        LATENCY: ConstInt, ALLOW_TMA: ConstBool):
    """The production version: block ``(i, j)`` of a 2-D grid computes the ``(TILE_M, TILE_N)``
    tile ``(i, j)`` of ``out``. Tiles that stick out past row M or column I are zero-padded on
    load and masked on store, so any M and I work.

    ``LATENCY`` (1-10, or 0 to let the compiler infer it) and ``ALLOW_TMA`` are compiler hints
    for the memory operations; they change speed, never results."""
    i, j = ct.bid(0), ct.bid(1)
    lat = LATENCY if LATENCY > 0 else None
    g = ct.load(gate, (i, j), (TILE_M, TILE_N), padding_mode=ZERO, latency=lat,
                allow_tma=ALLOW_TMA).astype(ct.float32)
    u = ct.load(up, (i, j), (TILE_M, TILE_N), padding_mode=ZERO, latency=lat,
                allow_tma=ALLOW_TMA).astype(ct.float32)
    y = silu_mul_f32(g, u, APPROX, FTZ).astype(out.dtype)
    ct.store(out, (i, j), y, allow_tma=ALLOW_TMA)


# ---------------------------------------------------------------------------------------------
# Choosing the tile shape
# ---------------------------------------------------------------------------------------------

TILE_ELEMS = 1024                # elements per tile: 4 KiB of float16 input (gate + up) per block
TILE_N_CHOICES = (512, 256)      # column-tile widths for rows wider than 256, widest first
MAX_GRID_Y = 65535               # CUDA's limit on the second grid axis (column tiles)


next_pow2 = next_power_of_2      # the smallest power of two >= n (1 for n <= 1)


def padded_width(I: int, tile_n: int) -> int:
    """Columns the column tiles cover: ``I`` rounded up to a multiple of ``tile_n``."""
    return -(-int(I) // tile_n) * tile_n


def choose_tiles(M: int, I: int) -> tuple[int, int]:
    """The default ``(tile_m, tile_n)`` for an ``(M, 2I)`` input.

    The rule: small blocks of ``TILE_ELEMS = 1024`` elements, with column tiles as wide as
    possible without padding the row more than the narrowest choice would.

    * ``tile_n``: whole rows (``next_pow2(I)``) when ``I <= 256``; otherwise the first (widest)
      width in ``TILE_N_CHOICES`` whose tiles cover no more columns than 256-wide tiles do
      (``padded_width(I, tile_n) == padded_width(I, 256)``). So ``I = 2048``, ``1408`` and
      ``5000`` get 512 (0, 128 and 120 padded columns, as with 256), while ``I = 768`` or
      ``1100`` get 256 (512-wide tiles would pad 256 and 436 columns instead of 0 and 180).
      Since the widths are powers of two, 256 always pads least; the wider choice only cuts
      the number of blocks per row.
    * ``tile_m = min(next_pow2(M), TILE_ELEMS // tile_n)``: stack rows up to ``TILE_ELEMS``
      elements, but no more rows than the problem has.

    Tile sides are powers of two (a cuTile rule); partial edge tiles are masked.

    The evidence, measured by us on an NVIDIA H100 80GB HBM3 (float16, M=8192, I=2048,
    ``python -m moe_tutorial.bench_activation``; device-to-device copy: 2971 GB/s): tiles of
    1024 elements reached 82.5-83.7% of the copy bandwidth (2x512: 83.7%; 4x256 and 1x1024:
    82.5%), 2048 elements 72.8% (8x256), 4096 elements 52-59% (16x256, the previous rule:
    53.2%; 8x512: 52.3%; 4x1024: 58.5%). 2x512 beats 1x1024 only by about one percent, that
    run's noise level: putting 1024 first in ``TILE_N_CHOICES`` would pick 1x1024 wherever it
    pads no more. A later run on the same card (device-to-device copy 2960 GB/s) agreed:
    1x1024, 2x512 and 4x256 within 83-85%, 2048-element tiles 73-77%. The benchmark sweeps tile
    shapes and compiler hints to re-check the rule on your GPU; ``silu_and_mul(..., tile_m=,
    tile_n=)`` overrides it.

    Not the tile shape but the row width's divisibility by 16 decides whether the loads are
    vectorized: ``silu_and_mul`` gives widths like ``I = 5000`` a second launch for the last
    ``I % 16`` columns, so this rule is applied to ``I - I % 16`` columns (``split_columns``).
    """
    if I <= 256:
        tile_n = next_pow2(I)
    else:
        least = padded_width(I, min(TILE_N_CHOICES))
        tile_n = next(tn for tn in TILE_N_CHOICES if padded_width(I, tn) == least)
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
    value = arguments.require_int(FN, name, value)
    if value < 1 or value & (value - 1):
        arguments.fail(FN, ValueError, f"{name} must be a positive power of two, got {value}")
    return value


def _usable_strides(a) -> bool:
    """cuTile takes arrays with non-negative strides that are whole elements."""
    return all(s >= 0 and s % a.itemsize == 0 for s in a.strides)


def _prepare(x, out):
    """Validate ``x`` and ``out``; return ``(xp, x, out, M, I)`` ready for a launch."""
    xp = device.array_module(x)
    if not (isinstance(x, np.ndarray) or device.is_gpu_array(x)):
        arguments.fail(FN, TypeError, f"x must be a NumPy or CuPy array, got {type(x).__name__}")
    if x.ndim != 2:
        arguments.fail(FN, ValueError,
                       f"x must be 2-D with shape (M, 2*I) (gate half, then up half); "
                       f"got shape {tuple(x.shape)}")
    if x.shape[1] % 2:
        arguments.fail(FN, ValueError,
                       f"x's last dimension must be even (gate and up halves of width I); "
                       f"got shape {tuple(x.shape)}")
    dtypes = _supported_dtypes(xp)
    if x.dtype not in dtypes:
        arguments.fail(FN, TypeError,
                       f"x.dtype must be one of {[str(d) for d in dtypes]}, got {x.dtype}")
    M, I = x.shape[0], x.shape[1] // 2
    if x.size and not _usable_strides(x):   # e.g. a reversed view: cuTile needs strides >= 0
        x = xp.ascontiguousarray(x)

    if out is None:
        return xp, x, xp.empty((M, I), dtype=x.dtype), M, I
    same_kind = device.is_gpu_array(out) if xp is not np else isinstance(out, np.ndarray)
    if not same_kind:
        arguments.fail(FN, TypeError,
                       f"out must be a {xp.__name__} array like x, got {type(out).__name__}")
    if xp is not np and out.device != x.device:
        arguments.fail(FN, ValueError, f"out is on {out.device} but x is on {x.device}")
    if tuple(out.shape) != (M, I):
        arguments.fail(FN, ValueError, f"out must have shape (M, I) = {(M, I)} for x of shape "
                                       f"{tuple(x.shape)}; got {tuple(out.shape)}")
    if out.dtype not in dtypes:
        arguments.fail(FN, TypeError,
                       f"out.dtype must be one of {[str(d) for d in dtypes]}, got {out.dtype}")
    if out.size and (not _usable_strides(out)
                     or any(s == 0 and n > 1 for s, n in zip(out.strides, out.shape))):
        arguments.fail(FN, ValueError, f"out must have positive strides that are whole elements; "
                                       f"got strides {out.strides} (bytes)")
    arguments.require_out(FN, "out", out, out.shape, out.dtype, (("x", x),))
    return xp, x, out, M, I


@functools.lru_cache(maxsize=None)
def hinted_kernel(occupancy=None, num_ctas=None):
    """``silu_and_mul_kernel`` with kernel-level compiler hints (``ct.kernel`` options):
    ``occupancy`` = blocks the compiler should plan for per SM (1-32), ``num_ctas`` = blocks per
    cluster (1-16, a power of two). ``None`` leaves the choice to the compiler. Cached, so each
    combination is one kernel object with its own JIT cache."""
    if occupancy is None and num_ctas is None:
        return silu_and_mul_kernel
    return silu_and_mul_kernel.replace_hints(occupancy=occupancy, num_ctas=num_ctas)


def _check_hint(name: str, value, low: int, high: int, power_of_two: bool = False):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        arguments.fail(FN, TypeError, f"{name} must be None or an int, got {value!r}")
    value = int(value)
    if not low <= value <= high or (power_of_two and value & (value - 1)):
        kind = "a power of two" if power_of_two else "an int"
        arguments.fail(FN, ValueError,
                       f"{name} must be None or {kind} in [{low}, {high}], got {value}")
    return value


VECTOR_COLUMNS = 16      # cuTile's JIT assumes a column count divisible by 16 only when it is
SPLIT_MIN_ELEMS = 1 << 22  # split off the odd tail columns only for M*I >= 4M elements


def split_columns(M: int, I: int, split_tail=None) -> int:
    """Columns of the main launch: ``I`` itself, or ``I`` rounded down to a multiple of 16 when
    the last ``I % 16`` columns go to a second, narrow launch.

    Why: when it launches a kernel, cuTile specializes it on each array's shape being divisible
    by 16 (per axis, AND-ed over the arrays of one dtype) -- nothing finer. For ``I = 5000``
    (divisible by 8, not 16) the compiler must assume any column count, and the sm_90 code of
    the 2x512 kernel grows from 496 to 768 SASS instructions (288 to 560 with approximate
    division): the loads and stores go element by element instead of in 16-byte vectors
    (``compile.export_cubin`` with ``shape_divisible_by`` 16 vs 1, counted with
    ``fused_moe.sass_instruction_count``; the row count M does not matter). Measured on an
    NVIDIA H100 80GB HBM3, M=4099, I=5000 ran at 43% of the copy bandwidth against 85-90% for
    I=2048. Splitting costs one more launch (a few microseconds), so ``split_tail=None`` (auto)
    splits only when ``I % 16 != 0``, ``I > 16`` and ``M * I >= SPLIT_MIN_ELEMS`` (and
    ``plan_launch`` also requires 16-byte aligned views, ``_aligned_16_bytes``); ``True``/
    ``False`` force it."""
    tail = I % VECTOR_COLUMNS
    if split_tail is None:
        split_tail = tail != 0 and I > VECTOR_COLUMNS and M * I >= SPLIT_MIN_ELEMS
    return I - tail if split_tail and I > VECTOR_COLUMNS else I


def _aligned_16_bytes(arrays) -> bool:
    """Whether every array's base address and strides are multiples of 16 bytes -- the other
    condition cuTile's JIT checks for vector loads (``base_addr_divisible_by=2`` instead of 16
    also gives the 592-instead-of-312 SASS of an unvectorized kernel). With ``I = 4100``, say,
    the up half starts 8200 bytes into each row: splitting off the tail would not help."""
    def address(a):
        return a.__array_interface__["data"][0] if isinstance(a, np.ndarray) else a.data.ptr
    return all(address(a) % 16 == 0 and all(st % 16 == 0 for st in a.strides[:-1])
               for a in arrays)


def default_approx_div(out_dtype) -> bool:
    """The default division: approximate when the output is 16-bit (float16, bfloat16), exact
    (correctly rounded) for float32 outputs.

    Why: approximate division (about 2 ulp of float32, i.e. 2**-22 relative) is 2**11 times finer
    than float16's rounding step (2**-11) and 2**14 times finer than bfloat16's, so it can only
    move a 16-bit result where the exact float32 value lies within ~2 float32 ulp of a rounding
    midpoint: ``division_error_study()`` finds the same maximum error against float64 with either
    division for float16 outputs. On an NVIDIA H100 80GB HBM3 (measured by us) approximate
    division with FTZ raised 8192x2048 from 84.7% to 86.0% of the copy bandwidth, 16384x2048
    from 89.8% to 93.3% and 12288x1408 from 76.2% to 85.2%. A float32 output would show the
    difference, so it keeps the exact division. ``approx_div=True/False`` forces either."""
    return np.dtype(out_dtype).itemsize == 2


def plan_launch(x, out=None, *, tile_m=None, tile_n=None, approx_div=None, flush_to_zero=False,
                latency=None, allow_tma=True, occupancy=None, num_ctas=None, split_tail=None):
    """Check the arguments of ``silu_and_mul`` and return ``(out, launches)``: ``launches`` is a
    list of ``(grid, kernel, args)`` for ``device.launch`` -- empty when there is nothing to
    compute, two entries when the odd tail columns get their own launch (``split_columns``).
    (The benchmark plans once and times the launches alone.)"""
    xp, x, out, M, I = _prepare(x, out)
    latency = _check_hint("latency", latency, 1, 10)
    occupancy = _check_hint("occupancy", occupancy, 1, 32)
    num_ctas = _check_hint("num_ctas", num_ctas, 1, 16, power_of_two=True)
    for name, value in (("allow_tma", allow_tma), ("approx_div", approx_div),
                        ("split_tail", split_tail)):
        if not isinstance(value, (bool, np.bool_)) and not (value is None and name != "allow_tma"):
            arguments.fail(FN, TypeError,
                           f"{name} must be a bool{'' if name == 'allow_tma' else ' or None'}, "
                           f"got {value!r}")
    user_m = None if tile_m is None else _check_tile("tile_m", tile_m)
    user_n = None if tile_n is None else _check_tile("tile_n", tile_n)
    if M == 0 or I == 0:
        return out, []                               # nothing to compute: no launch
    approx = default_approx_div(out.dtype) if approx_div is None else bool(approx_div)
    kernel = hinted_kernel(occupancy, num_ctas)
    main = split_columns(M, I, split_tail)
    if split_tail is None and main != I and not _aligned_16_bytes(
            [x[:, :main], x[:, I:I + main], out[:, :main]]):
        main = I            # unaligned base or row stride: no vector loads either way (see below)
    launches = []
    for start, width, (tm, tn) in ((0, main, (user_m, user_n)), (main, I - main, (None, None))):
        if width == 0:
            continue
        auto_m, auto_n = choose_tiles(M, width)
        tm, tn = auto_m if tm is None else tm, auto_n if tn is None else tn
        grid = (-(-M // tm), -(-width // tn), 1)
        if grid[1] > MAX_GRID_Y:
            arguments.fail(FN, ValueError,
                           f"tile_n={tn} gives {grid[1]} column tiles, more than the grid "
                           f"allows ({MAX_GRID_Y}); use a larger tile_n")
        args = (x[:, start:start + width], x[:, I + start:I + start + width],
                out[:, start:start + width], tm, tn, approx, bool(flush_to_zero),
                latency or 0, bool(allow_tma))
        launches.append((grid, kernel, args))
    return out, launches


def silu_and_mul(x, out=None, *, tile_m=None, tile_n=None, approx_div=None,
                 flush_to_zero=False, latency=None, allow_tma=True, occupancy=None,
                 num_ctas=None, split_tail=None):
    """``silu(x[:, :I]) * x[:, I:]`` for ``x`` of shape ``(M, 2I)``, computed in float32.

    Args:
        x: NumPy (CPU emulator) or CuPy (GPU) array, float16/float32 (and bfloat16 on the CPU
            via ml_dtypes); any M (0 and 1 included), any I, any non-negative strides (views of
            a bigger buffer are fine; other views are copied first).
        out: optional ``(M, I)`` array on the same device, any supported float dtype (the
            result is rounded to it); by default a new array of ``x.dtype``.
        tile_m, tile_n: override the tile shape (powers of two); default ``choose_tiles(M, I)``.
        approx_div: approximate float32 division; ``None`` (default): approximate for 16-bit
            outputs, exact for float32 outputs (``default_approx_div`` says why).
        flush_to_zero: flush float32 subnormals to zero; see the module docstring.
        latency, allow_tma: hints for the loads (``latency`` 1-10, ``None``: the compiler
            infers it) and for the loads and store (``allow_tma=False``: no TMA copies).
        occupancy, num_ctas: kernel-level compiler hints, see ``hinted_kernel``.
            The hints change speed only; ``python -m moe_tutorial.bench_activation`` measures them.
        split_tail: give the last ``I % 16`` columns their own launch so that the main one gets
            16-byte vector loads; ``None``: when it pays (``split_columns`` says why).

    Returns:
        ``out``.
    """
    out, launches = plan_launch(x, out, tile_m=tile_m, tile_n=tile_n, approx_div=approx_div,
                                flush_to_zero=flush_to_zero, latency=latency,
                                allow_tma=allow_tma, occupancy=occupancy, num_ctas=num_ctas,
                                split_tail=split_tail)
    for launch in launches:
        device.launch(*launch)
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
    """``reference.silu_and_mul`` on the host: accepts NumPy or CuPy input, returns NumPy
    float64 (kept under this name for the notebooks)."""
    return reference.silu_and_mul(device.to_numpy(x))


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


def _silu_mul_f32_model(g, u, approx: bool, ulp_error: int = 0):
    """NumPy float32 model of ``silu_mul_f32``: exact division is correctly rounded; approximate
    division is PTX ``div.approx.f32`` at its documented worst case -- ``g * (1/d)`` pushed
    ``ulp_error`` float32 ulps further (the spec allows 2), and 0 for ``2**126 < |d| < 2**128``."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        d = np.float32(1) + np.exp(-g)
        if not approx:
            silu = g / d
        else:
            silu = g * (np.float32(1) / d)
            silu = np.where((np.abs(d) > 2.0 ** 126) & np.isfinite(d), np.float32(0), silu)
            for _ in range(ulp_error):                       # nudge away from zero, 1 ulp each
                silu = np.nextafter(silu, np.copysign(np.float32(np.inf), silu))
        return (silu * u).astype(np.float32)


def division_error_study(out_dtype=np.float16, n: int = 1 << 20, seed: int = 0) -> dict:
    """Max error against float64 of a 16-bit (or float32) output with exact vs approximate
    division (plain ``g * (1/d)``, and pushed 2 ulp away from zero: the spec's bound), on
    random gates/ups (normal, scale 3) and on extreme gates (|g| <= 87, up to where ``1 + exp(-g)`` nears 2**126; beyond it both
    divisions give |silu| < 1e-36 or 0, zero in float16, and float32's exp overflows at
    -88.7 anyway -- ``test_extreme_gates_give_no_nan`` covers that range). Returns
    ``{set: {"exact": err, "approx": err, "approx+2ulp": err}}``, each error the largest
    ``|out - ref|`` in units of the output dtype's ulp at the reference value. For float16 all
    three are 0.500-0.501 ulp (the rounding itself); for float32 outputs approximate division
    doubles the error (3.5 -> 7.7 ulp), hence the exact default there.
    CPU only (a model of the GPU arithmetic, see ``_silu_mul_f32_model``)."""
    rng = np.random.default_rng(seed)
    out_dtype = np.dtype(out_dtype)
    sets = {"random": (rng.standard_normal(n) * 3, rng.standard_normal(n) * 3),
            "extreme": (rng.uniform(-87, 87, n), rng.standard_normal(n) * 3)}
    result = {}
    for name, (g, u) in sets.items():
        g32, u32 = g.astype(np.float32), u.astype(np.float32)
        ref = g32.astype(np.float64) / (1 + np.exp(-g32.astype(np.float64))) * u32
        step = np.spacing(np.abs(ref).astype(out_dtype)).astype(np.float64)  # output ulp at ref
        step = np.maximum(step, np.spacing(np.zeros(1, out_dtype)).astype(np.float64))
        errs = {}
        for label, approx, ulps in (("exact", False, 0), ("approx", True, 0),
                                    ("approx+2ulp", True, 2)):
            y = _silu_mul_f32_model(g32, u32, approx, ulps).astype(out_dtype).astype(np.float64)
            errs[label] = float(np.max(np.abs(y - ref) / step))
        result[name] = errs
    return result


# ---------------------------------------------------------------------------------------------
# Compile cases: the specializations the notebook and the benchmark use
# ---------------------------------------------------------------------------------------------

def compile_cases():
    from .compile import array
    f16, f32, bf16 = array(ct.float16, 2), array(ct.float32, 2), array(ct.bfloat16, 2)
    tiled = silu_and_mul_kernel
    return [
        ("row_f16_n2048", silu_and_mul_row_kernel, [f16, f16, f16, 2048]),
        ("row_f32_n128", silu_and_mul_row_kernel, [f32, f32, f32, 128]),
        # the default rule's shapes (choose_tiles), then overrides, dtypes and hints
        ("tiled_f16_2x512", tiled, [f16, f16, f16, 2, 512, False, False, 0, True]),
        ("tiled_f16_2x512_approx", tiled, [f16, f16, f16, 2, 512, True, False, 0, True]),  # default
        ("tiled_f16_128x8_tail_approx", tiled, [f16, f16, f16, 128, 8, True, False, 0, True]),
        ("tiled_f16_4x256", tiled, [f16, f16, f16, 4, 256, False, False, 0, True]),
        ("tiled_f16_1x1024", tiled, [f16, f16, f16, 1, 1024, False, False, 0, True]),
        ("tiled_f16_8x128", tiled, [f16, f16, f16, 8, 128, False, False, 0, True]),
        ("tiled_f16_16x256", tiled, [f16, f16, f16, 16, 256, False, False, 0, True]),
        ("tiled_f16_1x64", tiled, [f16, f16, f16, 1, 64, False, False, 0, True]),
        ("tiled_f16_2x512_approx_ftz", tiled, [f16, f16, f16, 2, 512, True, True, 0, True]),
        ("tiled_f32_2x512", tiled, [f32, f32, f32, 2, 512, False, False, 0, True]),
        ("tiled_bf16_2x512", tiled, [bf16, bf16, bf16, 2, 512, False, False, 0, True]),
        ("tiled_f32_to_f16_4x256", tiled, [f32, f32, f16, 4, 256, False, True, 0, True]),
        ("tiled_f16_2x512_latency10_no_tma", tiled, [f16, f16, f16, 2, 512, False, False, 10,
                                                     False]),
        ("tiled_f16_2x512_occupancy8_ctas2", hinted_kernel(8, 2),
         [f16, f16, f16, 2, 512, False, False, 0, True]),
    ]
