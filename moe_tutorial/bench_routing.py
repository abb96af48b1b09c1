"""Benchmark the routing kernels on a GPU: ``python -m moe_tutorial.bench_routing [--sweep]``.

For each shape it checks the results against the NumPy references first, then reports, in
microseconds (medians):

* **eager GPU / eager host** -- ``cupyx.profiler.benchmark`` of the plain Python call. Its GPU
  time starts before the host has enqueued anything, so for these small kernels it is mostly
  host time: Python, argument checks, allocations and ``ct.launch`` argument processing.
* **graph** -- the device time of the same calls replayed from a CUDA graph (how the MoE layer
  runs them for decode: alignment never syncs with the host, so everything can be captured).
  A graph holds ``GRAPH_REPS`` back-to-back calls and is timed with CUDA events while the GPU
  is already busy with a previous replay, so no host time is included (``timing.capture_ms``).

Peers: a CuPy sort-based alignment (argsort + bincount + cumsum + scatter; bincount syncs with
the host) and the host loop of cuTile's ``samples/MoE.py`` as re-implemented in
``sample_peer.align`` (one Python iteration, and host syncs, per expert). Neither can be
captured in a graph.

Then: a per-kernel breakdown of ``align`` (graphs of the first 1, 2 and 3 of its launches:
differences give each kernel's device time; the same for host time of eager launches), and a
launch-overhead microbenchmark (host time of ``ct.launch`` with 3 and 12 arguments, of
``moe_tutorial.launch``, of ``cupy.empty`` and of a slice) -- the floor of any eager call.
``--sweep`` times each tuning constant of ``moe_tutorial.routing`` (graph time, results checked).

Targets (T=4096, K=8, E=128 on an H100): align <= 25 us, router <= 15 us,
judged on the graph time. Measured, not asserted. Range validation (a host sync) is off for
timing (``validate=False``). Every measurement is wrapped: a failure prints an ERROR row and
the run goes on.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback

import cuda.tile as ct
import numpy as np

from . import device, routing, sample_peer, timing
from .routing import (align, align_launches, align_reference, grouped_topk,
                      grouped_topk_reference, max_padded_size, topk_softmax,
                      topk_softmax_reference)

SHAPES = [  # (name, T, K, E, tile_m)
    ("prefill T=4096", 4096, 8, 128, 64),
    ("decode T=64", 64, 8, 128, 16),
    ("E=512 T=4096", 4096, 8, 512, 64),
]
TARGET_US = {"align": 25.0, "topk_softmax": 15.0}
GRAPH_REPS = 20          # calls captured in one graph


def align_cupy_sort(topk_ids, num_experts, tile_m):
    """Alignment from CuPy primitives: sort (expert, index) keys, then place each replica at
    its expert's padded start + its rank. ~10 launches; ``cupy.bincount`` syncs with the host
    (it reads max(ids) to size its output), so it cannot be captured in a graph.
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
    """The host alignment of cuTile's ``samples/MoE.py`` (``sample_peer.align``: a Python loop
    over the experts, host syncs per expert); returns ``(sorted_token_ids, expert_ids,
    num_tokens_post_padded)`` with the arrays cut at the padded total, as the sample sizes them."""
    sorted_token_ids, expert_ids = sample_peer.align(topk_ids, num_experts, tile_m)
    return sorted_token_ids, expert_ids, int(sorted_token_ids.shape[0])


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


# ------------------------------------------------------------------------------------------
# Timing helpers
# ------------------------------------------------------------------------------------------
def _median_us(fn, n_repeat, n_warmup=10):
    """Eager (GPU time, host time) medians in microseconds (``timing.eager``)."""
    t = timing.eager(fn, n_repeat=n_repeat, n_warmup=n_warmup)
    return t.gpu_ms * 1e3, t.host_ms * 1e3


def graph_us(fn, reps=GRAPH_REPS):
    """Device time of one ``fn()`` in microseconds, replayed from a CUDA graph holding ``reps``
    calls (``timing.capture_ms``); returns ``(us, last result)`` -- the last captured call's
    result, written by the replays, for checking."""
    ms, last = timing.capture_ms(fn, reps=reps)
    return ms * 1e3, last


host_us = timing.host_us


