"""The skeleton every checker shares: fresh trials, a comparison with a float64 reference that
names the usual mistakes, and a PASS/FAIL verdict with hints on request.

A checker runs ``trial(i) -> (ok, message)`` for a few inputs (``run_trials``), stops at the first
failure and prints one plain-text line starting with ``PASS`` or ``FAIL``. It never raises for a
learner's bug. Asked with ``hint=1`` it adds a nudge, with ``hint=2`` the recipe; the full
solutions live only in ``notebooks/solutions/``. It returns a ``Verdict``: true when the answer
passed, and silent as the last expression of a notebook cell.
"""
from __future__ import annotations

import traceback

import numpy as np

from .. import device
from ..routing import next_power_of_2 as pow2  # noqa: F401 (the checkers use it)

#: Written into integer outputs before a kernel runs: an element that still holds it was never
#: written.
INT_SENTINEL = -123456789
#: Written into float outputs before a kernel runs (exact in float16, bfloat16 and float32, and
#: never the answer to a random input): NaN stays free to mean "the kernel computed NaN".
FLOAT_POISON = -12288.0

#: name -> (nudge, recipe); each notebook's module adds its own.
HINTS: dict[str, tuple[str, str]] = {}


class Verdict:
    """A checker's result: ``bool(verdict)`` says whether it passed; ``message`` is the line
    printed. A notebook cell ending in a checker call shows only the printed text."""

    def __init__(self, name: str, passed: bool, message: str):
        self.name, self.passed, self.message = name, bool(passed), message

    def __bool__(self):
        return self.passed

    def __repr__(self):
        return f"<{'PASS' if self.passed else 'FAIL'} {self.name}>"

    def _ipython_display_(self):
        """Display nothing: the checker already printed its verdict."""


def hint(name: str, level: int = 1) -> None:
    """Print the nudge (``level=1``) or the recipe (``level=2``) of exercise ``name``."""
    if name not in HINTS:
        raise KeyError(f"no exercise named {name!r}; known: {', '.join(sorted(HINTS))}")
    nudge, recipe = HINTS[name]
    print(f"hint: {nudge}" if level < 2 else f"recipe: {recipe}")


