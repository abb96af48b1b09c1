"""The fused gather/scatter MoE matmul against the float64 reference.

These tests pin the replica-order layout (``fused_moe_matmul``'s default ``sorted_rows=False``:
A gathered row by row, C scattered); the slot-order path that the layer uses by default
(``sorted_rows=True``, ``permute_rows``, ``moe_sum(positions=...)``) is tested in
test_sorted_rows.py with the same tolerances.

Every test runs on the ``xp`` fixture: NumPy + the CPU emulator here, CuPy + ``ct.launch`` under
``pytest -m gpu``. Outputs are poisoned with NaN first, so rows the kernel must not touch (dropped
replicas) and rows it forgot are both caught.

Tolerances (relative error in Frobenius norm against float64, plus an elementwise bound):
* float32: 1e-5. Inputs are exact in float64, products are accumulated in float32 over at most
  a few hundred terms (error ~ sqrt(Kd) * 2**-24 ~ 1e-6) and the result is rounded once to
  float32 (6e-8). Measured on the emulator: ~4e-8.
* float16: 2e-3. The result is rounded once to float16 (half an ulp = 2**-12 = 2.4e-4 relative,
  ~2.8e-4 in norm for uniform rounding errors); fp32 accumulation adds nothing visible.
  Measured on the emulator: ~2e-4.
* bfloat16 (CPU only): 1.6e-2, the same argument with 8-bit mantissas (half ulp 2**-9).
Any indexing bug (wrong row, wrong expert, unmasked edge, missing weight) is off by O(1).
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cuda.tile as ct
from moe_tutorial import device, fused_moe as fm, reference as ref
from moe_tutorial.compile import export_cubin

from conftest import examples

NORM_TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}


def _dtype(xp, name):
    if name == "bfloat16":
        if xp is not np:
            pytest.skip("CuPy has no bfloat16")
        import ml_dtypes
        return ml_dtypes.bfloat16
    return np.dtype(name)


def _routing(rng, T, K, E, *, duplicates=False, drop_fraction=0.0, num_global=None):
    """Random topk_ids (T, K) int32 over ``num_global`` experts (default E) and float32 weights."""
    G = num_global or E
    if duplicates:
        ids = rng.integers(0, G, size=(T, K))
    else:
        ids = np.stack([rng.permutation(G)[:K] for _ in range(T)]) if T else \
            np.zeros((0, K), np.int64)
    if drop_fraction:
        ids = np.where(rng.random((T, K)) < drop_fraction, -1, ids)
    weights = rng.random((T, K)).astype(np.float32)
    return weights, ids.astype(np.int32)


def _check(xp, got, want, dtype_name):
    """NaN rows of ``want`` must still be NaN in ``got`` (untouched); the rest within NORM_TOL."""
    got = device.to_numpy(got).astype(np.float64)
    skip = np.isnan(want).all(axis=1)
    assert np.isnan(got[skip]).all(), "the kernel wrote rows of replicas it must skip"
    g, w = got[~skip], want[~skip]
    assert not np.isnan(g).any(), f"{int(np.isnan(g).any(axis=1).sum())} rows were never written"
    err = ref.relative_error(g, w)
    assert err <= NORM_TOL[dtype_name], f"relative error {err:.3g} > {NORM_TOL[dtype_name]}"
    scale = np.sqrt(np.mean(w ** 2)) if w.size else 1.0
    np.testing.assert_allclose(g, w, rtol=10 * NORM_TOL[dtype_name],
                               atol=10 * NORM_TOL[dtype_name] * scale)


def _run_gemm(xp, rng, *, T, H, N, E, K, dtype_name, config, gemm2=False, duplicates=False,
              drop_fraction=0.0, expert_map=None, num_global=None):
    dt = _dtype(xp, dtype_name)
    weights, ids = _routing(rng, T, K, E, duplicates=duplicates, drop_fraction=drop_fraction,
                            num_global=num_global)
    rows = T * K if gemm2 else T
    a = rng.standard_normal((rows, H)).astype(dt)
    w = (rng.standard_normal((E, N, H)) / math.sqrt(max(H, 1))).astype(dt)
    sorted_ids, expert_ids, _ = ref.align(ids, E, config.tile_m, expert_map=expert_map)
    out = xp.full((T * K, N), np.nan, dtype=dt)
    fm.fused_moe_matmul(xp.asarray(a), xp.asarray(w), xp.asarray(sorted_ids),
                        xp.asarray(expert_ids), top_k=1 if gemm2 else K,
                        topk_weights=xp.asarray(weights) if gemm2 else None,
                        mul_routed_weight=gemm2, out=out, config=config)
    want = ref.grouped_matmul(a, w, ids, row_divisor=1 if gemm2 else K,
                              topk_weights=weights if gemm2 else None, expert_map=expert_map)
    _check(xp, out, want, dtype_name)


tiles = st.builds(fm.TileConfig, tile_m=st.sampled_from([16, 32, 64]),
                  tile_n=st.sampled_from([16, 32, 64]), tile_k=st.sampled_from([16, 32, 64]),
                  group_size_m=st.sampled_from([1, 2, 8]), transpose_b=st.booleans())


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(T=st.integers(1, 24), H=st.integers(1, 100), N=st.integers(1, 100), E=st.integers(1, 9),
       K=st.integers(1, 4), gemm2=st.booleans(), duplicates=st.booleans(),
       drop=st.sampled_from([0.0, 0.0, 0.3]), dtype_name=st.sampled_from(["float16", "float32"]),
       config=tiles, data=st.data())
def test_matches_reference(xp, T, H, N, E, K, gemm2, duplicates, drop, dtype_name, config, data):
    """Random small problems: any H (K dim) and N, duplicate ids, dropped (-1) replicas, empty
    experts (E up to 9 with T*K often smaller), all tile shapes, both GEMMs."""
    K = min(K, E) if not duplicates else K
    seed = data.draw(st.integers(0, 2**31 - 1))
    _run_gemm(xp, np.random.default_rng(seed), T=T, H=H, N=N, E=E, K=K, dtype_name=dtype_name,
              config=config, gemm2=gemm2, duplicates=duplicates, drop_fraction=drop)


@settings(max_examples=examples(15), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(T=st.integers(1, 16), E_global=st.integers(2, 12), K=st.integers(1, 3),
       gemm2=st.booleans(), data=st.data())
def test_expert_parallel_map(xp, T, E_global, K, gemm2, data):
    """An EP rank holds some experts (local ids via expert_map); replicas routed to other ranks
    are dropped by align and must not be written."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    local = rng.permutation(E_global)[:rng.integers(1, E_global + 1)]
    emap = np.full(E_global, -1, np.int32)
    emap[local] = np.arange(len(local), dtype=np.int32)
    _run_gemm(xp, rng, T=T, H=40, N=24, E=len(local), K=min(K, E_global), dtype_name="float32",
              config=fm.TileConfig(16, 16, 32, 4), gemm2=gemm2, expert_map=emap,
              num_global=E_global)


