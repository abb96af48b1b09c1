"""A CPU emulator for cuTile kernels, so the tutorial runs (slowly) without a GPU.

    from moe_tutorial import emulator
    emulator.launch(None, grid, kernel, (x_numpy, y_numpy, 1024))   # same call as ct.launch

How it works
    ``launch`` calls the kernel's original Python function once per block of the 1-, 2- or 3-D
    grid (``ct.bid(0)`` varies fastest). Every cuTile operation is a stub that asks the current
    ``cuda.tile`` DispatchMode to run it; while a launch runs, that mode is ``EmulatorMode``,
    which serves the call with NumPy. So the kernel code -- and every helper it calls -- runs
    unchanged: nothing is rewritten for the CPU. Inside a block all tile work is vectorized
    NumPy; only the block loop is Python.

Data model
    * NumPy array arguments become ``Array`` views (any strides; stores write into the
      caller's array). Lists and tuples of arrays work too.
    * Tiles are ``Tile`` objects: an immutable NumPy array plus a cuTile dtype, with operators,
      ``t[:, None]`` indexing, ``.astype``, ``.reshape``, ``.shape``, ``.dtype`` (a ct dtype).
    * Python numbers inside kernels and ``ct.Constant`` parameters are cuTile's *loosely
      typed* constants (a float16 tile * 2.0 stays float16). Run-time scalar parameters are
      typed as on the GPU: int -> int32 (int64 with ``ct.ScalarInt64``), float -> float32,
      bool -> bool_; they are 0-d tiles that work in ``if``/``range``.
    * ``ct.bid``, ``ct.num_blocks``, ``ct.num_tiles``, ``Array.shape``/``.strides`` return
      0-d int32 tiles (int64 shapes with ``ct.IndexedWithInt64``), as on the GPU, so index
      arithmetic wraps in 32 bits and promotes exactly as it does there.
    * Dtypes: bool, int8-int64, uint8-uint64, float16, bfloat16 / float8 / float4 (ml_dtypes),
      tfloat32 (float32 rounded to 10 mantissa bits), float32, float64.
    * Before the first launch of each specialisation (argument dtypes, ranks, constants),
      cuTile's own front end (not the tileiras backend) checks the kernel, so a program the GPU
      compiler rejects raises the same ``ct.TileTypeError``/``TileSyntaxError``/... with the
      same message here. ``MOE_TUTORIAL_EMULATOR_FRONTEND=0`` switches it off; the emulator's
      own checks (cuTile's promotion tables, TypeError) remain.

Approximations (documented, deliberate)
    * ``rounding_mode`` on arithmetic and ``flush_to_zero`` are accepted and ignored: NumPy
      rounds to nearest even and keeps subnormals. ``astype(..., rounding_mode=RZ/RM/RP)``
      is implemented for float16/bfloat16/float32/float64 targets and refused otherwise.
      float16/bfloat16 math is done in float32 and rounded to the tile's dtype, as the GPU
      does; ``mma``/``matmul`` sum products in float64 and
      round to the accumulator dtype (at least as accurate as fp32 tensor-core accumulation).
      ``sum`` of floats accumulates in float64; integer sums/products wrap in the tile width.
    * UNDETERMINED padding (the default for ``ct.load``) gets finite, non-zero stand-ins:
      1024.0 for floats (the largest finite value of float8_e4m3fn / float4_e2m1fn), the
      minimum value for signed ints, the maximum for unsigned, True for bool -- so a kernel
      that forgets to mask the padding gets visibly wrong results, while one that masks it
      (``t + ct.where(i < n, 0, -inf)`` before ``exp``/``sum``) is right, as on the GPU.
      Strict mode (below) flags padding values that reach a store or a result.
    * Out-of-bounds accesses with ``check_bounds=False`` raise IndexError (undefined on GPU).
    * Atomics run element by element in C order of the index tile (duplicates see each
      other's updates, as serialized atomics would); out-of-bounds RMW atomics return 0,
      ``atomic_cas`` returns ``expected`` there (as documented).
    * Float to int conversion truncates toward zero; out-of-range values saturate and NaN
      becomes 0 (undefined on the GPU). Float to bool is ``trunc(x) != 0``: the GPU converts
      through a 1-bit unsigned integer (so 0.5 -> False; outside [0, 2) it is undefined).
    * ``printf`` prints one line per call like the GPU, a tile as ``[a, b, ...]`` with Python
      % formatting per element; ``print`` formats ints with %d and floats with %f. Output of
      different blocks never interleaves.
    * Memory order/scope, ``latency``, ``allow_tma`` are accepted (range-checked) and ignored.
    * ``reduce``/``scan`` with a custom function call it element by element (slow but
      fine for small tiles); ``TiledView.num_tiles`` with ``traversal_steps`` counts the tile
      origins that start inside the array (16 elements, steps of 2: 8).
    * Unsupported operations raise NotImplementedError naming the operation; the list is in
      ``moe_tutorial/emulator/README.md``.
    * Also rejected as on the GPU: integer ``**`` (cuTile has no integer pow) and ``//`` on
      unsigned integers (tileiras 13.4 fails to compile it).

Strict mode (``MOE_TUTORIAL_EMULATOR_STRICT=1``, read at each launch)
    Raises IndexError naming the operation and the block when
    * a value computed from UNDETERMINED out-of-bounds padding is *used*: stored or scattered
      in bounds, used as an index or mask, or deciding control flow (``if``, ``range``).
      Padding is tracked through elementwise ops, reductions, scans, mma and shape ops, so
      the usual "load a partial tile, compute, store it back" pattern is fine, and
      ``ct.where(in_bounds, t, 0)`` clears it;
    * a gather reads out of bounds where no ``mask`` excludes the element (pass
      ``mask=...`` to say the padding value is intended);
    * a load or store tile lies entirely outside its array (undefined on the GPU).
"""
from ._context import STRICT_ENV
from ._frontend import FRONTEND_ENV
from ._launch import IMPLEMENTATIONS, EmulatorMode, launch
from ._memory import Array, TiledView
from ._tile import Tile

__all__ = ["launch", "Tile", "Array", "TiledView", "EmulatorMode", "STRICT_ENV", "FRONTEND_ENV",
           "supported_operations"]


def supported_operations() -> list[str]:
    """Names of the cuTile operations the emulator implements (``Class.method`` for methods)."""
    return sorted(IMPLEMENTATIONS)
