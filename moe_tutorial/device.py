"""Choose where kernels run: the GPU through ``ct.launch`` or the CPU through our emulator.

``MOE_TUTORIAL_DEVICE=auto|gpu|cpu`` picks the default backend (``auto``: the GPU when CuPy sees a
CUDA device of compute capability >= 8.0 and cuTile can compile for it, else the CPU).
``launch`` itself follows the arrays it is given: CuPy arrays run on the GPU, NumPy arrays on the
emulator, so one test can run the same kernel on both.
"""
from __future__ import annotations

import functools
import os

import numpy as np

_CHOICES = ("auto", "gpu", "cpu")


@functools.lru_cache(maxsize=None)
def _cupy():
    try:
        import cupy
    except Exception:  # noqa: BLE001 - any import failure means "no CuPy"
        return None
    return cupy


@functools.lru_cache(maxsize=None)
def gpu_status() -> tuple[bool, str]:
    """(usable, reason): can this machine run cuTile kernels on a GPU?"""
    cp = _cupy()
    if cp is None:
        return False, "CuPy is not installed (pip install cupy-cuda13x)"
    driver = _driver_version()
    if driver is None:
        return False, "no NVIDIA driver on this machine (libcuda.so.1 cannot be loaded)"
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001
        if "InsufficientDriver" in type(e).__name__ + str(e):
            return False, (f"the NVIDIA driver supports CUDA {driver // 1000}.{driver % 1000 // 10}"
                           f"; cuTile needs CUDA 13 (driver r580 or newer)")
        return False, f"no usable CUDA device ({type(e).__name__}: {e})"
    if n == 0:
        return False, "CuPy sees no CUDA device"
    major, minor = _capability()
    if major < 8:
        return False, f"compute capability {major}.{minor} < 8.0 (cuTile needs Ampere or newer)"
    try:
        import cuda.tile  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, f"cuda-tile does not import ({e})"
    return True, "GPU available"


def _driver_version() -> int | None:
    """The CUDA version the installed NVIDIA driver supports (e.g. 13000), or None when there is
    no driver to load."""
    import ctypes
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return 0
    return version.value


def _capability() -> tuple[int, int]:
    cp = _cupy()
    cc = cp.cuda.Device().compute_capability  # e.g. "90"
    return int(cc[:-1]), int(cc[-1])


def requested() -> str:
    choice = os.environ.get("MOE_TUTORIAL_DEVICE", "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"MOE_TUTORIAL_DEVICE must be one of {_CHOICES}, got {choice!r}")
    return choice


def backend() -> str:
    """The default backend, ``"gpu"`` or ``"cpu"``."""
    choice = requested()
    ok, why = gpu_status()
    if choice == "gpu" and not ok:
        raise RuntimeError(f"MOE_TUTORIAL_DEVICE=gpu but the GPU cannot be used: {why}")
    if choice == "cpu":
        return "cpu"
    return "gpu" if ok else "cpu"


def get_xp(name: str | None = None):
    """The array module of a backend: CuPy for ``"gpu"``, NumPy for ``"cpu"``."""
    name = name or backend()
    if name == "gpu":
        cp = _cupy()
        if cp is None or not gpu_status()[0]:
            raise RuntimeError(f"the GPU backend is not available: {gpu_status()[1]}")
        return cp
    if name == "cpu":
        return np
    raise ValueError(f"backend must be 'gpu' or 'cpu', got {name!r}")


def is_gpu_array(a) -> bool:
    cp = _cupy()
    return cp is not None and isinstance(a, cp.ndarray)


def array_module(*arrays):
    """CuPy if any argument is a CuPy array, else NumPy (like ``cupy.get_array_module``)."""
    return _cupy() if any(is_gpu_array(a) for a in arrays) else np


def to_numpy(a):
    """A NumPy copy of a CuPy array; NumPy arrays and scalars are returned as they are."""
    return a.get() if is_gpu_array(a) else np.asarray(a)


def launch(grid, kernel, args) -> None:
    """Run ``kernel`` over ``grid``: ``ct.launch`` for CuPy arrays, the emulator for NumPy arrays.
    ``grid`` is a tuple of 1 to 3 positive ints (NumPy integers too; floats are refused)."""
    if not isinstance(grid, (tuple, list)) or not 1 <= len(grid) <= 3 or any(
            isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 1 for g in grid):
        raise TypeError(f"launch: grid must be a tuple of 1 to 3 positive ints, got {grid!r}")
    cp = _cupy()
    gpu_type = cp.ndarray if cp is not None else ()
    n_gpu = n_cpu = 0
    pending = list(args)
    while pending:  # arrays nested in tuples/lists count too
        a = pending.pop()
        if isinstance(a, gpu_type):
            n_gpu += 1
        elif isinstance(a, np.ndarray):
            n_cpu += 1
        elif isinstance(a, (tuple, list)):
            pending.extend(a)
    if n_gpu and n_cpu:
        raise TypeError("launch: all array arguments must be on the same device "
                        "(all CuPy or all NumPy)")
    if n_gpu:
        import cuda.tile as ct
        ct.launch(cp.cuda.get_current_stream(), grid, kernel, tuple(args))
    else:
        from . import emulator
        emulator.launch(None, tuple(int(g) for g in grid), kernel, tuple(args))


def describe() -> str:
    """A few lines about the environment, for the first cell of every notebook."""
    lines = []
    try:
        import cuda.tile as ct
        lines.append(f"cuda-tile {ct.__version__}")
    except Exception as e:  # noqa: BLE001
        lines.append(f"cuda-tile: not importable ({e})")
    lines.append(f"tileiras: {_tileiras_version()}")
    ok, why = gpu_status()
    b = backend()
    if b == "gpu":
        cp = _cupy()
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        major, minor = _capability()
        drv = cp.cuda.runtime.driverGetVersion()
        lines.insert(0, f"backend: GPU — {name}, compute capability {major}.{minor}, "
                        f"CUDA driver {drv // 1000}.{drv % 1000 // 10}")
    else:
        reason = "MOE_TUTORIAL_DEVICE=cpu" if requested() == "cpu" else why
        lines.insert(0, f"backend: CPU emulator (why: {reason})")
    return "\n".join(lines)


def _tileiras_version() -> str:
    try:
        from importlib.metadata import version
        return version("nvidia-cuda-tileiras")
    except Exception:  # noqa: BLE001
        import shutil
        return "on PATH" if shutil.which("tileiras") else "not installed"