@pytest.mark.parametrize("case", ["one_expert", "T1", "E1", "K_equals_E", "edges"])
def test_edge_cases(xp, rng, case):
    cfg = fm.TileConfig(16, 32, 32, 8)
    if case == "one_expert":    # every replica on expert 0 of 4: several m-blocks, 3 empty
        T, K, E = 40, 1, 4
        dt = np.float32
        a = rng.standard_normal((T, 48)).astype(dt)
        w = rng.standard_normal((E, 20, 48)).astype(dt) / 7
        ids = np.zeros((T, K), np.int32)
        s, e, _ = ref.align(ids, E, cfg.tile_m)
        out = xp.full((T * K, 20), np.nan, dtype=dt)
        fm.fused_moe_matmul(xp.asarray(a), xp.asarray(w), xp.asarray(s), xp.asarray(e), top_k=K,
                            out=out, config=cfg)
        _check(xp, out, ref.grouped_matmul(a, w, ids, row_divisor=K), "float32")
        return
    shapes = {"T1": dict(T=1, H=33, N=17, E=5, K=3), "E1": dict(T=7, H=64, N=64, E=1, K=1),
              "K_equals_E": dict(T=9, H=31, N=65, E=4, K=4),
              "edges": dict(T=13, H=129, N=97, E=3, K=2)}[case]
    for gemm2 in (False, True):
        _run_gemm(xp, rng, dtype_name="float16", config=cfg, gemm2=gemm2, **shapes)


def test_bfloat16_on_the_emulator(rng):
    for gemm2 in (False, True):
        _run_gemm(np, rng, T=11, H=70, N=50, E=3, K=2, dtype_name="bfloat16",
                  config=fm.TileConfig(16, 32, 32, 2), gemm2=gemm2)


