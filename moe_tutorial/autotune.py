"""The tuning run behind ``python -m moe_tutorial.bench --tune`` (GPU only): tune each layer
shape's two expert GEMMs with ``moe_tutorial.tuning``'s search, check the winners end to end
through the layer against the float64 reference, and write the table.

``moe_tutorial.tuning`` holds what the layer needs at run time (the tables, ``lookup``) and the
search itself; this module is the driver on top of both, so that ``tuning`` never imports the
layer (the layer imports ``tuning``).
"""
from __future__ import annotations

import sys
import time

from . import device, layer, reference
from .fused_moe import LayerConfig
from .tuning import (FORMAT, GEMMS, GemmProblem, config_from_dict, config_to_dict,
                     gemm2_input, gemm_candidates, gpu_name, search, shape_problem, short_name,
                     sweep_rows, tile_m_choices, unfused_from_swiglu, validate_table,
                     write_table)


def _cupy():
    import cupy
    return cupy


def _per_expert(shape) -> float:
    T, H, E, I, K = shape.dims
    return T * K / E


def warm_shape(shape, part: int = 0, parts: int = 1) -> int:
    """Compile (launch once) every candidate ``tune_shape`` will time -- or, with ``parts`` >
    1, every ``parts``-th one starting at ``part`` --, errors ignored: run in parallel worker
    processes so the timing process finds them in cuTile's disk cache. Returns the number of
    candidates that launched."""
    prob, r = shape_problem(shape)
    H, I = prob["w1"].shape[2], prob["w2"].shape[2]
    launched, index = 0, 0
    for tile_m in tile_m_choices(shape.tokens, shape.preset.top_k, shape.preset.experts):
        act = gemm2_input(prob, r, tile_m)
        for kind, n, kd in (("gemm1_swiglu", I, H), ("gemm2", H, I)):
            g = GemmProblem(kind, prob, r, act, tile_m)
            for cfg in gemm_candidates(tile_m, n, kd, per_expert=_per_expert(shape),
                                       swiglu=kind == "gemm1_swiglu"):
                index += 1
                if (index - 1) % parts != part:
                    continue
                try:
                    device.launch(*g.launch_parts(cfg))
                    launched += 1
                except Exception:  # noqa: BLE001 - the timing run reports failures
                    pass
    _cupy().cuda.get_current_stream().synchronize()
    return launched


