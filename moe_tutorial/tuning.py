"""Autotuned tile configs per GPU (notebook 05): the search, the committed tables, the lookup.

Like vLLM's per-device ``fused_moe`` configs, the winners of a tuning run are committed as one
JSON table per GPU model, ``moe_tutorial/configs/<GPU name>.json`` (the name as CUDA reports it,
every run of characters other than letters and digits replaced by ``_``: ``NVIDIA H100 80GB
HBM3`` -> ``NVIDIA_H100_80GB_HBM3.json``). ``moe_forward(config=None)`` looks the layer's shape
up in the table of the GPU it runs on (``lookup``) and falls back to the documented default
rule (``fused_moe.default_layer_config``) when there is no table, no entry for the layer's
``(H, E, I, K)`` or none for a token count within a factor of 4, or the dtype is not the
table's. ``MOE_TUTORIAL_TUNED_CONFIGS=<file>`` uses that table instead; ``=off`` disables the
lookup. A broken table is reported once (a warning) and ignored -- it never breaks the layer.

Table format (``format`` 1)::

    {"format": 1, "gpu": "NVIDIA H100 80GB HBM3", "dtype": "float16", "cuda_tile": "1.7.0",
     "created": "...", "command": "python -m moe_tutorial.bench --tune ...",
     "entries": [{"shape": {"T": 64, "H": 2048, "E": 128, "I": 768, "K": 8},
                  "sorted_rows": true,
                  "gemm1": {TileConfig fields}, "gemm1_swiglu": {...}, "gemm2": {...},
                  "us": {"gemm1_swiglu": ..., "gemm2": ...},
                  "sweep": [{"gemm": "gemm2", "config": {...}, "us": 123.4} or
                            {"gemm": ..., "config": {...}, "error": "..."}, ...]}, ...]}

The search (``search``, driven per layer shape by ``moe_tutorial.autotune``, GPU only) times each expert GEMM alone with
``cuda.tile.tune.exhaustive_search`` (L2 flushed before every run, so the weights come from
DRAM as in a real model) over a short list of candidates per shape class:

* ``tile_m`` 64 and 128 (16 and 64 when experts see ~1 token): one alignment feeds both GEMMs,
  so ``tile_m`` is chosen for the pair -- the fastest SwiGLU-fused GEMM1 + GEMM2. On an H100
  16-row blocks (the default rule's choice for decode then) streamed decode weights at ~1.1 TB/s
  where 128-row blocks reached ~2.7 TB/s (the MMA work wasted on padding rows is free while
  memory is the limit);
* memory-bound GEMMs (fewer than 64 tokens per expert) try tiles that keep many weight bytes
  in flight, the ``latency`` hint and two-block clusters; compute-bound ones try bigger output
  tiles, clusters (``num_ctas=2``) and ``occupancy=1``; the SwiGLU GEMM uses half the
  ``tile_n`` (two accumulators, the same weight rows per block);
* the unfused GEMM1 (width 2I) gets the SwiGLU winner with twice the columns (the same weight
  rows per block, one accumulator of the same size) -- derived, not searched.

Every candidate is a fresh compile (2-6 s with tileiras): ``python -m moe_tutorial.bench --tune``
compiles them in parallel worker processes first (``autotune.warm_shape``; cuTile's on-disk cache then
serves the timing process). The chosen configs are checked against the float64 reference
before they are written.

The search runs the layer's slot-order path (``LayerConfig.sorted_rows``, the default): the
GEMMs load A as rectangular tiles from ``permute_rows``' copy. Entries say so
(``"sorted_rows": true``); an entry without the key is for the gather/scatter layer.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np

from .fused_moe import LayerConfig, TileConfig, rule_tiles
from .routing import next_power_of_2

FORMAT = 1
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
ENV_TABLE = "MOE_TUTORIAL_TUNED_CONFIGS"
MAX_TOKEN_RATIO = 4.0          # use an entry only for token counts within this factor
GEMMS = ("gemm1", "gemm1_swiglu", "gemm2")


# ---------------------------------------------------------------------------------------------
# Tables: names, reading, writing, lookup
# ---------------------------------------------------------------------------------------------

def file_name(gpu_name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"NVIDIA_H100_80GB_HBM3.json"``."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", gpu_name).strip("_")
    if not stem:
        raise ValueError(f"cannot make a file name from the GPU name {gpu_name!r}")
    return stem + ".json"


def gpu_name() -> str | None:
    """The name of the current CUDA device, or None without a usable GPU."""
    from . import device
    if not device.gpu_status()[0]:
        return None
    import cupy as cp
    return _device_name(cp.cuda.Device().id)


@functools.lru_cache(maxsize=None)
def _device_name(device_id: int) -> str:
    import cupy as cp                 # getDeviceProperties is slow: once per device
    name = cp.cuda.runtime.getDeviceProperties(device_id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def config_to_dict(cfg: TileConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict) -> TileConfig:
    """A TileConfig from a table's dict; unknown keys or bad values raise ValueError."""
    if not isinstance(d, dict):
        raise ValueError(f"a tile config must be a JSON object, got {d!r}")
    known = {f.name for f in dataclasses.fields(TileConfig)}
    extra = set(d) - known
    if extra:
        raise ValueError(f"unknown tile config keys {sorted(extra)}")
    return TileConfig(**d)


