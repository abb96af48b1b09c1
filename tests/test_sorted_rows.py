"""The layer's slot-order ("sorted rows") path, notebook 05: ``permute_rows``, the expert GEMMs
with ``sorted_rows=True``, ``moe_sum(positions=...)``, and the layer in both layouts.

In slot order, row ``p`` of an intermediate belongs to replica ``sorted_token_ids[p]``. Every
slot falls in one of three classes, and each test checks all three:
* placed: in a block with an expert (``expert_ids >= 0``) and listing a replica (``< T*K``) --
  must hold that replica's value;
* sentinel: in a block with an expert but padding (``== T*K``) -- ``permute_rows`` leaves it
  untouched (poisoned beforehand, must stay poisoned), the GEMMs compute something there that
  nobody reads (not asserted);
* dead: in a block with expert -1 -- never written (poisoned beforehand, must stay poisoned).

Every test runs on the ``xp`` fixture (the emulator here, in its strict mode, which refuses
unmasked out-of-bounds gathers; ``ct.launch`` under ``pytest -m gpu``). Routing and alignment
come from the NumPy references (``reference.align``) so each kernel is checked on its own.

Tolerances (relative error in Frobenius norm against float64), the arguments of
test_fused_moe.py and test_layer.py:
* permute_rows is a copy: exact.
* GEMMs: float32 1e-5, float16 2e-3 (one rounding of an fp32-accumulated result, half an ulp =
  2**-12), plus an elementwise bound of 10x that relative to the RMS of the reference.
* moe_sum: float32 rtol 1e-6 (at most 4 terms summed in fp32); float16 2e-3 (inputs exact in
  float16, fp32 accumulation, one rounding).
* layer: float32 1e-5, float16 3e-3 (four float16 roundings in a row); the two layouts run the
  same arithmetic on the same values, so they must agree with each other within the same bound.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_tutorial import device, emulator, layer
from moe_tutorial import fused_moe as fm
from moe_tutorial import reference as ref
from moe_tutorial.fused_moe import LayerConfig, TileConfig

from conftest import examples

GEMM_TOL = {"float32": 1e-5, "float16": 2e-3}
LAYER_TOL = {"float32": 1e-5, "float16": 3e-3}
POISON_INT = -123456          # what positions holds before permute_rows


@pytest.fixture(autouse=True)
def strict_emulator(monkeypatch):
    """Strict mode: an out-of-bounds gather or a store of undetermined padding raises."""
    monkeypatch.setenv(emulator.STRICT_ENV, "1")


def _routing(rng, T, K, G, drop=0.0):
    """topk_ids (T, K) int32, K distinct ids out of G per token, a ``drop`` fraction set to -1;
    weights (T, K) float32."""
    ids = np.stack([rng.permutation(G)[:K] for _ in range(T)]).astype(np.int32)
    if drop:
        ids[rng.random((T, K)) < drop] = -1
    return rng.random((T, K)).astype(np.float32), ids


def _expert_map(rng, G):
    """A rank holding a random non-empty subset of G global experts: (emap, number local)."""
    mine = np.sort(rng.permutation(G)[:rng.integers(1, G + 1)])
    emap = np.full(G, -1, np.int32)
    emap[mine] = np.arange(len(mine), dtype=np.int32)
    return emap, len(mine)


def _slots(sorted_ids, expert_ids, num_replicas):
    """Boolean masks (placed, sentinel, dead) over the slots of an alignment."""
    tile_m = len(sorted_ids) // len(expert_ids)
    live = np.repeat(expert_ids >= 0, tile_m)
    placed = live & (sorted_ids < num_replicas)
    return placed, live & ~placed, ~live


def _computed(ids, emap=None):
    """Replicas that count on this rank: id >= 0 and, with an expert map, a local expert."""
    flat = ids.reshape(-1).astype(np.int64)
    if emap is None:
        return flat >= 0
    return (flat >= 0) & (emap[np.clip(flat, 0, None)] >= 0)


# ---------------------------------------------------------------------------------------------
# permute_rows
# ---------------------------------------------------------------------------------------------

def _check_permute(x, K, sorted_ids, expert_ids, ids, emap, out, positions):
    """out/positions (device arrays, poisoned with NaN / POISON_INT) after permute_rows."""
    T = x.shape[0]
    out, positions = device.to_numpy(out), device.to_numpy(positions)
    placed, sentinel, dead = _slots(sorted_ids, expert_ids, T * K)
    np.testing.assert_array_equal(out[placed], x[sorted_ids[placed] // K])      # a copy: exact
    assert np.isnan(out[sentinel]).all(), "sentinel slots must stay untouched (not copied)"
    assert np.isnan(out[dead]).all(), "rows of blocks with expert -1 must stay untouched"
    replicas = sorted_ids[placed]
    assert len(np.unique(replicas)) == len(replicas)
    np.testing.assert_array_equal(positions[replicas], np.flatnonzero(placed))
    # every replica computed on this rank was placed; all the others keep their poison
    computed = _computed(ids, emap)
    assert set(replicas.tolist()) == set(np.flatnonzero(computed).tolist())
    assert (positions[~computed] == POISON_INT).all(), "positions of dropped replicas written"


@settings(max_examples=examples(30), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(T=st.integers(1, 24), H=st.integers(1, 300), G=st.integers(1, 9), K=st.integers(1, 4),
       tile_m=st.sampled_from([16, 32, 64]), drop=st.sampled_from([0.0, 0.0, 0.3]),
       with_map=st.booleans(), dtype_name=st.sampled_from(["float16", "float32"]),
       data=st.data())
def test_permute_rows_matches_reference(xp, T, H, G, K, tile_m, drop, with_map, dtype_name,
                                        data):
    """Any H (several column tiles for tile_m=64 and H > 128, a partial last one), dropped
    replicas (-1 ids and, with an expert map, other ranks' experts), empty experts."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    K = min(K, G)
    _, ids = _routing(rng, T, K, G, drop)
    emap, E = _expert_map(rng, G) if with_map else (None, G)
    s, e, _ = ref.align(ids, E, tile_m, expert_map=emap)
    x = rng.standard_normal((T, H)).astype(dtype_name)
    out = xp.full((len(s), H), np.nan, dtype=dtype_name)
    positions = xp.full((T * K,), POISON_INT, dtype=np.int32)
    got = fm.permute_rows(xp.asarray(x), xp.asarray(s), xp.asarray(e), K, out=out,
                          positions=positions)
    assert got[0] is out and got[1] is positions
    _check_permute(x, K, s, e, ids, emap, out, positions)


def test_permute_rows_with_narrow_column_tiles(xp, rng, monkeypatch):
    """Column tiles of 16 (PERMUTE_TILE_ELEMENTS shrunk): H=50 takes four of them, the last
    partial; only the first writes the positions, and it must write all of them."""
    monkeypatch.setattr(fm, "PERMUTE_TILE_ELEMENTS", 16 * 16)
    assert fm.permute_tile_h(16, 50) == 16
    T, K, E, H = 21, 3, 5, 50
    _, ids = _routing(rng, T, K, E, drop=0.2)
    s, e, _ = ref.align(ids, E, 16)
    x = rng.standard_normal((T, H)).astype(np.float32)
    out = xp.full((len(s), H), np.nan, dtype=np.float32)
    positions = xp.full((T * K,), POISON_INT, dtype=np.int32)
    fm.permute_rows(xp.asarray(x), xp.asarray(s), xp.asarray(e), K, out=out,
                    positions=positions)
    _check_permute(x, K, s, e, ids, None, out, positions)


def test_permute_rows_skips_blocks_without_an_expert(xp, rng):
    """A block whose expert id is -1 (another rank's, or past the used part) is not copied and
    its replicas get no position, even if sorted_token_ids lists real replicas there."""
    T, K, H = 6, 2, 20
    x = rng.standard_normal((T, H)).astype(np.float32)
    s = np.concatenate([np.arange(6), np.full(10, 12), np.arange(6, 12), np.full(10, 12)])
    s = s.astype(np.int32)
    e = np.array([-1, 1], np.int32)                   # replicas 0..5 in a "foreign" block
    out = xp.full((32, H), np.nan, dtype=np.float32)
    positions = xp.full((T * K,), POISON_INT, dtype=np.int32)
    fm.permute_rows(xp.asarray(x), xp.asarray(s), xp.asarray(e), K, out=out,
                    positions=positions)
    got, pos = device.to_numpy(out), device.to_numpy(positions)
    assert np.isnan(got[:16]).all()
    np.testing.assert_array_equal(got[16:22], x[np.arange(6, 12) // K])
    assert np.isnan(got[22:]).all()                    # sentinel slots: not written
    np.testing.assert_array_equal(pos, np.r_[np.full(6, POISON_INT), np.arange(16, 22)])


def test_permute_rows_allocates_its_outputs(xp, rng):
    T, K, E, H = 5, 2, 3, 24
    _, ids = _routing(rng, T, K, E)
    s, e, _ = ref.align(ids, E, 16)
    x = rng.standard_normal((T, H)).astype(np.float16)
    out, positions = fm.permute_rows(xp.asarray(x), xp.asarray(s), xp.asarray(e), K)
    assert out.shape == (len(s), H) and out.dtype == np.float16
    assert positions.shape == (T * K,) and positions.dtype == np.int32
    placed, _, _ = _slots(s, e, T * K)
    np.testing.assert_array_equal(device.to_numpy(out)[placed], x[s[placed] // K])
    np.testing.assert_array_equal(device.to_numpy(positions)[s[placed]], np.flatnonzero(placed))


def _permute_args(**bad):
    """Good permute_rows arguments (T=4, H=8, K=2, 2 blocks of 16) with ``bad`` replacing some."""
    args = dict(x=np.zeros((4, 8), np.float32), sorted_token_ids=np.full(32, 8, np.int32),
                expert_ids=np.zeros(2, np.int32), top_k=2)
    return {**args, **bad}


@pytest.mark.parametrize("bad, error, match", [
    (dict(x=np.zeros(8, np.float32)), ValueError, "x must be 2-D"),
    (dict(sorted_token_ids=np.full(32, 8, np.int64)), TypeError,
     "sorted_token_ids must be int32, got int64"),
    (dict(expert_ids=np.zeros(2, np.int64)), TypeError, "expert_ids must be int32, got int64"),
    (dict(sorted_token_ids=np.full(24, 8, np.int32)), ValueError,
     r"power-of-two number of slots per block"),
    (dict(sorted_token_ids=np.full(33, 8, np.int32)), ValueError, "slots per block"),
    (dict(expert_ids=np.zeros(0, np.int32)), ValueError, "slots per block"),
    (dict(top_k=0), ValueError, "top_k must be a positive int"),
    (dict(out=np.zeros((8, 8), np.float32)), ValueError, r"out must be \(32, 8\) float32"),
    (dict(out=np.zeros((32, 8), np.float16)), ValueError, r"out must be \(32, 8\) float32"),
    (dict(positions=np.zeros(9, np.int32)), ValueError, r"positions must be \(8,\), got \(9,\)"),
    (dict(positions=np.zeros(8, np.int64)), TypeError, "positions must be int32, got int64"),
])
def test_permute_rows_bad_input_is_refused(bad, error, match):
    args = _permute_args(**bad)
    with pytest.raises(error, match=match):
        fm.permute_rows(args.pop("x"), args.pop("sorted_token_ids"), args.pop("expert_ids"),
                        args.pop("top_k"), **args)


# ---------------------------------------------------------------------------------------------
# The expert GEMMs in slot order
# ---------------------------------------------------------------------------------------------

def _run_sorted_gemm(xp, rng, *, T, H, N, E, K, kind, dtype_name, config, drop=0.0,
                     expert_map=None, num_global=None):
    """fused_moe_matmul(sorted_rows=True) against the float64 replica-order reference,
    reordered into slots. ``kind``: "gemm1" (out (S, N)), "swiglu" (w1 (E, 2N, H), out (S, N))
    or "gemm2" (router weights, top_k=1). A's placed rows hold the replica's input, its
    sentinel rows garbage, its dead rows NaN (the kernel must not use them); out is NaN."""
    weights, ids = _routing(rng, T, K, num_global or E, drop)
    s, e, _ = ref.align(ids, E, config.tile_m, expert_map=expert_map)
    S, R = len(s), T * K
    placed, sentinel, dead = _slots(s, e, R)
    gemm2 = kind == "gemm2"
    rows_in = rng.standard_normal((R if gemm2 else T, H)).astype(dtype_name)
    n_w = 2 * N if kind == "swiglu" else N
    w = (rng.standard_normal((E, n_w, H)) / math.sqrt(H)).astype(dtype_name)
    a = np.full((S, H), np.nan, dtype=dtype_name)
    a[placed] = rows_in[s[placed] // (1 if gemm2 else K)]
    a[sentinel] = np.nan                  # garbage (permute_rows leaves them)
    per_replica = ref.grouped_matmul(rows_in, w, ids, row_divisor=1 if gemm2 else K,
                                     topk_weights=weights if gemm2 else None,
                                     expert_map=expert_map)
    if kind == "swiglu":
        with np.errstate(invalid="ignore"):
            per_replica = ref.silu_and_mul(per_replica)       # dropped rows stay NaN
    out = xp.full((S, N), np.nan, dtype=dtype_name)
    got = fm.fused_moe_matmul(xp.asarray(a), xp.asarray(w), xp.asarray(s), xp.asarray(e),
                              top_k=1 if gemm2 else K, swiglu=kind == "swiglu",
                              topk_weights=xp.asarray(weights.reshape(-1)) if gemm2 else None,
                              mul_routed_weight=gemm2, out=out, config=config,
                              sorted_rows=True)
    assert got is out
    got = device.to_numpy(out).astype(np.float64)
    assert np.isnan(got[dead]).all(), "the kernel wrote slots of blocks with expert -1"
    g, want = got[placed], per_replica[s[placed]]
    assert not np.isnan(g).any(), f"{int(np.isnan(g).any(axis=1).sum())} placed rows unwritten"
    tol = GEMM_TOL[dtype_name]
    err = ref.relative_error(g, want)
    assert err <= tol, f"relative error {err:.3g} > {tol}"
    scale = np.sqrt(np.mean(want ** 2)) if want.size else 1.0
    np.testing.assert_allclose(g, want, rtol=10 * tol, atol=10 * tol * scale)


tiles = st.builds(TileConfig, tile_m=st.sampled_from([16, 32, 64]),
                  tile_n=st.sampled_from([16, 32, 64]), tile_k=st.sampled_from([16, 32, 64]),
                  group_size_m=st.sampled_from([1, 2, 8]), transpose_b=st.booleans())


@settings(max_examples=examples(30), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(T=st.integers(1, 24), H=st.integers(4, 100), N=st.integers(4, 70), E=st.integers(1, 9),
       K=st.integers(1, 4), kind=st.sampled_from(["gemm1", "swiglu", "gemm2"]),
       drop=st.sampled_from([0.0, 0.0, 0.3]), dtype_name=st.sampled_from(["float16", "float32"]),
       config=tiles, data=st.data())
def test_sorted_gemms_match_reference(xp, T, H, N, E, K, kind, drop, dtype_name, config, data):
    """Both GEMMs (and GEMM1 with the SwiGLU epilogue) with A loaded as tiles in slot order:
    any H (the Kd edge of the tile load zero-padded) and N (the store's edge), empty experts,
    dropped replicas, every tile shape, both ways of loading B. (H, N >= 4: see the SwiGLU
    test in test_fused_moe.py about float16 subnormals.)"""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    _run_sorted_gemm(xp, rng, T=T, H=H, N=N, E=E, K=min(K, E), kind=kind,
                     dtype_name=dtype_name, config=config, drop=drop)


@pytest.mark.parametrize("kind", ["gemm1", "swiglu", "gemm2"])
def test_sorted_gemms_with_an_expert_map(xp, rng, kind):
    """An expert-parallel rank: 3 of 7 global experts local, the rest dropped by align."""
    emap = np.array([-1, 0, -1, 2, -1, 1, -1], np.int32)
    _run_sorted_gemm(xp, rng, T=13, H=40, N=24, E=3, K=3, kind=kind, dtype_name="float32",
                     config=TileConfig(16, 16, 32, 4), expert_map=emap, num_global=7)


@pytest.mark.parametrize("hints", [dict(occupancy=2, latency=8), dict(num_ctas=2)])
def test_sorted_gemms_with_compiler_hints(xp, rng, hints):
    """The tuner's knobs on the slot-order kernels (on the GPU: other compiled kernels)."""
    import dataclasses
    cfg = dataclasses.replace(TileConfig(32, 32, 32, 2), **hints)
    for kind in ("gemm1", "swiglu", "gemm2"):
        _run_sorted_gemm(xp, rng, T=10, H=72, N=40, E=3, K=2, kind=kind, dtype_name="float16",
                         config=cfg)


def test_sorted_gemm_skips_blocks_without_an_expert(xp, rng):
    """Block 0's expert is -1 although it lists real replicas: its slots stay poisoned."""
    T, K, E, H, N = 6, 2, 3, 16, 16
    a = rng.standard_normal((32, H)).astype(np.float32)
    w = rng.standard_normal((E, N, H)).astype(np.float32)
    s = np.concatenate([np.arange(12), np.full(20, 12)]).astype(np.int32)
    e = np.array([-1, 1], np.int32)
    out = xp.full((32, N), np.nan, dtype=np.float32)
    fm.fused_moe_matmul(xp.asarray(a), xp.asarray(w), xp.asarray(s), xp.asarray(e), top_k=K,
                        out=out, config=TileConfig(16, 16, 16, 8), sorted_rows=True)
    got = device.to_numpy(out)
    assert np.isnan(got[:16]).all()
    np.testing.assert_allclose(got[16:], a[16:].astype(np.float64) @ w[1].T.astype(np.float64),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad, error, match", [
    (dict(a_rows=4), ValueError, r"sorted_rows=True, a must have one row per slot .*\(32\), "
                                 r"got 4 rows"),
    (dict(a_rows=8), ValueError, "one row per slot"),          # T*K rows: replica order
    (dict(out=(8, 6)), ValueError, r"out must be \(32, 6\)"),   # (T*K, N): replica order
    (dict(sorted_rows=1), TypeError, "sorted_rows must be a bool"),
    (dict(swiglu=True, out=(32, 6)), ValueError, r"out must be \(32, 3\)"),
])
def test_sorted_gemm_bad_input_is_refused(bad, error, match):
    """T=4, K=2, two blocks of 16 slots: a and out must have 32 rows."""
    a = np.zeros((bad.get("a_rows", 32), 8), np.float32)
    kw = dict(top_k=2, config=TileConfig(16, 16, 16), sorted_rows=bad.get("sorted_rows", True),
              swiglu=bad.get("swiglu", False))
    if "out" in bad:
        kw["out"] = np.zeros(bad["out"], np.float32)
    with pytest.raises(error, match=match):
        fm.fused_moe_matmul(a, np.zeros((2, 6, 8), np.float32), np.full(32, 8, np.int32),
                            np.zeros(2, np.int32), **kw)


def test_sorted_flag_reaches_the_kernel(monkeypatch):
    """gemm_launch passes SORTED (the last constant) through to every kernel variant,
    including the 64-bit-indexed one for huge weights. The launch is intercepted."""
    launched = []
    monkeypatch.setattr(fm.device, "launch", lambda grid, kernel, args: launched.append(
        (kernel, args[-1])))
    base = np.zeros((2, 16, 8), np.float16)
    huge = np.lib.stride_tricks.as_strided(base, shape=(2, 16, 8), strides=(2**31 * 2, 16, 2))
    ids, experts = np.full(16, 8, np.int32), np.zeros(1, np.int32)
    for w in (base, huge):
        for swiglu in (False, True):
            for srt in (False, True):
                a = np.zeros((16 if srt else 4, 8), np.float16)
                fm.fused_moe_matmul(a, w, ids, experts, top_k=2, swiglu=swiglu,
                                    config=TileConfig(16, 16, 16), sorted_rows=srt,
                                    validate=False)
    kernels = [fm.fused_moe_kernel, fm.fused_moe_swiglu_kernel, fm.fused_moe_kernel_int64,
               fm.fused_moe_swiglu_kernel_int64]
    assert launched == [(k, srt) for k in kernels for srt in (False, True)]


# ---------------------------------------------------------------------------------------------
# moe_sum over slot-order rows
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype_name, with_map", [("float32", True), ("float32", False),
                                                  ("float16", True)])
def test_moe_sum_reads_rows_through_positions(xp, rng, dtype_name, with_map):
    """y in slot order (more rows than replicas, scattered): out[t] sums y[positions[t*K+k]]
    over the replicas computed on this rank. Rows nobody computed are NaN, and the positions of
    dropped replicas are garbage (out of range, negative): the kernel must read neither."""
    T, K, H, G = 21, 3, 150, 6
    ids = rng.integers(-1, G, size=(T, K)).astype(np.int32)
    emap = np.array([0, -1, 1, 2, -1, 3], np.int32) if with_map else None
    computed = _computed(ids, emap)
    R, S = T * K, 2 * T * K + 5
    positions = rng.permutation(S)[:R].astype(np.int32)
    positions[~computed] = rng.choice([S, 2**30, -1, POISON_INT], size=int((~computed).sum()))
    y_rep = rng.standard_normal((R, H)).astype(dtype_name)          # replica order
    y = np.full((S, H), np.nan, dtype=dtype_name)
    y[positions[computed]] = y_rep[computed]
    want = np.where(computed.reshape(T, K, 1), y_rep.reshape(T, K, H).astype(np.float64),
                    0.0).sum(axis=1)
    out = xp.full((T, H), np.nan, dtype=dtype_name)
    got = fm.moe_sum(xp.asarray(y), xp.asarray(ids), G, positions=xp.asarray(positions),
                     expert_map=None if emap is None else xp.asarray(emap), out=out)
    assert got is out
    got = device.to_numpy(out).astype(np.float64)
    if dtype_name == "float32":
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    else:
        assert ref.relative_error(got, want) <= GEMM_TOL["float16"]
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("positions, error, match", [
    (np.zeros(9, np.int32), ValueError, r"positions must be \(8,\) .*got \(9,\)"),
    (np.zeros(8, np.int64), TypeError, "positions must be int32, got int64"),
    (np.zeros((8, 1), np.int32), ValueError, "positions must be 1-D"),
    ([0] * 8, TypeError, "positions must be a NumPy or CuPy array"),
])
def test_moe_sum_bad_positions_are_refused(positions, error, match):
    y = np.zeros((40, 6), np.float32)            # slot order: any number of rows
    with pytest.raises(error, match=match):
        fm.moe_sum(y, np.zeros((4, 2), np.int32), 3, positions=positions)
    with pytest.raises(ValueError, match="y has 40 rows, expected T\\*K = 8"):
        fm.moe_sum(y, np.zeros((4, 2), np.int32), 3)               # without: replica order


@pytest.mark.gpu
def test_sorted_path_refuses_mixed_devices():
    import cupy as cp
    s, e = np.full(32, 8, np.int32), np.zeros(2, np.int32)
    with pytest.raises(TypeError, match="same device"):
        fm.permute_rows(cp.zeros((4, 8), cp.float32), cp.asarray(s), cp.asarray(e), 2,
                        out=np.zeros((32, 8), np.float32))
    with pytest.raises(TypeError, match="same device"):
        fm.permute_rows(cp.zeros((4, 8), cp.float32), cp.asarray(s), cp.asarray(e), 2,
                        positions=np.zeros(8, np.int32))
    with pytest.raises(TypeError, match="same device"):
        fm.moe_sum(cp.zeros((40, 6), cp.float32), cp.zeros((4, 2), cp.int32), 3,
                   positions=np.zeros(8, np.int32))


# ---------------------------------------------------------------------------------------------
# The layer in both layouts
# ---------------------------------------------------------------------------------------------

def _problem(rng, T, H, E, I, dtype_name):
    x = rng.standard_normal((T, H)).astype(dtype_name)
    w1 = (rng.standard_normal((E, 2 * I, H)) / np.sqrt(H)).astype(dtype_name)
    w2 = (rng.standard_normal((E, H, I)) / np.sqrt(I)).astype(dtype_name)
    return x, w1, w2, rng.standard_normal((T, E)).astype(np.float32)


LAYER_CASES = {
    # name: (T, H, E, I, K, dtype, tile_m, options)
    "float32": (9, 40, 6, 24, 2, "float32", 16, {}),
    "float16_edges": (13, 70, 5, 36, 3, "float16", 32, {}),
    "float16_fused_swiglu": (11, 48, 7, 40, 2, "float16", 16, dict(fused_swiglu=True)),
    "expert_map": (15, 32, 8, 24, 3, "float32", 16, dict(expert_map="half")),
    "expert_map_fused": (10, 40, 8, 16, 2, "float16", 64,
                         dict(expert_map="half", fused_swiglu=True)),
    "grouped_router": (13, 64, 32, 32, 4, "float16", 16,
                       dict(use_grouped_topk=True, n_group=8, topk_group=3,
                            routed_scaling_factor=2.5, e_score_correction_bias="random")),
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_layouts_agree_with_the_reference(xp, rng, case):
    """moe_forward in slot order (permute, tile loads, positions) and in replica order (gather
    and scatter) against reference.moe_forward, and against each other; the default config is
    the slot-order one."""
    T, H, E, I, K, dtype_name, tile_m, opts = LAYER_CASES[case]
    x, w1, w2, logits = _problem(rng, T, H, E, I, dtype_name)
    opts = dict(opts)
    ref_opts = dict(opts)
    ref_opts.pop("fused_swiglu", None)
    if opts.get("e_score_correction_bias") == "random":
        bias = (0.1 * rng.standard_normal(E)).astype(np.float32)
        ref_opts["e_score_correction_bias"], opts["e_score_correction_bias"] = bias, \
            xp.asarray(bias)
    if opts.get("expert_map") == "half":          # this rank holds every other expert
        mine = np.arange(0, E, 2)
        emap = np.full(E, -1, np.int32)
        emap[mine] = np.arange(len(mine), dtype=np.int32)
        ref_opts["expert_map"], opts["expert_map"] = emap, xp.asarray(emap)
        w1, w2 = w1[mine], w2[mine]
    want = ref.moe_forward(x, w1, w2, logits, K, **ref_opts)
    args = (xp.asarray(x), xp.asarray(w1), xp.asarray(w2), xp.asarray(logits), K)
    cfg = LayerConfig(TileConfig(tile_m, 32, 32, 4), TileConfig(tile_m, 64, 16, 2))
    assert cfg.sorted_rows
    outs = {}
    for srt in (True, False):
        plan = layer.plan_layer(*args, config=cfg.replace(sorted_rows=srt), **opts)
        assert (layer.PERMUTE_STEP in dict(plan.steps)) == srt
        assert ("positions" in plan.buffers) == srt and ("a_sorted" in plan.buffers) == srt
        outs[srt] = device.to_numpy(plan.run()).copy()
        assert outs[srt].shape == (T, H) and outs[srt].dtype == np.dtype(dtype_name)
        assert np.isfinite(outs[srt].astype(np.float64)).all()
        err = ref.relative_error(outs[srt], want)
        assert err <= LAYER_TOL[dtype_name], f"sorted_rows={srt}: relative error {err:.3g}"
    diff = ref.relative_error(outs[True], outs[False].astype(np.float64))
    assert diff <= LAYER_TOL[dtype_name], f"the two layouts differ by {diff:.3g}"


def test_sorted_layer_buffers_have_one_row_per_slot(xp, rng):
    """In slot order every intermediate has max_padded_size(T*K, E, tile_m) rows (the
    alignment's worst case, known before routing); in replica order T*K."""
    from moe_tutorial import routing
    T, H, E, I, K = 9, 32, 6, 16, 2
    x, w1, w2, logits = _problem(rng, T, H, E, I, "float32")
    args = (xp.asarray(x), xp.asarray(w1), xp.asarray(w2), xp.asarray(logits), K)
    cfg = LayerConfig.of(TileConfig(32, 32, 32))
    S = routing.max_padded_size(T * K, E, 32)
    plan = layer.plan_layer(*args, config=cfg)
    b = plan.buffers
    assert b["a_sorted"].shape == (S, H) and b["positions"].shape == (T * K,)
    assert b["cache1"].shape == (S, 2 * I) and b["cache2"].shape == (S, I)
    assert b["cache3"].shape == (S, H)
    assert plan.writes[layer.PERMUTE_STEP] == ("a_sorted", "positions")
    plan.run()
    assert b["sorted_token_ids"].shape == (S,)        # the alignment fills exactly those slots
    gather = layer.plan_layer(*args, config=cfg.replace(sorted_rows=False)).buffers
    assert "a_sorted" not in gather and "positions" not in gather
    assert gather["cache1"].shape == (T * K, 2 * I) and gather["cache3"].shape == (T * K, H)


def test_sorted_gemm2_checks_the_router_weights_count():
    """In slot order T*K is not known on the host: more weights than slots is refused always;
    too few is caught with validate=True (an id of sorted_token_ids past the weights)."""
    a = np.zeros((32, 8), np.float32)
    w = np.zeros((2, 6, 8), np.float32)
    s = np.full(32, 8, np.int32)
    s[:3] = [0, 5, 7]                                  # replicas of T*K = 8, sentinel 8
    kw = dict(top_k=1, config=TileConfig(16, 16, 16), sorted_rows=True, mul_routed_weight=True)
    with pytest.raises(ValueError, match="topk_weights has 33 entries, more than the 32 slots"):
        fm.fused_moe_matmul(a, w, s, np.zeros(2, np.int32), topk_weights=np.ones(33, np.float32),
                            **kw)
    with pytest.raises(ValueError, match="holds id 8 but topk_weights has only 4 entries"):
        fm.fused_moe_matmul(a, w, s, np.zeros(2, np.int32), topk_weights=np.ones(4, np.float32),
                            **kw)
    out = fm.fused_moe_matmul(a, w, s, np.zeros(2, np.int32), topk_weights=np.ones(8, np.float32),
                              **kw)
    assert out.shape == (32, 6)
