"""``launch``: run a cuTile kernel's Python function once per block with ``ct`` bound to the
emulator.

Every public cuTile operation (``ct.load``, ``ct.exp``, ...) is a stub whose wrapper asks the
current ``cuda.tile`` DispatchMode to run it. ``EmulatorMode`` answers with the NumPy
implementation registered below under the stub's name, or raises NotImplementedError naming
the operation. ``@ct.function`` helpers arrive the same way and are simply called.
"""
from __future__ import annotations

import builtins
import sys
import types

import numpy as np

import cuda.tile as ct
from cuda.tile._dispatch_mode import DispatchMode
from cuda.tile._execution import is_stub

from . import _branches
from . import _dtypes as D
from . import _frontend
from . import _memory as M
from . import _ops as O
from . import _tile as T
from ._context import state, strict_from_env
from ._tile import Tile

# stub qualified name -> emulator implementation
IMPLEMENTATIONS = {
    # blocks
    "bid": O.bid, "num_blocks": O.num_blocks, "num_tiles": M.num_tiles,
    "assume_divisible_by": O.assume_divisible_by,
    # memory
    "load": M.load, "store": M.store, "gather": M.gather, "scatter": M.scatter,
    "load_advanced_indexing": M.load_advanced_indexing,
    "store_advanced_indexing": M.store_advanced_indexing,
    "Slice.__init__": M.slice_init,
    "atomic_add": M.atomic_add, "atomic_max": M.atomic_max, "atomic_min": M.atomic_min,
    "atomic_xchg": M.atomic_xchg, "atomic_and": M.atomic_and, "atomic_or": M.atomic_or,
    "atomic_xor": M.atomic_xor, "atomic_cas": M.atomic_cas,
    # factories
    "arange": O.arange, "full": O.full, "zeros": O.zeros, "ones": O.ones, "astile": O.astile,
    # matmul
    "mma": O.mma, "matmul": O.matmul,
    # shapes and dtypes
    "reshape": O.reshape, "broadcast_to": O.broadcast_to, "expand_dims": O.expand_dims,
    "permute": O.permute, "transpose": O.transpose, "cat": O.cat, "extract": O.extract,
    "insert": O.insert, "astype": T.astype, "bitcast": O.bitcast,
    "pack_to_bytes": O.pack_to_bytes, "unpack_from_bytes": O.unpack_from_bytes,
    "Tile.item": lambda self: O.reshape(self, ()),
    # reductions and scans
    "sum": O.sum, "prod": O.prod, "max": O.max, "min": O.min, "argmax": O.argmax,
    "argmin": O.argmin, "reduce": O.reduce, "cumsum": O.cumsum, "cumprod": O.cumprod,
    "scan": O.scan,
    # elementwise
    "add": T.add, "sub": T.sub, "mul": T.mul, "truediv": T.truediv, "floordiv": T.floordiv,
    "mod": T.mod, "pow": T.pow_, "divmod": T.divmod_, "atan2": T.atan2,
    "minimum": T.minimum, "maximum": T.maximum,
    "bitwise_and": T.bitwise_and, "bitwise_or": T.bitwise_or, "bitwise_xor": T.bitwise_xor,
    "bitwise_lshift": T.bitwise_lshift, "bitwise_rshift": T.bitwise_rshift,
    "bitwise_not": T.bitwise_not,
    "equal": T.equal, "not_equal": T.not_equal, "less": T.less, "less_equal": T.less_equal,
    "greater": T.greater, "greater_equal": T.greater_equal,
    "exp": T.exp, "exp2": T.exp2, "log": T.log, "log2": T.log2, "sqrt": T.sqrt,
    "rsqrt": T.rsqrt, "sin": T.sin, "cos": T.cos, "tan": T.tan, "sinh": T.sinh,
    "cosh": T.cosh, "tanh": T.tanh, "floor": T.floor, "ceil": T.ceil, "abs": T.abs_,
    "negative": T.negative, "isnan": T.isnan, "where": T.where,
    # utilities
    "printf": O.printf, "print": O.print_, "assert_": O.assert_,
    "static_eval": O.static_eval, "static_assert": O.static_assert,
    "ensure_constant": O.ensure_constant,
    "grid_dependency_control_wait": O.no_op,
    "grid_dependency_control_launch_dependents": O.no_op,
}


