"""NVIDIA's cuTile MoE sample, re-implemented: the benchmark's "cuTile sample (re-implemented)" peer.

What this re-implements: ``samples/MoE.py`` of https://github.com/NVIDIA/cutile-python (read at
commit 9c3ee3ccc504f18bbabf55b0d3e6d398bb21ecc4; the file last changed in a6c2fecee06f). Its
code is not copied here: this is the same algorithm written in our own words, so the benchmark
can compare against the sample without torch. What is the same as the sample:

* the GEMM kernel (``sample_gemm_kernel``): a 1-D grid of ``cdiv(M, TILE_M) * cdiv(N, TILE_N)``
  blocks mapped to (m-block, n-tile) by the 2-D swizzle with groups of ``GROUP_SIZE_M = 8``
  m-blocks (the same arithmetic as ``fused_moe.swizzle_2d``, which is reused); the block's
  token ids read with ``ct.gather(sorted_token_ids, pid_m * TILE_M + ct.arange(TILE_M))``;
  A rows ``token_id // num_token_replicas`` (a run-time int) gathered per ``TILE_K`` step, the
  sentinel rows falling outside A and reading 0; the expert id one scalar ``ct.load``; the
  weight tile a ``ct.load`` of ``B (E, N, Kd)`` with ``order=(0, 2, 1)`` and zero padding,
  reshaped to ``(TILE_K, TILE_N)``; float32 ``ct.mma``; the router weight gathered by token id;
  the tile scattered to rows ``token_id`` of C (sentinel rows fall outside C and are dropped).
  No mask, no ``expert < 0`` guard, int32 indexing -- as in the sample, which relies on
  cuTile reading 0 for out-of-bounds gather indices and dropping out-of-bounds scatters (so
  the emulator's opt-in strict mode, which flags every out-of-bounds index, rejects it);
* the activation kernel (``sample_silu_and_mul_kernel``): one block per row, a
  ``(1, next_pow2(I))`` tile of the gate half and of the up half (two strided views of GEMM1's
  output), ``silu(g) * u`` in float32 with ``flush_to_zero`` and an approximate division;
* the host alignment (``align``): stable argsort of the flattened expert ids, per-expert
  counts (bincount), blocks per expert, the block total read on the host, then a Python loop
  over the experts copying each expert's replicas and block ids (reading each count on the
  host: a sync per expert); arrays sized exactly ``total_blocks * TILE_M``, sentinel ``T*K``;
* the layer (``moe_forward``): three zero-filled intermediates ``(T, K, 2I)``, ``(T*K, I)``,
  ``(T, K, H)``; GEMM1 (replicas = K), the activation, GEMM2 (replicas = 1, times the router
  weights); the sum over top-k (``torch.sum`` in the sample);
* the tiles ``128 x 128 x 64`` (``SAMPLE_TILES``).

What differs: CuPy (GPU) or NumPy (our emulator) instead of torch -- ``cupy.argsort`` /
``bincount`` for ``torch.argsort(stable=True)`` / ``bincount``; the top-k sum is a small cuTile
kernel (``topk_sum``), because CuPy's ``sum(axis=1)`` ran slower than ``torch.sum``; and the
kernels are launched with ``moe_tutorial.launch`` on the current CuPy stream instead of
``torch.cuda.current_stream()``; ``moe_forward_aligned`` is the same layer with the alignment
given (the benchmark's "alignment excluded" time); the tile sizes are arguments (default: the
sample's); inputs are checked (a ``ValueError`` names the argument). ``python -m
moe_tutorial.bench --compare-sample-dir DIR`` times this against the real sample.
"""
from __future__ import annotations

import cuda.tile as ct

from . import device
from .fused_moe import swizzle_2d
from .routing import next_power_of_2

SAMPLE_TILES = (128, 128, 64)        # TILE_M, TILE_N, TILE_K of the sample's launches
GROUP_SIZE_M = 8                     # the sample's swizzle group

ConstInt = ct.Constant[int]
ConstBool = ct.Constant[bool]


