"""The whole MoE layer (notebook 04): router -> align -> GEMM1 -> SiLU*mul -> GEMM2 -> sum.

``moe_forward`` follows vLLM's ``fused_moe`` argument style. Every step is a kernel launch on the
device of the inputs (cuTile on the GPU, the emulator on the CPU); nothing is copied to the host
and nothing waits for the GPU, because ``routing.align`` allocates its outputs at their worst-case
size and the GEMM skips the blocks it marks with expert id -1. That is also what makes the layer
capturable in a CUDA graph.

``plan_layer`` exposes the same pipeline as named steps over preallocated buffers, so a
benchmark can time each kernel on its own (notebook 04's bar chart); ``moe_forward`` is
``plan_layer(...).run()``.

Two baselines for comparison live here too: ``moe_forward_expert_loop`` (a plain per-expert loop
with array-library matmuls) and ``moe_forward_host_aligned`` (the cuTile sample's structure:
alignment by a Python loop over experts on the host, then the GEMM kernels).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import activation, device, reference, routing
from .fused_moe import TileConfig, default_tile_config, fused_moe_matmul, moe_sum

_FLOAT_DTYPES = ("float16", "bfloat16", "float32")


@dataclass
class LayerPlan:
    """The layer as ordered, named steps; each step reads/writes the buffers of the plan
    (``writes[step name]`` lists the buffers a step produces)."""
    steps: list[tuple[str, Callable[[], None]]]
    buffers: dict = field(default_factory=dict)
    config: TileConfig | None = None
    writes: dict = field(default_factory=dict)

    def run(self):
        for _, step in self.steps:
            step()
        return self.buffers["out"]


def _fail(exc, msg):
    raise exc(f"moe_forward: {msg}")


def _check_array(name, a, ndim):
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        _fail(TypeError, f"{name} must be a NumPy or CuPy array, got {type(a).__name__}")
    if a.ndim != ndim:
        _fail(ValueError, f"{name} must be {ndim}-D, got shape {tuple(a.shape)}")


def _check_int(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        _fail(TypeError, f"{name} must be an int, got {type(v).__name__}")
    if v < lo:
        _fail(ValueError, f"{name} must be >= {lo}, got {v}")


def _validate(hidden_states, w1, w2, router_logits, top_k, topk_weights, topk_ids,
              use_grouped_topk, n_group, topk_group, e_score_correction_bias, expert_map,
              config):
    """Shape/dtype/device checks (host metadata only: no device sync). Returns
    (T, H, E_local, E_global, I)."""
    _check_array("hidden_states", hidden_states, 2)
    _check_array("w1", w1, 3)
    _check_array("w2", w2, 3)
    T, H = hidden_states.shape
    E, two_i, h1 = w1.shape
    for name, a in (("hidden_states", hidden_states), ("w1", w1), ("w2", w2)):
        if np.dtype(a.dtype).name not in _FLOAT_DTYPES:
            _fail(TypeError, f"{name} has dtype {a.dtype}; supported: float16, float32 "
                             f"(bfloat16 on the CPU)")
    if not (hidden_states.dtype == w1.dtype == w2.dtype):
        _fail(TypeError, f"hidden_states, w1 and w2 must share one dtype, got "
                         f"{hidden_states.dtype}, {w1.dtype}, {w2.dtype}")
    if h1 != H:
        _fail(ValueError, f"w1 must be (E, 2I, H) with H={H} (hidden_states is {(T, H)}), got "
                          f"{tuple(w1.shape)}")
    if two_i % 2 or two_i == 0:
        _fail(ValueError, f"w1 must be (E, 2I, H): its middle axis holds gate and up rows and "
                          f"must be even and > 0, got {two_i}")
    I = two_i // 2
    if tuple(w2.shape) != (E, H, I):
        _fail(ValueError, f"w2 must be (E, H, I) = {(E, H, I)} to match w1 {tuple(w1.shape)}, "
                          f"got {tuple(w2.shape)}")
    if E == 0:
        _fail(ValueError, "w1 holds no experts (E = 0)")
    E_global = E
    if expert_map is not None:
        _check_array("expert_map", expert_map, 1)
        if np.dtype(expert_map.dtype).name != "int32":
            _fail(TypeError, f"expert_map must be int32, got {expert_map.dtype}")
        E_global = expert_map.shape[0]
    _check_int("top_k", top_k)
    if top_k > E_global:
        _fail(ValueError, f"top_k={top_k} is larger than the number of experts ({E_global})")
    if (topk_weights is None) != (topk_ids is None):
        _fail(ValueError, "pass both topk_weights and topk_ids, or neither")
    if topk_ids is not None:
        _check_array("topk_ids", topk_ids, 2)
        _check_array("topk_weights", topk_weights, 2)
        if tuple(topk_ids.shape) != (T, top_k) or tuple(topk_weights.shape) != (T, top_k):
            _fail(ValueError, f"topk_ids and topk_weights must be (T, top_k) = {(T, top_k)}, "
                              f"got {tuple(topk_ids.shape)} and {tuple(topk_weights.shape)}")
        if np.dtype(topk_ids.dtype).name != "int32":
            _fail(TypeError, f"topk_ids must be int32, got {topk_ids.dtype}")
        if np.dtype(topk_weights.dtype).kind != "f":
            _fail(TypeError, f"topk_weights must be floating point, got {topk_weights.dtype}")
    else:
        if router_logits is None:
            _fail(ValueError, "router_logits is required unless topk_weights/topk_ids are given")
        _check_array("router_logits", router_logits, 2)
        if tuple(router_logits.shape) != (T, E_global):
            what = "len(expert_map)" if expert_map is not None else "E"
            _fail(ValueError, f"router_logits must be (T, {what}) = {(T, E_global)}, got "
                              f"{tuple(router_logits.shape)}")
        if np.dtype(router_logits.dtype).kind != "f":
            _fail(TypeError, f"router_logits must be floating point, got {router_logits.dtype}")
        if use_grouped_topk:
            _check_int("n_group", n_group)
            _check_int("topk_group", topk_group)
            if E_global % n_group:
                _fail(ValueError, f"n_group={n_group} must divide the number of experts "
                                  f"({E_global})")
            if topk_group > n_group:
                _fail(ValueError, f"topk_group={topk_group} > n_group={n_group}")
            if top_k > topk_group * (E_global // n_group):
                _fail(ValueError, f"top_k={top_k} is more than the {topk_group} kept groups "
                                  f"hold ({topk_group * (E_global // n_group)} experts)")
            if e_score_correction_bias is not None:
                _check_array("e_score_correction_bias", e_score_correction_bias, 1)
                if e_score_correction_bias.shape[0] != E_global:
                    _fail(ValueError, f"e_score_correction_bias must have {E_global} entries, "
                                      f"got {e_score_correction_bias.shape[0]}")
        elif n_group is not None or topk_group is not None or \
                e_score_correction_bias is not None:
            _fail(ValueError, "n_group, topk_group and e_score_correction_bias need "
                              "use_grouped_topk=True")
    arrays = dict(hidden_states=hidden_states, w1=w1, w2=w2, router_logits=router_logits,
                  topk_weights=topk_weights, topk_ids=topk_ids, expert_map=expert_map,
                  e_score_correction_bias=e_score_correction_bias)
    on_gpu = {n: device.is_gpu_array(a) for n, a in arrays.items() if a is not None}
    if len(set(on_gpu.values())) > 1:
        where = ", ".join(f"{n} on {'GPU' if g else 'CPU'}" for n, g in on_gpu.items())
        _fail(TypeError, f"all arrays must be on the same device ({where})")
    if config is not None and not isinstance(config, TileConfig):
        _fail(TypeError, f"config must be a fused_moe.TileConfig, got {type(config).__name__}")
    return T, H, E, E_global, I


def plan_layer(hidden_states, w1, w2, router_logits, top_k: int, *, renormalize: bool = True,
               topk_weights=None, topk_ids=None, use_grouped_topk: bool = False, n_group=None,
               topk_group=None, e_score_correction_bias=None, routed_scaling_factor: float = 1.0,
               expert_map=None, config: TileConfig | None = None,
               validate: bool = False) -> LayerPlan:
    """Validate the arguments, allocate every buffer, and return the layer as named steps.
    Arguments as in :func:`moe_forward`."""
    T, H, E, E_global, I = _validate(hidden_states, w1, w2, router_logits, top_k, topk_weights,
                                     topk_ids, use_grouped_topk, n_group, topk_group,
                                     e_score_correction_bias, expert_map, config)
    xp = device.array_module(hidden_states)
    dtype = hidden_states.dtype
    K = int(top_k)
    cfg = config or default_tile_config(T, K, E, dtype)
    b = dict(out=xp.empty((T, H), dtype=dtype))
    plan = LayerPlan(steps=[], buffers=b, config=cfg)
    if T == 0:
        return plan                                   # nothing to launch

    b["cache1"] = xp.empty((T * K, 2 * I), dtype=dtype)   # gate|up per replica
    b["cache2"] = xp.empty((T * K, I), dtype=dtype)       # silu(gate) * up
    b["cache3"] = xp.empty((T * K, H), dtype=dtype)       # weighted expert outputs

    if topk_ids is not None:
        def router():
            b["topk_weights"] = topk_weights.astype(xp.float32)
            b["topk_ids"] = topk_ids
    elif use_grouped_topk:
        def router():
            b["topk_weights"], b["topk_ids"] = routing.grouped_topk(
                router_logits, K, n_group=n_group, topk_group=topk_group,
                e_score_correction_bias=e_score_correction_bias,
                routed_scaling_factor=routed_scaling_factor, renormalize=renormalize,
                validate=validate)
    else:
        def router():
            w, ids = routing.topk_softmax(router_logits, K, renormalize=renormalize,
                                          validate=validate)
            if routed_scaling_factor != 1.0:
                w *= np.float32(routed_scaling_factor)
            b["topk_weights"], b["topk_ids"] = w, ids

    def align():
        b["sorted_token_ids"], b["expert_ids"], b["num_tokens_post_padded"] = routing.align(
            b["topk_ids"], E, cfg.tile_m, expert_map=expert_map, validate=validate)

    def gemm1():
        fused_moe_matmul(hidden_states, w1, b["sorted_token_ids"], b["expert_ids"], top_k=K,
                         out=b["cache1"], config=cfg, validate=False)

    def act():
        activation.silu_and_mul(b["cache1"], out=b["cache2"])

    def gemm2():
        fused_moe_matmul(b["cache2"], w2, b["sorted_token_ids"], b["expert_ids"], top_k=1,
                         topk_weights=b["topk_weights"], mul_routed_weight=True,
                         out=b["cache3"], config=cfg, validate=False)

    def combine():
        moe_sum(b["cache3"], b["topk_ids"], E_global, expert_map=expert_map, out=b["out"])

    plan.steps = [("router", router), ("align", align), ("gemm1 (gate+up)", gemm1),
                  ("silu_and_mul", act), ("gemm2 (down, x weight)", gemm2),
                  ("sum over top-k", combine)]
    plan.writes = {"router": ("topk_weights", "topk_ids"),
                   "align": ("sorted_token_ids", "expert_ids", "num_tokens_post_padded"),
                   "gemm1 (gate+up)": ("cache1",), "silu_and_mul": ("cache2",),
                   "gemm2 (down, x weight)": ("cache3",), "sum over top-k": ("out",)}
    return plan


def moe_forward(hidden_states, w1, w2, router_logits, top_k: int, *, renormalize: bool = True,
                topk_weights=None, topk_ids=None, use_grouped_topk: bool = False, n_group=None,
                topk_group=None, e_score_correction_bias=None, routed_scaling_factor: float = 1.0,
                expert_map=None, config: TileConfig | None = None, validate: bool = False):
    """The MoE layer: ``(T, H)`` output of ``hidden_states (T, H)`` (same dtype).

    Args:
        hidden_states: (T, H) float16/float32 (bfloat16 on the CPU), NumPy or CuPy.
        w1: (E, 2I, H) gate rows then up rows of every (local) expert.
        w2: (E, H, I) down projection of every (local) expert.
        router_logits: (T, E_global) router logits (ignored when topk_* are given).
        top_k: experts per token.
        renormalize: the chosen experts' weights sum to 1.
        topk_weights, topk_ids: precomputed routing, (T, top_k) float / int32 (global ids,
            -1 = no expert).
        use_grouped_topk, n_group, topk_group, e_score_correction_bias,
        routed_scaling_factor: the DeepSeek-V3 router (sigmoid, bias for the choice, groups);
            routed_scaling_factor also scales softmax routing weights.
        expert_map: (E_global,) int32 global -> local expert id, -1 when on another rank; the
            result is then this rank's partial sum (other ranks' experts contribute 0).
        config: tile sizes for both GEMMs; default ``fused_moe.default_tile_config``.
        validate: also check values -- NaN logits, topk_ids and expert_map in range (the
            routing module's checks; a host sync on the GPU, so off by default).

    No host synchronization by default: shapes and dtypes are checked on the host, values are
    not (the kernels drop ids they cannot place instead of reading out of bounds).
    """
    return plan_layer(hidden_states, w1, w2, router_logits, top_k, renormalize=renormalize,
                      topk_weights=topk_weights, topk_ids=topk_ids,
                      use_grouped_topk=use_grouped_topk, n_group=n_group,
                      topk_group=topk_group, e_score_correction_bias=e_score_correction_bias,
                      routed_scaling_factor=routed_scaling_factor, expert_map=expert_map,
                      config=config, validate=validate).run()


# ---------------------------------------------------------------------------------------------
# Baselines (notebook 04 and the benchmark compare against these)
# ---------------------------------------------------------------------------------------------

def moe_forward_expert_loop(hidden_states, w1, w2, topk_weights, topk_ids):
    """A plain array-library layer: for each expert, find its tokens (a host sync per expert),
    run two matmuls (cuBLAS on the GPU) and add the weighted rows. No custom kernels."""
    xp = device.array_module(hidden_states)
    T, K = topk_ids.shape
    out = xp.zeros((T, hidden_states.shape[1]), dtype=xp.float32)
    flat_ids = topk_ids.reshape(-1)
    flat_w = topk_weights.reshape(-1).astype(xp.float32)
    I = w2.shape[2]
    for e in range(w1.shape[0]):
        replicas = xp.nonzero(flat_ids == e)[0]
        if replicas.shape[0] == 0:
            continue
        tokens = replicas // K
        h = (hidden_states[tokens] @ w1[e].T).astype(xp.float32)
        a = (h[:, :I] / (1 + xp.exp(-h[:, :I])) * h[:, I:]).astype(hidden_states.dtype)
        y = (a @ w2[e].T).astype(xp.float32) * flat_w[replicas, None]
        if xp is np:
            np.add.at(out, tokens, y)
        else:
            import cupyx
            cupyx.scatter_add(out, tokens, y)
    return out.astype(hidden_states.dtype)


def moe_forward_host_aligned(hidden_states, w1, w2, topk_weights, topk_ids, *,
                             config: TileConfig | None = None):
    """The cuTile sample's structure: copy the routing to the host, align with a Python loop
    over experts (``reference.align``), copy back, then run the same GEMM/activation/sum
    kernels as ``moe_forward``. The host round trip is what ``routing.align`` removes."""
    xp = device.array_module(hidden_states)
    T, K = topk_ids.shape
    E, two_i, H = w1.shape
    cfg = config or default_tile_config(T, K, E, hidden_states.dtype)
    sorted_ids, expert_ids, _ = reference.align(device.to_numpy(topk_ids), E, cfg.tile_m)
    sorted_ids, expert_ids = xp.asarray(sorted_ids), xp.asarray(expert_ids)
    cache1 = fused_moe_matmul(hidden_states, w1, sorted_ids, expert_ids, top_k=K, config=cfg,
                              validate=False)
    cache2 = activation.silu_and_mul(cache1)
    cache3 = fused_moe_matmul(cache2, w2, sorted_ids, expert_ids, top_k=1,
                              topk_weights=topk_weights, mul_routed_weight=True, config=cfg,
                              validate=False)
    return moe_sum(cache3, topk_ids, E)
