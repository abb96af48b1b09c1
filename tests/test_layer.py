"""The whole MoE layer (moe_forward) against the float64 reference.

Runs on the ``xp`` fixture (emulator here, ``ct.launch`` under ``pytest -m gpu``); the real model
presets run only under the gpu marker. The layer has two layouts of its intermediates
(``LayerConfig.sorted_rows``): slot order (the default: ``permute_rows`` first, tile loads in the
GEMMs) and replica order (notebook 04's gather/scatter GEMMs); tests that are about the layer as
a whole run both (test_sorted_rows.py checks the slot-order kernels one by one).

Tolerance, relative error in Frobenius norm against float64 (reference.moe_forward):
* float32 layer: 1e-5 -- fp32 routing, fp32 accumulation, fp32 intermediates (measured ~1e-7
  on the emulator).
* float16 layer: 3e-3 -- four float16 roundings in a row (gate/up, activation, weighted expert
  output, final sum), each <= 2**-12 relative (measured ~5e-4 on the emulator).
The router runs in float32 and the reference in float64: on random logits an expert choice
could only differ if two logits were within a few float32 ulps at the top-k boundary, which
has probability ~1e-5 per test here.
"""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_tutorial import device, layer, presets, sample_peer
from moe_tutorial import reference as ref
from moe_tutorial.fused_moe import (LayerConfig, TileConfig, default_layer_config,
                                   default_tile_config)

from conftest import examples

TOL = {"float32": 1e-5, "float16": 3e-3}


def _problem(xp, rng, T, H, E, I, dtype):
    x = rng.standard_normal((T, H)).astype(dtype)
    w1 = (rng.standard_normal((E, 2 * I, H)) / np.sqrt(H)).astype(dtype)
    w2 = (rng.standard_normal((E, H, I)) / np.sqrt(I)).astype(dtype)
    logits = rng.standard_normal((T, E)).astype(np.float32)
    return x, w1, w2, logits


def _assert_close(got, want, dtype_name):
    got = device.to_numpy(got)
    assert got.shape == want.shape
    assert np.isfinite(got.astype(np.float64)).all(), "non-finite output"
    err = ref.relative_error(got, want)
    assert err <= TOL[dtype_name], f"relative error {err:.3g} > {TOL[dtype_name]}"


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(T=st.integers(1, 20), H=st.integers(1, 80), E=st.integers(1, 10), I=st.integers(1, 60),
       K=st.integers(1, 4), renormalize=st.booleans(),
       dtype_name=st.sampled_from(["float16", "float32"]),
       tile_m=st.sampled_from([None, 16, 32, 64]), sorted_rows=st.booleans(), data=st.data())
