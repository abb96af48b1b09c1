"""The emulator's Tile: an immutable NumPy array plus its cuTile dtype, and the elementwise
operations (arithmetic, comparisons, bitwise, math) with cuTile's typing rules.

Python ``int``/``float``/``bool`` operands are cuTile's *loosely typed constants*: a float16
tile times ``2.0`` stays float16, an int8 tile plus ``1`` stays int8. Two tiles of different
dtypes are promoted by cuTile's promotion table (e.g. float16 + float32 -> float32,
int32 + float16 -> float16, uint8 + int8 -> error).
"""
from __future__ import annotations

import math

import numpy as np

import cuda.tile as ct

from . import _dtypes as D

_SCALAR_TYPES = (bool, int, float)


class Tile:
    """A tile inside an emulated kernel: immutable, with a cuTile ``dtype`` and a ``shape``."""

    __slots__ = ("_data", "_dtype", "_poison")
    __array_ufunc__ = None  # numpy scalars on the left defer to our reflected operators
    __hash__ = None

    def __init__(self, data: np.ndarray, dtype: ct.DType, poison: np.ndarray | None = None):
        self._data = data
        self._dtype = dtype
        # strict mode only: True where the value derives from UNDETERMINED out-of-bounds padding
        self._poison = poison

    # ---- attributes -------------------------------------------------------------------
    @property
    def dtype(self) -> ct.DType:
        return self._dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def ndim(self) -> int:
        return self._data.ndim

    def numpy(self) -> np.ndarray:
        """A NumPy copy of the values (emulator only; handy when debugging)."""
        return np.array(self._data)

    # ---- methods documented on ct.Tile -------------------------------------------------
    def item(self) -> "Tile":
        from . import _ops
        return _ops.reshape(self, ())

    def extract(self, index, shape) -> "Tile":
        from . import _ops
        return _ops.extract(self, index, shape)

    def insert(self, index, value) -> "Tile":
        from . import _ops
        return _ops.insert(self, index, value)

    def reshape(self, shape) -> "Tile":
        from . import _ops
        return _ops.reshape(self, shape)

    def permute(self, axes) -> "Tile":
        from . import _ops
        return _ops.permute(self, axes)

    def transpose(self, axis0=None, axis1=None) -> "Tile":
        from . import _ops
        return _ops.transpose(self, axis0, axis1)

    def astype(self, dtype, *, rounding_mode=None) -> "Tile":
        return astype(self, dtype, rounding_mode=rounding_mode)

    def __getitem__(self, index) -> "Tile":
        return expand_dims_by_index(self, index)

    def __iter__(self):
        raise TypeError("a tile is not iterable inside a kernel; use ct.extract() / .item() "
                        "or ct.static_iter over constant indices")

    # ---- scalar (0-d) tiles behave like Python numbers in control flow ------------------
    def _scalar(self, what: str):
        if self._data.ndim != 0:
            raise TypeError(
                f"{what} needs a scalar (0-d) tile, got a tile of shape {self.shape}; for an "
                "elementwise choice use ct.where(), for a reduction ct.sum()/ct.max()...")
        check_unpoisoned(self, what)
        return self._data.item()

    def __bool__(self) -> bool:
        return bool(self._scalar("a truth value (if/while/and/or/not)"))

    def __index__(self) -> int:
        if not (D.is_integral(self._dtype) or D.is_boolean(self._dtype)):
            raise TypeError(f"a {self._dtype} tile cannot be used as an index; "
                            "cast it with .astype(ct.int32)")
        return int(self._scalar("an index"))

    def __int__(self) -> int:
        return int(self._scalar("int()"))

    def __float__(self) -> float:
        return float(self._scalar("float()"))

    # ---- printing (the GPU's print formats ints with %d and floats with %f) -------------
    def __str__(self) -> str:
        return _format_values(self, None)

    def __format__(self, spec: str) -> str:
        return _format_values(self, spec or None)

    def __repr__(self) -> str:  # values, so print((t, u)) reads like the GPU's output
        return _format_values(self, None)

    # ---- operators ------------------------------------------------------------------------
    def __add__(self, o): return _op(add, self, o)
    def __radd__(self, o): return _op(add, o, self)
    def __sub__(self, o): return _op(sub, self, o)
    def __rsub__(self, o): return _op(sub, o, self)
    def __mul__(self, o): return _op(mul, self, o)
    def __rmul__(self, o): return _op(mul, o, self)
    def __truediv__(self, o): return _op(truediv, self, o)
    def __rtruediv__(self, o): return _op(truediv, o, self)
    def __floordiv__(self, o): return _op(floordiv, self, o)
    def __rfloordiv__(self, o): return _op(floordiv, o, self)
    def __mod__(self, o): return _op(mod, self, o)
    def __rmod__(self, o): return _op(mod, o, self)
    def __pow__(self, o): return _op(pow_, self, o)
    def __rpow__(self, o): return _op(pow_, o, self)
    def __divmod__(self, o): return _op(divmod_, self, o)
    def __rdivmod__(self, o): return _op(divmod_, o, self)
    def __and__(self, o): return _op(bitwise_and, self, o)
    def __rand__(self, o): return _op(bitwise_and, o, self)
    def __or__(self, o): return _op(bitwise_or, self, o)
    def __ror__(self, o): return _op(bitwise_or, o, self)
    def __xor__(self, o): return _op(bitwise_xor, self, o)
    def __rxor__(self, o): return _op(bitwise_xor, o, self)
    def __lshift__(self, o): return _op(bitwise_lshift, self, o)
    def __rlshift__(self, o): return _op(bitwise_lshift, o, self)
    def __rshift__(self, o): return _op(bitwise_rshift, self, o)
    def __rrshift__(self, o): return _op(bitwise_rshift, o, self)
    def __lt__(self, o): return _op(less, self, o)
    def __le__(self, o): return _op(less_equal, self, o)
    def __gt__(self, o): return _op(greater, self, o)
    def __ge__(self, o): return _op(greater_equal, self, o)
    def __eq__(self, o): return _op(equal, self, o)
    def __ne__(self, o): return _op(not_equal, self, o)

    def __matmul__(self, o):
        from . import _ops
        return _ops.matmul(self, o) if isinstance(o, Tile) else NotImplemented

    def __rmatmul__(self, o):
        from . import _ops
        return _ops.matmul(o, self) if isinstance(o, Tile) else NotImplemented

    def __neg__(self): return negative(self)
    def __pos__(self): return self if not D.is_boolean(self._dtype) else astype(self, ct.int32)
    def __invert__(self): return bitwise_not(self)
    def __abs__(self): return abs_(self)


