"""Benchmark the routing kernels on a GPU: ``python -m moe_tutorial.bench_routing``.

For each shape it checks the results against the NumPy references first, then reports the
median time (``cupyx.profiler.benchmark``) of

* the router: ``topk_softmax`` (and ``grouped_topk`` for a DeepSeek-V3 shape);
* ``align`` (three cuTile kernels, no host sync), against two peers written here:
  a CuPy sort-based alignment (argsort + bincount + cumsum + scatter, no host sync) and the
  host loop of cuTile's ``samples/MoE.py`` (one Python iteration, and one host sync, per expert);
* router + align together, as the MoE layer runs them.

Targets from the issue (T=4096, K=8, E=128 on an H100): align <= 25 us, router <= 15 us.
Measured, not asserted. Range validation (a host sync) is off for timing: ``validate=False``.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from . import device, routing
from .routing import (align, align_reference, grouped_topk, grouped_topk_reference,
                      max_padded_size, topk_softmax, topk_softmax_reference)

SHAPES = [  # (name, T, K, E, tile_m)
    ("prefill T=4096", 4096, 8, 128, 64),
    ("decode T=64", 64, 8, 128, 16),
    ("E=512 T=4096", 4096, 8, 512, 64),
]
TARGET_US = {"align": 25.0, "topk_softmax": 15.0}


def align_cupy_sort(topk_ids, num_experts, tile_m):
    """Alignment from CuPy primitives: sort (expert, index) keys, then place each replica at
    its expert's padded start + its rank. All on the device, no host sync, ~10 launches.
    (Written against ``xp``: CuPy here, NumPy in the tests.)"""
    cp = device.array_module(topk_ids)
    flat = topk_ids.reshape(-1).astype(cp.int64)
    n = flat.size
    size = max_padded_size(n, num_experts, tile_m)
    order = cp.argsort(flat * n + cp.arange(n), axis=None)        # unique keys: stable
    counts = cp.bincount(flat, minlength=num_experts)
    padded = (counts + tile_m - 1) // tile_m * tile_m
    padded_end = cp.cumsum(padded)
    padded_start = padded_end - padded
    token_start = cp.cumsum(counts) - counts
    experts = flat[order]
    rank = cp.arange(n) - token_start[experts]
    sorted_token_ids = cp.full(size, n, dtype=cp.int32)
    sorted_token_ids[padded_start[experts] + rank] = order.astype(cp.int32)
    block_row = cp.arange(size // tile_m) * tile_m
    expert_ids = cp.searchsorted(padded_end, block_row, side="right").astype(cp.int32)
    total = padded_end[-1:]
    expert_ids = cp.where(block_row < total, expert_ids, -1).astype(cp.int32)
    return sorted_token_ids, expert_ids, total.astype(cp.int32)


def align_host_loop(topk_ids, num_experts, tile_m):
    """The idea of samples/MoE.py's ``moe_align_tile_size_torch``: a Python loop over experts
    that slices device arrays with per-expert counts (each count read is a host sync)."""
    cp = device.array_module(topk_ids)
    flat = topk_ids.reshape(-1)
    n = flat.size
    order = cp.argsort(flat.astype(cp.int64) * n + cp.arange(n), axis=None).astype(cp.int32)
    counts = cp.bincount(flat, minlength=num_experts)
    blocks = (counts + tile_m - 1) // tile_m
    total_blocks = int(blocks.sum())                                 # host sync
    sorted_token_ids = cp.full(total_blocks * tile_m, n, dtype=cp.int32)
    expert_ids = cp.zeros(total_blocks, dtype=cp.int32)
    block, token = 0, 0
    for e in range(num_experts):
        count, nblocks = int(counts[e]), int(blocks[e])              # two host syncs
        expert_ids[block:block + nblocks] = e
        sorted_token_ids[block * tile_m:block * tile_m + count] = order[token:token + count]
        token += count
        block += nblocks
    return sorted_token_ids, expert_ids, total_blocks * tile_m


def _check_align(name, got, want, exact_size=True):
    got = [device.to_numpy(a) for a in got[:2]] + [int(np.asarray(device.to_numpy(got[2])).
                                                       reshape(-1)[0])]
    total = int(want[2][0])
    assert got[2] == total, f"{name}: num_tokens_post_padded {got[2]} != {total}"
    if exact_size:
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"{name}: sorted_token_ids")
        np.testing.assert_array_equal(got[1], want[1], err_msg=f"{name}: expert_ids")
    else:   # the host loop returns arrays cut at num_tokens_post_padded
        np.testing.assert_array_equal(got[0], want[0][:total], err_msg=name)
        np.testing.assert_array_equal(got[1], want[1][:len(got[1])], err_msg=name)


def _median_us(fn, args, n_repeat, n_warmup=10):
    """(GPU time, host time) medians in microseconds; the host time includes Python and launch
    overhead (and, for the host loop, its syncs)."""
    from cupyx.profiler import benchmark
    r = benchmark(fn, args, n_repeat=n_repeat, n_warmup=n_warmup)
    return float(np.median(r.gpu_times[0])) * 1e6, float(np.median(r.cpu_times)) * 1e6


def run(n_repeat: int = 200) -> list[tuple]:
    import cupy as cp
    rng = np.random.default_rng(0)
    rows = []
    for name, t, k, e, tile_m in SHAPES:
        logits_np = rng.standard_normal((t, e)).astype(np.float32)
        logits = cp.asarray(logits_np)
        # --- correctness first
        w, ids = topk_softmax(logits, k, renormalize=True)
        want_w, want_ids = topk_softmax_reference(logits_np, k, renormalize=True)
        np.testing.assert_array_equal(device.to_numpy(ids), want_ids)
        np.testing.assert_allclose(device.to_numpy(w), want_w, rtol=1e-5, atol=1e-6)
        want = align_reference(want_ids, e, tile_m)
        _check_align("align", align(ids, e, tile_m), want)
        _check_align("cupy sort", align_cupy_sort(ids, e, tile_m), want)
        host = align_host_loop(ids, e, tile_m)
        _check_align("host loop", (host[0], host[1], np.array([host[2]])), want,
                     exact_size=False)
        # --- timings (GPU median, CPU wall median), microseconds
        router = _median_us(lambda: topk_softmax(logits, k, renormalize=True, validate=False),
                            (), n_repeat)
        al = _median_us(lambda: align(ids, e, tile_m, validate=False), (), n_repeat)
        both = _median_us(lambda: align(topk_softmax(logits, k, renormalize=True,
                                                     validate=False)[1], e, tile_m,
                                        validate=False), (), n_repeat)
        sort = _median_us(lambda: align_cupy_sort(ids, e, tile_m), (), n_repeat)
        loop = _median_us(lambda: align_host_loop(ids, e, tile_m), (), max(5, n_repeat // 20),
                          n_warmup=2)
        rows += [(name, "topk_softmax (router)", *router, TARGET_US["topk_softmax"]
                  if t == 4096 and e == 128 else None),
                 (name, "align (3 cuTile kernels)", *al, TARGET_US["align"]
                  if t == 4096 and e == 128 else None),
                 (name, "router + align", *both, None),
                 (name, "align: CuPy sort-based", *sort, None),
                 (name, "align: sample-style host loop", *loop, None)]
    # DeepSeek-V3 router: E=256, 8 groups, keep 4, k=8, bias.
    t, e = 4096, 256
    logits_np = rng.standard_normal((t, e)).astype(np.float32)
    bias_np = (rng.standard_normal(e) * 0.1).astype(np.float32)
    logits, bias = cp.asarray(logits_np), cp.asarray(bias_np)
    kw = dict(n_group=8, topk_group=4, routed_scaling_factor=2.5)
    w, ids = grouped_topk(logits, 8, e_score_correction_bias=bias, **kw)
    want_w, want_ids = grouped_topk_reference(logits_np, 8, e_score_correction_bias=bias_np, **kw)
    same = (device.to_numpy(ids) == want_ids).all(axis=1)
    assert same.mean() > 0.99, f"grouped_topk: only {same.mean():.1%} of tokens match"
    np.testing.assert_allclose(device.to_numpy(w)[same], want_w[same], rtol=1e-5, atol=1e-6)
    g = _median_us(lambda: grouped_topk(logits, 8, e_score_correction_bias=bias, **kw,
                                        validate=False), (), n_repeat)
    rows.append((f"DeepSeek-V3 T={t}", "grouped_topk (router)", *g, None))
    return rows


SWEEP = {  # module constants of moe_tutorial.routing -> values tried by --sweep
    "ROUTER_TILE_ELEMS": (2048, 4096, 8192),
    "ALIGN_TARGET_CHUNKS": (64, 128, 256, 512),
    "ALIGN_TILE_ELEMS": (1024, 2048, 4096),
}


def sweep(n_repeat: int = 200, t: int = 4096, k: int = 8, e: int = 128, tile_m: int = 64):
    """Time the router / alignment for each value of each tuning constant (one at a time, the
    others at their defaults), checking every result first. Each value is a new kernel
    specialization, so its first call compiles (a few seconds)."""
    import cupy as cp
    rng = np.random.default_rng(1)
    logits_np = rng.standard_normal((t, e)).astype(np.float32)
    logits = cp.asarray(logits_np)
    want_w, want_ids = topk_softmax_reference(logits_np, k)
    want = align_reference(want_ids, e, tile_m)
    ids = cp.asarray(want_ids)
    print(f"\nsweep at T={t}, K={k}, E={e}, tile_m={tile_m} (defaults marked *)")
    for name, values in SWEEP.items():
        default = getattr(routing, name)
        try:
            for value in values:
                setattr(routing, name, value)
                if name.startswith("ROUTER"):
                    w, i = topk_softmax(logits, k)
                    np.testing.assert_array_equal(device.to_numpy(i), want_ids)
                    fn = lambda: topk_softmax(logits, k, validate=False)  # noqa: E731
                else:
                    _check_align("align", align(ids, e, tile_m), want)
                    fn = lambda: align(ids, e, tile_m, validate=False)  # noqa: E731
                gpu_us, host_us = _median_us(fn, (), n_repeat)
                mark = "*" if value == default else " "
                print(f"  {name:<20} = {value:<6}{mark} {gpu_us:9.1f} us GPU {host_us:9.1f} us host")
        finally:
            setattr(routing, name, default)


def _print_table(rows):
    print(f"{'shape':<20} {'what':<40} {'GPU us':>9} {'host us':>9}  target")
    for name, what, gpu_us, cpu_us, target in rows:
        mark = "" if target is None else (f"<= {target:g} us " +
                                          ("met" if gpu_us <= target else "MISSED"))
        print(f"{name:<20} {what:<40} {gpu_us:>9.1f} {cpu_us:>9.1f}  {mark}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200, help="timed runs per measurement")
    parser.add_argument("--sweep", action="store_true",
                        help="also time each tuning constant of moe_tutorial.routing")
    args = parser.parse_args(argv)
    if device.backend() != "gpu":
        print(f"bench_routing needs a GPU: {device.gpu_status()[1]}. Nothing to measure on the "
              "CPU emulator (its timings say nothing about the GPU).")
        return 0
    print(device.describe())
    print("Checked every result against the NumPy references; times are medians.")
    _print_table(run(args.repeat))
    if args.sweep:
        sweep(args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