@ct.kernel
def sample_gemm_kernel(A, B, C, topk_weights, sorted_token_ids, expert_ids,
                       num_token_replicas: int, MUL_ROUTED_WEIGHT: ConstBool,
                       TILE_M: ConstInt, TILE_N: ConstInt, TILE_K: ConstInt,
                       GROUP_SIZE_M: ConstInt):
    """``C[token_id] = A[token_id // replicas] @ B[expert].T`` (times the router weight) for
    the ``TILE_M`` slots of one m-block and one ``TILE_N`` column tile (see the module)."""
    num_m = ct.cdiv(sorted_token_ids.shape[0], TILE_M)
    num_n = ct.cdiv(B.shape[1], TILE_N)
    pid_m, pid_n = swizzle_2d(ct.bid(0), num_m, num_n, GROUP_SIZE_M)
    # the block's slots, read as a gather of an index tile (the sample's way)
    token_ids = ct.gather(sorted_token_ids, pid_m * TILE_M + ct.arange(TILE_M, dtype=ct.int32))
    rows = token_ids // num_token_replicas
    expert = ct.load(expert_ids, index=pid_m, shape=())
    acc = ct.full((TILE_M, TILE_N), 0.0, dtype=ct.float32)
    for kt in range(ct.cdiv(B.shape[2], TILE_K)):
        cols = kt * TILE_K + ct.arange(TILE_K, dtype=ct.int32)
        a = ct.gather(A, (rows[:, None], cols[None, :]))
        b = ct.load(B, (expert, kt, pid_n), shape=(1, TILE_K, TILE_N), order=(0, 2, 1),
                    padding_mode=ct.PaddingMode.ZERO)
        acc = ct.mma(a, b.reshape((TILE_K, TILE_N)), acc)
    if MUL_ROUTED_WEIGHT:
        acc = acc * ct.gather(topk_weights, token_ids)[:, None]
    out_cols = pid_n * TILE_N + ct.arange(TILE_N, dtype=ct.int32)
    ct.scatter(C, (token_ids[:, None], out_cols[None, :]), ct.astype(acc, C.dtype))


@ct.kernel
def sample_silu_and_mul_kernel(gate, up, out, TILE_N: ConstInt):
    """Row ``bid`` of ``out = silu(gate) * up``, one ``(1, TILE_N)`` tile (TILE_N >= width)."""
    row = ct.bid(0)
    g = ct.load(gate, (row, 0), (1, TILE_N)).astype(ct.float32)
    u = ct.load(up, (row, 0), (1, TILE_N)).astype(ct.float32)
    sigmoid = ct.truediv(1.0, ct.add(1, ct.exp(-g), flush_to_zero=True), flush_to_zero=True,
                         rounding_mode=ct.RoundingMode.APPROX)
    y = ct.mul(ct.mul(g, sigmoid, flush_to_zero=True), u, flush_to_zero=True)
    ct.store(out, (row, 0), y.astype(out.dtype))


@ct.kernel
def topk_sum_kernel(Y, out, K: ConstInt, TILE_T: ConstInt, TILE_H: ConstInt):
    """``out[t] = sum_k Y[t, k]`` (float32 accumulation) for ``TILE_T`` tokens and ``TILE_H``
    columns of ``Y (T, K, H)``: one 2-D tile load per k."""
    acc = ct.full((TILE_T, TILE_H), 0.0, dtype=ct.float32)
    for k in range(K):
        y = ct.load(Y, (ct.bid(0), k, ct.bid(1)), shape=(TILE_T, 1, TILE_H),
                    padding_mode=ct.PaddingMode.ZERO)
        acc = acc + y.reshape((TILE_T, TILE_H)).astype(ct.float32)
    ct.store(out, (ct.bid(0), ct.bid(1)), acc.astype(out.dtype))