def test_layer_matches_reference(xp, T, H, E, I, K, renormalize, dtype_name, tile_m, sorted_rows,
                                 data):
    """Random small layers in both layouts; tile_m=None: the config the layer picks itself
    (slot order by default; for replica order the same tiles with sorted_rows=False)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    K = min(K, E)
    x, w1, w2, logits = _problem(xp, rng, T, H, E, I, dtype_name)
    if tile_m is None:
        config = None if sorted_rows else layer.layer_config(
            T, H, E, I, K, np.dtype(dtype_name)).replace(sorted_rows=False)
    else:
        config = LayerConfig.of(TileConfig(tile_m, 32, 32, 4)).replace(sorted_rows=sorted_rows)
    got = layer.moe_forward(xp.asarray(x), xp.asarray(w1), xp.asarray(w2), xp.asarray(logits),
                            K, renormalize=renormalize, config=config)
    want = ref.moe_forward(x, w1, w2, logits, K, renormalize=renormalize)
    _assert_close(got, want, dtype_name)


def test_one_reference_under_the_old_names():
    """reference.py is the only float64 ground truth; the names the notebooks use are the
    same functions."""
    import moe_tutorial as mt
    from moe_tutorial import activation, routing
    assert routing.topk_softmax_reference is mt.topk_softmax_reference is ref.topk_softmax
    assert routing.grouped_topk_reference is mt.grouped_topk_reference is ref.grouped_topk
    assert routing.align_reference is mt.align_reference is ref.align
    x = np.array([[0.5, -1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_array_equal(activation.silu_and_mul_reference(x), ref.silu_and_mul(x))


def test_local_expert_ids_is_the_one_rule_for_dropping():
    """-1, ids past the map (or past num_experts without one), and map values of -1 or past
    the local experts all drop the replica."""
    ids = np.array([[0, 1, 2, 3, 4, -1, 9]], np.int32)
    emap = np.array([0, -1, 1, 3, 2], np.int32)            # 3: not a local expert (E=3)
    np.testing.assert_array_equal(ref.local_expert_ids(ids, 3, emap),
                                  [[0, -1, 1, -1, 2, -1, -1]])
    np.testing.assert_array_equal(ref.local_expert_ids(ids, 3), [[0, 1, 2, -1, -1, -1, -1]])


@pytest.mark.parametrize("sorted_rows", [True, False])
@pytest.mark.parametrize("tile_m", [16, 32, 64])
def test_precomputed_routing_with_duplicates_and_dropped_ids(xp, rng, tile_m, sorted_rows):
    """vLLM-style topk_weights/topk_ids: the same expert twice for one token (both count) and
    -1 entries (dropped: contribute nothing)."""
    T, H, E, I, K = 17, 48, 5, 40, 3
    x, w1, w2, _ = _problem(xp, rng, T, H, E, I, "float32")
    ids = rng.integers(-1, E, size=(T, K)).astype(np.int32)
    ids[0] = [2, 2, -1]
    weights = rng.random((T, K)).astype(np.float32)
    got = layer.moe_forward(xp.asarray(x), xp.asarray(w1), xp.asarray(w2), None, K,
                            topk_weights=xp.asarray(weights), topk_ids=xp.asarray(ids),
                            config=LayerConfig.of(TileConfig(tile_m, 32, 32, 4)).replace(
                                sorted_rows=sorted_rows))
    want = ref.moe_forward(x, w1, w2, None, K, topk_weights=weights, topk_ids=ids)
    _assert_close(got, want, "float32")


@pytest.mark.parametrize("sorted_rows", [True, False])
def test_expert_parallel_ranks_sum_to_the_full_layer(xp, rng, sorted_rows):
    """Split 12 experts over 3 ranks with expert maps: each rank's output is its partial sum,
    and the three partial sums add up to the single-rank layer."""
    T, H, E, I, K = 19, 40, 12, 24, 4
    x, w1, w2, logits = _problem(xp, rng, T, H, E, I, "float32")
    cfg = LayerConfig.of(default_tile_config(T, K, E, "float32")).replace(sorted_rows=sorted_rows)
    owner = rng.permutation(np.arange(E) % 3)            # rank of each global expert
    total = np.zeros((T, H))
    for rank in range(3):
        mine = np.flatnonzero(owner == rank)
        emap = np.full(E, -1, np.int32)
        emap[mine] = np.arange(len(mine), dtype=np.int32)
        got = layer.moe_forward(xp.asarray(x), xp.asarray(w1[mine]), xp.asarray(w2[mine]),
                                xp.asarray(logits), K, expert_map=xp.asarray(emap), config=cfg)
        want = ref.moe_forward(x, w1[mine], w2[mine], logits, K, expert_map=emap)
        _assert_close(got, want, "float32")
        total += device.to_numpy(got)
    _assert_close(total, ref.moe_forward(x, w1, w2, logits, K), "float32")
    full = layer.moe_forward(xp.asarray(x), xp.asarray(w1), xp.asarray(w2), xp.asarray(logits),
                             K, config=cfg)
    _assert_close(full, ref.moe_forward(x, w1, w2, logits, K), "float32")


@pytest.mark.parametrize("with_bias", [True, False])
def test_deepseek_style_grouped_router(xp, rng, with_bias):
    T, H, E, I, K = 13, 64, 32, 32, 4
    x, w1, w2, logits = _problem(xp, rng, T, H, E, I, "float16")
    bias = (0.1 * rng.standard_normal(E)).astype(np.float32) if with_bias else None
    kw = dict(use_grouped_topk=True, n_group=8, topk_group=3, routed_scaling_factor=2.5,
              e_score_correction_bias=bias)
    got = layer.moe_forward(xp.asarray(x), xp.asarray(w1), xp.asarray(w2), xp.asarray(logits),
                            K, **{**kw, "e_score_correction_bias":
                                  None if bias is None else xp.asarray(bias)})
    want = ref.moe_forward(x, w1, w2, logits, K, **kw)
    _assert_close(got, want, "float16")


@pytest.mark.parametrize("phase", ["decode", "prefill"])
@pytest.mark.parametrize("name", list(presets.CPU_PRESETS))
def test_scaled_presets(xp, name, phase):
    """The CPU twins of the real models (same E, K and router, small H and I)."""
    p = presets.CPU_PRESETS[name]
    prob = presets.make_problem(p, p.tokens(phase), xp=xp, seed=3)
    got = layer.moe_forward(prob["hidden_states"], prob["w1"], prob["w2"],
                            prob["router_logits"], p.top_k,
                            e_score_correction_bias=prob.get("e_score_correction_bias"),
                            **p.router_kwargs())
    want = ref.moe_forward(*(device.to_numpy(prob[k]) for k in
                             ("hidden_states", "w1", "w2", "router_logits")), p.top_k,
                           e_score_correction_bias=None if not p.grouped else
                           device.to_numpy(prob["e_score_correction_bias"]),
                           **p.router_kwargs())
    _assert_close(got, want, "float16")


def test_plan_steps_compose_to_moe_forward(xp, rng):
    """plan_layer's named steps (used to time each kernel) give the same output, in both
    layouts: by default the rows are permuted into slot order after the alignment; with
    sorted_rows=False the steps are notebook 04's."""
    x, w1, w2, logits = _problem(xp, rng, 9, 32, 6, 16, "float32")
    args = (xp.asarray(x), xp.asarray(w1), xp.asarray(w2), xp.asarray(logits), 2)
    want = ref.moe_forward(x, w1, w2, logits, 2)
    plan = layer.plan_layer(*args)
    assert plan.config.sorted_rows
    assert [n for n, _ in plan.steps] == ["router", "align", layer.PERMUTE_STEP,
                                          "gemm1 (gate+up)", "silu_and_mul",
                                          "gemm2 (down, x weight)", "sum over top-k"]
    assert plan.writes[layer.PERMUTE_STEP] == ("a_sorted", "positions")
    np.testing.assert_array_equal(device.to_numpy(plan.run()),
                                  device.to_numpy(layer.moe_forward(*args)))
    _assert_close(plan.buffers["out"], want, "float32")

    cfg = LayerConfig.of(default_tile_config(9, 2, 6, "float32"))
    gather = layer.plan_layer(*args, config=cfg.replace(sorted_rows=False))
    assert not gather.config.sorted_rows
    assert [n for n, _ in gather.steps] == ["router", "align", "gemm1 (gate+up)", "silu_and_mul",
                                            "gemm2 (down, x weight)", "sum over top-k"]
    assert layer.PERMUTE_STEP not in gather.writes
    np.testing.assert_array_equal(
        device.to_numpy(gather.run()),
        device.to_numpy(layer.moe_forward(*args, config=cfg.replace(sorted_rows=False))))
    _assert_close(gather.buffers["out"], want, "float32")


