"""Model presets: the MoE layer shapes of real models, and scaled-down twins for the CPU.

A preset fixes the layer (hidden size H, number of experts E, expert width I, top-k K and the
router); the number of tokens T is chosen per run: ``decode_tokens`` (a batch of single-token
steps) or ``prefill_tokens`` (a long prompt). Each real preset has a CPU twin with the same
structure (same E, K and router, so routing and alignment look the same) but small H and I, so
the CPU emulator runs it in seconds.

``make_problem`` draws fresh inputs: hidden states ~ N(0, 1), weights ~ N(0, 1/fan_in) so every
activation stays O(1) in float16, router logits ~ N(0, 1) (float32), and for DeepSeek-V3's
router a small correction bias ~ N(0, 0.01^2).

``BENCH_SHAPES`` are the layers of the benchmark's table (``LayerShape``: a preset and a
token count), ``shape_from_spec("T,H,E,I,K")`` makes one from the command line.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import device


@dataclass(frozen=True)
class Preset:
    name: str
    hidden: int                 # H: model width
    experts: int                # E: number of routed experts
    intermediate: int           # I: expert width (w1 is (E, 2I, H): gate and up)
    top_k: int                  # K: experts per token
    decode_tokens: int          # T for a decode batch
    prefill_tokens: int         # T for a prefill chunk
    renormalize: bool = True    # the chosen weights sum to 1 (times routed_scaling_factor)
    n_group: int | None = None  # DeepSeek-V3 grouped routing (sigmoid + bias) when set
    topk_group: int | None = None
    routed_scaling_factor: float = 1.0
    source: str = ""

    @property
    def grouped(self) -> bool:
        return self.n_group is not None

    def router_kwargs(self) -> dict:
        """The router options of ``moe_forward`` for this model."""
        kw = dict(renormalize=self.renormalize, routed_scaling_factor=self.routed_scaling_factor)
        if self.grouped:
            kw.update(use_grouped_topk=True, n_group=self.n_group, topk_group=self.topk_group)
        return kw

    def tokens(self, phase: str) -> int:
        if phase not in ("decode", "prefill"):
            raise ValueError(f"phase must be 'decode' or 'prefill', got {phase!r}")
        return self.decode_tokens if phase == "decode" else self.prefill_tokens

    def flops(self, num_tokens: int) -> float:
        """Multiply-adds x 2 of both expert GEMMs: T*K replicas x (H*2I + I*H)."""
        return 2.0 * num_tokens * self.top_k * 3 * self.hidden * self.intermediate

    def describe(self) -> str:
        router = (f"grouped top-{self.top_k} ({self.n_group} groups, keep {self.topk_group}, "
                  f"x{self.routed_scaling_factor})" if self.grouped else f"softmax top-{self.top_k}")
        return (f"{self.name}: H={self.hidden}, E={self.experts}, I={self.intermediate}, "
                f"K={self.top_k}, {router}")


PRESETS = {
    "cutile_sample": Preset("cutile_sample", 512, 64, 1024, 8, decode_tokens=48,
                            prefill_tokens=48, source="cuTile samples/MoE.py"),
    "mixtral_8x7b": Preset("mixtral_8x7b", 4096, 8, 14336, 2, decode_tokens=16,
                           prefill_tokens=4096, source="Mixtral-8x7B"),
    "qwen3_30b_a3b": Preset("qwen3_30b_a3b", 2048, 128, 768, 8, decode_tokens=64,
                            prefill_tokens=4096, source="Qwen3-30B-A3B"),
    "deepseek_v3": Preset("deepseek_v3", 7168, 256, 2048, 8, decode_tokens=64,
                          prefill_tokens=2048, n_group=8, topk_group=4,
                          routed_scaling_factor=2.5, source="DeepSeek-V3"),
}

# Same E, K and router as the real model; H and I shrunk (and left non-multiples of the tiles
# on purpose: 448 and 224 exercise the zero-padded edges).
CPU_PRESETS = {
    "cutile_sample": dataclasses.replace(PRESETS["cutile_sample"], hidden=128, intermediate=256,
                                         decode_tokens=4, prefill_tokens=48),
    "mixtral_8x7b": dataclasses.replace(PRESETS["mixtral_8x7b"], hidden=128, intermediate=448,
                                        decode_tokens=4, prefill_tokens=64),
    "qwen3_30b_a3b": dataclasses.replace(PRESETS["qwen3_30b_a3b"], hidden=128, intermediate=48,
                                         decode_tokens=4, prefill_tokens=64),
    "deepseek_v3": dataclasses.replace(PRESETS["deepseek_v3"], hidden=224, intermediate=64,
                                       decode_tokens=4, prefill_tokens=32),
}


# Two more layer shapes: the ones cuTile's own MoE benchmark (test/bench_moe.py) times.
BENCH_MOE_PRESETS = {
    "bench_moe_e16": Preset("bench_moe_e16", 1024, 16, 512, 4, decode_tokens=110,
                            prefill_tokens=110, source="cuTile test/bench_moe.py"),
    "bench_moe_e1408": Preset("bench_moe_e1408", 2048, 1408, 32, 6, decode_tokens=256,
                              prefill_tokens=256, source="cuTile test/bench_moe.py"),
}


@dataclass(frozen=True)
class LayerShape:
    """One layer to benchmark or tune: a preset (H, E, I, K, router) and a token count."""
    name: str
    preset: Preset
    tokens: int

    @property
    def dims(self) -> tuple[int, int, int, int, int]:
        """``(T, H, E, I, K)``, the benchmark's notation."""
        p = self.preset
        return self.tokens, p.hidden, p.experts, p.intermediate, p.top_k