def validate_table(table) -> list[dict]:
    """Check a loaded table; returns its entries with the configs parsed (``cfg`` key:
    {gemm name: TileConfig}). Raises ValueError naming the first problem."""
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        raise ValueError(f"not a format-{FORMAT} tuned-config table")
    entries = table.get("entries")
    if not isinstance(entries, list):
        raise ValueError("the table has no 'entries' list")
    parsed = []
    for i, e in enumerate(entries):
        try:
            shape = {k: int(e["shape"][k]) for k in ("T", "H", "E", "I", "K")}
            cfg = {g: config_from_dict(e[g]) for g in GEMMS if g in e}
            if "gemm2" not in cfg or len(cfg) < 2:
                raise ValueError("needs gemm2 and gemm1 and/or gemm1_swiglu")
            sorted_rows = e.get("sorted_rows", False)
            for g in ("gemm1", "gemm1_swiglu"):
                if g in cfg:
                    LayerConfig(cfg[g], cfg["gemm2"], sorted_rows)  # raises: tile_m, bool
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"entry {i}: {exc}") from None
        parsed.append({**e, "shape": shape, "cfg": cfg})
    return parsed


@functools.lru_cache(maxsize=16)
def _load(path: str, mtime: float):
    with open(path, encoding="utf-8") as f:
        table = json.load(f)
    return table, validate_table(table)


_warned: set = set()


def table_path(gpu: str | None = None) -> Path | None:
    """The table ``lookup`` reads: ``$MOE_TUTORIAL_TUNED_CONFIGS`` if set, else
    ``configs/<gpu name>.json`` for ``gpu`` (default: the current GPU). For the current GPU
    without a table of its own, the table of a GPU of the same architecture (``"arch"`` in the
    table, e.g. ``sm_90``: the first such table by file name), with a one-line note the first
    time. None when lookups are off, there is no GPU name or no table fits."""
    env = os.environ.get(ENV_TABLE, "").strip()
    if env.lower() in ("off", "none", "0"):
        return None
    if env:
        return Path(env)
    if gpu is not None:
        return CONFIG_DIR / file_name(gpu)
    gpu = gpu_name()
    if gpu is None:
        return None
    own = CONFIG_DIR / file_name(gpu)
    if own.exists():
        return own
    return nearest_table(gpu, current_arch())


def current_arch() -> str | None:
    """``sm_XY`` of the current GPU, None without one."""
    from . import device
    if not device.gpu_status()[0]:
        return None
    import cupy as cp
    return _device_arch(cp.cuda.Device().id)