def test_no_tokens(xp):
    out = layer.moe_forward(xp.zeros((0, 8), np.float16), xp.zeros((2, 6, 8), np.float16),
                            xp.zeros((2, 8, 3), np.float16), xp.zeros((0, 2), np.float32), 1)
    assert out.shape == (0, 8) and out.dtype == np.float16


def test_baselines_agree(xp, rng):
    """The per-expert loop and the re-implemented cuTile sample compute the same layer."""
    x, w1, w2, logits = _problem(xp, rng, 11, 32, 6, 24, "float32")
    weights, ids = ref.topk_softmax(logits, 2, renormalize=True)
    want = ref.moe_forward(x, w1, w2, None, 2, topk_weights=weights, topk_ids=ids)
    args = [xp.asarray(a) for a in (x, w1, w2, weights.astype(np.float32), ids)]
    _assert_close(layer.moe_forward_expert_loop(*args), want, "float32")
    _assert_close(sample_peer.moe_forward(*args), want, "float32")


def test_validate_checks_values(xp):
    """validate=True adds the value checks (a host sync on the GPU): ids out of range."""
    x, w1, w2 = (xp.zeros(s, np.float32) for s in ((3, 8), (4, 6, 8), (4, 8, 3)))
    ids = xp.asarray(np.array([[0, 5]] * 3, np.int32))            # 5 >= E = 4
    with pytest.raises(ValueError, match="topk_ids must be in"):
        layer.moe_forward(x, w1, w2, None, 2, topk_weights=xp.ones((3, 2), np.float32),
                          topk_ids=ids, validate=True)


