"""The re-implemented cuTile MoE sample (the benchmark's peer): its alignment, kernels and layer
against the float64 reference, on the emulator and (``-m gpu``) through ct.launch; its kernels
through the real compiler; the loader of the real sample for the comparison."""
import numpy as np
import pytest

from moe_tutorial import device, reference as ref, sample_compare, sample_peer
from moe_tutorial.compile import export_cubin

TOL = {"float16": 3e-3, "float32": 1e-5}      # relative error in norm (as tests/test_layer.py)


def _problem(xp, rng, T, H, E, I, K, dtype="float16", scale=0.2):
    x = rng.standard_normal((T, H))
    w1 = rng.standard_normal((E, 2 * I, H)) * scale
    w2 = rng.standard_normal((E, H, I)) * scale
    logits = rng.standard_normal((T, E)).astype(np.float32)
    weights, ids = ref.topk_softmax(logits, K, renormalize=True)
    return (xp.asarray(x.astype(dtype)), xp.asarray(w1.astype(dtype)),
            xp.asarray(w2.astype(dtype)), xp.asarray(weights.astype(np.float32)),
            xp.asarray(ids.astype(np.int32)))


@pytest.mark.parametrize("T, E, K, tile_m", [(37, 11, 4, 8), (5, 3, 1, 16), (64, 8, 2, 128)])
def test_align_is_the_reference_cut_at_the_padded_total(xp, rng, T, E, K, tile_m):
    """The sample's alignment: every expert's replicas in order, padded with T*K to a multiple
    of tile_m; arrays exactly as long as the used blocks (the reference's worst-case arrays
    cut there)."""
    ids = rng.integers(0, E, size=(T, K)).astype(np.int32)
    ids[0] = 0                                            # a heavy expert: several blocks
    ids[:, 0] = ids[:, 0] % max(E - 1, 1)                 # ... and maybe an unused one
    s, e = sample_peer.align(xp.asarray(ids), E, tile_m)
    want_s, want_e, total = ref.align(ids, E, tile_m)
    total = int(total[0])
    assert s.dtype == np.int32 and e.dtype == np.int32
    np.testing.assert_array_equal(device.to_numpy(s), want_s[:total])
    np.testing.assert_array_equal(device.to_numpy(e), want_e[:total // tile_m])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("dims, tiles", [
    ((10, 64, 4, 40, 2), (16, 32, 16)),        # I not a power of two, Kd % TILE_K != 0
    ((23, 48, 6, 24, 3), (16, 16, 32)),        # H % TILE_N != 0
])
def test_layer_matches_the_float64_reference(xp, rng, dims, tiles, dtype):
    T, H, E, I, K = dims
    x, w1, w2, weights, ids = _problem(xp, rng, T, H, E, I, K, dtype)
    want = ref.moe_forward(x, w1, w2, None, K, topk_weights=weights, topk_ids=ids)
    got = sample_peer.moe_forward(x, w1, w2, weights, ids, tiles=tiles)
    assert got.shape == (T, H) and got.dtype == x.dtype
    assert ref.relative_error(got, want) < TOL[dtype]
    s, e = sample_peer.align(ids, E, tiles[0])
    again = sample_peer.moe_forward_aligned(x, w1, w2, weights, ids, s, e, tiles=tiles)
    np.testing.assert_array_equal(device.to_numpy(again), device.to_numpy(got))


