"""The CPU emulator itself: launching, the data model (typing like the GPU), error reporting,
strict mode, printing, and the list of supported operations. These tests are about the
emulator's own behavior, so they run on NumPy only; the kernel tests in
tests/test_emulator_{ops,memory,kernels}.py also run on the GPU under ``pytest -m gpu``."""
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import cuda.tile as ct
from cuda.tile._execution import is_stub

import moe_tutorial as mt
from moe_tutorial import emulator
from moe_tutorial.emulator import FRONTEND_ENV

ZERO = ct.PaddingMode.ZERO


# ---- launching -------------------------------------------------------------------------------

@ct.kernel
def launch_order_kernel(counter, order):
    linear = (ct.bid(2) * ct.num_blocks(1) + ct.bid(1)) * ct.num_blocks(0) + ct.bid(0)
    ticket = ct.atomic_add(counter, 0, 1)
    ct.store(order, (linear,), ticket)


def test_blocks_run_in_documented_order():
    """Blocks run one after another with bid(0) varying fastest, then bid(1), then bid(2)."""
    counter, order = np.zeros(1, np.int32), np.full(24, -1, np.int32)
    emulator.launch(None, (2, 3, 4), launch_order_kernel, (counter, order))
    np.testing.assert_array_equal(order, np.arange(24))
    assert counter[0] == 24


@ct.kernel
def copy_kernel(x, y, TILE: ct.Constant[int]):
    ct.store(y, (ct.bid(0),), ct.load(x, (ct.bid(0),), (TILE,)))


def test_launch_accepts_an_int_grid_and_moe_tutorial_launch_dispatches_here():
    x, y = np.arange(8, dtype=np.float32), np.zeros(8, np.float32)
    emulator.launch(None, 2, copy_kernel, (x, y, 4))
    np.testing.assert_array_equal(y, x)
    z = np.zeros(8, np.float32)
    mt.launch((2,), copy_kernel, (x, z, 4))  # NumPy arrays -> the emulator
    np.testing.assert_array_equal(z, x)


@pytest.mark.parametrize("grid", [(0,), (1, 2, 3, 4), (-1,), ()])
def test_bad_grid_is_a_value_error(grid):
    with pytest.raises(ValueError, match="grid"):
        emulator.launch(None, grid, copy_kernel, (np.zeros(4), np.zeros(4), 4))


def test_wrong_argument_count_and_non_kernel_are_type_errors():
    with pytest.raises(TypeError, match="takes 3 arguments"):
        emulator.launch(None, (1,), copy_kernel, (np.zeros(4), np.zeros(4)))
    with pytest.raises(TypeError, match="ct.kernel"):
        emulator.launch(None, (1,), lambda x: x, (np.zeros(4),))


def test_unsupported_numpy_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="complex"):
        emulator.launch(None, (1,), copy_kernel, (np.zeros(4, np.complex64),
                                                  np.zeros(4, np.complex64), 4))


@ct.kernel
def list_and_tuple_kernel(arrays, pair, out):
    total = ct.load(arrays[0], (0,), (4,)) + ct.load(arrays[1], (0,), (4,))
    ct.store(out, (0,), total + ct.load(pair[0], (0,), (4,)) * pair[1])


def test_list_of_arrays_and_tuple_arguments():
    a, b, c = (np.full(4, v, np.float32) for v in (1.0, 2.0, 3.0))
    out = np.zeros(4, np.float32)
    emulator.launch(None, (1,), list_and_tuple_kernel, ([a, b], (c, 10.0), out))
    np.testing.assert_array_equal(out, np.full(4, 33.0))


# ---- typing like the GPU ---------------------------------------------------------------------