def test_padding_blocks_and_foreign_experts_are_skipped(xp, rng):
    """Blocks with expert id -1 leave their rows alone even if sorted_token_ids lists real
    replicas there (the kernel trusts the expert id, as for other ranks' experts)."""
    T, K, E, H, N = 6, 2, 3, 16, 16
    a = rng.standard_normal((T, H)).astype(np.float32)
    w = rng.standard_normal((E, N, H)).astype(np.float32)
    sorted_ids = np.arange(T * K, dtype=np.int32)
    sorted_ids = np.concatenate([sorted_ids, np.full(32 - T * K, T * K, np.int32)])
    expert_ids = np.array([-1, 1], np.int32)       # block 0 (replicas 0..11) is "foreign"
    out = xp.full((T * K, N), np.nan, dtype=np.float32)
    fm.fused_moe_matmul(xp.asarray(a), xp.asarray(w), xp.asarray(sorted_ids),
                        xp.asarray(expert_ids), top_k=K, out=out,
                        config=fm.TileConfig(16, 16, 16, 8))
    assert np.isnan(device.to_numpy(out)).all()


def test_moe_sum_skips_dropped_replicas(xp, rng):
    """Rows of dropped replicas hold garbage (NaN here); the sum must not read them."""
    T, K, H, E = 21, 3, 150, 6
    ids = rng.integers(-1, E, size=(T, K)).astype(np.int32)
    emap = np.array([0, -1, 1, 2, -1, 3], np.int32)
    y = rng.standard_normal((T * K, H)).astype(np.float32)
    flat = ids.reshape(-1)
    used = (flat >= 0) & (emap[np.clip(flat, 0, None)] >= 0)
    for emap_arg, computed in ((xp.asarray(emap), used), (None, flat >= 0)):
        y_dev = np.where(computed[:, None], y, np.nan)      # never-written rows: NaN
        want = np.where(computed.reshape(T, K, 1), y.reshape(T, K, H), 0.0).sum(axis=1)
        got = fm.moe_sum(xp.asarray(y_dev), xp.asarray(ids), E, expert_map=emap_arg)
        np.testing.assert_allclose(device.to_numpy(got), want, rtol=1e-6, atol=1e-5)


def test_swizzle_is_a_grouped_bijection():
    """Every (m, n) pair is computed exactly once, and inside each group of GROUP_SIZE_M
    m-blocks the block order runs down m first."""
    for num_m, num_n, group in ((1, 1, 8), (7, 3, 2), (16, 5, 8), (9, 4, 4), (3, 10, 1)):
        pairs = [fm.swizzle_2d(b, num_m, num_n, group) for b in range(num_m * num_n)]
        assert sorted(pairs) == [(m, n) for m in range(num_m) for n in range(num_n)]
        gm = min(group, num_m)
        assert pairs[:gm] == [(m, 0) for m in range(gm)]


@pytest.mark.parametrize("bad, match", [
    (dict(a="1d"), "a must be 2-D"),
    (dict(a_dtype="int32"), "a has dtype int32"),
    (dict(w_dtype="float16"), "same dtype"),
    (dict(kd=5), "Kd=5"),
    (dict(ids_dtype="int64"), "sorted_token_ids must be int32"),
    (dict(tile_m=32), "same tile_m"),
    (dict(expert=7), r"expert_ids\[0\] = 7"),
    (dict(top_k=0), "top_k must be a positive int"),
    (dict(weights=None), "needs topk_weights"),
    (dict(out_shape=(3, 4)), "out must be"),
    (dict(sorted_rows=True), r"sorted_rows=True, a must have one row per slot .*\(16\)"),
    (dict(sorted_rows="yes"), "sorted_rows must be a bool"),
])
def test_bad_input_is_refused_with_a_clear_error(bad, match):
    a = np.zeros((4, 8), np.float32) if bad.get("a") != "1d" else np.zeros(8, np.float32)
    a = a.astype(bad.get("a_dtype", "float32"))
    w = np.zeros((3, 6, bad.get("kd", 8)), dtype=bad.get("w_dtype", "float32"))
    sorted_ids = np.full(16, 8, dtype=bad.get("ids_dtype", "int32"))
    expert_ids = np.array([bad.get("expert", 0)], np.int32)
    kwargs = dict(top_k=bad.get("top_k", 2), config=fm.TileConfig(bad.get("tile_m", 16), 16, 16))
    if "weights" in bad:
        kwargs.update(mul_routed_weight=True, topk_weights=None)
    if "out_shape" in bad:
        kwargs["out"] = np.zeros(bad["out_shape"], np.float32)
    if "sorted_rows" in bad:
        kwargs["sorted_rows"] = bad["sorted_rows"]
    with pytest.raises((ValueError, TypeError), match=match):
        fm.fused_moe_matmul(a, w, sorted_ids, expert_ids, **kwargs)


