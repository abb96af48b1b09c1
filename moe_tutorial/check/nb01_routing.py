"""Notebook 01: routing (router_softmax, expert_histogram, block_owners)."""
from __future__ import annotations

import numpy as np

from .. import device
from .core import (HINTS, Verdict, attempt, compare, kernel_problem, looks_like, poisoned, pow2,
                   report, run_trials)
from .core import rng as _rng, xp as _xp

HINTS.update({
    'router_softmax': (
        'Two things break a softmax: padding columns that count as real logits, and exp() '
        'overflowing for large logits. Which one does the message point at?',
        'load the (TILE_T, E_PAD) tile padded with -inf (padding_mode=ct.PaddingMode.NEG_INF), '
        "subtract each row's max (ct.max with axis=1, keepdims=True), exponentiate, divide by the"
        ' row sum (ct.sum), store.'),
    'expert_histogram': (
        'The last block reads past the end of flat_ids, and some ids are -1: what must those '
        'lanes add to counts?',
        "gather the block's ids with ct.gather at index ct.bid(0) * TILE + ct.arange(TILE), "
        'padding past the end with -1; then ct.atomic_add(counts, ids, 1): an index of -1 is out '
        'of bounds, so it adds nothing.'),
    'block_owners': (
        'How many TILE_M blocks does an expert with 0 tokens need? With 1 token? With TILE_M + 1?',
        'expert e needs cdiv(counts[e], tile_m) blocks; list e that many times, experts in order '
        '(np.repeat does it).'),
})


# Notebook 01: routing (router_softmax, expert_histogram, block_owners)
# ---------------------------------------------------------------------------------------------


