"""Global arrays and memory operations: load/store in tile space, tiled views, gather/scatter,
advanced indexing and atomics, all vectorized with NumPy slicing and fancy indexing.

Out-of-bounds rules follow the cuTile docs: partial tiles are padded on load (``padding_mode``;
UNDETERMINED padding gets finite, non-zero stand-ins here: 1024.0 for floats (the largest
finite value for float8_e4m3fn / float4), the most negative value for signed ints, the largest
for unsigned, True for bool, so kernels that forget to mask it show wrong results, while kernels
that mask it before it reaches a result work as on the GPU)
and masked on store; out-of-bounds gathers return ``padding_value``; out-of-bounds scatters and
atomics do nothing; negative gather/scatter indices are out of bounds. With
``check_bounds=False`` an out-of-bounds access is undefined on the GPU, so the emulator raises
IndexError. In strict mode, loads mark UNDETERMINED padding in the tile (``Tile._poison``) and
the sinks here (stores, scatters, indices, masks, atomics) raise if a marked value is used;
unmasked out-of-bounds gathers raise too.
"""
from __future__ import annotations

import numpy as np

import cuda.tile as ct

from . import _dtypes as D
from ._context import state, where
from ._tile import Tile, as_tile, check_unpoisoned


# ---- argument helpers ------------------------------------------------------------------------

