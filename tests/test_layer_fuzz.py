"""Fuzzing the whole layer (``moe_forward``) against the float64 reference.

Hypothesis draws the routing (everything to one expert, experts nobody uses, a token listing
the same expert twice, -1 ids, expert maps with holes and with values past the local experts),
the shapes (T = 0 and 1, widths that are not powers of two), the dtype (float16, float32;
bfloat16 on the CPU emulator only), the layout (``sorted_rows``) and ``fused_swiglu``. Every
intermediate buffer starts as NaN (ints: a sentinel), so a value some kernel forgot to write,
or read where it should not, shows up in the output.

The emulator run in CI draws ``FUZZ_EXAMPLES`` examples; ``pytest -m gpu`` fewer
(``conftest.examples``), since each new shape compiles new kernels there.

Tolerance (relative error, Frobenius norm): float32 1e-5, float16 1e-2, bfloat16 5e-2. The
16-bit layers round four intermediates (each <= 2**-11 relative in float16, 2**-8 in
bfloat16); test_layer.py allows float16 3e-3, but here outputs can be a handful of elements
(H = 1) whose sums cancel, which scales the relative error up (3.1e-3 was seen at T=5, H=1).
float16 also underflows: below ~6e-5 its relative precision fades (an output of -7e-9 came
out as 0), so the error is taken relative to at least an RMS of 1e-2 (``FLOOR``): an absolute
tolerance of 1e-4 RMS for outputs that small. A wrong or unwritten row is off by O(1), or NaN.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_tutorial import device, layer
from moe_tutorial import reference as ref
from moe_tutorial.fused_moe import LayerConfig, TileConfig

from conftest import examples

FUZZ_EXAMPLES = 100
TOL = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}
FLOOR = {"float32": 0.0, "float16": 1e-2, "bfloat16": 0.0}
POISON_INT = -123456789
ROUTINGS = ["random", "one_expert", "some_experts_empty", "duplicates", "with_drops",
            "router"]


def _dtype(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _expert_map(data, rng, num_local):
    """None, or a global -> local map with holes (-1: another rank) over more global experts;
    sometimes with a value past the local experts (the kernels drop such replicas)."""
    kind = data.draw(st.sampled_from(["none", "holes", "holes_and_out_of_range"]), label="map")
    if kind == "none":
        return None, num_local
    num_global = num_local + data.draw(st.integers(1, 4), label="other ranks' experts")
    emap = np.full(num_global, -1, np.int32)
    emap[rng.choice(num_global, num_local, replace=False)] = rng.permutation(num_local)
    if kind == "holes_and_out_of_range":
        holes = np.flatnonzero(emap < 0)
        emap[rng.choice(holes)] = num_local + data.draw(st.integers(0, 3), label="past")
    return emap, num_global


def _routing(data, rng, kind, T, K, num_global):
    """(T, K) int32 global ids and float32 weights for one routing ``kind``."""
    if kind == "one_expert":
        ids = np.full((T, K), rng.integers(num_global), np.int32)
    elif kind == "some_experts_empty":
        used = rng.choice(num_global, max(1, num_global // 3), replace=False)
        ids = rng.choice(used, size=(T, K)).astype(np.int32)
    elif kind == "with_drops":
        ids = rng.integers(-1, num_global, size=(T, K)).astype(np.int32)
        ids[rng.random((T, K)) < 0.3] = -1
    else:   # random: duplicates happen; "duplicates" forces one per token
        ids = rng.integers(0, num_global, size=(T, K)).astype(np.int32)
        if kind == "duplicates" and K > 1:
            ids[:, 1] = ids[:, 0]
    weights = rng.random((T, K)).astype(np.float32)
    return ids, weights


def _poison(plan):
    for name, buf in plan.buffers.items():
        buf[...] = np.nan if np.dtype(buf.dtype).kind == "f" else POISON_INT


@settings(max_examples=examples(FUZZ_EXAMPLES), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_layer_fuzz(xp, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    T = data.draw(st.sampled_from([0, 1, 2, 3, 5, 8, 13, 21]), label="T")
    H = data.draw(st.integers(1, 48), label="H")
    I = data.draw(st.integers(1, 40), label="I")
    num_local = data.draw(st.integers(1, 6), label="local experts")
    dtypes = ["float16", "float32"] + (["bfloat16"] if xp is np else [])
    dtype_name = data.draw(st.sampled_from(dtypes), label="dtype")
    emap, num_global = _expert_map(data, rng, num_local)
    K = data.draw(st.integers(1, min(4, num_global)), label="K")
    kind = data.draw(st.sampled_from(ROUTINGS), label="routing")
    tile_m = data.draw(st.sampled_from([16, 32, 64]), label="tile_m")
    tile_nk = data.draw(st.sampled_from([16, 32]), label="tile_n = tile_k")
    sorted_rows = data.draw(st.booleans(), label="sorted_rows")
    fused_swiglu = data.draw(st.booleans(), label="fused_swiglu")

    dtype = _dtype(dtype_name)
    x = rng.standard_normal((T, H)).astype(dtype)
    w1 = (rng.standard_normal((num_local, 2 * I, H)) / np.sqrt(H)).astype(dtype)
    w2 = (rng.standard_normal((num_local, H, I)) / np.sqrt(I)).astype(dtype)
    config = LayerConfig.of(TileConfig(tile_m, tile_nk, tile_nk)).replace(sorted_rows=sorted_rows)
    kwargs = dict(config=config, fused_swiglu=fused_swiglu,
                  expert_map=None if emap is None else xp.asarray(emap))
    if kind == "router":
        logits = rng.standard_normal((T, num_global)).astype(np.float32)
        renormalize = data.draw(st.booleans(), label="renormalize")
        plan = layer.plan_layer(xp.asarray(x), xp.asarray(w1), xp.asarray(w2), xp.asarray(logits),
                                K, renormalize=renormalize, **kwargs)
        want = ref.moe_forward(x, w1, w2, logits, K, renormalize=renormalize, expert_map=emap)
    else:
        ids, weights = _routing(data, rng, kind, T, K, num_global)
        plan = layer.plan_layer(xp.asarray(x), xp.asarray(w1), xp.asarray(w2), None, K,
                                topk_weights=xp.asarray(weights), topk_ids=xp.asarray(ids),
                                **kwargs)
        want = ref.moe_forward(x, w1, w2, None, K, topk_weights=weights, topk_ids=ids,
                               expert_map=emap)
    _poison(plan)
    got = device.to_numpy(plan.run())
    assert got.shape == (T, H) and got.dtype == dtype
    got = got.astype(np.float64)
    assert np.isfinite(got).all(), "non-finite output: a buffer was read before it was written"
    scale = max(np.linalg.norm(want), FLOOR[dtype_name] * np.sqrt(want.size), 1e-300)
    err = np.linalg.norm(got - want) / scale
    assert err <= TOL[dtype_name], f"relative error {err:.3g} > {TOL[dtype_name]}"


@pytest.mark.parametrize("fused_swiglu", [False, True])
@pytest.mark.parametrize("sorted_rows", [True, False])
def test_layer_every_replica_dropped(xp, sorted_rows, fused_swiglu):
    """All ids -1 or mapped to another rank: the output is exactly zero, not garbage."""
    T, H, I, E = 5, 24, 20, 3
    x = np.ones((T, H), np.float32)
    w1, w2 = np.ones((E, 2 * I, H), np.float32), np.ones((E, H, I), np.float32)
    ids = np.array([[-1, 3]] * T, np.int32)
    emap = np.array([0, 1, 2, -1], np.int32)
    config = LayerConfig.of(TileConfig(16, 16, 16)).replace(sorted_rows=sorted_rows)
    plan = layer.plan_layer(xp.asarray(x), xp.asarray(w1), xp.asarray(w2), None, 2,
                            topk_weights=xp.ones((T, 2), xp.float32), topk_ids=xp.asarray(ids),
                            expert_map=xp.asarray(emap), config=config,
                            fused_swiglu=fused_swiglu)
    _poison(plan)
    np.testing.assert_array_equal(device.to_numpy(plan.run()), np.zeros((T, H), np.float32))
