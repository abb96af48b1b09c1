"""Compile kernels to cubin with the real cuTile compiler, no GPU needed.

Each kernel module lists the specializations the notebooks use in ``compile_cases()``; the test
suite compiles every one for every architecture in ``ARCHS``. This catches what the emulator
cannot: cuTile's typing and shape rules.
"""
from __future__ import annotations

import importlib
import io

import cuda.tile as ct
from cuda.tile.compilation import (ArrayConstraint, CallingConvention, KernelSignature,
                                   ScalarConstraint, export_kernel)

ARCHS = ("sm_80", "sm_90", "sm_100", "sm_120")
# Modules whose compile_cases() the compile test collects.
KERNEL_MODULES = ("tiles", "activation", "routing", "fused_moe", "sample_peer")


def array(dtype, ndim: int, *, index_dtype=ct.int32) -> ArrayConstraint:
    """A kernel parameter that is an array of ``dtype`` (a ``ct`` dtype) with ``ndim`` axes."""
    return ArrayConstraint(dtype, ndim, index_dtype=index_dtype, stride_lower_bound_incl=0,
                           alias_groups=(), may_alias_internally=False)


def scalar(dtype=ct.int32) -> ScalarConstraint:
    """A run-time scalar kernel parameter."""
    return ScalarConstraint(dtype)


def export_cubin(kernel, params, arch: str = "sm_90") -> bytes:
    """Compile ``kernel`` for ``params`` (constraints above, or plain values for ``Constant``
    parameters) and return the cubin bytes."""
    sig = KernelSignature(list(params), CallingConvention.cutile_python_v1())
    sig = sig.with_mangled_symbol(kernel._pyfunc.__name__)
    buf = io.BytesIO()
    export_kernel(kernel, [sig], buf, gpu_code=arch, output_format="cubin")
    return buf.getvalue()


def all_compile_cases():
    """``(case_id, kernel, params)`` for every kernel the package exports."""
    cases = []
    for name in KERNEL_MODULES:
        module = importlib.import_module(f"moe_tutorial.{name}")
        for case_id, kernel, params in module.compile_cases():
            cases.append((f"{name}.{case_id}", kernel, params))
    return cases
