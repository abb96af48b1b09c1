"""Inputs that once gave a silent wrong answer: each now gives a clear error naming the argument,
or the correct result (compared with the float64 reference). Emulator, and the GPU under
``-m gpu`` where the test takes ``xp``."""
import numpy as np
import pytest

import moe_tutorial as mt
from moe_tutorial import activation, fused_moe as fm, layer, reference as ref, routing
from moe_tutorial.device import to_numpy
from moe_tutorial.fused_moe import LayerConfig, TileConfig

TOL = {"float32": 1e-5, "float16": 2e-3}      # relative error vs the float64 reference


def _weights(rng, E, H, I, dtype="float32"):
    w1 = (rng.standard_normal((E, 2 * I, H)) / np.sqrt(H)).astype(dtype)
    w2 = (rng.standard_normal((E, H, I)) / np.sqrt(I)).astype(dtype)
    return w1, w2


@pytest.mark.parametrize("sorted_rows", [True, False])
def test_expert_map_values_past_the_local_experts_drop_the_replica(xp, rng, sorted_rows):
    """Map value 4 with 4 local experts: align drops the replica, and so must moe_sum (it used
    to add an unwritten row). validate=True refuses the map instead."""
    T, H, I, K = 9, 24, 20, 2
    emap = np.array([0, -1, 1, -1, 2, -1, 4, -1], np.int32)
    ids = np.array([[6, 0]] * T, np.int32)
    ids[1] = [2, 4]
    x = rng.standard_normal((T, H)).astype(np.float32)
    w1, w2 = _weights(rng, 4, H, I)
    weights = rng.random((T, K)).astype(np.float32)
    config = LayerConfig.of(TileConfig(16, 32, 32)).replace(sorted_rows=sorted_rows)
    args = [xp.asarray(a) for a in (x, w1, w2)]
    kwargs = dict(topk_weights=xp.asarray(weights), topk_ids=xp.asarray(ids),
                  expert_map=xp.asarray(emap), config=config)
    for _ in range(2):                  # same answer every run (no uninitialised rows read)
        got = layer.moe_forward(*args, None, K, **kwargs)
        want = ref.moe_forward(x, w1, w2, None, K, topk_weights=weights, topk_ids=ids,
                               expert_map=emap)
        assert ref.relative_error(got, want) < TOL["float32"]
    with pytest.raises(ValueError, match="align: expert_map values must be local expert ids"):
        layer.moe_forward(*args, None, K, validate=True, **kwargs)


def _aligned(xp, T=6, K=2, E=3, tile_m=4, seed=0):
    ids = np.random.default_rng(seed).integers(0, E, size=(T, K)).astype(np.int32)
    s, e, _ = routing.align(xp.asarray(ids), E, tile_m)
    return ids, s, e


def test_gemm_out_overlapping_an_input_is_refused(xp):
    a = xp.zeros((12, 8), xp.float32)
    w = xp.zeros((3, 8, 8), xp.float32)
    _, s, e = _aligned(xp)
    cfg = TileConfig(4, 16, 16)
    with pytest.raises(ValueError, match="fused_moe_matmul: out must not overlap a"):
        fm.fused_moe_matmul(a, w, s, e, top_k=1, out=a, config=cfg)
    with pytest.raises(ValueError, match="out must not overlap w"):
        fm.fused_moe_matmul(a, w, s, e, top_k=1, out=w.reshape(24, 8)[:12], config=cfg)


@pytest.mark.parametrize("bad", [-5, 10**6])
def test_gemm_refuses_slot_ids_out_of_range(xp, bad):
    ids, s, e = _aligned(xp)
    s = xp.asarray(to_numpy(s).copy())
    s[1] = bad
    a, w = xp.zeros((6, 8), xp.float32), xp.zeros((3, 8, 8), xp.float32)
    with pytest.raises(ValueError, match=r"sorted_token_ids\[1\] = "):
        fm.fused_moe_matmul(a, w, s, e, top_k=2, config=TileConfig(4, 16, 16))
    with pytest.raises(ValueError, match=r"fused_moe_matmul: sorted_token_ids"):
        fm.fused_moe_matmul(xp.zeros((s.shape[0], 8), xp.float32), w, s, e, top_k=1,
                            topk_weights=xp.zeros(12, xp.float32), mul_routed_weight=True,
                            config=TileConfig(4, 16, 16), sorted_rows=True)