def to_int(v, what: str) -> int:
    """A run-time integer argument: Python int or a 0-d integer tile."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, Tile):
        if v.ndim != 0 or not (D.is_integral(v.dtype) or D.is_boolean(v.dtype)):
            raise TypeError(f"{what} must be an integer scalar, got a {v.dtype} tile of shape "
                            f"{v.shape}")
        check_unpoisoned(v, what)
        return int(v._data.item())
    if isinstance(v, np.integer):
        return int(v)
    raise TypeError(f"{what} must be an integer, got {type(v).__name__} {v!r}")


def const_int(v, what: str) -> int:
    """A compile-time constant integer (a Python int, e.g. a ``ct.Constant[int]`` parameter)."""
    if isinstance(v, (bool, int, np.integer)):
        return int(v)
    if isinstance(v, Tile):
        raise TypeError(f"{what} must be a compile-time constant int; a run-time value (tile) "
                        "was given. Pass it as a ct.Constant[int] kernel parameter.")
    raise TypeError(f"{what} must be a constant int, got {type(v).__name__} {v!r}")


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def const_shape(shape, what: str, *, allow_single_int=True, rank=None, allow_0d=False,
                pow2=True) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer, Tile)) and allow_single_int:
        shape = (const_int(shape, what),)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"{what} must be a tuple of constant ints, got {shape!r}")
    shape = tuple(const_int(s, what) for s in shape)
    if len(shape) == 0 and allow_0d:
        return shape
    if rank is not None and len(shape) != rank:
        raise TypeError(f"{what} {shape} must have {rank} dimension(s) (the array rank)")
    if pow2:
        for s in shape:
            if not _is_pow2(s):
                raise TypeError(f"{what} {shape}: every tile dimension must be a power of two")
    return shape


def normalize_axis(axis, ndim: int, what: str = "axis") -> int:
    axis = const_int(axis, what)
    if not -ndim <= axis < max(ndim, 1):
        raise TypeError(f"{what} {axis} is out of range for rank {ndim}")
    return axis % ndim if ndim else 0


def _order(order, ndim: int) -> tuple[int, ...]:
    if order == "C":
        return tuple(range(ndim))
    if order == "F":
        return tuple(reversed(range(ndim)))
    if not isinstance(order, (tuple, list)) or sorted(const_int(o, "order") % max(ndim, 1)
                                                      for o in order) != list(range(ndim)):
        raise TypeError(f"order must be 'C', 'F' or a permutation of {tuple(range(ndim))}, "
                        f"got {order!r}")
    return tuple(const_int(o, "order") % ndim for o in order)


def _index_tuple(index, ndim: int, what: str) -> tuple[int, ...]:
    items = tuple(index) if isinstance(index, (tuple, list)) else (index,)
    if len(items) != ndim:
        raise TypeError(f"{what}: index {index!r} has {len(items)} entries but the array has "
                        f"rank {ndim}")
    return tuple(to_int(i, f"{what} index") for i in items)


UNDETERMINED_FLOAT = 1024.0
_SMALL_FLOATS = {ct.float8_e4m3fn: 448.0, ct.float4_e2m1fn: 6.0}  # 1024 does not fit these


def _padding_value(mode, dtype):
    """The fill value for ``padding_mode``. UNDETERMINED gets a finite, non-zero stand-in
    (the GPU leaves it unspecified): a kernel that forgets to mask it gets visibly wrong
    results, while masking it (``t + ct.where(i < n, 0, -inf)``, ``ct.where(i < n, t, 0)``)
    gives the right answer, as on the GPU."""
    if mode is None or mode == ct.PaddingMode.UNDETERMINED:
        if D.is_float(dtype):
            return UNDETERMINED_FLOAT if dtype not in _SMALL_FLOATS else _SMALL_FLOATS[dtype]
        if D.is_boolean(dtype):
            return True
        lo, hi = D.integer_range(dtype)
        return lo if D.is_signed(dtype) else hi
    if mode == ct.PaddingMode.ZERO:
        return 0
    if not D.is_float(dtype):
        raise TypeError(f"padding_mode {mode} needs a float array, the array is {dtype}")
    return {ct.PaddingMode.NEG_ZERO: -0.0, ct.PaddingMode.NAN: np.nan,
            ct.PaddingMode.POS_INF: np.inf, ct.PaddingMode.NEG_INF: -np.inf}[mode]


def _check_hints(latency, allow_tma):
    if latency is not None:
        latency = const_int(latency, "latency")
        if not 1 <= latency <= 10:
            raise ValueError(f"latency must be between 1 and 10, got {latency}")
    if allow_tma is not None and not isinstance(allow_tma, bool):
        raise TypeError(f"allow_tma must be a bool, got {allow_tma!r}")


# ---- arrays ----------------------------------------------------------------------------------

def _index_scalar(value: int, dtype) -> Tile:
    lo, hi = D.integer_range(dtype)
    if not lo <= value <= hi:
        raise ValueError(f"{value} does not fit the array index dtype {dtype}; annotate the "
                         "parameter with ct.IndexedWithInt64")
    return Tile(np.array(value, dtype=D.storage(dtype)), dtype)


class Array:
    """A kernel's view of a NumPy array argument (any strides); writes go to that array.
    ``shape`` and ``strides`` are run-time scalars (0-d int32 tiles, int64 with
    ``ct.IndexedWithInt64``), as on the GPU."""

    __slots__ = ("_a", "_dtype", "_index_dtype")

    def __init__(self, a: np.ndarray, index_dtype=ct.int32):
        self._a = a
        self._dtype = D.from_numpy(a.dtype)
        self._index_dtype = index_dtype

    @property
    def dtype(self) -> ct.DType:
        return self._dtype

    @property
    def shape(self) -> tuple[Tile, ...]:
        return tuple(_index_scalar(n, self._index_dtype) for n in self._a.shape)

    @property
    def strides(self) -> tuple[Tile, ...]:
        item = self._a.itemsize
        return tuple(_index_scalar(s // item, self._index_dtype) for s in self._a.strides)

    @property
    def ndim(self) -> int:
        return self._a.ndim

    def slice(self, axis, start, stop) -> "Array":
        """A view restricted to ``[start, stop)`` along ``axis`` (no copy)."""
        axis = normalize_axis(axis, self.ndim)
        start, stop = to_int(start, "slice start"), to_int(stop, "slice stop")
        n = self._a.shape[axis]
        if not (0 <= start <= stop <= n):
            raise IndexError(f"Array.slice(axis={axis}, start={start}, stop={stop}) is outside "
                             f"the array's {n} elements along that axis ({where()})")
        key = (slice(None),) * axis + (slice(start, stop),)
        return Array(self._a[key], self._index_dtype)

    def tiled_view(self, tile_shape, *, padding_mode=ct.PaddingMode.UNDETERMINED,
                   traversal_steps=None) -> "TiledView":
        return TiledView(self, tile_shape, padding_mode, traversal_steps)

    def get_raw_memory(self):
        raise NotImplementedError("Array.get_raw_memory is not supported by the CPU emulator; "
                                  "run on a GPU")

    @property
    def foreign_pointer(self):
        raise NotImplementedError("Array.foreign_pointer is not supported by the CPU emulator; "
                                  "run on a GPU")

    def __repr__(self) -> str:
        return f"<array[{self._dtype.name}, {self._a.shape}]>"


def as_array(a, what: str) -> Array:
    if isinstance(a, Array):
        return a
    raise TypeError(f"{what} expects an array (a kernel array argument), got {type(a).__name__}")


class TiledView:
    """``Array.tiled_view``: the array's tile space with a fixed tile shape."""

    __slots__ = ("_array", "_shape", "_bshape", "_padding", "_steps")

    def __init__(self, array: Array, tile_shape, padding_mode, traversal_steps):
        self._array = array
        self._shape = const_shape(tile_shape, "tiled_view tile_shape", rank=array.ndim,
                                  allow_0d=True)
        self._bshape = self._shape or (1,) * array.ndim
        self._padding = padding_mode
        self._steps = (self._bshape if traversal_steps is None else
                       const_shape(traversal_steps, "traversal_steps", rank=array.ndim,
                                   pow2=False))

    @property
    def dtype(self):
        return self._array.dtype

    @property
    def tile_shape(self):
        return self._shape

    @property
    def traversal_steps(self):
        return self._steps

    def num_tiles(self, axis) -> Tile:
        axis = normalize_axis(axis, self._array.ndim)
        n, s = self._array._a.shape[axis], self._steps[axis]
        count = -(-n // s)  # tile origins 0, s, 2s, ... that start inside the array
        return Tile(np.array(count, dtype=np.int32), ct.int32)

    def _origin(self, index, what):
        idx = _index_tuple(index, self._array.ndim, what)
        return tuple(i * s for i, s in zip(idx, self._steps))

    def load(self, index, *, check_bounds=True, latency=None, allow_tma=None) -> Tile:
        _check_hints(latency, allow_tma)
        origin = self._origin(index, "TiledView.load")
        data, poison = _read_box(self._array._a, origin, self._bshape, self._padding,
                                 self.dtype, check_bounds, "TiledView.load")
        return Tile(data.reshape(self._shape), self.dtype,
                    None if poison is None else poison.reshape(self._shape))

    def store(self, index, tile, *, check_bounds=True, latency=None, allow_tma=None) -> None:
        _check_hints(latency, allow_tma)
        origin = self._origin(index, "TiledView.store")
        values = _values_for(tile, self.dtype, self._bshape, "TiledView.store")
        _write_box(self._array._a, origin, values, check_bounds, "TiledView.store",
                   _poison_of(tile, self._bshape))

    def _atomic_store(self, op: str, index, update) -> None:
        origin = self._origin(index, f"TiledView.atomic_store_{op}")
        shape = self._bshape
        grids = np.meshgrid(*[np.arange(o, o + n) for o, n in zip(origin, shape)],
                            indexing="ij")
        _atomic_rmw(op, self._array, tuple(grids), update, True, f"atomic_store_{op}")

    def atomic_store_add(self, index, update, /): self._atomic_store("add", index, update)
    def atomic_store_max(self, index, update, /): self._atomic_store("max", index, update)
    def atomic_store_min(self, index, update, /): self._atomic_store("min", index, update)
    def atomic_store_and(self, index, update, /): self._atomic_store("and", index, update)
    def atomic_store_or(self, index, update, /): self._atomic_store("or", index, update)
    def atomic_store_xor(self, index, update, /): self._atomic_store("xor", index, update)


# ---- strict-mode poison helpers ---------------------------------------------------------------

def _poison_of(tile, shape):
    """The poison mask of ``tile`` broadcast to ``shape``, or None."""
    if type(tile) is not Tile or tile._poison is None:
        return None
    return np.broadcast_to(tile._poison, shape)


def _check_poison(mask, used, what):
    """Raise (strict mode) if a poisoned element is used where ``used`` is True."""
    if mask is not None:
        check_unpoisoned(Tile(np.zeros(mask.shape), ct.float32, mask), what, used)


def _index_poison(items, shape):
    masks = [np.broadcast_to(t._poison, shape) for t in items
             if type(t) is Tile and t._poison is not None]
    if not masks:
        return None
    return np.logical_or.reduce(masks) if len(masks) > 1 else masks[0]


# ---- recording hook (used by moe_tutorial.trace) ----------------------------------------------

#: When set, every load, store, gather, scatter and atomic calls
#: ``recorder(kind, a, indices, in_bounds, active)`` before it touches memory: ``a`` is the NumPy
#: array (view) accessed, ``indices`` one integer array per dimension of ``a`` (one entry per
#: lane), ``in_bounds`` which lanes lie inside ``a``, ``active`` which lanes the mask keeps (None:
#: all). It only observes.
recorder = None


def _record(kind, a, indices, in_bounds, active=None):
    if recorder is not None:
        recorder(kind, a, tuple(indices), in_bounds, active)


def _record_box(kind, a, origin, shape):
    if recorder is not None:
        grids = np.meshgrid(*[np.arange(o, o + n) for o, n in zip(origin, shape)], indexing="ij")
        inb = np.logical_and.reduce([(g >= 0) & (g < d) for g, d in zip(grids, a.shape)])
        recorder(kind, a, tuple(grids), inb, None)


# ---- rectangular reads and writes ------------------------------------------------------------

def _box(origin, shape, dims):
    """Source and destination slices of the in-bounds part of a box, or None if it is empty."""
    src, dst = [], []
    for o, n, d in zip(origin, shape, dims):
        lo, hi = max(o, 0), min(o + n, d)
        if lo >= hi:
            return None, None
        src.append(slice(lo, hi))
        dst.append(slice(lo - o, hi - o))
    return tuple(src), tuple(dst)


def _read_box(a: np.ndarray, origin, shape, padding_mode, dtype, check_bounds, what):
    """The box of ``shape`` at element ``origin`` of ``a``, padded; returns (values, poison)
    where poison (strict mode, UNDETERMINED padding) marks the padded elements."""
    _record_box("load", a, origin, shape)
    inside = all(o >= 0 and o + n <= d for o, n, d in zip(origin, shape, a.shape))
    if inside:
        key = tuple(slice(o, o + n) for o, n in zip(origin, shape))
        return np.array(a[key]), None
    src, dst = _box(origin, shape, a.shape)
    if not check_bounds or src is None and state.strict:
        problem = "lies entirely outside" if src is None else "extends outside"
        hint = ("check_bounds=False promises in-bounds tiles" if not check_bounds else
                "undefined behavior on the GPU; strict mode")
        raise IndexError(f"{what}: the tile at element offset {tuple(origin)} with shape "
                         f"{tuple(shape)} {problem} the array of shape {a.shape} ({where()}; "
                         f"{hint})")
    out = np.full(shape, _padding_value(padding_mode, dtype), dtype=a.dtype)
    poison = None
    if state.strict and (padding_mode is None or padding_mode == ct.PaddingMode.UNDETERMINED):
        poison = np.ones(shape, bool)
    if src is not None:
        out[dst] = a[src]
        if poison is not None:
            poison[dst] = False
    return out, poison


def _write_box(a: np.ndarray, origin, values: np.ndarray, check_bounds, what, poison=None):
    shape = values.shape
    _record_box("store", a, origin, shape)
    inside = all(o >= 0 and o + n <= d for o, n, d in zip(origin, shape, a.shape))
    if inside:
        _check_poison(poison, None, what)
        a[tuple(slice(o, o + n) for o, n in zip(origin, shape))] = values
        return
    src, dst = _box(origin, shape, a.shape)
    if not check_bounds or (src is None and state.strict):
        raise IndexError(f"{what}: the tile at element offset {tuple(origin)} with shape "
                         f"{tuple(shape)} extends outside the array of shape {a.shape} "
                         f"({where()})")
    if src is not None:
        if poison is not None:
            _check_poison(poison[dst], None, what)
        a[src] = values[dst]


def _values_for(tile, dtype, shape, what) -> np.ndarray:
    """A tile (or scalar) converted to the array dtype (implicit casts only) and broadcast."""
    src_dtype = tile.dtype if isinstance(tile, Tile) else tile
    if not isinstance(tile, (Tile, bool, int, float)):
        raise TypeError(f"{what}: expected a tile or a Python number, got {type(tile).__name__}")
    D.check_implicit_cast(src_dtype, dtype, f"{what} into a {dtype} array")
    t = as_tile(tile, dtype)
    try:
        return np.broadcast_to(t._data, shape)
    except ValueError:
        raise TypeError(f"{what}: a tile of shape {t.shape} cannot be broadcast to {shape}") \
            from None


# ---- load / store in tile space --------------------------------------------------------------

def load(array, /, index, shape, *, order="C", padding_mode=ct.PaddingMode.UNDETERMINED,
         check_bounds=True, latency=None, allow_tma=None,
         memory_order=ct.MemoryOrder.WEAK, memory_scope=ct.MemoryScope.NONE) -> Tile:
    arr = as_array(array, "ct.load")
    nd = arr.ndim
    idx = _index_tuple(index, nd, "ct.load")
    tshape = const_shape(shape, "ct.load shape", rank=nd, allow_0d=True)
    bshape = tshape or (1,) * nd
    order = _order(order, nd)
    _check_hints(latency, allow_tma)
    view = arr._a.transpose(order) if order != tuple(range(nd)) else arr._a
    origin = tuple(i * n for i, n in zip(idx, bshape))
    data, poison = _read_box(view, origin, bshape, padding_mode, arr.dtype, check_bounds,
                             "ct.load")
    return Tile(data.reshape(tshape), arr.dtype,
                None if poison is None else poison.reshape(tshape))


def store(array, /, index, tile, *, order="C", check_bounds=True, latency=None,
          allow_tma=None, memory_order=ct.MemoryOrder.WEAK,
          memory_scope=ct.MemoryScope.NONE) -> None:
    arr = as_array(array, "ct.store")
    nd = arr.ndim
    idx = _index_tuple(index, nd, "ct.store")
    tshape = tile.shape if isinstance(tile, Tile) else ()
    if len(tshape) not in (0, nd):
        raise TypeError(f"ct.store: the tile has rank {len(tshape)} but the array has rank {nd}"
                        " (only 0-d tiles broadcast)")
    bshape = tshape or (1,) * nd
    order = _order(order, nd)
    _check_hints(latency, allow_tma)
    values = _values_for(tile, arr.dtype, bshape, "ct.store")
    view = arr._a.transpose(order) if order != tuple(range(nd)) else arr._a
    origin = tuple(i * n for i, n in zip(idx, bshape))
    poison = _poison_of(tile, tshape)
    _write_box(view, origin, values, check_bounds, "ct.store",
               None if poison is None else poison.reshape(bshape))


def num_tiles(array, /, axis, shape, order="C") -> Tile:
    arr = as_array(array, "ct.num_tiles")
    nd = arr.ndim
    axis = normalize_axis(axis, nd)
    bshape = const_shape(shape, "ct.num_tiles shape", rank=nd, allow_0d=True) or (1,) * nd
    dims = [arr._a.shape[o] for o in _order(order, nd)]
    return Tile(np.array(-(-dims[axis] // bshape[axis]), dtype=np.int32), ct.int32)


# ---- gather / scatter ------------------------------------------------------------------------

def _index_arrays(array: Array, indices, what):
    """Broadcast integer index tiles/scalars to a common shape; returns (arrays, in-bounds mask)."""
    items = tuple(indices) if isinstance(indices, (tuple, list)) else (indices,)
    if not isinstance(indices, (tuple, list)) and array.ndim != 1:
        raise TypeError(f"{what}: for an array of rank {array.ndim}, indices must be a tuple of "
                        f"{array.ndim} index tiles")
    if len(items) != array.ndim:
        raise TypeError(f"{what}: indices has {len(items)} entries but the array has rank "
                        f"{array.ndim}")
    arrays = []
    for k, it in enumerate(items):
        if isinstance(it, Tile):
            if not D.is_integral(it.dtype):
                raise TypeError(f"{what}: index for dimension {k} has non-integer dtype "
                                f"{it.dtype}")
            arrays.append(it._data.astype(np.int64, copy=False)
                          if it.dtype != ct.uint64 else it._data)
        else:
            arrays.append(np.asarray(to_int(it, f"{what} index"), dtype=np.int64))
    try:
        arrays = np.broadcast_arrays(*arrays)
    except ValueError:
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise TypeError(f"{what}: index shapes {shapes} do not broadcast to a common shape") \
            from None
    inb = np.ones(arrays[0].shape if arrays else (), dtype=bool)
    for a, d in zip(arrays, array._a.shape):
        inb &= (a >= 0) & (a < d)
    return arrays, inb


def _user_mask(mask, shape, what):
    if mask is None:
        return None
    if isinstance(mask, bool):
        return np.full(shape, mask)
    if not isinstance(mask, Tile) or not D.is_boolean(mask.dtype):
        raise TypeError(f"{what}: mask must be a bool tile, got "
                        f"{mask.dtype if isinstance(mask, Tile) else type(mask).__name__}")
    try:
        return np.broadcast_to(mask._data, shape)
    except ValueError:
        raise TypeError(f"{what}: mask shape {mask.shape} does not broadcast to the index "
                        f"shape {shape}") from None


def _offending(arrays, bad, limit=5) -> str:
    pos = np.argwhere(bad)[:limit]
    items = [tuple(int(a[tuple(p)]) for a in arrays) for p in pos]
    more = "" if int(bad.sum()) <= limit else f" and {int(bad.sum()) - limit} more"
    return ", ".join(str(i if len(i) > 1 else i[0]) for i in items) + more


def gather(array, indices, /, *, mask=None, padding_value=0, check_bounds=True,
           latency=None) -> Tile:
    arr = as_array(array, "ct.gather")
    _check_hints(latency, None)
    arrays, inb = _index_arrays(arr, indices, "ct.gather")
    shape = inb.shape
    user = _user_mask(mask, shape, "ct.gather")
    wanted = user if user is not None else np.ones(shape, bool)
    _record("gather", arr._a, arrays, inb, user)
    bad = wanted & ~inb
    if bad.any() and (not check_bounds or state.strict):
        why = ("check_bounds=False promises in-bounds indices" if not check_bounds
               else "strict mode; pass mask=... to exclude them if intended")
        raise IndexError(f"ct.gather: out-of-bounds indices {_offending(arrays, bad)} for an "
                         f"array of shape {arr._a.shape} ({where()}; {why})")
    _check_poison(_index_poison(indices if isinstance(indices, (tuple, list)) else (indices,),
                                shape), wanted, "ct.gather indices")
    _check_poison(_poison_of(mask, shape), None, "ct.gather mask")
    valid = wanted & inb
    pad = _values_for(padding_value, arr.dtype, shape, "ct.gather padding_value")
    if valid.all():
        return Tile(np.asarray(arr._a[tuple(arrays)]), arr.dtype)
    safe = tuple(np.where(valid, a, 0) for a in arrays)
    if arr._a.size == 0:
        return Tile(np.array(pad), arr.dtype)
    out = np.where(valid, arr._a[safe], pad)
    return Tile(np.asarray(out.astype(arr._a.dtype, copy=False)), arr.dtype)


def scatter(array, indices, value, /, *, mask=None, check_bounds=True, latency=None) -> None:
    arr = as_array(array, "ct.scatter")
    _check_hints(latency, None)
    arrays, inb = _index_arrays(arr, indices, "ct.scatter")
    shape = inb.shape
    values = _values_for(value, arr.dtype, shape, "ct.scatter")
    user = _user_mask(mask, shape, "ct.scatter")
    wanted = user if user is not None else np.ones(shape, bool)
    _record("scatter", arr._a, arrays, inb, user)
    if not check_bounds and (wanted & ~inb).any():
        raise IndexError(f"ct.scatter: out-of-bounds indices {_offending(arrays, wanted & ~inb)}"
                         f" with check_bounds=False for an array of shape {arr._a.shape} "
                         f"({where()})")
    valid = wanted & inb
    _check_poison(_index_poison(indices if isinstance(indices, (tuple, list)) else (indices,),
                                shape), wanted, "ct.scatter indices")
    _check_poison(_poison_of(mask, shape), None, "ct.scatter mask")
    _check_poison(_poison_of(value, shape), valid, "ct.scatter")
    if valid.all():
        arr._a[tuple(arrays)] = values
    else:
        arr._a[tuple(a[valid] for a in arrays)] = values[valid]


# ---- advanced indexing -----------------------------------------------------------------------

def slice_init(self, start, length, /) -> None:
    """``ct.Slice(start, length)`` inside a kernel: remember the two numbers on the object."""
    self._emu_start = to_int(start, "ct.Slice start")
    self._emu_length = const_int(length, "ct.Slice length")


def _advanced_index(array: Array, indices, what):
    if array.ndim < 2:
        raise TypeError(f"{what} requires a 2D or higher-rank array; use ct.gather/ct.scatter "
                        "for 1D arrays")
    if not isinstance(indices, (tuple, list)) or len(indices) != array.ndim:
        raise TypeError(f"{what}: indices must be a tuple of length {array.ndim}")
    axes, sparse = [], []
    for dim, item in enumerate(indices):
        if isinstance(item, Tile):
            if item.ndim != 1 or not D.is_integral(item.dtype):
                raise TypeError(f"{what}: the sparse index at dim {dim} must be a 1D integer "
                                f"tile, got a {item.dtype} tile of shape {item.shape}")
            sparse.append(dim)
            axes.append(item._data.astype(np.int64))
        elif isinstance(item, ct.Slice) and hasattr(item, "_emu_length"):
            if not _is_pow2(item._emu_length):
                raise TypeError(f"{what}: ct.Slice length {item._emu_length} at dim {dim} must "
                                "be a power of two")
            axes.append(item._emu_start + np.arange(item._emu_length, dtype=np.int64))
        else:
            raise TypeError(f"{what}: index at dim {dim} must be a 1D integer tile or "
                            f"ct.Slice(start, length), got {item!r}")
    if len(sparse) != 1:
        raise TypeError(f"{what}: exactly one index must be a 1D integer tile (the sparse dim),"
                        f" found {len(sparse)}")
    for dim, a in enumerate(axes):
        if not _is_pow2(a.shape[0]):
            raise TypeError(f"{what}: index at dim {dim} has size {a.shape[0]}; must be a power "
                            "of two")
    grids = np.ix_(*axes)
    arrays = np.broadcast_arrays(*grids)
    inb = np.ones(arrays[0].shape, bool)
    for a, d in zip(arrays, array._a.shape):
        inb &= (a >= 0) & (a < d)
    return arrays, inb


def load_advanced_indexing(array, indices, /, *, padding_mode=ct.PaddingMode.UNDETERMINED,
                           latency=None, allow_tma=None) -> Tile:
    arr = as_array(array, "ct.load_advanced_indexing")
    _check_hints(latency, allow_tma)
    arrays, inb = _advanced_index(arr, indices, "ct.load_advanced_indexing")
    _record("load", arr._a, arrays, inb)
    sparse = [t for t in indices if isinstance(t, Tile)]
    _check_poison(_poison_of(sparse[0], sparse[0].shape), None,
                  "ct.load_advanced_indexing indices")
    if inb.all():
        return Tile(np.asarray(arr._a[tuple(arrays)]), arr.dtype)
    pad = _padding_value(padding_mode, arr.dtype)
    out = np.full(inb.shape, pad, dtype=arr._a.dtype)
    out[inb] = arr._a[tuple(a[inb] for a in arrays)]
    poison = ~inb if state.strict and padding_mode == ct.PaddingMode.UNDETERMINED else None
    return Tile(out, arr.dtype, poison)


def store_advanced_indexing(array, indices, tile, /, *, latency=None, allow_tma=None) -> None:
    arr = as_array(array, "ct.store_advanced_indexing")
    _check_hints(latency, allow_tma)
    arrays, inb = _advanced_index(arr, indices, "ct.store_advanced_indexing")
    _record("store", arr._a, arrays, inb)
    if isinstance(tile, Tile) and tile.shape != inb.shape:
        raise TypeError(f"ct.store_advanced_indexing: tile shape {tile.shape} does not match the"
                        f" shape implied by the indices {inb.shape}")
    values = _values_for(tile, arr.dtype, inb.shape, "ct.store_advanced_indexing")
    sparse = [t for t in indices if isinstance(t, Tile)]
    _check_poison(_poison_of(sparse[0], sparse[0].shape), None,
                  "ct.store_advanced_indexing indices")
    _check_poison(_poison_of(tile, inb.shape), inb, "ct.store_advanced_indexing")
    arr._a[tuple(a[inb] for a in arrays)] = values[inb]


# ---- atomics ---------------------------------------------------------------------------------

_INT_32_64 = (ct.int32, ct.int64, ct.uint32, ct.uint64)
_INT_FLOAT_32_64 = _INT_32_64 + (ct.float32, ct.float64)
_RMW_DTYPES = {
    "xchg": _INT_FLOAT_32_64, "add": _INT_FLOAT_32_64 + (ct.float16, ct.bfloat16),
    "max": _INT_32_64, "min": _INT_32_64, "and": _INT_32_64, "or": _INT_32_64,
    "xor": _INT_32_64,
}
_RMW_FN = {
    "xchg": lambda old, u: u, "add": np.add, "max": np.maximum, "min": np.minimum,
    "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor,
}


def _rank_in_group(lin: np.ndarray):
    """For each element, how many earlier elements (in C order) hit the same address."""
    order = np.argsort(lin, kind="stable")
    sl = lin[order]
    starts = np.ones(sl.shape, bool)
    starts[1:] = sl[1:] != sl[:-1]
    pos = np.arange(sl.size)
    group_start = np.maximum.accumulate(np.where(starts, pos, 0))
    rank = np.empty_like(pos)
    rank[order] = pos - group_start
    return rank


def _serial_add(a: np.ndarray, idx, lin, uv) -> np.ndarray:
    """Atomic adds applied one element after another in C order, vectorized: each element
    sees the original value plus the updates of the earlier elements at the same address.
    Sums are formed in 64 bits (integers wrap to the array width as on the GPU)."""
    kind = a.dtype.kind
    wide = np.float64 if kind not in "iu" else (np.int64 if kind == "i" else np.uint64)
    order = np.argsort(lin, kind="stable")
    sl = lin[order]
    su = uv[order].astype(wide)
    pos = np.arange(sl.size)
    starts = np.ones(sl.shape, bool)
    starts[1:] = sl[1:] != sl[:-1]
    ends = np.ones(sl.shape, bool)
    ends[:-1] = starts[1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0))
    inclusive = np.cumsum(su, dtype=wide)
    before = inclusive - su  # sum of all earlier updates (any address)
    excl = before - before[first]  # ... at the same address only
    orig = a[tuple(x[order] for x in idx)].astype(wide)
    got = np.empty(uv.shape, dtype=a.dtype)
    got[order] = (orig + excl).astype(a.dtype)
    final = (orig + excl + su)[ends].astype(a.dtype)
    a[tuple(x[order][ends] for x in idx)] = final
    return got


def _atomic_values(op, array: Array, value, shape, what):
    if op in ("and", "or", "xor"):
        src = value.dtype if isinstance(value, Tile) else D.dtype_of_python_scalar(value)
        if src != array.dtype:
            raise TypeError(f"{what}: bitwise atomics need the update dtype ({src}) to match the "
                            f"array dtype ({array.dtype}) exactly")
    return _values_for(value, array.dtype, shape, what)


def _atomic_rmw(op, array: Array, arrays, update, check_bounds, what) -> np.ndarray:
    if array.dtype not in _RMW_DTYPES[op]:
        raise TypeError(f"{what}: unsupported array dtype {array.dtype} (supported: "
                        f"{', '.join(d.name for d in _RMW_DTYPES[op])})")
    inb = np.ones(arrays[0].shape, bool)
    for a, d in zip(arrays, array._a.shape):
        inb &= (a >= 0) & (a < d)
    shape = inb.shape
    _record("atomic", array._a, arrays, inb)
    u = _atomic_values(op, array, update, shape, what)
    if not check_bounds and not inb.all():
        raise IndexError(f"{what}: out-of-bounds indices {_offending(arrays, ~inb)} with "
                         f"check_bounds=False for an array of shape {array._a.shape} ({where()})")
    a = array._a
    old = np.zeros(shape, dtype=a.dtype)  # implementation-defined for out-of-bounds elements
    if not inb.any():
        return old
    idx = tuple(x[inb] for x in arrays)
    uv = u[inb]
    lin = np.ravel_multi_index(idx, a.shape)
    if op == "add":
        old[inb] = _serial_add(a, idx, lin, uv)
        return old
    fn = _RMW_FN[op]
    cdt = D.compute(array.dtype)
    got = np.empty(uv.shape, dtype=a.dtype)
    rank = _rank_in_group(lin)
    with np.errstate(all="ignore"):
        for r in range(int(rank.max()) + 1):  # one round per repeated address, in C order
            sel = rank == r
            sidx = tuple(x[sel] for x in idx)
            cur = a[sidx]
            got[sel] = cur
            new = fn(cur.astype(cdt), uv[sel].astype(cdt))
            a[sidx] = np.asarray(new).astype(a.dtype)
    old[inb] = got
    return old


def _atomic(op):
    def atomic(array, indices, update, /, *, check_bounds=True,
               memory_order=ct.MemoryOrder.ACQ_REL, memory_scope=ct.MemoryScope.DEVICE):
        what = f"ct.atomic_{op}"
        arr = as_array(array, what)
        arrays, inb = _index_arrays(arr, indices, what)
        items = indices if isinstance(indices, (tuple, list)) else (indices,)
        _check_poison(_index_poison(items, inb.shape), None, what + " indices")
        _check_poison(_poison_of(update, inb.shape), inb, what)
        return Tile(_atomic_rmw(op, arr, arrays, update, check_bounds, what), arr.dtype)
    atomic.__name__ = f"atomic_{op}"
    return atomic


atomic_xchg = _atomic("xchg")
atomic_add = _atomic("add")
atomic_max = _atomic("max")
atomic_min = _atomic("min")
atomic_and = _atomic("and")
atomic_or = _atomic("or")
atomic_xor = _atomic("xor")


def atomic_cas(array, indices, expected, desired, /, *, check_bounds=True,
               memory_order=ct.MemoryOrder.ACQ_REL, memory_scope=ct.MemoryScope.DEVICE) -> Tile:
    what = "ct.atomic_cas"
    arr = as_array(array, what)
    if arr.dtype not in _INT_FLOAT_32_64:
        raise TypeError(f"{what}: unsupported array dtype {arr.dtype}")
    arrays, inb = _index_arrays(arr, indices, what)
    shape = inb.shape
    _record("atomic", arr._a, arrays, inb)
    items = indices if isinstance(indices, (tuple, list)) else (indices,)
    _check_poison(_index_poison(items, shape), None, what + " indices")
    for v, n in ((expected, "expected"), (desired, "desired")):
        _check_poison(_poison_of(v, shape), inb, f"{what} {n}")
    exp = _values_for(expected, arr.dtype, shape, what + " expected")
    des = _values_for(desired, arr.dtype, shape, what + " desired")
    if not check_bounds and not inb.all():
        raise IndexError(f"{what}: out-of-bounds indices {_offending(arrays, ~inb)} with "
                         f"check_bounds=False for an array of shape {arr._a.shape} ({where()})")
    a = arr._a
    old = np.array(exp)  # out-of-bounds elements return `expected`, as documented
    if inb.any():
        idx = tuple(x[inb] for x in arrays)
        e, d = exp[inb], des[inb]
        lin = np.ravel_multi_index(idx, a.shape)
        rank = _rank_in_group(lin)
        got = np.empty(e.shape, a.dtype)
        bits = np.dtype(f"u{a.itemsize}")
        for r in range(int(rank.max()) + 1):
            sel = rank == r
            sidx = tuple(x[sel] for x in idx)
            cur = a[sidx]
            got[sel] = cur
            hit = cur.view(bits) == e[sel].view(bits)  # compare bit patterns, as hardware does
            a[tuple(x[hit] for x in sidx)] = d[sel][hit]
        old[inb] = got
    return Tile(old, arr.dtype)
