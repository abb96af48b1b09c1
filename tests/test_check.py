"""moe_tutorial.check: the core helpers and notebook 00's checkers. A checker must say True for a
right answer, False (with specific feedback) for a wrong one, and never raise for learner bugs."""
import cuda.tile as ct
import ml_dtypes
import numpy as np
import pytest

import moe_tutorial as mt
from moe_tutorial import check


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def on_backend(request, monkeypatch):
    """Checkers run on the default backend: make it the emulator, then (-m gpu) the GPU."""
    monkeypatch.setenv("MOE_TUTORIAL_DEVICE", request.param)
    return request.param


# --- _compare -------------------------------------------------------------------------------

def test_compare_accepts_within_tolerance():
    want = np.linspace(-1, 1, 50)
    ok, msg = check._compare((want * (1 + 1e-7)).astype(np.float32), want, rtol=1e-5, atol=0)
    assert ok and "max abs error" in msg


def test_compare_reports_the_worst_element():
    want = np.arange(12.0).reshape(3, 4)
    got = want.copy()
    got[0, 1] += 0.01
    got[2, 3] += 5.0
    ok, msg = check._compare(got, want, rtol=1e-6, atol=1e-6)
    assert not ok
    assert "element [2, 3] is 16, expected 11" in msg and "2 of 12 elements" in msg


def test_compare_worst_is_relative_to_tolerance():
    want = np.array([1000.0, 0.0])
    got = np.array([1000.5, 0.01])  # 0.5 abs error is within rtol of 1000; 0.01 is not within atol
    ok, msg = check._compare(got, want, rtol=1e-3, atol=1e-4)
    assert not ok and "element [1]" in msg and "1 of 2" in msg


def test_compare_detects_unwritten_nan():
    want = np.ones(8)
    got = np.ones(8, np.float32)
    got[5:] = np.nan
    ok, msg = check._compare(got, want)
    assert not ok and "element [5] was never written" in msg and "3 of 8" in msg


def test_compare_nan_where_reference_is_nan_is_fine():
    want = np.array([1.0, np.nan, np.inf])
    ok, _ = check._compare(want.copy(), want)
    assert ok
    ok, msg = check._compare(np.array([1.0, np.nan, 1e30]), want)
    assert not ok and "element [2]" in msg


def test_compare_shape_mismatch():
    ok, msg = check._compare(np.zeros((2, 3)), np.zeros((3, 2)), what="out")
    assert not ok and msg == "out has shape (2, 3), expected (3, 2)"


def test_compare_integers():
    want = np.array([1, 2, 3, 4])
    ok, _ = check._compare(want.astype(np.int32), want)
    assert ok
    ok, msg = check._compare(np.array([1, 2, 7, 4], np.int32), want)
    assert not ok and "element [2] is 7, expected 3" in msg
    unwritten = check._poisoned(np, 4, np.int32)
    unwritten[:2] = [1, 2]
    ok, msg = check._compare(unwritten, want)
    assert not ok and "element [2] was never written" in msg


def test_compare_bfloat16():
    want = np.linspace(-3, 3, 40)
    ok, _ = check._compare(want.astype(ml_dtypes.bfloat16), want, rtol=2 ** -8, atol=0)
    assert ok


def test_compare_non_array_result():
    ok, msg = check._compare(None, np.zeros(3))
    assert not ok and "expected an array" in msg


def test_poisoned():
    assert np.isnan(check._poisoned(np, (2, 3), np.float16)).all()
    assert np.isnan(check._poisoned(np, 3, ml_dtypes.bfloat16).astype(np.float32)).all()
    assert (check._poisoned(np, 3, np.int32) == check.INT_SENTINEL).all()
    assert (check._poisoned(np, 3, np.int8) == -128).all()
    assert (check._poisoned(np, 3, np.uint16) == 65535).all()


# --- _report, _attempt, _run_trials ---------------------------------------------------------

def test_report(capsys):
    assert check._report("thing", True, "correct on 3 inputs") is True
    assert check._report("thing", False, "element [1] is 2", hint="look at the grid") is False
    out = capsys.readouterr().out.splitlines()
    assert out == ["✅ thing: correct on 3 inputs", "❌ thing: element [1] is 2",
                   "   hint: look at the grid"]


def test_attempt_turns_exceptions_into_messages():
    def learner(x):
        return x / 0

    result, error = check._attempt(learner, 1)
    assert result is None and error.startswith("your code raised ZeroDivisionError")
    assert check._attempt(lambda x: x + 1, 1) == (2, None)


def test_attempt_keeps_exception_notes():
    def learner():
        e = IndexError("index 9 out of range")
        e.__notes__ = ["raised in block (3, 0, 0)"]  # what add_note() does (3.11+)
        raise e

    _, error = check._attempt(learner)
    assert "IndexError: index 9 out of range" in error and "block (3, 0, 0)" in error


def test_attempt_explains_tile_errors():
    def learner():
        raise ct.TileTypeError("shape is not a power of two")

    _, error = check._attempt(learner)
    assert "cuTile rejected the kernel (TypeCheckingError)" in error
    assert "shape is not a power of two" in error


def test_run_trials_stops_at_first_failure(capsys):
    seen = []

    def trial(i):
        seen.append(i)
        return (i < 2), f"trial {i}"

    assert check._run_trials("demo", 5, trial, hint="h") is False
    assert seen == [0, 1, 2]
    assert "❌ demo: case 3 of 5: trial 2" in capsys.readouterr().out


def test_run_trials_reports_exceptions(capsys):
    def trial(i):
        raise KeyError("boom")

    assert check._run_trials("demo", 2, trial) is False
    assert "raised KeyError" in capsys.readouterr().out


def test_kernel_problem():
    assert check._kernel_problem(mt.vector_add_kernel) is None
    assert "decorate it with @ct.kernel" in check._kernel_problem(lambda: None)
    assert "expected a @ct.kernel" in check._kernel_problem(3)


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
    assert "❌ add_bias" in out and "hint:" in out
    assert not check.add_bias(_add_bias_broken)  # an error in the kernel is feedback
    assert "❌ add_bias" in capsys.readouterr().out