def test_moe_sum_refuses_positions_outside_y(xp):
    y = xp.zeros((40, 4), xp.float32)
    ids = xp.zeros((6, 2), xp.int32)
    with pytest.raises(ValueError, match=r"moe_sum: positions\[0\] = 1000000 is not in"):
        fm.moe_sum(y, ids, 3, positions=xp.full(12, 10**6, xp.int32))


def test_permute_rows_refuses_ids_aligned_for_another_top_k(xp):
    x = xp.zeros((6, 8), xp.float32)
    _, s, e = _aligned(xp, K=2)
    with pytest.raises(ValueError, match="permute_rows: sorted_token_ids"):
        fm.permute_rows(x, s, e, 3)
    with pytest.raises(ValueError, match="permute_rows: sorted_token_ids"):
        fm.permute_rows(x, s, e, 1)
    fm.permute_rows(x, s, e, 2)                                  # the right one passes


def test_read_only_out_is_refused_naming_the_argument():
    """NumPy only: CuPy arrays are always writable."""
    def ro(a):
        a.flags.writeable = False
        return a
    ids, s, e = _aligned(np)
    x, w = np.zeros((6, 8), np.float32), np.zeros((3, 8, 8), np.float32)
    cfg = TileConfig(4, 16, 16)
    cases = [
        ("fused_moe_matmul: out is read-only", lambda: fm.fused_moe_matmul(
            x, w, s, e, top_k=2, out=ro(np.zeros((12, 8), np.float32)), config=cfg)),
        ("moe_sum: out is read-only", lambda: fm.moe_sum(
            np.zeros((12, 8), np.float32), ids, 3, out=ro(np.zeros((6, 8), np.float32)))),
        ("permute_rows: out is read-only", lambda: fm.permute_rows(
            x, s, e, 2, out=ro(np.zeros((s.shape[0], 8), np.float32)))),
        (r"permute_rows: positions is read-only", lambda: fm.permute_rows(
            x, s, e, 2, positions=ro(np.zeros(12, np.int32)))),
        (r"topk_softmax: out\[1\] \(ids\) is read-only", lambda: routing.topk_softmax(
            np.zeros((6, 3), np.float32), 2,
            out=(np.zeros((6, 2), np.float32), ro(np.zeros((6, 2), np.int32))))),
        ("align: workspace is read-only", lambda: routing.align(
            ids, 3, 4, workspace=ro(np.zeros(routing.align_workspace_size(12, 3, 4),
                                             np.int32)))),
        ("out is read-only", lambda: activation.silu_and_mul(
            np.zeros((4, 8), np.float32), ro(np.zeros((4, 4), np.float32)))),
    ]
    for match, call in cases:
        with pytest.raises(ValueError, match=match):
            call()


def test_outputs_overlapping_inputs_are_refused(xp):
    ids, s, e = _aligned(xp)
    ids = xp.asarray(ids)
    logits = xp.zeros((6, 4), xp.float32)
    with pytest.raises(ValueError, match=r"topk_softmax: out\[0\] \(weights\) must not overlap "
                                         r"logits"):
        routing.topk_softmax(logits, 2, out=(logits[:, :2], xp.zeros((6, 2), xp.int32)))
    both = xp.zeros((6, 4), xp.float32)
    with pytest.raises(ValueError, match=r"out\[1\] \(ids\) must not overlap out\[0\]"):
        routing.topk_softmax(logits, 2, out=(both[:, :2], both[:, 1:3].view(xp.int32)))
    ws = xp.zeros(routing.align_workspace_size(12, 3, 4) + 12, xp.int32)
    ws[-12:] = ids.reshape(-1)
    with pytest.raises(ValueError, match="align: workspace must not overlap topk_ids"):
        routing.align(ws[-12:].reshape(6, 2), 3, 4, workspace=ws)
    y = xp.zeros((12, 8), xp.float32)
    with pytest.raises(ValueError, match="moe_sum: out must not overlap y"):
        fm.moe_sum(y, ids, 3, out=y[:6])
    x = xp.zeros((6, 8), xp.float32)
    with pytest.raises(ValueError, match="permute_rows: positions must not overlap out"):
        buf = xp.zeros((s.shape[0], 8), xp.float32)
        fm.permute_rows(x, s, e, 2, out=buf, positions=buf.reshape(-1)[:12].view(xp.int32))
    S = s.shape[0]
    big = xp.zeros((S + 6, 8), xp.float32)          # x is rows S-2 .. S+3: out's last two
    with pytest.raises(ValueError, match="permute_rows: out must not overlap x"):
        fm.permute_rows(big[S - 2:S + 4], s, e, 2, out=big[:S])


