"""The fused gather/scatter MoE matmul (notebook 03).

One kernel computes one expert GEMM for *all* experts at once. ``routing.align`` has grouped
the token replicas ``r = t*K + k`` by expert and padded every group to a multiple of ``TILE_M``
(``sorted_token_ids``, sentinel ``T*K``), and recorded the expert of every ``TILE_M`` block
(``expert_ids``, -1 for unused blocks). Each block of this kernel then

1. picks its (m-block, n-tile) pair through a 2-D swizzle (``GROUP_SIZE_M`` m-blocks share the
   n-tiles they sweep, so neighbouring blocks reuse the same weight tiles in L2);
2. reads its expert id and leaves at once if it is -1 (padding, or another rank's expert);
3. gathers its ``TILE_M`` token rows of A (row ``r // ROW_DIV``: the token itself for GEMM1,
   the replica's row of the intermediate for GEMM2), sentinel rows masked to zero;
4. loads the expert's weight tile of ``W (E, N, Kd)`` already in the ``(TILE_K, TILE_N)`` layout
   ``ct.mma`` wants, via ``order=(0, 2, 1)`` (no ``ct.transpose`` in the loop). The alternative,
   a plain load + ``ct.transpose`` (``TileConfig.transpose_b``), is kept for measurement: with
   cuTile 1.7 / tileiras 13.4 it compiles to *fewer* SASS instructions (sm_90 fp16, int32
   kernel: 2728 vs 3264 with decode tiles, 3680 vs 6584 with prefill tiles; see notebook 03),
   so the benchmark times both;
5. accumulates in float32, multiplies by the router weight of each replica if asked, and
   scatters the rows back to their replica rows of C, masking sentinel rows and the N edge.

Index arithmetic cannot overflow int32 (the vLLM/SGLang ``stride * token > 2**31`` bug):
cuTile forms every address in 64 bits -- gathers and scatters widen each per-axis index before
multiplying by the stride, and tile loads/stores (TMA or not) were exact past element 2**31 on
an H200 (``needs_int64_indexing``) -- so only an array whose own extent or stride passes int32,
which ``ct.launch`` refuses with int32 indexing, needs ``ct.IndexedWithInt64``: for weights, the
wrapper then launches ``fused_moe_kernel_int64``. Every value that stays in int32 is bounded by
such an extent (T*K replicas, H, 2I).

Notebook 05 adds the performance variants: ``fused_moe_swiglu_kernel`` (GEMM1 with the SwiGLU
epilogue: the gate and up tiles of the same columns in two accumulators, ``silu(gate) * up``
written directly -- GEMM1 writes (T*K, I) values instead of (T*K, 2I), nothing reads them back
for a separate activation launch, and the intermediate moves a third of the bytes), and the
kernel-level compiler hints of ``TileConfig`` (``occupancy``, ``num_ctas``) plus a ``latency``
hint on the weight loads, which ``moe_tutorial.tuning`` autotunes per GPU, and the *slot-order*
variant of every GEMM (``SORTED``; ``fused_moe_matmul(sorted_rows=True)``): ``permute_rows``
first copies each replica's token row to its slot of the alignment, so A is read as rectangular
``ct.load`` tiles (TMA) and C written with ``ct.store`` (on an H200, at 128x128x64 tiles,
Mixtral prefill's GEMM1 ran 1.3x faster than with pipelined row gathers, the others within
about 10% either way: notebook 05); ``moe_sum(positions=...)`` reads the result back in token
order.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import cuda.tile as ct
import numpy as np

from . import arguments, device, reference
from .activation import silu_mul_f32
from .compile import array, scalar
from .routing import next_power_of_2

ConstInt = ct.Constant[int]
ConstBool = ct.Constant[bool]


def swizzle_2d(bid, num_m, num_n, GROUP_SIZE_M):
    """Block id -> (m-block, n-tile), grouped: ``GROUP_SIZE_M`` consecutive m-blocks walk the
    n-tiles together (m fastest), so the blocks running at the same time touch few distinct
    weight tiles and few distinct token rows. Works on Python ints and inside kernels."""
    blocks_per_group = GROUP_SIZE_M * num_n
    group = bid // blocks_per_group
    first_m = group * GROUP_SIZE_M
    group_m = min(num_m - first_m, GROUP_SIZE_M)
    pid_m = first_m + bid % group_m
    pid_n = (bid % blocks_per_group) // group_m
    return pid_m, pid_n


def block_replicas(sorted_token_ids, pid_m, TILE_M):
    """The ``TILE_M`` replica ids of m-block ``pid_m``, read with ``ct.gather`` into registers.

    Not ``ct.load(sorted_token_ids, (pid_m,), shape=(TILE_M,))``, although it reads the same
    values: the compiler turns that load into a TMA bulk copy into shared memory, and a gather
    whose row indices come from there is no longer pipelined (sm_90: 8 instead of 40 cp.async
    copies and 16 instead of 40 wgmma in the code, twice the instructions); on an H200 the
    prefill GEMMs ran 3.5-4.6x slower that way (notebook 03 prints the recorded times)."""
    return ct.gather(sorted_token_ids, pid_m * TILE_M + ct.arange(TILE_M, dtype=ct.int32))


def a_tile(A, pid_m, kt, a_rows, valid, TILE_M, TILE_K, SORTED):
    """Tile ``kt`` ``(TILE_M, TILE_K)`` of the block's input rows; zero for sentinel rows and
    past the Kd edge.

    SORTED=False: row i is ``A[a_rows[i]]``, gathered row by row (``ct.gather``).
    SORTED=True: A already holds the rows in slot order (``permute_rows`` wrote them, or the
    previous GEMM did), so the tile is a plain rectangle: one ``ct.load``, which the compiler
    can turn into a TMA bulk copy and pipeline (notebook 05 compares the two layouts)."""
    if SORTED:
        return ct.load(A, (pid_m, kt), shape=(TILE_M, TILE_K), padding_mode=ct.PaddingMode.ZERO)
    k_idx = kt * TILE_K + ct.arange(TILE_K, dtype=ct.int32)
    # (out-of-range gathers read padding_value anyway; the explicit mask says what is meant
    # and keeps the emulator's strict mode quiet)
    return ct.gather(A, (a_rows[:, None], k_idx[None, :]),
                     mask=valid[:, None] & (k_idx < A.shape[1])[None, :], padding_value=0)


def write_rows(C, tile, pid_m, pid_n, replicas, valid, TILE_N, SORTED):
    """Write the block's ``(TILE_M, TILE_N)`` result: scattered to the replicas' rows of C
    (sentinel rows and the N edge masked), or, SORTED, as one tile at the block's own slots."""
    if SORTED:
        ct.store(C, (pid_m, pid_n), tile.astype(C.dtype))
    else:
        n_cols = pid_n * TILE_N + ct.arange(TILE_N, dtype=ct.int32)
        ct.scatter(C, (replicas[:, None], n_cols[None, :]), tile.astype(C.dtype),
                   mask=valid[:, None])