def topk_sum(y):
    """``y (T, K, H)`` summed over the top-k axis, as the sample's ``torch.sum(dim=1)`` does
    (float32 accumulation). A cuTile kernel rather than ``cupy.sum(axis=1)``, which ran 3-8x
    slower than ``torch.sum`` on the prefill shapes (H200)."""
    xp = device.array_module(y)
    T, K, H = y.shape
    out = xp.empty((T, H), dtype=y.dtype)
    tile_t, tile_h = 16, min(256, next_power_of_2(H))
    device.launch((ct.cdiv(T, tile_t), ct.cdiv(H, tile_h)), topk_sum_kernel,
                  (y, out, K, tile_t, tile_h))
    return out


def _check_tiles(tiles):
    if (not isinstance(tiles, tuple) or len(tiles) != 3
            or any(not isinstance(t, int) or t < 1 or t & (t - 1) for t in tiles)):
        raise ValueError(f"tiles must be (TILE_M, TILE_N, TILE_K), three powers of two, "
                         f"got {tiles!r}")


def align(topk_ids, num_experts: int, tile_m: int = SAMPLE_TILES[0]):
    """The sample's host alignment: ``(sorted_token_ids, expert_ids)``, int32, on the device of
    ``topk_ids`` -- every expert's replicas (stable order) padded to a multiple of ``tile_m``
    with the sentinel ``T*K``, and the expert of each ``tile_m`` block. Syncs with the host
    (the block total, then each expert's counts)."""
    xp = device.array_module(topk_ids)
    if getattr(topk_ids, "ndim", None) != 2:
        raise ValueError(f"topk_ids must be a (T, K) array, got shape "
                         f"{getattr(topk_ids, 'shape', None)}")
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive int, got {num_experts!r}")
    T, K = topk_ids.shape
    total = T * K
    flat = topk_ids.reshape(-1)
    order = xp.argsort(flat, kind="stable")
    counts = xp.bincount(flat, minlength=num_experts)
    blocks = (counts - 1 + tile_m) // tile_m
    total_blocks = int(blocks.sum())                               # a host sync
    sorted_token_ids = xp.full((total_blocks * tile_m,), total, dtype=xp.int32)
    expert_ids = xp.zeros((total_blocks,), dtype=xp.int32)
    block = token = 0
    for e in range(num_experts):
        count, nblocks = int(counts[e]), int(blocks[e])            # host syncs, per expert
        expert_ids[block:block + nblocks] = e
        start = block * tile_m
        sorted_token_ids[start:start + count] = order[token:token + count]
        token += count
        block += nblocks
    return sorted_token_ids, expert_ids


def gemm(a, w, c, topk_weights, sorted_token_ids, expert_ids, *, replicas: int,
         mul_routed_weight: bool, tiles=SAMPLE_TILES):
    """One launch of ``sample_gemm_kernel``: ``c (T*K, N)`` from ``a`` and ``w (E, N, Kd)``."""
    tm, tn, tk = tiles
    grid = (ct.cdiv(sorted_token_ids.shape[0], tm) * ct.cdiv(w.shape[1], tn),)
    device.launch(grid, sample_gemm_kernel,
                  (a, w, c, topk_weights.reshape(-1), sorted_token_ids, expert_ids,
                   int(replicas), bool(mul_routed_weight), tm, tn, tk, GROUP_SIZE_M))


def silu_and_mul(x, out):
    """``out (M, I) = silu(x[:, :I]) * x[:, I:]`` with the sample's one-row-per-block kernel."""
    I = out.shape[1]
    device.launch((x.shape[0],), sample_silu_and_mul_kernel,
                  (x[:, :I], x[:, I:], out, next_power_of_2(I)))


