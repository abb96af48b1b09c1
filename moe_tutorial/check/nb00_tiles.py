"""Notebook 00: tiles (num_tiles, axpy, add_bias)."""
from __future__ import annotations

import numpy as np

from .. import device
from .core import (HINTS, Verdict, attempt, compare, kernel_problem, looks_like, poisoned, report,
                   run_trials)
from .core import rng as _rng, xp as _xp

HINTS.update({
    'num_tiles': (
        'What happens to the last few elements when a size is not a multiple of the tile? They '
        'need a block too.',
        'per axis, round the division UP: ceil(size / tile), which integers compute as (size + '
        'tile - 1) // tile (ct.cdiv does it).'),
    'axpy': (
        'Which tile does block ct.bid(0) own, and is the same index used for x, y and out?',
        'ct.load x and y at index (ct.bid(0),) with shape (TILE,), combine them as alpha * x + y,'
        ' ct.store the tile into out at the same index.'),
    'add_bias': (
        'Which column tile of the bias belongs to block (i, j)? And what does adding a 1-D tile '
        'to a 2-D tile do?',
        'load x at (bid(0), bid(1)) with shape (TILE_M, TILE_N) and the bias at (bid(1),) with '
        'shape (TILE_N,); adding them broadcasts the bias over the rows; store at (bid(0), '
        'bid(1)).'),
})


# Notebook 00: tiles (num_tiles, axpy, add_bias)
# ---------------------------------------------------------------------------------------------

def num_tiles(fn, *, trials: int = 8, hint: int = 0) -> Verdict:
    """Exercise: ``fn(shape, tile_shape)`` returns the grid, the number of tiles along each axis
    (a tuple), for any shape and tile shape: ``cdiv(shape[d], tile_shape[d])`` per axis."""
    rng = _rng()
    cases = [((1000,), (256,)), ((1024,), (256,)), ((1,), (128,)), ((64, 100), (32, 32))]
    while len(cases) < trials:
        ndim = int(rng.integers(1, 4))
        shape = tuple(int(s) for s in rng.integers(1, 5000, size=ndim))
        tile_shape = tuple(int(2 ** t) for t in rng.integers(0, 9, size=ndim))
        cases.append((shape, tile_shape))

    def trial(i):
        shape, tile_shape = cases[i]
        want = tuple(-(-s // t) for s, t in zip(shape, tile_shape))
        got, error = attempt(fn, shape, tile_shape)
        if error:
            return False, error
        try:
            got_t = tuple(int(g) for g in got)
        except (TypeError, ValueError):
            return False, f"num_tiles{shape, tile_shape} returned {got!r}, expected a tuple"
        if got_t != want:
            floor = tuple(s // t for s, t in zip(shape, tile_shape))
            why = (" — that is floor division: the last, partial tile is missing"
                   if got_t == floor and floor != want else "")
            return False, f"num_tiles{shape, tile_shape} returned {got_t}, expected {want}{why}"
        return True, ""

    return run_trials("num_tiles", len(cases), trial, what="shapes",
                      level=hint)


def axpy(kernel, *, tile: int = 256, trials: int = 5, hint: int = 0) -> Verdict:
    """Exercise: ``kernel(alpha, x, y, out, TILE)`` writes ``out = alpha * x + y`` (float32 1-D
    arrays, ``alpha`` a Python float), one TILE-element tile per block, grid
    ``(cdiv(n, TILE),)``. Sizes include ones that are not multiples of TILE."""
    problem = kernel_problem(kernel)
    if problem:
        return report("axpy", False, problem, level=hint)
    xp, rng = _xp(), _rng()
    sizes = [tile * 4, tile * 3 + 1, 1, tile - 1] + [int(n) for n in
                                                    rng.integers(2, tile * 6, size=trials)]
    sizes = sizes[:max(trials, 1)]

    def trial(i):
        n = sizes[i]
        alpha = float(rng.uniform(-2.0, 2.0))
        x = rng.standard_normal(n).astype(np.float32)
        y = rng.standard_normal(n).astype(np.float32)
        out = poisoned(xp, (n,), np.float32)
        grid = (-(-n // tile),)
        _, error = attempt(device.launch, grid, kernel,
                            (alpha, xp.asarray(x), xp.asarray(y), out, tile))
        if error:
            return False, error
        want = alpha * x.astype(np.float64) + y.astype(np.float64)
        ok, message = compare(out, want, rtol=1e-5, atol=1e-5, what=f"out (n={n})")
        if not ok:
            ax = alpha * x.astype(np.float64)
            message += looks_like(out, {"y alone (alpha * x is missing)": y,
                                         "alpha * x alone (y is missing)": ax,
                                         "x + y (alpha is ignored)": x.astype(np.float64) + y,
                                         "x * alpha * y": ax * y})
        return ok, message

    return run_trials("axpy", len(sizes), trial, what="random vectors",
                      level=hint)


def add_bias(kernel, *, tile_m: int = 16, tile_n: int = 32, trials: int = 4,
             hint: int = 0) -> Verdict:
    """Exercise: ``kernel(x, bias, out, TILE_M, TILE_N)`` writes ``out[i, j] = x[i, j] + bias[j]``
    for a float32 (M, N) matrix and a length-N bias, one (TILE_M, TILE_N) tile per block, on the
    2-D grid ``(cdiv(M, TILE_M), cdiv(N, TILE_N))``."""
    problem = kernel_problem(kernel)
    if problem:
        return report("add_bias", False, problem, level=hint)
    xp, rng = _xp(), _rng()
    shapes = [(tile_m * 2, tile_n * 2), (tile_m * 2 + 3, tile_n + 5)]
    while len(shapes) < trials:
        shapes.append((int(rng.integers(1, tile_m * 4)), int(rng.integers(1, tile_n * 3))))
    shapes = shapes[:max(trials, 1)]

    def trial(i):
        m, n = shapes[i]
        x = rng.standard_normal((m, n)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        out = poisoned(xp, (m, n), np.float32)
        grid = (-(-m // tile_m), -(-n // tile_n))
        _, error = attempt(device.launch, grid, kernel,
                            (xp.asarray(x), xp.asarray(bias), out, tile_m, tile_n))
        if error:
            return False, error
        want = x.astype(np.float64) + bias.astype(np.float64)[None, :]
        ok, message = compare(out, want, rtol=1e-6, atol=1e-6, what=f"out ({m}x{n})")
        if not ok:
            message += looks_like(out, {"x alone (the bias was not added)": x})
        return ok, message

    return run_trials("add_bias", len(shapes), trial, what="random matrices",
                      level=hint)