def weight_tile(W, expert, kt, pid_n, TILE_N, TILE_K, TRANSPOSE_B, lat):
    """Expert ``expert``'s ``(TILE_K, TILE_N)`` tile ``(kt, pid_n)`` of ``W (E, N, Kd)``, in
    the layout ``ct.mma`` wants, zero past the N and Kd edges."""
    if TRANSPOSE_B:
        # (for measurement) load W's (TILE_N, TILE_K) tile as stored, transpose it
        b = ct.load(W, (expert, pid_n, kt), shape=(1, TILE_N, TILE_K),
                    padding_mode=ct.PaddingMode.ZERO, latency=lat)
        return ct.transpose(b.reshape((TILE_N, TILE_K)))
    # W[e, n, k] arrives as b[k, n]: order=(0, 2, 1) swaps the last two axes of the tile
    # space, so the tile is already (TILE_K, TILE_N) for the MMA
    b = ct.load(W, (expert, kt, pid_n), shape=(1, TILE_K, TILE_N), order=(0, 2, 1),
                padding_mode=ct.PaddingMode.ZERO, latency=lat)
    return b.reshape((TILE_K, TILE_N))


def fused_moe_tile(A, W, C, topk_weights, sorted_token_ids, expert_ids, ROW_DIV,
                   MUL_ROUTED_WEIGHT, TILE_M, TILE_N, TILE_K, GROUP_SIZE_M, TRANSPOSE_B, LATENCY,
                   SORTED):
    """The work of one block of ``fused_moe_kernel``: C[r] = A[r // ROW_DIV] @ W[e].T
    (x topk_weights[r]) for the replicas r of this block's m-block, one n-tile.

    A (rows, Kd), W (E, N, Kd), C (T*K, N), topk_weights (T*K,) float32,
    sorted_token_ids (num_m * TILE_M,) int32, expert_ids (num_m,) int32. SORTED=True: A and C
    are in slot order instead, (num_m * TILE_M, Kd) and (num_m * TILE_M, N): row p belongs to
    replica ``sorted_token_ids[p]`` (see ``a_tile``). TRANSPOSE_B=True loads W's tile as stored
    and transposes it in the loop instead -- kept only to measure the two against each other.
    LATENCY (1-10, 0 = let the compiler choose) is a hint on the weight loads: how much DRAM
    traffic to expect, i.e. how deep to prefetch."""
    num_m = expert_ids.shape[0]
    num_n = ct.cdiv(W.shape[1], TILE_N)
    pid_m, pid_n = swizzle_2d(ct.bid(0), num_m, num_n, GROUP_SIZE_M)

    expert = ct.load(expert_ids, (pid_m,), shape=())
    # expert -1 (padding past num_tokens_post_padded, or another rank's expert): the block does
    # nothing at all. (Written as an `if` around the body rather than an early `return`: inside
    # a helper function the return costs the compiler extra instructions.)
    if (expert >= 0) & (expert < W.shape[0]):
        replicas = block_replicas(sorted_token_ids, pid_m, TILE_M)
        # sentinel T*K marks padding slots (in slot order C has more rows than T*K; the
        # router weights have exactly T*K, and only they need `valid` then)
        num_replicas = topk_weights.shape[0] if SORTED else C.shape[0]
        valid = replicas < num_replicas
        a_rows = replicas // ROW_DIV
        lat = LATENCY if LATENCY > 0 else None

        acc = ct.full((TILE_M, TILE_N), 0.0, dtype=ct.float32)
        for kt in range(ct.cdiv(A.shape[1], TILE_K)):
            a = a_tile(A, pid_m, kt, a_rows, valid, TILE_M, TILE_K, SORTED)
            b = weight_tile(W, expert, kt, pid_n, TILE_N, TILE_K, TRANSPOSE_B, lat)
            acc = ct.mma(a, b, acc)

        if MUL_ROUTED_WEIGHT:
            w = ct.gather(topk_weights, replicas, mask=valid, padding_value=0)
            acc = acc * w[:, None]

        write_rows(C, acc, pid_m, pid_n, replicas, valid, TILE_N, SORTED)


@ct.kernel
def fused_moe_kernel(A, W, C, topk_weights, sorted_token_ids, expert_ids,
                     ROW_DIV: ConstInt, MUL_ROUTED_WEIGHT: ConstBool,
                     TILE_M: ConstInt, TILE_N: ConstInt, TILE_K: ConstInt,
                     GROUP_SIZE_M: ConstInt, TRANSPOSE_B: ConstBool, LATENCY: ConstInt,
                     SORTED: ConstBool):
    """The fused MoE GEMM (see ``fused_moe_tile``); 1-D grid of num_m * cdiv(N, TILE_N)
    blocks. W indexed with int32: for weights of fewer than 2**31 elements."""
    fused_moe_tile(A, W, C, topk_weights, sorted_token_ids, expert_ids, ROW_DIV,
                   MUL_ROUTED_WEIGHT, TILE_M, TILE_N, TILE_K, GROUP_SIZE_M, TRANSPOSE_B, LATENCY,
                   SORTED)


@ct.kernel
def fused_moe_kernel_int64(A, W: ct.IndexedWithInt64, C, topk_weights, sorted_token_ids,
                           expert_ids, ROW_DIV: ConstInt, MUL_ROUTED_WEIGHT: ConstBool,
                           TILE_M: ConstInt, TILE_N: ConstInt, TILE_K: ConstInt,
                           GROUP_SIZE_M: ConstInt, TRANSPOSE_B: ConstBool, LATENCY: ConstInt,
                           SORTED: ConstBool):
    """The same kernel with W's addresses computed in 64 bits, for weights of 2**31 elements
    or more (DeepSeek-V3: ``expert * stride`` reaches 7.5e9)."""
    fused_moe_tile(A, W, C, topk_weights, sorted_token_ids, expert_ids, ROW_DIV,
                   MUL_ROUTED_WEIGHT, TILE_M, TILE_N, TILE_K, GROUP_SIZE_M, TRANSPOSE_B, LATENCY,
                   SORTED)


# ---------------------------------------------------------------------------------------------
# GEMM1 with the SwiGLU epilogue (notebook 05)
# ---------------------------------------------------------------------------------------------

def fused_moe_swiglu_tile(A, W_gate, W_up, C, sorted_token_ids, expert_ids, ROW_DIV,
                          TILE_M, TILE_N, TILE_K, GROUP_SIZE_M, TRANSPOSE_B, LATENCY, SORTED):
    """One block of GEMM1 with the activation fused in: with ``a = A[r // ROW_DIV]``,
    ``C[r, cols] = silu(a @ W_gate[e, cols].T) * (a @ W_up[e, cols].T)``.

    ``W_gate`` and ``W_up`` are the two halves of ``w1 (E, 2I, Kd)`` (views, any strides), so
    the block's gate and up tiles cover the *same* output columns ``cols``: both products share
    every A tile, live in two float32 accumulators, and meet in the epilogue. C is
    ``(T*K, I)`` -- the activation itself; the ``(T*K, 2I)`` gate|up intermediate is never
    written, and no separate ``silu_and_mul`` launch reads it back. SORTED: A and C in slot
    order, as in ``fused_moe_tile``."""
    num_m = expert_ids.shape[0]
    num_n = ct.cdiv(W_gate.shape[1], TILE_N)
    pid_m, pid_n = swizzle_2d(ct.bid(0), num_m, num_n, GROUP_SIZE_M)
    expert = ct.load(expert_ids, (pid_m,), shape=())
    if (expert >= 0) & (expert < W_gate.shape[0]):
        replicas = block_replicas(sorted_token_ids, pid_m, TILE_M)
        valid = replicas < C.shape[0]                 # (not needed when SORTED)
        a_rows = replicas // ROW_DIV
        lat = LATENCY if LATENCY > 0 else None
        gate = ct.full((TILE_M, TILE_N), 0.0, dtype=ct.float32)
        up = ct.full((TILE_M, TILE_N), 0.0, dtype=ct.float32)
        for kt in range(ct.cdiv(A.shape[1], TILE_K)):
            a = a_tile(A, pid_m, kt, a_rows, valid, TILE_M, TILE_K, SORTED)
            gate = ct.mma(a, weight_tile(W_gate, expert, kt, pid_n, TILE_N, TILE_K,
                                         TRANSPOSE_B, lat), gate)
            up = ct.mma(a, weight_tile(W_up, expert, kt, pid_n, TILE_N, TILE_K,
                                       TRANSPOSE_B, lat), up)
        act = silu_mul_f32(gate, up, False, False)      # notebook 02's float32 math
        write_rows(C, act, pid_m, pid_n, replicas, valid, TILE_N, SORTED)