@ct.kernel
def typing_probe_kernel(x, out, n, s, flag, C: ct.Constant[int]):
    t = ct.load(x, (0,), (4,))
    # static_assert sees only constants, so the values are computed first
    t2, tc, ts, n1 = t * 2.0, t * C, t * s, n + 1
    b, n0, half = ct.bid(0), x.shape[0], ct.arange(4, dtype=ct.int32) / 2
    ct.static_assert(t.dtype == ct.float16)
    ct.static_assert(t2.dtype == ct.float16)      # literals are loosely typed
    ct.static_assert(tc.dtype == ct.float16)      # so are Constant parameters
    ct.static_assert(ts.dtype == ct.float32)      # a run-time float is float32
    ct.static_assert(n1.dtype == ct.int32)        # a run-time int is int32
    ct.static_assert(flag.dtype == ct.bool_)
    ct.static_assert(b.dtype == ct.int32)         # block ids are int32 scalars
    ct.static_assert(n0.dtype == ct.int32)
    ct.static_assert(half.dtype == ct.float32)
    ct.store(out, (0,), ct.full((4,), n * C, dtype=ct.int32))


def test_scalar_kinds_have_gpu_dtypes():
    out = np.zeros(4, np.int32)
    emulator.launch(None, (1,), typing_probe_kernel,
                    (np.zeros(4, np.float16), out, 6, 0.5, True, 7))
    np.testing.assert_array_equal(out, np.full(4, 42))


@ct.kernel
def index_overflow_kernel(out, stride):
    ct.store(out, (0,), ct.full((1,), ct.bid(0) * stride, dtype=ct.int32))


def test_int32_index_arithmetic_wraps_like_the_gpu():
    out = np.zeros(1, np.int32)
    emulator.launch(None, (3,), index_overflow_kernel, (out, 2**30))
    assert out[0] == np.int32(np.int64(2 * 2**30).astype(np.int32))  # wrapped, as int32 does


def test_64_bit_scalars_need_an_annotation():
    @ct.kernel
    def k(out, big: ct.ScalarInt64):
        ct.store(out, (0,), ct.full((1,), big, dtype=ct.int64))

    out = np.zeros(1, np.int64)
    emulator.launch(None, (1,), k, (out, 2**40))
    assert out[0] == 2**40
    with pytest.raises(ValueError, match="ScalarInt64"):  # an int argument is int32
        emulator.launch(None, (1,), index_overflow_kernel, (np.zeros(1, np.int32), 2**40))


def _run_body(body, *arrays):
    """Launch a one-block kernel whose body is ``body(*arrays)``."""
    @ct.kernel
    def k(a, b):
        body(a, b)
    emulator.launch(None, (1,), k, arrays)


_F16 = np.zeros(4, np.float16)
_F32 = np.zeros(4, np.float32)
_I8 = np.zeros(4, np.int8)
_U8 = np.zeros(4, np.uint8)
_I32 = np.zeros(4, np.int32)


