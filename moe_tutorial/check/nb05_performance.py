"""Notebook 05: performance (SwiGLU epilogue, intermediate traffic, slot positions)."""
from __future__ import annotations

import numpy as np

from .. import device
from .core import (HINTS, Verdict, attempt, compare, kernel_problem, looks_like, number_mistake,
                   poisoned, report,
                   run_trials)
from .core import rng as _rng, xp as _xp

HINTS.update({
    'moe_swiglu_gemm': (
        'silu applies to the gate product only, after the k loop; the up product needs its own '
        'accumulator.',
        'keep two float32 accumulators; in each k step load one A tile and the W_gate and W_up '
        'tiles of the same output columns (order=(1, 0) loads them as (TILE_K, TILE_N)) and '
        'ct.mma into each; after the loop combine them as silu(gate) * up and store.'),
    'moe_intermediate_bytes': (
        'Every intermediate byte is written once and read once. List the buffers between GEMM1 '
        'and GEMM2 in each case.',
        'rows = T*K replicas; unfused: GEMM1 writes 2I per row, silu_and_mul reads those 2I and '
        'writes I, GEMM2 reads I; fused: GEMM1 writes I, GEMM2 reads I; times bytes_per_element.'),
    'moe_slot_positions': (
        'positions maps replica -> slot. Which value is the index of the scatter, which the value'
        ' stored? And what must not be stored?',
        "read the block's replica ids, build this block's slot numbers from ct.bid(0) * TILE_M + "
        'ct.arange(TILE_M), and ct.scatter the slots to positions at the replica ids, masked so '
        'the sentinel T*K is not stored.'),
})



