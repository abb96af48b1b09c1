"""GPU results recorded for the notebooks, so a learner on a CPU sees what a GPU measured.

Two kinds of files live in ``moe_tutorial/recorded/``, one of each per GPU model:

- ``<GPU>.json``: a run of ``python -m moe_tutorial.bench --json FILE`` (notebook 05's tables);
- ``<GPU>.lessons.json``: the measurements of the notebooks' own GPU cells, one *section* per
  cell, each with its GPU, date and cuda-tile version. ``python -m moe_tutorial.records``
  measures them on a GPU and merges them into that file.

Every notebook cell that shows recorded data labels it with ``label(...)``; a section that no file
holds yet is announced by ``missing(...)`` with the command that records it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
from pathlib import Path

import numpy as np

RECORDED_DIR = Path(__file__).resolve().parent / "recorded"
LESSONS_SUFFIX = ".lessons.json"


def _load(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def bench_runs() -> list[dict]:
    """Every recorded benchmark run (``<GPU>.json``), newest first."""
    runs = []
    for path in sorted(RECORDED_DIR.glob("*.json")):
        data = _load(path)
        if not path.name.endswith(LESSONS_SUFFIX) and isinstance(data, dict) \
                and data.get("format") == 1 and "rows" in data:
            runs.append({**data, "path": str(path)})
    return sorted(runs, key=lambda d: d.get("created", ""), reverse=True)


def latest_bench_run() -> dict | None:
    runs = bench_runs()
    return runs[0] if runs else None


def recordings(section: str) -> list[dict]:
    """Every recording of one notebook ``section``, newest first: dicts with ``gpu``,
    ``created``, ``cuda_tile``, ``source`` and ``data``."""
    found = []
    for path in sorted(RECORDED_DIR.glob("*" + LESSONS_SUFFIX)):
        data = _load(path) or {}
        entry = data.get("sections", {}).get(section)
        if entry:
            found.append({"gpu": data.get("gpu", path.name), **entry})
    return sorted(found, key=lambda e: e.get("created", ""), reverse=True)


def latest(section: str) -> dict | None:
    found = recordings(section)
    return found[0] if found else None


def label(rec: dict) -> str:
    """``RECORDED on <GPU>, <date> (cuda-tile <version>)``: the title of recorded data."""
    version = f", cuda-tile {rec['cuda_tile']}" if rec.get("cuda_tile") else ""
    return f"RECORDED on {rec['gpu']}, {rec.get('created', '?')[:10]}{version}"


def missing(section: str, what: str) -> None:
    """Say that nothing is recorded for ``section`` yet, and how to record it."""
    print(f"No GPU here, and no recording of {what} exists yet in moe_tutorial/recorded/. "
          f"On a GPU, `python -m moe_tutorial.records {section}` records it.")


def file_for(gpu: str) -> Path:
    return RECORDED_DIR / (re.sub(r"[^A-Za-z0-9]+", "_", gpu).strip("_") + LESSONS_SUFFIX)


def write(section: str, data, *, gpu: str, cuda_tile: str, source: str,
          path: Path | None = None) -> Path:
    """Merge one section into ``<GPU>.lessons.json`` (other sections are kept)."""
    path = path or file_for(gpu)
    doc = _load(path) if path.exists() else None
    doc = doc or {"format": "lessons-1", "gpu": gpu, "sections": {}}
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    doc["sections"][section] = {"created": created, "cuda_tile": cuda_tile, "source": source,
                                "data": data}
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path


# --- measurements (GPU only); the notebooks call the same functions live on a GPU ------------

def division_table(xp, seed: int = 0) -> dict:
    """Notebook 02: the worst error of silu_and_mul against float64, in units of the test
    tolerance, for every (output dtype, approx_div, flush_to_zero)."""
    from . import activation
    rng = np.random.default_rng(seed)
    x32 = xp.asarray((rng.standard_normal((64, 512)) * 10).astype(np.float32))
    ref = activation.silu_and_mul_reference(x32)
    table = {}
    for dtype in (np.float32, np.float16):
        rtol, atol = activation.tolerance(dtype)
        for approx in (False, True):
            for ftz in (False, True):
                out = xp.empty((64, 256), dtype=dtype)
                activation.silu_and_mul(x32, out, approx_div=approx, flush_to_zero=ftz)
                err = np.abs(_host(out).astype(np.float64) - ref)
                table[f"{np.dtype(dtype).name} approx={approx} ftz={ftz}"] = float(
                    np.max(err / (atol + rtol * np.abs(ref))))
    return table


def activation_bandwidth(M: int = 8192, I: int = 2048) -> dict:
    """Notebook 02: the copy ceiling, bandwidth versus tile shape at (M, I), and versus problem
    size (ours with each division mode, the fused CuPy kernel), as % of the copy."""
    from . import bench_activation as ba
    copy_gbs = ba.copy_bandwidth_gbs()
    sweep = [{"tiles": f"{r['tile_m']}x{r['tile_n']}", "percent": 100 * r["GB/s"] / copy_gbs}
             for r in ba.tile_sweep(M, I, ba.SMALL_SWEEP, copy_gbs) if r["correct"]]
    sizes = []
    for m, i in [(m, 2048) for m in (64, 256, 1024, 4096, 8192, 16384)] + [(8192, 1408),
                                                                          (4099, 5000)]:
        for r in ba.measure_size(m, i, copy_gbs, include_unfused=(m, i) == (M, I)):
            if r["correct"]:
                sizes.append({"M": m, "I": i, "impl": r["impl"], "MB": r["MB"],
                              "percent": 100 * r["GB/s"] / copy_gbs})
    return {"copy_gbs": copy_gbs, "M": M, "I": I, "dtype": "float16", "tile_sweep": sweep,
            "sizes": sizes}


def layer_profiles(xp) -> dict:
    """Notebook 04: measured ceilings, each step's median GPU time for three models in decode
    and prefill, each GEMM's achieved TFLOP/s, and the layer against two baselines (a CuPy per-expert loop, the re-implemented
    cuTile sample with its host alignment)."""
    from . import layer, presets, roofline, routing, sample_peer, timing

    median_ms = timing.median_ms

    bandwidth, peak = timing.measure_ceilings(xp)
    steps, points, baselines = {}, [], []
    for name in ("qwen3_30b_a3b", "mixtral_8x7b", "deepseek_v3"):
        pr = presets.PRESETS[name]
        for phase in ("decode", "prefill"):
            T = pr.tokens(phase)
            prob = presets.make_problem(pr, T, xp=xp, seed=2)
            a = [prob[k] for k in ("hidden_states", "w1", "w2", "router_logits")]
            plan = layer.plan_layer(*a, pr.top_k,
                                    e_score_correction_bias=prob.get("e_score_correction_bias"),
                                    **pr.router_kwargs())
            plan.run()
            ids = plan.buffers["topk_ids"]
            used = int(xp.unique(ids[ids >= 0]).size)
            times = {s: median_ms(fn) for s, fn in plan.steps}
            steps[f"{name} {phase} T={T}"] = times
            for g, (fl, by) in roofline.gemm_costs(T, pr.hidden, pr.intermediate, pr.top_k,
                                                used).items():
                points.append({"label": f"{name} {phase} {g.split()[0]}", "intensity": fl / by,
                               "tflops": fl / times[g] / 1e9})
            del prob, a, plan
            xp.get_default_memory_pool().free_all_blocks()
    for name in ("cutile_sample", "qwen3_30b_a3b", "mixtral_8x7b"):
        pr = presets.PRESETS[name]
        for phase in ("decode", "prefill"):
            T = pr.tokens(phase)
            prob = presets.make_problem(pr, T, xp=xp, seed=3)
            a = [prob[k] for k in ("hidden_states", "w1", "w2", "router_logits")]
            w, ids = routing.topk_softmax(a[3], pr.top_k, renormalize=pr.renormalize)
            used = int(xp.unique(ids).size)
            fl, by = roofline.layer_cost(T, pr.hidden, pr.intermediate, pr.top_k, used)
            baselines.append({
                "shape": f"{name} {phase}",
                "moe_forward": median_ms(lambda: layer.moe_forward(*a, pr.top_k,
                                                                   **pr.router_kwargs())),
                "cupy_loop": median_ms(
                    lambda: layer.moe_forward_expert_loop(*a[:3], w, ids), n_repeat=5),
                "sample_peer": median_ms(
                    lambda: sample_peer.moe_forward(*a[:3], w, ids), n_repeat=5),
                "floor": roofline.roofline_floor_ms(fl, by, peak, bandwidth)})
            del prob, a
    return {"copy_gbs": bandwidth, "matmul_tflops": peak, "step_ms": steps, "gemms": points,
            "baselines_ms": baselines}


def gemm_layouts(xp, tile_m: int = 128, tile_n: int = 128, tile_k: int = 64) -> dict:
    """Notebook 05: one expert GEMM alone with rows gathered and in slot order, same tiles
    (Qwen3-30B-A3B and Mixtral-8x7B prefill, GEMM1 and GEMM2), and ``permute_rows``' device
    time for the three big prefills."""
    from . import fused_moe, presets, routing

    from .timing import median_ms

    rng = np.random.default_rng(3)
    tile = fused_moe.TileConfig(tile_m=tile_m, tile_n=tile_n, tile_k=tile_k)
    gemms, permute_us = [], {}
    for name in ("qwen3_30b_a3b", "mixtral_8x7b", "deepseek_v3"):
        p = presets.PRESETS[name]
        T, K, H, I, E = p.prefill_tokens, p.top_k, p.hidden, p.intermediate, p.experts
        x = xp.asarray(rng.standard_normal((T, H), dtype=np.float32)).astype(xp.float16)
        logits = xp.asarray(rng.standard_normal((T, E), dtype=np.float32))
        weights, ids = routing.topk_softmax(logits, K, renormalize=True)
        sorted_ids, expert_ids, _ = routing.align(ids, E, tile.tile_m)
        x_sorted, positions = fused_moe.permute_rows(x, sorted_ids, expert_ids, K)
        permute_us[f"{name} prefill"] = 1e3 * median_ms(lambda: fused_moe.permute_rows(
            x, sorted_ids, expert_ids, K, out=x_sorted, positions=positions, validate=False))
        if name == "deepseek_v3":
            continue                                   # its weights alone are 22 GB
        w1 = (xp.asarray(rng.standard_normal((E, 2 * I, H), dtype=np.float32)) / H ** 0.5
              ).astype(xp.float16)
        act = xp.asarray(rng.standard_normal((T * K, I), dtype=np.float32)).astype(xp.float16)
        act_sorted, _ = fused_moe.permute_rows(act, sorted_ids, expert_ids, 1)
        w2 = (xp.asarray(rng.standard_normal((E, H, I), dtype=np.float32)) / I ** 0.5
              ).astype(xp.float16)
        S = sorted_ids.shape[0]
        for label, a, a_sorted, w, top_k, kw in (
                ("GEMM1", x, x_sorted, w1, K, {}),
                ("GEMM2", act, act_sorted, w2, 1,
                 dict(topk_weights=weights, mul_routed_weight=True))):
            n = w.shape[1]
            out = {False: xp.empty((T * K, n), xp.float16), True: xp.empty((S, n), xp.float16)}

            def run(sorted_rows, a_in):
                return lambda: fused_moe.fused_moe_matmul(
                    a_in, w, sorted_ids, expert_ids, top_k=top_k, out=out[sorted_rows],
                    config=tile, sorted_rows=sorted_rows, validate=False, **kw)
            gemms.append({"label": f"{name} prefill {label}, {tile_m}x{tile_n}x{tile_k}",
                          "T": T, "K": K, "N": n, "Kd": w.shape[2],
                          "gather_ms": median_ms(run(False, a)),
                          "slot_ms": median_ms(run(True, a_sorted)), "slot_a_only_ms": None})
        del w1, w2, act, act_sorted
        xp.get_default_memory_pool().free_all_blocks()
    return {"gemms": gemms, "cublas_dense_ms": None, "layer_ms": {}, "permute_us": permute_us}


def profiles_from_bench(run: dict) -> dict:
    """Notebook 04's profile data taken from a recorded benchmark run: its ceilings, each
    shape's per-step device times (one CUDA graph per step) and the GEMMs' achieved TFLOP/s.
    (No baselines: the benchmark compares with its own peers.)"""
    from . import roofline
    steps, points = {}, []
    for r in run["rows"]:
        if not r.get("steps_us"):
            continue
        T, H, E, I, K = r["dims"]
        steps[f"{r['shape']} T={T}"] = {s: us / 1e3 for s, us in r["steps_us"].items()}
        for g, (fl, by) in roofline.gemm_costs(T, H, I, K, r["experts_used"]).items():
            if r["steps_us"].get(g):
                points.append({"label": f"{r['shape']} {g.split()[0]}", "intensity": fl / by,
                               "tflops": fl / (r["steps_us"][g] * 1e-6) / 1e12})
    return {"copy_gbs": run["ceilings"]["copy_gbs"],
            "matmul_tflops": run["ceilings"]["matmul_tflops"], "step_ms": steps, "gemms": points,
            "baselines_ms": None}


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


MEASUREMENTS = {
    "02_division_table": ("notebook 02's approx/flush-to-zero error table",
                          lambda xp: division_table(xp)),
    "02_bandwidth": ("notebook 02's bandwidth sweeps", lambda xp: activation_bandwidth()),
    "04_profiles": ("notebook 04's per-kernel times, roofline points and baselines",
                    lambda xp: layer_profiles(xp)),
    "05_gemm_layouts": ("notebook 05's expert GEMMs, rows gathered vs in slot order",
                        lambda xp: gemm_layouts(xp)),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moe_tutorial.records",
        description="Measure the notebooks' GPU-only cells on this GPU and merge the results "
                    "into moe_tutorial/recorded/<GPU>.lessons.json.")
    parser.add_argument("sections", nargs="*", metavar="SECTION",
                        help=f"sections to record, of {', '.join(MEASUREMENTS)} (default: all)")
    parser.add_argument("--out", type=Path, help="file to merge into (default: by GPU name)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sections) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(MEASUREMENTS)}")
    import cupy as cp

    import cuda.tile as ct
    props = cp.cuda.runtime.getDeviceProperties(0)
    gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    for section in args.sections or list(MEASUREMENTS):
        what, measure = MEASUREMENTS[section]
        print(f"recording {what} on {gpu} ...", flush=True)
        path = write(section, measure(cp), gpu=gpu, cuda_tile=ct.__version__,
                     source=f"python -m moe_tutorial.records {section}", path=args.out)
        print(f"  -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