@pytest.mark.parametrize("body, arrays, error, match", [
    (lambda a, b: ct.store(a, (0,), ct.load(b, (0,), (4,))), (_F16, _F32), TypeError,
     "cannot implicitly cast float32 to float16"),
    (lambda a, b: ct.load(a, (0,), (4,)) + ct.load(b, (0,), (4,)), (_U8, _I8), TypeError,
     "promotion"),
    (lambda a, b: ct.load(a, (0,), (4,)) & ct.load(a, (0,), (4,)), (_F32, _F32), TypeError,
     "integers or booleans"),
    (lambda a, b: ct.load(a, (0,), (4,)) | ct.load(b, (0,), (4,)), (_I8, _I32), TypeError,
     "same dtype"),
    (lambda a, b: ct.load(a, (0,), (4,)) ** 2, (_I32, _I32), TypeError, "integer"),
    (lambda a, b: ct.load(a, (0,), (4,)) // ct.load(a, (0,), (4,)), (_U8, _U8),
     NotImplementedError, "unsigned"),
    (lambda a, b: ct.exp2(ct.load(a, (0,), (4,)), flush_to_zero=True), (_F16, _F16), TypeError,
     "float32"),
    (lambda a, b: ct.load(a, (0,), (3,)), (_F32, _F32), TypeError, "power of two"),
    (lambda a, b: ct.load(a, (0, 0), (4,)), (_F32, _F32), TypeError, "rank"),
    (lambda a, b: ct.full((a.shape[0],), 0, ct.int32), (_F32, _F32), TypeError,
     "compile-time constant"),
    (lambda a, b: ct.load(a, (0,), (4,))[0], (_F32, _F32), TypeError, "extract"),
    (lambda a, b: bool(ct.load(a, (0,), (4,)) > 0), (_F32, _F32), TypeError, "scalar"),
    (lambda a, b: ct.mma(ct.load(a, (0,), (4,)).reshape((2, 2)),
                         ct.load(b, (0,), (4,)).reshape((2, 2)), ct.zeros((2, 2), ct.float32)),
     (_F16, _F32), TypeError, "same dtype"),
    (lambda a, b: ct.store(a, (0,), 300), (_I8, _I8), TypeError, "300"),
    (lambda a, b: ct.gather(a, ct.arange(4, dtype=ct.float32)), (_F32, _F32), TypeError,
     "non-integer"),
    (lambda a, b: ct.atomic_max(a, 0, 1.0), (_F32, _F32), TypeError, "unsupported array"),
], ids=["store-narrowing", "u8+i8", "bitwise-float", "bitwise-mixed", "int-pow",
        "unsigned-floordiv", "ftz-f16", "non-pow2-shape", "index-rank", "runtime-shape",
        "tile-indexing", "tile-truth", "mma-mixed", "constant-range", "float-index",
        "atomic-max-float"])
def test_typing_errors_the_gpu_compiler_also_rejects(body, arrays, error, match, monkeypatch):
    # the emulator's own checks, for when cuTile's front end is switched off
    monkeypatch.setenv(FRONTEND_ENV, "0")
    with pytest.raises(error, match=match) as info:
        _run_body(body, *arrays)
    assert any("block (0, 0, 0)" in n for n in getattr(info.value, "__notes__", []))


# ---- out-of-bounds behavior and strict mode ------------------------------------------------------

@ct.kernel
def partial_load_kernel(x, out, MODE: ct.Constant[int]):
    if MODE == 0:
        t = ct.load(x, (1,), (4,))                        # UNDETERMINED padding
    else:
        t = ct.load(x, (1,), (4,), padding_mode=ZERO)
    ct.store(out, (0,), t)


def test_undetermined_padding_is_finite_and_not_zero():
    out = np.zeros(4, np.float32)
    emulator.launch(None, (1,), partial_load_kernel, (np.arange(6, dtype=np.float32), out, 0))
    np.testing.assert_array_equal(out[:2], [4, 5])
    assert np.isfinite(out[2:]).all() and (out[2:] != 0).all()
    iout = np.zeros(4, np.int32)
    emulator.launch(None, (1,), partial_load_kernel, (np.arange(6, dtype=np.int32), iout, 0))
    assert (iout[2:] == np.iinfo(np.int32).min).all()


def test_strict_mode_flags_stores_of_undetermined_padding(monkeypatch):
    monkeypatch.setenv(emulator.STRICT_ENV, "1")
    with pytest.raises(IndexError, match=r"ct.store uses 2 value\(s\) computed from a load "
                                         r"outside the array") as info:
        emulator.launch(None, (1,), partial_load_kernel,
                        (np.arange(6, dtype=np.float32), np.zeros(4, np.float32), 0))
    assert "block (0, 0, 0)" in str(info.value)
    out = np.zeros(4, np.float32)  # explicit padding is fine in strict mode
    emulator.launch(None, (1,), partial_load_kernel, (np.arange(6, dtype=np.float32), out, 1))
    np.testing.assert_array_equal(out, [4, 5, 0, 0])


