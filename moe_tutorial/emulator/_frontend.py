"""cuTile's own front end (parsing, typing, constant folding; not the tileiras backend) run on
the CPU before the emulator runs a kernel, so a program the GPU compiler rejects is rejected
here with the same exception and message.

The outcome is cached per kernel and specialisation (argument dtypes, ranks, index dtypes,
constants), as ``ct.launch`` caches compiled kernels. ``MOE_TUTORIAL_EMULATOR_FRONTEND=0``
switches the check off (read at each launch).
"""
from __future__ import annotations

import os
import time
import warnings
import weakref

import numpy as np

import cuda.tile as ct

from . import _dtypes as D

FRONTEND_ENV = "MOE_TUTORIAL_EMULATOR_FRONTEND"

# kernel -> {signature: None (accepted) or the cuTile exception}
_OUTCOMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# seconds spent in the front end in this process (for measurements)
stats = {"runs": 0, "seconds": 0.0}


def enabled() -> bool:
    return os.environ.get(FRONTEND_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _leaf(annotation, what):
    return getattr(annotation, what, None) if annotation is not None else None


def _constraint(value, annotation):
    """The cuTile parameter constraint ``ct.launch`` would derive for ``value``."""
    from cuda.tile.compilation import (ArrayConstraint, ListConstraint, ScalarConstraint,
                                       TupleConstraint)
    def array(a, array_ann):
        return ArrayConstraint(D.from_numpy(a.dtype), a.ndim,
                               index_dtype=array_ann.index_dtype if array_ann else ct.int32,
                               stride_lower_bound_incl=0, alias_groups=(),
                               may_alias_internally=False)

    if isinstance(value, np.ndarray):
        return array(value, _leaf(annotation, "array"))
    if isinstance(value, tuple):
        items = getattr(annotation, "items", None)
        each = getattr(annotation, "each", annotation)
        return TupleConstraint([_constraint(v, items[i] if items else each)
                                for i, v in enumerate(value)])
    if isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
        list_ann = _leaf(annotation, "list")
        return ListConstraint(array(value[0], getattr(list_ann, "element", None)),
                              alias_groups=(), elements_may_alias=False)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float)) and not getattr(annotation, "constant", False):
        scalar_ann = _leaf(annotation, "scalar")
        if scalar_ann is not None:
            return ScalarConstraint(scalar_ann.dtype)
        if isinstance(value, bool):
            return ScalarConstraint(ct.bool_)
        return ScalarConstraint(ct.int32 if isinstance(value, int) else ct.float32)
    return value  # a compile-time constant


def _bytecode_version():
    from cuda.tile import _compile as C
    try:  # the version the installed tileiras accepts, as on the GPU (probed once per process)
        return C._get_max_supported_bytecode_version(C.default_tile_context.config.temp_dir)
    except Exception:  # no tileiras: the newest version the front end knows
        return max(C._SUPPORTED_VERSIONS)


def check(kernel, args) -> None:
    """Run cuTile's front end on ``kernel`` specialised for ``args`` (first time only) and
    raise its exception if it rejects the program."""
    annotations = kernel._annotated_function.parameter_annotations
    try:
        from cuda.tile.compilation import CallingConvention, KernelSignature
        params = [_constraint(a, ann) for a, ann in zip(args, annotations)]
        sig = KernelSignature(params, CallingConvention.cutile_python_v2())
        sig = sig.with_mangled_symbol(kernel._pyfunc.__name__)
        key = repr(sig)  # constants need not be hashable; their repr names the specialisation
    except Exception as e:  # an argument cuTile cannot describe: ct.launch would refuse it
        _skip(kernel, e)
        return
    outcomes = _OUTCOMES.setdefault(kernel, {})
    if key not in outcomes:
        outcomes[key] = _run(kernel, sig)
    error = outcomes[key]
    if error is not None:
        raise error.with_traceback(None)


def _run(kernel, sig):
    from cuda.tile._compile import compile_tile
    start = time.perf_counter()
    try:
        compile_tile(kernel._annotated_function, [sig], sm_arch=None, return_cubin=False,
                     compiler_options=kernel._compiler_options,
                     bytecode_version=_bytecode_version())
        return None
    except ct.TileError as e:
        return e
    except Exception as e:  # noqa: BLE001 - a front-end failure that is not a verdict
        _skip(kernel, e)
        return None
    finally:
        stats["runs"] += 1
        stats["seconds"] += time.perf_counter() - start


def _skip(kernel, e) -> None:
    warnings.warn(f"cuTile's front end could not check kernel {kernel._pyfunc.__name__!r} "
                  f"({type(e).__name__}: {e}); the emulator runs it unchecked", stacklevel=3)
