"""Every elementwise, reduction, scan, shape and matmul operation of the emulator against NumPy,
for each dtype. Each test launches a small kernel through ``moe_tutorial.launch``, so under
``pytest -m gpu`` the same kernel runs through ``ct.launch`` and the GPU must agree with the
float64 NumPy reference to the same tolerance: that is the emulator-vs-GPU agreement test."""
import ml_dtypes
import numpy as np
import pytest

import cuda.tile as ct
import moe_tutorial as mt

N, TILE = 64, 16  # 4 blocks per elementwise launch

INT_DTYPES = [np.int8, np.int32, np.int64, np.uint8, np.uint32]
FLOAT_DTYPES = [np.float16, np.float32, np.float64, ml_dtypes.bfloat16]
ALL_DTYPES = INT_DTYPES + FLOAT_DTYPES


def _name(dtype) -> str:
    return np.dtype(dtype).name


def _skip_unsupported(xp, *dtypes):
    if xp is not np and any(np.dtype(d) == np.dtype(ml_dtypes.bfloat16) for d in dtypes):
        pytest.skip("CuPy has no bfloat16")


def _is_float(dtype) -> bool:
    return np.dtype(dtype).kind == "f" or np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16)


def _eps(dtype) -> float:
    return float(ml_dtypes.finfo(dtype).eps)


def _random(rng, dtype, n=N, *, low=None, high=None, nonzero=False):
    """Random values that fit ``dtype`` (floats: normal; ints: the whole range or [low, high))."""
    if _is_float(dtype):
        lo = -4.0 if low is None else low
        hi = 4.0 if high is None else high
        v = rng.uniform(lo, hi, n).astype(dtype)
    else:
        info = np.iinfo(dtype)
        lo = info.min if low is None else low
        hi = int(info.max) + 1 if high is None else high
        v = rng.integers(lo, hi, n, dtype=np.int64 if info.min < 0 or info.bits < 64 else
                         np.uint64).astype(dtype)
    if nonzero:
        v[v == 0] = 1
    return v


def _check_close(got, want, dtype, *, ulps=2.0, atol=0.0):
    got = mt.to_numpy(got)
    assert got.dtype == np.dtype(dtype), f"result dtype {got.dtype}, expected {np.dtype(dtype)}"
    if _is_float(dtype):
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=ulps * _eps(dtype),
                                   atol=atol, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)


# ---- binary elementwise ----------------------------------------------------------------------

# operation codes (kernel constants must be numbers): B_ADD = 0, B_SUB = 1, ...
BINARY_OPS = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "maximum", "minimum",
              "builtin_max", "atan2", "and", "or", "xor", "lshift", "rshift", "eq", "ne", "lt",
              "le", "gt", "ge")
(B_ADD, B_SUB, B_MUL, B_TRUEDIV, B_FLOORDIV, B_MOD, B_POW, B_MAXIMUM, B_MINIMUM, B_BUILTIN_MAX,
 B_ATAN2, B_AND, B_OR, B_XOR, B_LSHIFT, B_RSHIFT, B_EQ, B_NE, B_LT, B_LE, B_GT,
 B_GE) = range(len(BINARY_OPS))


@ct.kernel
def binary_op_kernel(x, y, out, OP: ct.Constant[int], TILE: ct.Constant[int]):
    bid = ct.bid(0)
    a = ct.load(x, (bid,), (TILE,))
    b = ct.load(y, (bid,), (TILE,))
    if OP == B_ADD:
        r = a + b
    elif OP == B_SUB:
        r = a - b
    elif OP == B_MUL:
        r = a * b
    elif OP == B_TRUEDIV:
        r = a / b
    elif OP == B_FLOORDIV:
        r = a // b
    elif OP == B_MOD:
        r = a % b
    elif OP == B_POW:
        r = a ** b
    elif OP == B_MAXIMUM:
        r = ct.maximum(a, b)
    elif OP == B_MINIMUM:
        r = ct.minimum(a, b)
    elif OP == B_BUILTIN_MAX:
        r = max(a, b)
    elif OP == B_ATAN2:
        r = ct.atan2(a, b)
    elif OP == B_AND:
        r = a & b
    elif OP == B_OR:
        r = a | b
    elif OP == B_XOR:
        r = a ^ b
    elif OP == B_LSHIFT:
        r = a << b
    elif OP == B_RSHIFT:
        r = a >> b
    elif OP == B_EQ:
        r = a == b
    elif OP == B_NE:
        r = a != b
    elif OP == B_LT:
        r = a < b
    elif OP == B_LE:
        r = a <= b
    elif OP == B_GT:
        r = a > b
    else:
        r = a >= b
    ct.store(out, (bid,), r)