@functools.lru_cache(maxsize=None)
def _device_arch(device_id: int) -> str:
    import cupy as cp
    return "sm_" + cp.cuda.Device(device_id).compute_capability


def nearest_table(gpu: str, arch: str | None) -> Path | None:
    """The table of another GPU of architecture ``arch`` (first by file name), announced once.
    The choice is made once per process (``moe_forward`` asks on every call)."""
    path = _nearest_table(arch)
    if path is not None and gpu not in _warned:
        _warned.add(gpu)
        print(f"moe_tutorial: no tuned tile table for {gpu}; using the one tuned on "
              f"{load_table(path)[0]['gpu']} (same architecture, {arch}). "
              f"`python -m moe_tutorial.bench --tune` makes one for this GPU.")
    return path


@functools.lru_cache(maxsize=None)
def _nearest_table(arch: str | None) -> Path | None:
    for path in sorted(CONFIG_DIR.glob("*.json")):
        loaded = load_table(path)
        if loaded is not None and arch is not None and loaded[0].get("arch") == arch:
            return path
    return None


def load_table(path) -> tuple[dict, list[dict]] | None:
    """``(table, parsed entries)`` of the table at ``path``, None if there is no file. A file
    that cannot be read or parsed gives one warning and None."""
    if path is None:
        return None
    path = Path(path)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    try:
        return _load(str(path), mtime)
    except (OSError, ValueError) as exc:        # json.JSONDecodeError is a ValueError
        if str(path) not in _warned:
            _warned.add(str(path))
            warnings.warn(f"ignoring the tuned-config table {path}: {exc}; the layer uses the "
                          f"default tile rule", RuntimeWarning, stacklevel=3)
        return None


def lookup(num_tokens: int, hidden: int, num_experts: int, intermediate: int, top_k: int,
           dtype, *, fused_swiglu: bool = False, gpu: str | None = None,
           path=None) -> LayerConfig | None:
    """The tuned LayerConfig for this layer shape on this GPU, or None (then the caller uses
    ``default_layer_config``). Picks, among the entries with the same ``(H, E, I, K)``, the one
    whose token count is nearest (in ratio, at most ``MAX_TOKEN_RATIO`` away); GEMM1 is the
    SwiGLU-fused config when ``fused_swiglu``."""
    loaded = load_table(path if path is not None else table_path(gpu))
    if loaded is None:
        return None
    table, entries = loaded
    if np.dtype(dtype).name != table.get("dtype", "float16"):
        return None
    gemm1 = "gemm1_swiglu" if fused_swiglu else "gemm1"
    best, best_dist = None, math.log(MAX_TOKEN_RATIO) + 1e-9
    for e in entries:
        s = e["shape"]
        if (s["H"], s["E"], s["I"], s["K"]) != (hidden, num_experts, intermediate, top_k):
            continue
        if gemm1 not in e["cfg"]:
            continue
        dist = abs(math.log(max(num_tokens, 1) / max(s["T"], 1)))
        if dist <= best_dist:
            best, best_dist = e, dist
    if best is None:
        return None
    return LayerConfig(best["cfg"][gemm1], best["cfg"]["gemm2"],
                       best.get("sorted_rows", False))