def _check(hidden_states, w1, w2, topk_weights, topk_ids, tiles):
    _check_tiles(tiles)
    for name, a, nd in (("hidden_states", hidden_states, 2), ("w1", w1, 3), ("w2", w2, 3),
                        ("topk_weights", topk_weights, 2), ("topk_ids", topk_ids, 2)):
        if getattr(a, "ndim", None) != nd:
            raise ValueError(f"{name} must have {nd} axes, got shape {getattr(a, 'shape', None)}")
    T, H = hidden_states.shape
    E, H2, I = w2.shape
    if tuple(w1.shape) != (E, 2 * I, H):
        raise ValueError(f"w1 must be (E, 2I, H) = {(E, 2 * I, H)} for hidden_states {(T, H)} "
                         f"and w2 {(E, H2, I)}, got {tuple(w1.shape)}")
    if H2 != H:
        raise ValueError(f"w2 must be (E, H, I) with H = {H}, got {tuple(w2.shape)}")
    if topk_ids.shape[0] != T or tuple(topk_weights.shape) != tuple(topk_ids.shape):
        raise ValueError(f"topk_ids and topk_weights must both be (T={T}, K), got "
                         f"{tuple(topk_ids.shape)} and {tuple(topk_weights.shape)}")
    return T, H, E, I, topk_ids.shape[1]


def moe_forward_aligned(hidden_states, w1, w2, topk_weights, topk_ids, sorted_token_ids,
                        expert_ids, *, tiles=SAMPLE_TILES):
    """The sample's layer after the alignment (``align`` with ``tiles[0]``): GEMM1, the
    activation, GEMM2 with the router weights, the sum over top-k. Returns (T, H)."""
    T, H, E, I, K = _check(hidden_states, w1, w2, topk_weights, topk_ids, tiles)
    xp = device.array_module(hidden_states)
    dtype = hidden_states.dtype
    cache1 = xp.zeros((T, K, 2 * I), dtype=dtype)
    cache2 = xp.zeros((T * K, I), dtype=dtype)
    cache3 = xp.zeros((T, K, H), dtype=dtype)
    gemm(hidden_states, w1, cache1.reshape(T * K, 2 * I), topk_weights, sorted_token_ids,
         expert_ids, replicas=K, mul_routed_weight=False, tiles=tiles)
    silu_and_mul(cache1.reshape(T * K, 2 * I), cache2)
    gemm(cache2, w2, cache3.reshape(T * K, H), topk_weights, sorted_token_ids, expert_ids,
         replicas=1, mul_routed_weight=True, tiles=tiles)
    return topk_sum(cache3)


def moe_forward(hidden_states, w1, w2, topk_weights, topk_ids, *, tiles=SAMPLE_TILES):
    """The sample's whole layer (``cutile_moe``): host alignment, then ``moe_forward_aligned``.
    ``hidden_states (T, H)``, ``w1 (E, 2I, H)``, ``w2 (E, H, I)``, ``topk_weights`` /
    ``topk_ids (T, K)`` (ids in ``[0, E)``)."""
    _check(hidden_states, w1, w2, topk_weights, topk_ids, tiles)
    sorted_token_ids, expert_ids = align(topk_ids, w1.shape[0], tiles[0])
    return moe_forward_aligned(hidden_states, w1, w2, topk_weights, topk_ids, sorted_token_ids,
                               expert_ids, tiles=tiles)


def compile_cases():
    """``(case_id, kernel, params)`` of the launches the benchmark makes, float16, the sample's
    tiles: GEMM1 (no router weight), GEMM2 (router weight), the activation (I = 768 -> 1024)."""
    from .compile import array, scalar
    f16 = ct.float16
    gemm = [array(f16, 2), array(f16, 3), array(f16, 2), array(ct.float32, 1),
            array(ct.int32, 1), array(ct.int32, 1), scalar(ct.int32)]
    return [(f"sample_gemm{1 + mul}_float16", sample_gemm_kernel,
             gemm + [mul, *SAMPLE_TILES, GROUP_SIZE_M]) for mul in (False, True)] + \
        [("sample_silu_and_mul_float16", sample_silu_and_mul_kernel,
          [array(f16, 2), array(f16, 2), array(f16, 2), next_power_of_2(768)]),
         ("sample_topk_sum_float16", topk_sum_kernel, [array(f16, 3), array(f16, 2), 8, 16, 256])]


__all__ = ["SAMPLE_TILES", "GROUP_SIZE_M", "align", "gemm", "silu_and_mul", "moe_forward",
           "moe_forward_aligned", "sample_gemm_kernel", "sample_silu_and_mul_kernel", "topk_sum",
           "topk_sum_kernel"]