@ct.kernel
def fused_moe_swiglu_kernel(A, W_gate, W_up, C, sorted_token_ids, expert_ids,
                            ROW_DIV: ConstInt, TILE_M: ConstInt, TILE_N: ConstInt,
                            TILE_K: ConstInt, GROUP_SIZE_M: ConstInt, TRANSPOSE_B: ConstBool,
                            LATENCY: ConstInt, SORTED: ConstBool):
    """GEMM1 + SwiGLU (see ``fused_moe_swiglu_tile``); grid num_m * cdiv(I, TILE_N)."""
    fused_moe_swiglu_tile(A, W_gate, W_up, C, sorted_token_ids, expert_ids, ROW_DIV,
                          TILE_M, TILE_N, TILE_K, GROUP_SIZE_M, TRANSPOSE_B, LATENCY, SORTED)


@ct.kernel
def fused_moe_swiglu_kernel_int64(A, W_gate: ct.IndexedWithInt64, W_up: ct.IndexedWithInt64,
                                  C, sorted_token_ids, expert_ids, ROW_DIV: ConstInt,
                                  TILE_M: ConstInt, TILE_N: ConstInt, TILE_K: ConstInt,
                                  GROUP_SIZE_M: ConstInt, TRANSPOSE_B: ConstBool,
                                  LATENCY: ConstInt, SORTED: ConstBool):
    """The same with the weights' addresses in 64 bits (DeepSeek-V3-sized w1)."""
    fused_moe_swiglu_tile(A, W_gate, W_up, C, sorted_token_ids, expert_ids, ROW_DIV,
                          TILE_M, TILE_N, TILE_K, GROUP_SIZE_M, TRANSPOSE_B, LATENCY, SORTED)


