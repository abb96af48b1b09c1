"""Tile factories, shape operations, reductions and scans, matrix multiply, and utilities."""
from __future__ import annotations

import builtins
import re
import sys

import numpy as np

import cuda.tile as ct

from . import _dtypes as D
from ._context import state, where
from ._memory import const_int, const_shape, normalize_axis, to_int
from ._tile import Tile, _result, as_tile, astype, check_rounding, taint

# ---- block indices ---------------------------------------------------------------------------


def int32(value: int) -> Tile:
    """A run-time int32 scalar, as ct.bid() & co. return on the GPU."""
    return Tile(np.array(value, dtype=np.int32), ct.int32)


def bid(axis) -> Tile:
    axis = const_int(axis, "ct.bid axis")
    if axis not in (0, 1, 2):
        raise TypeError(f"ct.bid: axis must be 0, 1 or 2, got {axis}")
    return int32(state.bid[axis])


def num_blocks(axis) -> Tile:
    axis = const_int(axis, "ct.num_blocks axis")
    if axis not in (0, 1, 2):
        raise TypeError(f"ct.num_blocks: axis must be 0, 1 or 2, got {axis}")
    return int32(state.grid[axis])


def assume_divisible_by(x, divisor):
    const_int(divisor, "ct.assume_divisible_by divisor")
    return x


# ---- factories -------------------------------------------------------------------------------

def _dtype_arg(dtype, what):
    try:
        return D.as_ct_dtype(dtype)
    except TypeError:
        raise TypeError(f"{what}: dtype must be a cuTile dtype such as ct.float32, got "
                        f"{dtype!r}") from None


def full(shape, fill_value, dtype) -> Tile:
    shape = const_shape(shape, "ct.full shape", allow_0d=True)
    dtype = _dtype_arg(dtype, "ct.full")
    if isinstance(fill_value, Tile):
        if fill_value.ndim != 0:
            raise TypeError(f"ct.full: fill_value must be a scalar, got a tile of shape "
                            f"{fill_value.shape}")
        v = astype(fill_value, dtype)._data
        if fill_value._poison is not None:
            return Tile(np.full(shape, v, dtype=v.dtype), dtype,
                        np.broadcast_to(fill_value._poison, shape))
    elif isinstance(fill_value, (bool, int, float)):
        v = as_tile(fill_value, dtype)._data
    else:
        raise TypeError(f"ct.full: fill_value must be a number, got {fill_value!r}")
    return Tile(np.full(shape, v, dtype=v.dtype), dtype)


def zeros(shape, dtype) -> Tile:
    return full(shape, 0, dtype)


def ones(shape, dtype) -> Tile:
    return full(shape, 1, dtype)


def arange(size, /, *, dtype, start=0, step=1) -> Tile:
    size = const_int(size, "ct.arange size")
    if size <= 0 or size & (size - 1):
        raise TypeError(f"ct.arange: size must be a power of two, got {size}")
    dtype = _dtype_arg(dtype, "ct.arange")
    base = np.arange(size, dtype=np.int64 if D.is_integral(dtype) else np.float64)
    r = Tile(D.cast(base.astype(D.storage(ct.int64)), ct.int64, dtype)
             if D.is_integral(dtype) else base.astype(D.compute(dtype)).astype(D.storage(dtype)),
             dtype)
    if not (isinstance(step, int) and step == 1):
        r = r * (astype(step, dtype) if isinstance(step, Tile) else as_tile(step, dtype))
    if not (isinstance(start, int) and start == 0):
        r = r + (astype(start, dtype) if isinstance(start, Tile) else as_tile(start, dtype))
    return r


def astile(value, /, *, dtype) -> Tile:
    dtype = _dtype_arg(dtype, "ct.astile")

    def flatten(v):
        if isinstance(v, tuple):
            if len(v) == 0 or len(v) & (len(v) - 1):
                raise TypeError(f"ct.astile: tuple length {len(v)} is not a power of two")
            return [flatten(e) for e in v]
        if isinstance(v, Tile):
            if v.ndim:
                raise TypeError("ct.astile: expected scalars, got a tile of shape "
                                f"{v.shape}")
            return astype(v, dtype)._data.item()
        return v

    nested = flatten(value)
    data = np.array(nested, dtype=D.compute(dtype) if D.is_float(dtype) else D.storage(dtype))
    return _result(data, dtype)


# ---- shape operations ------------------------------------------------------------------------

