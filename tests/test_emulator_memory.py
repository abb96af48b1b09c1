"""Memory operations of the emulator: load/store in tile space (the cuTile docstring examples,
padding modes, partial tiles, order, views), tiled views, gather/scatter, advanced indexing and
atomics. Results are stored into arrays (not printed) so that, under ``pytest -m gpu``, the
same kernels run through ``ct.launch`` and the GPU must produce the same arrays."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cuda.tile as ct
import moe_tutorial as mt

ZERO = ct.PaddingMode.ZERO


def _np(a):
    return mt.to_numpy(a)


# ---- ct.load / ct.store: the docstring examples ----------------------------------------------

@ct.kernel
def load_1d_doc_kernel(x, out):
    ct.store(out, (0, 0), ct.load(x, (0,), shape=4)[None, :])
    ct.store(out, (1, 0), ct.load(x, (1,), shape=4)[None, :])
    ct.store(out, (2, 0), ct.load(x, (2,), shape=4, padding_mode=ZERO)[None, :])


def test_load_1d_docstring_example(xp):
    out = xp.full((3, 4), -1, dtype=np.int64)
    mt.launch((1,), load_1d_doc_kernel, (xp.arange(10, dtype=np.int64), out))
    np.testing.assert_array_equal(_np(out), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]])


@ct.kernel
def load_order_f_doc_kernel(x, out):
    for i in range(4):
        ct.store(out, (i, 0), ct.load(x, (i, 0), shape=(1, 4), order="F"))


def test_load_transposed_order_docstring_example(xp):
    out = xp.full((4, 4), -1, dtype=np.int64)
    mt.launch((1,), load_order_f_doc_kernel, (xp.arange(16, dtype=np.int64).reshape(4, 4), out))
    np.testing.assert_array_equal(_np(out), [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14],
                                             [3, 7, 11, 15]])


@ct.kernel
def load_order_3d_doc_kernel(x, out):
    ct.store(out, (0, 0, 0), ct.load(x, (0, 0, 0), shape=(1, 2, 2), order=(0, 2, 1)))
    ct.store(out, (1, 0, 0), ct.load(x, (1, 0, 0), shape=(1, 2, 2), order=(0, 2, 1)))


def test_load_3d_order_docstring_example(xp):
    out = xp.full((2, 2, 2), -1, dtype=np.int64)
    mt.launch((1,), load_order_3d_doc_kernel,
              (xp.arange(8, dtype=np.int64).reshape(2, 2, 2), out))
    np.testing.assert_array_equal(_np(out), [[[0, 2], [1, 3]], [[4, 6], [5, 7]]])


@ct.kernel
def load_scalar_doc_kernel(x, out):
    for i in range(10):
        tile = ct.load(x, (i,), shape=())
        ct.store(out, (9 - i,), tile)


def test_load_scalar_docstring_example(xp):
    out = xp.full(10, -1, dtype=np.int64)
    mt.launch((1,), load_scalar_doc_kernel, (xp.arange(10, dtype=np.int64), out))
    np.testing.assert_array_equal(_np(out), np.arange(10)[::-1])


@ct.kernel
def store_partial_doc_kernel(x):
    tile = ct.ones((4,), dtype=x.dtype)
    ct.store(x, (0,), tile)
    ct.store(x, (1,), tile * 2)


def test_store_partial_tile_docstring_example(xp):
    x = xp.zeros(6, dtype=np.int32)
    mt.launch((1,), store_partial_doc_kernel, (x,))
    assert _np(x).tolist() == [1, 1, 1, 1, 2, 2]


@ct.kernel
def store_scalar_doc_kernel(x):
    ct.store(x, (0, 0), tile=0)
    ct.store(x, (0, 1), tile=1)
    ct.store(x, (1, 0), tile=2)
    ct.store(x, (1, 1), tile=3)


def test_store_scalar_docstring_example(xp):
    x = xp.full((2, 2), -1, dtype=np.int32)
    mt.launch((1,), store_scalar_doc_kernel, (x,))
    assert _np(x).tolist() == [[0, 1], [2, 3]]


@ct.kernel
def slice_doc_kernel(x, y, out, offset, length):
    sub = x.slice(axis=0, start=1, stop=3)
    ct.store(out, (0, 0), ct.load(sub, (0, 0), shape=(2, 4)))
    sub1 = y.slice(axis=0, start=offset, stop=offset + length)
    ct.store(out, (2, 0), ct.load(sub1, (0,), shape=(4,)).reshape((1, 4)))
    ct.store(out, (2, 1), ct.load(sub1, (1,), shape=(4,)).reshape((1, 4)))


def test_array_slice_docstring_examples(xp):
    out = xp.full((4, 8), -1, dtype=np.int64)
    x = xp.arange(16, dtype=np.int64).reshape(4, 4)
    mt.launch((1,), slice_doc_kernel, (x, xp.arange(16, dtype=np.int64), out, 8, 8))
    got = _np(out)
    np.testing.assert_array_equal(got[:2, :4], [[4, 5, 6, 7], [8, 9, 10, 11]])
    np.testing.assert_array_equal(got[2], [8, 9, 10, 11, 12, 13, 14, 15])


# ---- padding, partial tiles, views -----------------------------------------------------------

@ct.kernel
def pad_kernel(x, out, MODE: ct.Constant[int]):
    modes = (ct.PaddingMode.ZERO, ct.PaddingMode.NEG_ZERO, ct.PaddingMode.NAN,
             ct.PaddingMode.POS_INF, ct.PaddingMode.NEG_INF)
    t = ct.load(x, (1, 1), (4, 8), padding_mode=modes[MODE])
    ct.store(out, (0, 0), t)


@pytest.mark.parametrize("mode, value", [(0, 0.0), (1, -0.0), (2, np.nan), (3, np.inf),
                                         (4, -np.inf)], ids=["zero", "neg_zero", "nan",
                                                             "pos_inf", "neg_inf"])
def test_partial_tile_padding_modes(xp, rng, mode, value):
    x = rng.standard_normal((6, 13)).astype(np.float32)  # tile (1, 1) covers rows 4..7, cols 8..15
    out = xp.full((4, 8), 7.0, dtype=np.float32)
    mt.launch((1,), pad_kernel, (xp.asarray(x), out, mode))
    want = np.full((4, 8), value, np.float32)
    want[:2, :5] = x[4:6, 8:13]
    got = _np(out)
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))  # -0.0 really is negative zero


@ct.kernel
def copy_2d_kernel(x, y, TM: ct.Constant[int], TN: ct.Constant[int]):
    t = ct.load(x, (ct.bid(0), ct.bid(1)), (TM, TN))  # UNDETERMINED padding: never stored
    ct.store(y, (ct.bid(0), ct.bid(1)), t)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 40), n=st.integers(1, 40), tm_log2=st.integers(0, 4),
       tn_log2=st.integers(0, 4), seed=st.integers(0, 2**31))
def test_copy_any_shape_with_partial_tiles(xp, m, n, tm_log2, tn_log2, seed):
    """Partial edge tiles are padded on load and masked on store: a copy kernel is exact."""
    tm, tn = 2 ** tm_log2, 2 ** tn_log2
    x = np.random.default_rng(seed).standard_normal((m, n)).astype(np.float32)
    y = xp.full((m, n), np.nan, dtype=np.float32)
    mt.launch((ct.cdiv(m, tm), ct.cdiv(n, tn)), copy_2d_kernel, (xp.asarray(x), y, tm, tn))
    np.testing.assert_array_equal(_np(y), x)


@ct.kernel
def scale_rows_kernel(x, y, TN: ct.Constant[int]):
    t = ct.load(x, (ct.bid(0), 0), (1, TN), padding_mode=ZERO)
    ct.store(y, (ct.bid(0), 0), t * 2)


def test_strided_and_transposed_views(xp, rng):
    """Arrays with any (positive) strides: kernels read and write through the views."""
    base = rng.standard_normal((8, 12)).astype(np.float32)
    x = xp.asarray(base)[::2, 1::3]           # (4, 4) with strides (2*12, 3) elements
    y_base = xp.zeros((4, 8), dtype=np.float32)
    y = y_base.T[::2]                          # (4, 4) transposed view into y_base
    mt.launch((4,), scale_rows_kernel, (x, y, 4))
    np.testing.assert_array_equal(_np(y), 2 * base[::2, 1::3])
    want_base = np.zeros((4, 8), np.float32)
    want_base.T[::2] = 2 * base[::2, 1::3]
    np.testing.assert_array_equal(_np(y_base), want_base)


def test_negative_stride_views_on_cpu(rng):
    """NumPy views with negative strides work on the emulator too."""
    base = rng.standard_normal((4, 4)).astype(np.float32)
    out = np.zeros((4, 4), np.float32)
    mt.launch((4,), scale_rows_kernel, (base[::-1], out[:, ::-1], 4))
    np.testing.assert_array_equal(out[:, ::-1], 2 * base[::-1])


@ct.kernel
def transposed_store_kernel(x, y):
    t = ct.load(x, (ct.bid(0), 0), (4, 8))
    # order="F": tile axis 0 runs along array axis 1, and the index is in that permuted space
    ct.store(y, (ct.bid(0), 0), t, order="F")


def test_store_with_order(xp, rng):
    x = rng.standard_normal((8, 8)).astype(np.float32)
    y = xp.zeros((8, 8), dtype=np.float32)
    mt.launch((2,), transposed_store_kernel, (xp.asarray(x), y))
    np.testing.assert_array_equal(_np(y), x.T)


# ---- tiled views -----------------------------------------------------------------------------

@ct.kernel
def tiled_view_kernel(x, out, counts):
    tv = x.tiled_view((2, 4))
    ct.store(out, (0, 0), tv.load((0, 0)))
    ct.store(out, (1, 0), tv.load((1, 0)))
    tv2 = x.tiled_view((2, 4), traversal_steps=(1, 4))
    ct.store(out, (2, 0), tv2.load((0, 0)))
    ct.store(out, (3, 0), tv2.load((1, 0)))
    ct.store(counts, (0,), tv.num_tiles(0))
    ct.store(counts, (1,), tv.num_tiles(1))
    ct.store(counts, (2,), ct.num_tiles(x, 0, shape=(4, 8)))


def test_tiled_view_docstring_example(xp):
    out = xp.full((8, 4), -1, dtype=np.int64)
    counts = xp.zeros(3, dtype=np.int32)
    mt.launch((1,), tiled_view_kernel, (xp.arange(16, dtype=np.int64).reshape(4, 4), out,
                                         counts))
    np.testing.assert_array_equal(_np(out), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11],
                                             [12, 13, 14, 15], [0, 1, 2, 3], [4, 5, 6, 7],
                                             [4, 5, 6, 7], [8, 9, 10, 11]])
    np.testing.assert_array_equal(_np(counts), [2, 1, 1])


@ct.kernel
def tiled_view_store_kernel(x, y):
    tv = x.tiled_view(4)
    tv.store(0, ct.full((4,), 99, dtype=ct.int32))
    ty = y.tiled_view(4)
    ty.atomic_store_add(0, ct.full((4,), 1, dtype=ct.int32))


def test_tiled_view_store_and_atomic_store(xp):
    x = xp.zeros(8, dtype=np.int32)
    y = xp.zeros(4, dtype=np.int32)
    mt.launch((3,), tiled_view_store_kernel, (x, y))
    assert _np(x).tolist() == [99, 99, 99, 99, 0, 0, 0, 0]
    assert _np(y).tolist() == [3, 3, 3, 3]  # one atomic add per block


# ---- gather / scatter ------------------------------------------------------------------------

@ct.kernel
def gather_1d_kernel(x, idx, out, TILE: ct.Constant[int]):
    i = ct.load(idx, (0,), (TILE,))
    ct.store(out, (0, 0), ct.gather(x, i)[None, :])
    ct.store(out, (1, 0), ct.gather(x, i, padding_value=-5.0)[None, :])
    ct.store(out, (2, 0), ct.gather(x, (i,), mask=i % 2 == 0, padding_value=7.0)[None, :])
    ct.store(out, (3, 0), ct.full((1, TILE), 0.0, ct.float32) + ct.gather(x, 3))


def test_gather_out_of_bounds_negative_and_masked(xp, rng):
    x = rng.standard_normal(10).astype(np.float32)
    idx = np.array([0, 9, 10, -1, 5, 1000, 2, -7], np.int32)
    out = xp.full((4, 8), np.nan, dtype=np.float32)
    mt.launch((1,), gather_1d_kernel, (xp.asarray(x), xp.asarray(idx), out, 8))
    inb = (idx >= 0) & (idx < 10)
    safe = np.where(inb, idx, 0)
    got = _np(out)
    np.testing.assert_array_equal(got[0], np.where(inb, x[safe], 0.0))
    np.testing.assert_array_equal(got[1], np.where(inb, x[safe], -5.0))
    np.testing.assert_array_equal(got[2], np.where(inb & (idx % 2 == 0), x[safe], 7.0))
    np.testing.assert_array_equal(got[3], np.full(8, x[3]))


@ct.kernel
def gather_scatter_2d_kernel(x, rows, y, TR: ct.Constant[int], TC: ct.Constant[int]):
    r = ct.load(rows, (ct.bid(0),), (TR,))
    c = ct.arange(TC, dtype=ct.int32)
    block = ct.gather(x, (r[:, None], c[None, :]))          # (TR, TC), broadcast indices
    ct.scatter(y, (r[:, None], c[None, :]), block * 10, mask=r[:, None] >= 2)


def test_gather_scatter_2d_broadcast_indices(xp, rng):
    x = rng.standard_normal((6, 4)).astype(np.float32)
    rows = np.array([0, 3, 5, 6, -1, 2, 4, 1], np.int32)  # 6 and -1 are out of bounds
    y = xp.full((6, 4), -1.0, dtype=np.float32)
    mt.launch((2,), gather_scatter_2d_kernel, (xp.asarray(x), xp.asarray(rows), y, 4, 4))
    want = np.full((6, 4), -1.0, np.float32)
    for r in rows:
        if 2 <= r < 6:
            want[r] = 10 * x[r]
    np.testing.assert_array_equal(_np(y), want)


@ct.kernel
def scatter_oob_kernel(y, idx, TILE: ct.Constant[int]):
    i = ct.load(idx, (0,), (TILE,))
    ct.scatter(y, i, ct.arange(TILE, dtype=ct.int32) + 100)


def test_scatter_drops_out_of_bounds_indices(xp):
    idx = np.array([3, -1, 0, 8, 5, 100, 7, -8], np.int32)
    y = xp.zeros(8, dtype=np.int32)
    mt.launch((1,), scatter_oob_kernel, (y, xp.asarray(idx), 8))
    want = np.zeros(8, np.int32)
    for k, i in enumerate(idx):
        if 0 <= i < 8:
            want[i] = 100 + k
    np.testing.assert_array_equal(_np(y), want)


# ---- advanced indexing -----------------------------------------------------------------------

@ct.kernel
def load_advanced_doc_kernel(x, y, col_start):
    row_indices = ct.arange(4, dtype=ct.int32)
    tile = ct.load_advanced_indexing(x, (row_indices, ct.Slice(col_start, 4)),
                                     padding_mode=ZERO)
    ct.store(y, (0, 0), tile)


@ct.kernel
def store_advanced_doc_kernel(y):
    row_indices = ct.arange(4, dtype=ct.int32) + 1
    tile = ct.full((4, 4), 1, dtype=y.dtype)
    ct.store_advanced_indexing(y, (row_indices, ct.Slice(0, 4)), tile)


def test_advanced_indexing_docstring_examples(xp):
    x = xp.arange(64, dtype=np.int32).reshape(8, 8)
    y = xp.zeros((4, 4), dtype=np.int32)
    mt.launch((1,), load_advanced_doc_kernel, (x, y, 2))
    assert _np(y).tolist() == [[2, 3, 4, 5], [10, 11, 12, 13], [18, 19, 20, 21],
                               [26, 27, 28, 29]]
    z = xp.zeros((6, 4), dtype=np.int32)
    mt.launch((1,), store_advanced_doc_kernel, (z,))
    assert _np(z).tolist() == [[0, 0, 0, 0]] + [[1, 1, 1, 1]] * 4 + [[0, 0, 0, 0]]


@ct.kernel
def load_advanced_oob_kernel(x, rows, y, col_start):
    r = ct.load(rows, (0,), (4,))
    ct.store(y, (0, 0), ct.load_advanced_indexing(x, (r, ct.Slice(col_start, 4)),
                                                   padding_mode=ZERO))


def test_advanced_indexing_pads_out_of_bounds(xp, rng):
    x = rng.standard_normal((5, 6)).astype(np.float32)
    rows = np.array([4, 0, 7, 2], np.int32)  # row 7 is out of bounds
    y = xp.full((4, 4), np.nan, dtype=np.float32)
    mt.launch((1,), load_advanced_oob_kernel, (xp.asarray(x), xp.asarray(rows), y, 3))
    want = np.zeros((4, 4), np.float32)
    for k, r in enumerate(rows):
        if r < 5:
            want[k, :3] = x[r, 3:6]  # columns 6..7 are out of bounds too
    np.testing.assert_array_equal(_np(y), want)


# ---- atomics ---------------------------------------------------------------------------------

@ct.kernel
def atomic_rmw_kernel(x, idx, upd, old, OP: ct.Constant[int], TILE: ct.Constant[int]):
    i = ct.load(idx, (0,), (TILE,))
    u = ct.load(upd, (0,), (TILE,))
    if OP == 0:
        r = ct.atomic_add(x, i, u)
    elif OP == 1:
        r = ct.atomic_max(x, i, u)
    elif OP == 2:
        r = ct.atomic_min(x, i, u)
    elif OP == 3:
        r = ct.atomic_xchg(x, i, u)
    elif OP == 4:
        r = ct.atomic_and(x, i, u)
    elif OP == 5:
        r = ct.atomic_or(x, i, u)
    else:
        r = ct.atomic_xor(x, i, u)
    ct.store(old, (0,), r)


_RMW = [("add", np.add), ("max", np.maximum), ("min", np.minimum), ("xchg", lambda a, b: b),
        ("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor)]


@pytest.mark.parametrize("k", range(len(_RMW)), ids=[n for n, _ in _RMW])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32], ids=lambda d: d.__name__)
def test_atomic_rmw_returns_old_values(xp, rng, k, dtype):
    name, fn = _RMW[k]
    x0 = rng.integers(0, 1000, 16).astype(dtype)
    idx = rng.permutation(16).astype(np.int32)  # distinct addresses: the order is irrelevant
    upd = rng.integers(0, 1000, 16).astype(dtype)
    x, old = xp.asarray(x0.copy()), xp.zeros(16, dtype=dtype)
    mt.launch((1,), atomic_rmw_kernel, (x, xp.asarray(idx), xp.asarray(upd), old, k, 16))
    np.testing.assert_array_equal(_np(old), x0[idx])
    want = x0.copy()
    want[idx] = fn(x0[idx], upd)
    np.testing.assert_array_equal(_np(x), want)


def test_atomic_add_float_with_repeated_addresses(xp, rng):
    """Duplicates see each other's updates: per address, the old values returned are the
    running sums in some order (the GPU's order is unspecified)."""
    idx = rng.integers(0, 4, 16).astype(np.int32)
    upd = np.ones(16, np.float32)
    x, old = xp.zeros(4, dtype=np.float32), xp.zeros(16, dtype=np.float32)
    mt.launch((1,), atomic_rmw_kernel, (x, xp.asarray(idx), xp.asarray(upd), old, 0, 16))
    np.testing.assert_array_equal(_np(x), np.bincount(idx, minlength=4))
    got = _np(old)
    for a in range(4):
        np.testing.assert_array_equal(np.sort(got[idx == a]), np.arange((idx == a).sum()))


@ct.kernel
def cas_kernel(x, idx, out, TILE: ct.Constant[int]):
    i = ct.load(idx, (0,), (TILE,))
    old = ct.atomic_cas(x, i, 0, ct.arange(TILE, dtype=ct.int32) + 1)
    ct.store(out, (0,), old)


def test_atomic_cas_docstring_example_and_one_winner_per_address(xp):
    x = xp.asarray(np.array([0, 1, 0, 1], np.int32))
    out = xp.zeros(4, dtype=np.int32)
    mt.launch((1,), cas_kernel, (x, xp.arange(4, dtype=np.int32), out, 4))
    assert _np(out).tolist() == [0, 1, 0, 1]
    assert _np(x).tolist() == [1, 1, 3, 1]  # desired was arange + 1
    # 8 lanes race for 2 addresses: exactly one lane per address sees the old 0
    x = xp.zeros(2, dtype=np.int32)
    out = xp.full(8, -1, dtype=np.int32)
    idx = np.array([0, 1, 0, 1, 0, 1, 0, 1], np.int32)
    mt.launch((1,), cas_kernel, (x, xp.asarray(idx), out, 8))
    got, final = _np(out), _np(x)
    for a in range(2):
        lanes = np.flatnonzero(idx == a)
        winners = lanes[got[lanes] == 0]
        assert len(winners) == 1 and final[a] == winners[0] + 1
        assert np.all(got[lanes][got[lanes] != 0] == final[a])


@ct.kernel
def histogram_kernel(values, hist, n, TILE: ct.Constant[int]):
    v = ct.load(values, (ct.bid(0),), (TILE,), padding_mode=ZERO)
    pos = ct.bid(0) * TILE + ct.arange(TILE, dtype=ct.int32)
    bins = ct.astype(ct.floor(v * 4.0), ct.int32)       # bins of width 0.25
    bins = ct.where(pos < n, bins, -1)                   # padding -> bin -1: out of bounds,
    ct.atomic_add(hist, bins, 1)                         # and an out-of-bounds atomic is a no-op


@pytest.mark.parametrize("n", [1, 1000, 4096])
def test_atomic_histogram_kernel(xp, rng, n):
    values = rng.uniform(0, 4, n).astype(np.float32)
    hist = xp.zeros(16, dtype=np.int32)
    mt.launch((ct.cdiv(n, 256),), histogram_kernel, (xp.asarray(values), hist, n, 256))
    want = np.bincount(np.floor(values.astype(np.float64) * 4).astype(int), minlength=16)
    np.testing.assert_array_equal(_np(hist), want)