def _binary_inputs(op, dtype, rng):
    if op == "pow":
        return _random(rng, dtype, low=0.5, high=2.0), _random(rng, dtype, low=-2, high=2)
    if op in ("lshift", "rshift"):
        bits = np.dtype(dtype).itemsize * 8
        return _random(rng, dtype), _random(rng, dtype, low=0, high=bits)
    if op in ("floordiv", "mod"):
        if _is_float(dtype):
            # power-of-two divisors keep x / y exact, so floor() cannot flip on a rounding
            y = rng.choice([-2.0, -0.5, 0.25, 1.0, 4.0], N).astype(dtype)
            return _random(rng, dtype), y
        x = _random(rng, dtype, low=-100 if np.iinfo(dtype).min < 0 else 0, high=100)
        y = _random(rng, dtype, low=-9 if np.iinfo(dtype).min < 0 else 1, high=10,
                    nonzero=True)
        return x, y
    if op in ("truediv", "atan2") and _is_float(dtype):
        return _random(rng, dtype), _random(rng, dtype, low=0.5, high=3.0)
    if op in ("eq", "ne", "le", "ge"):  # make some elements equal
        x = _random(rng, dtype)
        y = np.where(rng.random(N) < 0.5, x, _random(rng, dtype)).astype(dtype)
        return x, y
    return _random(rng, dtype), _random(rng, dtype)


_NP_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
    "floordiv": lambda a, b: np.floor(a / b) if a.dtype.kind == "f" else np.floor_divide(a, b),
    "mod": np.remainder, "pow": np.power, "maximum": np.maximum, "minimum": np.minimum,
    "builtin_max": np.maximum, "atan2": np.arctan2, "and": np.bitwise_and, "or": np.bitwise_or,
    "xor": np.bitwise_xor, "lshift": np.left_shift, "rshift": np.right_shift, "eq": np.equal,
    "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
    "ge": np.greater_equal,
}
_COMPARISONS = {"eq", "ne", "lt", "le", "gt", "ge"}
_INT_ONLY = {"and", "or", "xor", "lshift", "rshift"}
_FLOAT_ONLY = {"atan2"}


def _binary_cases():
    for op in _NP_BINARY:
        for dtype in ALL_DTYPES:
            if op in _INT_ONLY and _is_float(dtype) or op in _FLOAT_ONLY and not _is_float(dtype):
                continue
            if op == "pow" and not _is_float(dtype):
                continue  # cuTile has no integer ** (see test_emulator.py)
            if op == "floordiv" and np.dtype(dtype).kind == "u":
                continue  # does not compile with cuTile 1.7 (see test_emulator.py)
            yield pytest.param(op, dtype, id=f"{op}-{_name(dtype)}")