@ct.kernel
def permute_rows_kernel(X, sorted_token_ids, expert_ids, out, positions, num_replicas,
                        TOP_K: ConstInt, TILE_M: ConstInt, TILE_H: ConstInt):
    """out[p] = X[sorted_token_ids[p] // TOP_K] for the slots p that hold a replica, and
    positions[r] = p for every replica r placed: the token rows in slot order, so the GEMMs can
    load rectangular tiles (``a_tile``). Sentinel (padding) slots are not written: a GEMM's
    output row depends on its own input row only, so whatever they hold ends up in padding rows
    that nothing reads -- and skipping them halves the copy when experts fill half a block
    (DeepSeek-V3 prefill with 128-row blocks). Grid (num_m, cdiv(H, TILE_H)); blocks of
    experts -1 do nothing; those of column tile 0 also write the positions."""
    pid_m, pid_h = ct.bid(0), ct.bid(1)
    expert = ct.load(expert_ids, (pid_m,), shape=())
    if expert >= 0:
        replicas = block_replicas(sorted_token_ids, pid_m, TILE_M)
        valid = replicas < num_replicas
        cols = pid_h * TILE_H + ct.arange(TILE_H, dtype=ct.int32)
        slots = pid_m * TILE_M + ct.arange(TILE_M, dtype=ct.int32)
        both = valid[:, None] & (cols < X.shape[1])[None, :]
        rows = ct.gather(X, ((replicas // TOP_K)[:, None], cols[None, :]), mask=both,
                         padding_value=0)
        ct.scatter(out, (slots[:, None], cols[None, :]), rows, mask=both)
        if pid_h == 0:
            ct.scatter(positions, replicas, slots, mask=valid)


@ct.kernel
def moe_sum_kernel(Y, topk_ids, expert_map, positions, out, num_experts,
                   TOP_K: ConstInt, HAS_EXPERT_MAP: ConstBool, HAS_POSITIONS: ConstBool,
                   TILE_T: ConstInt, TILE_H: ConstInt):
    """out[t] = sum_k Y[row(t*K + k)] over the replicas that were computed (fp32 accumulation);
    row(r) = r, or ``positions[r]`` when Y is in slot order (HAS_POSITIONS).

    A replica counts when its local expert -- its id, or with an expert map ``expert_map[id]``
    for ids in [0, len(expert_map)) -- is in [0, num_experts), the rule ``routing.align`` uses
    (``reference.local_expert_ids``); the others' rows of Y were never written (their experts
    live on other ranks, or the id was -1 or out of range) and are skipped, not read as zeros.
    Grid (cdiv(T, TILE_T), cdiv(H, TILE_H))."""
    tokens = ct.bid(0) * TILE_T + ct.arange(TILE_T, dtype=ct.int32)
    cols = ct.bid(1) * TILE_H + ct.arange(TILE_H, dtype=ct.int32)
    in_t = tokens < topk_ids.shape[0]
    in_h = cols < Y.shape[1]
    acc = ct.full((TILE_T, TILE_H), 0.0, dtype=ct.float32)
    for k in range(TOP_K):
        ids = ct.gather(topk_ids, (tokens, k), mask=in_t, padding_value=-1)
        local = ids
        if HAS_EXPERT_MAP:
            local = ct.gather(expert_map, ids, mask=(ids >= 0) & (ids < expert_map.shape[0]),
                              padding_value=-1)
        used = (local >= 0) & (local < num_experts)
        rows = tokens * TOP_K + k
        if HAS_POSITIONS:
            rows = ct.gather(positions, rows, mask=used, padding_value=0)
        y = ct.gather(Y, (rows[:, None], cols[None, :]),
                      mask=used[:, None] & in_h[None, :], padding_value=0)
        acc = acc + y.astype(ct.float32)
    ct.store(out, (ct.bid(0), ct.bid(1)), acc.astype(out.dtype))


# ---------------------------------------------------------------------------------------------
# Tile sizes
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TileConfig:
    """How one expert GEMM is cut into tiles, plus compiler hints (which change speed only).

    ``occupancy`` (1-32: blocks per SM the compiler should plan registers for) and ``num_ctas``
    (1-16, a power of two: blocks per cluster) are ``ct.kernel`` options, ``None`` = the
    compiler's choice; ``latency`` (1-10, 0 = the compiler's choice) is the DRAM-traffic hint of
    the weight loads. ``moe_tutorial.tuning`` picks all of them per GPU and shape."""
    tile_m: int = 64
    tile_n: int = 128
    tile_k: int = 64
    group_size_m: int = 8
    transpose_b: bool = False    # True: load W as stored + ct.transpose (for comparison only)
    occupancy: int | None = None
    num_ctas: int | None = None
    latency: int = 0

    def __post_init__(self):
        if not isinstance(self.transpose_b, bool):
            raise TypeError(f"TileConfig.transpose_b must be a bool, got {self.transpose_b!r}")
        for name in ("tile_m", "tile_n", "tile_k", "group_size_m"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"TileConfig.{name} must be a positive int, got {v!r}")
            if name != "group_size_m" and v & (v - 1):
                raise ValueError(f"TileConfig.{name} must be a power of two, got {v}")
        for name, low, high in (("occupancy", 1, 32), ("num_ctas", 1, 16), ("latency", 0, 10)):
            v = getattr(self, name)
            if v is None and name != "latency":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not low <= v <= high:
                allowed = "an int" if name == "latency" else "None or an int"
                raise ValueError(f"TileConfig.{name} must be {allowed} in [{low}, {high}], "
                                 f"got {v!r}")
        if self.num_ctas is not None and self.num_ctas & (self.num_ctas - 1):
            raise ValueError(f"TileConfig.num_ctas must be a power of two, got {self.num_ctas}")


@dataclass(frozen=True)
class LayerConfig:
    """Tile configs of the layer's two expert GEMMs. They may differ in everything but
    ``tile_m``: one alignment (``routing.align(..., tile_m)``) feeds both. ``gemm1`` is the
    gate+up GEMM -- or, with ``moe_forward(fused_swiglu=True)``, the SwiGLU-fused one.

    ``sorted_rows`` (notebook 05): the layer first copies the token rows into slot order
    (``permute_rows``) and keeps every intermediate in slot order, so both GEMMs load A as
    rectangular tiles and store C as tiles; the top-k sum finds each replica's row through
    ``positions``. False: notebook 04's layer, which gathers and scatters rows inside the
    GEMMs."""
    gemm1: TileConfig
    gemm2: TileConfig
    sorted_rows: bool = True

    def __post_init__(self):
        for name in ("gemm1", "gemm2"):
            if not isinstance(getattr(self, name), TileConfig):
                raise TypeError(f"LayerConfig.{name} must be a TileConfig, got "
                                f"{type(getattr(self, name)).__name__}")
        if not isinstance(self.sorted_rows, bool):
            raise TypeError(f"LayerConfig.sorted_rows must be a bool, got {self.sorted_rows!r}")
        if self.gemm1.tile_m != self.gemm2.tile_m:
            raise ValueError(f"LayerConfig: gemm1.tile_m={self.gemm1.tile_m} and gemm2.tile_m="
                             f"{self.gemm2.tile_m} must match (one alignment feeds both GEMMs)")

    @property
    def tile_m(self) -> int:
        return self.gemm1.tile_m

    @classmethod
    def of(cls, config: "TileConfig | LayerConfig") -> "LayerConfig":
        """A LayerConfig from either kind: a TileConfig is used for both GEMMs."""
        if isinstance(config, LayerConfig):
            return config
        if isinstance(config, TileConfig):
            return cls(config, config)
        raise TypeError(f"config must be a fused_moe.TileConfig or LayerConfig, got "
                        f"{type(config).__name__}")

    def replace(self, **changes) -> "LayerConfig":
        """The same configs with ``changes`` applied to both GEMMs (e.g. ``transpose_b=True``);
        ``sorted_rows=`` changes the layer's own field."""
        sorted_rows = changes.pop("sorted_rows", self.sorted_rows)
        return LayerConfig(dataclasses.replace(self.gemm1, **changes),
                           dataclasses.replace(self.gemm2, **changes), sorted_rows)


@functools.lru_cache(maxsize=None)
def hinted(kernel, occupancy=None, num_ctas=None):
    """``kernel`` with the ``ct.kernel`` options ``occupancy``/``num_ctas`` (``None``: the
    compiler's choice). Cached: ``replace_hints`` makes a new kernel object with its own JIT
    cache, so each combination must be made once, not per launch."""
    if occupancy is None and num_ctas is None:
        return kernel
    return kernel.replace_hints(occupancy=occupancy, num_ctas=num_ctas)


def default_tile_config(num_tokens: int, top_k: int, num_experts: int, dtype="float16", *,
                        depth: int | None = None, width: int | None = None) -> TileConfig:
    """The documented default rule, for one expert GEMM (``default_layer_config`` applies it to
    the layer's two). Derived from the tuned tables of an H100 and an H200 (notebook 05).

    * ``tile_m``: an m-block holds replicas of ONE expert; with ``T*K/E`` replicas per expert:
      16 for about one replica each (bigger blocks would be all padding), 64 below 64 replicas
      (the GEMMs stream weights: the MMA work on padding rows is free, and big blocks get the
      compiler's TMA + tensor-core pipeline), else 128 (compute bound: more reuse per block).
    * ``tile_n`` x ``tile_k``: 64x128 for 16-row blocks, 128x128 for 64 (weight bytes in flight
      while memory is the limit), 128x64 for 128 (the cuTile sample's tiles). float32 halves
      ``tile_k``.
    * ``depth`` (the GEMM's K extent, if given) no deeper than ``tile_k``: one K step, so the
      block loads all its weights at once -- it gets a wider tile instead (fewer, fuller blocks:
      GEMM2 of 1408 narrow experts, I=32, ran 7x faster with 16x512x32 than with 16x64x32 on
      an H200).
      ``width`` (the output width, if given) caps ``tile_n``.
    * ``group_size_m``: 8 (Triton's matmul tutorial) when an expert's replicas fill four or more
      m-blocks, whose blocks then share weight tiles; else 2, so the blocks running together
      share A rows instead (DeepSeek-V3 prefill's GEMMs ran 0.3-12% faster with 2).
    * ``occupancy=2`` for 16-row blocks (the compiler's own choice ran them up to 1.8x slower).
    """
    per_expert = num_tokens * top_k / max(num_experts, 1)
    tile_m = 16 if per_expert <= 2 else 64 if per_expert < 64 else 128
    tile_n, tile_k = rule_tiles(tile_m, dtype)
    if depth is not None and depth <= tile_k:
        shallow_k = max(16, next_power_of_2(depth))
        tile_n = max(tile_n, min(2 * tile_n * tile_k // shallow_k, 8192 // tile_m))
        tile_k = shallow_k
    if width is not None:
        tile_n = min(tile_n, max(16, next_power_of_2(width)))
    group = 8 if per_expert >= 4 * tile_m else 2
    return TileConfig(tile_m, tile_n, tile_k, group, occupancy=2 if tile_m < 64 else None)


def default_layer_config(num_tokens: int, hidden: int, num_experts: int, intermediate: int,
                         top_k: int, dtype="float16", *, fused_swiglu: bool = False
                         ) -> LayerConfig:
    """``default_tile_config`` for the layer's two GEMMs (rows in slot order): GEMM1 of depth H
    and width 2I -- half the columns when SwiGLU is fused (its two accumulators then hold what
    the unfused one does, and a block reads the same weight rows) -- and GEMM2 of depth I,
    width H."""
    rule = functools.partial(default_tile_config, num_tokens, top_k, num_experts, dtype)
    gemm1 = rule(depth=hidden, width=2 * intermediate)
    if fused_swiglu:
        gemm1 = dataclasses.replace(gemm1, tile_n=max(16, gemm1.tile_n // 2))
    return LayerConfig(gemm1, rule(depth=intermediate, width=hidden))


def rule_tiles(tile_m: int, dtype="float16") -> tuple[int, int]:
    """``(tile_n, tile_k)`` of the default rule for a given ``tile_m`` (see
    ``default_tile_config``)."""
    tile_n, tile_k = (64, 128) if tile_m < 64 else (128, 128) if tile_m < 128 else (128, 64)
    if np.dtype(dtype).itemsize >= 4:
        tile_k //= 2
    return tile_n, tile_k


# ---------------------------------------------------------------------------------------------
# Host wrappers
# ---------------------------------------------------------------------------------------------

_FLOAT_DTYPES = arguments.FLOAT_NAMES


def _dtype_name(a) -> str:
    return np.dtype(a.dtype).name


def _require_array(name, a, ndim, fn, dtypes=None):
    arguments.require_array(fn, name, a, ndim, dtypes)


_require_same_device = arguments.require_same_device


def _check_positive_int(fn, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        arguments.fail(fn, ValueError if isinstance(v, (int, np.integer)) else TypeError,
                  f"{name} must be a positive int, got {v!r}")
    return int(v)


def _check_slot_ids(fn, sorted_token_ids, num_replicas, tile_m, what):
    """``validate=True``: ``sorted_token_ids`` as ``align`` makes them for ``num_replicas``
    replicas (a host sync on the GPU): every id a replica in ``[0, num_replicas)`` or the
    sentinel ``num_replicas``; none listed twice; and the last slot the sentinel (``align``
    always pads the last block when ``tile_m > 1``) -- which catches ids aligned for another
    ``T*K`` (a different ``top_k``)."""
    arguments.require_values_in(fn, "sorted_token_ids", sorted_token_ids, 0, num_replicas,
                           f" (replicas 0..{what}-1, sentinel {what})")
    ids = device.to_numpy(sorted_token_ids)
    real = ids[ids < num_replicas]
    if real.size != np.unique(real).size:
        arguments.fail(fn, ValueError, f"sorted_token_ids lists a replica twice: they are not "
                                       f"align()'s output for {what} = {num_replicas} replicas")
    if ids.size and (ids[-1] != num_replicas if tile_m > 1 else ids.size != num_replicas):
        arguments.fail(fn, ValueError, f"sorted_token_ids do not end with the sentinel {what} = "
                                       f"{num_replicas}: they were aligned for another number of "
                                       f"replicas (another top_k or T?)")


INT32_MAX = 2**31 - 1


def needs_int64_indexing(shape, strides) -> bool:
    """Does an extent or a stride (in elements) of the weights pass int32? Only then does
    ``fused_moe_matmul`` launch ``fused_moe_kernel_int64`` (``W: ct.IndexedWithInt64``: shape and
    strides held in 64 bits): ``ct.launch`` refuses such an array with int32 indexing.

    The *element offset* of a tile may pass 2**31 with int32 indexing: cuTile forms tile and
    gather addresses in 64 bits. Measured on an H200 (cuda-tile 1.7): tile loads (TMA and not,
    with and without ``order=``) of the last expert of a (40, 8192, 8192) array, tile stores and
    row gathers/scatters past element 2**31 of a (532480, 4096) array were all exact, and the
    int32 kernel gave bit-identical GEMMs on DeepSeek-V3's 7.5e9-element ``w1``, where the int64
    one was 11% slower (its weight tile is no longer a TMA load)."""
    return max(*shape, *strides) > INT32_MAX



def offsets_pass_int32(shape, strides) -> bool:
    """Can an element offset into an array of ``shape`` (``strides`` in elements) pass 2**31?
    Information for the large-size tests: with cuTile's 64-bit addresses this alone needs no
    64-bit indexing (see ``needs_int64_indexing``)."""
    return sum((n - 1) * st for n, st in zip(shape, strides)) > INT32_MAX


def _strides(a):
    return tuple(st // a.itemsize for st in a.strides)


def int64_indexing(a, w, out, *, swiglu: bool = False) -> dict:
    """The one place that decides 64-bit indexing for an expert GEMM: per array (``"a"``,
    ``"w"``, ``"out"``), does it need ``ct.IndexedWithInt64`` (``needs_int64_indexing``: an
    extent or stride past int32)? ``gemm_launch`` launches the ``_int64`` kernel when ``"w"``
    does; the token-row arrays are reported too, for a kernel variant that would need it."""
    w_view = w[:, :w.shape[1] // 2] if swiglu else w
    return {name: needs_int64_indexing(x.shape, _strides(x))
            for name, x in (("a", a), ("w", w_view), ("out", out))}

def fused_moe_matmul(a, w, sorted_token_ids, expert_ids, *, top_k: int, topk_weights=None,
                     mul_routed_weight: bool = False, swiglu: bool = False, out=None,
                     config: TileConfig | None = None, sorted_rows: bool = False,
                     validate: bool = True):
    """One expert GEMM over all experts: ``out[r] = a[r // top_k] @ w[e(r)].T`` for every
    token replica ``r`` listed in ``sorted_token_ids`` (times ``topk_weights[r]`` when
    ``mul_routed_weight``).

    GEMM1 (gate+up): ``a`` = hidden states (T, H), ``w`` = w1 (E, 2I, H), ``top_k=K``.
    GEMM2 (down):    ``a`` = activations (T*K, I), ``w`` = w2 (E, H, I), ``top_k=1``,
    ``mul_routed_weight=True``.
    ``swiglu=True`` (GEMM1 only): ``out[r] = silu(gate) * up`` of width ``N = w.shape[1] // 2``,
    with gate = the first half of ``w``'s rows and up = the second (``fused_moe_swiglu_kernel``).
    ``sorted_token_ids``/``expert_ids`` come from ``routing.align`` with ``tile_m ==
    config.tile_m``. ``out`` (a.shape[0] * top_k, N), allocated when None (else writable and
    not overlapping any input); rows of replicas not listed are left untouched. ``validate``
    (a host sync on the GPU; ``moe_forward`` passes False) checks the values: expert ids in
    ``[-1, E)``, and ``sorted_token_ids`` as ``align`` makes them for these ``T*K`` replicas
    (in ``[0, T*K]``, none twice, ending with the sentinel ``T*K``). Without it the ids are
    trusted: a value out of range is not detected. Returns ``out``.

    ``sorted_rows=True`` (notebook 05): ``a`` and ``out`` are in *slot order* -- row ``p``
    belongs to replica ``sorted_token_ids[p]``: ``a`` is ``(S, Kd)`` with ``S =
    len(sorted_token_ids)`` (``permute_rows`` of the hidden states for GEMM1, GEMM1's output for
    GEMM2), ``out`` is ``(S, N)``; ``top_k`` is then not used to find rows, and
    ``topk_weights`` must hold one weight per replica (T*K). Rows of slots in blocks without an
    expert are left untouched; ``moe_sum(..., positions=...)`` reads the result back."""
    fn = "fused_moe_matmul"
    arguments.require_bool(fn, "validate", validate)
    _require_array("a", a, 2, fn)
    _require_array("w", w, 3, fn)
    _require_array("sorted_token_ids", sorted_token_ids, 1, fn, ("int32",))
    _require_array("expert_ids", expert_ids, 1, fn, ("int32",))
    top_k = _check_positive_int(fn, "top_k", top_k)
    _require_same_device(fn, a=a, w=w, sorted_token_ids=sorted_token_ids, expert_ids=expert_ids,
                         topk_weights=topk_weights, out=out)
    for name, x in (("a", a), ("w", w)):
        if _dtype_name(x) not in _FLOAT_DTYPES:
            arguments.fail(fn, TypeError,
                           f"{name} has dtype {x.dtype}; supported: float16, float32 "
                           f"(bfloat16 on the CPU)")
    if a.dtype != w.dtype:
        arguments.fail(fn, TypeError,
                       f"a and w must have the same dtype, got {a.dtype} and {w.dtype}")
    if a.shape[1] != w.shape[2]:
        arguments.fail(fn, ValueError,
                       f"a has {a.shape[1]} columns but w is (E, N, Kd) with "
                       f"Kd={w.shape[2]}; they must match (w has shape {tuple(w.shape)})")
    config = config or TileConfig()
    if not isinstance(config, TileConfig):
        arguments.fail(fn, TypeError, f"config must be a TileConfig, got {type(config).__name__}")
    if sorted_token_ids.shape[0] != expert_ids.shape[0] * config.tile_m:
        arguments.fail(fn, ValueError,
                       f"sorted_token_ids has {sorted_token_ids.shape[0]} entries but "
                       f"expert_ids has {expert_ids.shape[0]} blocks of tile_m="
                       f"{config.tile_m}; align() must be called with the same tile_m")
    sorted_rows = arguments.require_bool(fn, "sorted_rows", sorted_rows)
    slots = sorted_token_ids.shape[0]
    if sorted_rows and a.shape[0] != slots:
        arguments.fail(fn, ValueError,
                       f"with sorted_rows=True, a must have one row per slot of "
                       f"sorted_token_ids ({slots}), got {a.shape[0]} rows (permute_rows() "
                       f"makes them)")
    if swiglu:
        if mul_routed_weight:
            arguments.fail(fn, ValueError,
                           "swiglu=True is GEMM1 (gate+up); the router weight belongs "
                           "to GEMM2 (mul_routed_weight=False here)")
        if w.shape[1] % 2:
            arguments.fail(fn, ValueError,
                           f"swiglu=True needs w = (E, 2I, Kd) with gate and up halves; "
                           f"its middle axis is odd ({w.shape[1]})")
    xp = device.array_module(a)
    N = w.shape[1] // 2 if swiglu else w.shape[1]
    out_rows = slots if sorted_rows else a.shape[0] * top_k
    if out is None:
        out = xp.empty((out_rows, N), dtype=a.dtype)
    else:
        _require_array("out", out, 2, fn)
        arguments.require_out(fn, "out", out, (out_rows, N), a.dtype,
                         (("a", a), ("w", w), ("sorted_token_ids", sorted_token_ids),
                          ("expert_ids", expert_ids), ("topk_weights", topk_weights)))
    if mul_routed_weight:
        if topk_weights is None:
            arguments.fail(fn, ValueError, "mul_routed_weight=True needs topk_weights")
        if sorted_rows:
            # T*K is not known on the host here; it is at most the number of slots, and with
            # validate=True every id of sorted_token_ids must be a replica (< T*K) or the
            # sentinel (== T*K) -- checked below
            if topk_weights.size > slots:
                arguments.fail(fn, ValueError,
                               f"topk_weights has {topk_weights.size} entries, more "
                               f"than the {slots} slots of sorted_token_ids (one per replica "
                               f"expected)")
        elif topk_weights.size != a.shape[0] * top_k:
            arguments.fail(fn, ValueError,
                           f"topk_weights has {topk_weights.size} entries, expected one "
                           f"per replica ({a.shape[0] * top_k} = a.shape[0] * top_k)")
        if np.dtype(topk_weights.dtype).kind != "f":
            arguments.fail(fn, TypeError, f"topk_weights must be floating point, got "
                                          f"{topk_weights.dtype}")
        weights = topk_weights.reshape(-1).astype(xp.float32, copy=False)
    else:
        weights = None
    if validate and sorted_rows and mul_routed_weight and slots:
        top = int(device.to_numpy(sorted_token_ids).max())
        if top > topk_weights.size:
            arguments.fail(fn, ValueError,
                           f"sorted_token_ids holds id {top} but topk_weights has only "
                           f"{topk_weights.size} entries (one per replica, T*K, expected)")
        _check_slot_ids(fn, sorted_token_ids, topk_weights.size, config.tile_m, "T*K")
    elif validate and sorted_rows:
        arguments.require_values_in(fn, "sorted_token_ids", sorted_token_ids, 0, INT32_MAX)
    elif validate:
        _check_slot_ids(fn, sorted_token_ids, out_rows, config.tile_m, "a.shape[0] * top_k")
    if validate and expert_ids.shape[0]:
        e = device.to_numpy(expert_ids)
        bad = (e < -1) | (e >= w.shape[0])
        if bad.any():
            i = int(np.argmax(bad))
            arguments.fail(fn, ValueError, f"expert_ids[{i}] = {int(e[i])} is not in [-1, "
                                           f"{w.shape[0]}) (w holds {w.shape[0]} experts)")
    if out_rows == 0 or N == 0 or expert_ids.shape[0] == 0:
        return out
    grid, kernel, args = gemm_launch(a, w, out, weights, sorted_token_ids, expert_ids,
                                     top_k=top_k, mul_routed_weight=mul_routed_weight,
                                     swiglu=swiglu, config=config, sorted_rows=sorted_rows)
    device.launch(grid, kernel, args)
    return out


def gemm_launch(a, w, out, weights, sorted_token_ids, expert_ids, *, top_k: int,
                mul_routed_weight: bool, swiglu: bool, config: TileConfig,
                sorted_rows: bool = False):
    """``(grid, kernel, args)`` of a ``fused_moe_matmul`` call whose arguments are already
    checked (``weights``: float32 (T*K,) or None). The wrapper launches it; the tuner
    (``moe_tutorial.tuning``) times exactly these launches."""
    cfg = config
    num_m = expert_ids.shape[0]
    wide = int64_indexing(a, w, out, swiglu=swiglu)["w"]
    if swiglu:
        I = w.shape[1] // 2
        w_gate, w_up = w[:, :I], w[:, I:]             # views: no copy
        base = fused_moe_swiglu_kernel_int64 if wide else fused_moe_swiglu_kernel
        args = (a, w_gate, w_up, out, sorted_token_ids, expert_ids, int(top_k), cfg.tile_m,
                cfg.tile_n, cfg.tile_k, cfg.group_size_m, cfg.transpose_b, cfg.latency,
                bool(sorted_rows))
        n = I
    else:
        base = fused_moe_kernel_int64 if wide else fused_moe_kernel
        if weights is None:
            xp = device.array_module(a)
            weights = xp.empty((1,), dtype=xp.float32)        # never read (and no fill kernel)
        args = (a, w, out, weights, sorted_token_ids, expert_ids, int(top_k),
                bool(mul_routed_weight), cfg.tile_m, cfg.tile_n, cfg.tile_k, cfg.group_size_m,
                cfg.transpose_b, cfg.latency, bool(sorted_rows))
        n = w.shape[1]
    if base in (fused_moe_kernel_int64, fused_moe_swiglu_kernel_int64) and (cfg.num_ctas or 1) > 1:
        # Seen twice on an H100 80GB HBM3 (cuda-tile 1.7, tileiras 13.4): DeepSeek-V3's GEMM2
        # (int64 kernel) with num_ctas=2 raised "an illegal memory access", which poisons the
        # CUDA context. Clusters on the int32 kernel ran correctly (Mixtral prefill, tests).
        arguments.fail("fused_moe_matmul", ValueError,
                       f"config.num_ctas={cfg.num_ctas} is refused for weights that need 64-bit "
                       "indexing (it faulted on an H100); use num_ctas=None or 1")
    return (num_m * ct.cdiv(n, cfg.tile_n),), hinted(base, cfg.occupancy, cfg.num_ctas), args


def moe_sum(y, topk_ids, num_experts: int, *, expert_map=None, positions=None, out=None,
            validate: bool = True, tile_t: int = 16, tile_h: int = 128):
    """``out[t] = sum_k y[t*K + k]`` over the replicas computed on this rank (see
    ``moe_sum_kernel``). ``y`` (T*K, H), ``topk_ids`` (T, K) int32 (global ids).

    ``num_experts`` and ``expert_map`` mean what they mean for ``routing.align``:
    ``num_experts`` is the number of *local* experts (``w1.shape[0]``; without a map, all of
    them), ``expert_map`` the (E_global,) int32 global -> local id or -1. A replica counts when
    its local expert is in ``[0, num_experts)``: ids of -1, mapped to -1, or out of range are
    dropped on the device, exactly as ``align`` drops them (``reference.local_expert_ids``).

    With ``positions`` ((T*K,) int32 from ``permute_rows``), ``y`` is in slot order (any number
    of rows) and replica ``r``'s row is ``positions[r]``. ``validate`` (a host sync on the GPU;
    ``moe_forward`` passes its own flag, False by default) refuses ids or map values out of
    range, and positions of counted replicas outside ``y``. Returns ``out`` (T, H) in ``y``'s
    dtype, not overlapping the inputs."""
    fn = "moe_sum"
    _require_array("y", y, 2, fn)
    _require_array("topk_ids", topk_ids, 2, fn)
    num_experts = arguments.require_int(fn, "num_experts", num_experts, lo=1)
    tile_t = arguments.require_int(fn, "tile_t", tile_t, lo=1)
    tile_h = arguments.require_int(fn, "tile_h", tile_h, lo=1)
    validate = arguments.require_bool(fn, "validate", validate)
    _require_same_device(fn, y=y, topk_ids=topk_ids, expert_map=expert_map,
                         positions=positions, out=out)
    T, K = topk_ids.shape
    has_pos = positions is not None
    if has_pos:
        _require_array("positions", positions, 1, fn, ("int32",))
        if positions.shape[0] != T * K:
            arguments.fail(fn, ValueError,
                           f"positions must be ({T * K},) (one slot per replica), got "
                           f"{tuple(positions.shape)}")
    elif y.shape[0] != T * K:
        arguments.fail(fn, ValueError, f"y has {y.shape[0]} rows, expected T*K = {T * K}")
    _require_array("topk_ids", topk_ids, 2, fn, ("int32",))
    has_map = expert_map is not None
    if has_map:
        _require_array("expert_map", expert_map, 1, fn, ("int32",))
    xp = device.array_module(y)
    H = y.shape[1]
    if out is None:
        out = xp.empty((T, H), dtype=y.dtype)
    else:
        arguments.require_out(fn, "out", out, (T, H), y.dtype,
                              (("y", y), ("topk_ids", topk_ids), ("expert_map", expert_map),
                               ("positions", positions)))
    if validate:
        from .routing import check_expert_ids
        check_expert_ids(fn, topk_ids, num_experts, expert_map)
        if has_pos:
            emap = None if expert_map is None else device.to_numpy(expert_map)
            used = reference.local_expert_ids(device.to_numpy(topk_ids), num_experts,
                                              emap).reshape(-1) >= 0
            arguments.require_values_in(fn, "positions", device.to_numpy(positions)[used], 0,
                                        y.shape[0] - 1, f" (rows of y; counted replicas only)")
    emap = expert_map if has_map else xp.empty((1,), dtype=xp.int32)   # never read
    pos = positions if has_pos else emap                                 # never read
    if T == 0 or H == 0:
        return out
    tile_h = min(tile_h, max(16, 1 << (H - 1).bit_length()))
    grid = (ct.cdiv(T, tile_t), ct.cdiv(H, tile_h))
    device.launch(grid, moe_sum_kernel, (y, topk_ids, emap, pos, out, num_experts,
                                          int(K), has_map, has_pos, tile_t, tile_h))
    return out


PERMUTE_TILE_ELEMENTS = 8192     # elements per block of permute_rows (16 KB of float16)


def permute_tile_h(tile_m: int, hidden: int) -> int:
    """Columns per block of ``permute_rows``: about ``PERMUTE_TILE_ELEMENTS`` per tile, a power
    of two from 16 up to the next one of ``hidden``."""
    want = max(16, PERMUTE_TILE_ELEMENTS // tile_m)
    return min(want, max(16, 1 << (hidden - 1).bit_length()))


def permute_rows(x, sorted_token_ids, expert_ids, top_k: int, *, out=None, positions=None,
                 validate: bool = True):
    """The token rows in *slot order*, for ``fused_moe_matmul(..., sorted_rows=True)``:
    ``out[p] = x[sorted_token_ids[p] // top_k]`` for every slot that holds a replica, and
    ``positions[r] = p``, the slot of every replica ``r`` that was placed (the others' entries
    are left untouched; ``moe_sum`` never reads them). Sentinel (padding) slots and the slots of
    blocks without an expert (``expert_ids == -1``) are not written: the GEMMs compute padding
    rows from whatever they hold, and nothing reads those rows. ``x`` (T, H); ``out`` (S, H) with ``S =
    len(sorted_token_ids)``, ``positions`` (T*K,) int32; both allocated when None.
    Returns ``(out, positions)``. ``validate`` (a host sync on the GPU; ``moe_forward`` passes
    its own flag, False by default) checks that ``sorted_token_ids`` are ``align``'s output for
    ``T*top_k`` replicas (ids in ``[0, T*top_k]``, none twice, ending with the sentinel).

    Why: the GEMMs can then load A as rectangular tiles (TMA) instead of gathering rows, at
    the cost of one copy of the rows (see notebook 05)."""
    fn = "permute_rows"
    _require_array("x", x, 2, fn)
    _require_array("sorted_token_ids", sorted_token_ids, 1, fn, ("int32",))
    _require_array("expert_ids", expert_ids, 1, fn, ("int32",))
    top_k = _check_positive_int(fn, "top_k", top_k)
    validate = arguments.require_bool(fn, "validate", validate)
    _require_same_device(fn, x=x, sorted_token_ids=sorted_token_ids, expert_ids=expert_ids,
                         out=out, positions=positions)
    slots, num_m = sorted_token_ids.shape[0], expert_ids.shape[0]
    if num_m == 0 or slots % num_m or (slots // num_m) & (slots // num_m - 1):
        arguments.fail(fn, ValueError,
                       f"sorted_token_ids ({slots}) must hold a power-of-two number of "
                       f"slots per block of expert_ids ({num_m}), as align() returns them")
    tile_m = slots // num_m
    xp = device.array_module(x)
    T, H = x.shape
    R = T * int(top_k)
    reads = (("x", x), ("sorted_token_ids", sorted_token_ids), ("expert_ids", expert_ids))
    if out is None:
        out = xp.empty((slots, H), dtype=x.dtype)
    else:
        arguments.require_out(fn, "out", out, (slots, H), x.dtype, reads)
    if positions is None:
        positions = xp.empty((R,), dtype=xp.int32)
    else:
        _require_array("positions", positions, 1, fn, ("int32",))
        if positions.shape[0] != R:
            arguments.fail(fn, ValueError,
                           f"positions must be ({R},), got {tuple(positions.shape)}")
        arguments.require_out(fn, "positions", positions, (R,), np.int32, reads,
                              also=(("out", out),))
    if validate:
        _check_slot_ids(fn, sorted_token_ids, R, tile_m, "T*top_k")
    if R == 0 or H == 0:
        return out, positions
    tile_h = permute_tile_h(tile_m, H)
    device.launch((num_m, ct.cdiv(H, tile_h)), permute_rows_kernel,
                  (x, sorted_token_ids, expert_ids, out, positions, R, int(top_k), tile_m,
                   tile_h))
    return out, positions


def sass_instruction_count(cubin: bytes) -> int:
    """Number of machine (SASS) instructions in a cubin's ``.text.*`` sections: their size / 16,
    since every instruction is 16 bytes on sm_70 and newer. A static count (loops counted
    once) -- a quick, GPU-free way to compare two ways of writing the same kernel."""
    import struct
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2:
        raise ValueError("not an ELF64 cubin")
    shoff = struct.unpack_from("<Q", cubin, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", cubin, shoff + i * shentsize) for i in range(shnum)]
    names_at = sections[shstrndx][4]
    total = 0
    for name_off, _type, _flags, _addr, _offset, size in sections:
        start = names_at + name_off
        if cubin[start:cubin.index(b"\0", start)].startswith(b".text"):
            total += size
    return total // 16


# ---------------------------------------------------------------------------------------------
# Compile cases (tests/test_compile.py compiles each for sm_80, sm_90, sm_100, sm_120)
# ---------------------------------------------------------------------------------------------

def gemm_compile_params(dtype, top_k: int, mul_routed_weight: bool, cfg: TileConfig, *,
                        int64: bool = False, sorted_rows: bool = False):
    """The parameters of ``fused_moe_kernel`` (``int64=True``: of ``fused_moe_kernel_int64``,
    whose W is indexed in 64 bits) for ``compile.export_cubin``; ``dtype`` a ct dtype of A, W
    and C."""
    mul = mul_routed_weight
    w = array(dtype, 3, index_dtype=ct.int64 if int64 else ct.int32)
    return [array(dtype, 2), w, array(dtype, 2),
            array(ct.float32, 1), array(ct.int32, 1), array(ct.int32, 1),
            top_k, mul, cfg.tile_m, cfg.tile_n, cfg.tile_k, cfg.group_size_m, cfg.transpose_b,
            cfg.latency, sorted_rows]


def swiglu_compile_params(dtype, top_k: int, cfg: TileConfig, *, int64: bool = False,
                          sorted_rows: bool = False):
    """The parameters of ``fused_moe_swiglu_kernel`` (``int64=True``: the ``_int64`` one)."""
    index = ct.int64 if int64 else ct.int32
    return [array(dtype, 2), array(dtype, 3, index_dtype=index),
            array(dtype, 3, index_dtype=index), array(dtype, 2),
            array(ct.int32, 1), array(ct.int32, 1),
            top_k, cfg.tile_m, cfg.tile_n, cfg.tile_k, cfg.group_size_m, cfg.transpose_b,
            cfg.latency, sorted_rows]


def compile_cases():
    """The specializations the notebooks and moe_forward launch: GEMM1 (gather // K, no weight)
    and GEMM2 (// 1, router weight) with the decode and prefill tile rules in float16, the
    decode rule in float32, GEMM1 with the SwiGLU epilogue, the hinted variants the tuner
    tries (latency, occupancy, clusters), and the top-k sum with and without an expert map."""
    cases = []
    for name, dt, phases in (("float16", ct.float16, (("decode", 4), ("prefill", 4096))),
                             ("float32", ct.float32, (("decode", 4),))):
        for phase, tokens in phases:
            cfg = default_tile_config(tokens, 8, 64, name)
            cases.append((f"gemm1_{name}_{phase}", fused_moe_kernel,
                          gemm_compile_params(dt, 8, False, cfg)))
            cases.append((f"gemm2_{name}_{phase}", fused_moe_kernel,
                          gemm_compile_params(dt, 1, True, cfg)))
            if name == "float16":
                cases.append((f"gemm1_swiglu_{name}_{phase}", fused_moe_swiglu_kernel,
                              swiglu_compile_params(dt, 8, cfg)))
    # DeepSeek-V3-sized weights (> 2**31 elements): the 64-bit-indexed kernels, prefill tiles
    cfg = default_tile_config(2048, 8, 256)
    cases.append(("gemm1_float16_prefill_int64", fused_moe_kernel_int64,
                  gemm_compile_params(ct.float16, 8, False, cfg, int64=True)))
    cases.append(("gemm1_swiglu_float16_prefill_int64", fused_moe_swiglu_kernel_int64,
                  swiglu_compile_params(ct.float16, 8, cfg, int64=True)))
    # compiler hints as the tuner sets them: a latency hint on the weight loads, occupancy,
    # two-block clusters
    hinted_cfg = TileConfig(64, 128, 64, 8, occupancy=2, num_ctas=2, latency=8)
    cases.append(("gemm2_float16_hinted", hinted(fused_moe_kernel, 2, 2),
                  gemm_compile_params(ct.float16, 1, True, hinted_cfg)))
    # notebook 05's slot-order path: GEMMs that load A as tiles, the permute, the combine
    for tile_m, phase in ((16, "decode"), (64, "prefill"), (128, "prefill128")):
        cfg = TileConfig(tile_m, 128 if tile_m >= 64 else 64, 64 if tile_m >= 64 else 128)
        cases.append((f"gemm1_swiglu_float16_{phase}_sorted", fused_moe_swiglu_kernel,
                      swiglu_compile_params(ct.float16, 8, cfg, sorted_rows=True)))
        cases.append((f"gemm2_float16_{phase}_sorted", fused_moe_kernel,
                      gemm_compile_params(ct.float16, 1, True, cfg, sorted_rows=True)))
        cases.append((f"permute_rows_float16_tm{tile_m}", permute_rows_kernel,
                      [array(ct.float16, 2), array(ct.int32, 1), array(ct.int32, 1),
                       array(ct.float16, 2), array(ct.int32, 1), scalar(ct.int32), 8, tile_m,
                       permute_tile_h(tile_m, 4096)]))
    cases.append(("gemm1_float16_prefill_sorted", fused_moe_kernel,
                  gemm_compile_params(ct.float16, 8, False, TileConfig(), sorted_rows=True)))
    cases.append(("gemm2_float16_prefill_int64_sorted", fused_moe_kernel_int64,
                  gemm_compile_params(ct.float16, 1, True, default_tile_config(2048, 8, 256),
                                      int64=True, sorted_rows=True)))
    for has_map in (False, True):
        for has_pos in (False, True):
            cases.append((f"moe_sum_float16_map{int(has_map)}_pos{int(has_pos)}", moe_sum_kernel,
                          [array(ct.float16, 2), array(ct.int32, 2), array(ct.int32, 1),
                           array(ct.int32, 1), array(ct.float16, 2), scalar(ct.int32), 8,
                           has_map, has_pos, 16, 128]))
    return cases
