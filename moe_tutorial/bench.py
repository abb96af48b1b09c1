"""GPU benchmark of the whole MoE layer: ``python -m moe_tutorial.bench`` (notebooks 04-05).

For every layer shape of the benchmark's table (``presets.BENCH_SHAPES``; ``--shape T,H,E,I,K`` for
others) it

1. measures the two ceilings in the same run (``timing.measure_ceilings``): device-to-device
   copy bandwidth (bytes read + written per second, 1 GiB ``cudaMemcpyAsync``) and a cuBLAS
   float16 matmul (8192^3, through CuPy);
2. runs each variant of our layer and each peer once, checks the output against the float64
   reference (``reference.moe_forward`` on the GPU, first 64 tokens) and times it with
   ``moe_tutorial.timing``: ``median_ms`` (``cupyx.profiler.benchmark`` medians) for eager
   calls, ``graph_ms`` (back-to-back replays between two events) for CUDA graphs; inputs are
   fresh random normal values (never zeros);
3. prints, per variant: ms, TFLOP/s and GB/s (the layer's minimum work: FLOPs and the bytes of
   the floor), and x floor, where floor = max(FLOPs / matmul peak, bytes / copy bandwidth) with
   bytes = weights of the experts actually used + input and output activations
   (``moe_tutorial.roofline``);
4. ends with the table of all shapes, our columns, whether each target is met, and -- from a
   CUDA graph per step -- the device time of every kernel of our best variant, which says
   what limits a shape that misses.

Our variants: ``gather`` (notebook 04's layer: default tile rule, rows gathered and scattered
inside the GEMMs, GEMM1 + silu_and_mul), ``default`` (the same tiles, rows permuted once into
slot order so the GEMMs load and store tiles: ``LayerConfig.sorted_rows``), ``tuned`` (this
GPU's table, ``moe_tutorial/configs``), ``fused`` (tuned + SwiGLU epilogue), ``fused_tb`` (B
loaded as stored + ``ct.transpose`` instead of ``order=``), ``graph_fused`` / ``graph`` (the
fused / unfused layer replayed from a CUDA graph). Peers: ``sample_e2e`` -- "cuTile sample
(re-implemented)": NVIDIA's ``samples/MoE.py`` re-implemented faithfully in
``moe_tutorial.sample_peer`` (its kernels, its host alignment, its 128x128x64 tiles) --,
``sample_kernels`` (the same, alignment excluded), ``cupy_loop`` (per-expert CuPy/cuBLAS loop),
``torch`` (``torch._grouped_mm`` layer in bfloat16, its fast path; only if torch imports). Our
variants include the router and alignment; the peers get the routing (our router's ids and
weights) for free.

Other modes: ``--tune --out FILE.json`` runs the autotuner (``moe_tutorial.autotune``) and
writes a config table; ``--compare-sample-dir DIR`` times the real sample (``DIR/MoE.py``,
imported at run time, torch) against the re-implementation (``moe_tutorial.sample_compare``).
``--json FILE`` records the results (notebook 05 shows recorded ones); ``--plot FILE.png``
draws the roofline. Kernels are compiled first in parallel worker processes (``--jobs``;
cuTile's disk cache hands them to this process), every measurement is wrapped (a failure
prints an ERROR row, the run goes on), and ``--budget`` seconds bound the run (shapes not
started in time are listed as skipped). On a machine without a GPU it says so and exits 0.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import autotune, device, layer, presets, sample_peer, timing, tuning
from . import reference as ref
from .fused_moe import LayerConfig, default_layer_config
# the cost model, the roofline and the timers live in their own modules; these names stay
# importable from here (notebooks 04-05 use them as ``bench.<name>``)
from .roofline import (floor_guess_ms, gemm_costs, intermediate_bytes, layer_cost,  # noqa: F401
                       plot_roofline, roofline_floor_ms)
from .timing import measure_ceilings                                               # noqa: F401

time_ms = timing.median_ms            # old names of the harness's eager and graph timers
time_graphs_ms = timing.graph_ms

RECORDED_DIR = Path(__file__).resolve().parent / "recorded"
CHECK_TOKENS = 64              # rows checked against the float64 reference
TOL = {"float16": 3e-3, "bfloat16": 3e-2}     # relative error in norm (see tests/test_layer.py)
TARGET_RATIO = 1.25            # the target: within 1.25x of the floor ...
TARGET_MIN_FLOOR_MS = 0.4      # ... on every shape whose floor is >= 0.4 ms

LABELS = {
    "graph_fused": "ours: fused SwiGLU, CUDA graph",
    "graph_default": "ours: default tile rule, fused SwiGLU, CUDA graph",
    "graph_default_unfused": "ours: default tile rule, unfused, CUDA graph",
    "fused": "ours: tuned + fused SwiGLU (eager)",
    "tuned": "ours: tuned tiles, unfused (eager)",
    "gather": "ours: notebook-04 layer, rows gathered in the GEMMs (eager)",
    "default": "ours: default tiles, rows in slot order (eager)",
    "graph": "ours: tuned unfused, CUDA graph",
    "fused_tb": "ours: fused, B via load + ct.transpose (eager)",
    "sample_kernels": "cuTile sample (re-implemented): kernels, alignment excluded",
    "sample_e2e": "cuTile sample (re-implemented): end to end, host alignment",
    "torch": "torch._grouped_mm layer (bf16, routing given)",
    "cupy_loop": "CuPy per-expert loop (routing given)",
}
SAMPLE_PEER = "re-implemented"   # rows' "sample_peer": the peers are moe_tutorial.sample_peer
OURS = ("graph_fused", "fused", "tuned", "default", "graph", "gather", "fused_tb",
        "graph_default", "graph_default_unfused")
FUSED = ("graph_fused", "fused", "fused_tb", "graph_default")   # with the SwiGLU epilogue
PEERS = ("sample_kernels", "torch", "sample_e2e", "cupy_loop")


def _print(*args):
    print(*args, flush=True)


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------

def torch_available():
    """``(torch module or None, why not)``."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return None, f"torch does not import ({type(exc).__name__})"
    if not torch.cuda.is_available():
        return None, "torch sees no CUDA device"
    if not hasattr(torch, "_grouped_mm"):
        return None, f"torch {torch.__version__} has no _grouped_mm"
    return torch, ""