@ct.kernel
def strict_patterns_kernel(x, out, CASE: ct.Constant[int]):
    t = ct.load(x, (ct.bid(0),), (4,))                   # the last tile is partial
    lane = ct.bid(0) * 4 + ct.arange(4, dtype=ct.int32)
    if CASE == 0:
        ct.store(out, (ct.bid(0),), t * 2)                # padding is dropped by the store
    elif CASE == 1:
        ok = ct.where(lane < x.shape[0], t, 0.0)          # padding replaced before use
        ct.store(out, (ct.bid(0),), ct.full((4,), 0.0, ct.float32) + ct.sum(ok))
    elif CASE == 2:
        ct.store(out, (ct.bid(0),), ct.full((4,), 0.0, ct.float32) + ct.sum(t))
    else:
        if ct.max(t) > 100.0:                              # control flow on padding
            ct.store(out, (ct.bid(0),), t)


@pytest.mark.parametrize("case, error", [(0, None), (1, None), (2, "ct.store"),
                                         (3, "a truth value")])
def test_strict_mode_tracks_padding_until_it_is_used(monkeypatch, case, error):
    """Only values that reach memory or decide control flow are errors: loading a partial tile
    and storing it back (the usual pattern) is fine."""
    monkeypatch.setenv(emulator.STRICT_ENV, "1")
    x, out = np.arange(6, dtype=np.float32), np.zeros(6, np.float32)
    if error is None:
        emulator.launch(None, (2,), strict_patterns_kernel, (x, out, case))
        want = 2 * x if case == 0 else np.repeat([x[:4].sum(), x[4:].sum()], [4, 2])
        np.testing.assert_array_equal(out, want)
    else:
        with pytest.raises(IndexError, match=error) as info:
            emulator.launch(None, (2,), strict_patterns_kernel, (x, out, case))
        assert "block (1, 0, 0)" in str(info.value)  # block 0 has a full tile


@ct.kernel
def k_edge_matmul_kernel(a, b, c, PAD: ct.Constant[int]):
    acc = ct.zeros((4, 4), ct.float32)
    for k in range(ct.cdiv(a.shape[1], 4)):
        if PAD == 1:
            x = ct.load(a, (0, k), (4, 4), padding_mode=ZERO)
            y = ct.load(b, (k, 0), (4, 4), padding_mode=ZERO)
        else:
            x = ct.load(a, (0, k), (4, 4))
            y = ct.load(b, (k, 0), (4, 4))
        acc = ct.mma(x, y, acc)
    ct.store(c, (0, 0), acc)


def test_strict_mode_catches_unpadded_k_edge_in_matmul(monkeypatch, rng):
    a = rng.standard_normal((4, 6)).astype(np.float32)
    b = rng.standard_normal((6, 4)).astype(np.float32)
    c = np.zeros((4, 4), np.float32)
    emulator.launch(None, (1,), k_edge_matmul_kernel, (a, b, c, 0))
    # normal mode: the padding stand-ins (1024) make the result visibly wrong
    assert np.abs(c - a @ b).min() > 100
    monkeypatch.setenv(emulator.STRICT_ENV, "1")
    with pytest.raises(IndexError, match="ct.store uses 16 value"):
        emulator.launch(None, (1,), k_edge_matmul_kernel, (a, b, c, 0))
    emulator.launch(None, (1,), k_edge_matmul_kernel, (a, b, c, 1))
    np.testing.assert_allclose(c, a @ b, rtol=1e-5)


def test_strict_mode_rejects_tiles_entirely_outside(monkeypatch):
    def body(a, b):
        ct.store(b, (0,), ct.load(a, (5,), (4,), padding_mode=ZERO))
    _run_body(body, np.zeros(6, np.float32), np.zeros(4, np.float32))  # undefined: padding
    monkeypatch.setenv(emulator.STRICT_ENV, "1")
    with pytest.raises(IndexError, match="entirely outside"):
        _run_body(body, np.zeros(6, np.float32), np.zeros(4, np.float32))