def test_default_tile_rule():
    T = fm.TileConfig
    assert fm.default_tile_config(2, 8, 64) == T(16, 64, 128, 2, occupancy=2)   # ~1 per expert
    assert fm.default_tile_config(48, 8, 64) == T(64, 128, 128, 2)              # 6 per expert
    assert fm.default_tile_config(2048, 8, 256) == T(128, 128, 64, 2)           # 64 per expert
    assert fm.default_tile_config(4096, 8, 64) == T(128, 128, 64, 8)            # 512: 4 blocks
    assert fm.default_tile_config(4096, 8, 64, "float32").tile_k == 32
    # a GEMM one K step deep gets a wider weight tile; the output width caps tile_n
    assert fm.default_tile_config(256, 6, 1408, depth=32, width=2048) == \
        T(16, 512, 32, 2, occupancy=2)
    assert fm.default_tile_config(256, 6, 1408, depth=2048, width=32).tile_n == 32
    assert fm.default_tile_config(48, 8, 64, depth=16).tile_k == 16
    with pytest.raises(ValueError, match="power of two"):
        fm.TileConfig(24, 64, 64)


def test_default_layer_config_per_gemm():
    """GEMM1 (depth H, width 2I; half the columns with SwiGLU fused) and GEMM2 (depth I,
    width H) of the rule, as the layer uses them without a tuned table."""
    unfused = fm.default_layer_config(256, 2048, 1408, 32, 6)
    fused = fm.default_layer_config(256, 2048, 1408, 32, 6, fused_swiglu=True)
    assert unfused.gemm1 == fm.TileConfig(16, 64, 128, 2, occupancy=2)
    assert fused.gemm1.tile_n == 32 and fused.gemm2 == unfused.gemm2
    assert unfused.gemm2 == fm.TileConfig(16, 512, 32, 2, occupancy=2)
    big = fm.default_layer_config(4096, 4096, 8, 14336, 2, fused_swiglu=True)
    assert (big.gemm1.tile_m, big.gemm1.tile_n, big.gemm1.tile_k) == (128, 64, 64)
    assert big.sorted_rows


def test_index_arithmetic_cannot_overflow_int32():
    """The analysis behind 'no int32 overflow', checked against the real model sizes.

    1. Only an array whose own extent or stride passes int32 needs 64-bit indexing: cuTile forms
       tile and gather addresses in 64 bits (measured on an H200: int32-indexed tile loads and
       stores past element 2**31 were exact, see ``needs_int64_indexing``). DeepSeek-V3's w1
       has 7.5e9 elements but every extent and stride fits int32, so it keeps the cheaper int32
       kernel; a weight view whose expert stride passes int32 takes the int64 one.
    2. Every array indexed with int32 (A, C, topk_weights, sorted_token_ids) needs its
       *extents* below 2**31: ``ct.launch`` refuses any int32-indexed array whose shape or
       stride exceeds 2**31 - 1. The real presets' extents are checked here (T*K*2I itself
       exceeds 2**31 for a 1M-token batch -- fine, because it is never formed in int32)."""
    from moe_tutorial import presets
    cfg = fm.default_tile_config(4096, 8, 256)
    for preset in presets.PRESETS.values():
        H, I, E = preset.hidden, preset.intermediate, preset.experts
        for shape in ((E, 2 * I, H), (E, H, I)):
            contiguous = (shape[1] * shape[2], shape[2], 1)
            assert not fm.needs_int64_indexing(shape, contiguous), (preset.name, shape)
        rows = (1 << 20) * preset.top_k          # replicas of a 1M-token batch: rows of C
        for extent in (rows, 2 * I, H, E):
            assert extent < 2**31
    ds = presets.PRESETS["deepseek_v3"]
    assert not fm.needs_int64_indexing((256, 4096, 7168), (4096 * 7168, 7168, 1))
    assert fm.needs_int64_indexing((2, 4096, 7168), (2**31, 7168, 1))      # stride past int32
    assert fm.needs_int64_indexing((2**31, 1, 1), (1, 1, 1))               # extent past int32
    assert (1 << 20) * ds.top_k * 2 * ds.intermediate > 2**31      # a flat offset would overflow

    for kernel, int64 in ((fm.fused_moe_kernel_int64, True), (fm.fused_moe_kernel, False)):
        elf = export_cubin(kernel, fm.gemm_compile_params(ct.float16, 8, False, cfg, int64=int64),
                           "sm_90")
        name = kernel._pyfunc.__name__ + "_"
        symbol = next(s for s in elf.split(b"\0") if s.startswith(name.encode())).decode()
        params = symbol[len(name):].split("_A")[1:]        # one entry per array parameter
        assert params[1].endswith("_w") == int64, f"W's index type in {symbol}"
        assert not params[0].endswith("_w") and not params[2].endswith("_w")