def _good():
    return dict(hidden_states=np.zeros((4, 8), np.float16), w1=np.zeros((3, 10, 8), np.float16),
                w2=np.zeros((3, 8, 5), np.float16), router_logits=np.zeros((4, 3), np.float32),
                top_k=2)


@pytest.mark.parametrize("change, match", [
    (dict(hidden_states=np.zeros((4, 8, 1), np.float16)), "hidden_states must be 2-D"),
    (dict(hidden_states=np.zeros((4, 8), np.int32)), "hidden_states has dtype int32"),
    (dict(w1=np.zeros((3, 10, 8), np.float32)), "share one dtype"),
    (dict(w1=np.zeros((3, 10, 9), np.float16)), r"w1 must be \(E, 2I, H\) with H=8"),
    (dict(w1=np.zeros((3, 9, 8), np.float16)), "must be even"),
    (dict(w2=np.zeros((3, 8, 4), np.float16)), r"w2 must be \(E, H, I\) = \(3, 8, 5\)"),
    (dict(router_logits=np.zeros((4, 5), np.float32)), r"router_logits must be \(T, E\)"),
    (dict(router_logits=None), "router_logits is required"),
    (dict(top_k=4), "top_k=4 is larger than the number of experts"),
    (dict(top_k=0), "top_k must be >= 1"),
    (dict(topk_ids=np.zeros((4, 2), np.int32)), "pass both topk_weights and topk_ids"),
    (dict(topk_ids=np.zeros((4, 2), np.int64), topk_weights=np.zeros((4, 2), np.float32)),
     "topk_ids must be int32"),
    (dict(topk_ids=np.zeros((4, 3), np.int32), topk_weights=np.zeros((4, 3), np.float32)),
     r"must be \(T, top_k\)"),
    (dict(n_group=2), "need use_grouped_topk=True"),
    (dict(use_grouped_topk=True, n_group=2, topk_group=1), "n_group=2 must divide"),
    (dict(expert_map=np.zeros(3, np.int64)), "expert_map must be int32"),
    (dict(config=(16, 64, 64)), "config must be a fused_moe.TileConfig"),
])
def test_bad_input_is_refused_with_a_clear_error(change, match):
    kwargs = {**_good(), **change}
    with pytest.raises((ValueError, TypeError), match=match):
        layer.moe_forward(**kwargs)


# ---------------------------------------------------------------------------------------------
# GPU only: real model sizes, and "no host sync" proven by CUDA graph capture
# ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("phase", ["decode", "prefill"])
@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_real_presets_on_gpu(name, phase):
    import cupy as cp
    p = presets.PRESETS[name]
    prob = presets.make_problem(p, p.tokens(phase), xp=cp, seed=5)
    kw = dict(e_score_correction_bias=prob.get("e_score_correction_bias"), **p.router_kwargs())
    args = [prob[k] for k in ("hidden_states", "w1", "w2", "router_logits")]
    got = layer.moe_forward(*args, p.top_k, **kw)
    want = ref.moe_forward(*args, p.top_k, **kw)         # float64 on the GPU (cuBLAS DGEMM)
    _assert_close(got, want, "float16")
    del prob, args
    cp.get_default_memory_pool().free_all_blocks()


# ---------------------------------------------------------------------------------------------
# Notebook 05: the fused SwiGLU epilogue, per-GEMM configs, tuned-table lookup, graph capture
# ---------------------------------------------------------------------------------------------