def test_kernels_write_every_placed_row(xp, rng):
    """Each kernel alone, its output poisoned with NaN first: GEMM1 (rows // K), GEMM2 (router
    weight) and the activation write every row of every replica, equal to the reference."""
    T, H, E, I, K = 13, 40, 5, 24, 2
    tiles = (16, 16, 16)
    x, w1, w2, weights, ids = _problem(xp, rng, T, H, E, I, K, "float32")
    s, e = sample_peer.align(ids, E, tiles[0])
    c1 = xp.full((T * K, 2 * I), np.nan, dtype=np.float32)
    sample_peer.gemm(x, w1, c1, weights, s, e, replicas=K, mul_routed_weight=False, tiles=tiles)
    assert ref.relative_error(c1, ref.grouped_matmul(x, w1, ids, row_divisor=K)) < 1e-5
    c2 = xp.full((T * K, I), np.nan, dtype=np.float32)
    sample_peer.silu_and_mul(c1, c2)
    assert ref.relative_error(c2, ref.silu_and_mul(device.to_numpy(c1))) < 1e-5
    c3 = xp.full((T * K, H), np.nan, dtype=np.float32)
    sample_peer.gemm(c2, w2, c3, weights, s, e, replicas=1, mul_routed_weight=True, tiles=tiles)
    want = ref.grouped_matmul(c2, w2, ids, row_divisor=1, topk_weights=weights)
    assert ref.relative_error(c3, want) < 1e-5


@pytest.mark.gpu
def test_sample_tiles_on_the_gpu_match_the_reference(rng):
    """The benchmark's configuration (128x128x64 tiles, float16) through ct.launch, on a layer
    with several blocks per expert and unused tail columns."""
    import cupy as cp
    T, H, E, I, K = 300, 512, 8, 384, 2
    x, w1, w2, weights, ids = _problem(cp, rng, T, H, E, I, K)
    want = ref.moe_forward(x, w1, w2, None, K, topk_weights=weights, topk_ids=ids)
    got = sample_peer.moe_forward(x, w1, w2, weights, ids)
    assert ref.relative_error(got, want) < TOL["float16"]


def test_bad_arguments_are_named(rng):
    x, w1, w2, weights, ids = _problem(np, rng, 4, 32, 3, 16, 2)
    with pytest.raises(ValueError, match="tiles"):
        sample_peer.moe_forward(x, w1, w2, weights, ids, tiles=(16, 24, 16))
    with pytest.raises(ValueError, match="w1 must be"):
        sample_peer.moe_forward(x, w1[:, :30], w2, weights, ids)
    with pytest.raises(ValueError, match="topk_ids and topk_weights"):
        sample_peer.moe_forward(x, w1, w2, weights[:, :1], ids)
    with pytest.raises(ValueError, match="hidden_states must have 2 axes"):
        sample_peer.moe_forward(x[None], w1, w2, weights, ids)
    with pytest.raises(ValueError, match="num_experts"):
        sample_peer.align(ids, 0)


@pytest.mark.parametrize("case", sample_peer.compile_cases(), ids=lambda c: c[0])
def test_kernels_compile_for_the_h100_and_h200(case):
    """The real compiler (tileiras, on the CPU) accepts both kernels as the benchmark launches
    them, for sm_90."""
    _, kernel, params = case
    assert export_cubin(kernel, params, "sm_90")[:4] == b"\x7fELF"


def test_the_real_sample_loader_explains_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MoE.py"):
        sample_compare.load_sample(tmp_path)
    (tmp_path / "MoE.py").write_text("def cutile_moe():\n    pass\n")
    with pytest.raises(ValueError, match="lacks moe_align_tile_size_torch"):
        sample_compare.load_sample(tmp_path)


@pytest.mark.gpu
def test_the_real_sample_and_the_re_implementation_agree():
    """With ``MOE_TUTORIAL_SAMPLE_DIR`` naming a folder that holds the sample's MoE.py (never
    part of this repository): the same alignment, both outputs right, every time measured."""
    import os

    from moe_tutorial import presets
    sample_dir = os.environ.get("MOE_TUTORIAL_SAMPLE_DIR")
    if not sample_dir:
        pytest.skip("MOE_TUTORIAL_SAMPLE_DIR is not set (a folder with the cuTile sample's MoE.py)")
    torch = pytest.importorskip("torch")
    shape = presets.shape_from_spec("200,512,8,384,2")
    row = sample_compare.compare_shape(sample_compare.load_sample(sample_dir), torch, shape,
                                       log=lambda *a: None)
    assert row["align_identical"]
    assert max(row["rel_err"].values()) < TOL["float16"]
    assert all(t["sample"] > 0 and t["re-implemented"] > 0 for t in row["ms"].values())