def _shape(name: str, phase: str) -> LayerShape:
    p = PRESETS[name]
    return LayerShape(f"{name} {phase}", p, p.tokens(phase))


# The benchmark's table of layers to beat, in order (T, H, E, I, K).
BENCH_SHAPES = (
    LayerShape("cutile_sample", PRESETS["cutile_sample"], 48),
    LayerShape("bench_moe_e16", BENCH_MOE_PRESETS["bench_moe_e16"], 110),
    LayerShape("bench_moe_e1408", BENCH_MOE_PRESETS["bench_moe_e1408"], 256),
    _shape("qwen3_30b_a3b", "decode"),
    _shape("qwen3_30b_a3b", "prefill"),
    _shape("mixtral_8x7b", "decode"),
    _shape("mixtral_8x7b", "prefill"),
    _shape("deepseek_v3", "prefill"),
)


def shape_from_spec(spec: str) -> LayerShape:
    """``"T,H,E,I,K"`` -> a LayerShape: the preset with these sizes if one exists (its router),
    else a softmax top-K router with renormalized weights."""
    try:
        T, H, E, I, K = (int(v) for v in spec.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"a shape is T,H,E,I,K (five integers), got {spec!r}") from None
    if min(T, H, E, I, K) < 1 or K > E:
        raise ValueError(f"shape {spec!r}: every size must be >= 1 and K <= E")
    for p in (*PRESETS.values(), *BENCH_MOE_PRESETS.values()):
        if (p.hidden, p.experts, p.intermediate, p.top_k) == (H, E, I, K):
            return LayerShape(f"{p.name} T={T}", p, T)
    p = Preset(f"custom_{H}x{E}x{I}x{K}", H, E, I, K, decode_tokens=T, prefill_tokens=T,
               source="--shape")
    return LayerShape(f"T={T} H={H} E={E} I={I} K={K}", p, T)


def get(name: str, *, scaled: bool | None = None) -> Preset:
    """The preset ``name``; ``scaled=None`` picks the CPU twin when the default backend is the
    CPU emulator and the real sizes on a GPU."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if scaled is None:
        scaled = device.backend() == "cpu"
    return CPU_PRESETS[name] if scaled else PRESETS[name]


def _normal(xp, seed: int, shape, scale: float, dtype):
    if xp is np:
        g = np.random.default_rng(seed)
        return (g.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(dtype)
    g = xp.random.RandomState(seed)
    return (g.standard_normal(shape, dtype=xp.float32) * xp.float32(scale)).astype(dtype)


DRAW_ELEMENTS = 1 << 26        # float32 values per random draw of make_problem (256 MB)


def make_problem(preset: Preset, num_tokens: int, *, dtype="float16", xp=None, seed: int = 0):
    """Fresh random inputs of ``moe_forward`` for ``preset`` with ``num_tokens`` tokens.

    Returns a dict with ``hidden_states (T, H)``, ``w1 (E, 2I, H)``, ``w2 (E, H, I)`` in
    ``dtype``, ``router_logits (T, E)`` float32 and, for grouped routers,
    ``e_score_correction_bias (E,)`` float32. Weights are drawn a few experts at a time (at
    most ``DRAW_ELEMENTS`` float32 values per draw), so a DeepSeek-V3-sized float16 layer
    (22 GB) never needs a float32 copy of itself, and 1408 small experts take 3 draws, not
    2816."""
    xp = xp or device.get_xp()
    T, H, E, I = num_tokens, preset.hidden, preset.experts, preset.intermediate
    dtype = np.dtype(dtype)
    w1 = xp.empty((E, 2 * I, H), dtype=dtype)
    w2 = xp.empty((E, H, I), dtype=dtype)
    step = max(1, DRAW_ELEMENTS // (2 * I * H))
    for c, e in enumerate(range(0, E, step)):
        n = min(step, E - e)
        w1[e:e + n] = _normal(xp, seed * 1_000_003 + 2 * c + 1, (n, 2 * I, H), H ** -0.5, dtype)
        w2[e:e + n] = _normal(xp, seed * 1_000_003 + 2 * c + 2, (n, H, I), I ** -0.5, dtype)
    problem = dict(
        hidden_states=_normal(xp, seed * 1_000_003 + 2 * E + 1, (T, H), 1.0, dtype),
        w1=w1, w2=w2,
        router_logits=_normal(xp, seed * 1_000_003 + 2 * E + 2, (T, E), 1.0, np.float32),
    )
    if preset.grouped:
        # small: a trained correction bias *balances* the experts' load; a random one of std
        # 0.1 would leave ~1/6 of DeepSeek-V3's 256 experts without tokens at T=2048 and give
        # one expert ~13x its share
        problem["e_score_correction_bias"] = _normal(xp, seed * 1_000_003 + 2 * E + 3, (E,),
                                                     0.01, np.float32)
    return problem