_OPERAND_TYPES = (Tile, bool, int, float)


def _op(fn, x, y):
    if not isinstance(x, _OPERAND_TYPES) or not isinstance(y, _OPERAND_TYPES):
        return NotImplemented
    return fn(x, y)


# ---- strict mode: values derived from UNDETERMINED out-of-bounds padding ------------------

def taint(r: Tile, *operands) -> Tile:
    """Mark ``r`` poisoned wherever any (broadcast) operand is poisoned; returns ``r``."""
    m = None
    for o in operands:
        if type(o) is Tile and o._poison is not None:
            m = o._poison if m is None else (m | o._poison)
    if m is not None:
        r._poison = np.broadcast_to(m, r._data.shape)
    return r


def check_unpoisoned(t, what: str, where_used=None) -> None:
    """Strict mode: raise if ``t`` (optionally only where ``where_used``) holds poisoned values."""
    if type(t) is not Tile or t._poison is None:
        return
    bad = t._poison if where_used is None else (t._poison & where_used)
    if np.any(bad):
        from ._context import where
        raise IndexError(
            f"{what} uses {int(np.count_nonzero(bad))} value(s) computed from a load outside the "
            f"array with UNDETERMINED padding ({where()}; strict mode). Pass padding_mode="
            "ct.PaddingMode.ZERO (or another mode) to ct.load, or mask them with ct.where")


# ---- formatting ------------------------------------------------------------------------------

