"""The layer past 2**31 elements, on the GPU: real model sizes whose token-row buffers hold more
than 2**31 elements, so a 32-bit element offset anywhere in their kernels would go wrong.

* Mixtral-8x7B prefill (H=4096, E=8, I=14336, K=2) at T=65536: GEMM1's output ``cache1`` is
  (T*K or slots, 2I) = 3.8e9 elements in both layouts.
* DeepSeek-V3 (H=7168, E=256, I=2048, K=8, grouped router) at T=40960: ``cache3`` is
  (T*K, H) = 2.35e9 elements in replica order, and ``a_sorted``/``cache3`` (slots, H) = 2.46e9
  in slot order.

Each case runs the whole layer (router included) once, every intermediate buffer poisoned with
NaN first, on float16 weights ~ N(0, 1/fan_in) (``presets.make_problem``). Checks: every output
row is finite (each one was written), and a sample of token rows -- random ones, the last
tokens, and tokens routed to the highest experts (whose rows sit at the highest offsets) -- is
compared with a float64 reference computed for those rows only (their experts' weights
gathered). Tolerance: relative error 3e-3 over the sample (as test_layer.py: four float16
roundings) and 1e-2 per row (a row computed from wrong data is off by O(1)).

Memory: about 18 GB (Mixtral) and 39 GB (DeepSeek-V3) of GPU memory, one case at a time (the
buffers are freed after each). Run with ``pytest -m gpu tests/test_large_gpu.py``.
``test_sampled_check_on_the_emulator`` runs the same checking code on a small layer on the CPU,
so the harness itself is tested everywhere.
"""
import numpy as np
import pytest

from moe_tutorial import device, layer, presets
from moe_tutorial import reference as ref

LARGE = [("mixtral_8x7b", 65536), ("deepseek_v3", 40960)]
SAMPLE_TOKENS = 64
SAMPLE_TOL, ROW_TOL = 3e-3, 1e-2
POISON_INT = -123456789


def sample_tokens(ids, num_experts, rng, n=SAMPLE_TOKENS):
    """Token rows to check: the first and the last, the last tokens of the tail, the last
    tokens routed to each of the two highest experts, and random ones."""
    T = ids.shape[0]
    picks = [0, T - 1, *rng.integers(max(0, T - T // 16), T, size=n // 8)]
    for e in (num_experts - 1, num_experts - 2):
        routed = np.flatnonzero((ids == e).any(axis=1))
        picks.extend(routed[-(n // 8):])
    picks.extend(rng.integers(0, T, size=n))
    return np.unique(np.asarray(picks, dtype=np.int64))[:2 * n]


def reference_rows(hidden_states, w1, w2, weights, ids, tokens):
    """float64 layer output of ``tokens`` only (on the arrays' device): for each expert those
    tokens use, its weights gathered and converted once."""
    xp = device.array_module(hidden_states)
    x = hidden_states[xp.asarray(tokens)].astype(xp.float64)
    ids_s, w_s = device.to_numpy(ids)[tokens], device.to_numpy(weights)[tokens].astype(np.float64)
    out = xp.zeros((len(tokens), w2.shape[1]), dtype=xp.float64)
    for e in np.unique(ids_s[ids_s >= 0]):
        rows, slots = np.nonzero(ids_s == e)
        h = x[xp.asarray(rows)] @ w1[int(e)].astype(xp.float64).T
        y = ref.silu_and_mul(h) @ w2[int(e)].astype(xp.float64).T
        y *= xp.asarray(w_s[rows, slots])[:, None]
        for i, r in enumerate(rows):          # a token may list an expert twice: add
            out[int(r)] += y[i]
    return device.to_numpy(out)


def check_layer_on_sampled_rows(xp, preset, num_tokens, *, sorted_rows, fused_swiglu=False,
                                min_elements=0, seed=0):
    """Run the layer of ``preset`` at ``num_tokens`` with poisoned buffers and compare sampled
    rows with the float64 reference. Returns the largest intermediate's element count."""
    problem = presets.make_problem(preset, num_tokens, dtype="float16", xp=xp, seed=seed)
    plan = None
    try:
        T, H, E, I, K = (num_tokens, preset.hidden, preset.experts, preset.intermediate,
                         preset.top_k)
        config = layer.layer_config(T, H, E, I, K, np.dtype("float16"),
                                    fused_swiglu=fused_swiglu).replace(sorted_rows=sorted_rows)
        plan = layer.plan_layer(problem["hidden_states"], problem["w1"], problem["w2"],
                                problem["router_logits"], K,
                                e_score_correction_bias=problem.get("e_score_correction_bias"),
                                config=config, fused_swiglu=fused_swiglu,
                                **preset.router_kwargs())
        largest = max(b.size for b in plan.buffers.values())
        assert largest >= min_elements, f"largest buffer {largest} elements: not a large case"
        for buf in plan.buffers.values():
            buf[...] = np.nan if np.dtype(buf.dtype).kind == "f" else POISON_INT
        out = plan.run()
        finite = xp.isfinite(out).all(axis=1)
        bad = device.to_numpy(~finite)
        assert not bad.any(), f"{int(bad.sum())} output rows not finite (first: {bad.argmax()})"
        ids = device.to_numpy(plan.buffers["topk_ids"])
        tokens = sample_tokens(ids, E, np.random.default_rng(seed))
        want = reference_rows(problem["hidden_states"], problem["w1"], problem["w2"],
                              plan.buffers["topk_weights"], plan.buffers["topk_ids"], tokens)
        got = device.to_numpy(out[xp.asarray(tokens)]).astype(np.float64)
        err = ref.relative_error(got, want)
        row_err = np.linalg.norm(got - want, axis=1) / np.maximum(np.linalg.norm(want, axis=1),
                                                                 1e-30)
        worst = int(np.argmax(row_err))
        assert err <= SAMPLE_TOL, f"relative error {err:.3g} over {len(tokens)} sampled rows"
        assert row_err[worst] <= ROW_TOL, \
            f"token {tokens[worst]}: relative error {row_err[worst]:.3g}"
        return largest
    finally:                                   # free the buffers even when a check failed
        problem.clear()
        if plan is not None:
            plan.buffers.clear()
        if xp is not np:
            xp.get_default_memory_pool().free_all_blocks()


@pytest.mark.gpu
@pytest.mark.parametrize("sorted_rows", [True, False], ids=["slot_order", "replica_order"])
@pytest.mark.parametrize("name, num_tokens", LARGE, ids=[n for n, _ in LARGE])
def test_layer_past_2_31_elements(name, num_tokens, sorted_rows):
    import cupy as cp
    check_layer_on_sampled_rows(cp, presets.get(name, scaled=False), num_tokens,
                                sorted_rows=sorted_rows, min_elements=2**31)


@pytest.mark.gpu
def test_deepseek_v3_fused_swiglu_past_2_31_elements():
    """The SwiGLU-fused GEMM1 reads a_sorted (2.46e9 elements) as tiles."""
    import cupy as cp
    check_layer_on_sampled_rows(cp, presets.get("deepseek_v3", scaled=False), 40960,
                                sorted_rows=True, fused_swiglu=True, min_elements=2**31)


@pytest.mark.parametrize("sorted_rows", [True, False])
def test_sampled_check_on_the_emulator(sorted_rows):
    """The same harness on DeepSeek-V3's CPU twin (grouped router, 256 experts)."""
    preset = presets.get("deepseek_v3", scaled=True)
    check_layer_on_sampled_rows(np, preset, 24, sorted_rows=sorted_rows)
