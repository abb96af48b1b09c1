"""The whole MoE layer (notebooks 04-05): router -> align -> GEMM1 -> SiLU*mul -> GEMM2 -> sum.

``moe_forward`` follows vLLM's ``fused_moe`` argument style. Every step is a kernel launch on the
device of the inputs (cuTile on the GPU, the emulator on the CPU); nothing is copied to the host
and nothing waits for the GPU, because ``routing.align`` allocates its outputs at their worst-case
size and the GEMM skips the blocks it marks with expert id -1. That is also what makes the layer
capturable in a CUDA graph.

``plan_layer`` exposes the same pipeline as named steps over preallocated buffers, so a
benchmark can time each kernel on its own (notebook 04's bar chart); ``moe_forward`` is
``plan_layer(...).run()``.

Notebook 05's speed-ups are options of the same layer:
- tile sizes and compiler hints per GEMM (``fused_moe.LayerConfig``); with ``config=None`` they
  come from the tuned table of this GPU (``moe_tutorial.tuning``), else the default rule;
- ``fused_swiglu=True``: GEMM1 writes ``silu(gate) * up`` directly (one launch and the
  ``(T*K, 2I)`` intermediate fewer);
- ``capture(...)``: the whole layer recorded once in a CUDA graph over fixed buffers and
  replayed with one launch (decode batches are launch-bound otherwise);
- rows in slot order (``LayerConfig.sorted_rows``, on by default): one ``permute_rows`` launch
  copies each replica's token row to its slot of the alignment, every intermediate keeps that
  order, and the GEMMs load and store rectangular tiles instead of gathering and scattering
  rows (what that buys depends on the GEMM: notebook 05 prints a recorded comparison); the
  top-k sum finds each replica's row through
  ``positions``. ``sorted_rows=False`` is notebook 04's layer.

A baseline for comparison lives here too: ``moe_forward_expert_loop`` (a plain per-expert loop
with array-library matmuls); NVIDIA's cuTile sample, re-implemented, is ``sample_peer``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import activation, arguments, device, routing, tuning
from .fused_moe import (LayerConfig, TileConfig, default_layer_config, fused_moe_matmul, moe_sum,
                        permute_rows)

_FLOAT_DTYPES = ("float16", "bfloat16", "float32")


@dataclass
class LayerPlan:
    """The layer as ordered, named steps; each step reads/writes the buffers of the plan
    (``writes[step name]`` lists the buffers a step produces)."""
    steps: list[tuple[str, Callable[[], None]]]
    buffers: dict = field(default_factory=dict)
    config: LayerConfig | None = None
    writes: dict = field(default_factory=dict)
    fused_swiglu: bool = False

    def run(self):
        for _, step in self.steps:
            step()
        return self.buffers["out"]


def _fail(exc, msg):
    arguments.fail("moe_forward", exc, msg)


def _check_array(name, a, ndim):
    arguments.require_array("moe_forward", name, a, ndim)


def _check_int(name, v, lo=1):
    return arguments.require_int("moe_forward", name, v, lo=lo)


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
    if config is not None and not isinstance(config, (TileConfig, LayerConfig)):
        _fail(TypeError, f"config must be a fused_moe.TileConfig or LayerConfig, got "
                         f"{type(config).__name__}")
    return T, H, E, E_global, I


def layer_config(num_tokens: int, hidden: int, num_experts: int, intermediate: int,
                 top_k: int, dtype, *, config=None, fused_swiglu: bool = False) -> LayerConfig:
    """The tile configs the layer runs with: ``config`` if given (a TileConfig serves both
    GEMMs), else this GPU's tuned table entry for the shape (``tuning.lookup``), else the
    default rule ``fused_moe.default_layer_config``."""
    if config is not None:
        return LayerConfig.of(config)
    tuned = tuning.lookup(num_tokens, hidden, num_experts, intermediate, top_k, dtype,
                          fused_swiglu=fused_swiglu)
    if tuned is not None:
        return tuned
    return default_layer_config(num_tokens, hidden, num_experts, intermediate, top_k, dtype,
                                fused_swiglu=fused_swiglu)


def plan_layer(hidden_states, w1, w2, router_logits, top_k: int, *, renormalize: bool = True,
               topk_weights=None, topk_ids=None, use_grouped_topk: bool = False, n_group=None,
               topk_group=None, e_score_correction_bias=None, routed_scaling_factor: float = 1.0,
               expert_map=None, config: TileConfig | LayerConfig | None = None,
               fused_swiglu: bool = False, validate: bool = False) -> LayerPlan:
    """Validate the arguments, allocate every buffer, and return the layer as named steps.
    Arguments as in :func:`moe_forward`."""
    T, H, E, E_global, I = _validate(hidden_states, w1, w2, router_logits, top_k, topk_weights,
                                     topk_ids, use_grouped_topk, n_group, topk_group,
                                     e_score_correction_bias, expert_map, config)
    if not isinstance(fused_swiglu, bool):
        _fail(TypeError, f"fused_swiglu must be a bool, got {fused_swiglu!r}")
    arguments.require_bool("moe_forward", "validate", validate)
    xp = device.array_module(hidden_states)
    dtype = hidden_states.dtype
    K = int(top_k)
    cfg = layer_config(T, H, E, I, K, dtype, config=config, fused_swiglu=fused_swiglu)
    b = dict(out=xp.empty((T, H), dtype=dtype))
    plan = LayerPlan(steps=[], buffers=b, config=cfg, fused_swiglu=fused_swiglu)
    if T == 0:
        return plan                                   # nothing to launch

    # rows of the intermediates: one per replica, or (sorted_rows) one per slot of the
    # alignment, whose worst-case size is known before routing
    srt = cfg.sorted_rows
    rows = routing.max_padded_size(T * K, E, cfg.tile_m) if srt else T * K
    if srt:
        b["a_sorted"] = xp.empty((rows, H), dtype=dtype)      # token rows in slot order
        b["positions"] = xp.empty((T * K,), dtype=xp.int32)   # slot of each replica
    if not fused_swiglu:
        b["cache1"] = xp.empty((rows, 2 * I), dtype=dtype)    # gate|up per replica
    b["cache2"] = xp.empty((rows, I), dtype=dtype)        # silu(gate) * up
    b["cache3"] = xp.empty((rows, H), dtype=dtype)        # weighted expert outputs
    a1 = b["a_sorted"] if srt else hidden_states

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

    def permute():
        permute_rows(hidden_states, b["sorted_token_ids"], b["expert_ids"], K,
                     out=b["a_sorted"], positions=b["positions"], validate=validate)

    def gemm1():
        fused_moe_matmul(a1, w1, b["sorted_token_ids"], b["expert_ids"], top_k=K,
                         out=b["cache1"], config=cfg.gemm1, sorted_rows=srt, validate=False)

    def act():
        activation.silu_and_mul(b["cache1"], out=b["cache2"])

    def gemm1_swiglu():
        fused_moe_matmul(a1, w1, b["sorted_token_ids"], b["expert_ids"], top_k=K,
                         swiglu=True, out=b["cache2"], config=cfg.gemm1, sorted_rows=srt,
                         validate=False)

    def gemm2():
        fused_moe_matmul(b["cache2"], w2, b["sorted_token_ids"], b["expert_ids"], top_k=1,
                         topk_weights=b["topk_weights"], mul_routed_weight=True,
                         out=b["cache3"], config=cfg.gemm2, sorted_rows=srt, validate=False)

    def combine():
        moe_sum(b["cache3"], b["topk_ids"], E, expert_map=expert_map,
                positions=b.get("positions"), out=b["out"], validate=validate)

    if fused_swiglu:
        middle = [(FUSED_STEP, gemm1_swiglu)]
        plan.writes = {FUSED_STEP: ("cache2",)}
    else:
        middle = [("gemm1 (gate+up)", gemm1), ("silu_and_mul", act)]
        plan.writes = {"gemm1 (gate+up)": ("cache1",), "silu_and_mul": ("cache2",)}
    first = [("router", router), ("align", align)]
    if srt:
        first.append((PERMUTE_STEP, permute))
        plan.writes[PERMUTE_STEP] = ("a_sorted", "positions")
    plan.steps = [*first, *middle,
                  ("gemm2 (down, x weight)", gemm2), ("sum over top-k", combine)]
    plan.writes.update({"router": ("topk_weights", "topk_ids"),
                        "align": ("sorted_token_ids", "expert_ids", "num_tokens_post_padded"),
                        "gemm2 (down, x weight)": ("cache3",), "sum over top-k": ("out",)})
    return plan


FUSED_STEP = "gemm1 + silu_and_mul (fused)"
PERMUTE_STEP = "permute rows"


def moe_forward(hidden_states, w1, w2, router_logits, top_k: int, *, renormalize: bool = True,
                topk_weights=None, topk_ids=None, use_grouped_topk: bool = False, n_group=None,
                topk_group=None, e_score_correction_bias=None, routed_scaling_factor: float = 1.0,
                expert_map=None, config: TileConfig | LayerConfig | None = None,
                fused_swiglu: bool = False, validate: bool = False):
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
        expert_map: (E_global,) int32 global -> local expert id in ``[0, E)``, -1 when on
            another rank; the result is then this rank's partial sum (other ranks' experts
            contribute 0). One rule everywhere (align, the GEMMs, the top-k sum; see
            ``reference.local_expert_ids``): a replica is computed iff its id is in
            ``[0, E_global)`` and maps to a local expert in ``[0, E)``; any other id or map
            value drops the replica like -1 -- or, with ``validate=True``, is refused.
        config: tile sizes (and compiler hints) of the two GEMMs: a ``TileConfig`` for both or
            a ``LayerConfig`` per GEMM; default (None): this GPU's tuned table
            (``moe_tutorial.tuning``), else ``fused_moe.default_layer_config``.
        fused_swiglu: GEMM1 computes ``silu(gate) * up`` in its epilogue (one kernel instead
            of GEMM1 + ``silu_and_mul``; the ``(T*K, 2I)`` intermediate is never written).
        validate: also check values -- NaN logits, topk_ids and expert_map in range, the
            alignment consistent (host syncs on the GPU, so off by default).

    No host synchronization by default: shapes and dtypes are checked on the host, values are
    not (the kernels drop ids they cannot place instead of reading out of bounds).
    """
    return plan_layer(hidden_states, w1, w2, router_logits, top_k, renormalize=renormalize,
                      topk_weights=topk_weights, topk_ids=topk_ids,
                      use_grouped_topk=use_grouped_topk, n_group=n_group,
                      topk_group=topk_group, e_score_correction_bias=e_score_correction_bias,
                      routed_scaling_factor=routed_scaling_factor, expert_map=expert_map,
                      config=config, fused_swiglu=fused_swiglu, validate=validate).run()


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
        xp.add.at(out, tokens, y)           # a token may list the same expert twice
    return out.astype(hidden_states.dtype)


