"""GPU benchmark of the whole MoE layer: ``python -m moe_tutorial.bench_layer``.

For every model preset at its real size (decode and prefill token counts) it
1. measures the two ceilings in the same run: device-to-device copy bandwidth (bytes read +
   written per second, a 1 GiB CuPy copy) and a cuBLAS float16 matmul (8192^3, through CuPy);
2. checks ``moe_forward`` against the float64 reference (``reference.moe_forward``, run in
   float64 on the GPU) and prints the relative error;
3. times ``moe_forward`` (``cupyx.profiler.benchmark``: warm-up, median of many runs, GPU time)
   and, for comparison, the variant that loads B as stored and transposes it in the loop;
4. prints the roofline floor ``max(FLOPs / matmul peak, bytes / copy bandwidth)`` with
   bytes = weights of the experts actually used + the layer's input and output activations.
``--baselines`` adds the per-expert CuPy loop and the sample-style host-aligned path.
On a machine without a GPU it says so and exits 0.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from . import device, layer, presets
from . import reference as ref


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
               bytes_per_element: int = 2) -> dict:
    """(FLOPs, bytes) of each expert GEMM as our kernels run it (rows gathered, results
    scattered): GEMM1 reads x rows and w1 of the used experts and writes (T*K, 2I); GEMM2
    reads (T*K, I) and w2 and writes (T*K, H)."""
    T, H, I, K, b = num_tokens, hidden, intermediate, top_k, bytes_per_element
    return {
        "gemm1 (gate+up)": (2.0 * T * K * H * 2 * I,
                            (experts_used * 2 * I * H + T * K * H + T * K * 2 * I) * b),
        "gemm2 (down, x weight)": (2.0 * T * K * I * H,
                                   (experts_used * H * I + T * K * I + T * K * H) * b),
    }


def measure_ceilings(cp, *, copy_bytes: int = 1 << 30, matmul_n: int = 8192) -> tuple[float, float]:
    """(copy bandwidth GB/s, float16 matmul TFLOP/s), both measured now on this GPU."""
    from cupyx.profiler import benchmark
    src = cp.ones(copy_bytes // 2, dtype=cp.float16)
    dst = cp.empty_like(src)
    t = _median_ms(benchmark(lambda: cp.copyto(dst, src), n_repeat=30, n_warmup=5))
    bandwidth = 2 * copy_bytes / (t * 1e-3) / 1e9
    del src, dst
    a = cp.random.standard_normal((matmul_n, matmul_n), dtype=cp.float32).astype(cp.float16)
    b = cp.random.standard_normal((matmul_n, matmul_n), dtype=cp.float32).astype(cp.float16)
    t = _median_ms(benchmark(lambda: a @ b, n_repeat=20, n_warmup=3))
    tflops = 2.0 * matmul_n ** 3 / (t * 1e-3) / 1e12
    del a, b
    cp.get_default_memory_pool().free_all_blocks()
    return bandwidth, tflops


def _median_ms(result) -> float:
    return float(np.median(result.gpu_times[0])) * 1e3


def _args(prob):
    return [prob[k] for k in ("hidden_states", "w1", "w2", "router_logits")]


def run(names=None, phases=("decode", "prefill"), baselines=False, out=None) -> list[dict]:
    """Benchmark the presets; returns one row (dict) per (preset, phase) and prints a table
    (to ``out``, default sys.stdout)."""
    out = out or sys.stdout
    ok, why = device.gpu_status()
    if not ok:
        print(f"bench_layer needs a GPU ({why}); nothing to measure on the CPU.", file=out)
        return []
    import cupy as cp
    from cupyx.profiler import benchmark

    start = time.time()
    bw, peak = measure_ceilings(cp)
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    print(f"{name}: measured copy bandwidth {bw:.0f} GB/s, cuBLAS fp16 matmul {peak:.0f} "
          f"TFLOP/s", file=out)
    rows = []
    for pname in names or list(presets.PRESETS):
        p = presets.PRESETS[pname]
        for phase in phases:
            T = p.tokens(phase)
            prob = presets.make_problem(p, T, dtype="float16", xp=cp, seed=11)
            kw = dict(e_score_correction_bias=prob.get("e_score_correction_bias"),
                      **p.router_kwargs())
            args = _args(prob)
            plan = layer.plan_layer(*args, p.top_k, **kw)
            got = plan.run()
            want = ref.moe_forward(*args, p.top_k, **kw)
            err = ref.relative_error(got, want)
            del want
            ids = plan.buffers["topk_ids"]
            used = int(cp.unique(ids[ids >= 0]).size)
            ms = _median_ms(benchmark(lambda: layer.moe_forward(*args, p.top_k, **kw),
                                      n_repeat=30, n_warmup=3))
            cfg_t = dataclasses.replace(plan.config, transpose_b=True)
            ms_t = _median_ms(benchmark(
                lambda: layer.moe_forward(*args, p.top_k, config=cfg_t, **kw),
                n_repeat=30, n_warmup=3))
            flops, nbytes = layer_cost(T, p.hidden, p.intermediate, p.top_k, used)
            floor = roofline_floor_ms(flops, nbytes, peak, bw)
            row = dict(preset=pname, phase=phase, T=T, experts_used=used, rel_err=err, ms=ms,
                       ms_transpose_b=ms_t, floor_ms=floor, tflops=flops / ms / 1e9,
                       gbs=nbytes / ms / 1e6, config=plan.config)
            if baselines:
                weights, tids = plan.buffers["topk_weights"], plan.buffers["topk_ids"]
                row["ms_expert_loop"] = _median_ms(benchmark(
                    lambda: layer.moe_forward_expert_loop(args[0], args[1], args[2], weights,
                                                          tids), n_repeat=5, n_warmup=1))
                row["ms_host_aligned"] = _median_ms(benchmark(
                    lambda: layer.moe_forward_host_aligned(args[0], args[1], args[2], weights,
                                                           tids), n_repeat=5, n_warmup=1))
            rows.append(row)
            print(_format_row(row), file=out, flush=True)
            del prob, args, plan, got
            cp.get_default_memory_pool().free_all_blocks()
    print(f"(total {time.time() - start:.0f} s; floor = max(FLOPs/{peak:.0f} TFLOP/s, "
          f"bytes/{bw:.0f} GB/s), bytes = used experts' weights + input and output)", file=out)
    return rows


def _format_row(r) -> str:
    c = r["config"]
    s = (f"{r['preset']:>14} {r['phase']:>7} T={r['T']:>5} used={r['experts_used']:>3}  "
         f"rel.err {r['rel_err']:.1e}  {r['ms']:8.3f} ms  floor {r['floor_ms']:7.3f} ms  "
         f"x{r['ms'] / r['floor_ms']:5.2f}  {r['tflops']:6.1f} TFLOP/s {r['gbs']:6.0f} GB/s  "
         f"transpose_b {r['ms_transpose_b']:8.3f} ms  tiles {c.tile_m}x{c.tile_n}x{c.tile_k}")
    if "ms_expert_loop" in r:
        s += (f"  expert loop {r['ms_expert_loop']:8.3f} ms  host-aligned "
              f"{r['ms_host_aligned']:8.3f} ms")
    return s


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", action="append", choices=list(presets.PRESETS),
                        help="only these presets (repeatable); default: all")
    parser.add_argument("--phase", action="append", choices=["decode", "prefill"],
                        help="only these phases; default: both")
    parser.add_argument("--baselines", action="store_true",
                        help="also time the per-expert CuPy loop and the host-aligned path")
    a = parser.parse_args(argv)
    run(a.preset, tuple(a.phase or ("decode", "prefill")), a.baselines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