def moe_swiglu_gemm(kernel, *, tile_m: int = 16, tile_n: int = 16, tile_k: int = 32,
                    trials: int = 4, hint: int = 0) -> Verdict:
    """Exercise (notebook 05): ``kernel(A, W_gate, W_up, C, TILE_M, TILE_N, TILE_K)`` is a
    dense GEMM with the SwiGLU epilogue: ``C = silu(A @ W_gate.T) * (A @ W_up.T)`` for ``A``
    (M, Kd), ``W_gate``/``W_up`` (N, Kd) (the ``nn.Linear`` layout), ``C`` (M, N), float32
    accumulation; grid ``(cdiv(M, TILE_M), cdiv(N, TILE_N))``; any M, N and Kd."""
    problem = kernel_problem(kernel)
    if problem:
        return report("moe_swiglu_gemm", False, problem, level=hint)
    xp, rng = _xp(), _rng()
    cases = [(2 * tile_m, 2 * tile_n, 2 * tile_k), (tile_m + 5, tile_n + 3, tile_k + 7),
             (3, 5, 9)]
    while len(cases) < trials:
        cases.append((int(rng.integers(1, 3 * tile_m)), int(rng.integers(1, 3 * tile_n)),
                      int(rng.integers(1, 3 * tile_k))))
    cases = cases[:max(trials, 1)]

    def trial(i):
        M, N, Kd = cases[i]
        a = rng.standard_normal((M, Kd)).astype(np.float32)
        wg = (rng.standard_normal((N, Kd)) / np.sqrt(Kd)).astype(np.float32)
        wu = (rng.standard_normal((N, Kd)) / np.sqrt(Kd)).astype(np.float32)
        out = poisoned(xp, (M, N), np.float32)
        grid = (-(-M // tile_m), -(-N // tile_n))
        _, error = attempt(device.launch, grid, kernel,
                            (xp.asarray(a), xp.asarray(wg), xp.asarray(wu), out, tile_m, tile_n,
                             tile_k))
        if error:
            return False, error
        g = a.astype(np.float64) @ wg.T.astype(np.float64)
        u = a.astype(np.float64) @ wu.T.astype(np.float64)
        silu = lambda v: v / (1.0 + np.exp(-v))  # noqa: E731
        want = silu(g) * u
        ok, message = compare(out, want, rtol=1e-4, atol=1e-5,
                               what=f"C (M={M}, N={N}, Kd={Kd})")
        if not ok:
            message += looks_like(out, {
                "silu(gate) alone (the up product is missing)": silu(g),
                "the gate product alone (no up product, no silu)": g,
                "gate * up without the silu": g * u,
                "silu(up) * gate (gate and up swapped)": silu(u) * g,
                "silu(gate + up)": silu(g + u)}, rtol=1e-4, atol=1e-5)
        return ok, message

    return run_trials("moe_swiglu_gemm", len(cases), trial, what="matrix shapes",
                      level=hint)


def moe_intermediate_bytes(fn, *, trials: int = 5, hint: int = 0) -> Verdict:
    """Exercise (notebook 05): ``fn(num_tokens, top_k, intermediate, fused_swiglu,
    bytes_per_element)`` returns the bytes of the GEMM1 -> GEMM2 intermediate that travel
    through memory: unfused, GEMM1 writes (T*K, 2I), ``silu_and_mul`` reads it and writes
    (T*K, I), GEMM2 reads that; fused, GEMM1 writes (T*K, I) and GEMM2 reads it."""
    from ._costs import intermediate_bytes
    rng = _rng()
    cases = [(64, 8, 768, False, 2), (64, 8, 768, True, 2), (4096, 2, 14336, False, 2),
             (1, 1, 1, True, 4)]
    while len(cases) < trials:
        cases.append((int(rng.integers(1, 5000)), int(rng.integers(1, 9)),
                      int(rng.integers(1, 20000)), bool(rng.integers(0, 2)),
                      int(rng.choice([2, 4]))))
    cases = cases[:max(trials, 1)]

    def trial(i):
        T, K, I, fused, b = cases[i]
        got, error = attempt(fn, T, K, I, fused, b)
        if error:
            return False, error
        want = intermediate_bytes(T, K, I, fused_swiglu=fused, bytes_per_element=b)
        try:
            got = int(got)
        except (TypeError, ValueError):
            return False, f"returned {got!r}, expected a number of bytes"
        if got == want:
            return True, ""
        rows = T * K
        where = f"T={T}, K={K}, I={I}, fused_swiglu={fused}, {b} bytes per element"
        known = {"only what GEMM1 writes": rows * (I if fused else 2 * I) * b,
                 "only the writes (or only the reads): each byte is written once and read "
                 "once": want // 2,
                 "elements instead of bytes": want // b,
                 "T*I rows instead of T*K (the replicas)": want // K}
        if not fused:
            known["GEMM1's write and GEMM2's read, without silu_and_mul's"] = \
                (rows * 2 * I + rows * I) * b
        why = number_mistake(got, want, known)
        return False, f"{where}: got {got}, expected {want}" + (f" — that is {why}" if why
                                                                  else "")

    return run_trials("moe_intermediate_bytes", len(cases), trial, what="layer shapes",
                      level=hint)



def moe_slot_positions(kernel, *, tile_m: int = 8, trials: int = 5, hint: int = 0) -> Verdict:
    """Exercise (notebook 05): ``kernel(sorted_token_ids, positions, TILE_M)`` inverts the
    alignment: for every slot ``p`` that holds a replica ``r = sorted_token_ids[p]`` (not the
    sentinel ``T*K``), ``positions[r] = p``. ``positions`` is (T*K,) int32; grid
    ``(len(sorted_token_ids) // TILE_M,)``, one block per TILE_M slots. Replicas dropped by the
    routing (id -1) appear in no slot; their entries are not checked."""
    problem = kernel_problem(kernel)
    if problem:
        return report("moe_slot_positions", False, problem, level=hint)
    from .. import reference
    xp, rng = _xp(), _rng()
    cases = [(6, 2, 4, 0.0), (9, 3, 5, 0.2), (1, 1, 3, 0.0), (2 * tile_m + 3, 1, 4, -1)]
    while len(cases) < trials:
        cases.append((int(rng.integers(1, 40)), int(rng.integers(1, 4)),
                      int(rng.integers(4, 12)), 0.1))
    cases = cases[:max(trials, 1)]

    def trial(i):
        T, K, E, drop = cases[i]
        ids = np.stack([rng.permutation(E)[:K] for _ in range(T)]).astype(np.int32)
        if drop < 0:                                          # every token to expert 0
            ids[:] = 0
        ids[rng.random((T, K)) < drop] = -1                  # a few replicas routed nowhere
        sorted_ids, _, _ = reference.align(ids, E, tile_m)
        R = T * K
        positions = poisoned(xp, (R,), np.int32)
        grid = (len(sorted_ids) // tile_m,)
        _, error = attempt(device.launch, grid, kernel,
                            (xp.asarray(sorted_ids), positions, tile_m))
        if error:
            return False, error
        slots = np.flatnonzero(sorted_ids < R)
        placed = sorted_ids[slots]                            # replica of each used slot
        got = device.to_numpy(positions)
        want = got.copy()
        want[placed] = slots                                  # only placed replicas are checked
        ok, message = compare(got, want, what=f"positions (T={T}, K={K}, E={E}, "
                                               f"TILE_M={tile_m})")
        if not ok:
            known = {"the replica ids themselves (positions[r] = r): store the slot p, not "
                     "the replica": placed,
                     "the slot inside its block only (p % TILE_M): add ct.bid(0) * TILE_M":
                     slots % tile_m,
                     "the block index (p // TILE_M) instead of the slot": slots // tile_m}
            why = next((n for n, v in known.items() if np.array_equal(got[placed], v)), None)
            if why:
                message += f"; the placed entries hold {why}"
        return ok, message

    return run_trials("moe_slot_positions", len(cases), trial, what="random routings",
                      level=hint)
