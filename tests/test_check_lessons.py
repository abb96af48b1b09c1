"""The checkers of notebooks 01-05: a right answer passes, and each typical wrong answer fails with
feedback that names the mistake (not just "element [i] is off")."""
import math

import cuda.tile as ct
import numpy as np
import pytest

from moe_tutorial import activation, check, fused_moe, layer
from moe_tutorial.check import _costs

ConstInt = ct.Constant[int]
ZERO, NEG_INF = ct.PaddingMode.ZERO, ct.PaddingMode.NEG_INF
SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def on_backend(request, monkeypatch):
    monkeypatch.setenv("MOE_TUTORIAL_DEVICE", request.param)
    return request.param


def verdict(capsys, result):
    """(passed, printed text) of one checker call; the text must start with PASS or FAIL."""
    out = capsys.readouterr().out
    assert out.startswith("PASS " if result else "FAIL "), out
    return bool(result), out


# --- notebook 01 ------------------------------------------------------------------------------

@ct.kernel
def _softmax(logits, probs, TILE_T: ConstInt, E_PAD: ConstInt):
    x = ct.load(logits, (ct.bid(0), 0), shape=(TILE_T, E_PAD), padding_mode=NEG_INF)
    z = ct.exp(x - ct.max(x, axis=1, keepdims=True))
    ct.store(probs, (ct.bid(0), 0), z / ct.sum(z, axis=1, keepdims=True))


@ct.kernel
def _softmax_no_max(logits, probs, TILE_T: ConstInt, E_PAD: ConstInt):
    x = ct.load(logits, (ct.bid(0), 0), shape=(TILE_T, E_PAD), padding_mode=NEG_INF)
    z = ct.exp(x)                                   # overflows for large logits
    ct.store(probs, (ct.bid(0), 0), z / ct.sum(z, axis=1, keepdims=True))


@ct.kernel
def _softmax_zero_pad(logits, probs, TILE_T: ConstInt, E_PAD: ConstInt):
    x = ct.load(logits, (ct.bid(0), 0), shape=(TILE_T, E_PAD), padding_mode=ZERO)
    z = ct.exp(x - ct.max(x, axis=1, keepdims=True))
    ct.store(probs, (ct.bid(0), 0), z / ct.sum(z, axis=1, keepdims=True))


def test_router_softmax(on_backend, capsys):
    assert verdict(capsys, check.router_softmax(_softmax))[0]
    ok, out = verdict(capsys, check.router_softmax(_softmax_no_max))
    assert not ok and "case 5 of 5" in out and "unless the row max is subtracted" in out
    ok, out = verdict(capsys, check.router_softmax(_softmax_zero_pad))
    assert not ok and "padding columns count as logits of 0" in out


@ct.kernel
def _histogram(flat_ids, counts, TILE: ConstInt):
    index = ct.bid(0) * TILE + ct.arange(TILE, dtype=ct.int32)
    ids = ct.gather(flat_ids, index, mask=index < flat_ids.shape[0], padding_value=-1)
    ct.atomic_add(counts, ids, 1)


@ct.kernel
def _histogram_pad_zero(flat_ids, counts, TILE: ConstInt):
    index = ct.bid(0) * TILE + ct.arange(TILE, dtype=ct.int32)
    ids = ct.gather(flat_ids, index, padding_value=0)      # lanes past N count as expert 0
    ct.atomic_add(counts, ids, 1)


def test_expert_histogram(on_backend, capsys):
    assert verdict(capsys, check.expert_histogram(_histogram))[0]
    ok, out = verdict(capsys, check.expert_histogram(_histogram_pad_zero))
    assert not ok and "padding element" in out and "counted as expert 0" in out