def torch_grouped_mm_layer(torch, x, w1, w2, topk_weights, topk_ids):
    """A ``torch._grouped_mm`` MoE layer in bfloat16 (the dtype of its fast CUTLASS path) over
    copies of our CuPy inputs. Returns ``run()`` -> (T, H) bfloat16 torch tensor: sort the
    replicas by expert (no host sync: the group sizes come from a scatter-add), gather their
    rows, two grouped GEMMs with SiLU*mul between, weight, scatter back and sum over top-k."""
    bf16 = torch.bfloat16
    tx = torch.from_dlpack(x).to(bf16)
    tw1 = torch.from_dlpack(w1).to(bf16).transpose(1, 2)          # (E, H, 2I), a view
    tw2 = torch.from_dlpack(w2).to(bf16).transpose(1, 2)          # (E, I, H)
    ids = torch.from_dlpack(topk_ids).to(torch.int64)
    weights = torch.from_dlpack(topk_weights).to(torch.float32).reshape(-1)
    T, K = ids.shape
    E, I, H = tw1.shape[0], tw2.shape[1], tx.shape[1]
    ones = torch.ones(T * K, dtype=torch.int32, device=tx.device)

    def run():
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(E, dtype=torch.int32, device=tx.device).scatter_add_(0, flat, ones)
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        h = torch._grouped_mm(tx.index_select(0, order // K), tw1, offs=offs)
        act = torch.nn.functional.silu(h[:, :I]) * h[:, I:]
        y = torch._grouped_mm(act, tw2, offs=offs)
        y = y * weights.index_select(0, order).unsqueeze(1).to(bf16)
        out = torch.empty_like(y).index_copy_(0, order, y)
        return out.view(T, K, H).float().sum(dim=1).to(bf16)

    return run


def _to_numpy(out):
    if hasattr(out, "detach"):                   # a torch tensor
        return out.detach().float().cpu().numpy()
    return device.to_numpy(out)


# ---------------------------------------------------------------------------------------------
# One shape
# ---------------------------------------------------------------------------------------------

class Budget:
    """Seconds left for the run; ``spent(fraction)``: is more than that share used up?"""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.time(), seconds

    def elapsed(self) -> float:
        return time.time() - self.start

    def spent(self, fraction: float = 1.0) -> bool:
        return self.elapsed() > fraction * self.seconds


def _configs(shape, dtype="float16"):
    """(default, tuned unfused, default fused, tuned fused) LayerConfigs; a tuned one is its
    default when the table has no entry."""
    T, H, E, I, K = shape.dims
    default = default_layer_config(T, H, E, I, K, dtype)
    default_fused = default_layer_config(T, H, E, I, K, dtype, fused_swiglu=True)
    tuned = tuning.lookup(T, H, E, I, K, dtype) or default
    fused = tuning.lookup(T, H, E, I, K, dtype, fused_swiglu=True) or default_fused
    return default, tuned, default_fused, fused


def bench_shape(shape, ceilings=None, *, peers: bool = True, warm_only: bool = False,
                budget: Budget | None = None, variants=None, log=_print) -> dict:
    """Benchmark one layer shape; returns its row (see ``run``). ``warm_only``: run every
    kernel variant once (compiling it) and return, no timing or checks. ``variants``: only
    these keys of ``LABELS`` (default: all)."""
    import cupy as cp
    budget = budget or Budget(1e9)
    T, H, E, I, K = shape.dims
    p = shape.preset
    prob = presets.make_problem(p, T, dtype="float16", xp=cp, seed=11)
    args = [prob[k] for k in ("hidden_states", "w1", "w2", "router_logits")]
    kw = dict(e_score_correction_bias=prob.get("e_score_correction_bias"), **p.router_kwargs())
    weights, ids = tuning.route(shape, prob)
    default, tuned, default_fused, fused = _configs(shape)
    config_of = {     # our variants' layer configs (the SwiGLU epilogue: the keys in FUSED)
        "fused": fused, "graph_fused": fused, "fused_tb": fused.replace(transpose_b=True),
        "tuned": tuned, "graph": tuned, "default": default, "graph_default_unfused": default,
        "gather": default.replace(sorted_rows=False), "graph_default": default_fused}
    sample_align = {}

    def sample_aligned():
        if not sample_align:
            sample_align["a"] = sample_peer.align(ids, E)
        return sample_align["a"]

    def ours(key):    # the eager layer of one of our variants
        return lambda: layer.moe_forward(*args, K, config=config_of[key],
                                         fused_swiglu=key in FUSED, **kw)

    makers = {    # key -> () -> the eager callable to check and time
        **{key: (lambda key=key: ours(key))
           for key in ("fused", "tuned", "default", "fused_tb", "gather")},
        "sample_kernels": lambda: (lambda: sample_peer.moe_forward_aligned(
            args[0], args[1], args[2], weights, ids, *sample_aligned())),
        "sample_e2e": lambda: (lambda: sample_peer.moe_forward(args[0], args[1], args[2],
                                                               weights, ids)),
        "cupy_loop": lambda: (lambda: layer.moe_forward_expert_loop(args[0], args[1], args[2],
                                                                    weights, ids)),
    }
    if warm_only:
        warm = [ours(k) for k in ("fused", "tuned", "default", "gather", "fused_tb",
                                  "graph_default")]
        for fn in warm + [makers["sample_kernels"]()]:
            try:
                fn()
            except Exception:  # noqa: BLE001 - the timing run reports it
                pass
        cp.cuda.Device().synchronize()
        return {}

    used = int(cp.unique(ids[ids >= 0]).size)
    flops, nbytes = layer_cost(T, H, I, K, used)
    bw, peak = ceilings
    floor = roofline_floor_ms(flops, nbytes, peak, bw)
    row = {"shape": shape.name, "dims": [T, H, E, I, K], "experts_used": used, "flops": flops,
           "bytes": nbytes, "floor_ms": floor, "variants": {},
           "configs": {"default": _cfg_names(default), "tuned": _cfg_names(tuned),
                       "fused": _cfg_names(fused), "default_fused": _cfg_names(default_fused)},
           "sample_peer": SAMPLE_PEER}
    n = min(T, CHECK_TOKENS)
    want = ref.moe_forward(args[0][:n], args[1], args[2], args[3][:n], K, **kw)
    bound = "memory" if nbytes / (bw * 1e9) > flops / (peak * 1e12) else "compute"
    log(f"\n{shape.name}: T={T} H={H} E={E} I={I} K={K}, experts used {used}, floor "
        f"{floor:.3f} ms ({bound}-bound); "
        f"tiles default {row['configs']['default']}, tuned {row['configs']['tuned']}, "
        f"fused {row['configs']['fused']}")

    def record(key, fn=None, captured=None, dtype="float16"):
        """Check and time one variant (an eager callable, or a CapturedLayer replayed); any
        failure becomes an ERROR row."""
        entry = row["variants"][key] = {}
        try:
            if captured is not None:
                got = captured.out
                ms = timing.graph_ms(captured.graphs, captured.stream)
            else:
                got = fn()
                ms = timing.median_ms(fn)
            err = ref.relative_error(_to_numpy(got)[:n], want)
            entry.update(ms=ms, rel_err=err, ok=bool(err <= TOL[dtype]))
        except Exception as exc:  # noqa: BLE001
            entry["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}" \
                if str(exc).strip() else type(exc).__name__
            if os.environ.get("MOE_BENCH_TRACEBACK"):
                traceback.print_exc()
            try:
                cp.get_default_memory_pool().free_all_blocks()
            except Exception:  # noqa: BLE001
                pass
        log(_format_variant(key, entry, flops, nbytes, floor))

    def skip(key, why):
        row["variants"][key] = {"skipped": why}
        log(_format_variant(key, row["variants"][key], flops, nbytes, floor))

    order = ["graph_fused", "graph_default", "graph_default_unfused", "fused", "sample_kernels",
             "torch", "tuned", "default", "gather", "sample_e2e", "cupy_loop", "fused_tb", "graph"]
    for key in order:
        if variants is not None and key not in variants:
            continue
        optional = key in ("sample_e2e", "cupy_loop", "fused_tb", "graph", "graph_default",
                           "graph_default_unfused")
        if key in PEERS and not peers:
            skip(key, "--no-peers")
            continue
        if optional and budget.spent(0.85):
            skip(key, "time budget")
            continue
        if key == "tuned" and tuned == default:
            skip(key, "no tuned table entry: same as default")
            continue
        if key.startswith("graph"):
            try:
                cl = layer.capture(*args, K, config=config_of[key], fused_swiglu=key in FUSED,
                                   **kw)
            except Exception as exc:  # noqa: BLE001
                row["variants"][key] = {"error": f"capture failed: {type(exc).__name__}: "
                                                 f"{str(exc)[:160]}"}
                log(_format_variant(key, row["variants"][key], flops, nbytes, floor))
                continue
            record(key, captured=cl)
            del cl                        # its graphs and private memory pool go together
        elif key == "torch":
            torch, why = torch_available()
            if torch is None:
                skip(key, why)
                continue
            cp.get_default_memory_pool().free_all_blocks()     # room for torch's copies
            try:
                fn = torch_grouped_mm_layer(torch, args[0], args[1], args[2], weights, ids)
            except Exception as exc:  # noqa: BLE001
                row["variants"][key] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
                log(_format_variant(key, row["variants"][key], flops, nbytes, floor))
                continue
            record(key, fn=fn, dtype="bfloat16")
            del fn
            torch.cuda.empty_cache()
        else:
            record(key, fn=makers[key]())
    # where the time goes: one CUDA graph per step of our best layer
    best = best_ours(row)
    if best is not None and not budget.spent(0.95):
        try:
            cl = layer.capture(*args, K, config=config_of[best], split_steps=True,
                               fused_swiglu=best in FUSED, **kw)
            row["steps_us"] = {name: timing.graph_ms([g], cl.stream) * 1e3
                               for name, g in zip(cl.step_names, cl.graphs)}
            row["steps_of"] = best
            log("    device time per step (" + LABELS[best] + "): " + ", ".join(
                f"{k} {v:.1f} us" for k, v in row["steps_us"].items()))
            del cl
        except Exception as exc:  # noqa: BLE001
            log(f"    per-step graphs failed: {type(exc).__name__}: {str(exc)[:160]}")
    row["verdict"] = verdict(row)
    del prob, args, want, weights, ids
    cp.get_default_memory_pool().free_all_blocks()
    return row


def _cfg_names(cfg: LayerConfig) -> str:
    g1, g2 = tuning.short_name(cfg.gemm1), tuning.short_name(cfg.gemm2)
    return g1 if g1 == g2 else f"{g1} | {g2}"


def _ms(row, key):
    v = row["variants"].get(key, {})
    return v["ms"] if v.get("ok") else None


def best_ours(row):
    """The key of our fastest correct variant (None if none ran)."""
    got = [(row["variants"][k]["ms"], k) for k in OURS if _ms(row, k) is not None]
    return min(got)[1] if got else None


def verdict(row) -> dict:
    """The targets for one row: within 1.25x of the floor when the floor is >= 0.4 ms,
    and faster than torch._grouped_mm and the sample kernels (as measured in this run)."""
    best = best_ours(row)
    out = {"best": best}
    if best is None:
        out["met"] = False
        out["why"] = "no variant of ours ran correctly"
        return out
    ms = row["variants"][best]["ms"]
    out["ratio"] = ms / row["floor_ms"]
    misses = []
    if row["floor_ms"] >= TARGET_MIN_FLOOR_MS and out["ratio"] > TARGET_RATIO:
        misses.append(f"{out['ratio']:.2f}x floor > {TARGET_RATIO}x")
    for peer in ("torch", "sample_kernels"):
        peer_ms = _ms(row, peer)
        if peer_ms is not None and ms >= peer_ms:
            misses.append(f"not faster than {peer} ({peer_ms:.3f} ms)")
    out["met"] = not misses
    out["why"] = "; ".join(misses)
    return out


def _format_variant(key, e, flops, nbytes, floor) -> str:
    label = f"  {LABELS[key]:46s}"
    if "skipped" in e:
        return f"{label} skipped: {e['skipped']}"
    if "error" in e:
        return f"{label} ERROR {e['error']}"
    ms = e["ms"]
    flag = "" if e["ok"] else "  WRONG RESULT"
    return (f"{label} {ms:9.3f} ms {flops / ms / 1e9:7.1f} TFLOP/s {nbytes / ms / 1e6:6.0f} GB/s "
            f"x{ms / floor:6.2f} floor  rel.err {e['rel_err']:.1e}{flag}")


def _cell(row, key) -> str:
    v = row["variants"].get(key, {})
    if "ms" in v:
        return f"{v['ms']:.3f}" + ("" if v["ok"] else " (wrong)")
    if "error" in v:
        return "error"
    return "n/a"


def summary_table(rows, gpu: str) -> str:
    """The benchmark table with our columns, as markdown. Rows recorded before the sample peer
    was re-implemented (no ``sample_peer`` key) label their sample columns for what they were."""
    sample = "cuTile sample (re-implemented)" if all(
        r.get("sample_peer") == SAMPLE_PEER for r in rows) else \
        "sample-style peer (our gather kernel with the sample's tiles, not the sample)"
    head = (f"| shape (T, H, E, I, top-k) | floor | ours best | ours eager (fused) "
            f"| {sample}: e2e | {sample}: kernels | torch._grouped_mm | ours / floor | target |")
    lines = [f"Measured on {gpu} (float16; torch in bfloat16), median ms:", "", head,
             "|" + "---|" * 9]
    for r in rows:
        v = r.get("verdict", {})
        best = v.get("best")
        ours = f"{r['variants'][best]['ms']:.3f} ({best})" if best else "n/a"
        ratio = f"{v['ratio']:.2f}" if "ratio" in v else "n/a"
        target = "met" if v.get("met") else f"MISSED: {v.get('why', '')}"
        lines.append(f"| {r['shape']} {tuple(r['dims'])} | {r['floor_ms']:.3f} | {ours} | "
                     f"{_cell(r, 'fused')} | {_cell(r, 'sample_e2e')} | "
                     f"{_cell(r, 'sample_kernels')} | {_cell(r, 'torch')} | {ratio} | {target} |")
    return "\n".join(lines)


def limits(row, ceilings) -> str:
    """What limits a shape: its bound, and how its best variant's device time splits."""
    bw, peak = ceilings
    mem_ms = row["bytes"] / (bw * 1e9) * 1e3
    cmp_ms = row["flops"] / (peak * 1e12) * 1e3
    parts = [f"memory {mem_ms:.3f} ms vs compute {cmp_ms:.3f} ms at the measured ceilings"]
    steps = row.get("steps_us")
    if steps:
        total = sum(steps.values())
        T, H, E, I, K = row["dims"]
        fused = row.get("steps_of") in FUSED
        costs = gemm_costs(T, H, I, K, row["experts_used"], fused_swiglu=fused)
        for name, us in steps.items():
            s = f"{name} {us:.1f} us ({100 * us / total:.0f}%)"
            if name in costs:
                fl, by = costs[name]
                s += (f" = {fl / us / 1e6:.0f} TFLOP/s, {by / us / 1e3:.0f} GB/s "
                      f"({100 * max(fl / us / 1e6 / peak, by / us / 1e3 / bw):.0f}% of a ceiling)")
            parts.append(s)
    eager, graph = _ms(row, "fused"), _ms(row, "graph_fused")
    if eager and graph:
        parts.append(f"host launch overhead (eager - graph) {1e3 * (eager - graph):.0f} us")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Parallel compilation (worker processes warm cuTile's disk cache)
# ---------------------------------------------------------------------------------------------

WARM_GPU_BYTES = 60e9      # GPU memory the tuner's warm-up workers may fill with problems


def warm_parts(kind: str, shapes, jobs: int) -> list[tuple]:
    """``(shape, part, parts)`` work items: with more jobs than shapes, the tuner's candidates
    of a shape are split over several workers -- as many as their copies of the layer's
    weights fit in ``WARM_GPU_BYTES``."""
    if kind != "tune" or jobs <= len(shapes):
        return [(s, 0, 1) for s in shapes]
    items = []
    for s in shapes:
        T, H, E, I, K = s.dims
        fit = max(1, int(WARM_GPU_BYTES // (3 * E * H * I * 2)))
        parts = max(1, min(jobs // len(shapes), fit))
        items += [(s, i, parts) for i in range(parts)]
    return items


def warm_in_parallel(kind: str, shapes, jobs: int, timeout_s: float, log=_print) -> None:
    """Run ``python -m moe_tutorial.bench --_warm KIND --shape ...`` for every shape (or part
    of a shape's tuning candidates, ``warm_parts``), ``jobs`` at a time, so their kernels
    compile in parallel; kill what is still running after ``timeout_s`` (the main process
    then compiles the rest itself)."""
    if jobs <= 0 or not shapes:
        return
    t0 = time.time()
    logdir = tempfile.mkdtemp(prefix="moe_bench_warm_")
    queue, running, failed = warm_parts(kind, shapes, jobs), {}, []
    while queue or running:
        while queue and len(running) < jobs:
            shape, part, parts = queue.pop(0)
            spec = ",".join(str(v) for v in shape.dims)
            out = open(os.path.join(logdir, f"{spec.replace(',', '_')}_{part}.log"), "w")
            proc = subprocess.Popen([sys.executable, "-m", "moe_tutorial.bench", "--_warm", kind,
                                     "--shape", spec, "--_part", f"{part}/{parts}"],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            running[proc] = (shape, out)
        for proc in list(running):
            if proc.poll() is not None:
                shape, out = running.pop(proc)
                out.close()
                if proc.returncode:
                    failed.append((shape.name, proc.returncode, out.name))
        if time.time() - t0 > timeout_s:
            for proc, (shape, out) in running.items():
                try:
                    os.killpg(proc.pid, signal.SIGKILL)     # the worker and its compilers
                except OSError:
                    pass
                proc.wait()
                out.close()
                failed.append((shape.name, "timeout", out.name))
            log(f"warm-up: stopped after {timeout_s:.0f} s; {len(queue)} jobs not started")
            break
        time.sleep(0.2)
    log(f"warm-up: compiled kernels for {len(shapes)} shapes in {time.time() - t0:.0f} s "
        f"with {jobs} worker processes" + (f"; {len(failed)} did not finish:" if failed else ""))
    for name, rc, path in failed:
        tail = Path(path).read_text(errors="replace").strip().splitlines()[-2:]
        log(f"  {name}: {rc}: {' | '.join(tail)}")


# ---------------------------------------------------------------------------------------------
# Recorded results (notebook 05)
# ---------------------------------------------------------------------------------------------

def record_results(path, gpu: str, ceilings, rows) -> None:
    import cuda.tile as ct
    torch, _ = torch_available()
    data = {"format": 1, "gpu": gpu, "cuda_tile": ct.__version__,
            "torch": getattr(torch, "__version__", None),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "ceilings": {"copy_gbs": ceilings[0], "matmul_tflops": ceilings[1]},
            "labels": LABELS, "rows": rows}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def recorded_results() -> list[dict]:
    """Every benchmark run recorded in ``moe_tutorial/recorded/*.json`` (``--json``), newest
    first: what notebook 05 shows on a machine without a GPU."""
    runs = []
    for path in sorted(RECORDED_DIR.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("format") == 1 and "rows" in data:
            runs.append({**data, "path": str(path)})
    return sorted(runs, key=lambda d: d.get("created", ""), reverse=True)


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------

def _shapes(specs, only):
    shapes = [presets.shape_from_spec(s) for s in specs] if specs else list(presets.BENCH_SHAPES)
    if only:
        shapes = [s for s in shapes if any(o in s.name for o in only)]
    return shapes


def _gpu_name(cp) -> str:
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def run(shapes, *, peers=True, jobs=0, budget_s=280.0, json_path=None, plot_path=None,
        variants=None, log=_print) -> list[dict]:
    """The default benchmark; returns the rows (``variants``: only these keys of ``LABELS``)."""
    import cupy as cp
    import cuda.tile as ct
    budget = Budget(budget_s)
    gpu = _gpu_name(cp)
    torch, why = torch_available()
    table = tuning.table_path()          # this GPU's table, or one of its architecture
    log(f"{gpu}; cuda-tile {ct.__version__}; torch: {torch.__version__ if torch else why}; "
        f"tuned table: {table if table and table.exists() else 'none (default tile rule)'}")
    warm_in_parallel("bench", shapes, jobs, min(150.0, 0.55 * budget_s), log)
    bw, peak = measure_ceilings(cp)
    log(f"measured now: copy bandwidth {bw:.0f} GB/s, cuBLAS fp16 matmul {peak:.0f} TFLOP/s")
    rows = []
    for shape in shapes:
        if budget.spent():
            log(f"\n{shape.name}: skipped (time budget of {budget_s:.0f} s used up)")
            continue
        try:
            rows.append(bench_shape(shape, (bw, peak), peers=peers, budget=budget,
                                    variants=variants, log=log))
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory making the problem
            log(f"\n{shape.name}: ERROR {type(exc).__name__}: {str(exc)[:300]}")
            try:
                cp.get_default_memory_pool().free_all_blocks()
            except Exception:  # noqa: BLE001
                pass
    log("\n" + summary_table(rows, gpu))
    log(f"\nfloor = max(FLOPs / {peak:.0f} TFLOP/s, bytes / {bw:.0f} GB/s), bytes = weights of "
        f"the experts used + input and output; targets: <= {TARGET_RATIO}x floor where the "
        f"floor is >= {TARGET_MIN_FLOOR_MS} ms, and faster than torch._grouped_mm and the "
        f"cuTile sample's kernels (re-implemented: moe_tutorial.sample_peer).")
    for r in rows:
        if not r.get("verdict", {}).get("met"):
            log(f"  {r['shape']}: {limits(r, (bw, peak))}")
    if json_path:
        record_results(json_path, gpu, (bw, peak), rows)
        log(f"results written to {json_path}")
    if plot_path and rows:
        try:
            plot_roofline(rows, (bw, peak), plot_path, title=f"MoE layers on {gpu}")
            log(f"roofline plot written to {plot_path}")
        except Exception as exc:  # noqa: BLE001
            log(f"plot failed: {type(exc).__name__}: {exc}")
    log(f"(total {budget.elapsed():.0f} s)")
    return rows


def tune(shapes, *, out=None, jobs=0, budget_s=420.0, log=_print) -> list[dict]:
    """``--tune``: autotune ``shapes`` (largest floor first; kernels compiled in parallel
    first) and write the table to ``out`` (default: ``configs/<GPU name>.json``)."""
    import cupy as cp
    gpu = _gpu_name(cp)
    out = Path(out) if out else tuning.CONFIG_DIR / tuning.file_name(gpu)
    log(f"tuning {len(shapes)} shapes on {gpu} -> {out} (budget {budget_s:.0f} s)")
    t0 = time.time()
    order = sorted(shapes, key=lambda s: -floor_guess_ms(s.dims))
    warm_in_parallel("tune", order, jobs, min(240.0, 0.55 * budget_s), log)
    entries = autotune.run(order, out, budget_s=budget_s - (time.time() - t0), log=log)
    log(f"wrote {len(entries)} entries to {out} ({time.time() - t0:.0f} s); commit it as "
        f"moe_tutorial/configs/{tuning.file_name(gpu)}")
    return entries


def warm_worker(kind: str, shapes, part: str = "0/1") -> None:
    """A worker process of ``warm_in_parallel``: compile (run once) the kernels of ``shapes``."""
    for shape in shapes:
        if kind == "tune":
            i, n = (int(v) for v in part.split("/"))
            autotune.warm_shape(shape, i, n)
        else:
            bench_shape(shape, warm_only=True)


def presets_floor_guess(shape) -> float:
    """``roofline.floor_guess_ms`` of a ``presets.LayerShape`` (the tuner's shape order)."""
    return floor_guess_ms(shape.dims)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m moe_tutorial.bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--shape", action="append", metavar="T,H,E,I,K",
                        help="a layer shape (repeatable); default: the benchmark's 8 shapes")
    parser.add_argument("--only", action="append", metavar="TEXT",
                        help="only the shapes whose name contains TEXT (repeatable)")
    parser.add_argument("--no-peers", action="store_true",
                        help="skip the cuTile-sample, CuPy-loop and torch peers")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes compiling kernels first (0: none; default: "
                             "min(shapes, 8, CPUs/2))")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (default 280; 420 with --tune)")
    parser.add_argument("--variants", metavar="KEY,KEY",
                        help="only these variants (keys: " + ", ".join(LABELS) + ")")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="write a roofline plot")
    parser.add_argument("--tune", action="store_true",
                        help="autotune the tile configs instead of benchmarking")
    parser.add_argument("--out", metavar="FILE.json",
                        help="with --tune: where to write the config table (default: "
                             "moe_tutorial/configs/<GPU name>.json)")
    parser.add_argument("--compare-sample-dir", metavar="DIR",
                        help="instead of benchmarking: time NVIDIA's cuTile MoE sample "
                             "(DIR/MoE.py, needs torch) against our re-implementation")
    parser.add_argument("--_warm", choices=["bench", "tune"], help=argparse.SUPPRESS)
    parser.add_argument("--_part", default="0/1", help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    try:
        a.shapes = _shapes(a.shape, a.only)
    except ValueError as exc:
        parser.error(str(exc))
    if a.variants:
        a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
        unknown = sorted(set(a.variants) - set(LABELS))
        if unknown:
            parser.error(f"unknown variants {unknown}; known: {', '.join(LABELS)}")
    if a.jobs is None:
        a.jobs = min(len(a.shapes), 8, max(1, (os.cpu_count() or 2) // 2))
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    ok, why = device.gpu_status()
    if not ok:
        print(f"moe_tutorial.bench needs a GPU ({why}); nothing to measure on the CPU. "
              f"Notebook 05 shows numbers recorded on a GPU.")
        return 0
    if a._warm:
        warm_worker(a._warm, a.shapes, a._part)
    elif a.compare_sample_dir:
        from . import sample_compare
        rows = sample_compare.run(a.compare_sample_dir, a.shapes, log=_print)
        return 0 if rows and all(r["align_identical"] for r in rows) else 1
    elif a.tune:
        tune(a.shapes, out=a.out, jobs=a.jobs, budget_s=a.budget or 420.0)
    else:
        run(a.shapes, peers=not a.no_peers, jobs=a.jobs, budget_s=a.budget or 280.0,
            json_path=a.json, plot_path=a.plot, variants=a.variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
