"""Notebook 03: the fused MoE matmul (gather rows, weighted scatter, swizzle)."""
from __future__ import annotations

import numpy as np

from .. import device
from .core import (HINTS, Verdict, attempt, compare, kernel_problem, looks_like, poisoned, report,
                   run_trials)
from .core import rng as _rng, xp as _xp

HINTS.update({
    'moe_gather_rows': (
        'A slot holds a replica id r = t*K + k, not a token: which row of X belongs to it? And '
        "what should a sentinel slot's row be?",
        "read the block's TILE_M slots, turn replica ids into token rows by integer division by "
        'TOP_K, build the column indices of block ct.bid(1), ct.gather the (TILE_M, TILE_H) tile '
        'from X (out-of-range indices read 0), store it at (ct.bid(0), ct.bid(1)).'),
    'moe_scatter_weighted': (
        'Is the router weight looked up by slot or by replica? And what happens to sentinel '
        'slots?',
        "read the slots and the Y tile of this block, gather each row's weight from topk_weights "
        'by replica id (a sentinel is out of bounds and reads 0), multiply, and ct.scatter the '
        'rows to out at (replica, column); out-of-range indices are dropped.'),
    'moe_swizzle': (
        'Draw the 2-D grid on paper for num_m=4, num_n=3, group_size_m=2 and number the blocks in'
        ' the order the exercise describes: which group is block 7 in, and where inside it?',
        'find the group a block belongs to (each group has group_size_m * num_n blocks), the '
        "group's first m row and its height (the last group may be shorter), then inside the "
        'group m runs fastest: pid_m from the remainder modulo the height, pid_n from the '
        'quotient.'),
})



def _moe_routing(rng, T, K, E, tile_m, skewed=False):
    """Random distinct top-k ids (T, K) and float32 weights, plus their alignment. ``skewed``:
    every token picks experts 0..K-1 (with K=1 all replicas go to one expert, the rest stay
    empty)."""
    from .. import reference
    if skewed:
        ids = np.tile(np.arange(K, dtype=np.int32), (T, 1))
    else:
        ids = np.stack([rng.permutation(E)[:K] for _ in range(T)]).astype(np.int32)
    weights = rng.random((T, K)).astype(np.float32)
    sorted_ids, expert_ids, _ = reference.align(ids, E, tile_m)
    return weights, ids, sorted_ids, expert_ids


