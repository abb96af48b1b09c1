"""How every GPU time of the package is measured (benchmarks, tuner fallback, notebooks).

* ``eager(fn)`` / ``median_ms(fn)``: plain Python calls, timed by ``cupyx.profiler.benchmark``
  (CUDA events around each call on the current stream, after warm-up; as many runs as fit in
  ~``target_s``); ``n_inner`` > 1 times batches of back-to-back calls, which hides the host's
  launch cost of small kernels. Medians.
* ``graph_ms(graphs, stream)``: device time of one replay of captured CUDA graphs -- replays
  back to back between two events while the GPU is already busy, so no host time is included.
  ``capture_ms(fn)`` records ``fn`` in a graph first.
* ``host_us(fn)``: host time of a call (``time.perf_counter``), for launch-overhead studies.
* ``measure_ceilings()``: the two ceilings every roofline of the package uses, measured now on
  this GPU: device-to-device ``cudaMemcpyAsync`` bandwidth (bytes read + written, 1 GiB) and a
  cuBLAS float16 matmul (8192^3) -- ``copy_bandwidth_gbs`` and ``matmul_tflops``.

GPU only (CuPy); nothing here means anything on the emulator.
"""
from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

COPY_BYTES = 1 << 30            # the copy ceiling's buffer
MATMUL_N = 8192                 # the matmul ceiling's size


def _cp():
    import cupy
    return cupy


class Timing(NamedTuple):
    """Medians of one call: GPU time (events) and host time, in milliseconds."""
    gpu_ms: float
    host_ms: float


def eager(fn, *, n_repeat: int | None = None, n_warmup: int = 3, n_inner: int = 1,
          target_s: float = 0.2, max_repeat: int = 100) -> Timing:
    """Median GPU and host time of one ``fn()`` (see the module). ``n_repeat=None``: as many
    batches as fit in ~``target_s`` (5 to ``max_repeat``), from one timed trial call."""
    from cupyx.profiler import benchmark
    cp = _cp()

    def batch():
        for _ in range(n_inner):
            fn()

    if n_repeat is None:
        batch()                                   # compile / warm
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        batch()
        cp.cuda.Device().synchronize()
        est = max(time.perf_counter() - t0, 1e-6)
        n_repeat = int(min(max_repeat, max(5, target_s / est)))
        n_warmup = min(n_warmup, n_repeat)
    r = benchmark(batch, n_repeat=n_repeat, n_warmup=n_warmup)
    return Timing(float(np.median(r.gpu_times[0])) * 1e3 / n_inner,
                  float(np.median(r.cpu_times)) * 1e3 / n_inner)


def median_ms(fn, **kwargs) -> float:
    """Median GPU time (ms) of one ``fn()``: ``eager(fn, **kwargs).gpu_ms``."""
    return eager(fn, **kwargs).gpu_ms


def graph_ms(graphs, stream, *, target_s: float = 0.05, batches: int = 5) -> float:
    """Device time (ms) of one replay of ``graphs`` (launched in order on ``stream``): batches
    of back-to-back replays between two CUDA events, each batch enqueued behind a replay that
    keeps the GPU busy; the median over ``batches``."""
    cp = _cp()

    def replay():
        for g in graphs:
            g.launch(stream)

    replay()
    stream.synchronize()
    t0 = time.perf_counter()
    replay()
    stream.synchronize()
    reps = int(min(50, max(1, target_s / max(time.perf_counter() - t0, 1e-6))))
    times = []
    start, end = cp.cuda.Event(), cp.cuda.Event()
    for _ in range(batches):
        replay()                                  # the GPU is busy while the batch is enqueued
        start.record(stream)
        for _ in range(reps):
            replay()
        end.record(stream)
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / reps)
    return float(np.median(times))


def capture_ms(fn, *, reps: int = 20, **kwargs):
    """Device time (ms) of one ``fn()`` replayed from a CUDA graph holding ``reps`` calls;
    returns ``(ms, last result)``. ``fn`` runs once eagerly first (compiles, fills the memory
    pool); the captured calls' results stay alive, and the last one -- written by the replays --
    is returned so the caller can check it. ``kwargs`` go to ``graph_ms``."""
    cp = _cp()
    fn()
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    results = []
    with stream:
        stream.begin_capture()
        try:
            for _ in range(reps):
                results.append(fn())
        except BaseException:
            try:                                  # leave the stream usable
                stream.end_capture()
            except Exception:  # noqa: BLE001 - the capture is already broken
                pass
            raise
        graph = stream.end_capture()
    return graph_ms([graph], stream, **kwargs) / reps, results[-1]


def host_us(fn, *, calls: int = 300, rounds: int = 5) -> float:
    """Host time of one ``fn()`` in microseconds (median over ``rounds`` of ``calls`` calls;
    the GPU is drained between rounds)."""
    cp = _cp()
    fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
        cp.cuda.Device().synchronize()
    return float(np.median(times))


def copy_bandwidth_gbs(nbytes: int = COPY_BYTES) -> float:
    """Device-to-device ``cudaMemcpyAsync`` bandwidth in GB/s, bytes read + written."""
    cp = _cp()
    src = cp.ones(nbytes, dtype=cp.uint8)
    dst = cp.empty_like(src)
    kind = cp.cuda.runtime.memcpyDeviceToDevice

    def copy():
        cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes, kind,
                                    cp.cuda.get_current_stream().ptr)

    ms = median_ms(copy, n_repeat=20, n_warmup=3)
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


def matmul_tflops(n: int = MATMUL_N) -> float:
    """cuBLAS float16 matmul throughput (``n`` x ``n`` x ``n``, through CuPy) in TFLOP/s."""
    cp = _cp()
    a = cp.random.standard_normal((n, n), dtype=cp.float32).astype(cp.float16)
    b = cp.random.standard_normal((n, n), dtype=cp.float32).astype(cp.float16)
    ms = median_ms(lambda: a @ b, n_repeat=20, n_warmup=3)
    del a, b
    return 2.0 * n ** 3 / (ms * 1e-3) / 1e12


def measure_ceilings(xp=None, *, copy_bytes: int = COPY_BYTES,
                     matmul_n: int = MATMUL_N) -> tuple[float, float]:
    """``(copy bandwidth GB/s, float16 matmul TFLOP/s)``, both measured now on this GPU.
    (``xp``, ignored, keeps the old ``bench.measure_ceilings(cp)`` calls working.)"""
    bandwidth = copy_bandwidth_gbs(copy_bytes)
    tflops = matmul_tflops(matmul_n)
    _cp().get_default_memory_pool().free_all_blocks()
    return bandwidth, tflops
