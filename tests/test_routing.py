"""Routing kernels (topk_softmax, grouped_topk, align) against their float64 NumPy references.

Every kernel test takes the ``xp`` fixture: NumPy runs the kernels on the CPU emulator, CuPy
(``pytest -m gpu``) runs them through ``ct.launch``. Property tests use hypothesis on fresh
random inputs (100 examples on the emulator, 8 on the GPU where each new shape compiles a new
specialization); edge cases from the issue are spelled out as their own tests. Tolerances: router weights are computed in fp32 from the same inputs as the float64
reference, so they agree to a few fp32 ulps (rtol 1e-5, atol 1e-6); ids and alignment are exact.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from moe_tutorial import routing
from moe_tutorial.device import array_module, to_numpy
from moe_tutorial.reference import align as align_reference
from moe_tutorial.reference import grouped_topk as grouped_topk_reference
from moe_tutorial.reference import topk_softmax as topk_softmax_reference
from moe_tutorial.routing import AlignSettings, align_workspace_size, max_padded_size


def property_test(body):
    """Run ``body(xp, data)`` as a hypothesis test on each backend: many examples on the
    emulator; few on the GPU, where every new shape is a kernel specialization to compile."""
    def test(xp):
        examples = 100 if xp is np else 8
        run = given(data=st.data())(lambda data: body(xp, data))
        settings(max_examples=examples, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])(run)()
    test.__name__, test.__doc__ = body.__name__, body.__doc__
    return test


W_RTOL, W_ATOL = 1e-5, 1e-6


# Every output and scratch buffer the tests hand the kernels starts as NaN / a sentinel (through
# the out= and workspace= parameters), so an element the kernels never write (or scratch they
# read before writing) shows up as a wrong result.
POISON_INT = -123456789


def _poisoned_router(router):
    def call(logits, k, **kwargs):
        if getattr(logits, "ndim", 0) == 2 and isinstance(k, int) and "out" not in kwargs:
            xp, t = array_module(logits), logits.shape[0]
            kwargs["out"] = (xp.full((t, k), np.nan, xp.float32),
                             xp.full((t, k), POISON_INT, xp.int32))
        return router(logits, k, **kwargs)
    return call


topk_softmax = _poisoned_router(routing.topk_softmax)
grouped_topk = _poisoned_router(routing.grouped_topk)


def align(topk_ids, num_experts, tile_m, **kwargs):
    """routing.align with a poisoned workspace (when the arguments allow one)."""
    try:
        size = align_workspace_size(np.prod(topk_ids.shape), num_experts, tile_m,
                                    kwargs.get("settings", routing.ALIGN_SETTINGS))
    except (ValueError, TypeError, AttributeError):
        size = None                 # a bad-input test: align itself must refuse it
    if size is not None and "workspace" not in kwargs:
        xp = array_module(topk_ids)
        kwargs["workspace"] = xp.full((size,), POISON_INT, xp.int32)
    return routing.align(topk_ids, num_experts, tile_m, **kwargs)


def _np_rng(data):
    return np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))


def _random_logits(rng, t, e, dtype, kind):
    if kind == "ties":          # few distinct values: many exact ties between experts
        x = rng.integers(-2, 3, size=(t, e)).astype(np.float64)
    else:
        x = rng.standard_normal((t, e)) * 2.0
    return x.astype(dtype)


# ------------------------------------------------------------------------------------------
# topk_softmax
# ------------------------------------------------------------------------------------------
def _check_router(got, want, k, t):
    w, ids = (to_numpy(a) for a in got)
    want_w, want_ids = want
    assert w.shape == (t, k) and w.dtype == np.float32
    assert ids.shape == (t, k) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(w, want_w, rtol=W_RTOL, atol=W_ATOL)


@property_test
def test_topk_softmax_matches_reference(xp, data):
    rng = _np_rng(data)
    t = data.draw(st.integers(1, 40), label="T")
    e = data.draw(st.integers(1, 300), label="E")
    k = data.draw(st.integers(1, min(e, 8)), label="k")
    renormalize = data.draw(st.booleans(), label="renormalize")
    dtype = data.draw(st.sampled_from([np.float32, np.float16]), label="dtype")
    logits = _random_logits(rng, t, e, dtype, data.draw(st.sampled_from(["normal", "ties"])))
    got = topk_softmax(xp.asarray(logits), k, renormalize=renormalize)
    _check_router(got, topk_softmax_reference(logits, k, renormalize=renormalize), k, t)


def test_topk_softmax_ties_go_to_lower_expert_id(xp):
    logits = np.zeros((3, 16), np.float32)
    logits[1, [3, 9, 12]] = 1.0          # three-way tie at the top
    logits[2] = np.arange(16) % 4        # ties in groups of four
    w, ids = topk_softmax(xp.asarray(logits), 4)
    np.testing.assert_array_equal(to_numpy(ids), [[0, 1, 2, 3], [3, 9, 12, 0], [3, 7, 11, 15]])
    np.testing.assert_allclose(to_numpy(w)[0], np.full(4, 1 / 16), rtol=W_RTOL)


@pytest.mark.parametrize("t,e,k", [(1, 1, 1), (5, 6, 6), (3, 512, 8), (70, 8, 2)])
def test_topk_softmax_edge_shapes(xp, rng, t, e, k):
    """E = 1, K = E, a large E (padded to 512), T beyond one token tile."""
    logits = rng.standard_normal((t, e)).astype(np.float32)
    for renormalize in (False, True):
        got = topk_softmax(xp.asarray(logits), k, renormalize=renormalize)
        _check_router(got, topk_softmax_reference(logits, k, renormalize=renormalize), k, t)
    if k == e:   # every expert chosen: the weights are the whole softmax, summing to 1
        np.testing.assert_allclose(to_numpy(got[0]).sum(axis=1), 1.0, rtol=1e-5)


def test_topk_softmax_strided_and_inf_logits(xp, rng):
    base = rng.standard_normal((9, 40)).astype(np.float32)
    base[2, :] = -np.inf
    base[2, [4, 16]] = [0.5, 0.25]        # a masked-out row but two finite experts
    logits = base[::2, ::2]               # a strided view: (5, 20)
    got = topk_softmax(xp.asarray(base)[::2, ::2], 4)
    _check_router(got, topk_softmax_reference(logits, 4), 4, 5)


def test_topk_softmax_signed_zeros_and_infinities(xp):
    """The kernel selects on int32 keys that sort like the floats: -0.0 must tie with +0.0
    (lower id first, as in the reference), and -inf logits must stay selectable, after every
    finite one and before nothing -- a chosen expert is hidden below all of them."""
    inf = np.inf
    logits = np.array([[0.0, -0.0, 0.0, -0.0, -1.0, 2.0],
                       [-0.0, -inf, -inf, -1e30, -inf, -3.4028235e38],
                       [-inf, -inf, -inf, -inf, -inf, 5.0],
                       [-3.0, -inf, 7.5, -inf, -0.0, 7.5]], np.float32)
    for k in (1, 3, 6):
        got = topk_softmax(xp.asarray(logits), k)
        _check_router(got, topk_softmax_reference(logits, k), k, len(logits))
    np.testing.assert_array_equal(to_numpy(got[1])[:3], [[5, 0, 1, 2, 3, 4],
                                                         [0, 3, 5, 1, 2, 4],
                                                         [5, 0, 1, 2, 3, 4]])


def test_topk_softmax_bfloat16_on_cpu(rng):
    """bfloat16 logits (ml_dtypes) on the emulator; CuPy has no bfloat16."""
    import ml_dtypes
    logits = rng.standard_normal((20, 24)).astype(ml_dtypes.bfloat16)
    got = topk_softmax(logits, 5, renormalize=True)
    _check_router(got, topk_softmax_reference(logits, 5, renormalize=True), 5, 20)


def test_topk_softmax_empty_batch(xp):
    w, ids = topk_softmax(xp.zeros((0, 8), xp.float32), 2)
    assert w.shape == (0, 2) and ids.shape == (0, 2)


def test_topk_softmax_rejects_bad_input(xp):
    good = xp.zeros((4, 8), xp.float32)
    with pytest.raises(ValueError, match="logits must have shape"):
        topk_softmax(xp.zeros(8, xp.float32), 2)
    with pytest.raises(TypeError, match="logits must be a floating-point"):
        topk_softmax(xp.zeros((4, 8), xp.int32), 2)
    with pytest.raises(ValueError, match=r"k must be in \[1, E=8\]"):
        topk_softmax(good, 9)
    with pytest.raises(ValueError, match="k must be in"):
        topk_softmax(good, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        topk_softmax(good, 2.0)
    bad = xp.asarray(np.where(np.eye(4, 8) > 0, np.nan, 0).astype(np.float32))
    with pytest.raises(ValueError, match="logits contains NaN"):
        topk_softmax(bad, 2)


def test_topk_softmax_reference_by_hand():
    logits = np.log(np.array([[1.0, 4.0, 2.0, 1.0]]))      # softmax = [1, 4, 2, 1] / 8
    w, ids = topk_softmax_reference(logits, 2)
    np.testing.assert_array_equal(ids, [[1, 2]])
    np.testing.assert_allclose(w, [[0.5, 0.25]])
    w, _ = topk_softmax_reference(logits, 2, renormalize=True)
    np.testing.assert_allclose(w, [[2 / 3, 1 / 3]], rtol=1e-6)


# ------------------------------------------------------------------------------------------
# grouped_topk (DeepSeek-V3)
# ------------------------------------------------------------------------------------------
def _clear_tokens(logits, k, n_group, topk_group, bias, tol=1e-5):
    """Tokens whose routing does not hinge on a near-tie. The device compares fp32 scores, the
    reference float64 ones, so two scores closer than ``tol`` may legitimately come out in
    either order -- unless they are computed from identical inputs (same logit and bias, or
    for groups the same two best experts' inputs): such ties are exact on both sides and both
    break them toward the lower id. A token is clear when no decision it depends on (which
    groups are kept, which experts are chosen, in which order) involves a near-tie."""
    _, ids, (select, group_score, keep) = grouped_topk_reference(
        logits, k, n_group=n_group, topk_group=topk_group, e_score_correction_bias=bias,
        return_scores=True)
    t, e = select.shape
    size = e // n_group
    inputs = np.stack([np.asarray(logits, np.float64),
                       np.broadcast_to(0.0 if bias is None else np.asarray(bias, np.float64),
                                       (t, e))], axis=-1)                   # (T, E, 2)
    clear = np.ones(t, bool)
    for i in range(t):
        # groups: kept vs dropped, identified by the inputs of their deciding experts
        top = 2 if bias is not None else 1
        order = np.argsort(-select[i].reshape(n_group, size), axis=1, kind="stable")[:, :top]
        key = [inputs[i, g * size + order[g]].tobytes() for g in range(n_group)]
        kept = keep[i].reshape(n_group, size)[:, 0]
        for a in np.flatnonzero(kept):
            for b in np.flatnonzero(~kept):
                if abs(group_score[i, a] - group_score[i, b]) < tol and key[a] != key[b]:
                    clear[i] = False
        # experts: every chosen one vs every other allowed one (also fixes the output order)
        allowed = np.flatnonzero(keep[i])
        for a in ids[i]:
            for b in allowed:
                if b != a and abs(select[i, a] - select[i, b]) < tol and \
                        inputs[i, a].tobytes() != inputs[i, b].tobytes():
                    clear[i] = False
    return clear


def _check_grouped(xp, logits, k, n_group, topk_group, bias, scale, renormalize,
                   in_hypothesis=False):
    args = dict(n_group=n_group, topk_group=topk_group, routed_scaling_factor=scale,
                renormalize=renormalize)
    w, ids = grouped_topk(xp.asarray(logits), k, **args,
                          e_score_correction_bias=None if bias is None else xp.asarray(bias))
    want_w, want_ids = grouped_topk_reference(logits, k, e_score_correction_bias=bias, **args)
    w, ids = to_numpy(w), to_numpy(ids)
    assert w.shape == ids.shape == (len(logits), k)
    assert w.dtype == np.float32 and ids.dtype == np.int32
    clear = _clear_tokens(logits, k, n_group, topk_group, bias)
    if in_hypothesis:        # e.g. a single token that hinges on a near-tie: draw another
        assume(clear.mean() >= 0.5)
    assert clear.mean() >= 0.5, "test inputs too close to ties to be informative"
    np.testing.assert_array_equal(ids[clear], want_ids[clear])
    np.testing.assert_allclose(w[clear], want_w[clear], rtol=W_RTOL, atol=W_ATOL)


@property_test
def test_grouped_topk_matches_reference(xp, data):
    rng = _np_rng(data)
    n_group = data.draw(st.sampled_from([1, 2, 3, 4, 8]), label="n_group")
    group_size = data.draw(st.sampled_from([2, 3, 4, 5, 8]), label="group_size")
    topk_group = data.draw(st.integers(1, n_group), label="topk_group")
    k = data.draw(st.integers(1, min(8, topk_group * group_size)), label="k")
    t = data.draw(st.integers(1, 24), label="T")
    e = n_group * group_size
    logits = _random_logits(rng, t, e, np.float32, data.draw(st.sampled_from(["normal", "ties"])))
    bias = None
    if data.draw(st.booleans(), label="bias"):
        bias = (rng.integers(-4, 5, size=e) * 0.05).astype(np.float32)
    scale = data.draw(st.sampled_from([1.0, 2.5]), label="scale")
    _check_grouped(xp, logits, k, n_group, topk_group, bias, scale,
                   data.draw(st.booleans(), label="renormalize"), in_hypothesis=True)


def test_grouped_topk_ties_go_to_lower_ids(xp):
    """Equal scores everywhere: the lowest groups are kept and the lowest experts chosen."""
    logits = np.zeros((2, 16), np.float32)
    logits[1, [5, 13]] = 1.0               # two winners in different groups, then ties
    for bias in (None, np.full(16, 0.25, np.float32)):
        _, ids = grouped_topk(xp.asarray(logits), 3, n_group=4, topk_group=2,
                              e_score_correction_bias=None if bias is None else xp.asarray(bias))
        np.testing.assert_array_equal(to_numpy(ids), [[0, 1, 2], [5, 13, 4]])


def test_grouped_topk_deepseek_v3_shape(xp, rng):
    """E=256 in 8 groups of 32, keep 4 groups, k=8, bias, routed_scaling_factor=2.5."""
    logits = rng.standard_normal((6, 256)).astype(np.float32)
    bias = (rng.standard_normal(256) * 0.1).astype(np.float32)
    _check_grouped(xp, logits, 8, 8, 4, bias, 2.5, True)


def test_grouped_topk_without_groups_is_sigmoid_topk(xp, rng):
    """n_group = topk_group = 1 and no bias: plain top-k of the sigmoid scores."""
    logits = rng.standard_normal((7, 12)).astype(np.float32)
    w, ids = grouped_topk(xp.asarray(logits), 3, n_group=1, topk_group=1, renormalize=False)
    want_ids = np.argsort(-logits, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(to_numpy(ids), want_ids)
    np.testing.assert_allclose(to_numpy(w), 1 / (1 + np.exp(-np.take_along_axis(
        logits.astype(np.float64), want_ids, axis=1))), rtol=W_RTOL)


def test_grouped_topk_reference_by_hand():
    # 8 experts in 4 groups of 2. Sigmoid scores s, bias b; biased = s + b.
    s = np.array([[0.9, 0.1, 0.6, 0.6, 0.2, 0.3, 0.7, 0.65]])
    b = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.5, 0.0])
    logits = np.log(s / (1 - s))
    # biased group sums: g0 = 1.0, g1 = 1.2, g2 = 0.5, g3 = 0.2 + 0.65 = 0.85 -> keep g1, g0.
    # best biased experts in them: e0 (0.9), then e2 and e3 tie at 0.6 -> e2 (lower id).
    w, ids = grouped_topk_reference(logits, 2, n_group=4, topk_group=2,
                                    e_score_correction_bias=b, renormalize=False,
                                    routed_scaling_factor=2.0)
    np.testing.assert_array_equal(ids, [[0, 2]])
    np.testing.assert_allclose(w, [[1.8, 1.2]], rtol=1e-6)
    # Without the bias a group's score is its best expert (vLLM): g3 = 0.7 beats g1 = 0.6.
    _, ids = grouped_topk_reference(logits, 2, n_group=4, topk_group=2)
    np.testing.assert_array_equal(ids, [[0, 6]])


def test_grouped_topk_rejects_bad_input(xp):
    logits = xp.zeros((2, 16), xp.float32)
    with pytest.raises(ValueError, match="n_group=3 must be >= 1 and divide"):
        grouped_topk(logits, 2, n_group=3, topk_group=1)
    with pytest.raises(ValueError, match="topk_group must be in"):
        grouped_topk(logits, 2, n_group=4, topk_group=5)
    with pytest.raises(ValueError, match="k=9 is more than the 8 experts"):
        grouped_topk(logits, 9, n_group=4, topk_group=2)
    with pytest.raises(ValueError, match=r"e_score_correction_bias must have shape \(E,\)"):
        grouped_topk(logits, 2, n_group=4, topk_group=2,
                     e_score_correction_bias=xp.zeros(8, xp.float32))
    with pytest.raises(ValueError, match="groups need >= 2 experts"):
        grouped_topk(logits, 2, n_group=16, topk_group=2,
                     e_score_correction_bias=xp.zeros(16, xp.float32))
    with pytest.raises(TypeError, match="e_score_correction_bias must be an array"):
        grouped_topk(logits, 2, n_group=4, topk_group=2, e_score_correction_bias=[0.0] * 16)


# ------------------------------------------------------------------------------------------
# align
# ------------------------------------------------------------------------------------------
def _check_align_invariants(sorted_ids, expert_ids, ntpp, local_ids, num_experts, tile_m):
    """What the GEMM relies on, checked without the reference."""
    n = local_ids.size
    total = int(ntpp[0])
    assert total % tile_m == 0 and sorted_ids.size % tile_m == 0
    assert sorted_ids.size == max_padded_size(n, num_experts, tile_m)
    assert np.all(sorted_ids[total:] == n), "rows past num_tokens_post_padded hold the sentinel"
    assert np.all(expert_ids[total // tile_m:] == -1)
    kept = np.flatnonzero(local_ids >= 0)
    real = sorted_ids[:total][sorted_ids[:total] != n]
    np.testing.assert_array_equal(np.sort(real), kept)      # every kept replica exactly once
    owner = np.repeat(expert_ids[:total // tile_m], tile_m)
    rows = np.flatnonzero(sorted_ids[:total] != n)
    np.testing.assert_array_equal(owner[rows], local_ids[sorted_ids[rows]])
    for e in np.unique(owner):                                # stable inside an expert
        mine = sorted_ids[:total][(owner == e) & (sorted_ids[:total] != n)]
        assert np.all(np.diff(mine) > 0)
    assert np.all(np.diff(expert_ids[:total // tile_m]) >= 0)  # experts in ascending order


def _run_align(xp, topk_ids, num_experts, tile_m, expert_map=None, **kwargs):
    emap = None if expert_map is None else xp.asarray(expert_map)
    got = align(xp.asarray(topk_ids), num_experts, tile_m, expert_map=emap, **kwargs)
    got = [to_numpy(a) for a in got]
    want = align_reference(topk_ids, num_experts, tile_m, expert_map=expert_map)
    for g, w, name in zip(got, want, ("sorted_token_ids", "expert_ids",
                                      "num_tokens_post_padded")):
        assert g.dtype == np.int32, name
        np.testing.assert_array_equal(g, w, err_msg=name)
    flat = np.asarray(topk_ids, np.int64).reshape(-1)
    if expert_map is not None:
        inside = (flat >= 0) & (flat < len(expert_map))
        flat = np.where(inside, np.asarray(expert_map)[np.where(inside, flat, 0)], -1)
    _check_align_invariants(*got, np.where((flat >= 0) & (flat < num_experts), flat, -1),
                            num_experts, tile_m)
    return got


def _routing_ids(rng, t, k, e, kind):
    if kind == "uniform":              # duplicates within a token's top-k allowed
        return rng.integers(0, e, size=(t, k))
    if kind == "distinct":             # like a real router: k different experts per token
        return np.argsort(rng.random((t, e)), axis=1)[:, :k]
    if kind == "skewed":               # a few experts get most tokens; many stay empty
        p = rng.random(e) ** 6
        return rng.choice(e, size=(t, k), p=p / p.sum())
    if kind == "one_expert":
        return np.full((t, k), rng.integers(0, e))
    if kind == "with_drops":
        ids = rng.integers(0, e, size=(t, k))
        return np.where(rng.random((t, k)) < 0.3, -1, ids)
    raise ValueError(kind)


ALIGN_KINDS = ["uniform", "distinct", "skewed", "one_expert", "with_drops"]


@property_test
def test_align_matches_reference(xp, data):
    rng = _np_rng(data)
    e = data.draw(st.integers(1, 160), label="E")
    t = data.draw(st.integers(1, 64), label="T")
    kind = data.draw(st.sampled_from(ALIGN_KINDS), label="kind")
    k = data.draw(st.integers(1, e if kind == "distinct" else 8), label="K")
    k = min(k, 8)
    tile_m = data.draw(st.sampled_from([1, 2, 4, 8, 16, 32]), label="tile_m")
    topk_ids = _routing_ids(rng, t, k, e, kind).astype(np.int32)
    _run_align(xp, topk_ids, e, tile_m)


@property_test
def test_align_expert_parallel_matches_reference(xp, data):
    """expert_map: global id -> local id or -1 (another rank); those replicas are dropped."""
    rng = _np_rng(data)
    global_e = data.draw(st.integers(1, 32), label="global E")
    t = data.draw(st.integers(1, 24), label="T")
    k = data.draw(st.integers(1, 6), label="K")
    tile_m = data.draw(st.sampled_from([1, 4, 16]), label="tile_m")
    with_minus_one = data.draw(st.booleans(), label="map has -1")
    local = rng.random(global_e) < (0.5 if with_minus_one else 1.1)
    num_local = max(int(local.sum()), 1)
    expert_map = np.full(global_e, -1, np.int32)
    expert_map[local] = rng.permutation(num_local)[:int(local.sum())]
    topk_ids = _routing_ids(rng, t, k, global_e,
                            data.draw(st.sampled_from(["uniform", "with_drops"]))).astype(np.int32)
    _run_align(xp, topk_ids, num_local, tile_m, expert_map)


@pytest.mark.parametrize("case", [
    "T=1", "E=1", "K=E", "one_expert", "empty_experts", "not_multiple", "all_dropped"])
def test_align_edge_cases(xp, rng, case):
    e, tile_m = 6, 4
    topk_ids = {
        "T=1": np.array([[3, 1]]),
        "E=1": np.zeros((5, 1)),
        "K=E": np.tile(np.arange(e), (3, 1)),
        "one_expert": np.full((9, 2), 2),
        "empty_experts": rng.choice([0, 5], size=(7, 2)),
        "not_multiple": rng.integers(0, e, size=(5, 3)),     # 15 replicas, tile_m 4
        "all_dropped": np.full((3, 2), -1),
    }[case].astype(np.int32)
    _run_align(xp, topk_ids, 1 if case == "E=1" else e, tile_m)


def test_align_hand_example(xp):
    """Four tokens, top-3 of experts 1..4, tile_m 4: every expert gets 3 replicas + 1 pad."""
    topk_ids = np.array([[2, 3, 4], [1, 2, 4], [1, 3, 4], [1, 2, 3]], np.int32)
    s, e, n = _run_align(xp, topk_ids, 5, 4)
    np.testing.assert_array_equal(s[:16], [3, 6, 9, 12, 0, 4, 10, 12, 1, 7, 11, 12, 2, 5, 8, 12])
    np.testing.assert_array_equal(e, [1, 2, 3, 4, -1, -1, -1])
    assert n.tolist() == [16] and len(s) == 28           # 12 + 5 * 3 = 27, rounded up to 28


def test_align_many_chunks_and_expert_slices(xp, rng):
    """Shrink the kernels' tiles so small inputs exercise every loop: many chunks, several
    one-hot and comparison tiles per chunk, several blocks (expert slices) in the
    offsets kernel."""
    small = AlignSettings(target_chunks=64, min_chunk=4,
                          count_elems=64,     # one-hot tiles of 2 rows
                          pair_elems=8,       # comparison tiles of 2 rows
                          scan_elems=64,      # offsets: several expert slices
                          blocks_per_tile=2)
    for e, kind in ((21, "skewed"), (21, "uniform"), (3, "one_expert")):
        topk_ids = _routing_ids(rng, 50, 4, e, kind).astype(np.int32)
        _run_align(xp, topk_ids, e, 4, settings=small)


def test_align_chunks_stay_small_enough_to_compile():
    """The scatter kernel's loop over a chunk is unrolled (its cubin grows with the chunk): 2048-
    replica chunks, DeepSeek-V3 at T=40960, took minutes to compile on an H200. Chunks stay at
    ``max_chunk`` replicas, and grow past it only when there would be more than ``max_chunks``."""
    s = routing.ALIGN_SETTINGS
    for n, e in ((40960 * 8, 256), (65536 * 2, 8), (16384, 2048), (65536, 4096)):
        lay = routing._align_layout(n, e, 64, s)
        assert lay.chunk <= s.max_chunk and lay.num_chunks <= s.max_chunks, (n, e, lay)
        assert lay.num_chunks * lay.chunk >= n
    huge = routing._align_layout(2**24, 8, 64, s)
    assert huge.chunk == 2**24 // s.max_chunks and huge.num_chunks == s.max_chunks


@pytest.mark.parametrize("t,k,e,tile_m", [(4096, 8, 128, 64), (300, 8, 512, 16)])
def test_align_large(xp, rng, t, k, e, tile_m):
    """T*K = 32k replicas (the benchmark's size) on 128 experts; E = 512."""
    topk_ids = _routing_ids(rng, t, k, e, "distinct").astype(np.int32)
    _run_align(xp, topk_ids, e, tile_m)


def test_align_zero_tokens(xp):
    s, e, n = _run_align(xp, np.zeros((0, 4), np.int32), 3, 8)
    assert n.tolist() == [0] and np.all(s == 0) and np.all(e == -1)


def test_align_accepts_int64_ids(xp, rng):
    _run_align(xp, rng.integers(0, 7, size=(6, 2)).astype(np.int64), 7, 2)


def test_align_without_validation_never_writes_out_of_range(xp, rng):
    """validate=False skips the host-side range check; out-of-range ids are then dropped by the
    kernels (they never index out of bounds)."""
    topk_ids = rng.integers(0, 6, size=(8, 2)).astype(np.int32)
    topk_ids[[1, 4], [0, 1]] = [6, 1000]
    topk_ids[2, 0] = -7
    got = [to_numpy(a) for a in align(xp.asarray(topk_ids), 6, 4, validate=False)]
    want = align_reference(np.where((topk_ids >= 0) & (topk_ids < 6), topk_ids, -1), 6, 4)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_align_is_deterministic(xp, rng):
    topk_ids = xp.asarray(_routing_ids(rng, 33, 4, 9, "uniform").astype(np.int32))
    first = [to_numpy(a) for a in align(topk_ids, 9, 8)]
    for _ in range(2):
        for a, b in zip(first, align(topk_ids, 9, 8)):
            np.testing.assert_array_equal(a, to_numpy(b))


def test_align_rejects_bad_input(xp):
    ids = xp.zeros((4, 2), xp.int32)
    with pytest.raises(ValueError, match="topk_ids must have shape"):
        align(xp.zeros(8, xp.int32), 4, 16)
    with pytest.raises(TypeError, match="topk_ids must be an integer array"):
        align(xp.zeros((4, 2), xp.float32), 4, 16)
    with pytest.raises(ValueError, match="tile_m must be a power of two"):
        align(ids, 4, 24)
    with pytest.raises(ValueError, match="tile_m must be a power of two <= 1024"):
        align(ids, 4, 2048)
    with pytest.raises(ValueError, match=r"num_experts must be in \[1, 4096\]"):
        align(ids, 0, 16)
    with pytest.raises(ValueError, match=r"topk_ids must be in \[-1, num_experts=4\).*found 4"):
        align(ids + 4, 4, 16)
    with pytest.raises(ValueError, match="found -2"):
        align(ids - 2, 4, 16)
    emap = xp.asarray(np.array([0, -1, 1], np.int32))
    with pytest.raises(ValueError, match=r"topk_ids must be in \[-1, len\(expert_map\)=3\)"):
        align(ids + 3, 2, 16, expert_map=emap)
    with pytest.raises(ValueError, match=r"expert_map values must be local expert ids"):
        align(ids, 1, 16, expert_map=emap)
    with pytest.raises(TypeError, match="expert_map must be an integer array"):
        align(ids, 2, 16, expert_map=emap.astype(xp.float32))
    with pytest.raises(TypeError, match="expert_map must be an array on the same device"):
        align(ids, 2, 16, expert_map=[0, 1, 1])


def test_align_refuses_sizes_beyond_int32(xp):
    """2**28 tokens x 8 = 2**31 replicas: the indices would not fit int32. Refused before any
    allocation (a zero-stride view, so the test needs no memory)."""
    huge = xp.broadcast_to(xp.zeros((1, 8), xp.int32), (2**28, 8))
    with pytest.raises(ValueError, match="does not fit int32"):
        align(huge, 128, 64)
    # Just below the limit the host-side checks accept it (not launched here: 8 GiB of ids).
    below = xp.broadcast_to(xp.zeros((1, 8), xp.int32), (2**28 - 2**14, 8))
    assert routing._check_align_args(below, 128, 64, None, routing.ALIGN_SETTINGS).size < 2**31


def test_max_padded_size():
    assert max_padded_size(12, 5, 4) == 28
    assert max_padded_size(0, 3, 8) == 24
    assert max_padded_size(5, 1, 1) == 5


def test_benchmark_peers_agree_with_reference(rng):
    """The benchmark's CuPy-sort and host-loop alignments, run here with NumPy."""
    from moe_tutorial.bench_routing import align_cupy_sort, align_host_loop
    for kind in ALIGN_KINDS[:4]:
        topk_ids = _routing_ids(rng, 37, 4, 11, kind).astype(np.int32)
        want = align_reference(topk_ids, 11, 8)
        for got, expected in zip(align_cupy_sort(topk_ids, 11, 8), want):
            np.testing.assert_array_equal(got, expected)
        s, e, total = align_host_loop(topk_ids, 11, 8)
        assert total == want[2][0]
        np.testing.assert_array_equal(s, want[0][:total])
        np.testing.assert_array_equal(e, want[1][:total // 8])


# ------------------------------------------------------------------------------------------
# Notebook 01 checkers: they accept a correct answer and explain a wrong one
# ------------------------------------------------------------------------------------------
def test_checkers_accept_solutions_and_explain_mistakes(capsys):
    import cuda.tile as ct
    from moe_tutorial import check

    @ct.kernel
    def softmax_ok(logits, probs, TILE_T: ct.Constant[int], E_PAD: ct.Constant[int]):
        x = ct.load(logits, (ct.bid(0), 0), shape=(TILE_T, E_PAD),
                    padding_mode=ct.PaddingMode.NEG_INF)
        z = ct.exp(x - ct.max(x, axis=1, keepdims=True))
        ct.store(probs, (ct.bid(0), 0), z / ct.sum(z, axis=1, keepdims=True))

    @ct.kernel
    def softmax_zero_pad(logits, probs, TILE_T: ct.Constant[int], E_PAD: ct.Constant[int]):
        x = ct.load(logits, (ct.bid(0), 0), shape=(TILE_T, E_PAD),
                    padding_mode=ct.PaddingMode.ZERO)
        z = ct.exp(x - ct.max(x, axis=1, keepdims=True))
        ct.store(probs, (ct.bid(0), 0), z / ct.sum(z, axis=1, keepdims=True))

    @ct.kernel
    def histogram_ok(flat_ids, counts, TILE: ct.Constant[int]):
        index = ct.bid(0) * TILE + ct.arange(TILE, dtype=ct.int32)
        ids = ct.gather(flat_ids, index, mask=index < flat_ids.shape[0], padding_value=-1)
        ct.atomic_add(counts, ids, 1)

    @ct.kernel
    def histogram_zero_pad(flat_ids, counts, TILE: ct.Constant[int]):
        ids = ct.load(flat_ids, (ct.bid(0),), shape=(TILE,), padding_mode=ct.PaddingMode.ZERO)
        ct.atomic_add(counts, ids, 1)

    assert check.router_softmax(softmax_ok)
    assert not check.router_softmax(softmax_zero_pad)
    assert "padding columns count as logits of 0" in capsys.readouterr().out
    assert check.expert_histogram(histogram_ok)
    assert not check.expert_histogram(histogram_zero_pad)
    assert "counted as expert 0" in capsys.readouterr().out
    assert check.block_owners(lambda c, m: np.repeat(np.arange(len(c)), -(-c // m)))
    assert not check.block_owners(lambda c, m: np.repeat(np.arange(len(c)), c // m))
    assert "rounds down" in capsys.readouterr().out
    assert not check.router_softmax(lambda *a: None)          # not a kernel: explained
    assert "decorate it with @ct.kernel" in capsys.readouterr().out