@ct.kernel
def gather_oob_kernel(x, idx, out, MASKED: ct.Constant[bool]):
    i = ct.load(idx, (0,), (4,))
    if MASKED:
        ct.store(out, (0,), ct.gather(x, i, mask=i < 8))
    else:
        ct.store(out, (0,), ct.gather(x, i))


def test_strict_mode_flags_unmasked_out_of_bounds_gathers(monkeypatch):
    x, idx = np.arange(8, dtype=np.float32), np.array([1, 9, -2, 3], np.int32)
    out = np.zeros(4, np.float32)
    emulator.launch(None, (1,), gather_oob_kernel, (x, idx, out, False))
    np.testing.assert_array_equal(out, [1, 0, 0, 3])  # normal mode: padding value 0
    monkeypatch.setenv(emulator.STRICT_ENV, "1")
    with pytest.raises(IndexError, match=r"ct.gather: out-of-bounds indices 9, -2"):
        emulator.launch(None, (1,), gather_oob_kernel, (x, idx, out, False))
    with pytest.raises(IndexError, match=r"indices -2"):  # the mask covers 9, not -2
        emulator.launch(None, (1,), gather_oob_kernel, (x, idx, out, True))
    idx[2] = 2
    emulator.launch(None, (1,), gather_oob_kernel, (x, idx, out, True))
    np.testing.assert_array_equal(out, [1, 0, 2, 3])


def test_check_bounds_false_out_of_bounds_raises():
    def body(a, b):
        ct.store(b, (0,), ct.load(a, (1,), (4,), check_bounds=False))
    with pytest.raises(IndexError, match="check_bounds=False"):
        _run_body(body, np.zeros(6, np.float32), np.zeros(4, np.float32))


# ---- errors, unsupported operations ----------------------------------------------------------

@ct.kernel
def failing_kernel(x):
    if ct.bid(0) == 2:
        ct.assert_(ct.load(x, (0,), (4,)) > 100, "values must exceed 100")


def test_errors_name_the_block():
    with pytest.raises(AssertionError, match="values must exceed 100") as info:
        emulator.launch(None, (4,), failing_kernel, (np.zeros(4, np.float32),))
    assert "raised in block (2, 0, 0) of kernel 'failing_kernel'" in info.value.__notes__[0]


def _unimplemented_stub_names():
    names = []
    for name in ct.__all__:
        obj = getattr(ct, name)
        dispatched = getattr(obj, "_cutile_function_wrapper", False)  # not host functions
        if callable(obj) and is_stub(obj) and dispatched \
                and name not in emulator.supported_operations():
            names.append(name)
    return names


def test_every_unimplemented_operation_raises_not_implemented():
    names = _unimplemented_stub_names()
    assert "mma_scaled" in names
    for name in names:
        with emulator.EmulatorMode().as_current():
            with pytest.raises(NotImplementedError, match=f"ct.{name} is not supported by the "
                                                           "CPU emulator; run this kernel on a "
                                                           "GPU"):
                getattr(ct, name)()


def test_supported_operation_names_are_real_cutile_stubs():
    import cuda.tile._stub as stub_module
    for qualname in emulator.supported_operations():
        owner, _, attr = qualname.rpartition(".")
        obj = getattr(getattr(stub_module, owner), attr) if owner else getattr(ct, qualname)
        assert is_stub(obj), qualname


# ---- helpers, builtins, static evaluation ----------------------------------------------------

def _clamp_helper(t, lo, hi):  # a plain helper: min()/max() on tiles as in cuTile
    return min(max(t, lo), hi)


@ct.function
def _decorated_helper(t):
    return _clamp_helper(t, 0.0, 1.0) * 2


