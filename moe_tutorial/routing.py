"""Routing for a Mixture-of-Experts layer, as cuTile kernels: router top-k and expert alignment.

A router turns each token's logits over ``E`` experts into ``K`` chosen experts and their weights:

* ``topk_softmax`` — softmax over the experts, keep the ``K`` largest (Mixtral, Qwen3-MoE);
* ``grouped_topk`` — DeepSeek-V3: sigmoid scores, a per-expert correction bias used only to
  *select*, experts split into ``n_group`` groups of which ``topk_group`` survive, weights taken
  from the unbiased scores, renormalized and scaled by ``routed_scaling_factor``.

Both are one fused kernel: a block owns a tile of tokens and all experts (padded to a power of
two), and picks the top ``K`` by ``K`` rounds of "take the maximum, then hide it" (``topk_softmax``
on int32 keys that sort like the logits, so hiding needs no mask). Ties go to the lower expert
id, explicitly, so both backends agree.

``align`` then groups the ``T*K`` token replicas by expert so the expert GEMM can work in tiles of
``TILE_M`` rows that all use the same expert. It runs entirely on the device in three launches
(no host loop, no host sync, so the whole MoE layer can be captured in a CUDA graph):

1. ``align_count_kernel`` — each block counts, per expert, the ids in its chunk of the flattened
   ``topk_ids`` (one-hot sums; no atomics, so no zero-filled buffer is needed);
2. ``align_offsets_kernel`` — one block per slice of experts scans its columns of the
   ``chunks x experts`` count table with one cumulative sum down the chunks: in place, for every
   chunk, the number of replicas of each expert in the chunks before; and the column sums, the
   tokens per expert;
3. ``align_scatter_kernel`` — every block turns the tokens per expert (only E numbers) into the
   experts' padded row ranges (a cumulative sum over experts); then it ranks every replica of its
   chunk among the earlier replicas of the same expert (comparing it with the whole chunk),
   writes it at ``expert start + replicas in earlier chunks + rank``, and fills its share of the
   padding rows and of ``expert_ids``; block 0 writes ``num_tokens_post_padded``.

All three outputs and the scratch table are views of one int32 allocation.

Because a replica's slot depends only on counts (never on which block ran first), the result is
deterministic and stable: inside an expert, replicas appear in ascending index order.

Every function accepts and returns CuPy arrays on the GPU and NumPy arrays on the CPU (the
emulator). The float64 ground truth lives in ``moe_tutorial.reference`` (``*_reference`` here
are the same functions under the names the notebooks use). Outputs can be passed in
(``out=``, ``workspace=``), e.g. buffers filled with NaN by a test; ``AlignSettings`` holds
how ``align`` splits its work.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import cuda.tile as ct
import numpy as np

from . import arguments as args
from . import compile as _compile
from . import reference
from .device import array_module, launch

ConstInt = ct.Constant[int]
ConstBool = ct.Constant[bool]

INT32_MAX = 2**31 - 1
ROUTER_TILE_ELEMS = 4096      # router: a block's (TILE_T, E_PAD) tile holds about this many
MAX_EXPERTS = 4096            # align: every block works on all experts at once (E_PAD tiles)


@dataclass(frozen=True)
class AlignSettings:
    """How ``align`` splits its work (speed only: every setting gives the same result). The
    T*K replicas are cut into chunks, one per block of the count / scatter kernels; the tests
    pass tiny values to exercise many chunks, the benchmark's --sweep times alternatives."""
    target_chunks: int = 256   # about this many chunks (~2 per SM on an H100) ...
    min_chunk: int = 64        # ... of at least this many replicas (H100: 64 made align 2.3x
                               # faster at E=1408, T*K=1536 and 1.6x at E=256, T*K=16k than 128)
    max_table: int = 65536     # chunks x padded experts: the count table
    max_chunk: int = 256       # ... but chunks of at most this many replicas (the scatter
                               # kernel's loop is unrolled: 2048-replica chunks, DeepSeek-V3 at
                               # T=40960, took minutes to compile; 256 take ~3 s) ...
    max_chunks: int = 4096     # ... unless that makes more chunks than this (one scan tile)
    count_elems: int = 16384   # count kernel: (rows, E_PAD) one-hot tiles of about this size
    pair_elems: int = 4096     # scatter kernel: (rows, CHUNK) comparison tiles of about this size
    scan_elems: int = 4096     # offsets kernel: a block scans a (chunks, cols) tile this big
    blocks_per_tile: int = 16  # scatter kernel: TILE_M blocks handled by one block for expert_ids

    def __post_init__(self):
        for f in dataclasses.fields(self):
            args.require_int("AlignSettings", f.name, getattr(self, f.name), lo=1)


ALIGN_SETTINGS = AlignSettings()   # the defaults align() uses


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 << max(0, int(n) - 1).bit_length()


# --------------------------------------------------------------------------------------------
# Router: softmax -> top-k
# --------------------------------------------------------------------------------------------
def _max_and_argmax(score, available, index, NONE):
    """One round of top-k along the last axis: the best available score and, among the
    entries that reach it, the lowest ``index`` (ties go to the lower id, on every backend)."""
    candidates = ct.where(available, score, -math.inf)
    best = ct.max(candidates, axis=-1, keepdims=True)
    chosen = ct.min(ct.where(available & (candidates == best), index, NONE),
                    axis=-1, keepdims=True)
    return best, chosen


HIDDEN_KEY = -2**31      # below the key of every float, -inf included: "already chosen"


