"""Exercise checkers for the notebooks.

``mt.check.<name>(learner_kernel_or_fn)`` runs the learner's code on fresh random inputs, compares
with a float64 NumPy reference and prints friendly, specific feedback. It returns ``True`` or
``False`` and never raises for a wrong answer (or for an exception inside the learner's code): it
explains what went wrong instead.

The file has one section per notebook. The core helpers come first; every notebook appends its
own checkers in a new section at the end. Helpers for checker authors:

- ``_compare(got, want, rtol, atol)`` -> ``(ok, message)``: shape, unwritten (NaN / sentinel)
  elements, the worst element and its index.
- ``_report(name, ok, details, hint=...)`` prints one ✅ / ❌ verdict and returns ``ok``.
- ``_attempt(fn, *args)`` -> ``(result, error)``: calls learner code, turning an exception into a
  readable message (cuTile compile errors included) instead of a traceback.
- ``_run_trials(name, trials, what=..., hint=...)``: runs ``trial(i) -> (ok, message)`` for
  ``i in range(trials)``, stops at the first failure, reports once.
- ``_poisoned(xp, shape, dtype)``: an output array pre-filled with NaN (floats) or a sentinel
  (integers), so elements a kernel never writes are caught.
- ``_kernel_problem(kernel)``: ``None`` for a ``@ct.kernel`` function, else what to fix.
- ``_xp()``: the array module of the default backend (CuPy on a GPU, NumPy on the emulator).
- ``_matches(got, candidates)``: the name of a known-wrong answer ``got`` equals, for hints
  such as "looks like alpha was ignored".
"""
from __future__ import annotations

import traceback

import numpy as np

from . import device

# ---------------------------------------------------------------------------------------------
# Core helpers (shared by every notebook's checkers)
# ---------------------------------------------------------------------------------------------

#: Value written into integer outputs before a kernel runs; a checker that sees it knows the
#: element was never written.
INT_SENTINEL = -123456789


