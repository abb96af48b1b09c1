"""The cost model of the MoE layer and its roofline (notebooks 04-05, the benchmark, the checkers).

Pure arithmetic and plotting: no GPU, no kernels. The ceilings it is drawn against are measured
by ``moe_tutorial.timing.measure_ceilings``.
"""
from __future__ import annotations

import numpy as np

GEMM1_STEP = "gemm1 (gate+up)"
GEMM2_STEP = "gemm2 (down, x weight)"


def layer_cost(num_tokens: int, hidden: int, intermediate: int, top_k: int, experts_used: int,
               bytes_per_element: int = 2) -> tuple[float, float]:
    """(FLOPs, bytes) of the layer's minimum work.

    FLOPs: every token replica does three H x I matrix-vector products (gate, up, down), two
    FLOPs per multiply-add: ``2 * T * K * 3 * H * I``. Bytes: each expert that received at
    least one token must have its weights read once (w1: 2I x H, w2: H x I), and the hidden
    states are read and the output written once: ``(experts_used * 3 * H * I + 2 * T * H) *
    bytes_per_element``. Router, alignment and intermediate traffic are left out: a floor is
    what no implementation can beat."""
    flops = 2.0 * num_tokens * top_k * 3 * hidden * intermediate
    nbytes = (experts_used * 3.0 * hidden * intermediate + 2.0 * num_tokens * hidden) \
        * bytes_per_element
    return flops, nbytes


def roofline_floor_ms(flops: float, nbytes: float, peak_tflops: float,
                      bandwidth_gbs: float) -> float:
    """``max(FLOPs / peak, bytes / bandwidth)`` in milliseconds."""
    return max(flops / (peak_tflops * 1e12), nbytes / (bandwidth_gbs * 1e9)) * 1e3


def gemm_costs(num_tokens: int, hidden: int, intermediate: int, top_k: int, experts_used: int,
               bytes_per_element: int = 2, *, fused_swiglu: bool = False) -> dict:
    """(FLOPs, bytes) of each expert GEMM as our kernels run it, keyed by the layer's step
    names: GEMM1 reads x rows and w1 of the used experts and writes (T*K, 2I) -- or, with the
    SwiGLU epilogue, (T*K, I); GEMM2 reads (T*K, I) and w2 and writes (T*K, H)."""
    from .layer import FUSED_STEP
    T, H, I, K, b = num_tokens, hidden, intermediate, top_k, bytes_per_element
    gemm1_out = I if fused_swiglu else 2 * I
    return {
        FUSED_STEP if fused_swiglu else GEMM1_STEP:
            (2.0 * T * K * H * 2 * I, (experts_used * 2 * I * H + T * K * H + T * K * gemm1_out) * b),
        GEMM2_STEP: (2.0 * T * K * I * H, (experts_used * H * I + T * K * I + T * K * H) * b),
    }


def intermediate_bytes(num_tokens: int, top_k: int, intermediate: int, *, fused_swiglu: bool,
                       bytes_per_element: int = 2) -> int:
    """Bytes of the GEMM1 -> GEMM2 intermediate that go through memory: unfused, GEMM1 writes
    (T*K, 2I), silu_and_mul reads it and writes (T*K, I), GEMM2 reads that; fused, GEMM1
    writes (T*K, I) and GEMM2 reads it."""
    rows, b = num_tokens * top_k, bytes_per_element
    if fused_swiglu:
        return 2 * rows * intermediate * b
    return (2 * rows * 2 * intermediate + 2 * rows * intermediate) * b


def expected_experts_used(num_tokens: int, top_k: int, num_experts: int) -> float:
    """Experts that draw at least one of ``T*K`` uniformly routed replicas, on average."""
    return num_experts * (1 - (1 - top_k / num_experts) ** num_tokens)


def floor_guess_ms(dims, peak_tflops: float = 785.0, bandwidth_gbs: float = 2900.0) -> float:
    """A GPU-free guess of a layer's floor (ms) for ``dims = (T, H, E, I, K)`` (defaults: an
    H100's ceilings, uniform routing): the tuner starts with the shapes that matter most."""
    T, H, E, I, K = dims
    used = round(expected_experts_used(T, K, E))
    return roofline_floor_ms(*layer_cost(T, H, I, K, used), peak_tflops, bandwidth_gbs)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------

def draw_roof(ax, bandwidth_gbs: float, peak_tflops: float, *, label="measured roofline",
              intensity=(1.0, 1e4)):
    """The roof on log-log axes: ``min(peak, intensity * bandwidth)`` in TFLOP/s against
    FLOP per byte."""
    ai = np.logspace(np.log10(intensity[0]), np.log10(intensity[1]), 200)
    ax.loglog(ai, np.minimum(peak_tflops, ai * bandwidth_gbs / 1e3), "k-", lw=1.5, label=label)


def _ok_ms(row, key):
    v = row["variants"].get(key, {}) if key else {}
    return v["ms"] if v.get("ok") else None


def plot_roofline(rows, ceilings, path=None, *, title=""):
    """Achieved TFLOP/s against arithmetic intensity (the layer's FLOPs / floor bytes) for
    our best variant and the peers of benchmark ``rows`` (``moe_tutorial.bench``), under the
    measured roofline. Saves to ``path`` if given; returns the figure."""
    import matplotlib
    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    bw, peak = ceilings
    fig, ax = plt.subplots(figsize=(9, 5.5))
    draw_roof(ax, bw, peak)
    sample = ("cuTile sample (re-implemented), kernels" if all(r.get("sample_peer") for r in rows)
              else "sample-style peer (our gather kernel), kernels")     # older recordings
    marks = {"best": ("o", "ours (best)"), "sample_kernels": ("s", sample),
             "torch": ("^", "torch._grouped_mm")}
    seen = set()
    for r in rows:
        x = r["flops"] / r["bytes"]
        for i, (key, (marker, label)) in enumerate(marks.items()):
            ms = _ok_ms(r, r.get("verdict", {}).get("best") if key == "best" else key)
            if ms is None:
                continue
            ax.loglog(x, r["flops"] / ms / 1e9, marker, color=f"C{i}",
                      label=None if key in seen else label)
            seen.add(key)
            if key == "best":
                ax.annotate(r["shape"], (x, r["flops"] / ms / 1e9), fontsize=7,
                            xytext=(4, -10), textcoords="offset points")
    ax.set(xlabel="arithmetic intensity (FLOP per byte of the floor)", ylabel="TFLOP/s",
           title=title or f"MoE layers on the roofline ({bw:.0f} GB/s, {peak:.0f} TFLOP/s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
