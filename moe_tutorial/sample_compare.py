"""NVIDIA's cuTile MoE sample itself against our re-implementation (``sample_peer``), GPU only.

    python -m moe_tutorial.bench --compare-sample-dir DIR [--only TEXT | --shape T,H,E,I,K]

``DIR`` is a folder holding the sample's ``MoE.py`` (the ``samples/`` folder of a
NVIDIA/cutile-python checkout, or a copy of that one file); a relative path is taken from the
current directory. The sample is imported from there at run time -- none of its code is in this
repository -- and needs torch with CUDA.

For every shape, on the same float16 inputs and the same routing (our router's ids and
weights), it times with ``timing.median_ms``: each GEMM alone, the activation, the layer's
kernels with the alignment excluded (the benchmark's ``sample_kernels``), and the whole layer
with the host alignment (``sample_e2e``) -- the sample's functions launched from torch, ours
from CuPy -- and, for the record, our package's gather kernel (``fused_moe_matmul``, gather
layout) with the same tiles and alignment. Both alignments must be identical and both outputs
are checked against the float64 reference. Both libraries launch on the legacy default stream,
so the events of the timer bracket the torch launches too.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from . import reference as ref
from . import presets, sample_peer, timing, tuning
from .fused_moe import TileConfig, gemm_launch

REQUIRED = ("moe_align_tile_size_torch", "invoke_fused_moe_kernel", "invoke_silu_and_mul_kernel",
            "cutile_moe")
MATCH = 0.05                 # the re-implementation's kernels within 5% of the sample's
CHECK_TOKENS = 64


def load_sample(sample_dir):
    """Import ``MoE.py`` from ``sample_dir``; a clear error if it is not the sample."""
    path = Path(sample_dir) / "MoE.py"
    if not path.is_file():
        raise FileNotFoundError(f"--compare-sample-dir: no MoE.py in {Path(sample_dir).resolve()} "
                                f"(copy samples/MoE.py of NVIDIA/cutile-python there)")
    spec = importlib.util.spec_from_file_location("cutile_sample_moe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [n for n in REQUIRED if not hasattr(module, n)]
    if missing:
        raise ValueError(f"--compare-sample-dir: {path} lacks {', '.join(missing)}: not the "
                         f"cuTile MoE sample this comparison was written for")
    return module


def compare_shape(sample, torch, shape, log=print) -> dict:
    """Times (ms) of the sample and of ``sample_peer`` for one shape; see the module."""
    import cupy as cp
    T, H, E, I, K = shape.dims
    tm, tn, tk = sample_peer.SAMPLE_TILES
    prob = presets.make_problem(shape.preset, T, dtype="float16", xp=cp, seed=11)
    x, w1, w2 = prob["hidden_states"], prob["w1"], prob["w2"]
    weights, ids = tuning.route(shape, prob)
    tx, tw1, tw2, tweights = (torch.from_dlpack(a) for a in (x, w1, w2, weights))  # shared
    tids = torch.from_dlpack(ids).long()

    s_sorted, s_experts = sample.moe_align_tile_size_torch(tids, tm, E)
    sorted_ids, expert_ids = sample_peer.align(ids, E, tm)
    same_align = (cp.array_equal(cp.from_dlpack(s_sorted.to(torch.int32)), sorted_ids)
                  and cp.array_equal(cp.from_dlpack(s_experts.to(torch.int32)), expert_ids))

    def t_zeros(*shape_):
        return torch.zeros(shape_, device=tx.device, dtype=tx.dtype)

    # the sample's own functions, alignment excluded (its cutile_moe after the alignment)
    tc1, tc2, tc3 = t_zeros(T, K, 2 * I), t_zeros(T * K, I), t_zeros(T, K, H)

    def s_gemm1(a=tx, c=tc1):
        sample.invoke_fused_moe_kernel(a, tw1, c, tweights, s_sorted, s_experts,
                                       mul_routed_weight=False, num_token_replicas=K,
                                       tile_m=tm, tile_n=tn, tile_k=tk)

    def s_silu(a=tc1, c=tc2):
        sample.invoke_silu_and_mul_kernel(a.view(-1, 2 * I), c)

    def s_gemm2(a=tc2, c=tc3):
        sample.invoke_fused_moe_kernel(a, tw2, c, tweights, s_sorted, s_experts,
                                       mul_routed_weight=True, num_token_replicas=1,
                                       tile_m=tm, tile_n=tn, tile_k=tk)

    def s_kernels():                     # fresh zero-filled intermediates, as the sample does
        c1_, c2_, c3_ = t_zeros(T, K, 2 * I), t_zeros(T * K, I), t_zeros(T, K, H)
        s_gemm1(tx, c1_), s_silu(c1_, c2_), s_gemm2(c2_, c3_)
        return torch.sum(c3_, dim=1)

    def s_e2e():
        return sample.cutile_moe(tx, tw1, tw2, tweights, tids, tm, tn, tk)

    c1, c2, c3 = (cp.zeros((T * K, n), x.dtype) for n in (2 * I, I, H))
    ours = {
        "gemm1 (gate+up)": lambda: sample_peer.gemm(x, w1, c1, weights, sorted_ids, expert_ids,
                                                    replicas=K, mul_routed_weight=False),
        "silu_and_mul": lambda: sample_peer.silu_and_mul(c1, c2),
        "gemm2 (down, x weight)": lambda: sample_peer.gemm(c2, w2, c3, weights, sorted_ids,
                                                           expert_ids, replicas=1,
                                                           mul_routed_weight=True),
        "kernels, alignment excluded": lambda: sample_peer.moe_forward_aligned(
            x, w1, w2, weights, ids, sorted_ids, expert_ids),
        "end to end, host alignment": lambda: sample_peer.moe_forward(x, w1, w2, weights, ids),
    }
    theirs = dict(zip(ours, (s_gemm1, s_silu, s_gemm2, s_kernels, s_e2e)))
    cfg = TileConfig(tm, tn, tk, sample_peer.GROUP_SIZE_M)
    g1 = gemm_launch(x, w1, c1, None, sorted_ids, expert_ids, top_k=K, mul_routed_weight=False,
                     swiglu=False, config=cfg)
    g2 = gemm_launch(c2, w2, c3, weights.reshape(-1), sorted_ids, expert_ids, top_k=1,
                     mul_routed_weight=True, swiglu=False, config=cfg)
    from .device import launch
    package = {"gemm1 (gate+up)": lambda: launch(*g1), "gemm2 (down, x weight)": lambda: launch(*g2)}

    n = min(T, CHECK_TOKENS)
    want = ref.moe_forward(x[:n], w1, w2, None, K, topk_weights=weights[:n], topk_ids=ids[:n])
    err_sample = ref.relative_error(cp.from_dlpack(s_e2e())[:n], want)
    err_ours = ref.relative_error(ours["end to end, host alignment"]()[:n], want)
    row = {"shape": shape.name, "dims": list(shape.dims), "align_identical": bool(same_align),
           "rel_err": {"sample": err_sample, "re-implemented": err_ours}, "ms": {}}
    log(f"\n{shape.name} {shape.dims}: alignments identical: {same_align}; relative error vs "
        f"float64 (first {n} tokens): sample {err_sample:.1e}, re-implemented {err_ours:.1e}")
    log(f"  {'':30s} {'sample ms':>10} {'re-impl ms':>10} {'re/sample':>9}  "
        f"{'mt gather kernel ms (same tiles)':>32}")
    for what in ours:
        s_ms, o_ms = timing.median_ms(theirs[what]), timing.median_ms(ours[what])
        p_ms = timing.median_ms(package[what]) if what in package else None
        row["ms"][what] = {"sample": s_ms, "re-implemented": o_ms, "package_gather": p_ms}
        log(f"  {what:30s} {s_ms:10.3f} {o_ms:10.3f} {o_ms / s_ms:9.3f}  "
            + (f"{p_ms:32.3f}" if p_ms is not None else f"{'':>32}"))
    k = row["ms"]["kernels, alignment excluded"]
    row["kernels_match"] = abs(k["re-implemented"] / k["sample"] - 1) <= MATCH
    del prob, x, w1, w2, tx, tw1, tw2, c1, c2, c3, tc1, tc2, tc3
    cp.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()
    return row


def run(sample_dir, shapes, log=print) -> list[dict]:
    """Compare on every shape; a failing shape prints an ERROR line and the run goes on."""
    import cupy as cp
    import torch
    sample = load_sample(sample_dir)
    if torch.cuda.current_stream().cuda_stream != cp.cuda.get_current_stream().ptr:
        raise RuntimeError("torch and CuPy must launch on the same stream for these timings")
    rows = []
    for shape in shapes:
        try:
            rows.append(compare_shape(sample, torch, shape, log))
        except Exception as exc:  # noqa: BLE001 - report, go on
            log(f"\n{shape.name}: ERROR {type(exc).__name__}: {str(exc)[:300]}")
    log(f"\nkernels (alignment excluded), re-implemented / sample, target within {MATCH:.0%}:")
    for r in rows:
        k = r["ms"]["kernels, alignment excluded"]
        log(f"  {r['shape']:28s} {k['sample']:.3f} vs {k['re-implemented']:.3f} ms: "
            f"{'within' if r['kernels_match'] else 'NOT within'} {MATCH:.0%}"
            + ("" if r["align_identical"] else "; ALIGNMENTS DIFFER"))
    return rows
