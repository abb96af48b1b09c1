"""GPU benchmark of ``silu_and_mul`` against the memory roofline and a CuPy elementwise kernel.

    python -m moe_tutorial.bench_activation            # sizes table + a small tile sweep
    python -m moe_tutorial.bench_activation --sweep    # a bigger tile sweep
    python -m moe_tutorial.bench_activation --json results.json

Method: fresh random float16 inputs per size; every implementation is checked against a float64
reference (computed on the GPU) before it is timed; times are GPU times (CUDA events, via
``cupyx.profiler.benchmark``) of batches of back-to-back launches, so Python launch overhead
does not count, after warm-up; the median over the repeats is reported. The ceiling is a
measured device-to-device ``cudaMemcpyAsync`` of a 512 MiB buffer (bytes read + written).

The functions here are also used by notebook 02 to draw its GPU plots. On a machine without a
GPU the script says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from . import activation as act
from . import device

# Problem sizes (M tokens, I intermediate width), all with M * I >= 16M elements; two widths are
# not powers of two and one M is odd.
SIZES = [(8192, 2048), (16384, 2048), (12288, 1408), (4099, 5000), (65536, 256)]
SWEEP_SIZE = (8192, 2048)
SMALL_SWEEP = [(1, 1024), (2, 512), (4, 256), (8, 256), (16, 256), (32, 128), (8, 512),
               (16, 512), (64, 64), (4, 1024)]
BIG_SWEEP = [(tm, tn) for tm in (1, 2, 4, 8, 16, 32, 64, 128) for tn in (64, 128, 256, 512, 1024)
             if 512 <= tm * tn <= 16384]


def _cp():
    import cupy
    return cupy


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def gpu_time_ms(fn, *, n_inner: int = 10, n_repeat: int = 30, n_warmup: int = 3) -> float:
    """Median GPU time of one call of ``fn``, in ms (batches of ``n_inner`` back-to-back calls
    hide the host-side launch cost)."""
    from cupyx.profiler import benchmark

    def batch():
        for _ in range(n_inner):
            fn()

    result = benchmark(batch, n_repeat=n_repeat, n_warmup=n_warmup)
    return float(np.median(result.gpu_times[0])) * 1e3 / n_inner


def copy_bandwidth_gbs(nbytes: int = 512 << 20) -> float:
    """Measured device-to-device copy bandwidth in GB/s, counting bytes read + written."""
    cp = _cp()
    src = cp.ones(nbytes, dtype=cp.uint8)
    dst = cp.empty_like(src)
    kind = cp.cuda.runtime.memcpyDeviceToDevice

    def copy():
        cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes, kind,
                                    cp.cuda.get_current_stream().ptr)

    ms = gpu_time_ms(copy, n_inner=5, n_repeat=20)
    return 2 * nbytes / (ms * 1e-3) / 1e9


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


def _our_launch(x, out, tile_m, tile_n, approx=False, ftz=False):
    """A prepared launch of the tiled kernel (the checks of ``silu_and_mul`` done once)."""
    M, I = out.shape
    grid = (-(-M // tile_m), -(-I // tile_n), 1)
    args = (x[:, :I], x[:, I:], out, tile_m, tile_n, approx, ftz)
    return lambda: device.launch(grid, act.silu_and_mul_kernel, args)


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
    tm, tn = act.choose_tiles(M, I)
    rows = []

    def measure(name, make_run, n_inner=10):
        out = cp.full((M, I), cp.nan, dtype=dtype)       # poisoned: unwritten elements fail
        run = make_run(out)
        run()
        ok, msg = check_against_reference(out, x)
        ms = gpu_time_ms(run, n_inner=n_inner) if ok else float("nan")
        rows.append(_row(name, M, I, nbytes, ms, copy_gbs, ok, msg))

    measure(f"cuTile {tm}x{tn}", lambda out: _our_launch(x, out, tm, tn))
    measure(f"cuTile {tm}x{tn} approx+ftz", lambda out: _our_launch(x, out, tm, tn, True, True))
    measure("CuPy ElementwiseKernel", lambda out: lambda: cupy_silu_and_mul(x, out))
    if include_unfused:
        measure("CuPy expressions (unfused)",
                lambda out: lambda: cupy_unfused_silu_and_mul(x, out),
                n_inner=3)
    return rows


def tile_sweep(M: int, I: int, tiles, copy_gbs: float, dtype=np.float16):
    """One row per ``(tile_m, tile_n)`` in ``tiles``."""
    cp = _cp()
    x = random_input(M, I, dtype)
    nbytes = act.bytes_moved(M, I, dtype)
    rows = []
    for tm, tn in tiles:
        out = cp.full((M, I), cp.nan, dtype=dtype)
        run = _our_launch(x, out, tm, tn)
        run()
        ok, msg = check_against_reference(out, x)
        ms = gpu_time_ms(run) if ok else float("nan")
        row = _row(f"cuTile {tm}x{tn}", M, I, nbytes, ms, copy_gbs, ok, msg)
        row.update(tile_m=tm, tile_n=tn)
        rows.append(row)
    return rows


def _row(name, M, I, nbytes, ms, copy_gbs, ok, msg):
    gbs = nbytes / (ms * 1e-3) / 1e9
    return {"impl": name, "M": M, "I": I, "MB": nbytes / 1e6, "ms": ms, "GB/s": gbs,
            "% copy": 100.0 * gbs / copy_gbs, "floor ms": nbytes / (copy_gbs * 1e9) * 1e3,
            "correct": ok, "check": msg}


def format_table(rows) -> str:
    head = f"{'M':>6} {'I':>5} {'MB':>7}  {'implementation':<30} {'ms':>8} {'GB/s':>7} " \
           f"{'% copy':>7} {'floor ms':>8}  check"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['M']:>6} {r['I']:>5} {r['MB']:>7.1f}  {r['impl']:<30} {r['ms']:>8.4f} "
                     f"{r['GB/s']:>7.0f} {r['% copy']:>6.1f}% {r['floor ms']:>8.4f}  "
                     f"{'ok' if r['correct'] else 'WRONG'} ({r['check']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", action="store_true", help="a bigger tile sweep")
    parser.add_argument("--json", help="also write all rows to this JSON file")
    args = parser.parse_args(argv)

    if device.backend() != "gpu":
        print(f"bench_activation needs a GPU ({device.gpu_status()[1]}); nothing measured.")
        return 0
    print(device.describe())
    copy_gbs = copy_bandwidth_gbs()
    print(f"\nmeasured device-to-device copy (cudaMemcpyAsync, 512 MiB, read + write): "
          f"{copy_gbs:.0f} GB/s\n")

    rows = []
    for M, I in SIZES:
        rows += measure_size(M, I, copy_gbs)
    print("float16 in and out; % copy = achieved / copy bandwidth; floor = bytes / copy bandwidth")
    print(format_table(rows))

    tiles = BIG_SWEEP if args.sweep else SMALL_SWEEP
    sweep = tile_sweep(*SWEEP_SIZE, tiles, copy_gbs)
    print(f"\ntile sweep at M={SWEEP_SIZE[0]}, I={SWEEP_SIZE[1]} (default rule: "
          f"{act.choose_tiles(*SWEEP_SIZE)})")
    print(format_table(sorted(sweep, key=lambda r: r["ms"])))

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device.describe(), "copy_GB/s": copy_gbs, "sizes": rows,
                       "sweep": sweep}, f, indent=1)
    return 0 if all(r["correct"] for r in rows + sweep) else 1


if __name__ == "__main__":
    sys.exit(main())