def router_softmax(kernel, *, tile_t: int = 8, trials: int = 5, hint: int = 0) -> Verdict:
    """Exercise: ``kernel(logits, probs, TILE_T, E_PAD)`` writes the row softmax of float32
    ``logits (T, E)`` into ``probs (T, E)``; one block per TILE_T tokens, grid
    ``(cdiv(T, TILE_T),)``, ``E_PAD`` = E rounded up to a power of two (the tile width)."""
    problem = kernel_problem(kernel)
    if problem:
        return report("router_softmax", False, problem, level=hint)
    xp, rng = _xp(), _rng()
    # (T, E, offset): T=1, widths that are not powers of two, and logits near 500 (exp
    # overflows float32 beyond 88.7, so only a softmax that subtracts the row max survives)
    shapes = [(2 * tile_t, 8, 0.0), (tile_t + 3, 6, 0.0), (1, 1, 0.0), (5, 13, 0.0),
              (tile_t + 1, 13, 500.0)]
    while len(shapes) < trials:
        shapes.append((int(rng.integers(1, 4 * tile_t)), int(rng.integers(1, 70)), 0.0))
    shapes = shapes[:max(trials, 1)]

    def trial(i):
        t, e, offset = shapes[i]
        e_pad = pow2(e)
        logits = (rng.standard_normal((t, e)) * 3 + offset).astype(np.float32)
        probs = poisoned(xp, (t, e), np.float32)
        _, error = attempt(device.launch, (-(-t // tile_t),), kernel,
                            (xp.asarray(logits), probs, tile_t, e_pad))
        if error:
            return False, error
        x = logits.astype(np.float64)
        want = np.exp(x - x.max(axis=1, keepdims=True))
        want /= want.sum(axis=1, keepdims=True)
        ok, message = compare(probs, want, rtol=1e-5, atol=1e-6, what=f"probs (T={t}, E={e})")
        if not ok:
            padded = np.concatenate([x, np.zeros((t, e_pad - e))], axis=1)
            zero_pad = np.exp(padded - padded.max(axis=1, keepdims=True))
            zero_pad = (zero_pad / zero_pad.sum(axis=1, keepdims=True))[:, :e]
            wrong = looks_like(probs, {
                "exp(x - max) without dividing by the row sum":
                    np.exp(x - x.max(axis=1, keepdims=True)),
                "a softmax in which the E_PAD - E padding columns count as logits of 0 "
                "(pad with -inf: padding_mode=ct.PaddingMode.NEG_INF)": zero_pad,
                "the logits themselves": x})
            if wrong:
                message += wrong
            elif offset and not np.isfinite(device.to_numpy(probs)).all():
                message += (f" -- these logits are about {offset:g}: exp() of them overflows "
                            f"float32 (beyond 88.7) unless the row max is subtracted first")
            elif e != e_pad:
                message += (" (padding columns loaded without a padding_mode are undetermined -- "
                            "1024 on the CPU emulator -- and spoil the row max and sum)")
        return ok, message

    return run_trials("router_softmax", len(shapes), trial,
                      what="logit matrices (large logits, T=1, odd widths included)",
                      level=hint)


def expert_histogram(kernel, *, tile: int = 64, trials: int = 5, hint: int = 0) -> Verdict:
    """Exercise: ``kernel(flat_ids, counts, TILE)`` adds, for every replica in ``flat_ids``
    (int32, -1 = dropped), one to ``counts[expert]`` with ``ct.atomic_add``; grid
    ``(cdiv(N, TILE),)``; ``counts`` (int32, one per expert) starts at zero."""
    problem = kernel_problem(kernel)
    if problem:
        return report("expert_histogram", False, problem, level=hint)
    xp, rng = _xp(), _rng()
    # (N, E, share of -1 ids, experts used): all replicas on one expert, empty experts, N=1
    cases = [(4 * tile, 8, 0.0, 8), (3 * tile + 5, 16, 0.0, 1), (tile - 1, 5, 0.3, 5),
             (1, 1, 0.0, 1), (2 * tile + 3, 12, 0.1, 3)]
    while len(cases) < trials:
        e = int(rng.integers(1, 40))
        cases.append((int(rng.integers(1, 6 * tile)), e, 0.2, e))
    cases = cases[:max(trials, 1)]

    def trial(i):
        n, e, drop, used = cases[i]
        ids = rng.permutation(e)[:used][rng.integers(0, used, size=n)]
        ids = np.where(rng.random(n) < drop, -1, ids).astype(np.int32)
        counts = xp.zeros(e, dtype=xp.int32)
        _, error = attempt(device.launch, (-(-n // tile),), kernel,
                            (xp.asarray(ids), counts, tile))
        if error:
            return False, error
        want = np.bincount(ids[ids >= 0], minlength=e).astype(np.int32)
        ok, message = compare(counts, want, what=f"counts (N={n}, E={e}"
                               + (", some ids -1)" if drop else ")"))
        if not ok:
            pad = -(-n // tile) * tile - n
            extra0 = want.copy()
            extra0[0] += pad + int((ids < 0).sum())
            message += looks_like(counts, {
                "nothing counted (all zeros)": np.zeros(e),
                "the right counts plus every padding element / -1 id counted as expert 0 "
                "(pad the gather with -1: atomic_add skips out-of-bounds indices)": extra0})
        return ok, message

    return run_trials("expert_histogram", len(cases), trial,
                      what="routings (one expert, empty experts, N=1 included)",
                      level=hint)


def block_owners(fn, *, trials: int = 8, hint: int = 0) -> Verdict:
    """Exercise: ``fn(counts, tile_m)`` (NumPy) returns ``expert_ids``: the owning expert of every
    TILE_M block of the padded, expert-sorted layout, given the tokens per expert ``counts``."""
    rng = _rng()
    cases = [(np.array([5, 3, 9, 4]), 4), (np.array([0, 5, 0, 8]), 4), (np.array([9]), 1),
             (np.array([0, 0, 1]), 16), (np.array([0, 37, 0, 0, 0]), 8)]
    while len(cases) < trials:
        e = int(rng.integers(1, 12))
        counts = rng.integers(0, 40, size=e) * (rng.random(e) < 0.7)
        cases.append((counts, int(2 ** rng.integers(0, 6))))
    cases = cases[:max(trials, 1)]

    def trial(i):
        counts, tile_m = cases[i]
        want = np.repeat(np.arange(len(counts)), -(-counts // tile_m))
        got, error = attempt(fn, counts.copy(), tile_m)
        if error:
            return False, error
        try:
            got = np.asarray(device.to_numpy(got)).astype(np.int64).reshape(-1)
        except (TypeError, ValueError):
            return False, f"block_owners returned {got!r}, expected an integer array"
        if got.shape == want.shape and np.array_equal(got, want):
            return True, ""
        msg = (f"counts={counts.tolist()}, tile_m={tile_m}: got {got.tolist()[:20]}, "
               f"expected {want.tolist()[:20]}")
        floor = np.repeat(np.arange(len(counts)), counts // tile_m)
        at_least_one = np.repeat(np.arange(len(counts)), np.maximum(1, -(-counts // tile_m)))
        if got.size == 0:
            msg += " — no blocks at all"
        elif got.shape == floor.shape and np.array_equal(got, floor):
            msg += " — that rounds down: an expert's last, partial block is missing"
        elif got.shape == at_least_one.shape and np.array_equal(got, at_least_one):
            msg += " — experts with no tokens must get no block at all"
        return False, msg

    return run_trials("block_owners", len(cases), trial, what="count vectors",
                      level=hint)