def _format_values(t: Tile, spec: str | None) -> str:
    dtype = t._dtype
    if D.is_float(dtype):
        values = t._data.astype(np.float64)
        default = "f"
    else:
        values = t._data.astype(np.int64) if D.is_boolean(dtype) else t._data
        default = "d"
    if spec is None:
        spec = default
    elif not spec[-1].isalpha():  # no presentation type: infer it from the dtype, as the GPU
        spec = spec + default

    def fmt(v):
        if isinstance(v, list):
            return "[" + ", ".join(fmt(e) for e in v) + "]"
        return format(v, spec)

    return fmt(values.tolist())


# ---- operand handling ------------------------------------------------------------------------

def _dtype_of(x, op: str):
    if isinstance(x, Tile):
        return x._dtype
    if isinstance(x, _SCALAR_TYPES):
        return x
    if isinstance(x, np.generic):
        raise TypeError(f"ct.{op}: NumPy scalar {x!r} is not a tile; pass Python numbers "
                        "(or build a tile with ct.full)")
    raise TypeError(f"ct.{op}: expected a tile or a Python number, got {type(x).__name__}")


def as_tile(x, dtype=None, *, op: str = "op") -> Tile:
    """``x`` as a Tile; Python scalars become 0-d tiles of ``dtype`` (or their default dtype)."""
    if isinstance(x, Tile):
        return x if dtype is None or x._dtype == dtype else astype(x, dtype)
    d = dtype if dtype is not None else D.dtype_of_python_scalar(_dtype_of(x, op))
    return Tile(_const_array(x, d), d)


def _const_array(value, dtype) -> np.ndarray:
    """A Python number as a 0-d array of ``dtype`` (callers have checked that it fits)."""
    if dtype == ct.tfloat32:
        return D.round_tf32(np.asarray(value, dtype=np.float32))
    if isinstance(value, float) and D.is_integral(dtype):
        value = math.trunc(value)
    return np.array(value, dtype=D.storage(dtype))


_CONSTANTS: dict = {}


def _in_compute(x, dtype) -> np.ndarray:
    """The values of operand ``x`` converted to ``dtype`` and widened to its compute dtype."""
    cdt = D.compute(dtype)
    if type(x) is Tile:
        data = x._data if x._dtype == dtype else D.cast(x._data, x._dtype, dtype)
        return data if data.dtype == cdt else data.astype(cdt)
    if x == 0 and type(x) is float:  # keep the sign of -0.0 (it hashes like 0.0)
        data = _const_array(x, dtype)
        return data if data.dtype == cdt else data.astype(cdt)
    key = (type(x), x, dtype)
    hit = _CONSTANTS.get(key)
    if hit is None:
        data = _const_array(x, dtype)
        hit = data if data.dtype == cdt else data.astype(cdt)
        if len(_CONSTANTS) > 4096:
            _CONSTANTS.clear()
        _CONSTANTS[key] = hit
    return hit


def _result(values, dtype) -> Tile:
    if type(values) is not np.ndarray:
        values = np.asarray(values)
    st = D._STORAGE[dtype]
    if dtype == ct.tfloat32:
        values = D.round_tf32(values)
    elif values.dtype != st:
        values = values.astype(st)
    return Tile(values, dtype)


def _both_scalars(x, y) -> bool:
    return not isinstance(x, Tile) and not isinstance(y, Tile)


# ---- arithmetic ------------------------------------------------------------------------------

_ARITHMETIC = frozenset(d for d in D._STORAGE if not D.is_boolean(d))

try:  # cuTile's own table of which ops accept rounding_mode= / flush_to_zero=
    from cuda.tile._ir.ops_utils import BINOP_REGISTRY as _BINOPS, UNARYOP_REGISTRY as _UNOPS
except ImportError:  # pragma: no cover - internal layout of another cuda-tile version
    _BINOPS, _UNOPS = {}, {}