def _tile_arg(x, what) -> Tile:
    if isinstance(x, Tile):
        return x
    if isinstance(x, (bool, int, float)):
        return as_tile(x)
    raise TypeError(f"{what}: expected a tile, got {type(x).__name__}")


def reshape(x, /, shape) -> Tile:
    x = _tile_arg(x, "ct.reshape")
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    shape = tuple(const_int(s, "ct.reshape shape") for s in shape)
    try:
        data = x._data.reshape(shape)
    except ValueError:
        raise TypeError(f"ct.reshape: cannot reshape a tile of shape {x.shape} to {shape}") \
            from None
    return Tile(data, x.dtype, None if x._poison is None else x._poison.reshape(data.shape))


def broadcast_to(x, /, shape) -> Tile:
    x = _tile_arg(x, "ct.broadcast_to")
    shape = const_shape(shape, "ct.broadcast_to shape", allow_0d=True)
    try:
        data = np.broadcast_to(x._data, shape)
    except ValueError:
        raise TypeError(f"ct.broadcast_to: cannot broadcast shape {x.shape} to {shape}") \
            from None
    return Tile(data, x.dtype, None if x._poison is None else np.broadcast_to(x._poison, shape))


def expand_dims(x, /, axis) -> Tile:
    x = _tile_arg(x, "ct.expand_dims")
    axis = normalize_axis(axis, x.ndim + 1, "ct.expand_dims axis")
    return Tile(np.expand_dims(x._data, axis), x.dtype,
                None if x._poison is None else np.expand_dims(x._poison, axis))


