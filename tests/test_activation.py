"""silu_and_mul: kernels vs the float64 reference, on the emulator (NumPy) and, under ``-m gpu``,
on the GPU (CuPy). Outputs are poisoned with NaN before every launch."""
import cuda.tile as ct
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import moe_tutorial.activation as act
from moe_tutorial import check, device

from conftest import examples

BF16 = np.dtype(ml_dtypes.bfloat16)
HYPOTHESIS = settings(max_examples=examples(40), deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


def dtypes_for(xp):
    """CuPy has no bfloat16: the GPU path is tested in float16/float32."""
    return (np.float16, np.float32, BF16) if xp is np else (np.float16, np.float32)


def random_x(xp, rng, M, I, dtype, scale=3.0):
    x = (rng.standard_normal((M, 2 * I)) * scale).astype(dtype)
    return xp.asarray(x)


def poisoned(xp, shape, dtype):
    return xp.full(shape, np.nan, dtype=dtype)


def assert_matches_reference(out, x, dtype=None):
    """|out - ref| <= atol + rtol |ref| with the documented tolerance of out's dtype; no NaN
    where the reference is finite (this also catches elements the kernel never wrote)."""
    got = device.to_numpy(out).astype(np.float64)
    want = act.silu_and_mul_reference(x)
    assert got.shape == want.shape
    unwritten = np.isnan(got) & ~np.isnan(want)
    assert not unwritten.any(), f"{int(unwritten.sum())} elements NaN/unwritten, first at " \
                                f"{np.argwhere(unwritten)[0]}"
    rtol, atol = act.tolerance(dtype or out.dtype)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# Correctness over shapes, dtypes and tile shapes
# ---------------------------------------------------------------------------------------------

@HYPOTHESIS
@given(M=st.integers(0, 70), I=st.integers(1, 300), dtype_index=st.integers(0, 2),
       seed=st.integers(0, 2**32 - 1))
def test_random_shapes_match_reference(xp, M, I, dtype_index, seed):
    dtypes = dtypes_for(xp)
    dtype = dtypes[dtype_index % len(dtypes)]
    rng = np.random.default_rng(seed)
    x = random_x(xp, rng, M, I, dtype)
    out = poisoned(xp, (M, I), dtype)
    result = act.silu_and_mul(x, out)
    assert result is out
    assert_matches_reference(out, x)


@HYPOTHESIS
@given(M=st.integers(1, 40), I=st.integers(1, 200), log_tm=st.integers(0, 6),
       log_tn=st.integers(0, 9), seed=st.integers(0, 2**32 - 1))
def test_any_tile_shape_masks_partial_tiles(xp, M, I, log_tm, log_tn, seed):
    """Tile overrides of every size: smaller than, equal to and bigger than the problem."""
    assume(-(-M // 2 ** log_tm) * -(-I // 2 ** log_tn) <= 400)   # keep the emulator quick
    rng = np.random.default_rng(seed)
    x = random_x(xp, rng, M, I, np.float32)
    out = poisoned(xp, (M, I), np.float32)
    act.silu_and_mul(x, out, tile_m=2 ** log_tm, tile_n=2 ** log_tn)
    assert_matches_reference(out, x)


@pytest.mark.parametrize("M, I", [(1, 1), (1, 7), (3, 64), (17, 100), (5, 257)])
def test_rowwise_teaching_kernel(xp, rng, M, I):
    for dtype in dtypes_for(xp):
        x = random_x(xp, rng, M, I, dtype)
        out = poisoned(xp, (M, I), dtype)
        assert act.silu_and_mul_rowwise(x, out) is out
        assert_matches_reference(out, x)


def test_default_output_is_new_array_of_input_dtype(xp, rng):
    x = random_x(xp, rng, 9, 33, np.float16)
    out = act.silu_and_mul(x)
    assert out.shape == (9, 33) and out.dtype == np.float16
    assert device.array_module(out) is xp
    assert_matches_reference(out, x)


@pytest.mark.parametrize("in_dtype, out_dtype",
                         [(np.float32, np.float16), (np.float16, np.float32)])
def test_output_dtype_may_differ(xp, rng, in_dtype, out_dtype):
    x = random_x(xp, rng, 13, 45, in_dtype)
    out = poisoned(xp, (13, 45), out_dtype)
    act.silu_and_mul(x, out)
    assert_matches_reference(out, x)


def test_M_one_and_a_large_width(xp, rng):
    x = random_x(xp, rng, 1, 3000, np.float16)
    out = poisoned(xp, (1, 3000), np.float16)
    act.silu_and_mul(x, out)
    assert_matches_reference(out, x)


@pytest.mark.parametrize("shape", [(0, 10), (0, 0), (5, 0)])
def test_empty_problems_return_without_launching(xp, monkeypatch, shape):
    def no_launch(*args, **kwargs):
        raise AssertionError("launch called for an empty problem")
    monkeypatch.setattr(act.device, "launch", no_launch)
    x = xp.zeros(shape, dtype=np.float16)
    M, I = shape[0], shape[1] // 2
    for fn in (act.silu_and_mul, act.silu_and_mul_rowwise):
        out = fn(x)
        assert out.shape == (M, I) and out.dtype == np.float16


@pytest.mark.parametrize("hints", [dict(latency=1), dict(latency=10, allow_tma=False),
                                   dict(occupancy=4), dict(num_ctas=2, occupancy=16),
                                   dict(latency=5, allow_tma=False, occupancy=2, num_ctas=4)])
def test_compiler_hints_change_no_result(xp, rng, hints):
    """Hints only steer the compiler: results stay within tolerance (the emulator ignores
    them; under -m gpu each combination is compiled and run)."""
    x = random_x(xp, rng, 23, 600, np.float16)
    out = poisoned(xp, (23, 600), np.float16)
    assert act.silu_and_mul(x, out, **hints) is out
    assert_matches_reference(out, x)


def test_hinted_kernel_is_cached_and_carries_the_hints():
    assert act.hinted_kernel() is act.silu_and_mul_kernel
    k = act.hinted_kernel(occupancy=4, num_ctas=2)
    assert act.hinted_kernel(occupancy=4, num_ctas=2) is k         # one object, one JIT cache
    assert k is not act.silu_and_mul_kernel
    assert (k._compiler_options.occupancy, k._compiler_options.num_ctas) == (4, 2)
    assert k._pyfunc is act.silu_and_mul_kernel._pyfunc


def test_plan_launch_matches_the_rule(xp):
    x = xp.zeros((37, 2 * 1408), dtype=np.float16)
    out, launches = act.plan_launch(x, latency=7, allow_tma=False, occupancy=8)
    assert out.shape == (37, 1408)
    [(grid, kernel, args)] = launches                    # 1408 % 16 == 0: one launch
    assert grid == (-(-37 // 2), 3, 1)                   # 2 x 512 tiles (choose_tiles)
    # float16 output: approximate division by default (default_approx_div)
    assert args[3:] == (2, 512, True, False, 7, False)
    assert kernel is act.hinted_kernel(8, None)
    assert act.plan_launch(xp.zeros((0, 8), dtype=np.float16))[1] == []


@pytest.mark.parametrize("in_dtype, out_dtype, want", [
    (np.float16, np.float16, True), (np.float32, np.float32, False),
    (np.float32, np.float16, True), (np.float16, np.float32, False)])
def test_default_division_follows_the_output_dtype(xp, in_dtype, out_dtype, want):
    x = xp.zeros((3, 40), dtype=in_dtype)
    out = xp.zeros((3, 20), dtype=out_dtype)
    [(_, _, args)] = act.plan_launch(x, out)[1]
    assert args[5] is want
    for forced in (True, False):
        [(_, _, args)] = act.plan_launch(x, out, approx_div=forced)[1]
        assert args[5] is forced
    with pytest.raises(TypeError, match="approx_div"):
        act.plan_launch(x, out, approx_div=1)


def test_large_rows_not_divisible_by_16_split_off_the_tail(xp):
    M, I = 1024, 5000                                    # M * I >= SPLIT_MIN_ELEMS, I % 16 == 8
    x = xp.zeros((M, 2 * I), dtype=np.float16)
    out, launches = act.plan_launch(x)
    (grid, _, args), (tail_grid, _, tail_args) = launches
    assert args[0].shape == args[1].shape == args[2].shape == (M, 4992)
    assert tail_args[0].shape == tail_args[2].shape == (M, 8)
    assert grid == (M // 2, -(-4992 // 512), 1) and tail_args[3:5] == act.choose_tiles(M, 8)
    assert len(act.plan_launch(x, split_tail=False)[1]) == 1
    assert len(act.plan_launch(xp.zeros((16, 2 * I), dtype=np.float16))[1]) == 1   # small
    with pytest.raises(TypeError, match="split_tail"):
        act.plan_launch(x, split_tail="yes")
    # I = 4100: the up half starts 8200 bytes into a row, not 16-byte aligned: no split by default
    x_odd = xp.zeros((M, 2 * 4100), dtype=np.float16)
    assert len(act.plan_launch(x_odd)[1]) == 1
    assert len(act.plan_launch(x_odd, split_tail=True)[1]) == 2


@given(M=st.integers(0, 10**6), I=st.integers(0, 10**5))
def test_split_columns_rule(M, I):
    main = act.split_columns(M, I)
    want_split = I % 16 != 0 and I > 16 and M * I >= act.SPLIT_MIN_ELEMS
    assert main == (I - I % 16 if want_split else I)
    assert act.split_columns(M, I, False) == I
    assert act.split_columns(M, I, True) == (I - I % 16 if I > 16 else I)


@HYPOTHESIS
@given(M=st.integers(1, 40), I=st.integers(17, 300), tile_n=st.sampled_from([None, 32, 128]))
def test_forced_split_matches_reference(xp, M, I, tile_n):
    rng = np.random.default_rng(M * 1000 + I)
    x = random_x(xp, rng, M, I, np.float16)
    out = poisoned(xp, (M, I), np.float16)
    act.silu_and_mul(x, out, split_tail=True, tile_n=tile_n)
    assert_matches_reference(out, x)


def test_approximate_division_is_invisible_in_float16():
    """The measured reason for the default (``default_approx_div``): with float16 outputs the
    largest error against float64 is the output rounding (~0.5 ulp) with either division, even
    at the division's worst case; with float32 outputs approximate division shows."""
    f16 = act.division_error_study(np.float16, n=1 << 16)
    for errs in f16.values():
        assert errs["exact"] <= 0.5 + 1e-3
        assert errs["approx"] <= errs["exact"] + 1e-3
        assert errs["approx+2ulp"] <= errs["exact"] + 1e-3
    f32 = act.division_error_study(np.float32, n=1 << 16)["random"]
    assert f32["approx+2ulp"] > f32["exact"] + 1.0          # visible in float32 ulps


# ---------------------------------------------------------------------------------------------
# Strided inputs and outputs
# ---------------------------------------------------------------------------------------------

def strided_views(xp, rng, M, I, dtype):
    """(name, x) pairs: each x is a (M, 2I) view with a different memory layout."""
    wide = random_x(xp, rng, M, 2 * I + 5, dtype)             # (M, 4I + 10)
    tall = random_x(xp, rng, 2 * M, I, dtype)
    every_other_col = random_x(xp, rng, M, 2 * I, dtype)      # (M, 4I)
    return [
        ("x[:, ::1] (contiguous view)", random_x(xp, rng, M, I, dtype)[:, ::1]),
        ("row-strided slice of a wider buffer", wide[:, 3:3 + 2 * I]),
        ("every other row", tall[::2]),
        ("column stride 2", every_other_col[:, ::2]),
        ("Fortran order", xp.asfortranarray(random_x(xp, rng, M, I, dtype))),
        ("middle plane of a 3-D buffer", xp.asarray(
            rng.standard_normal((M, 3, 2 * I)).astype(dtype))[:, 1, :]),
        ("reversed columns (negative stride, copied)", random_x(xp, rng, M, I, dtype)[:, ::-1]),
        ("reversed rows (negative stride, copied)", random_x(xp, rng, M, I, dtype)[::-1]),
    ]


@pytest.mark.parametrize("M, I", [(7, 50), (33, 129)])
def test_strided_inputs(xp, rng, M, I):
    for dtype in (np.float16, np.float32):
        for name, x in strided_views(xp, rng, M, I, dtype):
            assert x.shape == (M, 2 * I), name
            before = device.to_numpy(x).copy()
            out = poisoned(xp, (M, I), dtype)
            act.silu_and_mul(x, out, tile_m=8, tile_n=32)
            try:
                assert_matches_reference(out, x)
            except AssertionError as e:
                raise AssertionError(f"{name}, {np.dtype(dtype)}: {e}") from None
            np.testing.assert_array_equal(device.to_numpy(x), before, err_msg=f"{name}: x changed")


def test_strided_output_writes_only_its_elements(xp, rng):
    M, I = 11, 70
    x = random_x(xp, rng, M, I, np.float32)
    sentinel = -7.25
    big = xp.full((M + 3, I + 9), sentinel, dtype=np.float32)
    out = big[1:1 + M, 4:4 + I]
    act.silu_and_mul(x, out, tile_m=4, tile_n=32)
    assert_matches_reference(out, x)
    mask = np.ones(big.shape, dtype=bool)
    mask[1:1 + M, 4:4 + I] = False
    assert (device.to_numpy(big)[mask] == sentinel).all(), "wrote outside out"


def test_output_into_other_half_of_a_buffer(xp, rng):
    """A buffer (M, 3I) holding [gate | up | out]: interleaved rows, no overlap, allowed."""
    M, I = 9, 40
    buf = xp.asarray(rng.standard_normal((M, 3 * I)).astype(np.float32))
    x, out = buf[:, :2 * I], buf[:, 2 * I:]
    want = act.silu_and_mul_reference(x)
    act.silu_and_mul(x, out)
    rtol, atol = act.tolerance(np.float32)
    np.testing.assert_allclose(device.to_numpy(out), want, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# Numerics: extreme gates, fast-math options
# ---------------------------------------------------------------------------------------------

def edge_gates(dtype):
    info = ml_dtypes.finfo(dtype)
    big = float(info.max)
    gates = [-big, -1e4, -200.0, -104.0, -88.8, -88.0, -30.0, -10.0, -1e-3, -0.0, 0.0,
             float(info.tiny), float(info.smallest_subnormal), 1e-3, 10.0, 30.0, 88.8, 200.0,
             1e4, big]
    return np.array([g for g in gates if abs(g) <= big], dtype=np.float64)


@pytest.mark.parametrize("approx_div, flush_to_zero", [(False, False), (True, True),
                                                       (True, False), (False, True)])
def test_extreme_gates_give_no_nan(xp, approx_div, flush_to_zero):
    for dtype in dtypes_for(xp):
        gates = edge_gates(dtype)
        ups = np.array([1.0, -1.0, 0.5, 0.0, -0.25], dtype=np.float64)
        g, u = np.meshgrid(gates, ups, indexing="ij")          # every gate with every up
        x = xp.asarray(np.concatenate([g, u], axis=1).astype(dtype))
        out = poisoned(xp, g.shape, dtype)
        act.silu_and_mul(x, out, approx_div=approx_div, flush_to_zero=flush_to_zero)
        got = device.to_numpy(out).astype(np.float64)
        assert np.isfinite(got).all(), f"{np.dtype(dtype)}: non-finite output for finite input"
        assert_matches_reference(out, x)
        # silu(g) -> 0 for very negative g: exactly zero once g * exp(g) underflows float32
        assert (got[gates <= -200.0] == 0.0).all()
        # silu(g) = g for large positive g (up = 1 in column 0)
        large = gates >= 30.0
        np.testing.assert_allclose(got[large, 0], device.to_numpy(x)[large, 0].astype(np.float64),
                                   rtol=act.tolerance(dtype)[0])


def test_infinite_gates_follow_ieee(xp):
    """Documented: silu(+inf) = +inf, silu(-inf) = -inf / inf = NaN (as x * sigmoid(x))."""
    x = xp.asarray(np.array([[np.inf, -np.inf, 1.0, 1.0]], dtype=np.float32))
    out = act.silu_and_mul(x)
    got = device.to_numpy(out)
    assert got[0, 0] == np.inf and np.isnan(got[0, 1])
    assert np.isnan(act.silu_and_mul_reference(x)[0, 1])


@pytest.mark.parametrize("approx_div, flush_to_zero", [(True, False), (False, True), (True, True)])
def test_fast_math_options_within_tolerance(xp, rng, approx_div, flush_to_zero):
    for dtype in (np.float16, np.float32):
        x = random_x(xp, rng, 37, 150, dtype, scale=20.0)
        out = poisoned(xp, (37, 150), dtype)
        act.silu_and_mul(x, out, approx_div=approx_div, flush_to_zero=flush_to_zero)
        assert_matches_reference(out, x)


def test_reference_known_values():
    x = np.array([[0.0, 1.0, -1.0, 2.0, 3.0, 4.0]])      # gate [0, 1, -1], up [2, 3, 4]
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))                # noqa: E731
    want = np.array([[0.0, 1.0 * sig(1.0) * 3.0, -1.0 * sig(-1.0) * 4.0]])
    np.testing.assert_allclose(act.silu_and_mul_reference(x), want, rtol=1e-15)
    assert act.silu_and_mul_reference(x).dtype == np.float64


# ---------------------------------------------------------------------------------------------
# Tile rule and byte count
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("M, I, want", [
    (8192, 2048, (2, 512)),        # the best shape measured on the H100 (see choose_tiles)
    (4099, 5000, (2, 512)),        # 512 and 256 both pad 120 columns: the wider wins
    (12288, 1408, (2, 512)),       # both pad 128 columns
    (8192, 1100, (4, 256)),        # 256 pads 180 columns, 512 would pad 436
    (100, 768, (4, 256)),          # 3 x 256: no padding, 512 would pad 256
    (65536, 256, (4, 256)),        # whole rows
    (64, 14336, (2, 512)), (1, 2048, (1, 512)), (3, 300, (2, 512)), (70, 100, (8, 128)),
    (5, 3, (8, 4)), (0, 0, (1, 1)), (100000, 1, (1024, 1))])
def test_choose_tiles_examples(M, I, want):
    assert act.choose_tiles(M, I) == want


@given(M=st.integers(0, 10**6), I=st.integers(0, 10**5))
def test_choose_tiles_rule(M, I):
    tm, tn = act.choose_tiles(M, I)
    for t in (tm, tn):
        assert t >= 1 and t & (t - 1) == 0
    if I <= 256:
        assert tn == act.next_pow2(I)                         # whole rows
    else:
        padded = {c: act.padded_width(I, c) for c in act.TILE_N_CHOICES}
        assert tn in padded and padded[tn] == min(padded.values())    # least padding ...
        assert all(c < tn for c in act.TILE_N_CHOICES if padded[c] == padded[tn] and c != tn)
        #                                                     ... with the widest such tile
    assert tm * tn <= max(act.TILE_ELEMS, tn)
    assert tm <= max(act.next_pow2(M), 1)
    if M >= act.TILE_ELEMS:
        assert tm * tn == act.TILE_ELEMS                      # full-size blocks when M allows


def test_padded_width():
    assert act.padded_width(1408, 512) == 1536 and act.padded_width(1408, 1024) == 2048
    assert act.padded_width(2048, 512) == 2048 and act.padded_width(1, 256) == 256
    assert act.padded_width(0, 256) == 0


def test_bytes_moved():
    assert act.bytes_moved(8192, 2048, np.float16) == 8192 * 4096 * 2 + 8192 * 2048 * 2
    assert act.bytes_moved(3, 5, np.float32, np.float16) == 3 * 10 * 4 + 3 * 5 * 2
    assert act.bytes_moved(0, 5, np.float16) == 0


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors before any launch
# ---------------------------------------------------------------------------------------------

def test_bad_x_is_rejected(xp):
    with pytest.raises(ValueError, match=r"x must be 2-D.*\(8,\)"):
        act.silu_and_mul(xp.zeros(8, dtype=np.float16))
    with pytest.raises(ValueError, match=r"x must be 2-D"):
        act.silu_and_mul(xp.zeros((2, 3, 4), dtype=np.float16))
    with pytest.raises(ValueError, match=r"last dimension must be even.*\(4, 7\)"):
        act.silu_and_mul(xp.zeros((4, 7), dtype=np.float16))
    with pytest.raises(TypeError, match=r"x.dtype must be one of .*int32"):
        act.silu_and_mul(xp.zeros((4, 8), dtype=np.int32))
    with pytest.raises(TypeError, match=r"x.dtype must be one of .*float64"):
        act.silu_and_mul(xp.zeros((4, 8), dtype=np.float64))
    with pytest.raises(TypeError, match=r"x must be a NumPy or CuPy array, got list"):
        act.silu_and_mul([[1.0, 2.0]])


def test_bad_out_is_rejected(xp):
    x = xp.zeros((4, 8), dtype=np.float16)
    with pytest.raises(ValueError, match=r"out must have shape \(M, I\) = \(4, 4\).*\(4, 8\)"):
        act.silu_and_mul(x, xp.zeros((4, 8), dtype=np.float16))
    with pytest.raises(ValueError, match=r"out must have shape"):
        act.silu_and_mul(x, xp.zeros((4, 4, 1), dtype=np.float16))
    with pytest.raises(TypeError, match=r"out.dtype must be one of .*int16"):
        act.silu_and_mul(x, xp.zeros((4, 4), dtype=np.int16))
    with pytest.raises(TypeError, match=r"out must be a"):
        act.silu_and_mul(x, [[0.0] * 4] * 4)
    with pytest.raises(ValueError, match=r"out must not overlap x"):
        act.silu_and_mul(x, x[:, 4:])
    row = xp.zeros(4, dtype=np.float16)
    repeated_row = xp.lib.stride_tricks.as_strided(row, shape=(4, 4), strides=(0, row.itemsize))
    with pytest.raises(ValueError, match=r"out must have positive strides"):
        act.silu_and_mul(x, repeated_row)


def test_out_on_the_other_device_is_rejected(xp):
    other = np if xp is not np else None
    if other is None:
        pytest.skip("needs both NumPy and CuPy arrays (GPU run)")
    x = xp.zeros((4, 8), dtype=np.float16)
    with pytest.raises(TypeError, match=r"out must be a cupy array like x"):
        act.silu_and_mul(x, np.zeros((4, 4), dtype=np.float16))


def test_read_only_out_is_rejected():
    out = np.zeros((4, 4), dtype=np.float16)
    out.flags.writeable = False
    with pytest.raises(ValueError, match=r"out is read-only"):
        act.silu_and_mul(np.zeros((4, 8), dtype=np.float16), out)


def test_bad_tiles_are_rejected(xp):
    x = xp.zeros((4, 8), dtype=np.float16)
    with pytest.raises(ValueError, match=r"tile_m must be a positive power of two, got 3"):
        act.silu_and_mul(x, tile_m=3)
    with pytest.raises(ValueError, match=r"tile_n must be a positive power of two, got 0"):
        act.silu_and_mul(x, tile_n=0)
    with pytest.raises(TypeError, match=r"tile_n must be an int"):
        act.silu_and_mul(x, tile_n=16.0)
    with pytest.raises(TypeError, match=r"tile_m must be an int"):
        act.silu_and_mul(x, tile_m=True)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(latency=0), ValueError, r"latency must be None or an int in \[1, 10\], got 0"),
    (dict(latency=11), ValueError, r"latency must be None or an int in \[1, 10\], got 11"),
    (dict(latency=2.0), TypeError, r"latency must be None or an int, got 2.0"),
    (dict(occupancy=33), ValueError, r"occupancy must be None or an int in \[1, 32\], got 33"),
    (dict(num_ctas=3), ValueError, r"num_ctas must be None or a power of two in \[1, 16\]"),
    (dict(num_ctas=32), ValueError, r"num_ctas must be None or a power of two in \[1, 16\]"),
    (dict(allow_tma=None), TypeError, r"allow_tma must be a bool, got None"),
])
def test_bad_hints_are_rejected(xp, monkeypatch, kwargs, error, message):
    monkeypatch.setattr(act.device, "launch", lambda *a: pytest.fail("launched"))
    with pytest.raises(error, match=message):
        act.silu_and_mul(xp.zeros((4, 8), dtype=np.float16), **kwargs)


# ---------------------------------------------------------------------------------------------
# Notebook 02's exercise checkers: accept the worked solutions, explain the TODO versions
# ---------------------------------------------------------------------------------------------

ZERO = ct.PaddingMode.ZERO


@ct.kernel
def _row_loop_solution(gate, up, out, TILE_N: ct.Constant[int]):
    row = ct.bid(0)
    for j in range(ct.num_tiles(out, axis=1, shape=(1, TILE_N))):
        g = ct.load(gate, index=(row, j), shape=(1, TILE_N), padding_mode=ZERO).astype(ct.float32)
        u = ct.load(up, index=(row, j), shape=(1, TILE_N), padding_mode=ZERO).astype(ct.float32)
        ct.store(out, index=(row, j), tile=(g / (1.0 + ct.exp(-g)) * u).astype(out.dtype))


@ct.kernel
def _row_first_tile_only(gate, up, out, TILE_N: ct.Constant[int]):
    row = ct.bid(0)
    g = ct.load(gate, index=(row, 0), shape=(1, TILE_N), padding_mode=ZERO).astype(ct.float32)
    u = ct.load(up, index=(row, 0), shape=(1, TILE_N), padding_mode=ZERO).astype(ct.float32)
    ct.store(out, index=(row, 0), tile=(g / (1.0 + ct.exp(-g)) * u).astype(out.dtype))


def _geglu_body(gate, up, out, TILE_M, TILE_N, use_gelu):
    i, j = ct.bid(0), ct.bid(1)
    g = ct.load(gate, index=(i, j), shape=(TILE_M, TILE_N), padding_mode=ZERO).astype(ct.float32)
    u = ct.load(up, index=(i, j), shape=(TILE_M, TILE_N), padding_mode=ZERO).astype(ct.float32)
    if use_gelu:
        a = 0.5 * g * (1.0 + ct.tanh(0.7978845608 * (g + 0.044715 * g * g * g)))
    else:
        a = g / (1.0 + ct.exp(-g))
    ct.store(out, index=(i, j), tile=(a * u).astype(out.dtype))


@ct.kernel
def _geglu_solution(gate, up, out, TILE_M: ct.Constant[int], TILE_N: ct.Constant[int]):
    _geglu_body(gate, up, out, TILE_M, TILE_N, True)


@ct.kernel
def _geglu_still_silu(gate, up, out, TILE_M: ct.Constant[int], TILE_N: ct.Constant[int]):
    _geglu_body(gate, up, out, TILE_M, TILE_N, False)


@ct.kernel
def _wrong_signature(gate, out):
    ct.store(out, index=(0, 0), tile=ct.load(gate, index=(0, 0), shape=(1, 1)))


def test_bytes_checker(capsys):
    assert check.silu_and_mul_bytes(act.bytes_moved)
    assert "PASS" in capsys.readouterr().out
    assert not check.silu_and_mul_bytes(lambda M, I, di, do: M * I * np.dtype(do).itemsize)
    assert "the input reads are missing" in capsys.readouterr().out
    assert not check.silu_and_mul_bytes(lambda M, I, di, do: M * 3 * I)
    assert "elements" in capsys.readouterr().out


def test_row_loop_checker(capsys):
    assert check.silu_and_mul_row_loop(_row_loop_solution)
    assert "PASS" in capsys.readouterr().out
    assert not check.silu_and_mul_row_loop(_row_first_tile_only)
    assert "never written" in capsys.readouterr().out
    assert not check.silu_and_mul_row_loop(_wrong_signature)       # reports, does not raise
    assert "FAIL" in capsys.readouterr().out
    assert not check.silu_and_mul_row_loop(lambda *a: None)
    assert "@ct.kernel" in capsys.readouterr().out


def test_geglu_checker(capsys):
    assert check.geglu(_geglu_solution)
    assert "PASS" in capsys.readouterr().out
    assert not check.geglu(_geglu_still_silu)
    assert "that is SwiGLU" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The benchmark's tuning logic (bench_activation), run on the emulator with NumPy standing in for
# CuPy and a scripted timer: which variants it measures, in which order, and what it reports.
# (The timings themselves only mean something on a GPU: python -m moe_tutorial.bench_activation.)
# ---------------------------------------------------------------------------------------------

def test_bench_tuning_logic(monkeypatch):
    from types import SimpleNamespace

    from moe_tutorial import bench_activation as bench

    stream = SimpleNamespace(synchronize=lambda: None)
    numpy_as_cupy = SimpleNamespace(full=np.full, nan=np.nan, float64=np.float64, exp=np.exp,
                                    abs=np.abs,
                                    cuda=SimpleNamespace(get_current_stream=lambda: stream))
    monkeypatch.setattr(bench, "_cp", lambda: numpy_as_cupy)
    rng = np.random.default_rng(1)
    monkeypatch.setattr(bench, "random_input",
                        lambda M, I, dtype=np.float16: random_x(np, rng, M, I, dtype))

    scripted_ms = {((1, 64), ()): 1.5, ((2, 32), ()): 1.0, ((4, 16), ()): 2.0,
                   ((2, 32), (("occupancy", 2),)): 0.9, ((2, 32), (("occupancy", 4),)): 0.95,
                   ((2, 32), (("latency", 10),)): 0.98, ((2, 32), (("allow_tma", False),)): 1.2,
                   ((2, 32), (("latency", 10), ("occupancy", 2))): 0.85}
    current = {}
    real_launch = bench._our_launch

    def recording_launch(x, out, tile_m=None, tile_n=None, **hints):
        if "num_ctas" in hints:
            raise RuntimeError("cluster launch failed\nsecond line")
        current["key"] = ((tile_m, tile_n), tuple(sorted(hints.items())))
        return real_launch(x, out, tile_m, tile_n, **hints)

    def scripted_time(run, **kwargs):
        run()
        return scripted_ms[current["key"]]

    monkeypatch.setattr(bench, "_our_launch", recording_launch)
    monkeypatch.setattr(bench, "gpu_time_ms", scripted_time)

    M, I, copy_gbs = 6, 40, 100.0
    hints = [{"occupancy": 2}, {"occupancy": 4}, {"latency": 10}, {"num_ctas": 2},
             {"allow_tma": False}]
    rows = bench.tune_shape(M, I, [(1, 64), (2, 32), (4, 16)], hints, copy_gbs)

    assert [r["stage"] for r in rows] == ["tile"] * 3 + ["hint"] * 5 + ["combined"]
    assert all((r["tile_m"], r["tile_n"]) == (2, 32) for r in rows[3:])  # hints on the fastest
    failed = [r for r in rows if r["correct"] is None]
    assert [r["hints"] for r in failed] == [{"num_ctas": 2}]
    assert failed[0]["check"] == "failed: RuntimeError: cluster launch failed"
    assert all(r["correct"] is True for r in rows if r not in failed)   # checked vs reference
    # occupancy=2 and latency=10 each beat the tile by > 1%, no-TMA did not: those two combined
    assert rows[-1]["hints"] == {"latency": 10, "occupancy": 2}
    assert rows[-1]["impl"] == "cuTile 2x32 lat=10 occ=2"
    nbytes = bench.act.bytes_moved(M, I, np.float16)
    assert rows[-1]["GB/s"] == pytest.approx(nbytes / 0.85e-3 / 1e9)

    size_rows = [bench._row("cuTile 2x32", M, I, nbytes, 1.0, copy_gbs, True, ""),
                 bench._row("CuPy ElementwiseKernel", M, I, nbytes, 1.7, copy_gbs, True, "")]
    text = bench.summarize(M, I, rows, size_rows)
    assert text.startswith("6x40: best 2x32 lat=10 occ=2: 0.8500 ms")
    assert "default rule 2x32: 1.0000 ms" in text
    assert "CuPy time / best time: 2.00, CuPy time / default rule time: 1.70" in text
    print(bench.format_table(rows))                    # formats failed rows without raising


def test_bench_exits_cleanly_without_a_gpu(monkeypatch, capsys):
    from moe_tutorial import bench_activation as bench
    monkeypatch.setattr(bench.device, "backend", lambda: "cpu")
    assert bench.main([]) == 0
    assert "needs a GPU" in capsys.readouterr().out