@ct.kernel
def helpers_kernel(x, out):
    t = ct.load(x, (0,), (8,))
    ct.static_assert(t.shape[0] * 2 == 16, "shapes are constants")
    ct.store(out, (0,), _decorated_helper(t) + ct.ensure_constant(ct.static_eval(t.shape[0] // 8)))


def test_helpers_and_builtin_min_max_on_tiles():
    x = np.linspace(-1, 2, 8).astype(np.float32)
    out = np.zeros(8, np.float32)
    emulator.launch(None, (1,), helpers_kernel, (x, out))
    np.testing.assert_allclose(out, np.clip(x, 0, 1) * 2 + 1)


def test_static_assert_failure_is_a_static_assertion_error():
    def body(a, b):
        ct.static_assert(a.dtype == ct.float32, "expected float32")
    with pytest.raises(ct.TileStaticAssertionError, match="expected float32"):
        _run_body(body, _I32, _I32)


# ---- printing --------------------------------------------------------------------------------

@ct.kernel
def print_kernel():
    tx = ct.arange(4, dtype=ct.int32)
    print(tx)
    print(f"{tx.astype(ct.float32) / 2:.1f}")
    print(tx.astype(ct.float32))
    print(tx[:, None] == 2)
    print(divmod(tx, 3))
    ct.printf("value: %d and %.2f\n", ct.full((), 42, dtype=ct.int32),
              ct.full((), 1.5, dtype=ct.float32))
    ct.print("sum", ct.sum(tx), sep="=", end="!\n")


def test_print_formats_like_the_gpu(capsys):
    emulator.launch(None, (1,), print_kernel, ())
    assert capsys.readouterr().out.splitlines() == [
        "[0, 1, 2, 3]",
        "[0.0, 0.5, 1.0, 1.5]",
        "[0.000000, 1.000000, 2.000000, 3.000000]",
        "[[0], [0], [1], [0]]",
        "([0, 0, 0, 1], [0, 1, 2, 0])",
        "value: 42 and 1.50",
        "sum=6!",
    ]


# ---- dtypes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                                   np.uint16, np.uint32, np.uint64, np.float16,
                                   ml_dtypes.bfloat16, np.float32, np.float64],
                         ids=lambda d: np.dtype(d).name)
def test_every_dtype_round_trips_through_load_and_store(rng, dtype):
    x = (rng.random(10) < 0.5 if dtype == np.bool_ else
         rng.integers(0, 100, 10).astype(dtype))
    y = np.zeros(10, dtype)
    emulator.launch(None, (3,), copy_kernel, (x, y, 4))
    np.testing.assert_array_equal(y, x)


# ---- documented unsupported features ---------------------------------------------------------

@ct.kernel
def dtype_constructor_kernel(x):
    ct.store(x, (0,), ct.full((1,), ct.int32(5), ct.int32))


@ct.kernel
def raw_memory_kernel(x):
    x.get_raw_memory().atomic_add_offset(0, 1)


@ct.kernel
def foreign_pointer_kernel(x):
    ct.store(ct.Array.from_foreign(x.foreign_pointer, x.shape, x.strides), (0,),
             ct.zeros((1,), ct.int32))


@pytest.mark.parametrize("kernel, match", [
    (dtype_constructor_kernel, "dtype constructors such as ct.int16"),
    (raw_memory_kernel, "Array.get_raw_memory is not supported"),
    (foreign_pointer_kernel, "Array.foreign_pointer is not supported"),
])
def test_unsupported_features_raise_not_implemented(kernel, match):
    with pytest.raises(NotImplementedError, match=match):
        emulator.launch(None, (1,), kernel, (np.zeros(4, np.int32),))


def test_unsupported_rounding_mode_raises_not_implemented():
    t = emulator.Tile(np.ones(4, np.float32), ct.float32)
    with pytest.raises(NotImplementedError, match="rounding_mode=RZ to float8_e4m3fn"):
        t.astype(ct.float8_e4m3fn, rounding_mode=ct.RoundingMode.RZ)


def test_the_unsupported_list_names_every_unimplemented_operation():
    readme = (Path(emulator.__file__).parent / "README.md").read_text()
    for name in _unimplemented_stub_names():
        assert f"ct.{name}" in readme, f"ct.{name} is missing from the emulator README"