# ---------------------------------------------------------------------------------------------
# CUDA graph capture (notebook 05)
# ---------------------------------------------------------------------------------------------

class CapturedLayer:
    """The MoE layer recorded in a CUDA graph over fixed buffers (see :func:`capture`).

    ``layer(hidden_states, router_logits)`` copies new inputs into the captured input buffers
    (same shapes and dtypes), replays the graph and returns ``out`` -- a fixed (T, H) buffer
    that the next replay overwrites (copy it to keep it). ``replay()`` only launches the
    graph(s) on ``stream`` (what a benchmark times). ``graphs`` holds one graph for the whole
    layer, or one per step (``split_steps=True``, ``step_names`` names them) to time kernels
    one by one."""

    def __init__(self, plan, graphs, step_names, stream, pool, inputs, keep):
        self.plan = plan
        self.graphs = graphs
        self.step_names = step_names
        self.stream = stream
        self._pool = pool          # the memory of every captured buffer: must outlive the graphs
        self.inputs = inputs       # name -> captured input buffer
        self._keep = keep          # arrays the graphs read (weights, bias, expert map)

    @property
    def out(self):
        return self.plan.buffers["out"]

    def replay(self):
        for g in self.graphs:
            g.launch(self.stream)

    def __call__(self, hidden_states=None, router_logits=None, *, topk_weights=None,
                 topk_ids=None):
        import cupy as cp
        caller = cp.cuda.get_current_stream()
        self.stream.wait_event(caller.record())       # the new inputs may come from `caller`
        with self.stream:
            for name, new in (("hidden_states", hidden_states), ("router_logits", router_logits),
                              ("topk_weights", topk_weights), ("topk_ids", topk_ids)):
                if new is None:
                    continue
                if name not in self.inputs:
                    arguments.fail("CapturedLayer", ValueError,
                                   f"{name} was not an input of the captured "
                                   f"layer (it used {', '.join(self.inputs)})")
                dst = self.inputs[name]
                if tuple(new.shape) != tuple(dst.shape) or new.dtype != dst.dtype:
                    arguments.fail("CapturedLayer", ValueError,
                                   f"{name} must be {tuple(dst.shape)} "
                                   f"{dst.dtype} like the captured one, got "
                                   f"{tuple(new.shape)} {new.dtype}")
                dst[...] = new
            self.replay()
        caller.wait_event(self.stream.record())        # `out` is ready for the caller's stream
        return self.out


