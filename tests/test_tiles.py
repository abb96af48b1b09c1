"""moe_tutorial.tiles: the vector-add kernel and its host wrapper, on the emulator (NumPy) and,
under ``pytest -m gpu``, on the GPU (CuPy)."""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moe_tutorial as mt
from moe_tutorial.tiles import compile_cases, vector_add, vector_add_kernel, vector_add_reference

from conftest import examples


def _inputs(xp, rng, n, dtype):
    a = rng.standard_normal(n).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    return xp.asarray(a), xp.asarray(b)


def _tolerance(dtype):
    # a + b is correctly rounded: relative error at most half an ulp of the result.
    return float(ml_dtypes.finfo(dtype).eps)  # ml_dtypes.finfo knows bfloat16 too


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("n, tile", [(1024, 256), (1000, 256), (1, 128), (257, 256), (4097, 1024)])
def test_vector_add_matches_reference(xp, rng, n, tile, dtype):
    a, b = _inputs(xp, rng, n, dtype)
    out = xp.full(n, np.nan, dtype=dtype)  # poisoned: every element must be written
    got = vector_add(a, b, out=out, tile=tile)
    assert got is out
    np.testing.assert_allclose(mt.to_numpy(got).astype(np.float64), vector_add_reference(a, b),
                               rtol=_tolerance(dtype), atol=0)


@settings(max_examples=examples(20), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3000), tile_log2=st.integers(4, 10), seed=st.integers(0, 2**32 - 1))
def test_vector_add_any_size(xp, n, tile_log2, seed):
    rng = np.random.default_rng(seed)
    a, b = _inputs(xp, rng, n, np.float32)
    out = xp.full(n, np.nan, dtype=np.float32)
    vector_add(a, b, out=out, tile=2 ** tile_log2)
    np.testing.assert_allclose(mt.to_numpy(out), vector_add_reference(a, b),
                               rtol=_tolerance(np.float32), atol=0)


def test_vector_add_bfloat16_on_cpu(rng):
    a, b = _inputs(np, rng, 777, ml_dtypes.bfloat16)
    got = vector_add(a, b, out=np.full(777, np.nan, dtype=ml_dtypes.bfloat16), tile=128)
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_allclose(got.astype(np.float64), vector_add_reference(a, b),
                               rtol=_tolerance(ml_dtypes.bfloat16), atol=0)


def test_vector_add_int32(xp, rng):
    a = xp.asarray(rng.integers(-1000, 1000, 600, dtype=np.int32))
    b = xp.asarray(rng.integers(-1000, 1000, 600, dtype=np.int32))
    out = xp.full(600, -7, dtype=np.int32)
    vector_add(a, b, out=out, tile=256)
    np.testing.assert_array_equal(mt.to_numpy(out), mt.to_numpy(a) + mt.to_numpy(b))


def test_vector_add_allocates_output(xp, rng):
    a, b = _inputs(xp, rng, 300, np.float32)
    got = vector_add(a, b, tile=128)
    assert got.shape == (300,) and got.dtype == np.float32
    assert mt.array_module(got) is xp
    np.testing.assert_allclose(mt.to_numpy(got), vector_add_reference(a, b), rtol=1e-7)


def test_vector_add_empty(xp):
    got = vector_add(xp.zeros(0, np.float32), xp.zeros(0, np.float32))
    assert got.shape == (0,)


def test_kernel_leaves_everything_outside_the_grid_alone(xp, rng):
    # Launch ONE block of 128 over 300 elements: elements 128.. must keep the poison.
    a, b = _inputs(xp, rng, 300, np.float32)
    c = xp.full(300, np.nan, dtype=np.float32)
    mt.launch((1,), vector_add_kernel, (a, b, c, 128))
    c = mt.to_numpy(c)
    np.testing.assert_allclose(c[:128], vector_add_reference(a, b)[:128], rtol=1e-7)
    assert np.isnan(c[128:]).all()


def test_strided_views(xp, rng):
    a, b = _inputs(xp, rng, 1000, np.float32)
    out = xp.full(500, np.nan, dtype=np.float32)
    vector_add(a[::2], b[1::2], out=out, tile=64)
    np.testing.assert_allclose(mt.to_numpy(out), vector_add_reference(a[::2], b[1::2]), rtol=1e-7)


@pytest.mark.parametrize("a, b, kwargs, error, match", [
    (np.zeros(4, np.float32), np.zeros(5, np.float32), {}, ValueError, "same shape"),
    (np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32), {}, ValueError, "a must be 1-D"),
    (np.zeros(4, np.float32), np.zeros((4, 1), np.float32), {}, ValueError, "b must be 1-D"),
    (np.zeros(4, np.float32), np.zeros(4, np.float16), {}, TypeError, "same dtype"),
    (np.zeros(4, np.complex64), np.zeros(4, np.complex64), {}, TypeError, "a has dtype complex64"),
    (np.zeros(4, bool), np.zeros(4, bool), {}, TypeError, "dtype bool"),
    ([1.0, 2.0], np.zeros(2, np.float32), {}, TypeError, "a must be a NumPy or CuPy array"),
    (np.zeros(4, np.float32), np.zeros(4, np.float32), {"tile": 100}, ValueError, "power of two"),
    (np.zeros(4, np.float32), np.zeros(4, np.float32), {"tile": 0}, ValueError, "power of two"),
    (np.zeros(4, np.float32), np.zeros(4, np.float32), {"tile": True}, ValueError, "tile"),
    (np.zeros(4, np.float32), np.zeros(4, np.float32), {"tile": 64.0}, ValueError, "tile"),
    (np.zeros(4, np.float32), np.zeros(4, np.float32), {"out": np.zeros(5, np.float32)},
     ValueError, "out must be a float32 array of shape \\(4,\\)"),
    (np.zeros(4, np.float32), np.zeros(4, np.float32), {"out": np.zeros(4, np.float64)},
     ValueError, "out must be"),
])
def test_vector_add_rejects_bad_input(a, b, kwargs, error, match):
    with pytest.raises(error, match=match):
        vector_add(a, b, **kwargs)


@pytest.mark.gpu
def test_vector_add_rejects_mixed_devices():
    import cupy as cp
    with pytest.raises(TypeError, match="same device"):
        vector_add(np.zeros(4, np.float32), cp.zeros(4, cp.float32))
    with pytest.raises(ValueError, match="same device"):
        vector_add(cp.zeros(4, cp.float32), cp.zeros(4, cp.float32),
                   out=np.zeros(4, np.float32))


def test_compile_cases_cover_the_notebook_constants():
    cases = compile_cases()
    assert {case_id for case_id, _, _ in cases} >= {"vector_add_float32_tile1024"}
    for _, kernel, params in cases:
        assert kernel is vector_add_kernel
        assert len(params) == 4 and isinstance(params[3], int)