def _sentinel(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or dtype.name == "bfloat16":
        return FLOAT_POISON
    if dtype.kind == "b":
        return True
    if dtype.kind == "u":
        return np.iinfo(dtype).max
    info = np.iinfo(dtype)
    return INT_SENTINEL if info.min <= INT_SENTINEL <= info.max else info.min


def poisoned(xp, shape, dtype):
    """An array of ``shape`` filled with ``FLOAT_POISON`` (floats) or a sentinel (integers):
    whatever a kernel fails to write stays recognisable."""
    return xp.full(shape, _sentinel(dtype), dtype=dtype)


def _fmt_index(idx) -> str:
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def _fmt_value(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(v)


def signature(got, want) -> str | None:
    """The known shape of a mistake, if the whole result has one: a constant factor (x2, x0.5,
    x-1) or a transposed result."""
    g, w = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if g.ndim == 2 and g.shape == w.T.shape and g.shape[0] > 1 and g.shape[1] > 1:
        if np.allclose(g, w.T, rtol=1e-3, atol=1e-5):
            return "the result is the transpose of the expected one (row and column swapped)"
    if g.shape != w.shape:
        return None
    scale = max(np.abs(w).max(initial=0), 1e-30)
    both = np.isfinite(g) & np.isfinite(w) & (np.abs(w) > 1e-3 * scale)
    if both.sum() < 1:
        return None
    ratio = g[both] / w[both]
    for factor, text in ((2.0, "twice"), (0.5, "half"), (-1.0, "minus")):
        if np.allclose(ratio, factor, rtol=2e-2):
            return (f"every element is {text} the expected value (ratio x{factor:g}): look for a "
                    f"missing or extra factor" + (" such as 0.5 or a size in bytes"
                                                  if factor != -1 else " of -1 (a sign)"))
    return None


def compare(got, want, rtol: float = 1e-5, atol: float = 1e-6, *,
            what: str = "output") -> tuple[bool, str]:
    """``(True, summary)`` if ``got`` matches ``want`` (``|got - want| <= atol + rtol * |want|``
    elementwise), else ``(False, the first thing to fix)``: a wrong shape, elements never
    written, NaN the kernel computed, a known signature, or the worst element and its index."""
    if got is None or not hasattr(got, "shape"):
        return False, f"{what}: expected an array, got {type(got).__name__}"
    try:
        got = device.to_numpy(got)
    except Exception as e:  # noqa: BLE001 - the learner may hand back anything
        return False, f"{what}: could not read the result as an array ({type(e).__name__}: {e})"
    want = np.asarray(want)
    if got.shape != want.shape:
        sig = signature(got, want)
        return False, f"{what} has shape {got.shape}, expected {want.shape}" + (
            f" -- {sig}" if sig else "")

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
    unwritten = (g == FLOAT_POISON) & (w != FLOAT_POISON)
    if unwritten.any():
        return False, _unwritten_message(what, unwritten)
    nan = np.isnan(g) & ~np.isnan(w)
    if nan.any():
        idx = np.argwhere(nan)
        return False, (f"{what} element {_fmt_index(idx[0])} is NaN, expected "
                       f"{_fmt_value(w[tuple(idx[0])])} ({len(idx)} of {nan.size} elements are "
                       f"NaN). NaN usually comes from a load past the edge of an array without "
                       f"padding_mode=ct.PaddingMode.ZERO (the padding is undetermined), or "
                       f"from inf / inf after exp overflowed")
    same_special = (np.isnan(g) & np.isnan(w)) | (np.isinf(w) & (g == w))
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(same_special, 0.0, np.abs(g - w))
        limit = atol + rtol * np.abs(np.where(np.isfinite(w), w, 0.0))
        bad = ~(err <= limit)  # catches inf errors too
    if bad.any():
        sig = signature(g, w)
        if sig:
            return False, f"{what}: {sig}"
        with np.errstate(invalid="ignore", divide="ignore"):
            excess = np.where(bad, np.nan_to_num(err / limit, nan=np.inf, posinf=np.inf), -1.0)
        idx = np.unravel_index(int(np.argmax(excess)), excess.shape)
        message = (f"{what} element {_fmt_index(idx)} is {_fmt_value(g[idx])}, expected "
                   f"{_fmt_value(w[idx])} (error {_fmt_value(err[idx])} > tolerance "
                   f"{_fmt_value(limit[idx])}; {int(bad.sum())} of {bad.size} elements "
                   f"are off, rtol={rtol:g}, atol={atol:g})")
        finite_w = np.abs(w[np.isfinite(w)])
        if np.isfinite(g).all() and np.abs(g).max(initial=0) > 100 * max(
                finite_w.max(initial=0), 1e-3):
            message += (". Some results are far too large: a load past the edge of an array "
                        "without padding_mode=ct.PaddingMode.ZERO reads undetermined values "
                        "(the CPU emulator stands in 1024 for them)")
        return False, message
    worst = float(err.max()) if err.size else 0.0
    return True, f"{what}: max abs error {worst:.3g} (rtol={rtol:g}, atol={atol:g})"


def _unwritten_message(what, unwritten) -> str:
    idx = np.argwhere(unwritten)
    return (f"{what} element {_fmt_index(idx[0])} was never written ({len(idx)} of "
            f"{unwritten.size} elements still hold the poison value). Does the grid cover the "
            f"whole output, and does every block store its tile?")


def number_mistake(got: float, want: float, known: dict[str, float]) -> str | None:
    """The name of the known wrong value ``got`` equals (relative 1e-6), else its signature as
    a ratio (x2, x0.5, x1000, ...), else None."""
    for name, value in known.items():
        if abs(got - value) <= 1e-6 * max(abs(value), 1e-30):
            return name
    if want:
        ratio = got / want
        for factor in (2.0, 0.5, 1e3, 1e-3, 8.0, 0.125):
            if abs(ratio - factor) <= 1e-6 * factor:
                return f"x{factor:g} the expected value: a factor {factor:g} too many or too few"
    return None


def report(name: str, ok: bool, details: str = "", *, level: int = 0) -> Verdict:
    """Print ``PASS name: details`` or ``FAIL name: details`` (plus the hint of ``level`` on a
    failure) and return the ``Verdict``."""
    head = "PASS" if ok else "FAIL"
    line = f"{head} {name}: {details or ('correct' if ok else 'not correct yet')}"
    print(line)
    if not ok and name in HINTS:
        nudge, recipe = HINTS[name]
        if level <= 0:
            print(f"     stuck? run the check again with hint=1 for a nudge, hint=2 for the "
                  f"recipe")
        elif level == 1:
            print(f"     hint: {nudge}\n     (hint=2 gives the recipe)")
        else:
            print(f"     recipe: {recipe}")
    return Verdict(name, ok, line)


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


#: The last kernel launch a checker made through ``attempt(device.launch, ...)``: kernel, grid
#: and host copies of the arguments taken before the launch, so ``picture()`` can replay it.
_last_launch = None


def attempt(fn, *args, **kwargs):
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


def run_trials(name: str, trials: int, trial, *, what: str = "random inputs",
               level: int = 0) -> Verdict:
    """Run ``trial(i) -> (ok, message)`` for ``i in range(trials)``; report the first failure
    (with the hint of ``level``) or, if all pass, "correct on N <what>". A failure after a
    kernel launch also offers ``picture()``."""
    global _last_launch
    _last_launch = None
    for i in range(trials):
        try:
            ok, message = trial(i)
        except Exception as e:  # noqa: BLE001 - an exception is feedback, not a crash
            ok, message = False, _describe_exception(e)
        if not ok:
            verdict = report(name, False, f"case {i + 1} of {trials}: {message}", level=level)
            if _last_launch is not None:
                print("     see where your kernel read and wrote: mt.check.picture()")
            return verdict
    return report(name, True, f"correct on {trials} {what}")


def picture(block=None, **plot_options):
    """Replay the last kernel launch a checker made (with the same inputs) on the CPU emulator
    and draw what every block read and wrote (see ``mt.trace``); returns the ``Trace``."""
    if _last_launch is None:
        print("No checker has launched a kernel yet: run a checker first.")
        return None
    from ..trace import trace
    kernel, grid, args = _last_launch
    tr = trace(kernel, grid, args)
    tr.plot(block=block, **plot_options)
    return tr


def rng(seed=None) -> np.random.Generator:
    """Fresh inputs every call unless a seed is given."""
    return np.random.default_rng(seed)


def xp():
    """The array module checkers run on: CuPy on a GPU, NumPy (emulator) otherwise."""
    return device.get_xp()


def kernel_problem(kernel) -> str | None:
    """``None`` if ``kernel`` is a ``@ct.kernel`` function, else a sentence saying what to fix."""
    import cuda.tile as ct
    if isinstance(kernel, ct.kernel):
        return None
    if callable(kernel):
        return (f"{getattr(kernel, '__name__', 'this function')} is a plain Python function; "
                f"decorate it with @ct.kernel")
    return f"expected a @ct.kernel function, got {type(kernel).__name__}"


def looks_like(got, candidates: dict, rtol: float = 1e-5, atol: float = 1e-6) -> str:
    """``"; the result looks like <name>"`` for the first name in ``candidates`` (name -> array
    of a typical wrong answer) whose array ``got`` matches, else ``""``: the end of a FAIL
    message."""
    try:
        g = device.to_numpy(got).astype(np.float64)
    except Exception:  # noqa: BLE001
        return ""
    for name, c in candidates.items():
        c = np.asarray(c, dtype=np.float64)
        if c.shape == g.shape and np.allclose(g, c, rtol=rtol, atol=atol):
            return f"; the result looks like {name}"
    return ""
