"""moe_tutorial.check: the core skeleton and notebook 00's checkers. A checker's verdict is true
for a right answer, false (with specific feedback) for a wrong one, and it never raises for
learner bugs. Notebooks 01-05's checkers: tests/test_check_lessons.py."""
import cuda.tile as ct
import ml_dtypes
import numpy as np
import pytest

import moe_tutorial as mt
from moe_tutorial import check
from moe_tutorial.check import core


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def on_backend(request, monkeypatch):
    """Checkers run on the default backend: make it the emulator, then (-m gpu) the GPU."""
    monkeypatch.setenv("MOE_TUTORIAL_DEVICE", request.param)
    return request.param


# --- _compare -------------------------------------------------------------------------------

def test_compare_accepts_within_tolerance():
    want = np.linspace(-1, 1, 50)
    ok, msg = core.compare((want * (1 + 1e-7)).astype(np.float32), want, rtol=1e-5, atol=0)
    assert ok and "max abs error" in msg


def test_compare_reports_the_worst_element():
    want = np.arange(12.0).reshape(3, 4)
    got = want.copy()
    got[0, 1] += 0.01
    got[2, 3] += 5.0
    ok, msg = core.compare(got, want, rtol=1e-6, atol=1e-6)
    assert not ok
    assert "element [2, 3] is 16, expected 11" in msg and "2 of 12 elements" in msg


def test_compare_worst_is_relative_to_tolerance():
    want = np.array([1000.0, 0.0])
    got = np.array([1000.5, 0.01])  # 0.5 abs error is within rtol of 1000; 0.01 is not within atol
    ok, msg = core.compare(got, want, rtol=1e-3, atol=1e-4)
    assert not ok and "element [1]" in msg and "1 of 2" in msg


def test_compare_detects_unwritten_elements():
    want = np.ones(8)
    got = core.poisoned(np, 8, np.float32)
    got[:5] = 1
    ok, msg = core.compare(got, want)
    assert not ok and "element [5] was never written" in msg and "3 of 8" in msg


def test_compare_names_computed_nan():
    want = np.ones(8)
    got = np.ones(8, np.float32)
    got[6] = np.nan
    ok, msg = core.compare(got, want)
    assert not ok and "element [6] is NaN" in msg and "padding_mode=ct.PaddingMode.ZERO" in msg
    assert "never written" not in msg


def test_compare_points_at_padding_when_results_blow_up():
    want = np.random.default_rng(2).standard_normal((4, 6))
    got = want.copy()
    got[:, -1] = 1024.0 * 1024.0                  # undetermined padding summed into a row
    ok, msg = core.compare(got, want)
    assert not ok and "far too large" in msg and "padding_mode=ct.PaddingMode.ZERO" in msg


@pytest.mark.parametrize("factor, words", [(2.0, "twice"), (0.5, "half"), (-1.0, "minus")])
def test_compare_names_a_constant_factor(factor, words):
    want = np.random.default_rng(0).standard_normal((5, 7))
    ok, msg = core.compare(want * factor, want)
    assert not ok and f"every element is {words} the expected value (ratio x{factor:g})" in msg


def test_compare_names_a_transposed_result():
    want = np.random.default_rng(1).standard_normal((4, 4))
    ok, msg = core.compare(want.T.copy(), want)
    assert not ok and "transpose" in msg
    ok, msg = core.compare(want[:3].T.copy(), want[:3])
    assert not ok and "has shape (4, 3), expected (3, 4)" in msg and "transpose" in msg


def test_number_mistake():
    assert core.number_mistake(3.0, 1.0, {"the compute time": 3.0}) == "the compute time"
    assert "x2 the expected" in core.number_mistake(10.0, 5.0, {})
    assert "x0.001" in core.number_mistake(0.005, 5.0, {})
    assert core.number_mistake(7.0, 5.0, {}) is None


def test_compare_nan_where_reference_is_nan_is_fine():
    want = np.array([1.0, np.nan, np.inf])
    ok, _ = core.compare(want.copy(), want)
    assert ok
    ok, msg = core.compare(np.array([1.0, np.nan, 1e30]), want)
    assert not ok and "element [2]" in msg


def test_compare_shape_mismatch():
    ok, msg = core.compare(np.zeros((2, 3)), np.arange(6.0).reshape(3, 2), what="out")
    assert not ok and msg == "out has shape (2, 3), expected (3, 2)"