def _unsupported(name: str):
    shown = name if "." in name else f"ct.{name}"
    return NotImplementedError(
        f"{shown} is not supported by the CPU emulator; run this kernel on a GPU "
        "(MOE_TUTORIAL_DEVICE=gpu) or rewrite it with supported operations")


class EmulatorMode(DispatchMode):
    """Serves every ``ct.xxx(...)`` call made while it is the current dispatch mode."""

    def __init__(self, patch_memo: dict | None = None):
        self._memo = patch_memo if patch_memo is not None else {}

    def call_tile_function_from_host(self, func, args, kwargs):
        if is_stub(func):
            impl = IMPLEMENTATIONS.get(func.__qualname__)
            if impl is None:
                raise _unsupported(func.__qualname__)
            return impl(*args, **kwargs)
        user_function = getattr(func, "__wrapped__", None)
        if user_function is None:  # pragma: no cover - every wrapper has __wrapped__
            raise _unsupported(getattr(func, "__qualname__", repr(func)))
        return _patched(user_function, self._memo)(*args, **kwargs)


# ---- builtins inside kernels -----------------------------------------------------------------
# cuTile maps min()/max() on tiles to ct.minimum/ct.maximum; we do the same by giving the
# kernel (and the plain Python helpers it calls by name) a builtins dict with these two.

def _tile_min(*args, **kwargs):
    if len(args) == 2 and not kwargs and any(isinstance(a, Tile) for a in args):
        return T.minimum(*args)
    return builtins.min(*args, **kwargs)


def _tile_max(*args, **kwargs):
    if len(args) == 2 and not kwargs and any(isinstance(a, Tile) for a in args):
        return T.maximum(*args)
    return builtins.max(*args, **kwargs)


_KERNEL_BUILTINS = dict(vars(builtins), min=_tile_min, max=_tile_max)


def _names(code: types.CodeType):
    yield from code.co_names
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from _names(c)


def _patched(func, memo: dict):
    """A copy of ``func`` whose builtins are ``_KERNEL_BUILTINS`` (memoized per launch)."""
    if not isinstance(func, types.FunctionType):
        return func
    hit = memo.get(func)
    if hit is not None:
        return hit
    glb = dict(func.__globals__)
    glb["__builtins__"] = _KERNEL_BUILTINS
    code, closure = func.__code__, func.__closure__
    merged = _branches.rewrite(func)
    if merged is not None:  # run-time ``if``s merge their branches' constants as on the GPU
        glb.update(_branches.HELPERS)
        cells = dict(zip(code.co_freevars, closure or ()))
        code, closure = merged, tuple(cells[v] for v in merged.co_freevars) or None
    new = types.FunctionType(code, glb, func.__name__, func.__defaults__, closure)
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__ = func.__qualname__
    memo[func] = new
    for name in set(_names(func.__code__)):
        value = glb.get(name)
        if isinstance(value, types.FunctionType) and not name.startswith("__"):
            glb[name] = _patched(value, memo)
    return new


# ---- arguments -------------------------------------------------------------------------------

def _scalar_arg(value, annotation, name):
    scalar_ann = getattr(annotation, "scalar", None)
    if isinstance(value, (bool, np.bool_)):
        return Tile(np.asarray(bool(value)), ct.bool_)
    if isinstance(value, (int, np.integer)):
        dtype = scalar_ann.dtype if scalar_ann is not None else ct.int32
        lo, hi = D.integer_range(dtype)
        if not lo <= int(value) <= hi:
            raise ValueError(f"launch: argument {name!r}={value} does not fit {dtype}; annotate "
                             "the parameter with ct.ScalarInt64 for 64-bit values")
        return Tile(np.asarray(int(value), dtype=D.storage(dtype)), dtype)
    # a Python float kernel argument is a float32 scalar on the GPU
    return Tile(np.asarray(float(value), dtype=np.float32), ct.float32)