def _order_key(x):
    """int32 keys that sort like the float32 values ``x``: a float's bit pattern read as an
    int already sorts like the float for x >= 0; for negative floats (sign bit set) flipping
    the other 31 bits reverses their order. -0.0 is made +0.0 first, since they compare equal."""
    bits = ct.bitcast(ct.where(x == 0.0, 0.0, x), ct.int32)
    return ct.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _key_value(key):
    """The float32 value of an :func:`_order_key` key (the bit flip undoes itself)."""
    return ct.bitcast(ct.where(key < 0, key ^ 0x7FFFFFFF, key), ct.float32)


@ct.kernel
def topk_softmax_kernel(logits, weights, ids,
                        K: ConstInt, RENORMALIZE: ConstBool,
                        TILE_T: ConstInt, E_PAD: ConstInt, K_PAD: ConstInt):
    """weights, ids (T, K) <- top-K of softmax(logits (T, E)); one block = TILE_T tokens."""
    num_experts = logits.shape[1]
    x = ct.load(logits, (ct.bid(0), 0), shape=(TILE_T, E_PAD),
                padding_mode=ct.PaddingMode.ZERO).astype(ct.float32)
    experts = ct.arange(E_PAD, dtype=ct.int32)[None, :]          # (1, E_PAD)
    real = experts < num_experts
    x = ct.where(real, x, -math.inf)                             # padding adds exp(-inf) = 0

    # Softmax statistics in fp32: p_e = exp(x_e - row_max) / denom.
    row_max = ct.max(x, axis=1, keepdims=True)                   # (TILE_T, 1)
    denom = ct.sum(ct.exp(x - row_max), axis=1, keepdims=True)

    # Top-K by K rounds of "arg-max, then hide it", on int32 keys that order like the logits
    # (softmax is monotonic, so selecting on logits is exact). A chosen expert's key becomes
    # HIDDEN_KEY, below every real key -- even a logit of -inf stays selectable, so no
    # separate "still available" mask is needed. Ties go to the lowest expert id.
    key = ct.where(real, _order_key(x), HIDDEN_KEY)
    slots = ct.arange(K_PAD, dtype=ct.int32)[None, :]            # (1, K_PAD)
    top_key = ct.full((TILE_T, K_PAD), HIDDEN_KEY, dtype=ct.int32)
    top_i = ct.zeros((TILE_T, K_PAD), dtype=ct.int32)
    for r in range(K):
        best = ct.max(key, axis=1, keepdims=True)
        idx = ct.min(ct.where(key == best, experts, E_PAD), axis=1, keepdims=True)
        top_key = ct.where(slots == r, best, top_key)
        top_i = ct.where(slots == r, idx, top_i)
        key = ct.where(experts == idx, HIDDEN_KEY, key)

    # The weights of all K picks at once, after the loop: one (TILE_T, K_PAD) exp.
    top_w = ct.where(slots < K, ct.exp(_key_value(top_key) - row_max) / denom, 0.0)
    if RENORMALIZE:
        top_w = top_w / ct.sum(top_w, axis=1, keepdims=True)
    # Tiles extend past T and K: stores of partial tiles are masked.
    ct.store(weights, (ct.bid(0), 0), top_w)
    ct.store(ids, (ct.bid(0), 0), top_i)


# --------------------------------------------------------------------------------------------
# Router: DeepSeek-V3 grouped top-k
# --------------------------------------------------------------------------------------------
@ct.kernel
def grouped_topk_kernel(logits, bias, weights, ids, routed_scaling_factor: float,
                        K: ConstInt, N_GROUP: ConstInt, GROUP_SIZE: ConstInt,
                        TOPK_GROUP: ConstInt, HAS_BIAS: ConstBool, RENORMALIZE: ConstBool,
                        TILE_T: ConstInt, G_PAD: ConstInt, S_PAD: ConstInt, K_PAD: ConstInt):
    """DeepSeek-V3 routing; the logits are viewed as (TILE_T, groups, experts per group)."""
    rows = ct.bid(0) * TILE_T + ct.arange(TILE_T, dtype=ct.int32)[:, None, None]
    group = ct.arange(G_PAD, dtype=ct.int32)[None, :, None]      # (1, G_PAD, 1)
    member = ct.arange(S_PAD, dtype=ct.int32)[None, None, :]     # (1, 1, S_PAD)
    expert = group * GROUP_SIZE + member                         # expert id of each slot
    valid = (group < N_GROUP) & (member < GROUP_SIZE)            # (1, G_PAD, S_PAD)

    x = ct.gather(logits, (rows, expert), mask=valid & (rows < logits.shape[0]))
    x = x.astype(ct.float32)
    # Sigmoid, used for the weights; 0 in padding slots (their expert ids alias real ones).
    score = ct.where(valid, 1.0 / (1.0 + ct.exp(-x)), 0.0)
    select = score                                               # biased score, used to choose
    if HAS_BIAS:
        select = score + ct.gather(bias, expert, mask=valid).astype(ct.float32)
    select = ct.where(valid, select, -math.inf)                  # (TILE_T, G_PAD, S_PAD)

    # Group score: sum of the two best biased scores (with a bias), else the best score (vLLM).
    if HAS_BIAS:
        first, at = _max_and_argmax(select, valid, member, S_PAD)
        second = ct.max(ct.where(member == at, -math.inf, select), axis=2, keepdims=True)
        group_score = first + second
    else:
        group_score = ct.max(select, axis=2, keepdims=True)      # (TILE_T, G_PAD, 1)
    group_score = ct.reshape(group_score, (TILE_T, G_PAD))

    # Keep the TOPK_GROUP best groups (ties: lower group id).
    groups = ct.arange(G_PAD, dtype=ct.int32)[None, :]
    group_free = ct.broadcast_to(groups < N_GROUP, (TILE_T, G_PAD))
    keep = ct.broadcast_to(groups < 0, (TILE_T, G_PAD))          # all False
    for r in range(TOPK_GROUP):
        _, g = _max_and_argmax(group_score, group_free, groups, G_PAD)
        keep = keep | (groups == g)
        group_free = group_free & (groups != g)

    # Top-K experts inside the kept groups, ranked by the biased score (ties: lower expert id).
    flat = (TILE_T, G_PAD * S_PAD)
    select = ct.reshape(select, flat)
    score = ct.reshape(score, flat)
    expert = ct.reshape(ct.broadcast_to(expert, (1, G_PAD, S_PAD)), (1, G_PAD * S_PAD))
    keep = ct.reshape(ct.broadcast_to(ct.reshape(keep, (TILE_T, G_PAD, 1)) & valid,
                                      (TILE_T, G_PAD, S_PAD)), flat)
    slots = ct.arange(K_PAD, dtype=ct.int32)[None, :]
    top_w = ct.zeros((TILE_T, K_PAD), dtype=ct.float32)
    top_i = ct.zeros((TILE_T, K_PAD), dtype=ct.int32)
    for r in range(K):
        _, e = _max_and_argmax(select, keep, expert, INT32_MAX)
        w = ct.sum(ct.where(expert == e, score, 0.0), axis=1, keepdims=True)   # unbiased
        top_i = ct.where(slots == r, e, top_i)
        top_w = ct.where(slots == r, w, top_w)
        keep = keep & (expert != e)

    if RENORMALIZE:
        top_w = top_w / ct.sum(top_w, axis=1, keepdims=True)
    top_w = top_w * routed_scaling_factor
    ct.store(weights, (ct.bid(0), 0), top_w)
    ct.store(ids, (ct.bid(0), 0), top_i)