def test_compare_integers():
    want = np.array([1, 2, 3, 4])
    ok, _ = core.compare(want.astype(np.int32), want)
    assert ok
    ok, msg = core.compare(np.array([1, 2, 7, 4], np.int32), want)
    assert not ok and "element [2] is 7, expected 3" in msg
    unwritten = core.poisoned(np, 4, np.int32)
    unwritten[:2] = [1, 2]
    ok, msg = core.compare(unwritten, want)
    assert not ok and "element [2] was never written" in msg


def test_compare_bfloat16():
    want = np.linspace(-3, 3, 40)
    ok, _ = core.compare(want.astype(ml_dtypes.bfloat16), want, rtol=2 ** -8, atol=0)
    assert ok


def test_compare_non_array_result():
    ok, msg = core.compare(None, np.zeros(3))
    assert not ok and "expected an array" in msg


def test_poisoned():
    assert (core.poisoned(np, (2, 3), np.float16) == core.FLOAT_POISON).all()
    assert (core.poisoned(np, 3, ml_dtypes.bfloat16).astype(np.float32) == core.FLOAT_POISON).all()
    assert (core.poisoned(np, 3, np.int32) == core.INT_SENTINEL).all()
    assert (core.poisoned(np, 3, np.int8) == -128).all()
    assert (core.poisoned(np, 3, np.uint16) == 65535).all()


# --- _report, _attempt, _run_trials ---------------------------------------------------------

def test_report(capsys):
    assert core.report("thing", True, "correct on 3 inputs")
    assert not core.report("thing", False, "element [1] is 2")
    out = capsys.readouterr().out.splitlines()
    assert out == ["PASS thing: correct on 3 inputs", "FAIL thing: element [1] is 2"]


def test_hints_come_on_request(capsys, monkeypatch):
    monkeypatch.setitem(core.HINTS, "thing", ("NUDGE", "RECIPE"))
    core.report("thing", False, "wrong")
    out = capsys.readouterr().out
    assert "hint=1" in out and "NUDGE" not in out and "RECIPE" not in out
    core.report("thing", False, "wrong", level=1)
    out = capsys.readouterr().out
    assert "hint: NUDGE" in out and "RECIPE" not in out
    core.report("thing", False, "wrong", level=2)
    assert "recipe: RECIPE" in capsys.readouterr().out
    check.hint("thing", 2)
    assert capsys.readouterr().out == "recipe: RECIPE\n"
    with pytest.raises(KeyError, match="no exercise named"):
        check.hint("nothing")


def test_every_checker_has_a_nudge_and_a_recipe():
    names = [n for n in check.__all__ if callable(getattr(check, n)) and n not in
             ("Verdict", "hint", "picture", "gelu_tanh_reference")]
    assert sorted(names) == sorted(check.HINTS)
    for nudge, recipe in check.HINTS.values():
        assert nudge and recipe and nudge != recipe


def test_verdict_shows_nothing_in_a_notebook():
    from IPython.core.formatters import DisplayFormatter
    verdict = core.Verdict("thing", False, "FAIL thing: x")
    assert DisplayFormatter().format(verdict) == ({}, {})  # no Out[...] after a checker cell
    assert not verdict and repr(verdict) == "<FAIL thing>"
    assert core.Verdict("thing", True, "")


def test_attempt_turns_exceptions_into_messages():
    def learner(x):
        return x / 0

    result, error = core.attempt(learner, 1)
    assert result is None and error.startswith("your code raised ZeroDivisionError")
    assert core.attempt(lambda x: x + 1, 1) == (2, None)


def test_attempt_keeps_exception_notes():
    def learner():
        e = IndexError("index 9 out of range")
        e.__notes__ = ["raised in block (3, 0, 0)"]  # what add_note() does (3.11+)
        raise e

    _, error = core.attempt(learner)
    assert "IndexError: index 9 out of range" in error and "block (3, 0, 0)" in error


def test_attempt_explains_tile_errors():
    def learner():
        raise ct.TileTypeError("shape is not a power of two")

    _, error = core.attempt(learner)
    assert "cuTile rejected the kernel (TypeCheckingError)" in error
    assert "shape is not a power of two" in error


def test_run_trials_stops_at_first_failure(capsys):
    seen = []

    def trial(i):
        seen.append(i)
        return (i < 2), f"trial {i}"

    assert not core.run_trials("demo", 5, trial)
    assert seen == [0, 1, 2]
    assert "FAIL demo: case 3 of 5: trial 2" in capsys.readouterr().out


