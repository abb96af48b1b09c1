"""cuTile dtypes <-> NumPy dtypes, and cuTile's arithmetic promotion rules.

Each emulator tile keeps its cuTile dtype next to NumPy data stored in a *storage* dtype:
the matching NumPy dtype, ``ml_dtypes`` for bfloat16 / float8 / float4, and float32 for
tfloat32 (rounded to 10 mantissa bits by ``astype``). Arithmetic on the narrow float types is
computed in float32 and rounded back to the tile's dtype, as the GPU does.
"""
from __future__ import annotations

import numpy as np

import cuda.tile as ct
from cuda.tile import _datatype as _ctd

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is a dependency of the project
    ml_dtypes = None

# cuTile dtype -> NumPy storage dtype
_STORAGE = {
    ct.bool_: np.dtype(np.bool_),
    ct.int8: np.dtype(np.int8), ct.int16: np.dtype(np.int16),
    ct.int32: np.dtype(np.int32), ct.int64: np.dtype(np.int64),
    ct.uint8: np.dtype(np.uint8), ct.uint16: np.dtype(np.uint16),
    ct.uint32: np.dtype(np.uint32), ct.uint64: np.dtype(np.uint64),
    ct.float16: np.dtype(np.float16), ct.float32: np.dtype(np.float32),
    ct.float64: np.dtype(np.float64),
    ct.tfloat32: np.dtype(np.float32),
}
if ml_dtypes is not None:
    _STORAGE.update({
        ct.bfloat16: np.dtype(ml_dtypes.bfloat16),
        ct.float8_e4m3fn: np.dtype(ml_dtypes.float8_e4m3fn),
        ct.float8_e5m2: np.dtype(ml_dtypes.float8_e5m2),
        ct.float8_e8m0fnu: np.dtype(ml_dtypes.float8_e8m0fnu),
        ct.float4_e2m1fn: np.dtype(ml_dtypes.float4_e2m1fn),
    })

# NumPy dtype -> cuTile dtype (tfloat32 has no NumPy dtype of its own)
_FROM_NUMPY = {np_dt: ct_dt for ct_dt, np_dt in _STORAGE.items() if ct_dt is not ct.tfloat32}

# float types whose arithmetic the emulator does in float32 and rounds back
_NARROW_FLOATS = frozenset(d for d in (ct.float16, ct.bfloat16, ct.tfloat32, ct.float8_e4m3fn,
                                       ct.float8_e5m2, ct.float8_e8m0fnu, ct.float4_e2m1fn))

is_float = _ctd.is_float
is_unrestricted_float = _ctd.is_unrestricted_float
is_integral = _ctd.is_integral
is_boolean = _ctd.is_boolean
is_signed = _ctd.is_signed
Category = _ctd.NumericDTypeCategory


def storage(dtype) -> np.dtype:
    """The NumPy dtype that holds elements of the cuTile dtype ``dtype``."""
    try:
        return _STORAGE[dtype]
    except KeyError:
        raise NotImplementedError(f"dtype {dtype} is not supported by the CPU emulator; "
                                  "run on a GPU") from None


def compute(dtype) -> np.dtype:
    """The NumPy dtype the emulator computes ``dtype`` arithmetic in."""
    return np.dtype(np.float32) if dtype in _NARROW_FLOATS else _STORAGE[dtype]


def from_numpy(np_dtype) -> ct.DType:
    """The cuTile dtype of a NumPy dtype (raises TypeError for unsupported ones)."""
    try:
        return _FROM_NUMPY[np.dtype(np_dtype)]
    except (KeyError, TypeError):
        raise TypeError(f"NumPy dtype {np_dtype} has no cuTile equivalent") from None


def as_ct_dtype(spec) -> ct.DType:
    """Accept a cuTile dtype, a NumPy dtype (or type), and return the cuTile dtype."""
    if isinstance(spec, ct.DType):
        return spec
    try:
        return from_numpy(np.dtype(spec))
    except TypeError:
        raise TypeError(f"expected a dtype such as ct.float32, got {spec!r}") from None


def _category(dtype) -> Category:
    cat = _ctd.numeric_dtype_category(dtype)
    return Category.Float if cat == Category.RestrictedFloat else cat


_CATEGORY = {d: _category(d) for d in _STORAGE}
_INT_RANGE = {d: (int(np.iinfo(st).min), int(np.iinfo(st).max))
              for d, st in _STORAGE.items() if st.kind in "iu"}


def category(dtype) -> Category:
    cat = _CATEGORY.get(dtype)
    return cat if cat is not None else _category(dtype)


def dtype_of_python_scalar(value) -> ct.DType:
    """The concrete dtype cuTile picks for a loosely typed Python constant."""
    if isinstance(value, bool):
        return ct.bool_
    if isinstance(value, int):
        if -2**31 <= value < 2**31:
            return ct.int32
        if -2**63 <= value < 2**63:
            return ct.int64
        if 0 <= value < 2**64:
            return ct.uint64
        raise ValueError(f"constant {value} is out of range of any supported integer type")
    if isinstance(value, float):
        return ct.float32
    raise TypeError(f"{type(value).__name__} value {value!r} cannot be used as a tile operand")


