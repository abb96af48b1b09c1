"""Notebook 04: the layer (from its pieces, expert-parallel maps, the roofline floor)."""
from __future__ import annotations

import numpy as np

from .. import device
from .core import HINTS, Verdict, attempt, compare, looks_like, number_mistake, run_trials
from .core import rng as _rng, xp as _xp

HINTS.update({
    'moe_layer': (
        'Follow the plan notebook 04 prints step by step: which steps use top_k, and which one '
        'multiplies by the router weight?',
        'route with mt.routing.topk_softmax (renormalize=True), align with mt.routing.align, '
        'GEMM1 with top_k=top_k, mt.silu_and_mul, GEMM2 with top_k=1 and the router weights '
        "(mul_routed_weight=True), then mt.moe_sum over each token's replicas."),
    'moe_expert_map': (
        'Every expert on exactly one rank, local ids 0..n-1 per rank, and rank sizes that differ '
        'by at most one: which of the three does the message say is broken?',
        'give rank r a contiguous block of experts [r*E//R, (r+1)*E//R); the map is -1 everywhere'
        ' else and 0, 1, 2, ... inside the block, as int32.'),
    'moe_roofline_floor': (
        'Check the units: FLOPs against TFLOP/s, bytes against GB/s, and the answer in '
        'milliseconds. Which of the two times is larger?',
        "FLOPs = 2*T*K*3*H*I (a multiply-add is two); bytes = (the used experts' weights, 3*H*I "
        'each, + input and output activations, 2*T*H) * bytes per element; the floor is the '
        'larger of the two times, in ms.'),
})


def _layer_problem(rng, T, H, E, I):
    x = rng.standard_normal((T, H)).astype(np.float32)
    w1 = (rng.standard_normal((E, 2 * I, H)) / np.sqrt(H)).astype(np.float32)
    w2 = (rng.standard_normal((E, H, I)) / np.sqrt(I)).astype(np.float32)
    logits = rng.standard_normal((T, E)).astype(np.float32)
    return x, w1, w2, logits


def moe_layer(fn, *, trials: int = 4, hint: int = 0) -> Verdict:
    """Exercise (notebook 04): ``fn(x, w1, w2, router_logits, top_k)`` returns the MoE layer
    output (T, H) built from the package's pieces: softmax top-k routing with renormalized
    weights, align, GEMM1, silu_and_mul, weighted GEMM2, sum over the top-k."""
    from .. import reference
    xp, rng = _xp(), _rng()
    # (T, H, E, I, K, favourite): T=1, widths that are not powers of two, and large logits that
    # send every token to the same expert (the others stay empty)
    cases = [(12, 32, 6, 24, 2, None), (5, 40, 8, 16, 3, None), (1, 16, 4, 8, 1, None),
             (9, 24, 5, 20, 2, 3)][:max(trials, 1)]

    def trial(i):
        T, H, E, I, K, favourite = cases[i]
        x, w1, w2, logits = _layer_problem(rng, T, H, E, I)
        if favourite is not None:
            logits[:, favourite] += 40.0
        got, error = attempt(fn, *(xp.asarray(a) for a in (x, w1, w2, logits)), K)
        if error:
            return False, error
        want = reference.moe_forward(x, w1, w2, logits, K, renormalize=True)
        ok, message = compare(got, want, rtol=1e-4, atol=1e-4,
                               what=f"output (T={T}, H={H}, E={E}, I={I}, K={K})")
        if not ok:
            w, ids = reference.topk_softmax(logits, K, renormalize=True)
            w_raw, _ = reference.topk_softmax(logits, K, renormalize=False)
            message += looks_like(got, {
                "zeros (nothing computed yet)": np.zeros_like(want),
                "the layer without renormalizing the top-k weights":
                    reference.moe_forward(x, w1, w2, None, K, topk_weights=w_raw,
                                          topk_ids=ids),
                "the layer with every router weight = 1 (mul_routed_weight missing?)":
                    reference.moe_forward(x, w1, w2, None, K, topk_weights=np.ones_like(w),
                                          topk_ids=ids)}, rtol=1e-4, atol=1e-4)
        return ok, message

    return run_trials("moe_layer", len(cases), trial,
                      what="layers (T=1, one expert for every token included)",
                      level=hint)


