"""Notebook 02: SiLU-and-mul (bytes moved, a row loop over column tiles, GeGLU)."""
from __future__ import annotations

import numpy as np

from .. import device
from .core import (HINTS, Verdict, attempt, compare, kernel_problem, looks_like, number_mistake,
                   poisoned, report,
                   run_trials)
from .core import rng as _rng, xp as _xp

HINTS.update({
    'silu_and_mul_bytes': (
        'Count elements first (what is read, what is written), then turn each count into bytes '
        'with its own dtype.',
        'the input is M x 2I elements of in_dtype (gate and up), the output M x I elements of '
        'out_dtype; bytes = elements x np.dtype(d).itemsize, summed.'),
    'silu_and_mul_row_loop': (
        'A row of width I needs how many (1, TILE_N) tiles? The starting version handles only the'
        ' first one.',
        'loop j over range(ct.num_tiles(out, axis=1, shape=(1, TILE_N))) and load, compute and '
        'store tile (row, j) in the loop body; zero padding keeps the last, partial tile clean.'),
    'geglu': (
        'Only the activation changes: compare your gelu with the formula in the exercise, term by'
        ' term (the 0.5, the cube, the constant under the square root).',
        "keep the tiled kernel's loads and store; replace silu by the tanh GELU of the exercise "
        'text, evaluated on the float32 tile g with ct.tanh, then multiply by u and convert to '
        'out.dtype.'),
})



def _swiglu_input(rng, M, I, dtype, scale=3.0):
    return (rng.standard_normal((M, 2 * I)) * scale).astype(dtype)


def _launch_gate_up(kernel, grid, x_host, out, *constants):
    """Launch ``kernel(gate, up, out, *constants)`` with gate/up the two halves of ``x_host``
    (as strided views on the backend of ``out``, like ``mt.activation.silu_and_mul`` does)."""
    xp = device.array_module(out)
    x = xp.asarray(x_host)
    I = x.shape[1] // 2
    return attempt(device.launch, grid, kernel, (x[:, :I], x[:, I:], out, *constants))


def silu_and_mul_bytes(fn, *, trials: int = 6, hint: int = 0) -> Verdict:
    """Exercise: ``fn(M, I, in_dtype, out_dtype)`` returns the number of bytes a perfect
    silu_and_mul kernel moves through memory for an ``(M, 2I)`` input of ``in_dtype`` and an
    ``(M, I)`` output of ``out_dtype`` (each element read or written exactly once)."""
    from .. import activation
    rng = _rng()
    f16, f32 = np.float16, np.float32
    cases = [(8192, 2048, f16, f16), (3, 5, f32, f16), (1, 1, f32, f32), (7, 1408, f16, f32)]
    while len(cases) < trials:
        din, dout = (f16, f32)[int(rng.integers(2))], (f16, f32)[int(rng.integers(2))]
        cases.append((int(rng.integers(1, 10000)), int(rng.integers(1, 8000)), din, dout))

    def trial(i):
        M, I, din, dout = cases[i]
        want = activation.bytes_moved(M, I, din, dout)
        got, error = attempt(fn, M, I, din, dout)
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
        why = next((text for value, text in guesses if value == got_i), None) or \
            number_mistake(got_i, want, {})
        msg = (f"bytes_moved({M}, {I}, {np.dtype(din).name}, {np.dtype(dout).name}) returned "
               f"{got_i}, expected {want}")
        return False, msg + (f" — {why}" if why else "")

    return run_trials("silu_and_mul_bytes", len(cases), trial, what="problem sizes",
                      level=hint)


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


def silu_and_mul_row_loop(kernel, *, tile_n: int = 32, trials: int = 6, hint: int = 0) -> Verdict:
    """Exercise: ``kernel(gate, up, out, TILE_N)``, launched on the grid ``(M,)``, writes
    ``out[m, :] = silu(gate[m, :]) * up[m, :]`` for rows of ANY width I, one block per row,
    looping over the row in ``(1, TILE_N)`` tiles (so a fixed TILE_N serves every width)."""
    from .. import activation
    problem = kernel_problem(kernel)
    if problem:
        return report("silu_and_mul_row_loop", False, problem, level=hint)
    xp, rng = _xp(), _rng()
    widths = [tile_n * 3, tile_n * 2 + 5, tile_n - 1, 1, 7 * tile_n + 3]
    widths += [int(w) for w in rng.integers(2, tile_n * 6, size=max(trials - len(widths), 0))]
    widths = widths[:max(trials, 1)]
    dtypes = [np.float32, np.float16]

    def trial(i):
        M, I, dtype = int(rng.integers(1, 9)), widths[i], dtypes[i % 2]
        x = _swiglu_input(rng, M, I, dtype)
        out = poisoned(xp, (M, I), dtype)
        _, error = _launch_gate_up(kernel, (M,), x, out, tile_n)
        if error:
            return False, error
        rtol, atol = activation.tolerance(dtype)
        ok, message = compare(out, activation.silu_and_mul_reference(x), rtol=rtol, atol=atol,
                               what=f"out ({M}x{I}, {np.dtype(dtype).name}, TILE_N={tile_n})")
        if not ok:
            message += looks_like(out, _swiglu_wrong_answers(x), rtol=10 * rtol, atol=10 * atol)
        return ok, message

    return run_trials("silu_and_mul_row_loop", len(widths), trial, what="widths",
                      level=hint)


def gelu_tanh_reference(g):
    """float64 GELU, tanh approximation: 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))."""
    g = np.asarray(g, dtype=np.float64)
    return 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g ** 3)))


def geglu(kernel, *, tile_m: int = 8, tile_n: int = 32, trials: int = 5, hint: int = 0) -> Verdict:
    """Exercise: ``kernel(gate, up, out, TILE_M, TILE_N)`` writes ``gelu_tanh(gate) * up`` (the
    GeGLU activation) with one ``(TILE_M, TILE_N)`` tile per block on the grid
    ``(cdiv(M, TILE_M), cdiv(I, TILE_N))``, math in float32."""
    problem = kernel_problem(kernel)
    if problem:
        return report("geglu", False, problem, level=hint)
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
        out = poisoned(xp, (M, I), dtype)
        grid = (-(-M // tile_m), -(-I // tile_n))
        _, error = _launch_gate_up(kernel, grid, x, out, tile_m, tile_n)
        if error:
            return False, error
        x64 = x.astype(np.float64)
        g, u = x64[:, :I], x64[:, I:]
        rtol, atol = tolerances[dtype]
        ok, message = compare(out, gelu_tanh_reference(g) * u, rtol=rtol, atol=atol,
                               what=f"out ({M}x{I}, {np.dtype(dtype).name})")
        if not ok:
            from math import erf
            gelu_erf = 0.5 * g * (1.0 + np.vectorize(erf)(g / np.sqrt(2.0)))
            message += looks_like(out, {
                **_swiglu_wrong_answers(x),
                "silu(gate) * up — that is SwiGLU; GeGLU uses gelu instead of silu":
                    g / (1.0 + np.exp(-g)) * u,
                "the exact (erf) GELU; this exercise uses the tanh approximation":
                    gelu_erf * u,
                "gelu(up) * gate (the halves are swapped)": gelu_tanh_reference(u) * g,
                "gelu(gate) without the multiplication by up": gelu_tanh_reference(g)},
                rtol=10 * rtol, atol=10 * atol)
        return ok, message

    return run_trials("geglu", len(shapes), trial, what="random inputs",
                      level=hint)