def capture(hidden_states, w1, w2, router_logits, top_k: int, *, split_steps: bool = False,
            **kwargs) -> CapturedLayer:
    """Record the whole layer (router to output) in a CUDA graph; CuPy arrays only.

    Arguments as in :func:`moe_forward` (``kwargs``: ``renormalize``, ``config``,
    ``fused_swiglu``, the router options, precomputed ``topk_weights``/``topk_ids``,
    ``expert_map``; ``validate`` must stay False: value checks synchronise with the host).

    Why it works: no step of the layer waits for the host (worst-case-sized alignment, blocks of
    expert -1 exit), so one stream capture records every launch. The activations
    (``hidden_states``, ``router_logits``, or ``topk_weights``/``topk_ids``) are copied into
    captured buffers that the returned callable refills; the weights are used in place and must
    not be freed or moved. Every buffer the graph touches comes from a private memory pool kept
    alive by the returned object, so later allocations elsewhere can never reuse it. The layer
    runs twice before the capture (compiling every kernel, and leaving freed blocks of every
    size in the pool, so the capture allocates nothing new)."""
    if kwargs.get("validate"):
        arguments.fail("capture", ValueError,
                       "validate=True synchronises with the host (value checks), "
                       "which a CUDA graph cannot record; capture with validate=False")
    if not all(device.is_gpu_array(a) for a in (hidden_states, w1, w2)):
        arguments.fail("capture", TypeError, "CUDA graphs need the GPU -- pass CuPy arrays "
                                             "(hidden_states, w1 and w2 are not all CuPy arrays)")
    import cupy as cp
    stream = cp.cuda.Stream(non_blocking=True)
    pool = cp.cuda.MemoryPool()
    inputs = {}
    caller = cp.cuda.get_current_stream()
    stream.wait_event(caller.record())
    with cp.cuda.using_allocator(pool.malloc), stream:
        for name, a in (("hidden_states", hidden_states), ("router_logits", router_logits),
                        ("topk_weights", kwargs.get("topk_weights")),
                        ("topk_ids", kwargs.get("topk_ids"))):
            if a is not None:
                inputs[name] = a.copy()
        if "topk_weights" in inputs:
            kwargs.update(topk_weights=inputs["topk_weights"], topk_ids=inputs["topk_ids"])
        plan = plan_layer(inputs["hidden_states"], w1, w2, inputs.get("router_logits"), top_k,
                          **kwargs)
        plan.run()                        # compiles every kernel
        plan.run()                        # frees the first run's buffers into the pool
        stream.synchronize()
        groups = [plan.steps] if not split_steps else [[s] for s in plan.steps]
        graphs = []
        for steps in groups:
            stream.begin_capture()
            try:
                for _, step in steps:
                    step()
            finally:
                graph = stream.end_capture()
            graphs.append(graph)
        names = ["layer"] if not split_steps else [n for n, _ in plan.steps]
        layer = CapturedLayer(plan, graphs, names, stream, pool, inputs,
                              keep=(w1, w2, kwargs.get("e_score_correction_bias"),
                                    kwargs.get("expert_map")))
        layer.replay()                    # the captured buffers now hold this input's result
    caller.wait_event(stream.record())
    return layer