def tune_shape(shape, *, deadline: float | None = None, log=print) -> dict:
    """Tune one layer shape on this GPU; returns a table entry (see the module docstring).
    The chosen configs are checked against the float64 reference (on up to 64 tokens) for both
    the fused and the unfused layer; a wrong result raises RuntimeError. Past ``deadline``
    (``time.time()`` seconds) no further ``tile_m`` is tried."""
    cp = _cupy()
    prob, r = shape_problem(shape)
    p = shape.preset
    H, I = prob["w1"].shape[2], prob["w2"].shape[2]
    sweep, pairs = [], []
    for tile_m in tile_m_choices(shape.tokens, p.top_k, p.experts):
        if pairs and deadline is not None and time.time() > deadline:
            log(f"    time budget: tile_m={tile_m} not tried")
            break
        act = gemm2_input(prob, r, tile_m)
        found = {}
        for kind, n, kd in (("gemm1_swiglu", I, H), ("gemm2", H, I)):
            g = GemmProblem(kind, prob, r, act, tile_m)
            res = search(g, gemm_candidates(tile_m, n, kd, per_expert=_per_expert(shape),
                                            swiglu=kind == "gemm1_swiglu"))
            sweep += sweep_rows(kind, res)
            found[kind] = res
            log(_summary(kind, tile_m, res))
        if found["gemm1_swiglu"]["best"] and found["gemm2"]["best"]:
            total = _us(found["gemm1_swiglu"]) + _us(found["gemm2"])
            pairs.append((total, tile_m, found))
    if not pairs:
        raise RuntimeError(f"{shape.name}: no candidate ran for one of the GEMMs")
    _, tile_m, found = min(pairs, key=lambda t: t[0])
    best1 = found["gemm1_swiglu"]["best"]
    entry = {"shape": {"T": shape.tokens, "H": H, "E": p.experts, "I": I, "K": p.top_k},
             "sorted_rows": True,
             "gemm1_swiglu": config_to_dict(best1),
             "gemm2": config_to_dict(found["gemm2"]["best"]),
             "gemm1": config_to_dict(unfused_from_swiglu(best1, 2 * I)),
             "us": {"gemm1_swiglu": _us(found["gemm1_swiglu"]), "gemm2": _us(found["gemm2"])},
             "sweep": sweep}
    # check the winners end to end
    n = min(shape.tokens, 64)
    args = [prob[k] for k in ("hidden_states", "w1", "w2", "router_logits")]
    kw = dict(e_score_correction_bias=prob.get("e_score_correction_bias"), **p.router_kwargs())
    want = reference.moe_forward(args[0][:n], args[1], args[2], args[3][:n], p.top_k, **kw)
    parsed = validate_table({"format": FORMAT, "entries": [entry]})[0]["cfg"]
    for fused in (True, False):
        g1_name = "gemm1_swiglu" if fused else "gemm1"
        if g1_name not in parsed:
            continue
        cfg = LayerConfig(parsed[g1_name], parsed["gemm2"], True)
        got = layer.moe_forward(*args, p.top_k, config=cfg, fused_swiglu=fused, **kw)
        err = reference.relative_error(got[:n], want)
        if not err <= 3e-3:
            raise RuntimeError(f"{shape.name}: tuned configs {cfg} give relative error {err:.2e}")
    del prob, args, want
    cp.get_default_memory_pool().free_all_blocks()
    return entry


def _us(res) -> float:
    return min(us for c, us, e in res["results"] if us is not None and c == res["best"])


def _summary(kind, tile_m, res) -> str:
    ok = sorted(((us, c) for c, us, e in res["results"] if us is not None), key=lambda t: t[0])
    bad = [e for c, us, e in res["results"] if us is None]
    top = ", ".join(f"{short_name(c)} {us:.1f}us" for us, c in ok[:3])
    return (f"    {kind:13s} tile_m={tile_m:<3d} {len(ok)} ran, {len(bad)} failed; best: {top}"
            + (f"; first failure: {bad[0]}" if bad else ""))


def run(shapes, out_path, *, budget_s: float = 420.0, log=print) -> list[dict]:
    """Tune ``shapes`` in order, rewriting ``out_path`` after each one (a crash or the time
    budget keeps what is done). Shapes not started before ``budget_s`` are skipped and
    listed. Returns the entries."""
    start = time.time()
    gpu = gpu_name() or "unknown GPU"
    entries, skipped = [], []
    for shape in shapes:
        if time.time() - start > budget_s:
            skipped.append(shape.name)
            continue
        log(f"  tuning {shape.name} (T={shape.tokens}, H={shape.preset.hidden}, "
            f"E={shape.preset.experts}, I={shape.preset.intermediate}, K={shape.preset.top_k})")
        try:
            entries.append(tune_shape(shape, deadline=start + budget_s, log=log))
            write_table(out_path, gpu, entries, command=" ".join(sys.argv))
            chosen = ", ".join(f"{g} {short_name(config_from_dict(entries[-1][g]))}"
                               for g in GEMMS if g in entries[-1])
            log(f"    -> {shape.name}: {chosen} ({time.time() - start:.0f} s)")
        except Exception as exc:  # noqa: BLE001 - report and go on with the next shape
            log(f"    ERROR tuning {shape.name}: {type(exc).__name__}: {str(exc)[:300]}")
            try:
                _cupy().get_default_memory_pool().free_all_blocks()
            except Exception:  # noqa: BLE001
                pass
    if skipped:
        log(f"  time budget ({budget_s:.0f} s) reached: not tuned: {', '.join(skipped)}")
    return entries