def integer_range(dtype) -> tuple[int, int]:
    return _INT_RANGE[dtype]


def promote(a, b, *, force_float: bool = False) -> ct.DType:
    """cuTile's common dtype of two operands, each a ct.DType (strictly typed) or a Python
    scalar (loosely typed constant). Raises TypeError where cuTile has no implicit promotion."""
    a_loose = not isinstance(a, ct.DType)
    b_loose = not isinstance(b, ct.DType)
    if a_loose and b_loose:
        result = _promote_concrete(dtype_of_python_scalar(a), dtype_of_python_scalar(b))
    elif a_loose or b_loose:
        dtype, const = (b, a) if a_loose else (a, b)
        result = _promote_with_constant(dtype, const, force_float)
    else:
        result = _promote_concrete(a, b)
    if force_float and not is_float(result):
        return ct.float32
    return result


def _promote_concrete(a, b) -> ct.DType:
    if a == b:
        return a
    try:
        return _ctd.promote_dtypes(a, b)
    except ct.TileTypeError as e:
        raise TypeError(str(e)) from None


def _promote_with_constant(dtype, const, force_float) -> ct.DType:
    const_dtype = dtype_of_python_scalar(const)
    cat, const_cat = category(dtype), category(const_dtype)
    if cat == const_cat:
        if cat == Category.Integral and not force_float:
            lo, hi = integer_range(dtype)
            if not lo <= const <= hi:
                raise ValueError(f"integer constant {const} is out of range of {dtype}")
        return dtype
    return const_dtype if const_cat > cat else dtype


def check_implicit_cast(src, target, what: str) -> None:
    """Raise TypeError unless cuTile converts ``src`` (ct.DType or Python scalar) to ``target``
    implicitly, as it does for stores, scatters and atomics (only widening conversions)."""
    if not isinstance(src, ct.DType):
        src_cat = category(dtype_of_python_scalar(src))
        dst_cat = category(target)
        if dst_cat == Category.Boolean:
            ok = src_cat in (Category.Boolean, Category.Integral) and src in (0, 1)
        elif src_cat > dst_cat:
            ok = False
        elif src_cat == dst_cat == Category.Integral:
            lo, hi = integer_range(target)
            ok = lo <= src <= hi
        else:
            ok = True
        if not ok:
            raise TypeError(f"{what}: cannot implicitly cast {src!r} to {target}")
        return
    try:
        ok = src == target or _ctd.promote_dtypes(src, target) == target
    except ct.TileTypeError:
        ok = False
    if not ok:
        raise TypeError(f"{what}: cannot implicitly cast {src} to {target}; "
                        f"use .astype({_name(target)}) first")


def _name(dtype) -> str:
    return f"ct.{dtype.name}" if dtype.name != "bool" else "ct.bool_"


def name(dtype) -> str:
    """``ct.float16`` style name, for error messages."""
    return _name(dtype)


def round_tf32(x: np.ndarray) -> np.ndarray:
    """Round float32 values to tfloat32 precision (10 mantissa bits, nearest even)."""
    x = np.array(x, dtype=np.float32)  # a C-contiguous copy, same shape (also 0-d)
    bits = x.view(np.uint32)
    lsb = (bits >> 13) & 1
    rounded = (bits + 0xFFF + lsb) & np.uint32(0xFFFFE000)
    finite = np.isfinite(x)
    return np.where(finite, rounded.view(np.float32), x).astype(np.float32)


def cast(values: np.ndarray, src, dst) -> np.ndarray:
    """Convert NumPy ``values`` stored for cuTile dtype ``src`` to storage of cuTile dtype
    ``dst`` with the GPU's conversion rules (float->int truncates toward zero, int->bool is
    ``!= 0``, float->bool is ``trunc(x) != 0``, int narrowing wraps)."""
    target = _STORAGE[dst]
    if src == dst:
        return values
    if is_float(src) and is_integral(dst):
        v = np.nan_to_num(np.trunc(values.astype(np.float64)), nan=0.0)
        lo, hi = integer_range(dst)
        # out of range is undefined on the GPU; saturate so results are at least sane
        v = np.clip(v, lo, hi)
        return v.astype(target)
    if dst == ct.bool_:
        if is_float(src):  # the GPU converts through an unsigned 1-bit integer (truncating);
            return np.trunc(values.astype(np.float32)) != 0  # outside [0, 2) is undefined
        return values != 0
    if dst == ct.tfloat32:
        return round_tf32(values.astype(np.float32))
    if src in _NARROW_FLOATS and dst in _NARROW_FLOATS and src != ct.tfloat32:
        return values.astype(np.float32).astype(target)
    return values.astype(target)