def test_run_trials_reports_exceptions(capsys):
    def trial(i):
        raise KeyError("boom")

    assert not core.run_trials("demo", 2, trial)
    assert "raised KeyError" in capsys.readouterr().out


def test_kernel_problem():
    assert core.kernel_problem(mt.vector_add_kernel) is None
    assert "decorate it with @ct.kernel" in core.kernel_problem(lambda: None)
    assert "expected a @ct.kernel" in core.kernel_problem(3)


# --- notebook 00 checkers -------------------------------------------------------------------

def test_num_tiles_checker(capsys):
    assert check.num_tiles(lambda s, t: tuple(ct.cdiv(a, b) for a, b in zip(s, t)))
    assert not check.num_tiles(lambda s, t: tuple(a // b for a, b in zip(s, t)))
    assert "floor division" in capsys.readouterr().out
    assert not check.num_tiles(lambda s, t: [1] * len(s))
    assert not check.num_tiles(lambda s, t: None)
    assert not check.num_tiles(lambda s: s)  # wrong signature: feedback, not a crash


@ct.kernel
def _axpy_right(alpha, x, y, out, TILE: ct.Constant[int]):
    bid = ct.bid(0)
    xt = ct.load(x, index=(bid,), shape=(TILE,))
    yt = ct.load(y, index=(bid,), shape=(TILE,))
    ct.store(out, index=(bid,), tile=alpha * xt + yt)


@ct.kernel
def _axpy_no_alpha(alpha, x, y, out, TILE: ct.Constant[int]):
    bid = ct.bid(0)
    xt = ct.load(x, index=(bid,), shape=(TILE,))
    yt = ct.load(y, index=(bid,), shape=(TILE,))
    ct.store(out, index=(bid,), tile=xt + yt)


@ct.kernel
def _axpy_half_grid(alpha, x, y, out, TILE: ct.Constant[int]):
    bid = ct.bid(0)  # stores only the even tiles: odd tiles stay unwritten
    if bid % 2 == 0:
        xt = ct.load(x, index=(bid,), shape=(TILE,))
        yt = ct.load(y, index=(bid,), shape=(TILE,))
        ct.store(out, index=(bid,), tile=alpha * xt + yt)


def test_axpy_checker(on_backend, capsys):
    assert check.axpy(_axpy_right)
    assert not check.axpy(_axpy_no_alpha)
    assert "looks like x + y (alpha is ignored)" in capsys.readouterr().out
    assert not check.axpy(_axpy_half_grid)
    assert "never written" in capsys.readouterr().out
    assert not check.axpy(_axpy_right.__wrapped__ if hasattr(_axpy_right, "__wrapped__")
                          else _axpy_right._pyfunc)
    assert "decorate it with @ct.kernel" in capsys.readouterr().out


@ct.kernel
def _add_bias_right(x, bias, out, TILE_M: ct.Constant[int], TILE_N: ct.Constant[int]):
    i, j = ct.bid(0), ct.bid(1)
    xt = ct.load(x, index=(i, j), shape=(TILE_M, TILE_N))
    bt = ct.load(bias, index=(j,), shape=(TILE_N,))
    ct.store(out, index=(i, j), tile=xt + bt)


@ct.kernel
def _add_bias_wrong_tile(x, bias, out, TILE_M: ct.Constant[int], TILE_N: ct.Constant[int]):
    i, j = ct.bid(0), ct.bid(1)
    xt = ct.load(x, index=(i, j), shape=(TILE_M, TILE_N))
    bt = ct.load(bias, index=(0,), shape=(TILE_N,))  # always the first bias tile
    ct.store(out, index=(i, j), tile=xt + bt)


@ct.kernel
def _add_bias_broken(x, bias, out, TILE_M: ct.Constant[int], TILE_N: ct.Constant[int]):
    i = ct.bid(0)
    xt = ct.load(x, index=(i,), shape=(TILE_M, TILE_N))  # 1 index for a 2-D array
    ct.store(out, index=(i, 0), tile=xt)


def test_add_bias_checker(on_backend, capsys):
    assert check.add_bias(_add_bias_right)
    assert not check.add_bias(_add_bias_wrong_tile)
    out = capsys.readouterr().out
    assert "FAIL add_bias" in out and "hint=1" in out
    assert not check.add_bias(_add_bias_broken)  # an error in the kernel is feedback
    assert "FAIL add_bias" in capsys.readouterr().out