@pytest.mark.parametrize("value, error", [(4.7, TypeError), ("4", TypeError),
                                          (True, TypeError), (0, ValueError)])
def test_counts_must_be_real_integers(value, error):
    y, ids = np.zeros((8, 4), np.float32), np.zeros((4, 2), np.int32)
    with pytest.raises(error, match="moe_sum: num_experts must be"):
        fm.moe_sum(y, ids, value)
    with pytest.raises(error, match="align: num_experts must be"):
        routing.align(ids, value, 4)
    with pytest.raises((TypeError, ValueError), match="top_k must be"):
        fm.permute_rows(np.zeros((4, 4), np.float32), np.full(8, 8, np.int32),
                        np.zeros(2, np.int32), value)


def test_numpy_integers_are_accepted(xp):
    y, ids = xp.ones((8, 4), xp.float32), xp.zeros((4, 2), xp.int32)
    got = fm.moe_sum(y, ids, np.int64(3))
    np.testing.assert_array_equal(to_numpy(got), np.full((4, 4), 2.0))
    s, e, n = routing.align(ids, np.int32(3), np.int64(4))
    assert int(to_numpy(n)[0]) == 8


@pytest.mark.parametrize("grid", [(1.7,), (2, 1.0), (True,), (0,), (-1,), 3, ()])
def test_launch_refuses_grids_that_are_not_positive_ints(grid):
    out = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="launch: grid must be a tuple of 1 to 3 positive ints"):
        mt.launch(grid, mt.vector_add_kernel, (out, out, out, 4))


def test_launch_accepts_numpy_integer_grids():
    a, b = np.arange(8, dtype=np.float32), np.ones(8, np.float32)
    out = np.zeros(8, np.float32)
    mt.launch((np.int64(2),), mt.vector_add_kernel, (a, b, out, 4))
    np.testing.assert_array_equal(out, a + b)


def test_align_bounds_num_experts_quickly():
    import time
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"align: num_experts must be in \[1, 4096\]"):
        routing.align(np.zeros((4, 2), np.int32), 2**17, 16)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("call, name", [
    (lambda: mt.silu_and_mul(np.zeros((4, 7), np.float32)), "silu_and_mul"),
    (lambda: mt.silu_and_mul(np.zeros((4, 8), np.float32), tile_m=3), "silu_and_mul"),
    (lambda: mt.vector_add(np.zeros(4), np.zeros(5)), "vector_add"),
    (lambda: mt.align(np.zeros((2, 2), np.int32), 0, 16), "align"),
    (lambda: mt.fused_moe_matmul(np.zeros((4, 8), np.float32), np.zeros((2, 8, 9), np.float32),
                                 np.zeros(16, np.int32), np.zeros(2, np.int32), top_k=1),
     "fused_moe_matmul"),
    (lambda: mt.moe_sum(np.zeros((6, 8), np.float32), np.zeros((3, 2), np.int32), num_experts=4.7),
     "moe_sum"),
    (lambda: mt.moe_forward(np.zeros((4, 8), np.float32), np.zeros((2, 6, 8), np.float32),
                            np.zeros((2, 8, 3), np.float32), np.zeros((4, 3), np.float32), 1),
     "moe_forward"),
])
def test_argument_errors_start_with_the_function_name(call, name):
    """Every argument error goes through ``moe_tutorial.arguments`` and names its function
    first, then the argument."""
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    assert str(info.value).startswith(f"{name}: "), str(info.value)