@settings(max_examples=examples(20), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(T=st.integers(1, 20), H=st.integers(8, 80), E=st.integers(1, 10), I=st.integers(8, 60),
       K=st.integers(1, 4), dtype_name=st.sampled_from(["float16", "float32"]),
       tile_m=st.sampled_from([16, 32, 64]), tiles1=st.sampled_from([(16, 32), (32, 16), (64, 64)]),
       tiles2=st.sampled_from([(16, 32), (32, 64), (64, 16)]), sorted_rows=st.booleans(),
       data=st.data())
def test_fused_swiglu_layer_matches_reference_and_unfused(xp, T, H, E, I, K, dtype_name, tile_m,
                                                          tiles1, tiles2, sorted_rows, data):
    """moe_forward(fused_swiglu=True) against the float64 reference and against the unfused
    layer with the same configs; the two GEMMs get different tiles (same tile_m). The fused path
    rounds once less (no float16 gate|up intermediate), so both stay within the layer tolerance
    of the reference and within twice of it of each other. (H, I >= 8: with one or two terms an
    output can be a float16 subnormal, whose relative rounding error is not 2**-11.) Both
    layouts (sorted_rows)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    K = min(K, E)
    x, w1, w2, logits = _problem(xp, rng, T, H, E, I, dtype_name)
    cfg = LayerConfig(TileConfig(tile_m, *tiles1, 2), TileConfig(tile_m, *tiles2, 4), sorted_rows)
    a = (xp.asarray(x), xp.asarray(w1), xp.asarray(w2), xp.asarray(logits), K)
    fused = layer.moe_forward(*a, config=cfg, fused_swiglu=True)
    unfused = layer.moe_forward(*a, config=cfg)
    want = ref.moe_forward(x, w1, w2, logits, K)
    _assert_close(fused, want, dtype_name)
    _assert_close(unfused, want, dtype_name)
    diff = ref.relative_error(device.to_numpy(fused), device.to_numpy(unfused).astype(np.float64))
    assert diff <= 2 * TOL[dtype_name], f"fused vs unfused differ by {diff:.3g}"


@pytest.mark.parametrize("sorted_rows", [True, False])
def test_fused_plan_has_one_gemm1_step_and_no_gate_up_buffer(xp, rng, sorted_rows):
    x, w1, w2, logits = _problem(xp, rng, 9, 32, 6, 16, "float32")
    args = (xp.asarray(x), xp.asarray(w1), xp.asarray(w2), xp.asarray(logits), 2)
    cfg = LayerConfig.of(default_tile_config(9, 2, 6, "float32")).replace(sorted_rows=sorted_rows)
    plan = layer.plan_layer(*args, fused_swiglu=True, config=cfg)
    permute = [layer.PERMUTE_STEP] if sorted_rows else []
    assert [n for n, _ in plan.steps] == ["router", "align", *permute, layer.FUSED_STEP,
                                          "gemm2 (down, x weight)", "sum over top-k"]
    assert "cache1" not in plan.buffers and plan.writes[layer.FUSED_STEP] == ("cache2",)
    _assert_close(plan.run(), ref.moe_forward(x, w1, w2, logits, 2), "float32")


def test_deepseek_router_with_fused_swiglu_and_expert_map(xp, rng):
    """The fused path with the grouped router and an expert-parallel rank (half the experts)."""
    T, H, E, I, K = 11, 48, 16, 40, 4
    x, w1, w2, logits = _problem(xp, rng, T, H, E, I, "float32")
    mine = np.arange(0, E, 2)
    emap = np.full(E, -1, np.int32)
    emap[mine] = np.arange(len(mine), dtype=np.int32)
    kw = dict(use_grouped_topk=True, n_group=4, topk_group=2, routed_scaling_factor=2.5)
    got = layer.moe_forward(xp.asarray(x), xp.asarray(w1[mine]), xp.asarray(w2[mine]),
                            xp.asarray(logits), K, expert_map=xp.asarray(emap),
                            fused_swiglu=True, **kw)
    _assert_close(got, ref.moe_forward(x, w1[mine], w2[mine], logits, K, expert_map=emap, **kw),
                  "float32")


def _tuned_table(path, shape, gemm1, gemm2, gemm1_swiglu=None, sorted_rows=None):
    """A one-entry table; sorted_rows=None writes no "sorted_rows" key (an older table)."""
    from moe_tutorial import tuning
    entry = {"shape": dict(zip("THEIK", shape)), "gemm1": tuning.config_to_dict(gemm1),
             "gemm2": tuning.config_to_dict(gemm2)}
    if sorted_rows is not None:
        entry["sorted_rows"] = sorted_rows
    if gemm1_swiglu is not None:
        entry["gemm1_swiglu"] = tuning.config_to_dict(gemm1_swiglu)
    path.write_text(json.dumps({"format": 1, "gpu": "test", "dtype": "float32",
                                "entries": [entry]}))
    return path


@pytest.mark.parametrize("table_sorted_rows, layout", [(None, False), (True, True),
                                                       (False, False)])
def test_config_none_uses_the_tuned_table_then_the_default_rule(xp, rng, tmp_path, monkeypatch,
                                                                table_sorted_rows, layout):
    """With a table for the layer's (H, E, I, K) the layer runs its configs (the unfused or
    the fused GEMM1 entry) in the layout the entry was tuned for (no "sorted_rows" key: an
    older table, tuned on the gather/scatter layer); for another shape, or without a table,
    the default rule, in slot order."""
    T, H, E, I, K = 12, 40, 5, 24, 2
    g1, g2, g1s = (TileConfig(32, 16, 16, 2), TileConfig(32, 32, 16, 4),
                   TileConfig(32, 16, 32, 1, latency=5))
    monkeypatch.setenv("MOE_TUTORIAL_TUNED_CONFIGS",
                       str(_tuned_table(tmp_path / "t.json", (T, H, E, I, K), g1, g2, g1s,
                                        sorted_rows=table_sorted_rows)))
    x, w1, w2, logits = _problem(xp, rng, T, H, E, I, "float32")
    args = (xp.asarray(x), xp.asarray(w1), xp.asarray(w2), xp.asarray(logits), K)
    want = ref.moe_forward(x, w1, w2, logits, K)
    for fused, gemm1 in ((False, g1), (True, g1s)):
        plan = layer.plan_layer(*args, fused_swiglu=fused)
        assert plan.config == LayerConfig(gemm1, g2, layout)
        assert (layer.PERMUTE_STEP in dict(plan.steps)) == layout
        _assert_close(plan.run(), want, "float32")
    x2, w1b, w2b, logits2 = _problem(xp, rng, T, H + 8, E, I, "float32")   # another H
    other = layer.plan_layer(xp.asarray(x2), xp.asarray(w1b), xp.asarray(w2b),
                             xp.asarray(logits2), K)
    assert other.config == default_layer_config(T, H + 8, E, I, K, "float32")
    assert other.config.sorted_rows
    monkeypatch.setenv("MOE_TUTORIAL_TUNED_CONFIGS", "off")
    assert layer.plan_layer(*args).config == default_layer_config(T, H, E, I, K, "float32")
    assert layer.plan_layer(*args, fused_swiglu=True).config == \
        default_layer_config(T, H, E, I, K, "float32", fused_swiglu=True)


def test_a_broken_tuned_table_falls_back_with_a_warning(xp, rng, tmp_path, monkeypatch):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    monkeypatch.setenv("MOE_TUTORIAL_TUNED_CONFIGS", str(bad))
    x, w1, w2, logits = _problem(xp, rng, 5, 16, 3, 8, "float32")
    with pytest.warns(RuntimeWarning, match="ignoring the tuned-config table"):
        got = layer.moe_forward(xp.asarray(x), xp.asarray(w1), xp.asarray(w2),
                                xp.asarray(logits), 2)
    _assert_close(got, ref.moe_forward(x, w1, w2, logits, 2), "float32")


def test_capture_needs_the_gpu_and_no_host_sync():
    x, w1, w2 = np.zeros((2, 8), np.float16), np.zeros((2, 6, 8), np.float16), \
        np.zeros((2, 8, 3), np.float16)
    with pytest.raises(TypeError, match="CUDA graphs need the GPU"):
        layer.capture(x, w1, w2, np.zeros((2, 2), np.float32), 1)
    with pytest.raises(ValueError, match="validate=True"):
        layer.capture(x, w1, w2, np.zeros((2, 2), np.float32), 1, validate=True)


@pytest.mark.gpu
@pytest.mark.parametrize("sorted_rows", [True, False])
@pytest.mark.parametrize("fused", [False, True])
def test_captured_layer_replays_on_fresh_inputs(fused, sorted_rows):
    """layer.capture records the whole layer (no host sync anywhere, or the capture fails);
    calling it with fresh inputs replays the graph: the output matches the float64 reference
    and, bit for bit, the eager layer on the same inputs (same kernels, deterministic).
    split_steps=True (one graph per step) gives the same output too. Both layouts (the configs
    the layer would pick, with sorted_rows set)."""
    import cupy as cp
    p = presets.PRESETS["qwen3_30b_a3b"]
    T = p.decode_tokens
    prob = presets.make_problem(p, T, xp=cp, seed=1)
    x, w1, w2, logits = (prob[k] for k in ("hidden_states", "w1", "w2", "router_logits"))
    cfg = layer.layer_config(T, p.hidden, p.experts, p.intermediate, p.top_k, x.dtype,
                             fused_swiglu=fused).replace(sorted_rows=sorted_rows)
    captured = layer.capture(x, w1, w2, logits, p.top_k, fused_swiglu=fused, config=cfg,
                             **p.router_kwargs())
    assert len(captured.graphs) == 1
    assert (layer.PERMUTE_STEP in dict(captured.plan.steps)) == sorted_rows
    for seed in (2, 3):
        fresh = presets.make_problem(p, T, xp=cp, seed=seed)
        out = captured(fresh["hidden_states"], fresh["router_logits"]).copy()
        eager = layer.moe_forward(fresh["hidden_states"], w1, w2, fresh["router_logits"],
                                  p.top_k, fused_swiglu=fused, config=cfg, **p.router_kwargs())
        assert cp.array_equal(out, eager)
        want = ref.moe_forward(fresh["hidden_states"], w1, w2, fresh["router_logits"], p.top_k,
                               **p.router_kwargs())
        _assert_close(out, want, "float16")
    split = layer.capture(x, w1, w2, logits, p.top_k, fused_swiglu=fused, split_steps=True,
                          config=cfg, **p.router_kwargs())
    assert split.step_names == [n for n, _ in split.plan.steps]
    assert cp.array_equal(split(fresh["hidden_states"], fresh["router_logits"]), eager)
    with pytest.raises(ValueError, match="must be"):
        captured(fresh["hidden_states"][:1])
    del captured, split, prob
    cp.get_default_memory_pool().free_all_blocks()


@pytest.mark.gpu
@pytest.mark.parametrize("sorted_rows", [True, False])
def test_captured_layer_with_precomputed_routing_and_grouped_router(sorted_rows):
    import cupy as cp
    p = presets.CPU_PRESETS["deepseek_v3"]
    prob = presets.make_problem(p, 8, xp=cp, seed=4)
    x, w1, w2, logits = (prob[k] for k in ("hidden_states", "w1", "w2", "router_logits"))
    cfg = LayerConfig.of(default_tile_config(8, p.top_k, p.experts, x.dtype)).replace(
        sorted_rows=sorted_rows)
    kw = dict(e_score_correction_bias=prob["e_score_correction_bias"], **p.router_kwargs())
    captured = layer.capture(x, w1, w2, logits, p.top_k, fused_swiglu=True, config=cfg, **kw)
    assert (layer.PERMUTE_STEP in dict(captured.plan.steps)) == sorted_rows
    _assert_close(captured.out, ref.moe_forward(x, w1, w2, logits, p.top_k, **kw), "float16")
    weights, ids = ref.topk_softmax(logits, p.top_k, renormalize=True)
    w32, ids32 = cp.asarray(weights.astype(np.float32)), cp.asarray(ids)
    given = layer.capture(x, w1, w2, None, p.top_k, topk_weights=w32, topk_ids=ids32,
                          config=cfg)
    ids2 = cp.asarray(np.roll(device.to_numpy(ids), 1, axis=1))
    out = given(x, topk_weights=w32, topk_ids=ids2)
    want = ref.moe_forward(x, w1, w2, None, p.top_k, topk_weights=weights,
                           topk_ids=device.to_numpy(ids2))
    _assert_close(out, want, "float16")
    with pytest.raises(ValueError, match="router_logits was not an input"):
        given(x, logits)