@pytest.mark.parametrize("op, dtype", list(_binary_cases()))
def test_binary_op_matches_numpy(xp, rng, op, dtype):
    _skip_unsupported(xp, dtype)
    x, y = _binary_inputs(op, dtype, rng)
    if op in _COMPARISONS:
        out_dtype = np.bool_
    elif op == "truediv" and not _is_float(dtype):
        out_dtype = np.float32  # cuTile: integer / integer -> float32
    else:
        out_dtype = dtype
    out = xp.asarray(np.zeros(N, out_dtype))
    mt.launch((N // TILE,), binary_op_kernel,
              (xp.asarray(x), xp.asarray(y), out, BINARY_OPS.index(op), TILE))
    with np.errstate(all="ignore"):
        if _is_float(dtype) or op == "truediv":
            want = _NP_BINARY[op](x.astype(np.float64), y.astype(np.float64))
        else:
            want = _NP_BINARY[op](x, y)  # integer ops wrap in the dtype, as on the GPU
    if out_dtype == np.bool_:
        np.testing.assert_array_equal(mt.to_numpy(out), want)
    else:
        # transcendental pow/atan2: a few ulps; exact ops: correctly rounded (half an ulp),
        # integer / integer converts both operands to float32 first (two more roundings)
        ulps = 4.0 if op in ("pow", "atan2") else 2.0 if op == "truediv" else 1.0
        if op in ("pow", "atan2") and out_dtype == np.float64:
            ulps = 8.0 * _eps(np.float32) / _eps(np.float64)  # see test_unary_op_matches_numpy
        _check_close(out, want, out_dtype, ulps=ulps)


# ---- unary elementwise -----------------------------------------------------------------------

UNARY_OPS = ("exp", "exp2", "log", "log2", "sqrt", "rsqrt", "tanh", "sin", "cos", "tan", "sinh",
             "cosh", "floor", "ceil", "abs", "neg", "invert", "isnan")
(U_EXP, U_EXP2, U_LOG, U_LOG2, U_SQRT, U_RSQRT, U_TANH, U_SIN, U_COS, U_TAN, U_SINH, U_COSH,
 U_FLOOR, U_CEIL, U_ABS, U_NEG, U_INVERT, U_ISNAN) = range(len(UNARY_OPS))


@ct.kernel
def unary_op_kernel(x, out, OP: ct.Constant[int], TILE: ct.Constant[int]):
    bid = ct.bid(0)
    a = ct.load(x, (bid,), (TILE,))
    if OP == U_EXP:
        r = ct.exp(a)
    elif OP == U_EXP2:
        if a.dtype == ct.float32:
            r = ct.exp2(a, flush_to_zero=True)  # accepted for float32 only
        else:
            r = ct.exp2(a)
    elif OP == U_LOG:
        r = ct.log(a)
    elif OP == U_LOG2:
        r = ct.log2(a)
    elif OP == U_SQRT:
        r = ct.sqrt(a)
    elif OP == U_RSQRT:
        r = ct.rsqrt(a)
    elif OP == U_TANH:
        r = ct.tanh(a)
    elif OP == U_SIN:
        r = ct.sin(a)
    elif OP == U_COS:
        r = ct.cos(a)
    elif OP == U_TAN:
        r = ct.tan(a)
    elif OP == U_SINH:
        r = ct.sinh(a)
    elif OP == U_COSH:
        r = ct.cosh(a)
    elif OP == U_FLOOR:
        r = ct.floor(a)
    elif OP == U_CEIL:
        r = ct.ceil(a)
    elif OP == U_ABS:
        r = abs(a)
    elif OP == U_NEG:
        r = -a
    elif OP == U_INVERT:
        r = ~a
    else:
        r = ct.isnan(a)
    ct.store(out, (bid,), r)


def _abs_bits(a):
    # the GPU reads an unsigned tile's bits as signed for abs (seen on an H100)
    return np.abs(a.view(a.dtype.str.replace("u", "i"))).view(a.dtype) if a.dtype.kind == "u" else np.abs(a)


_NP_UNARY = {
    "exp": np.exp, "exp2": np.exp2, "log": np.log, "log2": np.log2, "sqrt": np.sqrt,
    "rsqrt": lambda v: 1.0 / np.sqrt(v), "tanh": np.tanh, "sin": np.sin, "cos": np.cos,
    "tan": np.tan, "sinh": np.sinh, "cosh": np.cosh, "floor": np.floor, "ceil": np.ceil,
    "abs": _abs_bits, "neg": np.negative, "invert": np.invert, "isnan": np.isnan,
}
_POSITIVE = {"log", "log2", "sqrt", "rsqrt"}
_FLOAT_MATH = {"exp", "exp2", "log", "log2", "sqrt", "rsqrt", "tanh", "sin", "cos", "tan",
               "sinh", "cosh"}


def _unary_cases():
    for op in _NP_UNARY:
        for dtype in ALL_DTYPES:
            if op == "invert" and _is_float(dtype):
                continue
            if op in ("floor", "ceil", "isnan") and not _is_float(dtype):
                continue
            if op in _FLOAT_MATH and not _is_float(dtype) and dtype not in (np.int32, np.uint8):
                continue
            yield pytest.param(op, dtype, id=f"{op}-{_name(dtype)}")


@pytest.mark.parametrize("op, dtype", list(_unary_cases()))
def test_unary_op_matches_numpy(xp, rng, op, dtype):
    _skip_unsupported(xp, dtype)
    if op in _POSITIVE:
        x = _random(rng, dtype, low=0.1 if _is_float(dtype) else 1, high=8)
    elif op in _FLOAT_MATH and not _is_float(dtype):
        x = _random(rng, dtype, low=0, high=5)
    elif op == "tan":
        x = _random(rng, dtype, low=-1.2, high=1.2)
    else:
        x = _random(rng, dtype)
    if op == "isnan":
        x[::5] = np.nan
    out_dtype = (np.bool_ if op == "isnan" else
                 np.float32 if op in _FLOAT_MATH and not _is_float(dtype) else dtype)
    out = xp.asarray(np.zeros(N, out_dtype))
    mt.launch((N // TILE,), unary_op_kernel, (xp.asarray(x), out, UNARY_OPS.index(op), TILE))
    with np.errstate(all="ignore"):
        want = _NP_UNARY[op](x.astype(np.float64) if _is_float(out_dtype) else x)
    if out_dtype == np.bool_:
        np.testing.assert_array_equal(mt.to_numpy(out), want)
    else:
        exact = op in ("floor", "ceil", "abs", "neg", "invert")
        if exact:
            _check_close(out, want, out_dtype, ulps=1.0)
        else:
            # GPU math functions are accurate to a few ulps; float64 ones may be float32-grade
            # approximations, so float64 gets a float32-level tolerance (the emulator is exact)
            ulps = 8.0 if out_dtype != np.float64 else 8.0 * _eps(np.float32) / _eps(np.float64)
            _check_close(out, want, out_dtype, ulps=ulps, atol=ulps * _eps(out_dtype))


# ---- conversions -----------------------------------------------------------------------------

@ct.kernel
def astype_kernel(x, out, TILE: ct.Constant[int]):
    bid = ct.bid(0)
    ct.store(out, (bid,), ct.load(x, (bid,), (TILE,)).astype(out.dtype))


_CAST_DTYPES = [np.bool_, np.int8, np.int32, np.int64, np.uint8, np.float16, np.float32,
                np.float64, ml_dtypes.bfloat16]


@pytest.mark.parametrize("src", _CAST_DTYPES, ids=_name)
@pytest.mark.parametrize("dst", _CAST_DTYPES, ids=_name)
def test_astype_matches_numpy(xp, rng, src, dst):
    _skip_unsupported(xp, src, dst)
    if src == np.bool_:
        x = rng.random(N) < 0.5
    elif _is_float(src) and dst == np.bool_:
        # the GPU converts float->bool through a 1-bit unsigned integer: only 0 and 1 are
        # well defined there
        x = (rng.random(N) < 0.5).astype(src)
    elif _is_float(src):  # values that fit every target: float->int truncates toward zero
        x = rng.uniform(0 if np.dtype(dst).kind == "u" else -100, 100, N).astype(src)
        x[:4] = [0.0, 0.5, 1.5, 2.75]
    else:
        x = _random(rng, src, low=0, high=100)
        x[:2] = 0
    out = xp.asarray(np.zeros(N, dst))
    mt.launch((N // TILE,), astype_kernel, (xp.asarray(x), out, TILE))
    if dst == np.bool_:
        want = x != 0
    elif _is_float(src) and not _is_float(dst):
        want = np.trunc(x.astype(np.float64)).astype(dst)
    else:
        want = x.astype(np.float64)
    if _is_float(dst):
        _check_close(out, want, dst, ulps=0.5)
    else:
        np.testing.assert_array_equal(mt.to_numpy(out), want)


# ---- dtype promotion -------------------------------------------------------------------------

@ct.kernel
def mixed_add_kernel(x, y, out, TILE: ct.Constant[int]):
    bid = ct.bid(0)
    ct.store(out, (bid,), ct.load(x, (bid,), (TILE,)) + ct.load(y, (bid,), (TILE,)))


@pytest.mark.parametrize("a, b, result", [
    (np.float16, np.float32, np.float32), (np.int32, np.float16, np.float16),
    (np.int8, np.int32, np.int32), (np.uint8, np.uint32, np.uint32),
    (np.bool_, np.int8, np.int8), (np.int64, np.float32, np.float32),
    (ml_dtypes.bfloat16, np.float32, np.float32)], ids=str)
def test_mixed_dtype_promotion(xp, rng, a, b, result):
    _skip_unsupported(xp, a, b)
    x = _random(rng, a, low=0, high=50) if a != np.bool_ else rng.random(N) < 0.5
    y = _random(rng, b, low=0, high=50)
    out = xp.asarray(np.zeros(N, result))
    mt.launch((N // TILE,), mixed_add_kernel, (xp.asarray(x), xp.asarray(y), out, TILE))
    _check_close(out, x.astype(np.float64) + y.astype(np.float64), result, ulps=1.0)


@ct.kernel
def scalar_kinds_kernel(x, out, s, C: ct.Constant[float], TILE: ct.Constant[int]):
    """A float16 tile times a Constant stays float16; times a run-time float is float32."""
    bid = ct.bid(0)
    t = ct.load(x, (bid,), (TILE,))
    ct.store(out, (bid, 0), (t * C)[None, :])
    ct.store(out, (bid, 1), (t * s).astype(ct.float16)[None, :])


def test_loose_constants_and_runtime_scalars(xp, rng):
    x = _random(rng, np.float16)
    out = xp.asarray(np.zeros((N // TILE, 2 * TILE), np.float16))
    mt.launch((N // TILE,), scalar_kinds_kernel, (xp.asarray(x), out, 1.5, 3.0, TILE))
    got = mt.to_numpy(out).reshape(N // TILE, 2, TILE)
    want = x.astype(np.float64).reshape(N // TILE, TILE)
    np.testing.assert_allclose(got[:, 0].astype(np.float64), want * 3.0, rtol=_eps(np.float16))
    np.testing.assert_allclose(got[:, 1].astype(np.float64), want * 1.5, rtol=_eps(np.float16))


# ---- factories, where, cdiv ------------------------------------------------------------------

@ct.kernel
def factories_kernel(ints, floats, n):
    idx = ct.arange(16, dtype=ct.int32)
    ct.store(ints, (0, 0), idx[None, :])
    ct.store(ints, (1, 0), ct.arange(16, dtype=ct.int32, start=7, step=-2)[None, :])
    ct.store(ints, (2, 0), ct.full((1, 16), 42, dtype=ct.int32))
    ct.store(ints, (3, 0), ct.where(idx >= 8, idx, -idx)[None, :])
    ct.store(ints, (4, 0), ct.full((1, 16), ct.cdiv(n, 4), dtype=ct.int32))
    ct.store(ints, (5, 0), (idx // 3 + idx % 3)[None, :])
    ct.store(floats, (0, 0), ct.zeros((1, 16), dtype=ct.float32))
    ct.store(floats, (1, 0), ct.ones((1, 16), dtype=ct.float32))
    ct.store(floats, (2, 0), ct.arange(16, dtype=ct.float32, start=0.5, step=0.25)[None, :])
    ct.store(floats, (3, 0), ct.where(idx < 4, 1.5, ct.zeros((16,), ct.float32))[None, :])


def test_factories_and_where(xp):
    ints = xp.asarray(np.full((6, 16), -1, np.int32))
    floats = xp.asarray(np.full((4, 16), np.nan, np.float32))
    mt.launch((1,), factories_kernel, (ints, floats, 13))
    i = np.arange(16)
    np.testing.assert_array_equal(mt.to_numpy(ints), np.stack([
        i, 7 - 2 * i, np.full(16, 42), np.where(i >= 8, i, -i), np.full(16, 4),
        i // 3 + i % 3]))
    np.testing.assert_array_equal(mt.to_numpy(floats), np.stack([
        np.zeros(16), np.ones(16), 0.5 + 0.25 * i, np.where(i < 4, 1.5, 0.0)]))


# ---- reductions ------------------------------------------------------------------------------

TM, TN = 8, 16


REDUCTIONS = ("sum", "prod", "max", "min", "argmax", "argmin")
(R_SUM, R_PROD, R_MAX, R_MIN, R_ARGMAX, R_ARGMIN) = range(len(REDUCTIONS))


@ct.kernel
def reduce_kernel(x, out, OP: ct.Constant[int], AXIS: ct.Constant[int],
                  KEEPDIMS: ct.Constant[bool], TM: ct.Constant[int], TN: ct.Constant[int]):
    t = ct.load(x, (0, 0), (TM, TN))
    axis = None if AXIS == -1 else AXIS
    if OP == R_SUM:
        r = ct.sum(t, axis, keepdims=KEEPDIMS)
    elif OP == R_PROD:
        r = ct.prod(t, axis, keepdims=KEEPDIMS)
    elif OP == R_MAX:
        r = ct.max(t, axis, keepdims=KEEPDIMS)
    elif OP == R_MIN:
        r = ct.min(t, axis, keepdims=KEEPDIMS)
    elif OP == R_ARGMAX:
        r = ct.argmax(t, axis, keepdims=KEEPDIMS)
    else:
        r = ct.argmin(t, axis, keepdims=KEEPDIMS)
    if KEEPDIMS:
        ct.store(out, (0, 0), r)
    else:
        ct.store(out, (0,), r)


def _reduce_cases():
    for op in ("sum", "prod", "max", "min", "argmax", "argmin"):
        for dtype in (np.int8, np.int32, np.uint32, np.float16, np.float32, np.float64,
                      ml_dtypes.bfloat16):
            for axis in (-1, 0, 1):
                for keepdims in (False, True):
                    if op == "prod" and axis == -1:
                        continue  # the product of 128 random values overflows
                    yield pytest.param(op, dtype, axis, keepdims,
                                       id=f"{op}-{_name(dtype)}-axis{axis}-keep{keepdims}")


@pytest.mark.parametrize("op, dtype, axis, keepdims", list(_reduce_cases()))
def test_reduction_matches_numpy(xp, rng, op, dtype, axis, keepdims):
    _skip_unsupported(xp, dtype)
    if op == "prod":
        x = (_random(rng, dtype, n=TM * TN, low=0.5, high=1.5) if _is_float(dtype)
             else _random(rng, dtype, n=TM * TN, low=1, high=3))
    elif op in ("argmax", "argmin") and not _is_float(dtype):
        x = _random(rng, dtype, n=TM * TN, low=0, high=6)  # ties: the first index wins
    else:
        x = _random(rng, dtype, n=TM * TN)
    x = x.reshape(TM, TN)
    np_axis = None if axis == -1 else axis
    arg = op in ("argmax", "argmin")
    out_dtype = np.int32 if arg else dtype
    if keepdims:
        out_shape = (1, 1) if axis == -1 else (1, TN) if axis == 0 else (TM, 1)
    else:
        out_shape = (1,) if axis == -1 else (TN,) if axis == 0 else (TM,)
    out = xp.asarray(np.zeros(out_shape, out_dtype))
    mt.launch((1,), reduce_kernel,
              (xp.asarray(x), out, REDUCTIONS.index(op), axis, keepdims, TM, TN))
    got = mt.to_numpy(out)
    assert got.dtype == np.dtype(out_dtype)
    wide = x.astype(np.float64) if _is_float(dtype) else x
    if arg:
        want = getattr(np, op)(wide.reshape(-1) if axis == -1 else wide, axis=0 if axis == -1
                               else axis)
        np.testing.assert_array_equal(got.reshape(-1), np.asarray(want).reshape(-1))
        return
    with np.errstate(all="ignore"):
        if op in ("sum", "prod") and not _is_float(dtype):
            want = getattr(np, op)(x, axis=np_axis, dtype=dtype)  # integers wrap
        else:
            want = {"sum": np.sum, "prod": np.prod, "max": np.max, "min": np.min}[op](
                wide, axis=np_axis)
    want = np.asarray(want).reshape(-1)
    if _is_float(dtype) and op in ("sum", "prod"):
        # any summation order in the tile's dtype: error <= n * eps * sum|x|
        n = x.size if axis == -1 else x.shape[axis]
        bound = n * _eps(dtype) * np.sum(np.abs(wide), axis=np_axis) if op == "sum" else \
            n * _eps(dtype) * np.abs(want)
        assert np.all(np.abs(got.astype(np.float64).reshape(-1) - want)
                      <= np.asarray(bound).reshape(-1) + 1e-300)
    else:
        _check_close(got.reshape(-1), want, dtype, ulps=0.5)


@ct.kernel
def scan_kernel(x, out, CUMSUM: ct.Constant[bool], AXIS: ct.Constant[int],
                REVERSE: ct.Constant[bool], TM: ct.Constant[int], TN: ct.Constant[int]):
    t = ct.load(x, (0, 0), (TM, TN))
    if CUMSUM:
        r = ct.cumsum(t, AXIS, reverse=REVERSE)
    else:
        r = ct.cumprod(t, AXIS, reverse=REVERSE)
    ct.store(out, (0, 0), r)


@pytest.mark.parametrize("op", ["cumsum", "cumprod"])
@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.float16], ids=_name)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_matches_numpy(xp, rng, op, dtype, axis, reverse):
    if op == "cumprod":
        x = (_random(rng, dtype, n=TM * TN, low=0.8, high=1.25) if _is_float(dtype)
             else _random(rng, dtype, n=TM * TN, low=1, high=3))
    else:
        x = _random(rng, dtype, n=TM * TN, low=None if _is_float(dtype) else -50,
                    high=None if _is_float(dtype) else 50)
    x = x.reshape(TM, TN)
    out = xp.asarray(np.zeros((TM, TN), dtype))
    mt.launch((1,), scan_kernel, (xp.asarray(x), out, op == "cumsum", axis, reverse, TM, TN))
    wide = x.astype(np.float64) if _is_float(dtype) else x.astype(np.int64)
    fn = np.cumsum if op == "cumsum" else np.cumprod
    want = np.flip(fn(np.flip(wide, axis), axis=axis), axis) if reverse else fn(wide, axis=axis)
    if _is_float(dtype):
        n = x.shape[axis]
        scale = fn(np.abs(wide) if op == "cumsum" else wide, axis=axis)
        if reverse:
            scale = np.flip(fn(np.flip(np.abs(wide) if op == "cumsum" else wide, axis),
                               axis=axis), axis)
        assert np.all(np.abs(mt.to_numpy(out).astype(np.float64) - want)
                      <= n * _eps(dtype) * np.abs(scale))
    else:
        np.testing.assert_array_equal(mt.to_numpy(out), want.astype(dtype))


# ---- shape operations ------------------------------------------------------------------------

@ct.kernel
def shape_ops_kernel(x, y, out):
    t = ct.load(x, (0, 0), (4, 8))                     # (4, 8)
    u = ct.load(y, (0, 0), (4, 8))
    row = ct.sum(t, 1)                                  # (4,)
    ct.store(out, (0, 0), ct.reshape(t, (8, 4)))
    ct.store(out, (1, 0), ct.transpose(t))               # (8, 4)
    ct.store(out, (2, 0), ct.permute(t.reshape((2, 2, 8)), (2, 0, 1)).reshape((8, 4)))
    ct.store(out, (3, 0), ct.broadcast_to(row[None, :], (8, 4)))
    ct.store(out, (4, 0), ct.broadcast_to(ct.expand_dims(ct.arange(8, dtype=ct.float32), 1),
                                          (8, 4)))
    ct.store(out, (5, 0), ct.cat((t, u), 0).reshape((8, 8)).extract((0, 1), (8, 4)))
    ct.store(out, (6, 0), ct.cat((t, u), 1).extract((1, 0), (2, 16)).reshape((8, 4)))
    ct.store(out, (7, 0), t.reshape((8, 4)).insert((1, 0), ct.full((4, 4), 7.0, ct.float32)))
    ct.store(out, (8, 0), ct.full((8, 4), 0.0, ct.float32) + ct.sum(t).item())


def test_shape_operations(xp, rng):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    y = rng.standard_normal((4, 8)).astype(np.float32)
    out = xp.asarray(np.full((9 * 8, 4), np.nan, np.float32))
    mt.launch((1,), shape_ops_kernel, (xp.asarray(x), xp.asarray(y), out))
    got = mt.to_numpy(out).reshape(9, 8, 4)
    catted0 = np.concatenate([x, y], 0).reshape(8, 8)
    catted1 = np.concatenate([x, y], 1)
    inserted = x.reshape(8, 4).copy()
    inserted[4:] = 7.0
    want = [x.reshape(8, 4), x.T, np.transpose(x.reshape(2, 2, 8), (2, 0, 1)).reshape(8, 4),
            np.broadcast_to(x.sum(1)[None, :], (8, 4)),
            np.broadcast_to(np.arange(8.0)[:, None], (8, 4)), catted0[:, 4:],
            catted1[2:4].reshape(8, 4), inserted, np.full((8, 4), x.astype(np.float64).sum())]
    for k, w in enumerate(want):
        np.testing.assert_allclose(got[k], w, rtol=1e-5, atol=1e-5, err_msg=f"output {k}")


# ---- matrix multiply -------------------------------------------------------------------------

@ct.kernel
def mma_kernel(a, b, c, out, TM: ct.Constant[int], TN: ct.Constant[int],
               TK: ct.Constant[int], USE_MATMUL: ct.Constant[bool]):
    x = ct.load(a, (0, 0), (TM, TK))
    y = ct.load(b, (0, 0), (TK, TN))
    if USE_MATMUL:
        r = x @ y
    else:
        r = ct.mma(x, y, ct.load(c, (0, 0), (TM, TN)))
    ct.store(out, (0, 0), r)


@pytest.mark.parametrize("in_dtype, acc_dtype, use_matmul", [
    (np.float16, np.float32, False), (np.float16, np.float16, False),
    (ml_dtypes.bfloat16, np.float32, False), (np.float32, np.float32, False),
    (np.float64, np.float64, False), (np.int8, np.int32, False), (np.uint8, np.int32, False),
    (np.float16, np.float16, True), (np.float32, np.float32, True),
    (np.float64, np.float64, True)], ids=str)
def test_mma_and_matmul(xp, rng, in_dtype, acc_dtype, use_matmul):
    _skip_unsupported(xp, in_dtype)
    tm, tn, tk = 16, 32, 64
    if _is_float(in_dtype):
        a = rng.standard_normal((tm, tk)).astype(in_dtype)
        b = rng.standard_normal((tk, tn)).astype(in_dtype)
        c = rng.standard_normal((tm, tn)).astype(acc_dtype)
    else:
        a = _random(rng, in_dtype, n=tm * tk).reshape(tm, tk)
        b = _random(rng, in_dtype, n=tk * tn).reshape(tk, tn)
        c = _random(rng, acc_dtype, n=tm * tn, low=-1000, high=1000).reshape(tm, tn)
    out = xp.asarray(np.zeros((tm, tn), acc_dtype))
    mt.launch((1,), mma_kernel, (xp.asarray(a), xp.asarray(b), xp.asarray(c), out, tm, tn, tk,
                                 use_matmul))
    want = a.astype(np.float64) @ b.astype(np.float64)
    if not use_matmul:
        want = want + c.astype(np.float64)
    if _is_float(in_dtype):
        # accumulation error of K products, plus the final rounding to the output dtype
        abs_ab = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
        bound = (tk * _eps(np.float32 if acc_dtype != np.float64 else np.float64) * abs_ab
                 + _eps(acc_dtype) * np.abs(want))
        if in_dtype == np.float32:  # the GPU may round float32 inputs to tf32 (10-bit mantissa)
            bound = bound + 2 * 2.0**-11 * abs_ab
        if acc_dtype == np.float16:  # a float16 accumulator may round every partial sum
            bound = bound + tk * _eps(np.float16) * (np.abs(a.astype(np.float64))
                                                    @ np.abs(b.astype(np.float64)))
        assert np.all(np.abs(mt.to_numpy(out).astype(np.float64) - want) <= bound)
    else:
        np.testing.assert_array_equal(mt.to_numpy(out), want.astype(np.int64))


@ct.kernel
def batched_mma_kernel(a, b, out):
    x = ct.load(a, (0, 0, 0), (2, 8, 16))
    y = ct.load(b, (0, 0), (16, 8))
    ct.store(out, (0, 0, 0), ct.mma(x, y, ct.zeros((2, 8, 8), ct.float32)))


def test_batched_mma_broadcasts_rhs(xp, rng):
    a = rng.standard_normal((2, 8, 16)).astype(np.float32)
    b = rng.standard_normal((16, 8)).astype(np.float32)
    out = xp.asarray(np.zeros((2, 8, 8), np.float32))
    mt.launch((1,), batched_mma_kernel, (xp.asarray(a), xp.asarray(b), out))
    want = a.astype(np.float64) @ b
    bound = (16 * _eps(np.float32) + 2 * 2.0**-11) * (np.abs(a) @ np.abs(b))  # fp32 or tf32
    assert np.all(np.abs(mt.to_numpy(out) - want) <= bound)