def _sentinel(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or dtype.name == "bfloat16":
        return np.nan
    if dtype.kind == "b":
        return True
    if dtype.kind == "u":
        return np.iinfo(dtype).max
    info = np.iinfo(dtype)
    return INT_SENTINEL if info.min <= INT_SENTINEL <= info.max else info.min


def _poisoned(xp, shape, dtype):
    """An array of ``shape`` filled with NaN (float dtypes) or a sentinel (integers): whatever a
    kernel fails to write stays recognisable."""
    return xp.full(shape, _sentinel(dtype), dtype=dtype)


def _fmt_index(idx) -> str:
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def _fmt_value(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(v)


def _compare(got, want, rtol: float = 1e-5, atol: float = 1e-6, *,
             what: str = "output") -> tuple[bool, str]:
    """Compare a result with a reference; ``(True, summary)`` or ``(False, the first thing to fix)``.

    ``got`` may be NumPy or CuPy (any dtype, bfloat16 included); ``want`` is the reference, best
    in float64. Elements are close when ``|got - want| <= atol + rtol * |want|``. NaN in ``got``
    where ``want`` is finite is reported as "never written" (outputs are poisoned with NaN
    before the kernel runs), as is the integer sentinel.
    """
    if got is None or not hasattr(got, "shape"):
        return False, f"{what}: expected an array, got {type(got).__name__}"
    try:
        got = device.to_numpy(got)
    except Exception as e:  # noqa: BLE001 - the learner may hand back anything
        return False, f"{what}: could not read the result as an array ({type(e).__name__}: {e})"
    want = np.asarray(want)
    if got.shape != want.shape:
        return False, f"{what} has shape {got.shape}, expected {want.shape}"

    if np.dtype(got.dtype).kind in "iub" and np.dtype(want.dtype).kind in "iub":
        unwritten = (got == _sentinel(got.dtype)) & (want != _sentinel(got.dtype))
        wrong = got != want
        if unwritten.any():
            return False, _unwritten_message(what, unwritten)
        if wrong.any():
            idx = np.argwhere(wrong)[0]
            t = tuple(idx)
            return False, (f"{what} element {_fmt_index(idx)} is {got[t]}, expected {want[t]} "
                           f"({int(wrong.sum())} of {wrong.size} elements differ)")
        return True, f"{what}: all {want.size} elements exact"

    g = got.astype(np.float64)
    w = want.astype(np.float64)
    unwritten = np.isnan(g) & ~np.isnan(w)
    if unwritten.any():
        return False, _unwritten_message(what, unwritten)
    same_special = (np.isnan(g) & np.isnan(w)) | (np.isinf(w) & (g == w))
    with np.errstate(invalid="ignore"):
        err = np.where(same_special, 0.0, np.abs(g - w))
        limit = atol + rtol * np.abs(np.where(np.isfinite(w), w, 0.0))
        bad = ~(err <= limit)  # catches inf / NaN errors too
    if bad.any():
        excess = np.where(bad, np.nan_to_num(err / limit, nan=np.inf, posinf=np.inf), -1.0)
        idx = np.unravel_index(int(np.argmax(excess)), excess.shape)
        return False, (f"{what} element {_fmt_index(idx)} is {_fmt_value(g[idx])}, expected "
                       f"{_fmt_value(w[idx])} (error {_fmt_value(err[idx])} > tolerance "
                       f"{_fmt_value(limit[idx])}; {int(bad.sum())} of {bad.size} elements "
                       f"are off, rtol={rtol:g}, atol={atol:g})")
    worst = float(err.max()) if err.size else 0.0
    return True, f"{what}: max abs error {worst:.3g} (rtol={rtol:g}, atol={atol:g})"


def _unwritten_message(what, unwritten) -> str:
    idx = np.argwhere(unwritten)
    n = len(idx)
    return (f"{what} element {_fmt_index(idx[0])} was never written ({n} of {unwritten.size} "
            f"elements still hold the poison value). Does the grid cover the whole output, "
            f"and does every block store its tile?")


def _report(name: str, ok: bool, details: str = "", *, hint: str | None = None) -> bool:
    """Print ``✅ name: details`` or ``❌ name: details`` (plus a hint on failure); return ``ok``."""
    if ok:
        print(f"✅ {name}: {details}" if details else f"✅ {name}: correct")
    else:
        print(f"❌ {name}: {details}" if details else f"❌ {name}: not correct yet")
        if hint:
            print(f"   hint: {hint}")
    return bool(ok)


def _describe_exception(e: BaseException) -> str:
    """One readable paragraph for an exception raised by learner code."""
    kind = type(e).__name__
    text = str(e).strip() or "(no message)"
    try:
        import cuda.tile as ct
        is_tile_error = isinstance(e, ct.TileError)
    except Exception:  # noqa: BLE001
        is_tile_error = False
    if is_tile_error:
        return (f"cuTile rejected the kernel ({kind}):\n{text}\n"
                f"   (the message names the line and column in your kernel; read it top down)")
    # Point at the deepest frame that is not inside this package or a library.
    where = ""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        f = frame.filename.replace("\\", "/")
        if "/moe_tutorial/" not in f and "site-packages" not in f and "/lib/python" not in f:
            where = f" (at line {frame.lineno}: {frame.line})" if frame.line else ""
            break
    notes = "".join(f"; {note}" for note in getattr(e, "__notes__", ()))  # e.g. which block
    return f"your code raised {kind}: {text}{where}{notes}"


#: The last kernel launch a checker made through ``_attempt(device.launch, ...)``: kernel, grid
#: and host copies of the arguments taken before the launch, so ``picture()`` can replay it.
_last_launch = None


def _attempt(fn, *args, **kwargs):
    """Call learner code: ``(result, None)`` on success, ``(None, message)`` if it raised."""
    global _last_launch
    if fn is device.launch and len(args) == 3:
        grid, kernel, launch_args = args
        _last_launch = (kernel, grid, tuple(
            device.to_numpy(a).copy() if hasattr(a, "shape") and not np.isscalar(a) else a
            for a in launch_args))
    try:
        return fn(*args, **kwargs), None
    except Exception as e:  # noqa: BLE001 - turning the learner's error into feedback
        return None, _describe_exception(e)


def _run_trials(name: str, trials: int, trial, *, what: str = "random inputs",
                hint: str | None = None) -> bool:
    """Run ``trial(i) -> (ok, message)`` for ``i in range(trials)``; report the first failure
    (with the trial's message and ``hint``) or, if all pass, "correct on N random inputs"."""
    for i in range(trials):
        try:
            ok, message = trial(i)
        except Exception as e:  # noqa: BLE001 - an exception is feedback, not a crash
            ok, message = False, _describe_exception(e)
        if not ok:
            _report(name, False, f"case {i + 1} of {trials}: {message}", hint=hint)
            if _last_launch is not None:
                print("   see where your kernel read and wrote: mt.check.picture()")
            return False
    return _report(name, True, f"correct on {trials} {what}")


def picture(block=None, **plot_options):
    """Replay the last kernel launch a checker made (with the same inputs) on the CPU emulator
    and draw what every block read and wrote (see ``mt.trace``); returns the ``Trace``."""
    if _last_launch is None:
        print("No checker has launched a kernel yet: run a checker first.")
        return None
    from .trace import trace
    kernel, grid, args = _last_launch
    tr = trace(kernel, grid, args)
    tr.plot(block=block, **plot_options)
    return tr


def _rng(seed=None) -> np.random.Generator:
    """Fresh inputs every call unless a seed is given."""
    return np.random.default_rng(seed)


def _xp():
    """The array module checkers run on: CuPy on a GPU, NumPy (emulator) otherwise."""
    return device.get_xp()


def _kernel_problem(kernel) -> str | None:
    """``None`` if ``kernel`` is a ``@ct.kernel`` function, else a sentence saying what to fix."""
    import cuda.tile as ct
    if isinstance(kernel, ct.kernel):
        return None
    if callable(kernel):
        return (f"{getattr(kernel, '__name__', 'this function')} is a plain Python function; "
                f"decorate it with @ct.kernel")
    return f"expected a @ct.kernel function, got {type(kernel).__name__}"


def _matches(got, candidates: dict, rtol: float = 1e-5, atol: float = 1e-6) -> str | None:
    """The first name in ``candidates`` (name -> array) whose array ``got`` matches, else None."""
    try:
        g = device.to_numpy(got).astype(np.float64)
    except Exception:  # noqa: BLE001
        return None
    for name, c in candidates.items():
        c = np.asarray(c, dtype=np.float64)
        if c.shape == g.shape and np.allclose(g, c, rtol=rtol, atol=atol):
            return name
    return None


# ---------------------------------------------------------------------------------------------
# Notebook 00: tiles (num_tiles, axpy, add_bias)
# ---------------------------------------------------------------------------------------------

def num_tiles(fn, *, trials: int = 8) -> bool:
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
        got, error = _attempt(fn, shape, tile_shape)
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

    return _run_trials("num_tiles", len(cases), trial, what="shapes",
                       hint="round UP: a partial tile at the end still needs a block, "
                            "so use ceil(size / tile) = (size + tile - 1) // tile (ct.cdiv).")


def axpy(kernel, *, tile: int = 256, trials: int = 5) -> bool:
    """Exercise: ``kernel(alpha, x, y, out, TILE)`` writes ``out = alpha * x + y`` (float32 1-D
    arrays, ``alpha`` a Python float), one TILE-element tile per block, grid
    ``(cdiv(n, TILE),)``. Sizes include ones that are not multiples of TILE."""
    problem = _kernel_problem(kernel)
    if problem:
        return _report("axpy", False, problem)
    xp, rng = _xp(), _rng()
    sizes = [tile * 4, tile * 3 + 1, 1, tile - 1] + [int(n) for n in
                                                    rng.integers(2, tile * 6, size=trials)]
    sizes = sizes[:max(trials, 1)]

    def trial(i):
        n = sizes[i]
        alpha = float(rng.uniform(-2.0, 2.0))
        x = rng.standard_normal(n).astype(np.float32)
        y = rng.standard_normal(n).astype(np.float32)
        out = _poisoned(xp, (n,), np.float32)
        grid = (-(-n // tile),)
        _, error = _attempt(device.launch, grid, kernel,
                            (alpha, xp.asarray(x), xp.asarray(y), out, tile))
        if error:
            return False, error
        want = alpha * x.astype(np.float64) + y.astype(np.float64)
        ok, message = _compare(out, want, rtol=1e-5, atol=1e-5, what=f"out (n={n})")
        if not ok:
            wrong = _matches(out, {"y alone (alpha * x is missing)": y,
                                   "alpha * x alone (y is missing)": alpha * x.astype(np.float64),
                                   "x + y (alpha is ignored)": x.astype(np.float64) + y,
                                   "x * alpha * y": alpha * x.astype(np.float64) * y})
            if wrong:
                message += f"; the result looks like {wrong}"
        return ok, message

    return _run_trials("axpy", len(sizes), trial, what="random vectors",
                       hint="each block loads the tiles at index (ct.bid(0),) of x and y with "
                            "shape (TILE,), computes alpha * x_tile + y_tile and stores it to "
                            "out at the same index.")


def add_bias(kernel, *, tile_m: int = 16, tile_n: int = 32, trials: int = 4) -> bool:
    """Exercise: ``kernel(x, bias, out, TILE_M, TILE_N)`` writes ``out[i, j] = x[i, j] + bias[j]``
    for a float32 (M, N) matrix and a length-N bias, one (TILE_M, TILE_N) tile per block, on the
    2-D grid ``(cdiv(M, TILE_M), cdiv(N, TILE_N))``."""
    problem = _kernel_problem(kernel)
    if problem:
        return _report("add_bias", False, problem)
    xp, rng = _xp(), _rng()
    shapes = [(tile_m * 2, tile_n * 2), (tile_m * 2 + 3, tile_n + 5)]
    while len(shapes) < trials:
        shapes.append((int(rng.integers(1, tile_m * 4)), int(rng.integers(1, tile_n * 3))))
    shapes = shapes[:max(trials, 1)]

    def trial(i):
        m, n = shapes[i]
        x = rng.standard_normal((m, n)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        out = _poisoned(xp, (m, n), np.float32)
        grid = (-(-m // tile_m), -(-n // tile_n))
        _, error = _attempt(device.launch, grid, kernel,
                            (xp.asarray(x), xp.asarray(bias), out, tile_m, tile_n))
        if error:
            return False, error
        want = x.astype(np.float64) + bias.astype(np.float64)[None, :]
        ok, message = _compare(out, want, rtol=1e-6, atol=1e-6, what=f"out ({m}x{n})")
        if not ok:
            wrong = _matches(out, {"x alone (the bias was not added)": x})
            if wrong:
                message += f"; the result looks like {wrong}"
        return ok, message

    return _run_trials("add_bias", len(shapes), trial, what="random matrices",
                       hint="block (ct.bid(0), ct.bid(1)) owns rows tile bid(0) and columns tile "
                            "bid(1): load x at index (bid0, bid1) with shape (TILE_M, TILE_N), the "
                            "bias at index (bid1,) with shape (TILE_N,) — adding a (TILE_N,) tile to "
                            "a (TILE_M, TILE_N) tile broadcasts it over the rows.")


# ---------------------------------------------------------------------------------------------
# Notebook 01: routing (router_softmax, expert_histogram, block_owners)
# ---------------------------------------------------------------------------------------------

def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def router_softmax(kernel, *, tile_t: int = 8, trials: int = 5) -> bool:
    """Exercise: ``kernel(logits, probs, TILE_T, E_PAD)`` writes the row softmax of float32
    ``logits (T, E)`` into ``probs (T, E)``; one block per TILE_T tokens, grid
    ``(cdiv(T, TILE_T),)``, ``E_PAD`` = E rounded up to a power of two (the tile width)."""
    problem = _kernel_problem(kernel)
    if problem:
        return _report("router_softmax", False, problem)
    xp, rng = _xp(), _rng()
    shapes = [(2 * tile_t, 8), (tile_t + 3, 6), (1, 1), (5, 13)]
    while len(shapes) < trials:
        shapes.append((int(rng.integers(1, 4 * tile_t)), int(rng.integers(1, 70))))
    shapes = shapes[:max(trials, 1)]

    def trial(i):
        t, e = shapes[i]
        e_pad = _pow2(e)
        logits = (rng.standard_normal((t, e)) * 3).astype(np.float32)
        probs = _poisoned(xp, (t, e), np.float32)
        _, error = _attempt(device.launch, (-(-t // tile_t),), kernel,
                            (xp.asarray(logits), probs, tile_t, e_pad))
        if error:
            return False, error
        x = logits.astype(np.float64)
        want = np.exp(x - x.max(axis=1, keepdims=True))
        want /= want.sum(axis=1, keepdims=True)
        ok, message = _compare(probs, want, rtol=1e-5, atol=1e-6, what=f"probs (T={t}, E={e})")
        if not ok:
            padded = np.concatenate([x, np.zeros((t, e_pad - e))], axis=1)
            zero_pad = np.exp(padded - padded.max(axis=1, keepdims=True))
            zero_pad = (zero_pad / zero_pad.sum(axis=1, keepdims=True))[:, :e]
            wrong = _matches(probs, {
                "exp(x - max) without dividing by the row sum":
                    np.exp(x - x.max(axis=1, keepdims=True)),
                "a softmax in which the E_PAD - E padding columns count as logits of 0 "
                "(pad with -inf: padding_mode=ct.PaddingMode.NEG_INF)": zero_pad,
                "the logits themselves": x})
            if wrong:
                message += f"; the result looks like {wrong}"
            elif np.isnan(device.to_numpy(probs)).any() and e != e_pad:
                message += (" (if you loaded with the default padding, the padding columns are "
                            "undetermined — NaN on the emulator — and poison the row max and sum)")
        return ok, message

    return _run_trials("router_softmax", len(shapes), trial, what="random logit matrices",
                       hint="load the (TILE_T, E_PAD) tile at index (ct.bid(0), 0) padded with "
                            "-inf, subtract the row max (ct.max(x, axis=1, keepdims=True)), "
                            "exponentiate, divide by the row sum, store.")


def expert_histogram(kernel, *, tile: int = 64, trials: int = 5) -> bool:
    """Exercise: ``kernel(flat_ids, counts, TILE)`` adds, for every replica in ``flat_ids``
    (int32, -1 = dropped), one to ``counts[expert]`` with ``ct.atomic_add``; grid
    ``(cdiv(N, TILE),)``; ``counts`` (int32, one per expert) starts at zero."""
    problem = _kernel_problem(kernel)
    if problem:
        return _report("expert_histogram", False, problem)
    xp, rng = _xp(), _rng()
    cases = [(4 * tile, 8, 0.0), (3 * tile + 5, 16, 0.0), (tile - 1, 5, 0.3), (1, 1, 0.0)]
    while len(cases) < trials:
        cases.append((int(rng.integers(1, 6 * tile)), int(rng.integers(1, 40)), 0.2))
    cases = cases[:max(trials, 1)]

    def trial(i):
        n, e, drop = cases[i]
        ids = rng.integers(0, e, size=n)
        ids = np.where(rng.random(n) < drop, -1, ids).astype(np.int32)
        counts = xp.zeros(e, dtype=xp.int32)
        _, error = _attempt(device.launch, (-(-n // tile),), kernel,
                            (xp.asarray(ids), counts, tile))
        if error:
            return False, error
        want = np.bincount(ids[ids >= 0], minlength=e).astype(np.int32)
        ok, message = _compare(counts, want, what=f"counts (N={n}, E={e}"
                               + (", some ids -1)" if drop else ")"))
        if not ok:
            pad = -(-n // tile) * tile - n
            extra0 = want.copy()
            extra0[0] += pad + int((ids < 0).sum())
            wrong = _matches(counts, {
                "nothing counted (all zeros)": np.zeros(e),
                "the right counts plus every padding element / -1 id counted as expert 0 "
                "(pad the gather with -1: atomic_add skips out-of-bounds indices)": extra0})
            if wrong:
                message += f"; the result looks like {wrong}"
        return ok, message

    return _run_trials("expert_histogram", len(cases), trial, what="random routings",
                       hint="gather the TILE ids at index = ct.bid(0) * TILE + ct.arange(TILE) "
                            "with mask=index < flat_ids.shape[0] and padding_value=-1, then "
                            "ct.atomic_add(counts, ids, 1): every id adds one to its expert, and "
                            "-1 is out of bounds, so it is skipped.")


def block_owners(fn, *, trials: int = 8) -> bool:
    """Exercise: ``fn(counts, tile_m)`` (NumPy) returns ``expert_ids``: the owning expert of every
    TILE_M block of the padded, expert-sorted layout, given the tokens per expert ``counts``."""
    rng = _rng()
    cases = [(np.array([5, 3, 9, 4]), 4), (np.array([0, 5, 0, 8]), 4), (np.array([9]), 1),
             (np.array([0, 0, 1]), 16)]
    while len(cases) < trials:
        e = int(rng.integers(1, 12))
        counts = rng.integers(0, 40, size=e) * (rng.random(e) < 0.7)
        cases.append((counts, int(2 ** rng.integers(0, 6))))
    cases = cases[:max(trials, 1)]

    def trial(i):
        counts, tile_m = cases[i]
        want = np.repeat(np.arange(len(counts)), -(-counts // tile_m))
        got, error = _attempt(fn, counts.copy(), tile_m)
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

    return _run_trials("block_owners", len(cases), trial, what="count vectors",
                       hint="expert e needs cdiv(counts[e], tile_m) blocks; list e that many "
                            "times, in expert order (np.repeat).")


# ---------------------------------------------------------------------------------------------
# Notebook 02: SiLU-and-mul (bytes moved, a row kernel that loops over column tiles, GeGLU)
# ---------------------------------------------------------------------------------------------

def _swiglu_input(rng, M, I, dtype, scale=3.0):
    return (rng.standard_normal((M, 2 * I)) * scale).astype(dtype)


def _launch_gate_up(kernel, grid, x_host, out, *constants):
    """Launch ``kernel(gate, up, out, *constants)`` with gate/up the two halves of ``x_host``
    (as strided views on the backend of ``out``, like ``mt.activation.silu_and_mul`` does)."""
    xp = device.array_module(out)
    x = xp.asarray(x_host)
    I = x.shape[1] // 2
    return _attempt(device.launch, grid, kernel, (x[:, :I], x[:, I:], out, *constants))


def silu_and_mul_bytes(fn, *, trials: int = 6) -> bool:
    """Exercise: ``fn(M, I, in_dtype, out_dtype)`` returns the number of bytes a perfect
    silu_and_mul kernel moves through memory for an ``(M, 2I)`` input of ``in_dtype`` and an
    ``(M, I)`` output of ``out_dtype`` (each element read or written exactly once)."""
    from . import activation
    rng = _rng()
    f16, f32 = np.float16, np.float32
    cases = [(8192, 2048, f16, f16), (3, 5, f32, f16), (1, 1, f32, f32), (7, 1408, f16, f32)]
    while len(cases) < trials:
        din, dout = (f16, f32)[int(rng.integers(2))], (f16, f32)[int(rng.integers(2))]
        cases.append((int(rng.integers(1, 10000)), int(rng.integers(1, 8000)), din, dout))

    def trial(i):
        M, I, din, dout = cases[i]
        want = activation.bytes_moved(M, I, din, dout)
        got, error = _attempt(fn, M, I, din, dout)
        if error:
            return False, error
        try:
            got_i = int(got)
        except (TypeError, ValueError):
            return False, f"returned {got!r}; expected an int"
        if got_i == want:
            return True, ""
        s_in, s_out = np.dtype(din).itemsize, np.dtype(dout).itemsize
        guesses = [
            (M * I * s_in + M * I * s_out, "x has 2*I columns per row (gate AND up): "
                                           "the input is read as M * 2I elements"),
            (M * 2 * I * s_in, "the output (M * I elements written) is missing"),
            (M * I * s_out, "the input reads are missing"),
            (M * 3 * I * s_in, "the output is written in out_dtype, not in_dtype"),
            (M * 3 * I * s_out, "the input is read in in_dtype, not out_dtype"),
            (M * 3 * I, "that is a count of elements: multiply each by its itemsize "
                        "(np.dtype(d).itemsize)"),
            (8 * want, "that is bits; the question asks for bytes"),
        ]
        why = next((text for value, text in guesses if value == got_i), None)
        msg = (f"bytes_moved({M}, {I}, {np.dtype(din).name}, {np.dtype(dout).name}) returned "
               f"{got_i}, expected {want}")
        return False, msg + (f" — {why}" if why else "")

    return _run_trials("silu_and_mul_bytes", len(cases), trial, what="problem sizes",
                       hint="read M x 2I input elements of in_dtype, write M x I output elements "
                            "of out_dtype; bytes = elements x itemsize.")


def _swiglu_wrong_answers(x):
    """Known-wrong results of common slips, for hints."""
    x = x.astype(np.float64)
    I = x.shape[1] // 2
    g, u = x[:, :I], x[:, I:]
    with np.errstate(over="ignore"):
        silu = lambda v: v / (1.0 + np.exp(-v))  # noqa: E731
        return {"silu(up) * gate (the halves are swapped)": silu(u) * g,
                "silu(gate) without the multiplication by up": silu(g),
                "sigmoid(gate) * up (silu is gate * sigmoid(gate))": u / (1.0 + np.exp(-g)),
                "gate * up (no activation)": g * u}


def silu_and_mul_row_loop(kernel, *, tile_n: int = 32, trials: int = 6) -> bool:
    """Exercise: ``kernel(gate, up, out, TILE_N)``, launched on the grid ``(M,)``, writes
    ``out[m, :] = silu(gate[m, :]) * up[m, :]`` for rows of ANY width I, one block per row,
    looping over the row in ``(1, TILE_N)`` tiles (so a fixed TILE_N serves every width)."""
    from . import activation
    problem = _kernel_problem(kernel)
    if problem:
        return _report("silu_and_mul_row_loop", False, problem)
    xp, rng = _xp(), _rng()
    widths = [tile_n * 3, tile_n * 2 + 5, tile_n - 1, 1, 7 * tile_n + 3]
    widths += [int(w) for w in rng.integers(2, tile_n * 6, size=max(trials - len(widths), 0))]
    widths = widths[:max(trials, 1)]
    dtypes = [np.float32, np.float16]

    def trial(i):
        M, I, dtype = int(rng.integers(1, 9)), widths[i], dtypes[i % 2]
        x = _swiglu_input(rng, M, I, dtype)
        out = _poisoned(xp, (M, I), dtype)
        _, error = _launch_gate_up(kernel, (M,), x, out, tile_n)
        if error:
            return False, error
        rtol, atol = activation.tolerance(dtype)
        ok, message = _compare(out, activation.silu_and_mul_reference(x), rtol=rtol, atol=atol,
                               what=f"out ({M}x{I}, {np.dtype(dtype).name}, TILE_N={tile_n})")
        if not ok:
            wrong = _matches(out, _swiglu_wrong_answers(x), rtol=10 * rtol, atol=10 * atol)
            if wrong:
                message += f"; the result looks like {wrong}"
        return ok, message

    return _run_trials("silu_and_mul_row_loop", len(widths), trial, what="widths",
                       hint="loop `for j in range(ct.num_tiles(out, 1, (1, TILE_N))):` (or "
                            "ct.cdiv(out.shape[1], TILE_N)) and load, compute and store tile "
                            "(row, j) each time; zero padding keeps the last partial tile clean.")


def gelu_tanh_reference(g):
    """float64 GELU, tanh approximation: 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))."""
    g = np.asarray(g, dtype=np.float64)
    return 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g ** 3)))


def geglu(kernel, *, tile_m: int = 8, tile_n: int = 32, trials: int = 5) -> bool:
    """Exercise: ``kernel(gate, up, out, TILE_M, TILE_N)`` writes ``gelu_tanh(gate) * up`` (the
    GeGLU activation) with one ``(TILE_M, TILE_N)`` tile per block on the grid
    ``(cdiv(M, TILE_M), cdiv(I, TILE_N))``, math in float32."""
    problem = _kernel_problem(kernel)
    if problem:
        return _report("geglu", False, problem)
    xp, rng = _xp(), _rng()
    shapes = [(tile_m * 2, tile_n * 2), (tile_m + 3, tile_n * 2 + 7), (1, 5)]
    while len(shapes) < trials:
        shapes.append((int(rng.integers(1, tile_m * 5)), int(rng.integers(1, tile_n * 5))))
    shapes = shapes[:max(trials, 1)]
    # tolerances: float32 leaves room for 1 + tanh(z) cancelling for z << 0 (a few 1e-7 absolute)
    tolerances = {np.float32: (1e-4, 1e-5), np.float16: (2e-3, 1e-4)}

    def trial(i):
        (M, I), dtype = shapes[i], (np.float32, np.float16)[i % 2]
        x = _swiglu_input(rng, M, I, dtype)
        out = _poisoned(xp, (M, I), dtype)
        grid = (-(-M // tile_m), -(-I // tile_n))
        _, error = _launch_gate_up(kernel, grid, x, out, tile_m, tile_n)
        if error:
            return False, error
        x64 = x.astype(np.float64)
        g, u = x64[:, :I], x64[:, I:]
        rtol, atol = tolerances[dtype]
        ok, message = _compare(out, gelu_tanh_reference(g) * u, rtol=rtol, atol=atol,
                               what=f"out ({M}x{I}, {np.dtype(dtype).name})")
        if not ok:
            from math import erf
            gelu_erf = 0.5 * g * (1.0 + np.vectorize(erf)(g / np.sqrt(2.0)))
            wrong = _matches(out, {
                **_swiglu_wrong_answers(x),
                "silu(gate) * up — that is SwiGLU; GeGLU uses gelu instead of silu":
                    g / (1.0 + np.exp(-g)) * u,
                "the exact (erf) GELU; this exercise uses the tanh approximation":
                    gelu_erf * u,
                "gelu(up) * gate (the halves are swapped)": gelu_tanh_reference(u) * g,
                "gelu(gate) without the multiplication by up": gelu_tanh_reference(g)},
                rtol=10 * rtol, atol=10 * atol)
            if wrong:
                message += f"; the result looks like {wrong}"
        return ok, message

    return _run_trials("geglu", len(shapes), trial, what="random inputs",
                       hint="copy the tiled silu_and_mul kernel and replace silu: "
                            "0.5 * g * (1 + ct.tanh(0.7978845608 * (g + 0.044715 * g * g * g))), "
                            "with g and u converted to float32 first.")


# ---------------------------------------------------------------------------------------------
# Notebooks 03-04: the fused MoE matmul and the layer (gather rows, weighted scatter, swizzle,
# the layer from its pieces, expert-parallel maps, the roofline floor)
# ---------------------------------------------------------------------------------------------

def _moe_routing(rng, T, K, E, tile_m):
    """Random distinct top-k ids (T, K) and float32 weights, plus their alignment."""
    from . import reference
    ids = np.stack([rng.permutation(E)[:K] for _ in range(T)]).astype(np.int32)
    weights = rng.random((T, K)).astype(np.float32)
    sorted_ids, expert_ids, _ = reference.align(ids, E, tile_m)
    return weights, ids, sorted_ids, expert_ids


def moe_gather_rows(kernel, *, tile_m: int = 16, tile_h: int = 32, trials: int = 4) -> bool:
    """Exercise (notebook 03): ``kernel(X, sorted_token_ids, out, TOP_K, TILE_M, TILE_H)`` copies
    token rows into expert-sorted order: ``out[s] = X[sorted_token_ids[s] // TOP_K]`` for every
    slot ``s``, and zeros where the slot holds the sentinel ``T*K``. Grid
    ``(len(sorted_token_ids) // TILE_M, cdiv(H, TILE_H))``."""
    problem = _kernel_problem(kernel)
    if problem:
        return _report("moe_gather_rows", False, problem)
    xp, rng = _xp(), _rng()
    cases = [(6, 2 * tile_h, 4, 2), (9, tile_h + 5, 5, 3), (1, 7, 3, 1)]
    while len(cases) < trials:
        cases.append((int(rng.integers(1, 30)), int(rng.integers(1, 3 * tile_h)),
                      int(rng.integers(2, 9)), 2))
    cases = cases[:max(trials, 1)]

    def trial(i):
        T, H, E, K = cases[i]
        x = rng.standard_normal((T, H)).astype(np.float32)
        _, _, sorted_ids, _ = _moe_routing(rng, T, K, E, tile_m)
        out = _poisoned(xp, (len(sorted_ids), H), np.float32)
        grid = (len(sorted_ids) // tile_m, -(-H // tile_h))
        _, error = _attempt(device.launch, grid, kernel,
                            (xp.asarray(x), xp.asarray(sorted_ids), out, K, tile_m, tile_h))
        if error:
            return False, error
        valid = sorted_ids < T * K
        want = np.zeros((len(sorted_ids), H))
        want[valid] = x[sorted_ids[valid] // K]
        ok, message = _compare(out, want, rtol=1e-6, atol=1e-6,
                               what=f"out (T={T}, H={H}, E={E}, K={K})")
        if not ok:
            no_div = np.zeros_like(want)
            inside = sorted_ids < T
            no_div[inside] = x[sorted_ids[inside]]
            wrong = _matches(out, {"X[sorted_token_ids] — the replica index was not divided "
                                   "by TOP_K": no_div})
            if wrong:
                message += f"; the result looks like {wrong}"
        return ok, message

    return _run_trials("moe_gather_rows", len(cases), trial, what="random routings",
                       hint="load the TILE_M slots at (ct.bid(0),), rows = slots // TOP_K, "
                            "cols = ct.bid(1) * TILE_H + ct.arange(TILE_H); ct.gather(X, "
                            "(rows[:, None], cols[None, :])) pads out-of-range rows and "
                            "columns with 0; ct.store the tile at (ct.bid(0), ct.bid(1)).")


def moe_scatter_weighted(kernel, *, tile_m: int = 16, tile_n: int = 32, trials: int = 4) -> bool:
    """Exercise (notebook 03): ``kernel(Y, sorted_token_ids, topk_weights, out, TILE_M,
    TILE_N)`` is the GEMM2 epilogue: ``Y`` holds one result row per slot (expert-sorted order);
    write ``out[r] = Y[s] * topk_weights[r]`` with ``r = sorted_token_ids[s]``, skipping
    sentinel slots (``r == T*K``). ``topk_weights`` is flat (T*K,), float32. Grid
    ``(len(sorted_token_ids) // TILE_M, cdiv(N, TILE_N))``."""
    problem = _kernel_problem(kernel)
    if problem:
        return _report("moe_scatter_weighted", False, problem)
    xp, rng = _xp(), _rng()
    cases = [(5, 2 * tile_n, 4, 2), (8, tile_n + 9, 6, 3), (1, 3, 2, 2)]
    while len(cases) < trials:
        cases.append((int(rng.integers(1, 30)), int(rng.integers(1, 3 * tile_n)),
                      int(rng.integers(2, 9)), 2))
    cases = cases[:max(trials, 1)]

    def trial(i):
        T, N, E, K = cases[i]
        weights, _, sorted_ids, _ = _moe_routing(rng, T, K, E, tile_m)
        y = rng.standard_normal((len(sorted_ids), N)).astype(np.float32)
        out = _poisoned(xp, (T * K, N), np.float32)
        grid = (len(sorted_ids) // tile_m, -(-N // tile_n))
        _, error = _attempt(device.launch, grid, kernel,
                            (xp.asarray(y), xp.asarray(sorted_ids),
                             xp.asarray(weights.reshape(-1)), out, tile_m, tile_n))
        if error:
            return False, error
        valid = sorted_ids < T * K
        want = np.zeros((T * K, N))
        want[sorted_ids[valid]] = y[valid] * weights.reshape(-1)[sorted_ids[valid], None]
        ok, message = _compare(out, want, rtol=1e-6, atol=1e-6,
                               what=f"out (T={T}, N={N}, E={E}, K={K})")
        if not ok:
            unweighted = np.zeros_like(want)
            unweighted[sorted_ids[valid]] = y[valid]
            slot_w = np.zeros(len(sorted_ids))            # weights[s]: 0 past the end
            n = min(len(sorted_ids), T * K)
            slot_w[:n] = weights.reshape(-1)[:n]
            by_slot = np.zeros_like(want)
            by_slot[sorted_ids[valid]] = y[valid] * slot_w[valid, None]
            wrong = _matches(out, {"the rows scattered without the router weight": unweighted,
                                   "weights looked up by slot s instead of by replica r":
                                       by_slot})
            if wrong:
                message += f"; the result looks like {wrong}"
        return ok, message

    return _run_trials("moe_scatter_weighted", len(cases), trial, what="random routings",
                       hint="load the slots at (ct.bid(0),) and the Y tile at (ct.bid(0), "
                            "ct.bid(1)); w = ct.gather(topk_weights, slots) (a sentinel slot is "
                            "out of bounds, so it reads 0); ct.scatter(out, (slots[:, None], "
                            "cols[None, :]), y * w[:, None]) drops out-of-range rows/columns.")


def moe_swizzle(fn, *, trials: int = 6) -> bool:
    """Exercise (notebook 03): ``fn(bid, num_m, num_n, group_size_m) -> (pid_m, pid_n)`` (plain
    Python ints): the grouped launch order. Blocks come in groups of ``group_size_m`` m-blocks
    (fewer in the last group); inside a group the m index runs fastest, then n."""
    from .fused_moe import swizzle_2d
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
            pair, error = _attempt(fn, bid, num_m, num_n, group)
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

    return _run_trials("moe_swizzle", len(cases), trial, what="grid shapes",
                       hint="group = bid // (G * num_n); first_m = group * G; rows in this group "
                            "= min(num_m - first_m, G); pid_m = first_m + bid % rows; "
                            "pid_n = (bid % (G * num_n)) // rows.")


def _layer_problem(rng, T, H, E, I):
    x = rng.standard_normal((T, H)).astype(np.float32)
    w1 = (rng.standard_normal((E, 2 * I, H)) / np.sqrt(H)).astype(np.float32)
    w2 = (rng.standard_normal((E, H, I)) / np.sqrt(I)).astype(np.float32)
    logits = rng.standard_normal((T, E)).astype(np.float32)
    return x, w1, w2, logits


def moe_layer(fn, *, trials: int = 3) -> bool:
    """Exercise (notebook 04): ``fn(x, w1, w2, router_logits, top_k)`` returns the MoE layer
    output (T, H) built from the package's pieces: softmax top-k routing with renormalized
    weights, align, GEMM1, silu_and_mul, weighted GEMM2, sum over the top-k."""
    from . import reference
    xp, rng = _xp(), _rng()
    cases = [(12, 32, 6, 24, 2), (5, 40, 8, 16, 3), (1, 16, 4, 8, 1)][:max(trials, 1)]

    def trial(i):
        T, H, E, I, K = cases[i]
        x, w1, w2, logits = _layer_problem(rng, T, H, E, I)
        got, error = _attempt(fn, *(xp.asarray(a) for a in (x, w1, w2, logits)), K)
        if error:
            return False, error
        want = reference.moe_forward(x, w1, w2, logits, K, renormalize=True)
        ok, message = _compare(got, want, rtol=1e-4, atol=1e-4,
                               what=f"output (T={T}, H={H}, E={E}, I={I}, K={K})")
        if not ok:
            w, ids = reference.topk_softmax(logits, K, renormalize=True)
            w_raw, _ = reference.topk_softmax(logits, K, renormalize=False)
            wrong = _matches(got, {
                "zeros (nothing computed yet)": np.zeros_like(want),
                "the layer without renormalizing the top-k weights":
                    reference.moe_forward(x, w1, w2, None, K, topk_weights=w_raw,
                                          topk_ids=ids),
                "the layer with every router weight = 1 (mul_routed_weight missing?)":
                    reference.moe_forward(x, w1, w2, None, K, topk_weights=np.ones_like(w),
                                          topk_ids=ids)}, rtol=1e-4, atol=1e-4)
            if wrong:
                message += f"; the result looks like {wrong}"
        return ok, message

    return _run_trials("moe_layer", len(cases), trial, what="random layers",
                       hint="weights, ids = mt.routing.topk_softmax(logits, top_k, "
                            "renormalize=True); sorted, experts, _ = mt.routing.align(ids, E, "
                            "tile_m); GEMM1 with top_k=top_k; silu_and_mul; GEMM2 with "
                            "top_k=1, topk_weights=weights, mul_routed_weight=True; then "
                            "mt.fused_moe.moe_sum(y, ids, E).")


def moe_expert_map(fn, *, trials: int = 4) -> bool:
    """Exercise (notebook 04): ``fn(num_experts, num_ranks, rank)`` returns the int32
    ``expert_map`` of one expert-parallel rank: global id -> local id, -1 for experts held by
    other ranks. Every expert lives on exactly one rank, each rank's local ids are
    0..n_local-1, and ranks hold as many experts as possible (sizes differ by at most one).
    The checker then runs the layer on every rank and checks the partial outputs add up."""
    from . import layer, reference
    xp, rng = _xp(), _rng()
    cases = [(8, 2), (12, 3), (5, 2), (7, 7)][:max(trials, 1)]

    def trial(i):
        E, R = cases[i]
        maps = []
        for r in range(R):
            m, error = _attempt(fn, E, R, r)
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
        return _compare(total, reference.moe_forward(x, w1, w2, logits, K), rtol=1e-4,
                        atol=1e-4, what=f"sum of the {R} ranks' outputs (E={E})")

    return _run_trials("moe_expert_map", len(cases), trial, what="(experts, ranks) splits",
                       hint="give rank r the contiguous block of experts [start, stop) with "
                            "start = r * E // R, stop = (r + 1) * E // R: emap = np.full(E, -1); "
                            "emap[start:stop] = np.arange(stop - start); return it as int32.")


def moe_roofline_floor(fn, *, trials: int = 5) -> bool:
    """Exercise (notebook 04): ``fn(num_tokens, hidden, intermediate, top_k, experts_used,
    bytes_per_element, peak_tflops, bandwidth_gbs)`` returns the layer's roofline floor in
    milliseconds: max(FLOPs / peak, bytes / bandwidth), FLOPs = 2*T*K*3*H*I, bytes = (the used
    experts' weights, 3*H*I each, + the input and output activations, 2*T*H) * bytes/elt."""
    from .bench import layer_cost, roofline_floor_ms
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
        got, error = _attempt(fn, T, H, I, K, used, b, peak, bw)
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
        why = next((n for n, v in hints.items() if abs(got - v) <= 1e-6 * max(v, 1e-30)), None)
        msg = f"{where}: got {got:.6g} ms, expected {want:.6g} ms"
        return False, msg + (f" — that is {why}" if why else "")

    return _run_trials("moe_roofline_floor", len(cases), trial, what="layer shapes",
                       hint="flops = 2*T*K*3*H*I; bytes = (used*3*H*I + 2*T*H) * bytes_per_"
                            "element; floor = max(flops / (peak_tflops*1e12), bytes / "
                            "(bandwidth_gbs*1e9)) * 1e3.")


# ---------------------------------------------------------------------------------------------
# Notebook 05: performance (the SwiGLU epilogue, intermediate traffic)
# ---------------------------------------------------------------------------------------------

def moe_swiglu_gemm(kernel, *, tile_m: int = 16, tile_n: int = 16, tile_k: int = 32,
                    trials: int = 4) -> bool:
    """Exercise (notebook 05): ``kernel(A, W_gate, W_up, C, TILE_M, TILE_N, TILE_K)`` is a
    dense GEMM with the SwiGLU epilogue: ``C = silu(A @ W_gate.T) * (A @ W_up.T)`` for ``A``
    (M, Kd), ``W_gate``/``W_up`` (N, Kd) (the ``nn.Linear`` layout), ``C`` (M, N), float32
    accumulation; grid ``(cdiv(M, TILE_M), cdiv(N, TILE_N))``; any M, N and Kd."""
    problem = _kernel_problem(kernel)
    if problem:
        return _report("moe_swiglu_gemm", False, problem)
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
        out = _poisoned(xp, (M, N), np.float32)
        grid = (-(-M // tile_m), -(-N // tile_n))
        _, error = _attempt(device.launch, grid, kernel,
                            (xp.asarray(a), xp.asarray(wg), xp.asarray(wu), out, tile_m, tile_n,
                             tile_k))
        if error:
            return False, error
        g = a.astype(np.float64) @ wg.T.astype(np.float64)
        u = a.astype(np.float64) @ wu.T.astype(np.float64)
        silu = lambda v: v / (1.0 + np.exp(-v))  # noqa: E731
        want = silu(g) * u
        ok, message = _compare(out, want, rtol=1e-4, atol=1e-5,
                               what=f"C (M={M}, N={N}, Kd={Kd})")
        if not ok:
            wrong = _matches(out, {
                "silu(gate) alone (the up product is missing)": silu(g),
                "the gate product alone (no up product, no silu)": g,
                "gate * up without the silu": g * u,
                "silu(up) * gate (gate and up swapped)": silu(u) * g,
                "silu(gate + up)": silu(g + u)}, rtol=1e-4, atol=1e-5)
            if wrong:
                message += f"; the result looks like {wrong}"
        return ok, message

    return _run_trials("moe_swiglu_gemm", len(cases), trial, what="matrix shapes",
                       hint="two float32 accumulators; in the k loop load one A tile and the "
                            "W_gate and W_up tiles of the same columns (order=(1, 0) or "
                            "ct.transpose gives (TILE_K, TILE_N)), two ct.mma; after the loop "
                            "store gate / (1 + ct.exp(-gate)) * up.")


def moe_intermediate_bytes(fn, *, trials: int = 5) -> bool:
    """Exercise (notebook 05): ``fn(num_tokens, top_k, intermediate, fused_swiglu,
    bytes_per_element)`` returns the bytes of the GEMM1 -> GEMM2 intermediate that travel
    through memory: unfused, GEMM1 writes (T*K, 2I), ``silu_and_mul`` reads it and writes
    (T*K, I), GEMM2 reads that; fused, GEMM1 writes (T*K, I) and GEMM2 reads it."""
    from .bench import intermediate_bytes
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
        got, error = _attempt(fn, T, K, I, fused, b)
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
        known = {"only the writes (or only the reads): each byte is written once and read "
                 "once": want // 2,
                 "elements instead of bytes": want // b,
                 "T*I rows instead of T*K (the replicas)": want // K}
        if not fused:
            known["GEMM1's write and GEMM2's read, without silu_and_mul's"] = \
                (rows * 2 * I + rows * I) * b
        why = next((n for n, v in known.items() if got == v), None)
        return False, f"{where}: got {got}, expected {want}" + (f" — that is {why}" if why
                                                                  else "")

    return _run_trials("moe_intermediate_bytes", len(cases), trial, what="layer shapes",
                       hint="rows = T*K; unfused: write 2I + read 2I (silu_and_mul) + write I + "
                            "read I (GEMM2) per row; fused: write I + read I; times "
                            "bytes_per_element.")


# ---------------------------------------------------------------------------------------------
# Notebook 05 (continued): slot order -- where did each replica go?
# ---------------------------------------------------------------------------------------------

def moe_slot_positions(kernel, *, tile_m: int = 8, trials: int = 4) -> bool:
    """Exercise (notebook 05): ``kernel(sorted_token_ids, positions, TILE_M)`` inverts the
    alignment: for every slot ``p`` that holds a replica ``r = sorted_token_ids[p]`` (not the
    sentinel ``T*K``), ``positions[r] = p``. ``positions`` is (T*K,) int32; grid
    ``(len(sorted_token_ids) // TILE_M,)``, one block per TILE_M slots. Replicas dropped by the
    routing (id -1) appear in no slot; their entries are not checked."""
    problem = _kernel_problem(kernel)
    if problem:
        return _report("moe_slot_positions", False, problem)
    from . import reference
    xp, rng = _xp(), _rng()
    cases = [(6, 2, 4, 0.0), (9, 3, 5, 0.2), (1, 1, 3, 0.0)]
    while len(cases) < trials:
        cases.append((int(rng.integers(1, 40)), int(rng.integers(1, 4)),
                      int(rng.integers(4, 12)), 0.1))
    cases = cases[:max(trials, 1)]

    def trial(i):
        T, K, E, drop = cases[i]
        ids = np.stack([rng.permutation(E)[:K] for _ in range(T)]).astype(np.int32)
        ids[rng.random((T, K)) < drop] = -1                  # a few replicas routed nowhere
        sorted_ids, _, _ = reference.align(ids, E, tile_m)
        R = T * K
        positions = _poisoned(xp, (R,), np.int32)
        grid = (len(sorted_ids) // tile_m,)
        _, error = _attempt(device.launch, grid, kernel,
                            (xp.asarray(sorted_ids), positions, tile_m))
        if error:
            return False, error
        slots = np.flatnonzero(sorted_ids < R)
        placed = sorted_ids[slots]                            # replica of each used slot
        got = device.to_numpy(positions)
        want = got.copy()
        want[placed] = slots                                  # only placed replicas are checked
        ok, message = _compare(got, want, what=f"positions (T={T}, K={K}, E={E}, "
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

    return _run_trials("moe_slot_positions", len(cases), trial, what="random routings",
                       hint="replicas = ct.load(sorted_token_ids, (ct.bid(0),), shape=(TILE_M,)); "
                            "slots = ct.bid(0) * TILE_M + ct.arange(TILE_M, dtype=ct.int32); "
                            "ct.scatter(positions, replicas, slots, mask=replicas < "
                            "positions.shape[0]) -- the sentinel T*K is out of range and must "
                            "not be stored.")
