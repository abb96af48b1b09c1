"""The tile trace records exactly which elements each block read and wrote, and draws them."""
import matplotlib
import numpy as np
import pytest

import cuda.tile as ct

import moe_tutorial as mt
from moe_tutorial.emulator import _memory

matplotlib.use("Agg")


@ct.kernel
def vector_add(a, b, c, TILE: ct.Constant[int]):
    i = ct.bid(0)
    ct.store(c, index=(i,), tile=ct.load(a, index=(i,), shape=(TILE,))
             + ct.load(b, index=(i,), shape=(TILE,)))


@ct.kernel
def gather_scatter(x, ids, out, TILE: ct.Constant[int]):
    i = ct.bid(0)
    rows = ct.load(ids, index=(i,), shape=(TILE,))
    got = ct.gather(x, rows, mask=rows != 3, padding_value=0)
    ct.scatter(out, rows, got, mask=rows != 5)


@ct.kernel
def transposed_copy(w, out, TM: ct.Constant[int], TN: ct.Constant[int]):
    # w is (N, M); block (i, j) reads its (TM, TN) tile of w.T with order="F"
    t = ct.load(w, index=(ct.bid(0), ct.bid(1)), shape=(TM, TN), order="F")
    ct.store(out, index=(ct.bid(0), ct.bid(1)), tile=t)


@ct.kernel
def writes_then_fails(c, TILE: ct.Constant[int]):
    i = ct.bid(0)
    ct.store(c, index=(i,), tile=ct.full((TILE,), 1.0, ct.float32))
    ct.gather(c, ct.arange(TILE, dtype=ct.int32) + 100, check_bounds=False)


def _set(*items):
    return {(i,) for i in items}


def test_vector_add_with_a_partial_tile():
    rng = np.random.default_rng()
    a, b = rng.standard_normal(10).astype(np.float32), rng.standard_normal(10).astype(np.float32)
    c = np.full(10, np.nan, np.float32)
    tr = mt.trace(vector_add, (3,), (a, b, c, 4))
    assert tr.blocks == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]
    for name in ("a", "b"):
        assert tr.elements(name, "read", block=0) == _set(0, 1, 2, 3)
        assert tr.elements(name, "read", block=(2,)) == _set(8, 9)
        assert tr.elements(name, "padding") == _set(10, 11)
        assert tr.elements(name, "written") == set()
    assert tr.elements("c", "written", block=1) == _set(4, 5, 6, 7)
    assert tr.elements("c", "written") == _set(*range(10))
    assert tr.elements("c", "masked") == _set(10, 11), "the partial tile's store is masked"
    assert tr.elements("c", "read") == set()
    assert np.isnan(c).all(), "the caller's output is not touched (the trace runs on a copy)"
    np.testing.assert_allclose(tr.arrays["c"], a.astype(np.float64) + b, rtol=1e-6)
    assert tr.error is None
    assert _memory.recorder is None


def test_gather_with_masked_and_out_of_bounds_lanes_and_a_masked_scatter():
    x = np.arange(8, dtype=np.float32) + 10
    ids = np.array([0, 3, 9, -1, 5, 6, 7, 2], np.int32)
    out = np.full(8, -1.0, np.float32)
    tr = mt.trace(gather_scatter, (2,), (x, ids, out, 4))
    assert tr.elements("x", "read") == _set(0, 5, 6, 7, 2)
    assert tr.elements("x", "masked") == _set(3)
    assert tr.elements("x", "out of bounds") == _set(9, -1)
    assert tr.elements("x", "out of bounds", block=1) == set()
    assert tr.elements("out", "written", op="scatter") == _set(0, 3, 6, 7, 2)
    assert tr.elements("out", "masked", op="scatter") == _set(5)
    assert tr.elements("out", "out of bounds", block=0) == _set(9, -1)
    assert tr.elements("ids", "read") == _set(*range(8))
    want = np.full(8, -1.0, np.float32)
    for i in (0, 6, 7, 2):
        want[i] = x[i]
    want[3] = 0.0  # the masked gather lane gives the padding value
    np.testing.assert_array_equal(tr.arrays["out"], want)


def test_order_and_2d_tiles_map_to_the_array_indices():
    n, m = 6, 4   # w is (N, M) = (6, 4): out (4, 6) = w.T
    w = np.arange(n * m, dtype=np.float32).reshape(n, m)
    out = np.zeros((m, n), np.float32)
    tr = mt.trace(transposed_copy, (2, 2), (w, out, 2, 4))
    # block (0, 1) loads rows 0..1 and columns 4..7 of w.T, i.e. w[4..7, 0..1]
    want = {(r, c) for r in (4, 5) for c in (0, 1)}
    assert tr.elements("w", "read", block=(0, 1)) == want
    assert tr.elements("w", "padding", block=(0, 1)) == {(r, c) for r in (6, 7) for c in (0, 1)}
    assert tr.elements("out", "written", block=(1, 0)) == {(r, c) for r in (2, 3)
                                                           for c in range(4)}
    np.testing.assert_array_equal(tr.arrays["out"], w.T)


def test_a_failing_kernel_keeps_what_it_did():
    c = np.zeros(8, np.float32)
    tr = mt.trace(writes_then_fails, (2,), (c, 4))
    assert isinstance(tr.error, IndexError)
    assert tr.blocks == [(0, 0, 0)], "block 1 never ran"
    assert tr.elements("c", "written") == _set(0, 1, 2, 3)
    assert tr.elements("c", "out of bounds") == _set(100, 101, 102, 103)
    assert "IndexError" in tr.summary()
    fig = tr.plot()
    assert "stopped" in fig._suptitle.get_text()


def test_plot_draws_every_touched_array_and_highlights_a_block():
    a = np.ones(40, np.float32)
    tr = mt.trace(vector_add, (3,), (a, a.copy(), np.zeros(40, np.float32), 16))
    fig = tr.plot(block=1, wrap=16)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert [t.split(" ")[0] for t in titles] == ["a", "b", "c"]
    assert "wrote" in titles[2] and "16 per row" in titles[2]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "block (1,)  (highlighted)" in labels and "block (2,)" in labels
    one = tr.plot(arrays="c")
    assert len(one.axes) == 1


def test_bad_arguments_are_named():
    a = np.ones(8, np.float32)
    with pytest.raises(TypeError, match="@ct.kernel"):
        mt.trace(lambda: None, (1,), ())
    with pytest.raises(TypeError, match="takes 4 arguments"):
        mt.trace(vector_add, (1,), (a, a))
    tr = mt.trace(vector_add, (2,), (a, a, a.copy(), 4))
    with pytest.raises(KeyError, match="'d' is not"):
        tr.elements("d")
    with pytest.raises(ValueError, match="block"):
        tr.plot(block=(5,))
    with pytest.raises(KeyError, match="'zz'"):
        tr.plot(arrays=["zz"])
