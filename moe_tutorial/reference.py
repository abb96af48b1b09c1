"""Ground truth for the MoE layer: plain float64 array code, no kernels.

Everything here is written for clarity, not speed: the router, the expert alignment, one expert
GEMM in the layout the fused kernel computes, and the whole layer

    out[t] = sum_k  weight[t, k] * W2[e] @ (silu(W1_gate[e] @ x[t]) * (W1_up[e] @ x[t])),
             e = topk_ids[t, k]

The functions take NumPy arrays (the ground truth used by the tests and notebooks) and return
float64 NumPy arrays. ``moe_forward`` also accepts CuPy arrays and then does the same float64 math
on the GPU (cuBLAS DGEMM): the GPU benchmark uses that to check real model sizes in
milliseconds instead of minutes; the arithmetic and the code path are the same.
"""
from __future__ import annotations

import numpy as np

from . import device


def _f64(xp, a):
    return xp.asarray(a).astype(xp.float64)


# ---------------------------------------------------------------------------------------------
# Router
# ---------------------------------------------------------------------------------------------

def _topk_desc(xp, scores, k):
    """Indices of the k largest entries per row, largest first; ties go to the lower index."""
    order = xp.argsort(-scores, axis=1, kind="stable") if xp is np else xp.argsort(-scores, axis=1)
    return order[:, :k]


def topk_softmax(router_logits, top_k: int, *, renormalize: bool = False):
    """Softmax over experts, then the ``top_k`` largest probabilities; ties go to the lower
    expert id. The experts are chosen on the logits themselves (softmax is monotonic, and two
    logits far below the maximum can round to the same probability), as the kernel does.

    Returns ``(weights float64 (T, K), ids int32 (T, K))``, ids sorted by descending weight."""
    xp = device.array_module(router_logits)
    logits = _f64(xp, router_logits)
    ids = _topk_desc(xp, logits, top_k)
    with np.errstate(invalid="ignore"):
        p = xp.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
    weights = xp.take_along_axis(p, ids, axis=1)
    if renormalize:
        weights = weights / weights.sum(axis=1, keepdims=True)
    return weights, ids.astype(xp.int32)


