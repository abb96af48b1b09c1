"""A tile trace: which elements every block of a kernel read and wrote, drawn as a picture.

    tr = mt.trace(kernel, grid, args)     # runs the kernel once on the CPU emulator
    tr.plot(block=(1,))                   # arrays as grids coloured by block; block 1 outlined
    tr.elements("c", "written", block=(1,))   # the set of indices block 1 wrote into c

Every ``ct.load``/``ct.gather`` (and the other memory operations) reports each lane it touched
to the emulator's recorder. A lane is one of

* ``read`` / ``written``: an element of the array that was read or written;
* ``padding``: a lane of a loaded tile outside the array (filled with the padding value);
* ``masked``: a lane that touched nothing: masked off in a gather or scatter, or a lane of a
  stored tile outside the array (partial tiles are masked on store);
* ``out of bounds``: a gather/scatter/atomic index outside the array that no mask excluded
  (a gather returns the padding value there, a scatter does nothing).

Indices are those of the argument arrays, so a tile loaded through ``order=`` or a view made with
``Array.slice`` lands where it really is. Arrays are copied to NumPy first, so a trace never
changes the caller's arrays and works without a GPU. If the kernel raises, the trace keeps what
happened up to the error (``tr.error``), which is often the most useful picture.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import device
from .emulator import _memory, launch as emulator_launch
from .emulator._context import state

READ, WRITTEN, PADDING, MASKED, OUT_OF_BOUNDS = ("read", "written", "padding", "masked",
                                                 "out of bounds")
_WRITES = ("store", "scatter", "atomic")


@dataclass(frozen=True)
class Access:
    """One memory operation of one block: ``coords[i]`` (array indices) has ``status[i]``."""
    block: tuple[int, int, int]
    op: str          # load, store, gather, scatter, atomic
    array: str       # the kernel parameter name (``w[1]`` for an item of a tuple argument)
    coords: np.ndarray   # (lanes, ndim) int64
    status: np.ndarray   # (lanes,) str


def _statuses(op, inb, active):
    active = np.ones(inb.shape, bool) if active is None else np.broadcast_to(active, inb.shape)
    hit = WRITTEN if op in _WRITES else READ
    outside = PADDING if op == "load" else (MASKED if op == "store" else OUT_OF_BOUNDS)
    status = np.where(inb, hit, outside).astype(object)
    status[~active] = MASKED
    return status.ravel()


def _decompose(offset: int, strides, shape) -> np.ndarray | None:
    """Write a byte offset as indices of an array with these strides (None if it does not fit)."""
    coords = np.zeros(len(strides), np.int64)
    rest = offset
    for j in sorted(range(len(strides)), key=lambda j: (-abs(strides[j]), -shape[j])):
        if strides[j] > 0 and shape[j] > 1:
            coords[j], rest = divmod(rest, strides[j])
    return coords if rest == 0 else None


class _Recorder:
    def __init__(self, named: dict[str, np.ndarray]):
        self.named = named
        self.accesses: list[Access] = []

    def _owner(self, a: np.ndarray):
        for name, arr in self.named.items():
            if arr.size and a.size and np.may_share_memory(a, arr):
                return name, arr
        return None, None

    def __call__(self, op, a, indices, inb, active):
        name, arr = self._owner(a)
        if name is None:
            return
        base = _decompose(a.__array_interface__["data"][0] - arr.__array_interface__["data"][0],
                          arr.strides, arr.shape)
        axes = [_decompose(s, arr.strides, arr.shape) if s > 0 else None for s in a.strides]
        if base is None:
            return
        coords = np.broadcast_to(base, (inb.size, arr.ndim)).copy()
        for k, idx in enumerate(indices):
            if a.shape[k] == 1 and axes[k] is None:
                continue
            step = axes[k] if axes[k] is not None else np.zeros(arr.ndim, np.int64)
            coords += np.asarray(idx, np.int64).reshape(-1, 1) * step
        self.accesses.append(Access(tuple(state.bid), op, name, coords,
                                    _statuses(op, inb, active)))


def _named_arrays(params, args):
    named = {}

    def visit(name, value):
        if isinstance(value, np.ndarray):
            named[name] = value
        elif isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                visit(f"{name}[{i}]", v)

    for p, v in zip(params, args):
        visit(p, v)
    return named


def _host(value):
    if isinstance(value, (tuple, list)):
        return type(value)(_host(v) for v in value)
    if isinstance(value, np.ndarray) or device.is_gpu_array(value):
        return np.array(device.to_numpy(value))  # a copy: the caller's arrays stay untouched
    return value


def _block3(block) -> tuple[int, int, int] | None:
    if block is None:
        return None
    b = (int(block),) if isinstance(block, (int, np.integer)) else tuple(int(x) for x in block)
    if not 1 <= len(b) <= 3:
        raise ValueError(f"block must be an int or 1 to 3 ints, got {block!r}")
    return b + (0,) * (3 - len(b))


class Trace:
    """What every block of one launch read and wrote. See the module docstring."""

    def __init__(self, kernel_name, grid, arrays, accesses, error):
        self.kernel_name = kernel_name
        self.grid = grid
        self.arrays = arrays        # name -> NumPy array, after the run
        self.accesses = accesses    # list of Access, in execution order
        self.error = error          # the exception the kernel raised, or None

    @property
    def blocks(self) -> list[tuple[int, int, int]]:
        return sorted({a.block for a in self.accesses}, key=lambda b: (b[2], b[1], b[0]))

    def elements(self, array: str, status: str = READ, *, block=None, op: str | None = None
                 ) -> set[tuple[int, ...]]:
        """The indices of ``array`` whose lanes had ``status`` (in ``block`` / ``op`` if given)."""
        if array not in self.arrays:
            raise KeyError(f"array {array!r} is not a kernel argument; the arrays are "
                           f"{', '.join(self.arrays)}")
        b = _block3(block)
        out = set()
        for a in self.accesses:
            if a.array == array and (b is None or a.block == b) and (op is None or a.op == op):
                out.update(map(tuple, a.coords[a.status == status].tolist()))
        return out

    def summary(self) -> str:
        lines = [f"kernel {self.kernel_name!r}, grid {self.grid}: {len(self.blocks)} blocks, "
                 f"{len(self.accesses)} memory operations"]
        for name, arr in self.arrays.items():
            parts = []
            for status in (READ, WRITTEN, PADDING, MASKED, OUT_OF_BOUNDS):
                n = sum(int((a.status == status).sum()) for a in self.accesses if a.array == name)
                if n:
                    parts.append(f"{n} {status}")
            if parts:
                lines.append(f"  {name} {arr.shape}: " + ", ".join(parts) + " (lanes)")
        if self.error is not None:
            lines.append(f"  the kernel raised {type(self.error).__name__}: {self.error}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def plot(self, block=None, *, arrays=None, wrap: int = 32, ax=None):
        """Draw ``arrays`` (default: every array the kernel touched) as grids of cells coloured
        by the block that wrote them (arrays the kernel writes) or read them (the others).
        Padding lanes are hatched, out-of-bounds indices crossed, untouched cells white; ``block``
        is outlined in black and the other blocks faded. 1-D arrays wrap every ``wrap`` cells."""
        from ._trace_plot import plot
        return plot(self, _block3(block), arrays, wrap, ax)


def trace(kernel, grid, args) -> Trace:
    """Run ``kernel`` on ``grid`` with ``args`` (as for ``mt.launch``) on the CPU emulator and
    record what every block read and wrote."""
    import cuda.tile as ct
    if not isinstance(kernel, ct.kernel):
        raise TypeError(f"trace: kernel must be a @ct.kernel function, got "
                        f"{type(kernel).__name__}")
    args = tuple(_host(a) for a in args)
    params = list(kernel._annotated_function.pysig.parameters)
    named = _named_arrays(params, args)
    recorder = _Recorder(named)
    saved, _memory.recorder = _memory.recorder, recorder
    error = None
    try:
        emulator_launch(None, grid, kernel, args)
    except Exception as e:  # noqa: BLE001 - a failing kernel still has a picture to show
        error = e
    finally:
        _memory.recorder = saved
    if error is not None and not recorder.accesses:
        raise error  # nothing ran far enough to draw: show the error itself
    g = (grid,) if isinstance(grid, (int, np.integer)) else tuple(int(x) for x in grid)
    return Trace(kernel._pyfunc.__name__, g, named, recorder.accesses, error)