def permute(x, /, axes) -> Tile:
    x = _tile_arg(x, "ct.permute")
    axes = tuple(normalize_axis(a, x.ndim, "ct.permute axis") for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise TypeError(f"ct.permute: axes {axes} are not a permutation of "
                        f"{tuple(range(x.ndim))}")
    return Tile(np.transpose(x._data, axes), x.dtype,
                None if x._poison is None else np.transpose(x._poison, axes))


def transpose(x, /, axis0=None, axis1=None) -> Tile:
    x = _tile_arg(x, "ct.transpose")
    if x.ndim < 2:
        raise TypeError("ct.transpose: cannot transpose a tile with fewer than 2 dimensions")
    if axis0 is None and axis1 is None:
        if x.ndim != 2:
            raise TypeError("ct.transpose: axis0 and axis1 must be given for tiles with more "
                            "than 2 dimensions")
        a0, a1 = 0, 1
    elif axis0 is None or axis1 is None:
        raise TypeError("ct.transpose: give both axis0 and axis1, or neither")
    else:
        a0, a1 = normalize_axis(axis0, x.ndim), normalize_axis(axis1, x.ndim)
    axes = list(range(x.ndim))
    axes[a0], axes[a1] = axes[a1], axes[a0]
    return Tile(np.transpose(x._data, axes), x.dtype,
                None if x._poison is None else np.transpose(x._poison, axes))


def cat(tiles, /, axis) -> Tile:
    if not isinstance(tiles, (tuple, list)) or len(tiles) == 0:
        raise TypeError("ct.cat expects a tuple of tiles")
    if len(tiles) == 1:
        return tiles[0]
    if len(tiles) > 2:
        raise TypeError(f"ct.cat supports at most 2 tiles, got {len(tiles)}")
    x, y = (_tile_arg(t, "ct.cat") for t in tiles)
    if x.ndim != y.ndim:
        raise TypeError(f"ct.cat: tiles must have the same rank, got {x.ndim} and {y.ndim}")
    if x.dtype != y.dtype:
        raise TypeError(f"ct.cat: tiles must have the same dtype, got {x.dtype} and {y.dtype}")
    axis = normalize_axis(axis, x.ndim, "ct.cat axis")
    for i, (a, b) in enumerate(zip(x.shape, y.shape)):
        if i != axis and a != b:
            raise TypeError(f"ct.cat: shapes {x.shape} and {y.shape} differ outside axis {axis}")
    out = np.concatenate([x._data, y._data], axis=axis)
    if any(s & (s - 1) for s in out.shape):
        raise TypeError(f"ct.cat: the result shape {out.shape} must be powers of two")
    poison = None
    if x._poison is not None or y._poison is not None:
        poison = np.concatenate([np.zeros(t.shape, bool) if t._poison is None else t._poison
                                 for t in (x, y)], axis=axis)
    return Tile(out, x.dtype, poison)


def _subtile_slices(x: Tile, shape, index, what):
    items = tuple(index) if isinstance(index, (tuple, list)) else (index,)
    if len(items) != x.ndim:
        raise TypeError(f"{what}: index has {len(items)} entries but the tile has rank {x.ndim}")
    slices = []
    for dim, (n, s, i) in enumerate(zip(x.shape, shape, items)):
        if s == 0 or n % s:
            raise TypeError(f"{what}: tile shape {x.shape} is not divisible by {shape} at "
                            f"dimension {dim}")
        i = to_int(i, f"{what} index")
        if not 0 <= i < n // s:
            raise IndexError(f"{what}: index {i} out of range [0, {n // s}) at dimension {dim} "
                             f"({where()})")
        slices.append(slice(i * s, (i + 1) * s))
    return tuple(slices)


def extract(x, /, index, shape) -> Tile:
    x = _tile_arg(x, "ct.extract")
    shape = const_shape(shape, "ct.extract shape", rank=x.ndim, allow_0d=True, pow2=False)
    sub = shape or (1,) * x.ndim
    sl = _subtile_slices(x, sub, index, "ct.extract")
    return Tile(np.array(x._data[sl]).reshape(shape), x.dtype,
                None if x._poison is None else x._poison[sl].reshape(shape))


def insert(x, /, index, value) -> Tile:
    x = _tile_arg(x, "ct.insert")
    value = _tile_arg(value, "ct.insert")
    if value.dtype != x.dtype:
        raise TypeError(f"ct.insert: cannot insert a {value.dtype} tile into a {x.dtype} tile")
    if value.ndim not in (0, x.ndim):
        raise TypeError(f"ct.insert: value rank {value.ndim} does not match tile rank {x.ndim}")
    sub = value.shape or (1,) * x.ndim
    sl = _subtile_slices(x, sub, index, "ct.insert")
    out = np.array(x._data)
    out[sl] = value._data.reshape(sub)
    poison = None
    if x._poison is not None or value._poison is not None:
        poison = np.zeros(x.shape, bool) if x._poison is None else np.array(x._poison)
        poison[sl] = False if value._poison is None else value._poison.reshape(sub)
    return Tile(out, x.dtype, poison)


def bitcast(x, /, dtype) -> Tile:
    x = _tile_arg(x, "ct.bitcast")
    dtype = _dtype_arg(dtype, "ct.bitcast")
    if D.is_boolean(x.dtype) or D.is_boolean(dtype):
        raise TypeError("ct.bitcast to or from bool is not supported")
    if x.dtype.bitwidth != dtype.bitwidth:
        raise TypeError(f"ct.bitcast: bit widths differ ({x.dtype} vs {dtype})")
    return Tile(x._data.copy().view(D.storage(dtype)), dtype, x._poison)


def pack_to_bytes(x, /) -> Tile:
    x = _tile_arg(x, "ct.pack_to_bytes")
    flat = x._data.reshape(-1)
    if x.dtype.bitwidth == 4:  # two elements per byte, the first in the low nibble
        codes = flat.view(np.uint8) & 0xF
        return Tile(np.asarray(codes[0::2] | (codes[1::2] << 4), np.uint8), ct.uint8)
    return Tile(flat.copy().view(np.uint8), ct.uint8)


def unpack_from_bytes(x, /, dtype) -> Tile:
    x = _tile_arg(x, "ct.unpack_from_bytes")
    dtype = _dtype_arg(dtype, "ct.unpack_from_bytes")
    if x.dtype != ct.uint8 or x.ndim != 1:
        raise TypeError("ct.unpack_from_bytes expects a 1D uint8 tile")
    if dtype.bitwidth == 4:  # low nibble first
        codes = np.stack([x._data & 0xF, x._data >> 4], axis=-1).reshape(-1)
        return Tile(codes.astype(np.uint8).view(D.storage(dtype)), dtype)
    return Tile(x._data.copy().view(D.storage(dtype)), dtype)


# ---- reductions and scans --------------------------------------------------------------------

def _axes(axis, ndim, what):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (tuple, list)):
        return tuple(sorted({normalize_axis(a, ndim, what) for a in axis}))
    return (normalize_axis(axis, ndim, what),)


_ROUNDING_NAME = {"sum": "add", "prod": "mul", "max": "max", "min": "min", "cumsum": "add",
                  "cumprod": "mul"}