def check_rounding(fn: str, rounding_mode, flush_to_zero, dtype) -> None:
    """Reject ``rounding_mode``/``flush_to_zero`` where cuTile does (e.g. flush_to_zero on a
    float16 tile). Accepted values are then ignored by the emulator."""
    if rounding_mode is None and not flush_to_zero:
        return
    spec = _BINOPS.get(fn) or _UNOPS.get(fn)
    if spec is None:
        return
    if rounding_mode is not None:
        if not isinstance(rounding_mode, ct.RoundingMode):
            raise TypeError(f"ct.{fn}: rounding_mode must be a ct.RoundingMode, got "
                            f"{rounding_mode!r}")
        if rounding_mode not in spec.supported_rounding_modes:
            raise TypeError(f"ct.{fn}: rounding mode {rounding_mode.name} is not supported")
        if not D.is_unrestricted_float(dtype):
            raise TypeError(f"ct.{fn}: rounding_mode needs a float tile, got {dtype}")
        if rounding_mode in (ct.RoundingMode.APPROX, ct.RoundingMode.FULL) and \
                dtype != ct.float32:
            raise TypeError(f"ct.{fn}: rounding mode {rounding_mode.name} needs a float32 tile, "
                            f"got {dtype}")
    if flush_to_zero:
        if not spec.support_flush_to_zero:
            raise TypeError(f"ct.{fn}: flush_to_zero is not supported")
        if dtype != ct.float32:
            raise TypeError(f"ct.{fn}: flush_to_zero needs a float32 tile, got {dtype}")


def _arith(name: str, np_fn, py_fn, x, y, *, force_float=False, rounding_mode=None,
           flush_to_zero=False, fn=None) -> Tile:
    x_tile, y_tile = type(x) is Tile, type(y) is Tile
    if x_tile and y_tile and x._dtype == y._dtype and not force_float and \
            rounding_mode is None and not flush_to_zero:
        dtype = x._dtype  # fast path: same dtype, no promotion
        if dtype not in _ARITHMETIC:
            raise TypeError(f"ct.{name} does not support {dtype} tiles; cast them with "
                            ".astype(ct.int32) first")
        if name in _INT_CHECKED and not D.is_float(dtype):
            _check_int_op(name, dtype)
        a, b = x._data, y._data
        if dtype in D._NARROW_FLOATS:
            a, b = a.astype(np.float32), b.astype(np.float32)
        r = _result(np_fn(a, b), dtype)
        return r if x._poison is None and y._poison is None else taint(r, x, y)
    xd, yd = _dtype_of(x, name), _dtype_of(y, name)
    if not x_tile and not y_tile:
        return py_fn(x, y)
    dtype = D.promote(xd, yd, force_float=force_float)
    if dtype not in _ARITHMETIC:
        raise TypeError(f"ct.{name} does not support bool tiles; cast them with "
                        ".astype(ct.int32) first")
    if name in _INT_CHECKED and not D.is_float(dtype):
        _check_int_op(name, dtype)
    check_rounding(fn or name, rounding_mode, flush_to_zero, dtype)
    return taint(_result(np_fn(_in_compute(x, dtype), _in_compute(y, dtype)), dtype), x, y)


_INT_CHECKED = frozenset(("pow", "floordiv"))


def _check_int_op(name, dtype):
    if name == "pow":
        raise TypeError(f"ct.pow is not supported for integer tiles ({dtype}) by cuTile; "
                        "use a float base (an integer exponent is fine)")
    if name == "floordiv" and not D.is_signed(dtype):
        raise NotImplementedError(
            f"// on unsigned {dtype} tiles does not compile with cuTile 1.7 (tileiras rejects "
            "it); cast to a signed integer type first")


def _absorb_infinities(r, x, y):
    """Strict mode: finite padding plus or minus an infinity is that infinity whatever the
    padding was, so ``t + ct.where(i < n, 0, -inf)`` clears the marks it masks."""
    if type(r) is not Tile or r._poison is None:
        return r
    for a, b in ((x, y), (y, x)):
        if type(a) is Tile and a._poison is not None and not D.is_integral(r._dtype):
            other = b._data if type(b) is Tile else np.asarray(b)
            clean = np.isinf(other.astype(np.float64))
            if type(b) is Tile and b._poison is not None:
                clean = clean & ~b._poison
            r._poison = np.broadcast_to(r._poison & ~clean, r.shape)
    return r


