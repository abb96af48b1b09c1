"""Whole kernels on the emulator against float64 NumPy references, on random shapes
(hypothesis). Under ``pytest -m gpu`` the same kernels run through ``ct.launch``: the GPU and
the emulator must both match the reference to the stated tolerance."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cuda.tile as ct
import moe_tutorial as mt

ZERO = ct.PaddingMode.ZERO
FAST = settings(max_examples=15, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _np(a):
    return mt.to_numpy(a)


# ---- grid coverage ---------------------------------------------------------------------------

@ct.kernel
def block_ids_kernel(out):
    x, y, z = ct.bid(0), ct.bid(1), ct.bid(2)
    nx, ny = ct.num_blocks(0), ct.num_blocks(1)
    linear = (z * ny + y) * nx + x
    ct.store(out, (linear,), linear + 1000 * ct.num_blocks(2))


@pytest.mark.parametrize("grid", [(5,), (3, 4), (2, 3, 4)])
def test_every_block_runs_once(xp, grid):
    total = int(np.prod(grid))
    out = xp.full(total, -1, dtype=np.int32)
    mt.launch(grid, block_ids_kernel, (out,))
    nz = grid[2] if len(grid) == 3 else 1
    np.testing.assert_array_equal(_np(out), np.arange(total) + 1000 * nz)


# ---- vector add ------------------------------------------------------------------------------

@ct.kernel
def axpy_kernel(x, y, out, alpha, TILE: ct.Constant[int]):
    bid = ct.bid(0)
    a = ct.load(x, (bid,), (TILE,))
    b = ct.load(y, (bid,), (TILE,))
    ct.store(out, (bid,), (alpha * a.astype(ct.float32) + b).astype(out.dtype))


@FAST
@given(n=st.integers(1, 5000), tile_log2=st.integers(0, 10), seed=st.integers(0, 2**31),
       half=st.booleans())
def test_axpy_any_size(xp, n, tile_log2, seed, half):
    rng = np.random.default_rng(seed)
    dtype = np.float16 if half else np.float32
    x = rng.standard_normal(n).astype(dtype)
    y = rng.standard_normal(n).astype(np.float32)
    out = xp.full(n, np.nan, dtype=dtype)
    tile = 2 ** tile_log2
    mt.launch((ct.cdiv(n, tile),), axpy_kernel, (xp.asarray(x), xp.asarray(y), out, 0.5, tile))
    want = 0.5 * x.astype(np.float64) + y
    eps = np.finfo(dtype).eps
    # float32 math (two roundings) then one rounding to the output dtype
    bound = eps * np.abs(want) + 4 * np.finfo(np.float32).eps * (np.abs(want) + 1)
    assert np.all(np.abs(_np(out).astype(np.float64) - want) <= bound)


# ---- tiled matmul with mma -------------------------------------------------------------------

@ct.kernel
def matmul_kernel(a, b, c, TM: ct.Constant[int], TN: ct.Constant[int], TK: ct.Constant[int]):
    bm, bn = ct.bid(0), ct.bid(1)
    acc = ct.zeros((TM, TN), dtype=ct.float32)
    for k in range(ct.cdiv(a.shape[1], TK)):
        x = ct.load(a, (bm, k), (TM, TK), padding_mode=ZERO)
        y = ct.load(b, (k, bn), (TK, TN), padding_mode=ZERO)
        acc = ct.mma(x, y, acc)
    ct.store(c, (bm, bn), acc.astype(c.dtype))


@FAST
@given(m=st.integers(1, 70), n=st.integers(1, 70), k=st.integers(1, 70),
       tiles=st.sampled_from([(16, 16, 16), (32, 16, 32), (16, 32, 64)]),
       seed=st.integers(0, 2**31))
def test_tiled_matmul_any_shape(xp, m, n, k, tiles, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float16)
    b = rng.standard_normal((k, n)).astype(np.float16)
    c = xp.full((m, n), np.nan, dtype=np.float32)
    tm, tn, tk = tiles
    mt.launch((ct.cdiv(m, tm), ct.cdiv(n, tn)), matmul_kernel,
              (xp.asarray(a), xp.asarray(b), c, tm, tn, tk))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = a64 @ b64
    bound = 2 * k * np.finfo(np.float32).eps * (np.abs(a64) @ np.abs(b64)) + 1e-30
    assert np.all(np.abs(_np(c) - want) <= bound)


# ---- a Mixture-of-Experts style kernel: gather rows, per-expert mma, weight, scatter -----------

@ct.kernel
def expert_matmul_kernel(x, w, token_ids, expert_ids, gate, out,
                         TM: ct.Constant[int], TN: ct.Constant[int], TK: ct.Constant[int]):
    """Rows ``token_ids[bid*TM : (bid+1)*TM]`` of ``x`` times expert ``expert_ids[bid]``'s
    weights, scaled by ``gate`` and scattered to those rows of ``out``. Padding token ids are
    out of range: the gather reads zeros for them and the scatter drops them."""
    bm, bn = ct.bid(0), ct.bid(1)
    tokens = ct.load(token_ids, (bm,), (TM,))
    expert = ct.load(expert_ids, (bm,), ())
    cols = ct.arange(TK, dtype=ct.int32)
    acc = ct.zeros((TM, TN), dtype=ct.float32)
    for k in range(ct.cdiv(x.shape[1], TK)):
        rows = ct.gather(x, (tokens[:, None], (k * TK + cols)[None, :]))
        wk = ct.load(w, (expert, k, bn), (1, TK, TN), padding_mode=ZERO).reshape((TK, TN))
        acc = ct.mma(rows, wk, acc)
    acc = acc * ct.gather(gate, tokens)[:, None]
    out_cols = bn * TN + ct.arange(TN, dtype=ct.int32)
    ct.scatter(out, (tokens[:, None], out_cols[None, :]), acc.astype(out.dtype))


def _expert_blocks(rng, n_tokens, n_experts, tm):
    """Tokens grouped by expert, each group padded to a multiple of tm with the id n_tokens."""
    assignment = rng.integers(0, n_experts, n_tokens)
    token_ids, expert_ids = [], []
    for e in range(n_experts):
        ids = np.flatnonzero(assignment == e)
        pad = (-len(ids)) % tm
        ids = np.concatenate([ids, np.full(pad, n_tokens)])
        token_ids.append(ids)
        expert_ids += [e] * (len(ids) // tm)
    return (assignment, np.concatenate(token_ids).astype(np.int32),
            np.array(expert_ids, np.int32))


@FAST
@given(n_tokens=st.integers(1, 60), n_experts=st.integers(1, 4), hidden=st.integers(1, 40),
       inter=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_expert_gather_mma_scatter_kernel(xp, n_tokens, n_experts, hidden, inter, seed):
    rng = np.random.default_rng(seed)
    tm, tn, tk = 16, 16, 16
    x = rng.standard_normal((n_tokens, hidden)).astype(np.float16)
    w = rng.standard_normal((n_experts, hidden, inter)).astype(np.float16)
    gate = rng.uniform(0, 1, n_tokens).astype(np.float32)
    assignment, token_ids, expert_ids = _expert_blocks(rng, n_tokens, n_experts, tm)
    out = xp.full((n_tokens, inter), np.nan, dtype=np.float32)
    if len(expert_ids):
        mt.launch((len(expert_ids), ct.cdiv(inter, tn)), expert_matmul_kernel,
                  (xp.asarray(x), xp.asarray(w), xp.asarray(token_ids),
                   xp.asarray(expert_ids), xp.asarray(gate), out, tm, tn, tk))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    want = np.einsum("th,thi->ti", x64, w64[assignment]) * gate[:, None]
    bound = (2 * hidden * np.finfo(np.float32).eps
             * np.einsum("th,thi->ti", np.abs(x64), np.abs(w64[assignment])) + 1e-30)
    assert np.all(np.abs(_np(out) - want) <= bound)


# ---- row softmax: reductions, exp, broadcasting ----------------------------------------------

@ct.kernel
def softmax_kernel(x, out, TN: ct.Constant[int]):
    row = ct.load(x, (ct.bid(0), 0), (1, TN), padding_mode=ct.PaddingMode.NEG_INF)
    row = row.astype(ct.float32)
    e = ct.exp(row - ct.max(row, 1, keepdims=True))
    ct.store(out, (ct.bid(0), 0), (e / ct.sum(e, 1, keepdims=True)).astype(out.dtype))


@FAST
@given(m=st.integers(1, 20), n=st.integers(1, 100), seed=st.integers(0, 2**31))
def test_row_softmax(xp, m, n, seed):
    x = np.random.default_rng(seed).standard_normal((m, n)).astype(np.float16) * 4
    out = xp.full((m, n), np.nan, dtype=np.float16)
    mt.launch((m,), softmax_kernel, (xp.asarray(x), out, 1 << max(n - 1, 0).bit_length()))
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(1, keepdims=True))
    np.testing.assert_allclose(_np(out).astype(np.float64), e / e.sum(1, keepdims=True),
                               rtol=2 * np.finfo(np.float16).eps, atol=1e-6)


# ---- custom reduce / scan, helpers, static control flow --------------------------------------

def _combine_max_with_index(v0, i0, v1, i1):
    keep = v0 >= v1
    return ct.where(keep, v0, v1), ct.where(keep, i0, i1)


@ct.function
def _scaled(t, factor):
    return t * factor


@ct.kernel
def custom_reduce_scan_kernel(x, out_max, out_idx, out_scan, TN: ct.Constant[int],
                              UNROLL: ct.Constant[int]):
    t = ct.load(x, (0, 0), (4, TN))
    idx = ct.broadcast_to(ct.arange(TN, dtype=ct.int32)[None, :], (4, TN))
    best, where_best = ct.reduce((t, idx), 1, _combine_max_with_index, (-1.0e30, 0))
    ct.store(out_max, (0,), best)
    ct.store(out_idx, (0,), where_best)
    running = ct.scan(t, 1, lambda a, b: a + b, 0.0)
    for i in ct.static_iter(range(UNROLL)):  # unrolled at compile time on the GPU
        running = _scaled(running, 2.0)
    ct.store(out_scan, (0, 0), running)


def test_custom_reduce_scan_function_and_static_iter(xp, rng):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    out_max = xp.zeros(4, dtype=np.float32)
    out_idx = xp.zeros(4, dtype=np.int32)
    out_scan = xp.zeros((4, 8), dtype=np.float32)
    mt.launch((1,), custom_reduce_scan_kernel,
              (xp.asarray(x), out_max, out_idx, out_scan, 8, 3))
    np.testing.assert_array_equal(_np(out_max), x.max(1))
    np.testing.assert_array_equal(_np(out_idx), x.argmax(1))
    np.testing.assert_allclose(_np(out_scan), 8 * np.cumsum(x.astype(np.float64), 1),
                               rtol=1e-5, atol=1e-5)


@ct.kernel
def control_flow_kernel(x, out, n, flag):
    """Run-time scalars drive Python ``if``/``for``/``while`` like on the GPU."""
    acc = ct.zeros((4,), dtype=ct.int32)
    i = 0
    while i < n:
        t = ct.load(x, (i,), (4,))
        if flag:
            acc = acc + t
        else:
            acc = acc - t
        i += 1
    for j in range(1, n, 2):
        acc = acc + j
    ct.store(out, (0,), acc)


@pytest.mark.parametrize("flag", [True, False])
def test_runtime_control_flow(xp, rng, flag):
    x = rng.integers(-50, 50, 24).astype(np.int32)
    out = xp.zeros(4, dtype=np.int32)
    mt.launch((1,), control_flow_kernel, (xp.asarray(x), out, 5, flag))
    sign = 1 if flag else -1
    want = sign * x[:20].reshape(5, 4).sum(0) + sum(range(1, 5, 2))
    np.testing.assert_array_equal(_np(out), want)