def test_wrapper_picks_the_kernel_by_weight_size(monkeypatch):
    """A weight view with a huge (fake, never dereferenced) expert stride takes the int64
    kernel; normal weights take the int32 one. The launch is intercepted, nothing runs."""
    launched = []
    monkeypatch.setattr(fm.device, "launch", lambda grid, kernel, args: launched.append(kernel))
    a = np.zeros((4, 8), np.float16)
    base = np.zeros((2, 16, 8), np.float16)
    huge = np.lib.stride_tricks.as_strided(base, shape=(2, 16, 8),
                                           strides=(2**31 * 2, 16, 2))   # bytes
    ids, experts = np.full(16, 8, np.int32), np.zeros(1, np.int32)
    cfg = fm.TileConfig(16, 16, 16)
    for w in (base, huge):
        fm.fused_moe_matmul(a, w, ids, experts, top_k=2, config=cfg, validate=False)
    assert launched == [fm.fused_moe_kernel, fm.fused_moe_kernel_int64]


def test_clusters_are_refused_for_int64_weights(monkeypatch):
    """num_ctas > 1 with the int64 kernel faulted on an H100; the wrapper refuses it before
    launching, naming the argument, and still accepts it for normal weights."""
    launched = []
    monkeypatch.setattr(fm.device, "launch", lambda grid, kernel, args: launched.append(kernel))
    a = np.zeros((4, 8), np.float16)
    base = np.zeros((2, 16, 8), np.float16)
    huge = np.lib.stride_tricks.as_strided(base, shape=(2, 16, 8), strides=(2**31 * 2, 16, 2))
    ids, experts = np.full(16, 8, np.int32), np.zeros(1, np.int32)
    cfg = fm.TileConfig(16, 16, 16, num_ctas=2)
    with pytest.raises(ValueError, match="num_ctas=2 is refused .* 64-bit"):
        fm.fused_moe_matmul(a, huge, ids, experts, top_k=2, config=cfg, validate=False)
    assert launched == []
    fm.fused_moe_matmul(a, base, ids, experts, top_k=2, config=cfg, validate=False)
    assert len(launched) == 1


def test_sass_instruction_count_reads_the_text_section():
    """The helper notebook 03 uses to compare the two ways of loading B: it finds the
    kernel's .text section in the cubin (16-byte instructions on sm_70+)."""
    cfg = fm.TileConfig(16, 32, 32, 8)
    counts = [fm.sass_instruction_count(export_cubin(
        fm.fused_moe_kernel, fm.gemm_compile_params(ct.float32, 1, True, cfg), "sm_90"))]
    cfg_t = fm.TileConfig(16, 32, 32, 8, transpose_b=True)
    counts.append(fm.sass_instruction_count(export_cubin(
        fm.fused_moe_kernel, fm.gemm_compile_params(ct.float32, 1, True, cfg_t), "sm_90")))
    assert all(c > 100 for c in counts) and counts[0] != counts[1]
    with pytest.raises(ValueError, match="not an ELF"):
        fm.sass_instruction_count(b"hello")


# ---------------------------------------------------------------------------------------------
# Notebook 05: GEMM1 with the SwiGLU epilogue, compiler hints, per-GEMM configs
# ---------------------------------------------------------------------------------------------