def add(x, y, /, *, rounding_mode=None, flush_to_zero=False):
    return _absorb_infinities(_arith("add", np.add, lambda a, b: a + b, x, y,
                                     rounding_mode=rounding_mode, flush_to_zero=flush_to_zero),
                              x, y)


def sub(x, y, /, *, rounding_mode=None, flush_to_zero=False):
    return _absorb_infinities(_arith("sub", np.subtract, lambda a, b: a - b, x, y,
                                     rounding_mode=rounding_mode, flush_to_zero=flush_to_zero),
                              x, y)


def mul(x, y, /, *, rounding_mode=None, flush_to_zero=False):
    return _arith("mul", np.multiply, lambda a, b: a * b, x, y, rounding_mode=rounding_mode,
                  flush_to_zero=flush_to_zero)


def truediv(x, y, /, *, rounding_mode=None, flush_to_zero=False):
    return _arith("truediv", np.true_divide, lambda a, b: a / b, x, y, force_float=True,
                  rounding_mode=rounding_mode, flush_to_zero=flush_to_zero)


def _floordiv_np(a, b):
    if a.dtype.kind == "f":
        return np.floor(a / b)
    return np.floor_divide(a, b)


def floordiv(x, y, /):
    if not _both_scalars(x, y) and D.is_float(D.promote(_dtype_of(x, "floordiv"),
                                                         _dtype_of(y, "floordiv"))):
        return floor(truediv(x, y))  # the quotient is rounded to the dtype, then floored
    return _arith("floordiv", _floordiv_np, lambda a, b: a // b, x, y)


def mod(x, y, /):
    return _arith("mod", np.remainder, lambda a, b: a % b, x, y)


def _pow_np(a, b):
    if a.dtype.kind in "iu" and np.any(b < 0):
        raise ValueError("ct.pow: integer tiles cannot be raised to negative integer powers")
    return np.power(a, b)


def pow_(x, y, /):
    # cuTile: a float base with an integer exponent keeps the base dtype (FPowI)
    if isinstance(x, Tile) and D.is_float(x._dtype) and (
            (isinstance(y, Tile) and D.is_integral(y._dtype))
            or (isinstance(y, int) and not isinstance(y, bool))):
        exponent = y._data if isinstance(y, Tile) else np.asarray(y)
        r = np.power(x._data.astype(D.compute(x._dtype)), exponent.astype(np.float64))
        return taint(_result(r, x._dtype), x, y)
    return _arith("pow", _pow_np, lambda a, b: a ** b, x, y)


def divmod_(x, y, /):
    if _both_scalars(x, y):
        return divmod(x, y)
    dtype = D.promote(_dtype_of(x, "divmod"), _dtype_of(y, "divmod"))
    if D.is_float(dtype):
        raise TypeError("divmod() is not implemented for floating point tiles in cuTile")
    return floordiv(x, y), mod(x, y)


def minimum(x, y, /, *, flush_to_zero=False, propagate_nan=False):
    return _arith("minimum", np.minimum if propagate_nan else np.fmin, min, x, y,
                  flush_to_zero=flush_to_zero, fn="min")


def maximum(x, y, /, *, flush_to_zero=False, propagate_nan=False):
    return _arith("maximum", np.maximum if propagate_nan else np.fmax, max, x, y,
                  flush_to_zero=flush_to_zero, fn="max")


def atan2(x1, x2, /):
    return _arith("atan2", np.arctan2, math.atan2, x1, x2, force_float=True)


def cdiv(x, y, /):
    return -((-x) // y)


# ---- comparisons -----------------------------------------------------------------------------

def _compare(name, np_fn, py_fn, x, y) -> Tile:
    xd, yd = _dtype_of(x, name), _dtype_of(y, name)
    if _both_scalars(x, y):
        return py_fn(x, y)
    dtype = D.promote(xd, yd)
    a, b = _in_compute(x, dtype), _in_compute(y, dtype)
    return taint(Tile(np.asarray(np_fn(a, b)), ct.bool_), x, y)


def equal(x, y, /): return _compare("equal", np.equal, lambda a, b: a == b, x, y)
def not_equal(x, y, /): return _compare("not_equal", np.not_equal, lambda a, b: a != b, x, y)
def less(x, y, /): return _compare("less", np.less, lambda a, b: a < b, x, y)
def less_equal(x, y, /): return _compare("less_equal", np.less_equal, lambda a, b: a <= b, x, y)
def greater(x, y, /): return _compare("greater", np.greater, lambda a, b: a > b, x, y)


def greater_equal(x, y, /):
    return _compare("greater_equal", np.greater_equal, lambda a, b: a >= b, x, y)


# ---- bitwise ---------------------------------------------------------------------------------

def _bitwise(name, np_fn, py_fn, x, y, *, shift=False) -> Tile:
    xd, yd = _dtype_of(x, name), _dtype_of(y, name)
    if _both_scalars(x, y):
        return py_fn(x, y)
    cx = xd if isinstance(xd, ct.DType) else D.dtype_of_python_scalar(xd)
    cy = yd if isinstance(yd, ct.DType) else D.dtype_of_python_scalar(yd)
    if shift:
        for d, side in ((cx, "left"), (cy, "right")):
            if not D.is_integral(d):
                raise TypeError(f"ct.{name}: bitwise shift requires an integer {side}-hand side, "
                                f"got {d}")
    else:
        for d in (cx, cy):
            if not (D.is_integral(d) or D.is_boolean(d)):
                raise TypeError(f"ct.{name}: bitwise operations require integers or booleans, "
                                f"got {d}; use ct.bitcast() for floats")
        x_loose, y_loose = not isinstance(x, Tile), not isinstance(y, Tile)
        if x_loose == y_loose and cx != cy:
            raise TypeError(f"ct.{name}: bitwise operands must have the same dtype, got "
                            f"{cx} and {cy}")
        if {cx, cy} == {ct.bool_, ct.int8}:
            raise TypeError(f"ct.{name} does not support bool and int8 together")
    dtype = D.promote(xd, yd)
    a, b = _in_compute(x, dtype), _in_compute(y, dtype)
    return taint(_result(np_fn(a, b), dtype), x, y)


def bitwise_and(x, y, /): return _bitwise("bitwise_and", np.bitwise_and, lambda a, b: a & b, x, y)
def bitwise_or(x, y, /): return _bitwise("bitwise_or", np.bitwise_or, lambda a, b: a | b, x, y)
def bitwise_xor(x, y, /): return _bitwise("bitwise_xor", np.bitwise_xor, lambda a, b: a ^ b, x, y)


def bitwise_lshift(x, y, /):
    return _bitwise("bitwise_lshift", np.left_shift, lambda a, b: a << b, x, y, shift=True)


def bitwise_rshift(x, y, /):
    return _bitwise("bitwise_rshift", np.right_shift, lambda a, b: a >> b, x, y, shift=True)


# ---- unary -----------------------------------------------------------------------------------

# how each unary op treats (bool, int, float) inputs, as in cuTile: "float" converts to
# float32, "keep" keeps the dtype, "int" converts to int32, None is an error
_UNARY_FLOAT = ("float", "float", "keep")
_UNARY_STRICT_FLOAT = (None, None, "keep")
_UNARY_INT_FLOAT = ("int", "keep", "keep")
_UNARY_BOOL_INT = ("keep", "keep", None)
_UNARY_ANYTHING = ("keep", "keep", "keep")


def _unary(name, np_fn, py_fn, behavior, x, rounding_mode=None, flush_to_zero=False) -> Tile:
    if not isinstance(x, Tile):
        _dtype_of(x, name)
        return py_fn(x)
    dtype = x._dtype
    kind = 0 if D.is_boolean(dtype) else 1 if D.is_integral(dtype) else 2
    rule = behavior[kind]
    if rule is None:
        raise TypeError(f"ct.{name} does not support {dtype} tiles")
    if rule == "float":
        dtype = ct.float32
    elif rule == "int":
        dtype = ct.int32
    check_rounding(name, rounding_mode, flush_to_zero, dtype)
    return taint(_result(np_fn(_in_compute(x, dtype)), dtype), x)


def _py_float(fn):
    def wrapped(v):
        with np.errstate(all="ignore"):
            return float(fn(np.float64(v)))
    return wrapped


def _rsqrt(a):
    return 1.0 / np.sqrt(a)


def exp(x, /, *, rounding_mode=None):
    return _unary("exp", np.exp, _py_float(np.exp), _UNARY_FLOAT, x, rounding_mode)


def exp2(x, /, *, flush_to_zero=False):
    return _unary("exp2", np.exp2, _py_float(np.exp2), _UNARY_FLOAT, x, None, flush_to_zero)



def log(x, /): return _unary("log", np.log, _py_float(np.log), _UNARY_FLOAT, x)


def log2(x, /): return _unary("log2", np.log2, _py_float(np.log2), _UNARY_FLOAT, x)


def sqrt(x, /, *, rounding_mode=None, flush_to_zero=False):
    return _unary("sqrt", np.sqrt, _py_float(np.sqrt), _UNARY_FLOAT, x, rounding_mode,
                  flush_to_zero)


def rsqrt(x, /, *, flush_to_zero=False):
    return _unary("rsqrt", _rsqrt, _py_float(_rsqrt), _UNARY_FLOAT, x, None, flush_to_zero)


def sin(x, /): return _unary("sin", np.sin, _py_float(np.sin), _UNARY_FLOAT, x)
def cos(x, /): return _unary("cos", np.cos, _py_float(np.cos), _UNARY_FLOAT, x)
def tan(x, /): return _unary("tan", np.tan, _py_float(np.tan), _UNARY_FLOAT, x)
def sinh(x, /): return _unary("sinh", np.sinh, _py_float(np.sinh), _UNARY_FLOAT, x)
def cosh(x, /): return _unary("cosh", np.cosh, _py_float(np.cosh), _UNARY_FLOAT, x)


def tanh(x, /, *, rounding_mode=None):
    return _unary("tanh", np.tanh, _py_float(np.tanh), _UNARY_FLOAT, x, rounding_mode)


def floor(x, /): return _unary("floor", np.floor, math.floor, _UNARY_STRICT_FLOAT, x)
def ceil(x, /): return _unary("ceil", np.ceil, math.ceil, _UNARY_STRICT_FLOAT, x)
def _abs_bits(a):
    """abs as the GPU computes it: an unsigned tile's bits are read as signed (measured on an
    H100: uint32 3360027939 -> 934939357)."""
    if a.dtype.kind == "u":
        return np.abs(a.view(a.dtype.str.replace("u", "i"))).view(a.dtype)
    return np.abs(a)


def abs_(x, /): return _unary("abs", _abs_bits, abs, _UNARY_ANYTHING, x)
def negative(x, /): return _unary("neg", np.negative, lambda v: -v, _UNARY_INT_FLOAT, x)


def bitwise_not(x, /):
    return _unary("bitwise_not", np.invert, lambda v: ~v, _UNARY_BOOL_INT, x)


def isnan(x, /):
    if not isinstance(x, Tile):
        return isinstance(x, float) and math.isnan(x)
    if not D.is_float(x._dtype):
        return taint(Tile(np.zeros(x.shape, np.bool_), ct.bool_), x)
    return taint(Tile(np.asarray(np.isnan(x._data.astype(D.compute(x._dtype)))), ct.bool_), x)


# ---- conversion and selection ----------------------------------------------------------------

def astype(x, dtype, /, *, rounding_mode=None) -> Tile:
    """Convert to ``dtype``: float->float rounds to nearest even or by ``rounding_mode``
    (RZ/RM/RP for float16/bfloat16/float32/float64 targets), float->int truncates toward zero
    as on the GPU."""
    dtype = D.as_ct_dtype(dtype)
    if not isinstance(x, Tile):
        x = as_tile(x, op="astype")
    if x._dtype == dtype:
        return x
    if rounding_mode is not None and not (D.is_float(x._dtype) and D.is_float(dtype)):
        raise TypeError("ct.astype: rounding_mode is only valid for float to float conversions")
    data = np.asarray(D.cast(x._data, x._dtype, dtype))
    if rounding_mode not in (None, ct.RoundingMode.RN):
        data = _directed_rounding(x._data, data, dtype, rounding_mode)
    return Tile(data, dtype, x._poison)


_DIRECTED = {ct.RoundingMode.RZ: "zero", ct.RoundingMode.RM: "down", ct.RoundingMode.RP: "up"}
_DIRECTED_TARGETS = (ct.float16, ct.bfloat16, ct.float32, ct.float64)


def _directed_rounding(src: np.ndarray, nearest: np.ndarray, dtype, mode) -> np.ndarray:
    """Fix a round-to-nearest conversion to round toward zero / down / up: where the nearest
    value lies on the wrong side of the exact one, step one unit in the last place back."""
    if mode not in _DIRECTED or dtype not in _DIRECTED_TARGETS:
        raise NotImplementedError(f"ct.astype with rounding_mode={mode.name} to {dtype} is not "
                                  "supported by the CPU emulator (RN, RZ, RM and RP to float16, "
                                  "bfloat16, float32 and float64 are); run on a GPU")
    exact = src.astype(np.float64)
    got = nearest.astype(np.float64)
    direction = _DIRECTED[mode]
    if direction == "zero":
        wrong = np.abs(got) > np.abs(exact)
    elif direction == "down":
        wrong = got > exact
    else:
        wrong = got < exact
    wrong &= ~np.isnan(exact) & ~np.isinf(exact)
    if not wrong.any():
        return nearest
    bits = nearest.copy().view(f"u{nearest.itemsize}")
    # sign-magnitude: toward zero is one code less; away from zero one code more
    toward_zero = (direction == "zero") | ((direction == "down") & (got > 0)) | \
        ((direction == "up") & (got < 0))
    one = bits.dtype.type(1)
    sign = bits.dtype.type(1 << (8 * nearest.itemsize - 1))
    zero = got == 0  # a zero stepped away from zero becomes the smallest subnormal
    stepped = np.where(toward_zero, bits - one, np.where(zero, (bits & sign) | one, bits + one))
    if direction != "zero":  # a zero stepped down (up) takes the sign of the direction
        stepped = np.where(zero, (sign if direction == "down" else 0) | one, stepped)
    bits = np.where(wrong, stepped, bits).astype(bits.dtype)
    return bits.view(nearest.dtype)


def where(cond, x, y, /) -> Tile:
    """Elementwise ``x if cond else y`` with cuTile's promotion of ``x`` and ``y``."""
    c = as_tile(cond, op="where") if not isinstance(cond, Tile) else cond
    if not D.is_boolean(c._dtype):
        c = astype(c, ct.bool_)
    xd, yd = _dtype_of(x, "where"), _dtype_of(y, "where")
    dtype = D.promote(xd, yd)
    a, b = _in_compute(x, dtype), _in_compute(y, dtype)
    r = _result(np.where(c._data, a, b), dtype)
    px, py = (o._poison if type(o) is Tile else None for o in (x, y))
    if px is not None or py is not None or c._poison is not None:
        # a poisoned value only matters where it is selected (or where it decides)
        pick = np.where(c._data, False if px is None else px, False if py is None else py)
        r._poison = np.broadcast_to(pick if c._poison is None else pick | c._poison,
                                    r._data.shape)
    return r


def expand_dims_by_index(t: Tile, index) -> Tile:
    """``t[:, None]`` style indexing: only ``None``, ``...`` and ``:`` are allowed in cuTile."""
    if not isinstance(index, tuple):
        index = (index,)
    for idx in index:
        if not (idx is None or idx is Ellipsis or (isinstance(idx, slice) and idx == slice(None))):
            raise TypeError(
                f"tile indexing accepts only None / ... / : (to add axes), got {idx!r}; "
                "directly indexing a tile is not supported: use ct.extract() or .item()")
    if sum(isinstance(i, slice) for i in index) > t.ndim:
        raise TypeError(f"tile is {t.ndim}-dimensional but {len(index)} axes were indexed")
    return Tile(t._data[index], t._dtype, None if t._poison is None else t._poison[index])
