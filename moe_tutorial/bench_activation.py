"""GPU benchmark of ``silu_and_mul`` against the memory roofline and a CuPy elementwise kernel.

    python -m moe_tutorial.bench_activation            # sizes table + tile/hint tuning (< 1 min)
    python -m moe_tutorial.bench_activation --no-hints # sizes table + tile shapes only
    python -m moe_tutorial.bench_activation --sweep    # also a bigger tile sweep at 8192x2048
    python -m moe_tutorial.bench_activation --json results.json

Method: fresh random float16 inputs per size; every implementation is checked against a float64
reference (computed on the GPU) before it is timed; times are GPU times (CUDA events, via
``cupyx.profiler.benchmark``) of batches of back-to-back launches, so Python launch overhead
does not count, after warm-up; the median over the repeats is reported (``moe_tutorial.timing``).
The ceiling is the package's copy ceiling, ``timing.copy_bandwidth_gbs``: a measured
device-to-device ``cudaMemcpyAsync`` of 1 GiB (bytes read + written).

1. Sizes: the defaults (tiles from ``activation.choose_tiles``; approximate division for these
   float16 outputs, ``activation.default_approx_div``; the odd tail columns in their own launch
   when ``I % 16 != 0``, ``activation.split_columns``), then the same with exact division, with
   approximate division and FTZ, and -- where the tail is split -- without the split; against a
   fused CuPy ``ElementwiseKernel`` and unfused CuPy expressions.
2. Tuning, for the shapes in ``TUNING``: first tile shapes of 512, 1024 and 2048 elements, then,
   on the fastest tile shape of that shape, compiler hints one at a time: ``ct.kernel`` options
   ``occupancy`` and ``num_ctas`` (through ``kernel.replace_hints``) and the ``latency`` and
   ``allow_tma`` hints of the loads (constants of the kernel); finally the best value of every
   hint family that helped by more than 1%, together. About 40 variants; each compiles once
   (1-3 s), which is most of the run time. The best variant per shape is printed last, with the
   default rule and CuPy for comparison.

The functions here are also used by notebook 02 to draw its GPU plots. On a machine without a
GPU the script says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from . import activation as act
from . import device, timing

# Problem sizes (M tokens, I intermediate width), all with M * I >= 16M elements; two widths are
# not powers of two and one M is odd.
SIZES = [(8192, 2048), (16384, 2048), (12288, 1408), (4099, 5000), (65536, 256)]
TARGET_COPY_FRACTION = 0.85      # the target at M * I >= 16M, float16

# Tile shapes of 512, 1024 and 2048 elements (the sweep of the notebook's plot adds 4096).
TILES_512 = [(1, 512), (2, 256)]
TILES_1024 = [(1, 1024), (2, 512), (4, 256)]
TILES_2048 = [(1, 2048), (2, 1024), (4, 512), (8, 256)]
SMALL_SWEEP = TILES_512 + TILES_1024 + TILES_2048 + [(4, 1024), (16, 256)]
BIG_SWEEP = [(tm, tn) for tm in (1, 2, 4, 8, 16, 32, 64, 128) for tn in (64, 128, 256, 512, 1024)
             if 512 <= tm * tn <= 16384]
SWEEP_SIZE = (8192, 2048)

# Hints, one at a time: keyword arguments of ``activation.silu_and_mul``.
HINTS_FULL = ([{"occupancy": n} for n in (1, 2, 4, 8, 16)] + [{"num_ctas": n} for n in (2, 4)]
              + [{"latency": n} for n in (1, 4, 10)] + [{"allow_tma": False}])
HINTS_SHORT = ([{"occupancy": n} for n in (2, 4, 8)] + [{"num_ctas": 2}, {"latency": 10},
                                                        {"allow_tma": False}])
# (M, I) -> (tile shapes, hints); the tile shapes are tried first, the hints on the fastest.
TUNING = {
    (8192, 2048): (TILES_512 + TILES_1024 + TILES_2048, HINTS_FULL),
    (4099, 5000): ([(1, 1024), (2, 512), (4, 256), (4, 512)], HINTS_SHORT),
    # 1408 = 11 * 128: 8x128 tiles divide the row exactly (2x512 leaves a 3/4-full last tile)
    (12288, 1408): ([(1, 1024), (2, 512), (4, 256), (4, 512), (8, 128)], HINTS_SHORT),
}


def _cp():
    import cupy
    return cupy


copy_bandwidth_gbs = timing.copy_bandwidth_gbs      # the package's copy ceiling (notebook 02)


def gpu_time_ms(fn, *, n_inner: int = 10) -> float:
    """Median GPU time of one call of ``fn`` in ms: ``timing.median_ms`` of batches of
    ``n_inner`` back-to-back calls (they hide the host-side launch cost)."""
    return timing.median_ms(fn, n_inner=n_inner)


# ---------------------------------------------------------------------------------------------
# The implementations
# ---------------------------------------------------------------------------------------------

_cupy_kernel = None


def cupy_silu_and_mul(x, out=None):
    """The same operation as one fused CuPy ``ElementwiseKernel`` (fp32 math), for comparison."""
    global _cupy_kernel
    cp = _cp()
    if _cupy_kernel is None:
        _cupy_kernel = cp.ElementwiseKernel(
            "T g, T u", "O y",
            "float gf = (float)g; y = (O)(gf / (1.0f + expf(-gf)) * (float)u);",
            "moe_tutorial_silu_and_mul")
    I = x.shape[1] // 2
    if out is None:
        out = cp.empty((x.shape[0], I), dtype=x.dtype)
    return _cupy_kernel(x[:, :I], x[:, I:], out)


def cupy_unfused_silu_and_mul(x, out=None):
    """Plain CuPy expressions: one kernel per operation (what not fusing costs)."""
    cp = _cp()
    I = x.shape[1] // 2
    g = x[:, :I].astype(cp.float32)
    silu = g / (1.0 + cp.exp(-g))
    if out is None:
        out = cp.empty((x.shape[0], I), dtype=x.dtype)
    return cp.multiply(silu, x[:, I:], out=out)       # rounds to out.dtype on the way out


def _our_launch(x, out, tile_m=None, tile_n=None, **options):
    """A prepared launch of the tiled kernel: the checks of ``silu_and_mul`` are done once here,
    the returned function only launches. ``options``: ``approx_div``, ``flush_to_zero`` and the
    hints (``latency``, ``allow_tma``, ``occupancy``, ``num_ctas``)."""
    _, launches = act.plan_launch(x, out, tile_m=tile_m, tile_n=tile_n, **options)

    def run():
        for launch in launches:             # two when the odd tail columns are split off
            device.launch(*launch)
    return run


def hint_label(hints: dict) -> str:
    """``{"occupancy": 4, "allow_tma": False}`` -> ``"occ=4 no-TMA"``."""
    short = {"occupancy": "occ", "num_ctas": "ctas", "latency": "lat"}
    parts = []
    for key, value in hints.items():
        parts.append("no-TMA" if key == "allow_tma" and value is False
                     else f"{short.get(key, key)}={value}")
    return " ".join(parts)


def variant_label(tile_m, tile_n, hints=None) -> str:
    return " ".join(p for p in (f"cuTile {tile_m}x{tile_n}", hint_label(hints or {})) if p)


def random_input(M: int, I: int, dtype=np.float16, seed: int | None = None):
    cp = _cp()
    rs = cp.random.RandomState(seed) if seed is not None else cp.random
    return (rs.standard_normal((M, 2 * I), dtype=cp.float32) * 3.0).astype(dtype)


def check_against_reference(out, x) -> tuple[bool, str]:
    """Compare on the GPU with a float64 reference, at ``activation.tolerance``."""
    cp = _cp()
    I = x.shape[1] // 2
    g = x[:, :I].astype(cp.float64)
    ref = g / (1.0 + cp.exp(-g)) * x[:, I:].astype(cp.float64)
    rtol, atol = act.tolerance(out.dtype)
    err = cp.abs(out.astype(cp.float64) - ref)
    bad = ~(err <= atol + rtol * cp.abs(ref))
    n_bad = int(bad.sum())
    return n_bad == 0, f"max abs error {float(err.max()):.3g}, {n_bad} elements off"


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------

def measure_size(M: int, I: int, copy_gbs: float, dtype=np.float16, *, include_unfused=True):
    """Rows (dicts) for one problem size: ours with the default tiles (exact and fast math), the
    fused CuPy kernel and, optionally, unfused CuPy expressions."""
    cp = _cp()
    x = random_input(M, I, dtype)
    nbytes = act.bytes_moved(M, I, dtype)
    main = act.split_columns(M, I)
    tm, tn = act.choose_tiles(M, main)
    label = f"cuTile {tm}x{tn}" + (f" + {I - main}-col tail" if main != I else "")
    rows = []

    def measure(name, make_run, n_inner=10):
        out = cp.full((M, I), cp.nan, dtype=dtype)       # poisoned: unwritten elements fail
        run = make_run(out)
        run()
        ok, msg = check_against_reference(out, x)
        ms = gpu_time_ms(run, n_inner=n_inner) if ok else float("nan")
        rows.append(_row(name, M, I, nbytes, ms, copy_gbs, ok, msg))

    measure(label, lambda out: _our_launch(x, out))               # the defaults: first row
    measure(f"{label} exact div", lambda out: _our_launch(x, out, approx_div=False))
    measure(f"{label} approx+ftz",
            lambda out: _our_launch(x, out, approx_div=True, flush_to_zero=True))
    if main != I:
        measure(f"cuTile {tm}x{tn} no split", lambda out: _our_launch(x, out, split_tail=False))
    measure("CuPy ElementwiseKernel", lambda out: lambda: cupy_silu_and_mul(x, out))
    if include_unfused:
        measure("CuPy expressions (unfused)",
                lambda out: lambda: cupy_unfused_silu_and_mul(x, out),
                n_inner=3)
    return rows


def measure_variant(x, tile_m: int, tile_n: int, hints: dict, copy_gbs: float) -> dict:
    """One row for the tiled kernel with one tile shape and hints, on input ``x``. A variant
    that does not compile or launch gives a row with ``correct = None`` and the error."""
    cp = _cp()
    M, I = x.shape[0], x.shape[1] // 2
    nbytes = act.bytes_moved(M, I, x.dtype)
    out = cp.full((M, I), cp.nan, dtype=x.dtype)
    start = time.perf_counter()
    try:
        run = _our_launch(x, out, tile_m, tile_n, **hints)
        run()                                        # the first call compiles
        cp.cuda.get_current_stream().synchronize()
    except Exception as e:  # noqa: BLE001 - report the variant as failed, go on with the others
        row = _row(variant_label(tile_m, tile_n, hints), M, I, nbytes, float("nan"), copy_gbs,
                   None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    else:
        first_s = time.perf_counter() - start
        ok, msg = check_against_reference(out, x)
        ms = gpu_time_ms(run) if ok else float("nan")
        row = _row(variant_label(tile_m, tile_n, hints), M, I, nbytes, ms, copy_gbs, ok, msg)
        row["first call s"] = first_s
    row.update(tile_m=tile_m, tile_n=tile_n, hints=dict(hints))
    return row


def tile_sweep(M: int, I: int, tiles, copy_gbs: float, dtype=np.float16):
    """One row per ``(tile_m, tile_n)`` in ``tiles`` (no hints)."""
    x = random_input(M, I, dtype)
    return [measure_variant(x, tm, tn, {}, copy_gbs) for tm, tn in tiles]


def _fastest(rows):
    timed = [r for r in rows if r["correct"] and np.isfinite(r["ms"])]
    return min(timed, key=lambda r: r["ms"]) if timed else None


def tune_shape(M: int, I: int, tiles, hint_list, copy_gbs: float, dtype=np.float16):
    """Tile shapes first, then each hint in ``hint_list`` on the fastest tile shape, then the
    best value of every hint family that beat that tile shape by > 1%, combined. Rows carry
    ``stage`` = "tile", "hint" or "combined"."""
    x = random_input(M, I, dtype)
    rows = [dict(measure_variant(x, tm, tn, {}, copy_gbs), stage="tile") for tm, tn in tiles]
    base = _fastest(rows)
    if base is None or not hint_list:
        return rows
    tm, tn = base["tile_m"], base["tile_n"]
    hinted = [dict(measure_variant(x, tm, tn, h, copy_gbs), stage="hint") for h in hint_list]
    rows += hinted
    combined = {}
    for family in sorted({k for h in hint_list for k in h}):
        best = _fastest([r for r in hinted if family in r["hints"]])
        if best is not None and best["ms"] < 0.99 * base["ms"]:
            combined[family] = best["hints"][family]
    if len(combined) >= 2:
        rows.append(dict(measure_variant(x, tm, tn, combined, copy_gbs), stage="combined"))
    return rows


def _row(name, M, I, nbytes, ms, copy_gbs, ok, msg):
    gbs = nbytes / (ms * 1e-3) / 1e9
    return {"impl": name, "M": M, "I": I, "MB": nbytes / 1e6, "ms": ms, "GB/s": gbs,
            "% copy": 100.0 * gbs / copy_gbs, "floor ms": nbytes / (copy_gbs * 1e9) * 1e3,
            "correct": ok, "check": msg}


def format_table(rows) -> str:
    head = f"{'M':>6} {'I':>5} {'MB':>7}  {'implementation':<34} {'ms':>8} {'GB/s':>7} " \
           f"{'% copy':>7} {'floor ms':>8}  check"
    lines = [head, "-" * len(head)]
    for r in rows:
        status = {True: "ok", False: "WRONG", None: "not run"}[r["correct"]]
        lines.append(f"{r['M']:>6} {r['I']:>5} {r['MB']:>7.1f}  {r['impl']:<34} {r['ms']:>8.4f} "
                     f"{r['GB/s']:>7.0f} {r['% copy']:>6.1f}% {r['floor ms']:>8.4f}  "
                     f"{status} ({r['check']})")
    return "\n".join(lines)


def summarize(M: int, I: int, tuning_rows, size_rows) -> str:
    """The best variant of one shape against the default rule, CuPy and the 85% target."""
    best = _fastest(tuning_rows)
    same = [r for r in size_rows if (r["M"], r["I"]) == (M, I)]
    default = next((r for r in same if r["impl"].startswith("cuTile")), None)  # measure_size
                                                                                # puts it first
    cupy = next((r for r in same if r["impl"] == "CuPy ElementwiseKernel"), None)
    if best is None:
        return f"{M}x{I}: no variant ran correctly"
    target = 100 * TARGET_COPY_FRACTION
    text = (f"{M}x{I}: best {best['impl'][len('cuTile '):]}: {best['ms']:.4f} ms, "
            f"{best['GB/s']:.0f} GB/s = {best['% copy']:.1f}% of copy "
            f"({'meets' if best['% copy'] >= target else 'below'} the {target:.0f}% target)")
    for name, r in (("default rule " + (default["impl"][len("cuTile "):] if default else ""),
                     default), ("CuPy ElementwiseKernel", cupy)):
        if r is not None and np.isfinite(r["ms"]):
            text += f"\n    {name}: {r['ms']:.4f} ms, {r['% copy']:.1f}% of copy"
    if cupy is not None and np.isfinite(cupy["ms"]):
        text += f"\n    CuPy time / best time: {cupy['ms'] / best['ms']:.2f}"
        if default is not None and np.isfinite(default["ms"]):
            text += f", CuPy time / default rule time: {cupy['ms'] / default['ms']:.2f}"
    return text


def run(*, hints: bool = True, sweep_tiles: bool = False, json_path=None) -> bool:
    """The benchmark (see the module); prints its tables, returns whether every variant that
    ran was correct."""
    t0 = time.perf_counter()
    print(device.describe())
    copy_gbs = copy_bandwidth_gbs()
    print(f"\nmeasured device-to-device copy (cudaMemcpyAsync, 1 GiB, read + write): "
          f"{copy_gbs:.0f} GB/s\n")

    rows = []
    for M, I in SIZES:
        rows += measure_size(M, I, copy_gbs)
    print("1. sizes, default rule (activation.choose_tiles); float16 in and out; "
          "% copy = achieved / copy bandwidth; floor = bytes / copy bandwidth")
    print(format_table(rows))
    print(f"[{time.perf_counter() - t0:.0f} s]")

    tuning = {}
    for (M, I), (tiles, hint_list) in TUNING.items():
        t1 = time.perf_counter()
        if act.choose_tiles(M, I) not in tiles:
            tiles = tiles + [act.choose_tiles(M, I)]          # always measure the default rule
        tuning[(M, I)] = tune_shape(M, I, tiles, hint_list if hints else [], copy_gbs)
        print(f"\n2. tuning at M={M}, I={I} (default rule: {act.choose_tiles(M, I)}); tile "
              f"shapes, then hints on the fastest tile shape; fastest first "
              f"[{time.perf_counter() - t1:.0f} s, {len(tuning[(M, I)])} variants]")
        print(format_table(sorted(tuning[(M, I)], key=lambda r: (np.nan_to_num(r["ms"],
                                                                               nan=np.inf)))))

    sweep = []
    if sweep_tiles:
        sweep = tile_sweep(*SWEEP_SIZE, BIG_SWEEP, copy_gbs)
        print(f"\nbig tile sweep at M={SWEEP_SIZE[0]}, I={SWEEP_SIZE[1]}")
        print(format_table(sorted(sweep, key=lambda r: np.nan_to_num(r["ms"], nan=np.inf))))

    print(f"\n3. best variant per shape (target: >= {100 * TARGET_COPY_FRACTION:.0f}% of the "
          f"copy bandwidth and faster than CuPy)")
    for (M, I), tuning_rows in tuning.items():
        print(summarize(M, I, tuning_rows, rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")

    if json_path:
        with open(json_path, "w") as f:
            json.dump({"device": device.describe(), "copy_GB/s": copy_gbs, "sizes": rows,
                       "tuning": [r for rs in tuning.values() for r in rs], "sweep": sweep},
                      f, indent=1)
    all_rows = rows + sweep + [r for rs in tuning.values() for r in rs]
    return all(r["correct"] is not False for r in all_rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-hints", action="store_true",
                        help="tune tile shapes only (no compiler-hint variants)")
    parser.add_argument("--sweep", action="store_true",
                        help="also a bigger tile sweep at M=8192, I=2048")
    parser.add_argument("--json", help="also write all rows to this JSON file")
    args = parser.parse_args(argv)
    if device.backend() != "gpu":
        print(f"bench_activation needs a GPU ({device.gpu_status()[1]}); nothing measured.")
        return 0
    return 0 if run(hints=not args.no_hints, sweep_tiles=args.sweep, json_path=args.json) else 1


if __name__ == "__main__":
    sys.exit(main())