def grouped_topk(router_logits, top_k: int, *, n_group: int, topk_group: int,
                 e_score_correction_bias=None, routed_scaling_factor: float = 1.0,
                 renormalize: bool = True, return_scores: bool = False):
    """DeepSeek-V3 routing (vLLM's ``grouped_topk`` with ``scoring_func="sigmoid"``).

    1. scores = sigmoid(logits); the *choice* uses scores + e_score_correction_bias.
    2. Experts form ``n_group`` equal groups; a group's score is the sum of its two best biased
       scores (with a bias) or its best score (without one).
    3. Only experts in the ``topk_group`` best groups stay eligible; pick ``top_k`` of them.
    4. Weights are the *unbiased* scores of the chosen experts, renormalized if asked, times
       ``routed_scaling_factor``.
    Ties go to the lower group / expert id. Returns ``(weights float64, ids int32)``; with
    ``return_scores=True`` also ``(biased scores (T, E), group scores (T, n_group), kept-group
    mask (T, E))`` so tests can see how close each decision was.
    """
    xp = device.array_module(router_logits)
    logits = _f64(xp, router_logits)
    T, E = logits.shape
    if E % n_group:
        raise ValueError(f"grouped_topk: num_experts={E} is not divisible by n_group={n_group}")
    with np.errstate(over="ignore"):
        scores = 1.0 / (1.0 + xp.exp(-logits))
    choice = scores if e_score_correction_bias is None else \
        scores + _f64(xp, e_score_correction_bias)[None, :]
    grouped = choice.reshape(T, n_group, E // n_group)
    if e_score_correction_bias is None:
        group_scores = grouped.max(axis=2)
    else:
        group_scores = -xp.sort(-grouped, axis=2)[:, :, :2].sum(axis=2)
    best_groups = _topk_desc(xp, group_scores, topk_group)
    group_mask = (xp.arange(n_group)[None, None, :] == best_groups[:, :, None]).any(axis=1)
    eligible = xp.repeat(group_mask, E // n_group, axis=1)
    masked = xp.where(eligible, choice, -xp.inf)
    ids = _topk_desc(xp, masked, top_k)
    weights = xp.take_along_axis(scores, ids, axis=1)
    if renormalize:
        weights = weights / weights.sum(axis=1, keepdims=True)
    out = (weights * routed_scaling_factor, ids.astype(xp.int32))
    return out + ((choice, group_scores, eligible),) if return_scores else out


# ---------------------------------------------------------------------------------------------
# Which expert computes a replica (the one meaning of expert_map, for every kernel)
# ---------------------------------------------------------------------------------------------

def local_expert_ids(topk_ids, num_experts: int, expert_map=None):
    """The local expert of every replica, -1 where it is dropped: an id outside ``[0,
    len(expert_map))`` (``[0, num_experts)`` without a map), or mapped to a value outside ``[0,
    num_experts)`` (-1: another rank's expert). ``align``, ``moe_sum`` and hence the GEMMs
    treat the routing exactly this way. Returns int64 of ``topk_ids``' shape and device."""
    xp = device.array_module(topk_ids)
    ids = xp.asarray(topk_ids).astype(xp.int64)
    if expert_map is not None:
        emap = xp.asarray(expert_map).astype(xp.int64)
        inside = (ids >= 0) & (ids < emap.shape[0])
        ids = xp.where(inside, emap[xp.where(inside, ids, 0)], -1)
    return xp.where((ids >= 0) & (ids < num_experts), ids, -1)


# ---------------------------------------------------------------------------------------------
# Alignment (what routing.align computes on the device), as a readable loop over experts
# ---------------------------------------------------------------------------------------------

def align(topk_ids, num_experts: int, tile_m: int, *, expert_map=None):
    """Group token replicas ``t*K + k`` by (local) expert, pad each group to a multiple of
    ``tile_m`` with the sentinel ``T*K`` -- a loop over experts, as in cuTile's samples/MoE.py.

    Returns ``(sorted_token_ids, expert_ids, num_tokens_post_padded)`` (int32 NumPy) with the
    same worst-case sizes as ``routing.align``: ``len(sorted_token_ids) = round_up(T*K +
    E*(tile_m-1), tile_m)`` where E is the number of local experts; ``expert_ids`` has one entry
    per ``tile_m`` block, -1 past the used part. Dropped replicas (see ``local_expert_ids``)
    are not listed."""
    ids = np.asarray(device.to_numpy(topk_ids))
    if ids.ndim != 2:
        raise ValueError(f"align: topk_ids must have shape (T, K), got {ids.shape}")
    T, K = ids.shape
    emap = None if expert_map is None else device.to_numpy(expert_map)
    local = local_expert_ids(ids, num_experts, emap).reshape(-1)
    size = -(-(T * K + num_experts * (tile_m - 1)) // tile_m) * tile_m
    sorted_ids = np.full(size, T * K, dtype=np.int32)
    expert_ids = np.full(size // tile_m, -1, dtype=np.int32)
    pos = 0
    for e in range(num_experts):
        replicas = np.flatnonzero(local == e)          # ascending: stable inside the expert
        if len(replicas) == 0:
            continue
        sorted_ids[pos:pos + len(replicas)] = replicas
        n_blocks = -(-len(replicas) // tile_m)
        expert_ids[pos // tile_m:pos // tile_m + n_blocks] = e
        pos += n_blocks * tile_m
    return sorted_ids, expert_ids, np.array([pos], dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# The expert GEMM and the layer
# ---------------------------------------------------------------------------------------------

def silu_and_mul(x):
    """(M, 2I) -> (M, I): silu(gate) * up, gate = first half (float64, on ``x``'s device)."""
    xp = device.array_module(x)
    x = _f64(xp, x)
    i = x.shape[-1] // 2
    g, u = x[..., :i], x[..., i:]
    with np.errstate(over="ignore", invalid="ignore"):
        return g / (1.0 + xp.exp(-g)) * u


def grouped_matmul(a, w, topk_ids, *, row_divisor: int, topk_weights=None, expert_map=None):
    """What one ``fused_moe_matmul`` launch computes, replica by replica.

    Row ``r = t*K + k`` of the result is ``a[r // row_divisor] @ w[e].T`` (times
    ``topk_weights[t, k]`` if given) where ``e`` is the local expert of replica ``r``. Rows of
    dropped replicas (see ``local_expert_ids``) are NaN: the kernel must not write them.
    Returns float64 (T*K, N)."""
    a = _f64(np, device.to_numpy(a))
    w_host = device.to_numpy(w)
    emap = None if expert_map is None else device.to_numpy(expert_map)
    ids = local_expert_ids(device.to_numpy(topk_ids), w_host.shape[0], emap).reshape(-1)
    out = np.full((ids.shape[0], w_host.shape[1]), np.nan)
    for e in np.unique(ids[ids >= 0]):
        rows = np.flatnonzero(ids == e)
        out[rows] = a[rows // row_divisor] @ w_host[e].astype(np.float64).T
    if topk_weights is not None:
        out *= _f64(np, device.to_numpy(topk_weights)).reshape(-1, 1)
    return out


def route(router_logits, top_k: int, *, renormalize: bool = True, use_grouped_topk: bool = False,
          n_group=None, topk_group=None, e_score_correction_bias=None,
          routed_scaling_factor: float = 1.0):
    """The router of ``moe_forward``: ``(weights float64, ids int32)``."""
    if use_grouped_topk:
        return grouped_topk(router_logits, top_k, n_group=n_group, topk_group=topk_group,
                            e_score_correction_bias=e_score_correction_bias,
                            routed_scaling_factor=routed_scaling_factor, renormalize=renormalize)
    weights, ids = topk_softmax(router_logits, top_k, renormalize=renormalize)
    return weights * routed_scaling_factor, ids


def moe_forward(hidden_states, w1, w2, router_logits, top_k: int, *, renormalize: bool = True,
                topk_weights=None, topk_ids=None, use_grouped_topk: bool = False, n_group=None,
                topk_group=None, e_score_correction_bias=None,
                routed_scaling_factor: float = 1.0, expert_map=None):
    """The whole MoE layer in float64, same arguments as ``moe_tutorial.moe_forward``.

    ``w1 (E, 2I, H)`` holds gate rows then up rows; ``w2 (E, H, I)``. With ``expert_map``
    (global id -> local id or -1) the layer is this rank's share: replicas routed to other
    ranks contribute zero (dropped replicas: see ``local_expert_ids``). Returns ``(T, H)``
    float64 on the device of ``hidden_states``."""
    xp = device.array_module(hidden_states)
    x = _f64(xp, hidden_states)
    if topk_ids is None:
        topk_weights, topk_ids = route(router_logits, top_k, renormalize=renormalize,
                                       use_grouped_topk=use_grouped_topk, n_group=n_group,
                                       topk_group=topk_group,
                                       e_score_correction_bias=e_score_correction_bias,
                                       routed_scaling_factor=routed_scaling_factor)
    weights = _f64(xp, topk_weights)
    ids = local_expert_ids(xp.asarray(topk_ids), w1.shape[0],
                           None if expert_map is None else xp.asarray(expert_map))
    T, K = ids.shape
    out = xp.zeros((T, w2.shape[1]), dtype=xp.float64)
    flat_ids = ids.reshape(-1)
    flat_w = weights.reshape(-1)
    used = device.to_numpy(xp.unique(flat_ids[flat_ids >= 0]))
    for e in used:
        replicas = xp.nonzero(flat_ids == int(e))[0]
        tokens = replicas // K
        h = x[tokens] @ _f64(xp, w1[int(e)]).T
        y = silu_and_mul(h) @ _f64(xp, w2[int(e)]).T
        # a token can list the same expert twice (precomputed ids): add, don't overwrite
        xp.add.at(out, tokens, y * flat_w[replicas, None])
    return out


def relative_error(got, want) -> float:
    """``||got - want|| / ||want||`` (Frobenius norm, float64 on the host)."""
    g = device.to_numpy(got).astype(np.float64)
    w = device.to_numpy(want).astype(np.float64)
    denom = np.linalg.norm(w)
    return float(np.linalg.norm(g - w) / (denom if denom > 0 else 1.0))