def _accumulation_input(name, x, rounding_mode, flush_to_zero):
    """The tile a reduction or scan accumulates (bool counts as int32) and its dtype."""
    x = _tile_arg(x, f"ct.{name}")
    dtype = x.dtype
    if D.is_boolean(dtype):
        x, dtype = astype(x, ct.int32), ct.int32
    check_rounding(_ROUNDING_NAME[name], rounding_mode, flush_to_zero, dtype)
    return x, dtype


def _reduce(name, x, axis, keepdims, fn, rounding_mode=None, flush_to_zero=False):
    x, dtype = _accumulation_input(name, x, rounding_mode, flush_to_zero)
    axes = _axes(axis, x.ndim, f"ct.{name} axis")
    data = x._data.astype(D.compute(dtype), copy=False)
    r = fn(data, axes)
    if keepdims:
        r = np.expand_dims(r, axes)
    out = _result(r, dtype)
    if x._poison is not None:  # a poisoned input poisons its whole reduction
        out._poison = np.asarray(np.any(x._poison, axis=axes, keepdims=keepdims))
    return out


def _sum_fn(data, axes):
    if data.dtype.kind in "iu":  # integer sums wrap in the tile's width, as on the GPU
        return np.sum(data, axis=axes, dtype=data.dtype)
    return np.sum(data.astype(np.float64), axis=axes)


def sum(x, /, axis=None, *, keepdims=False, rounding_mode=None, flush_to_zero=False):
    return _reduce("sum", x, axis, keepdims, _sum_fn, rounding_mode, flush_to_zero)


def prod(x, /, axis=None, *, keepdims=False, rounding_mode=None, flush_to_zero=False):
    return _reduce("prod", x, axis, keepdims,
                   lambda d, a: np.prod(d, axis=a, dtype=d.dtype if d.dtype.kind in "iu"
                                        else np.float64), rounding_mode, flush_to_zero)


def max(x, /, axis=None, *, keepdims=False, flush_to_zero=False, propagate_nan=False):
    fn = np.maximum if propagate_nan else np.fmax
    return _reduce("max", x, axis, keepdims, lambda d, a: fn.reduce(d, axis=a), None,
                   flush_to_zero)


def min(x, /, axis=None, *, keepdims=False, flush_to_zero=False, propagate_nan=False):
    fn = np.minimum if propagate_nan else np.fmin
    return _reduce("min", x, axis, keepdims, lambda d, a: fn.reduce(d, axis=a), None,
                   flush_to_zero)


def _arg(name, x, axis, keepdims, propagate_nan, pick):
    x = _tile_arg(x, f"ct.{name}")
    if isinstance(axis, (tuple, list)):
        raise TypeError(f"ct.{name}: reducing over a tuple of axes is not supported")
    data = x._data.astype(D.compute(x.dtype) if not D.is_boolean(x.dtype) else np.int32)
    if D.is_float(x.dtype):
        nan = np.isnan(data)
        if nan.any():
            # propagate_nan=True: a NaN wins (the first NaN is returned);
            # propagate_nan=False: NaNs are ignored, i.e. treated as the worst value
            best, worst = (np.inf, -np.inf) if name == "argmax" else (-np.inf, np.inf)
            data = np.where(nan, best if propagate_nan else worst, data)
    nan_first = None
    if propagate_nan and D.is_float(x.dtype):  # the first NaN wins over any number
        nan_first = np.isnan(x._data.astype(D.compute(x.dtype)))
    if axis is None:
        r = pick(data.reshape(-1), axis=0)
        if nan_first is not None and nan_first.any():
            r = np.argmax(nan_first.reshape(-1))
        r = np.asarray(r).reshape((1,) * x.ndim if keepdims else ())
        poison = None if x._poison is None else np.asarray(x._poison.any()).reshape(r.shape)
    else:
        ax = normalize_axis(axis, x.ndim, f"ct.{name} axis")
        r = pick(data, axis=ax)
        if nan_first is not None:
            r = np.where(nan_first.any(axis=ax), np.argmax(nan_first, axis=ax), r)
        poison = None if x._poison is None else x._poison.any(axis=ax)
        if keepdims:
            r = np.expand_dims(r, ax)
            poison = None if poison is None else np.expand_dims(poison, ax)
    return Tile(np.asarray(r).astype(np.int32), ct.int32, poison)