class Table:
    """Rows of results, printed as they come (so a crash later loses nothing)."""
    HEADER = (f"{'shape':<20} {'what':<36} {'eager GPU':>10} {'eager host':>10} "
              f"{'graph':>9}  target (graph time)")

    def __init__(self):
        print(self.HEADER)
        self.rows = []

    def add(self, shape, what, eager=None, graph=None, target=None, note=""):
        fmt = lambda v: f"{v:.1f}" if v is not None else "-"  # noqa: E731
        gpu, host = eager if eager is not None else (None, None)
        mark = ""
        if target is not None and graph is not None:
            mark = f"<= {target:g} us " + ("met" if graph <= target else "MISSED")
        print(f"{shape:<20} {what:<36} {fmt(gpu):>10} {fmt(host):>10} {fmt(graph):>9}  "
              f"{mark}{note}", flush=True)
        self.rows.append((shape, what, gpu, host, graph, target))

    def error(self, shape, what, exc):
        print(f"{shape:<20} {what:<36} ERROR {type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:150] if str(exc) else ''}", flush=True)
        if "-v" in sys.argv or "--verbose" in sys.argv:
            traceback.print_exc()


def _try(table, shape, what, measure):
    """Run one measurement; on failure print an ERROR row and go on."""
    try:
        measure()
    except Exception as e:  # noqa: BLE001 - report and continue
        table.error(shape, what, e)


# ------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------
def _align_ok(got, want, what):
    _check_align(what, got, want)