def _run_swiglu(xp, rng, *, T, H, I, E, K, dtype_name, config, duplicates=False,
                drop_fraction=0.0, expert_map=None, num_global=None):
    """fused_moe_matmul(swiglu=True) against silu(gate)*up of the float64 grouped matmul, and
    against the unfused path (GEMM1 into (T*K, 2I), then activation.silu_and_mul)."""
    from moe_tutorial import activation
    dt = _dtype(xp, dtype_name)
    _, ids = _routing(rng, T, K, E, duplicates=duplicates, drop_fraction=drop_fraction,
                      num_global=num_global)
    x = rng.standard_normal((T, H)).astype(dt)
    w1 = (rng.standard_normal((E, 2 * I, H)) / math.sqrt(max(H, 1))).astype(dt)
    sorted_ids, expert_ids, _ = ref.align(ids, E, config.tile_m, expert_map=expert_map)
    dev = [xp.asarray(v) for v in (x, w1, sorted_ids, expert_ids)]
    fused = xp.full((T * K, I), np.nan, dtype=dt)
    fm.fused_moe_matmul(*dev, top_k=K, swiglu=True, out=fused, config=config)
    gate_up = ref.grouped_matmul(x, w1, ids, row_divisor=K, expert_map=expert_map)
    with np.errstate(invalid="ignore"):
        want = ref.silu_and_mul(gate_up)           # NaN rows (dropped replicas) stay NaN
    _check(xp, fused, want, dtype_name)
    unfused = xp.full((T * K, 2 * I), np.nan, dtype=dt)
    fm.fused_moe_matmul(*dev, top_k=K, out=unfused, config=config)
    computed = ~np.isnan(want).all(axis=1)
    act = np.full((T * K, I), np.nan)
    if computed.any():
        act[computed] = device.to_numpy(activation.silu_and_mul(
            unfused[xp.asarray(np.flatnonzero(computed))])).astype(np.float64)
    _check(xp, act, want, dtype_name)