def write_table(path, gpu: str, entries: list[dict], *, command: str = "") -> None:
    """Write a table atomically (a temporary file renamed over ``path``)."""
    import cuda.tile as ct
    table = {"format": FORMAT, "gpu": gpu, "arch": current_arch(), "dtype": "float16",
             "cuda_tile": ct.__version__,
             "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "command": command, "entries": entries}
    validate_table(json.loads(json.dumps(table)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# The search space
# ---------------------------------------------------------------------------------------------

# (tile_n, tile_k, other TileConfig fields). Measured on an H100 (the layer benchmark): blocks of
# 16 token rows ran decode layers at ~1.1 TB/s where the cuTile sample's 128x128x64 tiles reached
# ~2.7 TB/s -- big tiles get the compiler's TMA + warpgroup-MMA pipeline, and wasting MMA work
# on padding rows is free while the weights stream. So tile_m 64/128 is tried for every shape
# but those whose experts see ~1 token (where 64-row blocks would be nearly all padding).
SMALL_M = (        # tile_m 16: about one token per expert
    (64, 128, {}), (128, 128, {}), (64, 256, {}), (128, 64, {}),
    (64, 128, {"latency": 10}), (128, 128, {"occupancy": 2}),
    # wide and shallow (GEMM2 of narrow experts, Kd = I = 32): fewer, bigger blocks
    (256, 64, {"occupancy": 2}), (512, 32, {"occupancy": 2}),
)
MEMORY_BOUND = (   # big blocks, few tokens per expert: stream the weights
    (128, 64, {}), (128, 128, {}), (256, 64, {}), (64, 128, {}),
    (128, 64, {"latency": 10}), (128, 128, {"latency": 10}), (128, 64, {"num_ctas": 2}),
    # small swizzle groups: the blocks running together share one m-block's A rows (in L2)
    # and stream different weight tiles; DeepSeek-V3 prefill's GEMMs ran 3-6% faster with 1-2
    (128, 64, {"group_size_m": 2}), (128, 128, {"group_size_m": 2, "latency": 10}),
    (256, 64, {"group_size_m": 1}),
)
COMPUTE_BOUND = (  # many tokens per expert: big output tiles, clusters
    (128, 64, {}), (256, 64, {}), (128, 128, {}), (64, 64, {}),
    (128, 64, {"num_ctas": 2}), (256, 64, {"num_ctas": 2}), (128, 64, {"occupancy": 1}),
    (256, 64, {"occupancy": 1}),
)
# Tokens per expert m: a GEMM does 2m FLOPs per 2-byte weight element, so it is memory-bound
# below the ridge m ~ peak / bandwidth (H100: ~750 TFLOP/s / ~2.9 TB/s ~ 260) and compute-bound
# well above it; near the ridge both lists are tried.
MEMORY_BOUND_PER_EXPERT = 32    # fewer tokens per expert: MEMORY_BOUND only
COMPUTE_BOUND_PER_EXPERT = 512  # this many or more: COMPUTE_BOUND only; between: both


def tile_m_choices(num_tokens: int, top_k: int, num_experts: int) -> list[int]:
    """``tile_m`` candidates: 64 and 128, or 16 and 64 when experts get at most 2 tokens on
    average (see ``MEMORY_BOUND``)."""
    per_expert = num_tokens * top_k / max(num_experts, 1)
    return [16, 64] if per_expert <= 2 else [64, 128]


def gemm_candidates(tile_m: int, n: int, kd: int, *, per_expert: float = 1.0,
                    swiglu: bool = False, dtype="float16") -> list[TileConfig]:
    """Candidate TileConfigs for one GEMM of output width ``n`` and depth ``kd``: the default
    rule's tiles first, then the class list (``SMALL_M`` for tile_m < 64, else memory- or
    compute-bound by the tokens per expert, or both near the ridge), tiles clamped to the problem (none wider than the
    next power of two of ``n`` / ``kd``), duplicates dropped. The SwiGLU GEMM halves
    ``tile_n``: its two accumulators then hold as much as one of the unfused GEMM, and a block
    reads the same weight rows (tile_n gate + tile_n up)."""
    rule_n, rule_k = rule_tiles(tile_m, dtype)
    if tile_m < 64:
        space = SMALL_M
    else:
        space = (MEMORY_BOUND if per_expert < MEMORY_BOUND_PER_EXPERT else
                 COMPUTE_BOUND if per_expert >= COMPUTE_BOUND_PER_EXPERT else
                 MEMORY_BOUND + COMPUTE_BOUND)
    max_n, max_k = max(16, next_power_of_2(n)), max(16, next_power_of_2(kd))
    out = []
    for tn, tk, extra in ((rule_n, rule_k, {}), *space):
        if swiglu:
            tn = max(16, tn // 2)
        cfg = TileConfig(tile_m, min(tn, max_n), min(tk, max_k), **{"group_size_m": 8, **extra})
        if cfg not in out:
            out.append(cfg)
    return out


def unfused_from_swiglu(cfg: TileConfig, n: int) -> TileConfig:
    """The unfused GEMM1's config (output width ``n`` = 2I) from the SwiGLU winner: twice the
    columns (one accumulator holds what the fused kernel's two do, and a block reads the same
    weight rows), the rest unchanged. Derived, not searched: it saves a compile per candidate."""
    return dataclasses.replace(cfg, tile_n=min(cfg.tile_n * 2, max(16, next_power_of_2(n))))


# ---------------------------------------------------------------------------------------------
# The search (GPU only)
# ---------------------------------------------------------------------------------------------

class GemmProblem:
    """One expert GEMM of a layer, ready to launch with any TileConfig of the given tile_m:
    the arguments ``fused_moe.gemm_launch`` takes, with the alignment for that tile_m."""

    def __init__(self, kind: str, prob: dict, routing_out: tuple, act, tile_m: int,
                 sorted_rows: bool = True):
        from . import routing
        from .fused_moe import permute_rows
        self.kind, self.sorted_rows = kind, sorted_rows
        weights, ids = routing_out
        x, w1, w2 = prob["hidden_states"], prob["w1"], prob["w2"]
        E = w1.shape[0]
        self.sorted_ids, self.expert_ids, _ = routing.align(ids, E, tile_m, validate=False)
        xp = _cupy()
        T, K = ids.shape
        I = w2.shape[2]
        if kind == "gemm2":
            self.a, self.w, self.top_k, self.n = act, w2, 1, w2.shape[1]
            self.weights, self.mul = weights.reshape(-1), True
        else:
            a = permute_rows(x, self.sorted_ids, self.expert_ids, K)[0] if sorted_rows else x
            self.a, self.w, self.top_k, self.weights, self.mul = a, w1, K, None, False
            self.n = I if kind == "gemm1_swiglu" else 2 * I
        rows = self.sorted_ids.shape[0] if sorted_rows else T * K
        self.out = xp.empty((rows, self.n), dtype=x.dtype)

    def launch_parts(self, cfg: TileConfig):
        from .fused_moe import gemm_launch
        return gemm_launch(self.a, self.w, self.out, self.weights, self.sorted_ids,
                           self.expert_ids, top_k=self.top_k, mul_routed_weight=self.mul,
                           swiglu=self.kind == "gemm1_swiglu", config=cfg,
                           sorted_rows=self.sorted_rows)


def _cupy():
    import cupy
    return cupy


def search(problem: GemmProblem, candidates: list[TileConfig]) -> dict:
    """Time every candidate with ``cuda.tile.tune.exhaustive_search``; returns
    ``{"results": [(cfg, us or None, error or None)], "best": cfg or None}``. When the tuner
    itself cannot run (every candidate failed the same way), falls back to
    ``timing.median_ms`` medians, so a tuner problem costs accuracy, not the run."""
    import cuda.tile as ct
    cp = _cupy()
    stream = cp.cuda.get_current_stream()
    results = []
    runnable = []
    for c in candidates:           # configs the wrapper refuses (ValueError) are reported, and
        try:                       # kept away from exhaustive_search, which would stop at them
            problem.launch_parts(c)
            runnable.append(c)
        except ValueError as exc:
            results.append((c, None, f"ValueError: {str(exc).splitlines()[0]}"[:200]))
    candidates = runnable
    if not candidates:
        return {"results": results, "best": None}
    try:
        res = ct.tune.exhaustive_search(
            candidates, stream,
            grid_fn=lambda c: problem.launch_parts(c)[0],
            kernel=lambda c: problem.launch_parts(c)[1],
            args_fn=lambda c: problem.launch_parts(c)[2],
            quiet=True)
        results += [(m.config, float(m.mean_us), None) for m in res.successes]
        results += [(c, None, f"{t.__name__}: {msg.splitlines()[0] if msg else ''}"[:200])
                    for c, t, msg in res.failures]
    except Exception as exc:  # noqa: BLE001 - e.g. "No valid config found": try the fallback
        print(f"    cuda.tile.tune failed ({type(exc).__name__}: {str(exc)[:160]}); timing "
              f"with timing.median_ms instead", flush=True)
        for c in candidates:
            results.append(_time_fallback(problem, c))
    ok = [(c, us) for c, us, err in results if us is not None]
    best = min(ok, key=lambda t: t[1])[0] if ok else None
    return {"results": results, "best": best}


def _time_fallback(problem: GemmProblem, cfg: TileConfig):
    from . import device, timing
    try:
        grid, kernel, args = problem.launch_parts(cfg)
        ms = timing.median_ms(lambda: device.launch(grid, kernel, args), n_repeat=20)
        return cfg, ms * 1e3, None
    except Exception as exc:  # noqa: BLE001
        return cfg, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def shape_problem(shape, *, seed: int = 11):
    """The inputs of ``shape`` (a ``presets.LayerShape``) on the GPU and its routing."""
    from . import presets
    cp = _cupy()
    prob = presets.make_problem(shape.preset, shape.tokens, dtype="float16", xp=cp, seed=seed)
    return prob, route(shape, prob)


def route(shape, prob):
    """``(topk_weights, topk_ids)`` from the layer's own router."""
    from . import routing
    p = shape.preset
    logits = prob["router_logits"]
    if p.grouped:
        return routing.grouped_topk(logits, p.top_k, n_group=p.n_group, topk_group=p.topk_group,
                                    e_score_correction_bias=prob.get("e_score_correction_bias"),
                                    routed_scaling_factor=p.routed_scaling_factor,
                                    renormalize=p.renormalize, validate=False)
    w, ids = routing.topk_softmax(logits, p.top_k, renormalize=p.renormalize, validate=False)
    if p.routed_scaling_factor != 1.0:
        w *= np.float32(p.routed_scaling_factor)
    return w, ids


def gemm2_input(prob, routing_out, tile_m):
    """A valid GEMM2 input for ``GemmProblem("gemm2", ...)``: the SwiGLU activation of this
    problem (first candidate's tiles)."""
    g = GemmProblem("gemm1_swiglu", prob, routing_out, None, tile_m)
    cfg = gemm_candidates(tile_m, g.n, prob["w1"].shape[2], swiglu=True)[0]
    from . import device
    device.launch(*g.launch_parts(cfg))
    return g.out


def sweep_rows(kind, res) -> list[dict]:
    """A search result as the table's ``sweep`` rows (one per candidate: time or error)."""
    rows = []
    for cfg, us, err in res["results"]:
        row = {"gemm": kind, "config": config_to_dict(cfg)}
        row.update({"us": round(us, 2)} if us is not None else {"error": err})
        rows.append(row)
    return rows


def short_name(c: TileConfig) -> str:
    """A compact label, e.g. ``64x128x64 occ2 ctas2 lat10`` (tile_m x tile_n x tile_k, then the
    hints that are set; ``g16`` for a swizzle group other than 8, ``T`` for transpose_b)."""
    s = f"{c.tile_m}x{c.tile_n}x{c.tile_k}"
    if c.group_size_m != 8:
        s += f" g{c.group_size_m}"
    for name, tag in (("occupancy", "occ"), ("num_ctas", "ctas")):
        if getattr(c, name) is not None:
            s += f" {tag}{getattr(c, name)}"
    if c.latency:
        s += f" lat{c.latency}"
    if c.transpose_b:
        s += " T"
    return s