def run_shape(table, name, t, k, e, tile_m, n_repeat, rng):
    import cupy as cp
    logits_np = rng.standard_normal((t, e)).astype(np.float32)
    logits = cp.asarray(logits_np)
    want_w, want_ids = topk_softmax_reference(logits_np, k, renormalize=True)
    want = align_reference(want_ids, e, tile_m)
    ids = cp.asarray(want_ids)
    is_target = t == 4096 and e == 128

    def router():
        return topk_softmax(logits, k, renormalize=True, validate=False)

    def aligned():
        return align(ids, e, tile_m, validate=False)

    def both():
        return align(router()[1], e, tile_m, validate=False)

    def check_router(out, what):
        np.testing.assert_array_equal(device.to_numpy(out[1]), want_ids, err_msg=what)
        np.testing.assert_allclose(device.to_numpy(out[0]), want_w, rtol=1e-5, atol=1e-6,
                                   err_msg=what)

    def measure(what, fn, check, target=None, graph=True, repeat=n_repeat, warmup=10):
        """graph=False: the call syncs with the host, so it cannot be captured."""
        def go():
            check(fn(), what)                                   # correctness first
            eager = _median_us(fn, repeat, warmup)
            g, note = None, "" if graph else "  (graph: n/a, it syncs with the host)"
            if graph:
                try:
                    g, last = graph_us(fn)
                    check(last, what + " (graph replay)")
                except Exception as e:  # noqa: BLE001 - keep the eager numbers
                    g, note = None, f"  graph ERROR {type(e).__name__}: {str(e)[:100]}"
            table.add(name, what, eager, g, target, note)
        _try(table, name, what, go)

    measure("topk_softmax (router)", router, check_router,
            TARGET_US["topk_softmax"] if is_target else None)
    measure("align (3 cuTile kernels)", aligned, lambda o, w: _align_ok(o, want, w),
            TARGET_US["align"] if is_target else None)
    measure("router + align", both, lambda o, w: _align_ok(o, want, w))
    measure("align: CuPy sort-based", lambda: align_cupy_sort(ids, e, tile_m),
            lambda o, w: _align_ok(o, want, w), graph=False)
    loop_check = lambda o, w: _check_align(w, (o[0], o[1], np.array([o[2]])), want,  # noqa
                                           exact_size=False)
    measure("align: sample-style host loop", lambda: align_host_loop(ids, e, tile_m),
            loop_check, graph=False, repeat=max(5, n_repeat // 20), warmup=2)
    _try(table, name, "align per kernel", lambda: align_breakdown(table, name, ids, e, tile_m,
                                                                  want))


def align_breakdown(table, name, ids, e, tile_m, want):
    """Device time (graph) and host time (eager) of each of align's kernels, from the first 1,
    2, 3 launches of one align call (each prefix starts from the same state: the count kernel
    rewrites the table, so the offsets kernel always sees fresh counts)."""
    outputs, launches = align_launches(ids, e, tile_m, validate=False)
    stream_launch = lambda grid, kernel, args: ct.launch(  # noqa: E731
        device.get_xp("gpu").cuda.get_current_stream(), grid, kernel, args)

    def prefix(n):
        def fn():
            for _, grid, kernel, args in launches[:n]:
                stream_launch(grid, kernel, args)
            return outputs
        return fn

    prev_g, prev_h = 0.0, 0.0
    for n, (kname, grid, _, args) in enumerate(launches, start=1):
        g, last = graph_us(prefix(n))
        h = host_us(prefix(n))
        if n == len(launches):
            _align_ok(last, want, "align kernels replayed one by one")
        arrays = sum(1 for a in args if hasattr(a, "__cuda_array_interface__"))
        table.add(name, f"  align kernel {n}: {kname} (grid {grid[0]})", (None, h - prev_h),
                  g - prev_g, note=f"  [{len(args)} args, {arrays} arrays]")
        prev_g, prev_h = g, h


def run_grouped(table, n_repeat, rng):
    import cupy as cp
    t, e = 4096, 256
    logits_np = rng.standard_normal((t, e)).astype(np.float32)
    bias_np = (rng.standard_normal(e) * 0.1).astype(np.float32)
    logits, bias = cp.asarray(logits_np), cp.asarray(bias_np)
    kw = dict(n_group=8, topk_group=4, routed_scaling_factor=2.5)
    want_w, want_ids = grouped_topk_reference(logits_np, 8, e_score_correction_bias=bias_np, **kw)

    def fn():
        return grouped_topk(logits, 8, e_score_correction_bias=bias, **kw, validate=False)

    def check(out, what):
        same = (device.to_numpy(out[1]) == want_ids).all(axis=1)
        assert same.mean() > 0.99, f"{what}: only {same.mean():.1%} of tokens match"
        np.testing.assert_allclose(device.to_numpy(out[0])[same], want_w[same], rtol=1e-5,
                                   atol=1e-6, err_msg=what)

    def go():
        check(fn(), "grouped_topk")
        eager = _median_us(fn, n_repeat)
        g, last = graph_us(fn)
        check(last, "grouped_topk (graph replay)")
        table.add(f"DeepSeek-V3 T={t}", "grouped_topk (router)", eager, g)
    _try(table, f"DeepSeek-V3 T={t}", "grouped_topk (router)", go)


# ------------------------------------------------------------------------------------------
# Launch overhead: the floor of an eager call
# ------------------------------------------------------------------------------------------
@ct.kernel
def _touch3(a, b, c):
    ct.store(a, (0,), ct.load(b, (0,), shape=(1,)) + ct.load(c, (0,), shape=(1,)))


@ct.kernel
def _touch12(a, b, c, d, e, f, g, h, i, j, k, m):
    ct.store(a, (0,), ct.load(b, (0,), shape=(1,)) + ct.load(m, (0,), shape=(1,)))


@ct.kernel
def _touch3_9(a, b, c, n0: int, n1: int, n2: int, n3: int, n4: int, n5: int, n6: int,
              n7: int, n8: int):
    ct.store(a, (0,), ct.load(b, (0,), shape=(1,)) + n0 + n8)


def launch_overhead(table):
    import cupy as cp
    name = "launch overhead"
    xs = [cp.zeros((64,), cp.int32) for _ in range(12)]
    ws = cp.zeros((1 << 16,), cp.int32)
    stream = cp.cuda.get_current_stream()
    cases = [
        ("ct.launch, 3 arrays", lambda: ct.launch(stream, (1,), _touch3, tuple(xs[:3]))),
        ("ct.launch, 12 arrays", lambda: ct.launch(stream, (1,), _touch12, tuple(xs))),
        ("ct.launch, 3 arrays + 9 ints",
         lambda: ct.launch(stream, (1,), _touch3_9, (*xs[:3], *range(9)))),
        ("ct.launch(get_current_stream(), ...)",
         lambda: ct.launch(cp.cuda.get_current_stream(), (1,), _touch3, tuple(xs[:3]))),
        ("mt.launch, 3 arrays", lambda: device.launch((1,), _touch3, tuple(xs[:3]))),
        ("mt.launch, 12 arrays", lambda: device.launch((1,), _touch12, tuple(xs))),
        ("mt.launch, 3 arrays + 9 ints",
         lambda: device.launch((1,), _touch3_9, (*xs[:3], *range(9)))),
        ("cupy.empty(4096, int32)", lambda: cp.empty((4096,), cp.int32)),
        ("workspace slice ws[a:b]", lambda: ws[256:4352]),
        ("slice + reshape(2D)", lambda: ws[256:4352].reshape(32, 128)),
        ("x.__dlpack__(stream=-1)", lambda: xs[0].__dlpack__(stream=-1)),
    ]
    for what, fn in cases:
        _try(table, name, what, lambda: table.add(name, what, (None, host_us(fn, calls=2000)),
                                                  None))


# ------------------------------------------------------------------------------------------
# Sweep of the tuning constants
# ------------------------------------------------------------------------------------------
SWEEP = {  # routing.ROUTER_TILE_ELEMS and fields of routing.AlignSettings -> values tried
    "ROUTER_TILE_ELEMS": (1024, 2048, 4096, 8192),
    "target_chunks": (64, 128, 256),       # chunks of 512, 256, 128 replicas at T*K=32k
    "pair_elems": (2048, 4096, 8192),
    "count_elems": (4096, 16384),
    "scan_elems": (1024, 4096, 16384),
}


def sweep(table, n_repeat, t=4096, k=8, e=128, tile_m=64):
    """Graph time of the router / alignment for each value of each tuning constant (one at a
    time, the others at their defaults), results checked. Each value is a new kernel
    specialization: its first call compiles."""
    import cupy as cp
    rng = np.random.default_rng(1)
    logits_np = rng.standard_normal((t, e)).astype(np.float32)
    logits = cp.asarray(logits_np)
    want_w, want_ids = topk_softmax_reference(logits_np, k)
    want = align_reference(want_ids, e, tile_m)
    ids = cp.asarray(want_ids)
    print(f"\nsweep at T={t}, K={k}, E={e}, tile_m={tile_m} (defaults marked *)", flush=True)
    for knob, values in SWEEP.items():
        router = knob.startswith("ROUTER")
        default = getattr(routing, knob) if router else getattr(routing.ALIGN_SETTINGS, knob)
        for value in values:
            what = f"{knob} = {value}{' *' if value == default else ''}"

            def go():
                if router:
                    setattr(routing, knob, value)
                    fn = lambda: topk_softmax(logits, k, validate=False)  # noqa: E731
                    check = lambda o: np.testing.assert_array_equal(  # noqa: E731
                        device.to_numpy(o[1]), want_ids)
                else:
                    settings = dataclasses.replace(routing.ALIGN_SETTINGS, **{knob: value})
                    fn = lambda: align(ids, e, tile_m, validate=False,  # noqa: E731
                                       settings=settings)
                    check = lambda o: _align_ok(o, want, what)  # noqa: E731
                check(fn())
                eager = _median_us(fn, max(20, n_repeat // 4))
                g, last = graph_us(fn)
                check(last)
                table.add(f"sweep T={t}", what, eager, g)
            try:
                _try(table, f"sweep T={t}", what, go)
            finally:
                if router:
                    setattr(routing, knob, default)


def run(*, repeat: int = 200, sweep_constants: bool = False) -> "Table":
    """The benchmark (see the module): prints its rows as they come, returns the table."""
    print(device.describe())
    print("Every result is checked against the NumPy references first (graph rows: the "
          "replayed results too). Times in us, medians.\n")
    t0 = time.perf_counter()
    table = Table()
    rng = np.random.default_rng(0)
    for name, t, k, e, tile_m in SHAPES:
        run_shape(table, name, t, k, e, tile_m, repeat, rng)
    run_grouped(table, repeat, rng)
    print()
    launch_overhead(table)
    if sweep_constants:
        sweep(table, repeat)
    print(f"\nbenchmark took {time.perf_counter() - t0:.0f} s")
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200, help="timed eager runs per row")
    parser.add_argument("--sweep", action="store_true",
                        help="also time each tuning constant of moe_tutorial.routing")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")
    args = parser.parse_args(argv)
    if device.backend() != "gpu":
        print(f"bench_routing needs a GPU: {device.gpu_status()[1]}. Nothing to measure on the "
              "CPU emulator (its timings say nothing about the GPU).")
        return 0
    run(repeat=args.repeat, sweep_constants=args.sweep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