@settings(max_examples=examples(25), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(T=st.integers(1, 24), H=st.integers(2, 100), I=st.integers(4, 70), E=st.integers(1, 9),
       K=st.integers(1, 4), duplicates=st.booleans(), drop=st.sampled_from([0.0, 0.0, 0.3]),
       dtype_name=st.sampled_from(["float16", "float32"]), config=tiles, data=st.data())
def test_swiglu_epilogue_matches_reference(xp, T, H, I, E, K, duplicates, drop, dtype_name,
                                           config, data):
    """Any H and I (edges of the gate and the up half zero-padded separately), duplicate ids,
    dropped replicas, empty experts, every tile shape, both ways of loading B. (I >= 4: a
    single product of a few normals can land among float16 subnormals, whose relative rounding
    error is not 2**-12; the norm over a few columns is safe.)"""
    K = min(K, E) if not duplicates else K
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    _run_swiglu(xp, rng, T=T, H=H, I=I, E=E, K=K, dtype_name=dtype_name, config=config,
                duplicates=duplicates, drop_fraction=drop)


def test_swiglu_epilogue_with_an_expert_map_and_bfloat16(xp, rng):
    emap = np.array([1, -1, 0, -1, 2], np.int32)
    _run_swiglu(xp, rng, T=9, H=40, I=24, E=3, K=2, dtype_name="float32",
                config=fm.TileConfig(16, 16, 32, 4), expert_map=emap, num_global=5)
    if xp is np:
        _run_swiglu(np, rng, T=11, H=70, I=50, E=3, K=2, dtype_name="bfloat16",
                    config=fm.TileConfig(16, 32, 32, 2))


def test_swiglu_epilogue_math_at_extreme_gates(xp):
    """Gates of +-60 and 0 (exp(-g) far out of float16 range, computed in float32): silu(g)*u
    must be g*u, -0 and 0 -- no inf or NaN from the fused epilogue."""
    T, H, I, E = 4, 16, 16, 1
    x = np.zeros((T, H), np.float32)
    x[:, 0] = [1.0, -1.0, 0.0, 0.5]
    w1 = np.zeros((E, 2 * I, H), np.float32)
    w1[0, :I, 0] = 60.0                        # gate = 60 * x[:, 0]
    w1[0, I:, 0] = 2.0                         # up = 2 * x[:, 0]
    ids = np.zeros((T, 1), np.int32)
    s, e, _ = ref.align(ids, E, 16)
    out = fm.fused_moe_matmul(xp.asarray(x), xp.asarray(w1), xp.asarray(s), xp.asarray(e),
                              top_k=1, swiglu=True, config=fm.TileConfig(16, 16, 16, 1))
    got = device.to_numpy(out)[:, 0]
    g, u = 60.0 * x[:, 0].astype(np.float64), 2.0 * x[:, 0].astype(np.float64)
    np.testing.assert_allclose(got, g / (1 + np.exp(-g)) * u, rtol=1e-5, atol=1e-30)
    assert got[0] == 120.0 and 0 < got[1] < 1e-23          # silu(-60) * -2 = 120 e^-60
    assert np.isfinite(device.to_numpy(out)).all()


@pytest.mark.parametrize("hints", [dict(occupancy=2, latency=8), dict(num_ctas=2)])
def test_compiler_hints_change_nothing_in_the_result(xp, rng, hints):
    """Hinted configs (the tuner's knobs) compute the same products; on the GPU each is a
    different compiled kernel, on the emulator the same Python function."""
    import dataclasses
    for gemm2 in (False, True):
        _run_gemm(xp, rng, T=10, H=72, N=40, E=3, K=2, dtype_name="float16", gemm2=gemm2,
                  config=dataclasses.replace(fm.TileConfig(16, 32, 32, 2), **hints))
    _run_swiglu(xp, rng, T=10, H=72, I=40, E=3, K=2, dtype_name="float16",
                config=dataclasses.replace(fm.TileConfig(16, 32, 32, 2), **hints))


def test_hinted_kernels_are_made_once():
    k = fm.hinted(fm.fused_moe_kernel, 2, None)
    assert k is fm.hinted(fm.fused_moe_kernel, 2, None) and k is not fm.fused_moe_kernel
    assert fm.hinted(fm.fused_moe_kernel, None, None) is fm.fused_moe_kernel
    launched = []
    cfg = fm.TileConfig(16, 16, 16, occupancy=4, num_ctas=2)
    a, w = np.zeros((4, 8), np.float32), np.zeros((2, 6, 8), np.float32)
    for swiglu in (False, True):
        _, kernel, _ = fm.gemm_launch(a, w, np.zeros((8, 6), np.float32), None,
                                      np.full(16, 8, np.int32), np.zeros(1, np.int32), top_k=2,
                                      mul_routed_weight=False, swiglu=swiglu, config=cfg)
        launched.append(kernel)
    assert launched == [fm.hinted(fm.fused_moe_kernel, 4, 2),
                        fm.hinted(fm.fused_moe_swiglu_kernel, 4, 2)]


@pytest.mark.parametrize("field, value, match", [
    ("occupancy", 0, "occupancy must be None or an int in"),
    ("occupancy", 33, "occupancy"),
    ("num_ctas", 3, "num_ctas must be a power of two"),
    ("num_ctas", 32, "num_ctas must be None or an int in"),
    ("latency", 11, "latency must be an int in"),
    ("latency", None, "latency must be an int in"),
    ("occupancy", True, "occupancy"),
])
def test_bad_hints_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        fm.TileConfig(16, 16, 16, **{field: value})


def test_layer_config_pairs_two_gemm_configs():
    a, b = fm.TileConfig(16, 64, 128), fm.TileConfig(16, 128, 64, occupancy=2)
    cfg = fm.LayerConfig(a, b)
    assert cfg.tile_m == 16 and fm.LayerConfig.of(a) == fm.LayerConfig(a, a)
    assert fm.LayerConfig.of(cfg) is cfg
    assert cfg.replace(transpose_b=True).gemm2.transpose_b and cfg.replace(
        transpose_b=True).gemm2.occupancy == 2
    with pytest.raises(ValueError, match="must match"):
        fm.LayerConfig(a, fm.TileConfig(32, 64, 64))
    with pytest.raises(TypeError, match="must be a TileConfig"):
        fm.LayerConfig(a, (16, 64, 64))
    with pytest.raises(TypeError, match="TileConfig or LayerConfig"):
        fm.LayerConfig.of((16, 64, 64))
    # the layout: slot order by default; replace() sets it without touching the tiles, and
    # tile changes keep it
    assert cfg.sorted_rows and fm.LayerConfig.of(a).sorted_rows
    gather = cfg.replace(sorted_rows=False)
    assert not gather.sorted_rows and (gather.gemm1, gather.gemm2) == (a, b)
    assert not gather.replace(transpose_b=True).sorted_rows
    assert gather.replace(sorted_rows=True) == cfg
    with pytest.raises(TypeError, match="sorted_rows must be a bool"):
        fm.LayerConfig(a, b, 1)


@pytest.mark.parametrize("bad, match", [
    (dict(mul_routed_weight=True), "the router weight belongs to GEMM2"),
    (dict(n=7), "its middle axis is odd"),
    (dict(out=(8, 6)), r"out must be \(8, 3\)"),
])
def test_swiglu_bad_input_is_refused(bad, match):
    w = np.zeros((2, bad.get("n", 6), 8), np.float32)
    kw = dict(top_k=2, swiglu=True, config=fm.TileConfig(16, 16, 16))
    if "mul_routed_weight" in bad:
        kw.update(mul_routed_weight=True, topk_weights=np.ones(8, np.float32))
    if "out" in bad:
        kw["out"] = np.zeros(bad["out"], np.float32)
    with pytest.raises(ValueError, match=match):
        fm.fused_moe_matmul(np.zeros((4, 8), np.float32), w, np.full(16, 8, np.int32),
                            np.zeros(1, np.int32), **kw)


def test_swiglu_wrapper_picks_the_int64_kernel_for_huge_weights(monkeypatch):
    """The gate and up views of a w1 whose expert stride reaches past 2**31 elements take the
    64-bit kernel, whose compiled signature marks both weight views as int64-indexed."""
    launched = []
    monkeypatch.setattr(fm.device, "launch", lambda grid, kernel, args: launched.append(
        (grid, kernel, args)))
    a = np.zeros((4, 8), np.float16)
    base = np.zeros((2, 16, 8), np.float16)
    huge = np.lib.stride_tricks.as_strided(base, shape=(2, 16, 8), strides=(2**31 * 2, 16, 2))
    ids, experts = np.full(16, 8, np.int32), np.zeros(1, np.int32)
    cfg = fm.TileConfig(16, 16, 16)
    for w in (base, huge):
        fm.fused_moe_matmul(a, w, ids, experts, top_k=2, swiglu=True, config=cfg, validate=False)
    assert [k for _, k, _ in launched] == [fm.fused_moe_swiglu_kernel,
                                           fm.fused_moe_swiglu_kernel_int64]
    grid, _, args = launched[0]
    assert grid == (1,) and args[1].shape == args[2].shape == (2, 8, 8)      # gate, up views
    assert np.shares_memory(args[1], base) and args[2].__array_interface__["data"][0] == \
        base.__array_interface__["data"][0] + 8 * 8 * 2                       # up = rows I..2I
    cfg64 = fm.default_tile_config(2048, 8, 256)
    elf = export_cubin(fm.fused_moe_swiglu_kernel_int64,
                       fm.swiglu_compile_params(ct.float16, 8, cfg64, int64=True), "sm_90")
    name = "fused_moe_swiglu_kernel_int64_"
    symbol = next(s for s in elf.split(b"\0") if s.startswith(name.encode())).decode()
    params = symbol[len(name):].split("_A")[1:]
    assert params[1].endswith("_w") and params[2].endswith("_w")
    assert not params[0].endswith("_w") and not params[3].endswith("_w")


def test_int64_indexing_is_decided_per_array_in_one_place():
    """int64_indexing() reports, per GEMM array, whether it needs ct.IndexedWithInt64 (an
    extent or stride past int32); offsets_pass_int32() says whether its element offsets pass
    2**31 (Mixtral's GEMM1 output at T=65536 does, its weights do not)."""
    base = np.zeros((2, 16, 8), np.float16)
    huge = np.lib.stride_tricks.as_strided(base, shape=(2, 16, 8), strides=(2**31 * 2, 16, 2))
    a, out = np.zeros((4, 8), np.float16), np.zeros((8, 16), np.float16)
    assert fm.int64_indexing(a, base, out) == {"a": False, "w": False, "out": False}
    assert fm.int64_indexing(a, huge, out) == {"a": False, "w": True, "out": False}
    assert fm.int64_indexing(a, huge, out[:, :8], swiglu=True)["w"]
    assert fm.offsets_pass_int32((65536 * 2, 2 * 14336), (2 * 14336, 1))
    assert not fm.offsets_pass_int32((8, 2 * 14336, 4096), (2 * 14336 * 4096, 4096, 1))