def moe_expert_map(fn, *, trials: int = 4, hint: int = 0) -> Verdict:
    """Exercise (notebook 04): ``fn(num_experts, num_ranks, rank)`` returns the int32
    ``expert_map`` of one expert-parallel rank: global id -> local id, -1 for experts held by
    other ranks. Every expert lives on exactly one rank, each rank's local ids are
    0..n_local-1, and ranks hold as many experts as possible (sizes differ by at most one).
    The checker then runs the layer on every rank and checks the partial outputs add up."""
    from .. import layer, reference
    xp, rng = _xp(), _rng()
    cases = [(8, 2), (12, 3), (5, 2), (7, 7)][:max(trials, 1)]

    def trial(i):
        E, R = cases[i]
        maps = []
        for r in range(R):
            m, error = attempt(fn, E, R, r)
            if error:
                return False, error
            try:
                m = np.asarray(device.to_numpy(m))
            except Exception:  # noqa: BLE001
                return False, f"fn({E}, {R}, {r}) returned {m!r}, expected an int32 array"
            if m.shape != (E,) or m.dtype.kind not in "iu":
                return False, (f"fn({E}, {R}, {r}) returned shape {m.shape} dtype {m.dtype}, "
                               f"expected ({E},) int32")
            maps.append(m.astype(np.int64))
        owners = np.stack(maps) >= 0
        count = owners.sum(axis=0)
        if (count != 1).any():
            e = int(np.argmax(count != 1))
            return False, (f"E={E}, ranks={R}: expert {e} is held by {int(count[e])} ranks "
                           f"(each expert must be on exactly one)")
        for r, m in enumerate(maps):
            local = np.sort(m[m >= 0])
            if not np.array_equal(local, np.arange(len(local))):
                return False, (f"E={E}, ranks={R}: rank {r}'s local ids are {local.tolist()}, "
                               f"expected 0..{len(local) - 1}")
        sizes = owners.sum(axis=1)
        if sizes.max() - sizes.min() > 1:
            return False, f"E={E}, ranks={R}: unbalanced ranks, sizes {sizes.tolist()}"
        T, H, I, K = 9, 24, 16, min(2, E)
        x, w1, w2, logits = _layer_problem(rng, T, H, E, I)
        total = np.zeros((T, H))
        for m in maps:
            mine = np.argsort(np.where(m >= 0, m, E + 1))[:int((m >= 0).sum())]
            total += device.to_numpy(layer.moe_forward(
                xp.asarray(x), xp.asarray(w1[mine]), xp.asarray(w2[mine]), xp.asarray(logits),
                K, expert_map=xp.asarray(m.astype(np.int32))))
        return compare(total, reference.moe_forward(x, w1, w2, logits, K), rtol=1e-4,
                        atol=1e-4, what=f"sum of the {R} ranks' outputs (E={E})")

    return run_trials("moe_expert_map", len(cases), trial, what="(experts, ranks) splits",
                      level=hint)


def moe_roofline_floor(fn, *, trials: int = 5, hint: int = 0) -> Verdict:
    """Exercise (notebook 04): ``fn(num_tokens, hidden, intermediate, top_k, experts_used,
    bytes_per_element, peak_tflops, bandwidth_gbs)`` returns the layer's roofline floor in
    milliseconds: max(FLOPs / peak, bytes / bandwidth), FLOPs = 2*T*K*3*H*I, bytes = (the used
    experts' weights, 3*H*I each, + the input and output activations, 2*T*H) * bytes/elt."""
    from ._costs import layer_cost, roofline_floor_ms
    rng = _rng()
    cases = [(64, 2048, 768, 8, 128, 2, 989.0, 3350.0), (4096, 4096, 14336, 2, 8, 2, 989.0,
                                                        3350.0),
             (1, 512, 1024, 8, 8, 2, 100.0, 1000.0)]
    while len(cases) < trials:
        cases.append((int(rng.integers(1, 5000)), int(rng.integers(64, 8192)),
                      int(rng.integers(64, 16384)), int(rng.integers(1, 9)),
                      int(rng.integers(1, 257)), int(rng.choice([2, 4])),
                      float(rng.uniform(50, 2000)), float(rng.uniform(500, 8000))))
    cases = cases[:max(trials, 1)]

    def trial(i):
        T, H, I, K, used, b, peak, bw = cases[i]
        got, error = attempt(fn, T, H, I, K, used, b, peak, bw)
        if error:
            return False, error
        flops, nbytes = layer_cost(T, H, I, K, used, b)
        want = roofline_floor_ms(flops, nbytes, peak, bw)
        try:
            got = float(got)
        except (TypeError, ValueError):
            return False, f"returned {got!r}, expected a number of milliseconds"
        if abs(got - want) <= 1e-6 * want:
            return True, ""
        where = f"T={T}, H={H}, I={I}, K={K}, used={used}"
        compute, memory = flops / peak / 1e9, nbytes / bw / 1e6
        hints = {"the compute time alone": compute, "the memory time alone": memory,
                 "a value in seconds instead of milliseconds": want / 1e3,
                 "FLOPs without the factor 2 of a multiply-add":
                     max(compute / 2, memory),
                 "weights of ALL routed replicas (T*K) instead of the used experts":
                     max(compute, (T * K * 3 * H * I + 2 * T * H) * b / bw / 1e6)}
        why = number_mistake(got, want, hints)
        msg = f"{where}: got {got:.6g} ms, expected {want:.6g} ms"
        return False, msg + (f" — that is {why}" if why else "")

    return run_trials("moe_roofline_floor", len(cases), trial, what="layer shapes",
                      level=hint)


# ---------------------------------------------------------------------------------------------