def argmax(x, /, axis=None, *, keepdims=False, propagate_nan=False):
    return _arg("argmax", x, axis, keepdims, propagate_nan, np.argmax)


def argmin(x, /, axis=None, *, keepdims=False, propagate_nan=False):
    return _arg("argmin", x, axis, keepdims, propagate_nan, np.argmin)


def _scan(name, x, axis, reverse, fn, rounding_mode=None, flush_to_zero=False):
    x, dtype = _accumulation_input(name, x, rounding_mode, flush_to_zero)
    ax = normalize_axis(axis, x.ndim, f"ct.{name} axis")
    data = x._data.astype(D.compute(dtype), copy=False)
    if reverse:
        data = np.flip(data, ax)
    with np.errstate(all="ignore"):
        r = fn(data, axis=ax, dtype=data.dtype if data.dtype.kind in "iu" else np.float64)
    if reverse:
        r = np.flip(r, ax)
    out = _result(r, dtype)
    if x._poison is not None:  # poison flows forward along the scan
        p = np.flip(x._poison, ax) if reverse else x._poison
        p = np.logical_or.accumulate(p, axis=ax)
        out._poison = np.flip(p, ax) if reverse else p
    return out


def cumsum(x, /, axis=0, *, reverse=False, rounding_mode=None, flush_to_zero=False):
    return _scan("cumsum", x, axis, reverse, np.cumsum, rounding_mode, flush_to_zero)


def cumprod(x, /, axis=0, *, reverse=False, rounding_mode=None, flush_to_zero=False):
    return _scan("cumprod", x, axis, reverse, np.cumprod, rounding_mode, flush_to_zero)


def _tuple_of_tiles(x, what):
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    xs = tuple(_tile_arg(t, what) for t in xs)
    shape = np.broadcast_shapes(*(t.shape for t in xs))
    return isinstance(x, (tuple, list)), tuple(
        Tile(np.broadcast_to(t._data, shape), t.dtype) for t in xs), shape


def _fold_step(func, acc, moved, xs, index):
    """One step of a custom reduce/scan: ``func(*acc, *elements at index)`` as a tuple of
    tiles in the inputs' dtypes (``moved``: the inputs with the axis last)."""
    cur = tuple(Tile(np.asarray(m[index]), t.dtype) for m, t in zip(moved, xs))
    res = func(*acc, *cur)
    res = res if isinstance(res, tuple) else (res,)
    return tuple(as_tile(r, t.dtype) if not isinstance(r, Tile) else r for r, t in zip(res, xs))


def reduce(x, /, axis, func, identity, *, keepdims=False):
    """Custom reduction: ``func`` combines 0-d tiles; applied sequentially along ``axis``."""
    is_tuple, xs, shape = _tuple_of_tiles(x, "ct.reduce")
    ax = normalize_axis(axis, len(shape), "ct.reduce axis")
    ids = identity if isinstance(identity, (tuple, list)) else (identity,)
    moved = [np.moveaxis(t._data, ax, -1) for t in xs]
    out_shape = moved[0].shape[:-1]
    outs = [np.empty(out_shape, dtype=m.dtype) for m in moved]
    for pos in np.ndindex(*out_shape):
        acc = tuple(as_tile(i, t.dtype) for i, t in zip(ids, xs))
        for k in range(moved[0].shape[-1]):
            acc = _fold_step(func, acc, moved, xs, pos + (k,))
        for o, a in zip(outs, acc):
            o[pos] = a._data
    poison = None
    if any(t._poison is not None for t in xs):
        poison = np.any([np.broadcast_to(t._poison, shape) for t in xs if t._poison is not None],
                        axis=0).any(axis=ax, keepdims=keepdims)
    results = []
    for o, t in zip(outs, xs):
        r = np.expand_dims(o, ax) if keepdims else o
        results.append(Tile(np.asarray(r), t.dtype, poison))
    return tuple(results) if is_tuple else results[0]