def _convert_arg(value, annotation, name):
    constant = getattr(annotation, "constant", False)
    if isinstance(value, np.ndarray):
        if constant:
            raise TypeError(f"launch: argument {name!r} is annotated ct.Constant but is an array")
        array_ann = getattr(annotation, "array", None)
        return M.Array(value, array_ann.index_dtype if array_ann is not None else ct.int32)
    if isinstance(value, tuple):
        items = getattr(annotation, "items", None)
        each = getattr(annotation, "each", None)
        return tuple(_convert_arg(v, items[i] if items is not None else each, f"{name}[{i}]")
                     for i, v in enumerate(value))
    if isinstance(value, list):
        return [_convert_arg(v, None, f"{name}[{i}]") for i, v in enumerate(value)]
    if type(value).__module__.startswith("cupy"):
        raise TypeError(f"launch: argument {name!r} is a CuPy array; the CPU emulator takes "
                        "NumPy arrays (use moe_tutorial.launch to pick the backend)")
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        if constant:
            return value.item() if isinstance(value, np.generic) else value
        return _scalar_arg(value, annotation, name)
    return value  # dtypes, enums, strings, None: compile-time constants


def _grid3(grid) -> tuple[int, int, int]:
    if isinstance(grid, (int, np.integer)):
        grid = (grid,)
    grid = tuple(int(g) for g in grid)
    if not 1 <= len(grid) <= 3 or any(g < 1 for g in grid):
        raise ValueError(f"launch: grid must be 1 to 3 positive ints, got {grid}")
    return grid + (1,) * (3 - len(grid))


# ---- launch ----------------------------------------------------------------------------------

def launch(stream, grid, kernel, args) -> None:
    """Run ``kernel`` on NumPy arrays, once per block of ``grid`` (like ``ct.launch``; the
    stream is ignored). Blocks run one after another with ``ct.bid(0)`` varying fastest, then
    ``bid(1)``, then ``bid(2)``; correct kernels must not depend on this order."""
    if not isinstance(kernel, ct.kernel):
        raise TypeError(f"launch: expected a @ct.kernel, got {type(kernel).__name__}")
    gx, gy, gz = _grid3(grid)
    args = tuple(args)
    pyfunc = kernel._pyfunc
    params = list(kernel._annotated_function.pysig.parameters)
    annotations = kernel._annotated_function.parameter_annotations
    if len(args) != len(params):
        raise TypeError(f"launch: kernel {pyfunc.__name__!r} takes {len(params)} arguments "
                        f"({', '.join(params)}), got {len(args)}")
    kargs = tuple(_convert_arg(a, ann, n) for a, ann, n in zip(args, annotations, params))
    if _frontend.enabled():
        _frontend.check(kernel, args)

    memo: dict = {}
    run = _patched(pyfunc, memo)
    saved = (state.grid, state.bid, state.strict, state.kernel_name)
    state.grid, state.strict, state.kernel_name = (gx, gy, gz), strict_from_env(), pyfunc.__name__
    try:
        with EmulatorMode(memo).as_current(), np.errstate(all="ignore"):
            for z in range(gz):
                for y in range(gy):
                    for x in range(gx):
                        state.bid = (x, y, z)
                        try:
                            run(*kargs)
                        except Exception as e:
                            if isinstance(e, TypeError) and "DType cannot be constructed" in \
                                    str(e):
                                raise NotImplementedError(
                                    "dtype constructors such as ct.int16(5) are not supported by "
                                    f"the CPU emulator (block {(x, y, z)} of kernel "
                                    f"{pyfunc.__name__!r}); use ct.full((), 5, ct.int16) or "
                                    ".astype(...) instead, or run on a GPU") from e
                            _note(e, f"raised in block {(x, y, z)} of kernel "
                                     f"{pyfunc.__name__!r} (CPU emulator)")
                            raise
    finally:
        state.grid, state.bid, state.strict, state.kernel_name = saved


def _note(e: BaseException, note: str) -> None:
    if sys.version_info >= (3, 11):
        e.add_note(note)