# --------------------------------------------------------------------------------------------
# Alignment: three kernels
# --------------------------------------------------------------------------------------------
# Scratch: one int32 table of shape (num_chunks + 1, E). Rows [0, num_chunks) hold the count
# kernel's per-chunk counts, which the offsets kernel turns (in place) into per-chunk base rows
# relative to the expert's first row; the last row holds the tokens per expert.
TOKENS = 0      # row num_chunks + TOKENS of the table


def _local_expert_ids(flat_ids, expert_map, start, num_experts, HAS_MAP, N):
    """The (local) expert of the replicas ``start .. start+N-1``; -1 where dropped: past the
    end, id -1, mapped to -1 by ``expert_map``, or outside [0, num_experts)."""
    index = start + ct.arange(N, dtype=ct.int32)
    ids = ct.gather(flat_ids, index, mask=index < flat_ids.shape[0], padding_value=-1)
    if HAS_MAP:
        ids = ct.gather(expert_map, ids, mask=(ids >= 0) & (ids < expert_map.shape[0]),
                        padding_value=-1)
    return ct.where((ids >= 0) & (ids < num_experts), ids, -1)


@ct.kernel
def align_count_kernel(flat_ids, expert_map, table, num_experts: int,
                       HAS_MAP: ConstBool, CHUNK: ConstInt, SUB: ConstInt, E_PAD: ConstInt):
    """table[c, e] = number of replicas of chunk c (CHUNK consecutive ids) routed to expert e."""
    chunk = ct.bid(0)
    local = _local_expert_ids(flat_ids, expert_map, chunk * CHUNK, num_experts, HAS_MAP, CHUNK)
    experts = ct.arange(E_PAD, dtype=ct.int32)[None, :]
    total = ct.zeros((1, E_PAD), dtype=ct.int32)
    for s in range(CHUNK // SUB):                  # one-hot tiles of SUB rows, summed down
        part = ct.extract(local, (s,), shape=(SUB,))
        total = total + ct.sum((part[:, None] == experts).astype(ct.int32), axis=0,
                               keepdims=True)
    ct.store(table, (chunk, 0), total)                                     # masked past E


@ct.kernel
def align_offsets_kernel(table, num_chunks: int, ROWS: ConstInt, COLS: ConstInt):
    """Block b owns experts b*COLS .. b*COLS+COLS-1 (ROWS >= num_chunks): one cumulative sum
    down their columns replaces, in place, table[c, e] by the number of replicas of e in chunks
    before c; their column sums (tokens per expert) go to row num_chunks."""
    col = ct.bid(0)
    counts = table.slice(0, 0, num_chunks)                 # rows past num_chunks load as 0
    tile = ct.load(counts, (0, col), shape=(ROWS, COLS), padding_mode=ct.PaddingMode.ZERO)
    ct.store(counts, (0, col), ct.cumsum(tile, axis=0) - tile)   # same block: load, then store
    ct.store(table, (num_chunks + TOKENS, col), ct.sum(tile, axis=0, keepdims=True))


def _expert_ranges(table, num_chunks, num_experts, TILE_M, E_PAD):
    """From the tokens per expert: each expert's first padded row, the end of its tokens, the
    end of its padded rows ((E_PAD,) tiles; experts past E own no rows) and the total."""
    experts = ct.arange(E_PAD, dtype=ct.int32)
    tokens = ct.gather(table, (num_chunks + TOKENS, experts), mask=experts < num_experts,
                       padding_value=0)
    padded = ct.cdiv(tokens, TILE_M) * TILE_M
    end = ct.cumsum(padded, axis=0)
    start = end - padded
    return start, start + tokens, end, ct.sum(padded, axis=0, keepdims=True)


@ct.kernel
def align_scatter_kernel(flat_ids, expert_map, table,
                         sorted_token_ids, expert_ids, num_tokens_post_padded,
                         num_replicas: int, num_chunks: int, num_experts: int,
                         HAS_MAP: ConstBool, CHUNK: ConstInt, SUB: ConstInt,
                         TILE_M: ConstInt, BLOCKS: ConstInt, E_PAD: ConstInt):
    """Every block first derives the experts' padded row ranges from the tokens per expert
    (only E numbers: cheaper to recompute than to launch for). Block b then places the
    replicas of chunk b; and, for TILE_M blocks b*BLOCKS .. (b+1)*BLOCKS-1, writes their owning
    expert (-1 past the end) and the sentinel padding. Block 0 writes num_tokens_post_padded."""
    b = ct.bid(0)
    start, token_end, end, total = _expert_ranges(table, num_chunks, num_experts, TILE_M, E_PAD)
    experts = ct.arange(E_PAD, dtype=ct.int32)
    if b == 0:
        ct.store(num_tokens_post_padded, (0,), total)
    if b < num_chunks:
        local = _local_expert_ids(flat_ids, expert_map, b * CHUNK, num_experts, HAS_MAP, CHUNK)
        before = ct.gather(table, (b, local), mask=local >= 0)   # replicas of each one's expert
        pos = ct.arange(CHUNK, dtype=ct.int32)                   # in the chunks before
        for s in range(CHUNK // SUB):                            # SUB replicas at a time
            mine = ct.extract(local, (s,), shape=(SUB,))
            me = s * SUB + ct.arange(SUB, dtype=ct.int32)
            # The expert's first row, picked from the (E_PAD,) tile by a one-hot row.
            first = ct.sum(ct.where(mine[:, None] == experts[None, :], start[None, :], 0),
                           axis=1)
            # Rank = earlier replicas of the same expert in the chunk: compare with all of them.
            earlier = (local[None, :] == mine[:, None]) & (pos[None, :] < me[:, None])
            row = first + ct.extract(before, (s,), shape=(SUB,)) + \
                ct.sum(earlier.astype(ct.int32), axis=1)
            ct.scatter(sorted_token_ids, row, b * CHUNK + me, mask=mine >= 0)

    # Owner of TILE_M block j = number of experts whose padded rows end at or before j*TILE_M.
    blocks = b * BLOCKS + ct.arange(BLOCKS, dtype=ct.int32)                 # (BLOCKS,)
    block_row = blocks * TILE_M
    owner = ct.sum((end[None, :] <= block_row[:, None]).astype(ct.int32), axis=1)
    owner = ct.where(block_row < total, owner, -1)
    ct.scatter(expert_ids, blocks, owner, mask=blocks < expert_ids.shape[0])
    # Rows of a block at or past its expert's last token (or of no expert) hold the sentinel.
    fill_from = ct.sum(ct.where(owner[:, None] == experts[None, :], token_end[None, :], 0),
                       axis=1)
    rows = block_row[:, None] + ct.arange(TILE_M, dtype=ct.int32)[None, :]  # (BLOCKS, TILE_M)
    ct.scatter(sorted_token_ids, rows, num_replicas,
               mask=(rows >= fill_from[:, None]) & (rows < sorted_token_ids.shape[0]))


# --------------------------------------------------------------------------------------------
# Host wrappers
# --------------------------------------------------------------------------------------------
_ROUTER_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _check_logits(fn, logits, k, validate):
    """Checks ``logits`` and ``k``; returns ``(xp, k)``."""
    args.require_array(fn, "logits", logits)
    if logits.ndim != 2:
        args.fail(fn, ValueError, f"logits must have shape (T, E), got shape "
                                  f"{tuple(logits.shape)}")
    if logits.dtype.name not in _ROUTER_DTYPES:
        args.fail(fn, TypeError, f"logits must be a floating-point array "
                                 f"({', '.join(_ROUTER_DTYPES)}), got dtype {logits.dtype}")
    num_experts = logits.shape[1]
    if num_experts < 1:
        args.fail(fn, ValueError, "logits must have at least one expert column (E >= 1)")
    k = args.require_int(fn, "k", k)
    if not 1 <= k <= num_experts:
        args.fail(fn, ValueError, f"k must be in [1, E={num_experts}], got k={k}")
    xp = array_module(logits)
    if validate and logits.size and bool(xp.isnan(logits).any()):
        args.fail(fn, ValueError, "logits contains NaN")
    return xp, k


def _router_outputs(fn, xp, logits, k, out, bias=None):
    """``(weights, ids)``: ``out`` checked, or two new arrays."""
    t = logits.shape[0]
    if out is None:
        return xp.empty((t, k), dtype=xp.float32), xp.empty((t, k), dtype=xp.int32)
    if not isinstance(out, tuple) or len(out) != 2:
        args.fail(fn, TypeError, "out must be a tuple (weights, ids) of arrays")
    weights, ids = out
    args.require_same_device(fn, logits=logits, weights=weights, ids=ids)
    reads = (("logits", logits), ("e_score_correction_bias", bias))
    args.require_out(fn, "out[0] (weights)", weights, (t, k), np.float32, reads)
    args.require_out(fn, "out[1] (ids)", ids, (t, k), np.int32, reads,
                     also=(("out[0] (weights)", weights),))
    return weights, ids


@functools.lru_cache(maxsize=256)
def _router_grid(num_tokens: int, width: int, tile_elems: int) -> tuple[int, int]:
    """(TILE_T, blocks): tokens per block -- about ``tile_elems`` elements of a row ``width``
    wide, at most 64 tokens -- and the number of blocks."""
    tile_t = max(1, min(64, tile_elems // width, next_power_of_2(num_tokens)))
    return tile_t, -(-num_tokens // tile_t)


def _token_tile(num_tokens: int, width: int) -> int:
    """Tokens per block for the router (see ``_router_grid``)."""
    return _router_grid(num_tokens, width, ROUTER_TILE_ELEMS)[0]


def topk_softmax(logits, k, *, renormalize=False, validate=True, out=None):
    """Softmax over the experts, then the ``k`` largest, ties to the lower expert id.

    Args:
        logits: (T, E) router logits, float16/float32 (bfloat16/float64 where the backend has it).
        k: experts per token, ``1 <= k <= E``.
        renormalize: divide the chosen weights by their sum (so they sum to 1).
        validate: reject NaN logits (a host sync on the GPU).
        out: optional ``(weights, ids)``, float32 and int32 arrays of shape (T, k) to write
            (not overlapping ``logits``); allocated when None.

    Returns:
        ``(weights, ids)``: float32 (T, k) softmax probabilities of the chosen experts, in
        decreasing order, and their int32 (T, k) expert ids.
    """
    xp, k = _check_logits("topk_softmax", logits, k, validate)
    num_tokens, num_experts = logits.shape
    weights, ids = _router_outputs("topk_softmax", xp, logits, k, out)
    if num_tokens == 0:
        return weights, ids
    e_pad = next_power_of_2(num_experts)
    tile_t, blocks = _router_grid(num_tokens, e_pad, ROUTER_TILE_ELEMS)
    launch((blocks,), topk_softmax_kernel,
           (logits, weights, ids, k, bool(renormalize), tile_t, e_pad, next_power_of_2(k)))
    return weights, ids


def grouped_topk(logits, k, *, n_group, topk_group, e_score_correction_bias=None,
                 routed_scaling_factor=1.0, renormalize=True, validate=True, out=None):
    """DeepSeek-V3 routing (vLLM's ``grouped_topk`` with ``scoring_func="sigmoid"``).

    ``score = sigmoid(logits)``; experts are split into ``n_group`` equal groups of consecutive
    ids; a group's score is the sum of its two best ``score + e_score_correction_bias`` (or its
    best ``score`` when there is no bias); the ``topk_group`` best groups are kept and the ``k``
    best experts inside them chosen by ``score + bias``. Weights are the unbiased scores,
    renormalized to sum to 1 (``renormalize``), then multiplied by ``routed_scaling_factor``.
    Ties go to the lower group / expert id. ``out``: as in :func:`topk_softmax`.

    Returns:
        ``(weights, ids)``: float32 and int32 arrays of shape (T, k), in decreasing biased score.
    """
    fn = "grouped_topk"
    xp, k = _check_logits(fn, logits, k, validate)
    num_tokens, num_experts = logits.shape
    n_group, topk_group, group_size = _check_groups(num_experts, k, n_group, topk_group,
                                                    e_score_correction_bias is not None)
    bias = e_score_correction_bias
    if bias is not None:
        _check_bias(bias, logits, num_experts, validate)
    if isinstance(routed_scaling_factor, bool) or \
            not isinstance(routed_scaling_factor, (int, float, np.integer, np.floating)):
        args.fail(fn, TypeError, f"routed_scaling_factor must be a number, got "
                                 f"{routed_scaling_factor!r}")
    weights, ids = _router_outputs(fn, xp, logits, k, out, bias)
    if num_tokens == 0:
        return weights, ids
    g_pad, s_pad = next_power_of_2(n_group), next_power_of_2(group_size)
    tile_t, blocks = _router_grid(num_tokens, g_pad * s_pad, ROUTER_TILE_ELEMS)
    has_bias = bias is not None
    if not has_bias:
        bias = xp.zeros((1,), dtype=xp.float32)       # never read
    launch((blocks,), grouped_topk_kernel,
           (logits, bias, weights, ids, float(routed_scaling_factor), k, n_group, group_size,
            topk_group, has_bias, bool(renormalize), tile_t, g_pad, s_pad, next_power_of_2(k)))
    return weights, ids


def _check_groups(num_experts, k, n_group, topk_group, has_bias):
    fn = "grouped_topk"
    n_group = args.require_int(fn, "n_group", n_group)
    topk_group = args.require_int(fn, "topk_group", topk_group)
    if n_group < 1 or num_experts % n_group:
        args.fail(fn, ValueError, f"n_group={n_group} must be >= 1 and divide the number of "
                                  f"experts E={num_experts}")
    if not 1 <= topk_group <= n_group:
        args.fail(fn, ValueError, f"topk_group must be in [1, n_group={n_group}], got "
                                  f"{topk_group}")
    group_size = num_experts // n_group
    if k > topk_group * group_size:
        args.fail(fn, ValueError, f"k={k} is more than the {topk_group * group_size} experts in "
                                  f"the topk_group={topk_group} kept groups of {group_size}")
    if has_bias and group_size < 2:
        args.fail(fn, ValueError, "with e_score_correction_bias a group's score is the sum of "
                                  "its two best experts, so groups need >= 2 experts "
                                  f"(E/n_group={group_size})")
    return n_group, topk_group, group_size


def _check_bias(bias, logits, num_experts, validate):
    fn = "grouped_topk"
    if not args.is_array(bias) or array_module(bias) is not array_module(logits):
        args.fail(fn, TypeError, "e_score_correction_bias must be an array on the same device "
                                 "as logits")
    if tuple(bias.shape) != (num_experts,):
        args.fail(fn, ValueError, f"e_score_correction_bias must have shape (E,)="
                                  f"({num_experts},), got {tuple(bias.shape)}")
    if bias.dtype.name not in _ROUTER_DTYPES:
        args.fail(fn, TypeError, f"e_score_correction_bias must be floating point, got "
                                 f"{bias.dtype}")
    if validate and not bool(array_module(bias).isfinite(bias).all()):
        args.fail(fn, ValueError, "e_score_correction_bias must be finite")


def max_padded_size(num_replicas: int, num_experts: int, tile_m: int) -> int:
    """Worst-case length of ``sorted_token_ids``: ``T*K + E*(TILE_M-1)`` rounded up to TILE_M."""
    n = num_replicas + num_experts * (tile_m - 1)
    return -(-n // tile_m) * tile_m


class AlignLayout(NamedTuple):
    """How ``align`` splits its work and lays out its one int32 workspace (pure shape maths,
    computed once per shape and cached)."""
    num_replicas: int
    size: int             # len(sorted_token_ids)
    num_blocks: int       # len(expert_ids) = size // tile_m
    chunk: int            # replicas per block of the count and scatter kernels
    count_sub: int        # count kernel: rows of its (count_sub, E_PAD) one-hot tiles
    pair_sub: int         # scatter kernel: rows of its (pair_sub, chunk) comparison tiles
    e_pad: int
    num_chunks: int
    grid: int             # blocks of the scatter kernel
    scan_rows: int        # offsets kernel: its (scan_rows, scan_cols) tile, scan_rows >= chunks
    scan_cols: int
    scan_grid: int        # blocks of the offsets kernel: E / scan_cols
    offsets: tuple        # workspace offsets: expert_ids, num_tokens_post_padded, table, end


_WORKSPACE_ALIGN = 64     # int32 elements (256 bytes) between the workspace's parts


@functools.lru_cache(maxsize=256)
def _align_layout(num_replicas: int, num_experts: int, tile_m: int,
                  settings: AlignSettings) -> AlignLayout:
    s = settings
    if not 1 <= num_experts <= MAX_EXPERTS:
        args.fail("align", ValueError,
                  f"num_experts must be in [1, {MAX_EXPERTS}] (every block of the "
                  f"kernels works on all experts at once), got {num_experts}")
    if tile_m < 1 or tile_m & (tile_m - 1) or tile_m > 1024:
        args.fail("align", ValueError, f"tile_m must be a power of two <= 1024, got {tile_m}")
    n = max(num_replicas, 1)
    e_pad = next_power_of_2(num_experts)
    chunk = next_power_of_2(max(-(-n // s.target_chunks), -(-n * e_pad // s.max_table),
                                s.min_chunk))
    chunk = min(chunk, max(next_power_of_2(s.max_chunk), next_power_of_2(-(-n // s.max_chunks))))
    num_chunks = -(-n // chunk)
    size = max_padded_size(num_replicas, num_experts, tile_m)
    num_blocks = size // tile_m
    grid = max(num_chunks, -(-num_blocks // s.blocks_per_tile))
    scan_rows = next_power_of_2(num_chunks)
    scan_cols = min(e_pad, max(1, s.scan_elems // scan_rows))
    # Indices the kernels compute: rows < size, replicas < num_chunks*chunk, TILE_M-block rows.
    if size > INT32_MAX or max(grid * s.blocks_per_tile * tile_m, num_chunks * chunk) > 2**31:
        args.fail("align", ValueError,
                  f"topk_ids has {num_replicas} replicas: the padded length {size} "
                  "does not fit int32 indices (T*K + E*(tile_m-1) must stay below 2**31)")
    up = lambda x: -(-x // _WORKSPACE_ALIGN) * _WORKSPACE_ALIGN  # noqa: E731
    o_expert_ids = up(size)
    o_total = o_expert_ids + up(num_blocks)
    o_table = o_total + _WORKSPACE_ALIGN
    end = o_table + (num_chunks + 1) * num_experts
    return AlignLayout(num_replicas, size, num_blocks, chunk,
                       min(chunk, max(1, s.count_elems // e_pad)),
                       min(chunk, max(1, s.pair_elems // chunk)),
                       e_pad, num_chunks, grid, scan_rows, scan_cols,
                       -(-num_experts // scan_cols), (o_expert_ids, o_total, o_table, end))


def _check_align_args(topk_ids, num_experts, tile_m, expert_map, settings) -> AlignLayout:
    fn = "align"
    args.require_array(fn, "topk_ids", topk_ids)
    if topk_ids.ndim != 2:
        args.fail(fn, ValueError, f"topk_ids must have shape (T, K), got shape "
                                  f"{tuple(topk_ids.shape)}")
    if topk_ids.dtype.kind not in "iu":
        args.fail(fn, TypeError, f"topk_ids must be an integer array (int32), got dtype "
                                 f"{topk_ids.dtype}")
    num_experts = args.require_int(fn, "num_experts", num_experts)
    tile_m = args.require_int(fn, "tile_m", tile_m)
    if expert_map is not None:
        if not args.is_array(expert_map) or \
                array_module(expert_map) is not array_module(topk_ids):
            args.fail(fn, TypeError, "expert_map must be an array on the same device as "
                                     "topk_ids")
        if expert_map.ndim != 1 or expert_map.shape[0] < 1:
            args.fail(fn, ValueError, f"expert_map must have shape (global experts,), got "
                                      f"{tuple(expert_map.shape)}")
        if expert_map.dtype.kind not in "iu":
            args.fail(fn, TypeError, f"expert_map must be an integer array (int32), got "
                                     f"{expert_map.dtype}")
    if not isinstance(settings, AlignSettings):
        args.fail(fn, TypeError, f"settings must be a routing.AlignSettings, got "
                                 f"{type(settings).__name__}")
    t, k = topk_ids.shape
    return _align_layout(int(t) * int(k), num_experts, tile_m, settings)


def check_expert_ids(fn, topk_ids, num_experts, expert_map):
    """Range checks of routing values (a host sync on the GPU): ``topk_ids`` in ``[-1,
    len(expert_map))`` (or ``[-1, num_experts)`` without a map), ``expert_map`` in ``[-1,
    num_experts)``. The kernels themselves treat anything outside as -1 (dropped)."""
    xp = array_module(topk_ids)
    id_limit = num_experts if expert_map is None else int(expert_map.shape[0])
    what = "num_experts" if expert_map is None else "len(expert_map)"
    if topk_ids.size:
        lo, hi = int(xp.min(topk_ids)), int(xp.max(topk_ids))
        if lo < -1 or hi >= id_limit:
            args.fail(fn, ValueError, f"topk_ids must be in [-1, {what}={id_limit}) "
                                      f"(-1 = dropped), found {lo if lo < -1 else hi}")
    if expert_map is not None:
        lo, hi = int(xp.min(expert_map)), int(xp.max(expert_map))
        if lo < -1 or hi >= num_experts:
            args.fail(fn, ValueError, f"expert_map values must be local expert ids in [-1, "
                                      f"num_experts={num_experts}) (-1 = not on this rank), "
                                      f"found {lo if lo < -1 else hi}")


def _int32_vector(xp, a):
    """``a`` flattened to contiguous int32, without a copy when it already is."""
    if a.dtype == np.int32 and a.flags.c_contiguous:
        return a.reshape(-1)
    return xp.ascontiguousarray(a, dtype=xp.int32).reshape(-1)


def align_workspace_size(num_replicas: int, num_experts: int, tile_m: int,
                         settings: AlignSettings = ALIGN_SETTINGS) -> int:
    """int32 elements of the workspace :func:`align` needs for ``T*K = num_replicas``."""
    return _align_layout(int(num_replicas), int(num_experts), int(tile_m), settings).offsets[3]


def align_launches(topk_ids, num_experts, tile_m, *, expert_map=None, validate=True,
                   workspace=None, settings=ALIGN_SETTINGS):
    """Everything :func:`align` does except running the kernels: checks, one workspace, views.

    Returns ``(outputs, launches)``: ``outputs`` as :func:`align` returns them (not written yet)
    and ``launches``, a list of ``(name, grid, kernel, args)`` for the three kernels, in order.
    The benchmark uses it to time each kernel; ``align`` just runs them."""
    fn = "align"
    layout = _check_align_args(topk_ids, num_experts, tile_m, expert_map, settings)
    num_experts, tile_m = int(num_experts), int(tile_m)
    if validate:
        check_expert_ids(fn, topk_ids, num_experts, expert_map)
    xp = array_module(topk_ids)
    o_expert_ids, o_total, o_table, end = layout.offsets
    if workspace is None:
        # One allocation: the three outputs and the scratch table are views of it.
        workspace = xp.empty((end,), dtype=xp.int32)
    else:
        args.require_array(fn, "workspace", workspace, 1, ("int32",))
        args.require_same_device(fn, topk_ids=topk_ids, workspace=workspace)
        if workspace.shape[0] < end or not workspace.flags.c_contiguous:
            args.fail(fn, ValueError, f"workspace must be a contiguous int32 array of at least "
                                      f"{end} elements (align_workspace_size), got "
                                      f"{tuple(workspace.shape)}")
        args.require_out(fn, "workspace", workspace, workspace.shape, np.int32,
                         (("topk_ids", topk_ids), ("expert_map", expert_map)))
    if layout.num_replicas:
        flat_ids = _int32_vector(xp, topk_ids)
    else:
        flat_ids = xp.full((1,), -1, dtype=xp.int32)          # one dropped replica
    has_map = expert_map is not None
    emap = _int32_vector(xp, expert_map) if has_map else flat_ids       # never read without
    sorted_token_ids = workspace[:layout.size]
    expert_ids = workspace[o_expert_ids:o_expert_ids + layout.num_blocks]
    num_tokens_post_padded = workspace[o_total:o_total + 1]
    table = workspace[o_table:end].reshape(layout.num_chunks + 1, num_experts)

    c, n_chunks = layout.chunk, layout.num_chunks
    launches = [
        ("count", (n_chunks,), align_count_kernel,
         (flat_ids, emap, table, num_experts, has_map, c, layout.count_sub, layout.e_pad)),
        ("offsets", (layout.scan_grid,), align_offsets_kernel,
         (table, n_chunks, layout.scan_rows, layout.scan_cols)),
        ("scatter", (layout.grid,), align_scatter_kernel,
         (flat_ids, emap, table, sorted_token_ids, expert_ids, num_tokens_post_padded,
          layout.num_replicas, n_chunks, num_experts, has_map, c, layout.pair_sub, tile_m,
          settings.blocks_per_tile, layout.e_pad)),
    ]
    return (sorted_token_ids, expert_ids, num_tokens_post_padded), launches


def align(topk_ids, num_experts, tile_m, *, expert_map=None, validate=True, workspace=None,
          settings=ALIGN_SETTINGS):
    """Group the ``T*K`` token replicas by expert, each group padded to a multiple of ``tile_m``.

    Args:
        topk_ids: (T, K) integer expert ids (int32 preferred); ``-1`` means "no expert" (dropped).
        num_experts: number of experts the outputs refer to (the local experts with
            expert_map), at most ``MAX_EXPERTS``.
        tile_m: rows per GEMM tile, a power of two.
        expert_map: optional (E_global,) int array, global id -> local id in
            ``[0, num_experts)``, or -1 for experts on another rank (their replicas are dropped).
        validate: range-check ids and expert_map (a host sync on the GPU): ids must be in
            ``[-1, E_global)`` and map values in ``[-1, num_experts)``. Without it, the kernels
            drop (treat as -1) every replica whose id or mapped id is out of range -- as
            ``fused_moe.moe_sum`` does, so the layer stays consistent.
        workspace: optional contiguous int32 array of at least ``align_workspace_size(T*K,
            num_experts, tile_m, settings)`` elements; the outputs are views of it.
        settings: how the kernels split the work (``AlignSettings``; speed only).

    Returns:
        ``sorted_token_ids`` int32 (``max_padded_size(T*K, num_experts, tile_m)``,): replica
        indices ``t*K + k`` grouped by expert in ascending expert order, ascending inside an
        expert, each group padded with the sentinel ``T*K``, which also fills the tail;
        ``expert_ids`` int32 (len(sorted_token_ids) // tile_m,): the expert of each tile_m
        block, -1 for blocks at or past ``num_tokens_post_padded``;
        ``num_tokens_post_padded`` int32 (1,): rows actually used.
        (All three are views of one int32 allocation, which also holds the kernels' scratch.)
    """
    outputs, launches = align_launches(topk_ids, num_experts, tile_m, expert_map=expert_map,
                                       validate=validate, workspace=workspace,
                                       settings=settings)
    for _, grid, kernel, kernel_args in launches:
        launch(grid, kernel, kernel_args)
    return outputs


# The float64 references live in moe_tutorial.reference; these names stay for the notebooks.
topk_softmax_reference = reference.topk_softmax
grouped_topk_reference = reference.grouped_topk
align_reference = reference.align


# --------------------------------------------------------------------------------------------
# Specializations compiled by tests/test_compile.py (the constants the notebooks use)
# --------------------------------------------------------------------------------------------
def compile_cases():
    a, s = _compile.array, _compile.scalar
    i32 = ct.int32
    cases = []
    # Router: the notebook's small case, the benchmark's E=128 in fp16, and E=512.
    for dtype, e, k, renorm in ((ct.float32, 8, 2, True), (ct.float16, 128, 8, False),
                                (ct.float32, 512, 8, True)):
        e_pad = next_power_of_2(e)
        cases.append((f"topk_softmax_E{e}_K{k}_{dtype}", topk_softmax_kernel,
                      [a(dtype, 2), a(ct.float32, 2), a(i32, 2), k, renorm,
                       _token_tile(4096, e_pad), e_pad, next_power_of_2(k)]))
    # DeepSeek-V3 (E=256, 8 groups, keep 4, with bias) and V2-like groups of 20, no bias.
    for e, k, ng, tg, has_bias in ((256, 8, 8, 4, True), (160, 6, 8, 3, False)):
        gs = e // ng
        g_pad, s_pad = next_power_of_2(ng), next_power_of_2(gs)
        cases.append((f"grouped_topk_E{e}_K{k}_G{ng}_bias{int(has_bias)}", grouped_topk_kernel,
                      [a(ct.float32, 2), a(ct.float32, 1), a(ct.float32, 2), a(i32, 2),
                       s(ct.float32), k, ng, gs, tg, has_bias, True,
                       _token_tile(4096, g_pad * s_pad), g_pad, s_pad, next_power_of_2(k)]))
    # Alignment: the notebook's small case with an EP map, the benchmark's T=4096, K=8 (E=128
    # and E=512) and its decode case T=64.
    for e, tile_m, n, has_map in ((8, 4, 24, True), (128, 64, 4096 * 8, False),
                                  (512, 64, 4096 * 8, False), (128, 16, 64 * 8, False)):
        lay = _align_layout(n, e, tile_m, ALIGN_SETTINGS)
        tag = f"E{e}_M{tile_m}_N{n}_map{int(has_map)}"
        cases.append((f"align_count_{tag}", align_count_kernel,
                      [a(i32, 1), a(i32, 1), a(i32, 2), s(i32), has_map, lay.chunk,
                       lay.count_sub, lay.e_pad]))
        cases.append((f"align_offsets_{tag}", align_offsets_kernel,
                      [a(i32, 2), s(i32), lay.scan_rows, lay.scan_cols]))
        cases.append((f"align_scatter_{tag}", align_scatter_kernel,
                      [a(i32, 1), a(i32, 1), a(i32, 2), a(i32, 1), a(i32, 1), a(i32, 1),
                       s(i32), s(i32), s(i32), has_map, lay.chunk, lay.pair_sub, tile_m,
                       ALIGN_SETTINGS.blocks_per_tile, lay.e_pad]))
    return cases