def scan(x, /, axis, func, identity, *, reverse=False):
    """Custom inclusive scan with ``func`` on 0-d tiles, applied sequentially."""
    is_tuple, xs, shape = _tuple_of_tiles(x, "ct.scan")
    ax = normalize_axis(axis, len(shape), "ct.scan axis")
    ids = identity if isinstance(identity, (tuple, list)) else (identity,)
    moved = [np.moveaxis(t._data, ax, -1) for t in xs]
    outs = [np.empty(m.shape, dtype=m.dtype) for m in moved]
    n = moved[0].shape[-1]
    steps = range(n - 1, -1, -1) if reverse else range(n)
    for pos in np.ndindex(*moved[0].shape[:-1]):
        acc = tuple(as_tile(i, t.dtype) for i, t in zip(ids, xs))
        for k in steps:
            acc = _fold_step(func, acc, moved, xs, pos + (k,))
            for o, a in zip(outs, acc):
                o[pos + (k,)] = a._data
    poison = None
    if any(t._poison is not None for t in xs):  # conservative: the whole scanned line
        poison = np.broadcast_to(np.any(
            [np.broadcast_to(t._poison, shape) for t in xs if t._poison is not None],
            axis=0).any(axis=ax, keepdims=True), shape)
    results = [Tile(np.moveaxis(o, -1, ax), t.dtype, poison) for o, t in zip(outs, xs)]
    return tuple(results) if is_tuple else results[0]


# ---- matrix multiply -------------------------------------------------------------------------

def _mma_acc_dtype(x_dtype, y_dtype, acc_dtype=None):
    from cuda.tile import _datatype
    try:
        return _datatype._resolve_mma_supported_dtype(x_dtype, y_dtype, acc_dtype)
    except ct.TileTypeError as e:
        raise TypeError(f"ct.mma: {e}") from None


def _matmul_values(a: np.ndarray, b: np.ndarray, integer: bool) -> np.ndarray:
    if integer:
        return np.matmul(a.astype(np.int64), b.astype(np.int64))
    # float64 products and sums: at least as accurate as the GPU's fp32 accumulation
    return np.matmul(a.astype(np.float64), b.astype(np.float64))


def mma(x, y, /, acc, *, use_fast_acc=False) -> Tile:
    """``x @ y + acc`` in the accumulator's dtype (products summed in float64 here)."""
    for t, n in ((x, "x"), (y, "y"), (acc, "acc")):
        if not isinstance(t, Tile):
            raise TypeError(f"ct.mma: {n} must be a tile")
    if x.ndim < 2 or y.ndim < 2:
        raise TypeError(f"ct.mma: x and y must be at least 2D, got {x.shape} and {y.shape}")
    if x.shape[-1] != y.shape[-2]:
        raise TypeError(f"ct.mma: incompatible shapes {x.shape} @ {y.shape}")
    _mma_acc_dtype(x.dtype, y.dtype, acc.dtype)
    try:
        out_shape = np.broadcast_shapes(x.shape[:-2], y.shape[:-2]) + (x.shape[-2], y.shape[-1])
    except ValueError:
        raise TypeError(f"ct.mma: incompatible batch shapes {x.shape} @ {y.shape}") from None
    if acc.shape != out_shape:
        raise TypeError(f"ct.mma: acc shape must be {out_shape}, got {acc.shape}")
    integer = D.is_integral(x.dtype)
    r = _matmul_values(x._data, y._data, integer) + acc._data.astype(
        np.int64 if integer else np.float64)
    return _matmul_poison(_result(r.astype(D.compute(acc.dtype)), acc.dtype), x, y, acc)


def _matmul_poison(out: Tile, x: Tile, y: Tile, acc=None) -> Tile:
    """out[..., i, j] is poisoned if row i of x or column j of y holds a poisoned value (for
    1-D operands: the whole result)."""
    if x._poison is None and y._poison is None and (acc is None or acc._poison is None):
        return out
    p = np.zeros(out.shape, bool)
    if x.ndim < 2 or y.ndim < 2:
        p |= any(t._poison is not None and bool(t._poison.any()) for t in (x, y))
    else:
        if x._poison is not None:
            p = p | x._poison.any(axis=-1)[..., :, None]
        if y._poison is not None:
            p = p | y._poison.any(axis=-2)[..., None, :]
    if acc is not None and acc._poison is not None:
        p = p | acc._poison
    out._poison = np.broadcast_to(p, out.shape)
    return out