def test_block_owners(capsys):
    def right(counts, tile_m):
        return np.repeat(np.arange(len(counts)), -(-np.asarray(counts) // tile_m))

    assert verdict(capsys, check.block_owners(right))[0]
    ok, out = verdict(capsys, check.block_owners(
        lambda c, m: np.repeat(np.arange(len(c)), np.asarray(c) // m)))
    assert not ok and "rounds down" in out
    ok, out = verdict(capsys, check.block_owners(
        lambda c, m: np.repeat(np.arange(len(c)), np.maximum(1, -(-np.asarray(c) // m)))))
    assert not ok and "experts with no tokens must get no block" in out


# --- notebook 02 ------------------------------------------------------------------------------

def test_silu_and_mul_bytes(capsys):
    assert verdict(capsys, check.silu_and_mul_bytes(activation.bytes_moved))[0]
    ok, out = verdict(capsys, check.silu_and_mul_bytes(lambda M, I, a, b: 3 * M * I))
    assert not ok and "count of elements" in out
    ok, out = verdict(capsys, check.silu_and_mul_bytes(
        lambda M, I, a, b: 2 * activation.bytes_moved(M, I, a, b)))
    assert not ok and "x2 the expected value" in out


@ct.kernel
def _row_loop(gate, up, out, TILE_N: ConstInt):
    row = ct.bid(0)
    for j in range(ct.num_tiles(out, axis=1, shape=(1, TILE_N))):
        g = ct.load(gate, (row, j), shape=(1, TILE_N), padding_mode=ZERO).astype(ct.float32)
        u = ct.load(up, (row, j), shape=(1, TILE_N), padding_mode=ZERO).astype(ct.float32)
        ct.store(out, (row, j), (g / (1.0 + ct.exp(-g)) * u).astype(out.dtype))


@ct.kernel
def _row_first_tile(gate, up, out, TILE_N: ConstInt):
    row = ct.bid(0)
    g = ct.load(gate, (row, 0), shape=(1, TILE_N), padding_mode=ZERO).astype(ct.float32)
    u = ct.load(up, (row, 0), shape=(1, TILE_N), padding_mode=ZERO).astype(ct.float32)
    ct.store(out, (row, 0), (g / (1.0 + ct.exp(-g)) * u).astype(out.dtype))


def test_silu_and_mul_row_loop(on_backend, capsys):
    assert verdict(capsys, check.silu_and_mul_row_loop(_row_loop))[0]
    ok, out = verdict(capsys, check.silu_and_mul_row_loop(_row_first_tile))
    assert not ok and "never written" in out


def _geglu_factory(half: float, use_silu: bool = False):
    @ct.kernel
    def geglu(gate, up, out, TILE_M: ConstInt, TILE_N: ConstInt):
        i, j = ct.bid(0), ct.bid(1)
        g = ct.load(gate, (i, j), shape=(TILE_M, TILE_N), padding_mode=ZERO).astype(ct.float32)
        u = ct.load(up, (i, j), shape=(TILE_M, TILE_N), padding_mode=ZERO).astype(ct.float32)
        if use_silu:
            act = g / (1.0 + ct.exp(-g))
        else:
            act = half * g * (1.0 + ct.tanh(SQRT_2_OVER_PI * (g + 0.044715 * g * g * g)))
        ct.store(out, (i, j), (act * u).astype(out.dtype))
    return geglu


def test_geglu(on_backend, capsys):
    assert verdict(capsys, check.geglu(_geglu_factory(0.5)))[0]
    ok, out = verdict(capsys, check.geglu(_geglu_factory(1.0)))       # the 0.5 forgotten
    assert not ok and "twice the expected value" in out
    ok, out = verdict(capsys, check.geglu(_geglu_factory(0.5, use_silu=True)))
    assert not ok and "that is SwiGLU" in out


# --- notebook 03 ------------------------------------------------------------------------------

def _gather_factory(divide: bool):
    @ct.kernel
    def gather_rows(X, sorted_token_ids, out, TOP_K: ConstInt, TILE_M: ConstInt,
                    TILE_H: ConstInt):
        slots = ct.load(sorted_token_ids, (ct.bid(0),), shape=(TILE_M,))
        rows = slots // TOP_K if divide else slots
        cols = ct.bid(1) * TILE_H + ct.arange(TILE_H, dtype=ct.int32)
        tile = ct.gather(X, (rows[:, None], cols[None, :]),
                         mask=(slots < X.shape[0] * TOP_K)[:, None])
        ct.store(out, (ct.bid(0), ct.bid(1)), tile)
    return gather_rows


def test_moe_gather_rows(on_backend, capsys):
    assert verdict(capsys, check.moe_gather_rows(_gather_factory(True)))[0]
    ok, out = verdict(capsys, check.moe_gather_rows(_gather_factory(False)))
    assert not ok and "not divided by TOP_K" in out


def _scatter_factory(weighted: bool):
    @ct.kernel
    def scatter_weighted(Y, sorted_token_ids, topk_weights, out, TILE_M: ConstInt,
                         TILE_N: ConstInt):
        slots = ct.load(sorted_token_ids, (ct.bid(0),), shape=(TILE_M,))
        valid = slots < out.shape[0]
        y = ct.load(Y, (ct.bid(0), ct.bid(1)), shape=(TILE_M, TILE_N), padding_mode=ZERO)
        if weighted:
            y = y * ct.gather(topk_weights, slots, mask=valid)[:, None]
        cols = ct.bid(1) * TILE_N + ct.arange(TILE_N, dtype=ct.int32)
        ct.scatter(out, (slots[:, None], cols[None, :]), y.astype(out.dtype),
                   mask=valid[:, None])
    return scatter_weighted


def test_moe_scatter_weighted(on_backend, capsys):
    assert verdict(capsys, check.moe_scatter_weighted(_scatter_factory(True)))[0]
    ok, out = verdict(capsys, check.moe_scatter_weighted(_scatter_factory(False)))
    assert not ok and "without the router weight" in out


def test_moe_swizzle(capsys):
    assert verdict(capsys, check.moe_swizzle(fused_moe.swizzle_2d))[0]
    ok, out = verdict(capsys, check.moe_swizzle(lambda b, m, n, g: (b // n, b % n)))
    assert not ok and "plain row-major order" in out
    ok, out = verdict(capsys, check.moe_swizzle(lambda b, m, n, g: (0, 0)))
    assert not ok and "exactly once" in out


# --- notebook 04 ------------------------------------------------------------------------------

def test_moe_layer(capsys):
    def right(x, w1, w2, logits, top_k):
        return layer.moe_forward(x, w1, w2, logits, top_k, renormalize=True)

    def not_renormalized(x, w1, w2, logits, top_k):
        return layer.moe_forward(x, w1, w2, logits, top_k, renormalize=False)

    assert verdict(capsys, check.moe_layer(right))[0]
    ok, out = verdict(capsys, check.moe_layer(not_renormalized))
    assert not ok and "without renormalizing" in out
    ok, out = verdict(capsys, check.moe_layer(lambda x, *rest: np.zeros_like(x)))
    assert not ok and "nothing computed yet" in out


def test_moe_expert_map(capsys):
    def right(E, R, r):
        emap = np.full(E, -1, np.int32)
        emap[r * E // R:(r + 1) * E // R] = np.arange((r + 1) * E // R - r * E // R)
        return emap

    assert verdict(capsys, check.moe_expert_map(right))[0]
    ok, out = verdict(capsys, check.moe_expert_map(lambda E, R, r: np.arange(E, dtype=np.int32)))
    assert not ok and "is held by 2 ranks" in out


def _floor(T, H, I, K, used, b, peak, bw):
    return _costs.roofline_floor_ms(*_costs.layer_cost(T, H, I, K, used, b), peak, bw)


def test_moe_roofline_floor(capsys):
    assert verdict(capsys, check.moe_roofline_floor(_floor))[0]
    ok, out = verdict(capsys, check.moe_roofline_floor(lambda *a: _floor(*a) / 1e3))
    assert not ok and "seconds instead of milliseconds" in out
    ok, out = verdict(capsys, check.moe_roofline_floor(lambda *a: 2 * _floor(*a)))
    assert not ok and "x2 the expected value" in out


# --- notebook 05 ------------------------------------------------------------------------------

def _swiglu_factory(pad: bool):
    mode = ZERO if pad else ct.PaddingMode.UNDETERMINED

    @ct.kernel
    def swiglu_gemm(A, W_gate, W_up, C, TILE_M: ConstInt, TILE_N: ConstInt, TILE_K: ConstInt):
        i, j = ct.bid(0), ct.bid(1)
        gate = ct.full((TILE_M, TILE_N), 0.0, dtype=ct.float32)
        up = ct.full((TILE_M, TILE_N), 0.0, dtype=ct.float32)
        for kt in range(ct.cdiv(A.shape[1], TILE_K)):
            a = ct.load(A, (i, kt), shape=(TILE_M, TILE_K), padding_mode=mode)
            bg = ct.load(W_gate, (kt, j), shape=(TILE_K, TILE_N), order=(1, 0),
                         padding_mode=mode)
            bu = ct.load(W_up, (kt, j), shape=(TILE_K, TILE_N), order=(1, 0), padding_mode=mode)
            gate = ct.mma(a, bg, gate)
            up = ct.mma(a, bu, up)
        ct.store(C, (i, j), (gate / (1.0 + ct.exp(-gate)) * up).astype(C.dtype))
    return swiglu_gemm


def test_moe_swiglu_gemm(capsys):
    assert verdict(capsys, check.moe_swiglu_gemm(_swiglu_factory(True)))[0]
    # undetermined padding past the Kd edge (1024 on the emulator, NaN or garbage on a GPU)
    ok, out = verdict(capsys, check.moe_swiglu_gemm(_swiglu_factory(False)))
    assert not ok and "padding_mode=ct.PaddingMode.ZERO" in out
    assert "never written" not in out


def test_moe_intermediate_bytes(capsys):
    def right(T, K, I, fused, b):
        return _costs.intermediate_bytes(T, K, I, fused_swiglu=fused, bytes_per_element=b)

    assert verdict(capsys, check.moe_intermediate_bytes(right))[0]
    ok, out = verdict(capsys, check.moe_intermediate_bytes(
        lambda T, K, I, fused, b: T * K * (I if fused else 2 * I) * b))
    assert not ok and "only what GEMM1 writes" in out
    ok, out = verdict(capsys, check.moe_intermediate_bytes(lambda *a: 2 * right(*a)))
    assert not ok and "x2 the expected value" in out


def _positions_factory(store_slots: bool):
    @ct.kernel
    def positions_kernel(sorted_token_ids, positions, TILE_M: ConstInt):
        replicas = ct.load(sorted_token_ids, (ct.bid(0),), shape=(TILE_M,))
        slots = ct.bid(0) * TILE_M + ct.arange(TILE_M, dtype=ct.int32)
        ct.scatter(positions, replicas, slots if store_slots else replicas,
                   mask=replicas < positions.shape[0])
    return positions_kernel


def test_moe_slot_positions(on_backend, capsys):
    assert verdict(capsys, check.moe_slot_positions(_positions_factory(True)))[0]
    ok, out = verdict(capsys, check.moe_slot_positions(_positions_factory(False)))
    assert not ok and "replica ids themselves" in out


def test_hint_levels_on_a_real_checker(capsys):
    wrong = lambda s, t: tuple(a // b for a, b in zip(s, t))  # noqa: E731
    check.num_tiles(wrong)
    out = capsys.readouterr().out
    assert "hint=1" in out and check.HINTS["num_tiles"][0] not in out
    check.num_tiles(wrong, hint=1)
    out = capsys.readouterr().out
    assert check.HINTS["num_tiles"][0] in out and check.HINTS["num_tiles"][1] not in out
    check.num_tiles(wrong, hint=2)
    assert check.HINTS["num_tiles"][1] in capsys.readouterr().out