def moe_gather_rows(kernel, *, tile_m: int = 16, tile_h: int = 32, trials: int = 5,
                    hint: int = 0) -> Verdict:
    """Exercise (notebook 03): ``kernel(X, sorted_token_ids, out, TOP_K, TILE_M, TILE_H)`` copies
    token rows into expert-sorted order: ``out[s] = X[sorted_token_ids[s] // TOP_K]`` for every
    slot ``s``, and zeros where the slot holds the sentinel ``T*K``. Grid
    ``(len(sorted_token_ids) // TILE_M, cdiv(H, TILE_H))``."""
    problem = kernel_problem(kernel)
    if problem:
        return report("moe_gather_rows", False, problem, level=hint)
    xp, rng = _xp(), _rng()
    # (T, H, E, K, skewed): T=1, widths that are not powers of two, one expert for everyone
    cases = [(6, 2 * tile_h, 4, 2, False), (9, tile_h + 5, 5, 3, False), (1, 7, 3, 1, False),
             (2 * tile_m + 3, tile_h + 3, 5, 1, True)]
    while len(cases) < trials:
        cases.append((int(rng.integers(1, 30)), int(rng.integers(1, 3 * tile_h)),
                      int(rng.integers(2, 9)), 2, False))
    cases = cases[:max(trials, 1)]

    def trial(i):
        T, H, E, K, skewed = cases[i]
        x = rng.standard_normal((T, H)).astype(np.float32)
        _, _, sorted_ids, _ = _moe_routing(rng, T, K, E, tile_m, skewed)
        out = poisoned(xp, (len(sorted_ids), H), np.float32)
        grid = (len(sorted_ids) // tile_m, -(-H // tile_h))
        _, error = attempt(device.launch, grid, kernel,
                            (xp.asarray(x), xp.asarray(sorted_ids), out, K, tile_m, tile_h))
        if error:
            return False, error
        valid = sorted_ids < T * K
        want = np.zeros((len(sorted_ids), H))
        want[valid] = x[sorted_ids[valid] // K]
        ok, message = compare(out, want, rtol=1e-6, atol=1e-6,
                               what=f"out (T={T}, H={H}, E={E}, K={K})")
        if not ok:
            no_div = np.zeros_like(want)
            inside = sorted_ids < T
            no_div[inside] = x[sorted_ids[inside]]
            message += looks_like(out, {"zeros (nothing gathered yet)": np.zeros_like(want),
                                        "X[sorted_token_ids] — the replica index was not divided "
                                        "by TOP_K": no_div})
        return ok, message

    return run_trials("moe_gather_rows", len(cases), trial,
                      what="routings (T=1, one expert for every token, odd widths included)",
                      level=hint)


def moe_scatter_weighted(kernel, *, tile_m: int = 16, tile_n: int = 32, trials: int = 5,
                         hint: int = 0) -> Verdict:
    """Exercise (notebook 03): ``kernel(Y, sorted_token_ids, topk_weights, out, TILE_M,
    TILE_N)`` is the GEMM2 epilogue: ``Y`` holds one result row per slot (expert-sorted order);
    write ``out[r] = Y[s] * topk_weights[r]`` with ``r = sorted_token_ids[s]``, skipping
    sentinel slots (``r == T*K``). ``topk_weights`` is flat (T*K,), float32. Grid
    ``(len(sorted_token_ids) // TILE_M, cdiv(N, TILE_N))``."""
    problem = kernel_problem(kernel)
    if problem:
        return report("moe_scatter_weighted", False, problem, level=hint)
    xp, rng = _xp(), _rng()
    cases = [(5, 2 * tile_n, 4, 2, False), (8, tile_n + 9, 6, 3, False), (1, 3, 2, 2, False),
             (2 * tile_m + 1, tile_n + 1, 4, 1, True)]
    while len(cases) < trials:
        cases.append((int(rng.integers(1, 30)), int(rng.integers(1, 3 * tile_n)),
                      int(rng.integers(2, 9)), 2, False))
    cases = cases[:max(trials, 1)]

    def trial(i):
        T, N, E, K, skewed = cases[i]
        weights, _, sorted_ids, _ = _moe_routing(rng, T, K, E, tile_m, skewed)
        y = rng.standard_normal((len(sorted_ids), N)).astype(np.float32)
        out = poisoned(xp, (T * K, N), np.float32)
        grid = (len(sorted_ids) // tile_m, -(-N // tile_n))
        _, error = attempt(device.launch, grid, kernel,
                            (xp.asarray(y), xp.asarray(sorted_ids),
                             xp.asarray(weights.reshape(-1)), out, tile_m, tile_n))
        if error:
            return False, error
        valid = sorted_ids < T * K
        want = np.zeros((T * K, N))
        want[sorted_ids[valid]] = y[valid] * weights.reshape(-1)[sorted_ids[valid], None]
        ok, message = compare(out, want, rtol=1e-6, atol=1e-6,
                               what=f"out (T={T}, N={N}, E={E}, K={K})")
        if not ok:
            unweighted = np.zeros_like(want)
            unweighted[sorted_ids[valid]] = y[valid]
            slot_w = np.zeros(len(sorted_ids))            # weights[s]: 0 past the end
            n = min(len(sorted_ids), T * K)
            slot_w[:n] = weights.reshape(-1)[:n]
            by_slot = np.zeros_like(want)
            by_slot[sorted_ids[valid]] = y[valid] * slot_w[valid, None]
            message += looks_like(out, {"the rows scattered without the router weight": unweighted,
                                         "weights looked up by slot s instead of by replica r":
                                             by_slot})
        return ok, message

    return run_trials("moe_scatter_weighted", len(cases), trial,
                      what="routings (T=1, one expert for every token, odd widths included)",
                      level=hint)


def moe_swizzle(fn, *, trials: int = 6, hint: int = 0) -> Verdict:
    """Exercise (notebook 03): ``fn(bid, num_m, num_n, group_size_m) -> (pid_m, pid_n)`` (plain
    Python ints): the grouped launch order. Blocks come in groups of ``group_size_m`` m-blocks
    (fewer in the last group); inside a group the m index runs fastest, then n."""
    from ..fused_moe import swizzle_2d
    rng = _rng()
    cases = [(8, 4, 2), (5, 3, 2), (16, 6, 8), (3, 7, 4), (1, 5, 8)]
    while len(cases) < trials:
        cases.append((int(rng.integers(1, 25)), int(rng.integers(1, 12)),
                      int(rng.choice([1, 2, 4, 8]))))
    cases = cases[:max(trials, 1)]

    def trial(i):
        num_m, num_n, group = cases[i]
        got = []
        for bid in range(num_m * num_n):
            pair, error = attempt(fn, bid, num_m, num_n, group)
            if error:
                return False, error
            try:
                got.append((int(pair[0]), int(pair[1])))
            except (TypeError, ValueError, IndexError):
                return False, f"fn({bid}, ...) returned {pair!r}, expected (pid_m, pid_n)"
        want = [swizzle_2d(b, num_m, num_n, group) for b in range(num_m * num_n)]
        if got == want:
            return True, ""
        where = f"num_m={num_m}, num_n={num_n}, group_size_m={group}"
        every = [(m, n) for m in range(num_m) for n in range(num_n)]
        if sorted(got) != every:
            missing = sorted(set(every) - set(got))[:3]
            return False, (f"{where}: not every (m, n) tile is computed exactly once "
                           f"(missing e.g. {missing})")
        if got == every:
            return False, f"{where}: that is plain row-major order (n fastest), not grouped"
        b = next(k for k in range(len(want)) if got[k] != want[k])
        return False, f"{where}: block {b} got {got[b]}, expected {want[b]}"

    return run_trials("moe_swizzle", len(cases), trial, what="grid shapes",
                      level=hint)