def matmul(x, y, /) -> Tile:
    if not isinstance(x, Tile) or not isinstance(y, Tile):
        raise TypeError("ct.matmul expects two tiles")
    dtype = D.promote(x.dtype, y.dtype)
    acc_dtype = _mma_acc_dtype(dtype, dtype)
    xs, ys = x.shape, y.shape
    if xs[-1] != ys[-2 if len(ys) > 1 else 0]:
        raise TypeError(f"ct.matmul: incompatible shapes {xs} @ {ys}")
    a = D.cast(x._data, x.dtype, dtype)
    b = D.cast(y._data, y.dtype, dtype)
    r = _matmul_values(a, b, D.is_integral(dtype))
    r = _result(np.asarray(r).astype(D.compute(acc_dtype)), acc_dtype)
    return _matmul_poison(astype(r, dtype), x, y)


# ---- printing and assertions -----------------------------------------------------------------

_PRINTF_SPEC = re.compile(
    r"%([-+ #0]*)(\d+|\*)?(?:\.(\d+))?(hh|h|ll|l|L|z|j|t)?([diuoxXeEfFgGaAc%s])")


def printf(format, *args) -> None:
    """C-style printf, one line per call as on the GPU: a tile argument prints as
    ``[a, b, ...]`` with each element formatted by its conversion (Python % formatting,
    length modifiers dropped)."""
    if not isinstance(format, str):
        raise TypeError("ct.printf: format must be a string constant")
    tiles = [as_tile(a) if not isinstance(a, Tile) else a for a in args]
    n_specs = builtins.sum(1 for m in _PRINTF_SPEC.finditer(format) if m.group(5) != "%")
    if n_specs != len(tiles):
        raise TypeError(f"ct.printf: the format has {n_specs} conversions but {len(tiles)} "
                        "arguments were given")
    out, k, pos = [], 0, 0
    for m in _PRINTF_SPEC.finditer(format):
        out.append(format[pos:m.start()])
        pos = m.end()
        if m.group(5) == "%":
            out.append("%")
            continue
        spec = "%" + m.group(1) + (m.group(2) or "") + ("." + m.group(3) if m.group(3) else "") \
            + ("d" if m.group(5) in "iu" else m.group(5))
        out.append(_printf_value(spec, tiles[k]))
        k += 1
    out.append(format[pos:])
    sys.stdout.write("".join(out))


def _printf_value(spec: str, t: Tile) -> str:
    """One printf argument as the GPU prints it: a scalar with ``spec``, a tile as a nested
    list ``[a, b, ...]`` of elements each formatted with ``spec``."""
    values = t._data.astype(np.float64) if D.is_float(t.dtype) else t._data.astype(np.int64)

    def fmt(v):
        if isinstance(v, list):
            return "[" + ", ".join(fmt(e) for e in v) + "]"
        return spec % v

    return fmt(values.tolist())


def print_(*args, sep=" ", end="\n") -> None:
    builtins.print(*args, sep=sep, end=end)


def assert_(cond, /, message=None) -> None:
    c = cond if isinstance(cond, Tile) else as_tile(cond)
    if not D.is_boolean(c.dtype):
        raise TypeError(f"ct.assert_: the condition must be a bool tile, got {c.dtype}")
    if not np.all(c._data):
        raise AssertionError(f"ct.assert_ failed in {where()}"
                             + (f": {message}" if message else ""))


class _ConstInt(int):
    """An int from ``ct.static_eval``: a constant that also has ``.astype`` as in cuTile."""
    def astype(self, dtype, /):
        return as_tile(int(self), D.as_ct_dtype(dtype))


class _ConstFloat(float):
    def astype(self, dtype, /):
        return as_tile(float(self), D.as_ct_dtype(dtype))


def _constant(v):
    if isinstance(v, tuple):
        return tuple(_constant(e) for e in v)
    if type(v) is int:
        return _ConstInt(v)
    if type(v) is float:
        return _ConstFloat(v)
    return v


def static_eval(expr, /):
    return _constant(expr)


def static_assert(condition, message=None, /) -> None:
    if isinstance(condition, Tile):
        raise ct.TileStaticAssertionError(
            "static_assert condition must be a compile-time constant, got a tile")
    if not condition:
        raise ct.TileStaticAssertionError(
            "Static assertion failed" + (f": {message}" if message is not None else ""))


def static_iter(iterable):
    items = list(iterable)
    if len(items) > 1000:
        raise TypeError("ct.static_iter: at most 1000 iterations are allowed")
    return items


def ensure_constant(value, /):
    if isinstance(value, Tile):
        raise ct.TileStaticAssertionError(
            "Argument of ensure_constant() is not a compile-time constant")
    return value


def static_exception(exc, /):
    return exc


def no_op(*args, **kwargs) -> None:
    return None
