"""Argument checks shared by the host wrappers: one place for the friendly errors.

Every check names the function and the argument (``"moe_sum: out must be ..."``); ``fn=None``
leaves the prefix out. Checks read host metadata only (shape, dtype, flags), never array values,
except :func:`require_values_in` (a host sync on the GPU, for ``validate=True`` paths).
"""
from __future__ import annotations

import numpy as np

from . import device

FLOAT_NAMES = ("float16", "bfloat16", "float32")


def fail(fn, exc, msg):
    raise exc(f"{fn}: {msg}" if fn else msg)


def is_array(a) -> bool:
    return isinstance(a, np.ndarray) or device.is_gpu_array(a)


def require_array(fn, name, a, ndim=None, dtypes=None, what=None):
    """``a`` is a NumPy/CuPy array with ``ndim`` axes and a dtype named in ``dtypes``."""
    if not is_array(a):
        fail(fn, TypeError, f"{name} must be a NumPy or CuPy array, got {type(a).__name__}")
    if ndim is not None and a.ndim != ndim:
        shape = f" with shape {what}" if what else ""
        fail(fn, ValueError, f"{name} must be {ndim}-D{shape}, got shape {tuple(a.shape)}")
    if dtypes is not None and np.dtype(a.dtype).name not in dtypes:
        fail(fn, TypeError, f"{name} must be {' or '.join(dtypes)}, got {a.dtype}")
    return a


def require_int(fn, name, v, lo=None, hi=None):
    """A real integer (``int`` or a NumPy integer; not a bool, a float or a string) in
    ``[lo, hi]``; returned as a Python int."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        fail(fn, TypeError, f"{name} must be an int, got {type(v).__name__} {v!r}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]" if lo is not None \
            else f"<= {hi}"
        fail(fn, ValueError, f"{name} must be {bounds}, got {v}")
    return v


def require_bool(fn, name, v):
    if not isinstance(v, (bool, np.bool_)):
        fail(fn, TypeError, f"{name} must be a bool, got {v!r}")
    return bool(v)


def require_same_device(fn, **arrays):
    """All non-None arrays on the GPU, or all on the CPU."""
    kinds = {n: device.is_gpu_array(a) for n, a in arrays.items() if a is not None}
    if len(set(kinds.values())) > 1:
        where = ", ".join(f"{n} on {'GPU' if g else 'CPU'}" for n, g in kinds.items())
        fail(fn, TypeError, f"all arrays must be on the same device ({where})")


def overlaps(a, b) -> bool:
    """Do ``a`` and ``b`` share memory (exact, cheap when their address ranges are apart)?"""
    if a is None or b is None or a.size == 0 or b.size == 0:
        return False
    xp = device.array_module(a)
    if device.array_module(b) is not xp or not xp.may_share_memory(a, b):
        return False
    return bool(xp.shares_memory(a, b))


def require_out(fn, name, out, shape, dtype, reads=(), also=()):
    """``out`` (given by the caller) is an array of ``shape`` and ``dtype``, writable, and
    shares no memory with the arrays the kernel reads (``reads``: ``(name, array)`` pairs) or
    with the other outputs (``also``)."""
    require_array(fn, name, out)
    if tuple(out.shape) != tuple(shape) or np.dtype(out.dtype) != np.dtype(dtype):
        fail(fn, ValueError, f"{name} must be {tuple(shape)} {np.dtype(dtype)}, got "
                             f"{tuple(out.shape)} {out.dtype}")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        fail(fn, ValueError, f"{name} is read-only")
    for other, a in reads:
        if overlaps(out, a):
            fail(fn, ValueError, f"{name} must not overlap {other} (the kernel reads {other} "
                                 f"while it writes {name})")
    for other, a in also:
        if overlaps(out, a):
            fail(fn, ValueError, f"{name} must not overlap {other} (both are outputs)")
    return out


def require_values_in(fn, name, a, lo, hi, what=""):
    """Every value of integer array ``a`` in ``[lo, hi]`` (a host sync on the GPU)."""
    if a.size == 0:
        return
    v = device.to_numpy(a)
    bad = (v < lo) | (v > hi)
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad)), v.shape)
        index = i[0] if len(i) == 1 else tuple(int(j) for j in i)
        fail(fn, ValueError, f"{name}[{index}] = {int(v[i])} is not in [{lo}, {hi}]{what}")
