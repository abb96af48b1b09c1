"""Emulator conformance: for every ``ct.*`` operation the emulator implements, small cuTile
programs whose results are compared with a NumPy (float64) reference -- on the CPU through the
emulator and, under ``pytest -m gpu``, the very same programs through ``ct.launch`` (CuPy has
no bfloat16, so bfloat16 cases run on the CPU only). Dtypes, NaN/Inf, rounding, partial tiles,
padding modes and printing are covered, and the GPU behaviours the emulator once got wrong are
pinned at the end. On the CPU each case also checks that the operations it names were really
dispatched to the emulator, and ``test_every_emulated_operation_is_covered`` that together the
cases name every operation of ``emulator.supported_operations()``."""
import operator

import ml_dtypes
import numpy as np
import pytest

import cuda.tile as ct
import moe_tutorial as mt
from moe_tutorial import emulator
from moe_tutorial.emulator import _launch

INF, NAN = float("inf"), float("nan")
BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.float16, BF16, np.float32, np.float64]
INTS = [np.int8, np.int16, np.int32, np.int64]
COVERED: set[str] = set()


def covers(*ops):
    """Declare the operations a group of programs exercises (at import, so that every xdist
    worker sees them all); returns the names."""
    COVERED.update(ops)
    return ops


def declares(*ops):
    """``covers`` as a decorator of the test that exercises ``ops``."""
    covers(*ops)
    return lambda test: test


# ---- running a program on either backend ------------------------------------------------------

def _run(xp, kernel, args, ops, grid=(1,)):
    """Launch ``kernel`` on ``args`` (NumPy arrays are moved to ``xp``); returns the arrays as
    NumPy. On the CPU, asserts that every operation in ``ops`` was dispatched."""
    if xp is not np and any(isinstance(a, np.ndarray) and a.dtype == BF16 for a in args):
        pytest.skip("CuPy has no bfloat16")
    dev = [xp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    if xp is np:
        seen = set()
        saved = dict(_launch.IMPLEMENTATIONS)

        def recorder(name, fn):
            def call(*a, **k):
                seen.add(name)
                return fn(*a, **k)
            return call

        _launch.IMPLEMENTATIONS.update({n: recorder(n, f) for n, f in saved.items()})
        try:
            mt.launch(grid, kernel, tuple(dev))
        finally:
            _launch.IMPLEMENTATIONS.clear()
            _launch.IMPLEMENTATIONS.update(saved)
        assert set(ops) <= seen, f"not dispatched: {set(ops) - seen}"
    else:
        mt.launch(grid, kernel, tuple(dev))
        xp.cuda.get_current_stream().synchronize()
    return [mt.to_numpy(a) if not isinstance(a, (int, float)) else a for a in dev]


def _tol(dtype, ulps):
    return ulps * float(ml_dtypes.finfo(dtype).eps) if np.dtype(dtype).kind == "f" or \
        np.dtype(dtype) == BF16 else 0.0


def _close(got, want, dtype, ulps=2.0):
    """``got`` equals the float64 reference rounded to ``dtype`` within ``ulps`` units (and
    a subnormal-sized absolute slack); NaNs must match."""
    want = np.asarray(want, np.float64)
    assert got.dtype == np.dtype(dtype)
    if np.dtype(dtype).kind in "iub":
        np.testing.assert_array_equal(got, want.astype(dtype))
        return
    tiny = float(ml_dtypes.finfo(dtype).smallest_normal)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(dtype).astype(np.float64),
                               rtol=_tol(dtype, ulps), atol=tiny, equal_nan=True)


def _floats(rng, dtype, n=16, specials=True):
    v = rng.uniform(-4, 4, n)
    if specials:
        v[:6] = [NAN, INF, -INF, 0.0, -0.0, 1.5]
    return v.astype(dtype)


def _ints(rng, dtype, n=16, lo=None, hi=None):
    info = np.iinfo(dtype)
    return rng.integers(info.min if lo is None else lo, (info.max if hi is None else hi),
                        n, dtype=np.int64).astype(dtype)


# ---- elementwise -----------------------------------------------------------------------------

def _unary_kernel(fn):
    @ct.kernel
    def k(x, out):
        ct.store(out, (0,), fn(ct.load(x, (0,), (16,))))
    return k


with np.errstate(all="ignore"):
    UNARY = {  # op name -> (ct function, float64 reference, ulps)
        "exp": (ct.exp, np.exp, 4), "exp2": (ct.exp2, np.exp2, 4), "log": (ct.log, np.log, 4),
        "log2": (ct.log2, np.log2, 4), "sqrt": (ct.sqrt, np.sqrt, 1),
        "rsqrt": (ct.rsqrt, lambda v: 1 / np.sqrt(v), 4), "sin": (ct.sin, np.sin, 4),
        "cos": (ct.cos, np.cos, 4), "tan": (ct.tan, np.tan, 8), "sinh": (ct.sinh, np.sinh, 8),
        "cosh": (ct.cosh, np.cosh, 8), "tanh": (ct.tanh, np.tanh, 8),
        "floor": (ct.floor, np.floor, 0), "ceil": (ct.ceil, np.ceil, 0),
        "abs": (ct.abs, np.abs, 0), "negative": (ct.negative, np.negative, 0),
    }
covers(*UNARY)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", list(UNARY))
def test_unary_float(xp, rng, op, dtype):
    fn, ref, ulps = UNARY[op]
    x = _floats(rng, dtype)
    (_, out) = _run(xp, _unary_kernel(fn), (x, np.zeros_like(x)), [op])
    with np.errstate(all="ignore"):
        _close(out, ref(x.astype(np.float64)), dtype, ulps)


@pytest.mark.parametrize("dtype", INTS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", ["abs", "negative", "bitwise_not"])
@declares("bitwise_not")
def test_unary_int_wraps(xp, rng, op, dtype):
    fn = {"abs": ct.abs, "negative": ct.negative, "bitwise_not": ct.bitwise_not}[op]
    x = _ints(rng, dtype)
    x[0] = np.iinfo(dtype).min  # -min and abs(min) wrap to min, as in two's complement
    (_, out) = _run(xp, _unary_kernel(fn), (x, np.zeros_like(x)), [op])
    want = {"abs": np.abs, "negative": np.negative, "bitwise_not": np.invert}[op](x)
    np.testing.assert_array_equal(out, want)


@declares("isnan")
def test_isnan(xp, rng):
    x = _floats(rng, np.float32)
    (_, out) = _run(xp, _unary_kernel(ct.isnan), (x, np.zeros(16, np.bool_)), ("isnan",))
    np.testing.assert_array_equal(out, np.isnan(x))


def _binary_kernel(fn):
    @ct.kernel
    def k(x, y, out):
        ct.store(out, (0,), fn(ct.load(x, (0,), (16,)), ct.load(y, (0,), (16,))))
    return k


BINARY_FLOAT = {  # op -> (ct function, float64 reference, ulps)
    "add": (ct.add, np.add, 0.5), "sub": (ct.sub, np.subtract, 0.5),
    "mul": (ct.mul, np.multiply, 0.5), "truediv": (ct.truediv, np.true_divide, 1),
    "minimum": (ct.minimum, np.fmin, 0), "maximum": (ct.maximum, np.fmax, 0),
    "atan2": (ct.atan2, np.arctan2, 4), "pow": (ct.pow, np.power, 8),
}
covers(*BINARY_FLOAT)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", list(BINARY_FLOAT))
def test_binary_float(xp, rng, op, dtype):
    fn, ref, ulps = BINARY_FLOAT[op]
    x, y = _floats(rng, dtype), _floats(rng, dtype)[::-1].copy()
    if op == "pow":  # a positive base (negative bases with fractional exponents are NaN)
        x = np.abs(x)
    (_, _, out) = _run(xp, _binary_kernel(fn), (x, y, np.zeros_like(x)), [op])
    with np.errstate(all="ignore"):
        want = ref(x.astype(np.float64), y.astype(np.float64))
    if np.dtype(dtype).itemsize < 4:  # computed in float32, then rounded once
        want = want.astype(np.float32)
    _close(out, want, dtype, max(ulps, 1))


BINARY_INT = {
    "add": (ct.add, np.add), "sub": (ct.sub, np.subtract), "mul": (ct.mul, np.multiply),
    "floordiv": (ct.floordiv, np.floor_divide), "mod": (ct.mod, np.remainder),
    "minimum": (ct.minimum, np.minimum), "maximum": (ct.maximum, np.maximum),
    "bitwise_and": (ct.bitwise_and, np.bitwise_and), "bitwise_or": (ct.bitwise_or, np.bitwise_or),
    "bitwise_xor": (ct.bitwise_xor, np.bitwise_xor),
    "bitwise_lshift": (ct.bitwise_lshift, np.left_shift),
    "bitwise_rshift": (ct.bitwise_rshift, np.right_shift),
}
covers(*BINARY_INT)


@pytest.mark.parametrize("dtype", INTS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", list(BINARY_INT))
def test_binary_int_wraps(xp, rng, op, dtype):
    fn, ref = BINARY_INT[op]
    x, y = _ints(rng, dtype), _ints(rng, dtype)
    if op in ("floordiv", "mod"):
        y[y == 0] = 3
        x[1], y[1] = 5, -1
        x[0], y[0] = -7, 2  # floor, not truncation: -7 // 2 == -4, -7 % 2 == 1
    if "shift" in op:
        y = _ints(rng, dtype, lo=0, hi=8 * np.dtype(dtype).itemsize)
    (_, _, out) = _run(xp, _binary_kernel(fn), (x, y, np.zeros_like(x)), [op])
    with np.errstate(all="ignore"):
        want = ref(x, y)
    np.testing.assert_array_equal(out, want)


COMPARE = {"equal": (ct.equal, np.equal), "not_equal": (ct.not_equal, np.not_equal),
           "less": (ct.less, np.less), "less_equal": (ct.less_equal, np.less_equal),
           "greater": (ct.greater, np.greater), "greater_equal": (ct.greater_equal,
                                                                  np.greater_equal)}
covers(*COMPARE)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int8, np.int64],
                         ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", list(COMPARE))
def test_comparisons_with_nan(xp, rng, op, dtype):
    fn, ref = COMPARE[op]
    if np.dtype(dtype).kind == "f":
        x, y = _floats(rng, dtype), _floats(rng, dtype)[::-1].copy()
    else:
        x, y = _ints(rng, dtype, lo=-3, hi=3), _ints(rng, dtype, lo=-3, hi=3)
    (_, _, out) = _run(xp, _binary_kernel(fn), (x, y, np.zeros(16, np.bool_)), [op])
    np.testing.assert_array_equal(out, ref(x, y))


@ct.kernel
def divmod_where_kernel(x, y, q, r, w):
    a, b = ct.load(x, (0,), (16,)), ct.load(y, (0,), (16,))
    qq, rr = divmod(a, b)
    ct.store(q, (0,), qq)
    ct.store(r, (0,), rr)
    ct.store(w, (0,), ct.where(a > b, a, b * 2))


@declares("divmod", "where")  # divmod is reached through Python's divmod() on tiles
def test_divmod_and_where(xp, rng):
    x, y = _ints(rng, np.int32, lo=-50, hi=50), _ints(rng, np.int32, lo=1, hi=9)
    z = np.zeros(16, np.int32)
    _, _, q, r, w = _run(xp, divmod_where_kernel, (x, y, z, z.copy(), z.copy()), ("where",))
    np.testing.assert_array_equal(q, x // y)
    np.testing.assert_array_equal(r, x % y)
    np.testing.assert_array_equal(w, np.where(x > y, x, y * 2))


# ---- conversions and rounding ----------------------------------------------------------------

def _astype_kernel(dtype, mode):
    @ct.kernel
    def k(x, out):
        ct.store(out, (0,), ct.astype(ct.load(x, (0,), (16,)), dtype, rounding_mode=mode))
    return k


@pytest.mark.parametrize("mode", [None, ct.RoundingMode.RN, ct.RoundingMode.RZ],
                         ids=["default", "RN", "RZ"])
@pytest.mark.parametrize("dst", [np.float16, BF16], ids=["f16", "bf16"])
@declares("astype")
def test_astype_float_rounding_modes(xp, rng, dst, mode):
    x = rng.uniform(-3, 3, 16).astype(np.float32)
    x[:5] = [NAN, INF, -INF, 70000.0, -70000.0]
    ct_dst = ct.float16 if dst is np.float16 else ct.bfloat16
    (_, out) = _run(xp, _astype_kernel(ct_dst, mode), (x, np.zeros(16, dst)), ("astype",))
    got, exact = out.astype(np.float64), x.astype(np.float64)
    with np.errstate(all="ignore"):  # 70000 overflows to inf in float16
        nearest = x.astype(dst).astype(np.float64)
    finite = np.isfinite(exact)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(exact))
    if mode in (None, ct.RoundingMode.RN):
        np.testing.assert_array_equal(got[finite], nearest[finite])
        return
    assert (np.abs(got) <= np.abs(exact))[finite].all()  # RZ: toward zero
    # and it is one of the two neighbours of the exact value: at most one unit from nearest
    inside = finite & (np.abs(exact) < 6e4)
    spacing = np.abs(np.spacing(nearest[inside].astype(dst)).astype(np.float64))
    assert (np.abs(got[inside] - nearest[inside]) <= spacing).all()


@pytest.mark.parametrize("mode", [ct.RoundingMode.RM, ct.RoundingMode.RP], ids=["RM", "RP"])
def test_astype_directed_rounding_to_fp16_is_refused_like_the_compiler(xp, mode):
    x = np.ones(16, np.float32)
    with pytest.raises(ct.TileTypeError, match="not supported for conversion from float32"):
        _run(xp, _astype_kernel(ct.float16, mode), (x, np.zeros(16, np.float16)), [])


@pytest.mark.parametrize("src, dst", [(np.float32, np.int8), (np.float32, np.int32),
                                      (np.float16, np.int16), (np.int64, np.int8),
                                      (np.int32, np.float16), (np.int8, np.bool_)],
                         ids=lambda d: np.dtype(d).name)
def test_astype_truncates_and_wraps(xp, rng, src, dst):
    if np.dtype(src).kind == "f":
        x = rng.uniform(-100, 100, 16).astype(src)  # in range of every destination
    elif np.dtype(dst).kind == "f":
        x = _ints(rng, src, lo=-60000, hi=60000)  # within float16 range, most values rounded
    else:
        x = _ints(rng, src)
    from moe_tutorial.emulator._dtypes import from_numpy
    (_, out) = _run(xp, _astype_kernel(from_numpy(dst), None), (x, np.zeros(16, dst)), [])
    if np.dtype(src).kind == "f":
        want = np.trunc(x.astype(np.float64)).astype(dst)
    elif dst == np.bool_:
        want = x != 0
    else:
        want = x.astype(dst)  # integer narrowing wraps; int -> float rounds to nearest
    np.testing.assert_array_equal(out, want)


@ct.kernel
def bits_kernel(x, bits):
    ct.store(bits, (0,), ct.bitcast(ct.load(x, (0,), (8,)), ct.int32))


@ct.kernel
def float4_kernel(back, nibbles, packed):
    b = ct.load(packed, (0,), (4,))
    f4 = ct.unpack_from_bytes(b, ct.float4_e2m1fn)
    ct.store(nibbles, (0,), f4.astype(ct.float32))
    ct.store(back, (0,), ct.pack_to_bytes(f4))


@declares("bitcast")
def test_bitcast(xp, rng):
    x = rng.standard_normal(8).astype(np.float32)
    _, bits = _run(xp, bits_kernel, (x, np.zeros(8, np.int32)), ("bitcast",))
    np.testing.assert_array_equal(bits, x.view(np.int32))


@declares("pack_to_bytes", "unpack_from_bytes")
def test_float4_packing(xp):
    if xp is not np:
        major = int(xp.cuda.Device().compute_capability[:-1])
        if major < 10:
            pytest.skip(f"float4_e2m1fn needs compute capability 10.0 or newer (cuTile refuses it "
                        f"on sm_{xp.cuda.Device().compute_capability})")
    packed = np.array([0x21, 0x43, 0xA9, 0x7F], np.uint8)
    back, nibbles, _ = _run(xp, float4_kernel, (np.zeros(4, np.uint8), np.zeros(8, np.float32),
                                                packed), ("pack_to_bytes", "unpack_from_bytes"))
    # e2m1 codes 0..7: 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign; low nibble first
    codes = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(-1)
    mag = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6])[codes & 7]
    np.testing.assert_array_equal(nibbles, np.where(codes & 8, -mag, mag))
    np.testing.assert_array_equal(back, packed)


# ---- factories and shapes --------------------------------------------------------------------

@ct.kernel
def factory_kernel(out_i, out_f, n, start):
    a = ct.arange(8, dtype=ct.int32)
    b = ct.arange(8, dtype=ct.int32, start=start, step=3)
    c = ct.full((8,), n, ct.int32) + ct.zeros((8,), ct.int32) + ct.ones((8,), ct.int32)
    d = ct.astile((1, 2, 3, 4, 5, 6, 7, 8), dtype=ct.int32)
    ct.store(out_i, (0, 0), ct.reshape(ct.cat((ct.cat((a, b), 0), ct.cat((c, d), 0)), 0),
                                       (4, 8)))
    ct.store(out_f, (0,), ct.arange(8, dtype=ct.float16) * 0.5)


@declares("arange", "full", "zeros", "ones", "astile", "cat", "reshape")
def test_factories(xp):
    out_i, out_f, _, _ = _run(xp, factory_kernel, (np.zeros((4, 8), np.int32),
                                                      np.zeros(8, np.float16), 5, -2),
                                 ("arange", "full", "zeros", "ones", "astile", "cat", "reshape"))
    np.testing.assert_array_equal(out_i, [np.arange(8), -2 + 3 * np.arange(8), np.full(8, 6),
                                          np.arange(1, 9)])
    np.testing.assert_array_equal(out_f, np.arange(8) * 0.5)


@ct.kernel
def shapes_kernel(x, out_t, out_p, out_b, out_e, out_i, out_s):
    t = ct.load(x, (0, 0), (4, 8))
    ct.store(out_t, (0, 0), ct.transpose(t))
    ct.store(out_p, (0, 0, 0), ct.permute(ct.reshape(t, (2, 2, 8)), (2, 0, 1)))
    row = ct.extract(t, (1, 0), (1, 8))
    ct.store(out_b, (0, 0), ct.broadcast_to(row, (4, 8)))
    ct.store(out_e, (0, 0), ct.expand_dims(ct.sum(t, axis=1), axis=1))
    ct.store(out_i, (0, 0), ct.insert(t, (0, 1), ct.zeros((4, 4), ct.float32)))
    ct.store(out_s, (0,), ct.full((1,), ct.Tile.item(ct.extract(t, (2, 3), (1, 1))),
                                  ct.float32))


@declares("transpose", "permute", "extract", "broadcast_to", "expand_dims", "insert", "sum",
          "Tile.item")
def test_shape_operations(xp, rng):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    outs = [np.zeros(s, np.float32) for s in ((8, 4), (8, 2, 2), (4, 8), (4, 1), (4, 8), (1,))]
    ops = ("transpose", "permute", "extract", "broadcast_to", "expand_dims", "insert", "sum",
           "Tile.item")
    _, t, p, b, e, i, s = _run(xp, shapes_kernel, (x, *outs), ops)
    np.testing.assert_array_equal(t, x.T)
    np.testing.assert_array_equal(p, x.reshape(2, 2, 8).transpose(2, 0, 1))
    np.testing.assert_array_equal(b, np.broadcast_to(x[1], (4, 8)))
    np.testing.assert_allclose(e[:, 0], x.astype(np.float64).sum(1), rtol=1e-6)
    want = x.copy()
    want[:, 4:] = 0
    np.testing.assert_array_equal(i, want)
    assert s[0] == x[2, 3]


# ---- reductions and scans --------------------------------------------------------------------

def _reduce_kernel(fn):
    @ct.kernel
    def k(x, out):
        ct.store(out, (0,), fn(ct.load(x, (0, 0), (4, 8)), axis=1))
    return k


REDUCE = {"sum": (ct.sum, np.sum), "prod": (ct.prod, np.prod), "max": (ct.max, np.fmax.reduce),
          "min": (ct.min, np.fmin.reduce), "argmax": (ct.argmax, np.argmax),
          "argmin": (ct.argmin, np.argmin)}
covers(*REDUCE)


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32, np.int8, np.int32, np.int64],
                         ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", list(REDUCE))
def test_reductions(xp, rng, op, dtype):
    fn, ref = REDUCE[op]
    if op.startswith("arg"):  # distinct values: which of equal values wins is unspecified
        x = np.stack([rng.permutation(8) - 4 for _ in range(4)]).astype(dtype)
    elif np.dtype(dtype).kind == "i":
        x = _ints(rng, dtype, lo=-4, hi=5, n=32).reshape(4, 8)
    else:
        x = rng.uniform(0.5, 1.5, (4, 8)).astype(dtype)
        if op in ("max", "min"):
            x[0, 3], x[1, 0] = NAN, -INF  # NaN is ignored without propagate_nan
    out_dtype = np.int32 if op.startswith("arg") else dtype
    (_, out) = _run(xp, _reduce_kernel(fn), (x, np.zeros(4, out_dtype)), [op])
    if op.startswith("arg"):
        np.testing.assert_array_equal(out, ref(x, axis=1))
    elif np.dtype(dtype).kind == "i":
        np.testing.assert_array_equal(out, ref(x, axis=1).astype(dtype))  # wraps
    else:
        _close(out, ref(x.astype(np.float64), axis=1), dtype, 4)


@ct.kernel
def scan_kernel(x, s, p, r, c, rev):
    t = ct.load(x, (0,), (16,))
    ct.store(s, (0,), ct.cumsum(t, axis=0))
    ct.store(p, (0,), ct.cumprod(t, axis=0))
    ct.store(rev, (0,), ct.cumsum(t, axis=0, reverse=True))
    # (a + 1)(b + 1) - 1: associative and commutative, as a parallel fold needs
    ct.store(r, (0,), ct.full((1,), ct.reduce(t, 0, lambda a, b: a * b + a + b, 0), ct.int32))
    ct.store(c, (0,), ct.scan(t, 0, lambda a, b: a * b + a + b, 0))


@declares("cumsum", "cumprod", "reduce", "scan")
def test_scans_and_custom_folds(xp, rng):
    x = _ints(rng, np.int32, lo=-3, hi=4)
    z = np.zeros(16, np.int32)
    _, s, p, r, c, rev = _run(xp, scan_kernel, (x, z, z.copy(), np.zeros(1, np.int32), z.copy(),
                                                z.copy()),
                              ("cumsum", "cumprod", "reduce", "scan"))
    np.testing.assert_array_equal(s, np.cumsum(x))
    np.testing.assert_array_equal(p, np.cumprod(x.astype(np.int64)).astype(np.int32))
    np.testing.assert_array_equal(rev, np.cumsum(x[::-1])[::-1])
    folded = np.cumprod(x.astype(np.int64) + 1) - 1  # exact in int64; int32 wraps alike
    np.testing.assert_array_equal(c, folded.astype(np.int32))
    assert r[0] == folded[-1].astype(np.int32)


# ---- matmul ----------------------------------------------------------------------------------

@ct.kernel
def matmul_kernel(a, b, c, d):
    x, y = ct.load(a, (0, 0), (16, 16)), ct.load(b, (0, 0), (16, 16))
    ct.store(c, (0, 0), ct.mma(x, y, ct.zeros((16, 16), ct.float32)))
    ct.store(d, (0, 0), ct.matmul(x, y))


@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=lambda d: np.dtype(d).name)
@declares("mma", "matmul")
def test_mma_and_matmul(xp, rng, dtype):
    a, b = (rng.standard_normal((16, 16)).astype(dtype) for _ in range(2))
    _, _, c, d = _run(xp, matmul_kernel, (a, b, np.zeros((16, 16), np.float32),
                                          np.zeros((16, 16), dtype)), ("mma", "matmul"))
    want = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)   # fp32 accumulation of exact
    _close(d, want.astype(np.float32), dtype, 1)                # products, rounded once


# ---- memory: partial tiles, padding modes, gathers, atomics ----------------------------------

PAD = {"zero": ct.PaddingMode.ZERO, "neg_zero": ct.PaddingMode.NEG_ZERO,
       "nan": ct.PaddingMode.NAN, "pos_inf": ct.PaddingMode.POS_INF,
       "neg_inf": ct.PaddingMode.NEG_INF}


def _padding_kernel(mode):
    @ct.kernel
    def k(x, out):
        ct.store(out, (ct.bid(0),), ct.load(x, (ct.bid(0),), (8,), padding_mode=mode))
    return k


@pytest.mark.parametrize("mode", list(PAD))
@declares("load", "store")
def test_partial_tiles_and_padding_modes(xp, rng, mode):
    x = rng.standard_normal(12).astype(np.float32)
    out = np.full(16, 99.0, np.float32)  # a longer array: the padded lanes land in out[12:]
    (_, got) = _run(xp, _padding_kernel(PAD[mode]), (x, out), ("load", "store"),
                    grid=(2,))
    np.testing.assert_array_equal(got[:12], x)
    pad = {"zero": 0.0, "neg_zero": -0.0, "nan": NAN, "pos_inf": INF, "neg_inf": -INF}[mode]
    np.testing.assert_array_equal(got[12:], pad)
    np.testing.assert_array_equal(np.signbit(got[12:]), np.signbit(pad) and mode != "nan")


@ct.kernel
def masked_store_kernel(x, out):
    ct.store(out, (ct.bid(0),), ct.load(x, (ct.bid(0),), (8,)) * 2)


def test_partial_tile_stores_are_masked(xp, rng):
    x = rng.standard_normal(12).astype(np.float32)
    (_, got) = _run(xp, masked_store_kernel, (x, np.zeros(12, np.float32)), [], grid=(2,))
    np.testing.assert_array_equal(got, 2 * x)


@ct.kernel
def padding_reaches_result_kernel(x, out, n):
    t = ct.load(x, (0,), (8,), padding_mode=ct.PaddingMode.NEG_INF)
    u = ct.load(x, (0,), (8,), padding_mode=ct.PaddingMode.ZERO)
    ct.store(out, (0,), ct.full((2,), 0.0, ct.float32) + ct.cat((
        ct.reshape(ct.max(t), (1,)), ct.reshape(ct.sum(ct.exp(t)) + ct.sum(u), (1,))), 0))


def test_padding_values_reach_results_as_documented(xp, rng):
    x = rng.standard_normal(5).astype(np.float32)
    (_, out, _) = _run(xp, padding_reaches_result_kernel, (x, np.zeros(2, np.float32), 5), [])
    np.testing.assert_allclose(out, [x.max(), np.exp(x.astype(np.float64)).sum() + x.sum()],
                               rtol=1e-5)


@ct.kernel
def masked_softmax_kernel(x, out, n):
    t = ct.load(x, (0,), (16,))  # default (undetermined) padding beyond n
    i = ct.arange(16, dtype=ct.int32)
    t = t + ct.where(i < n, 0.0, -INF)
    e = ct.exp(t - ct.max(t))
    ct.store(out, (0,), e / ct.sum(e))


def test_masking_undetermined_padding_gives_the_right_answer(xp, rng):
    """The flash-attention pattern: mask the padding with -inf before exp and sum."""
    x = rng.standard_normal(11).astype(np.float32)
    (_, out, _) = _run(xp, masked_softmax_kernel, (x, np.zeros(11, np.float32), 11), [])
    e = np.exp(x.astype(np.float64) - x.max())
    np.testing.assert_allclose(out, e / e.sum(), rtol=1e-5)


@ct.kernel
def unmasked_sum_kernel(x, out):
    ct.store(out, (0,), ct.full((1,), ct.sum(ct.load(x, (0,), (16,))), ct.float32))


def test_forgetting_to_mask_is_visibly_wrong_on_the_cpu():
    x = np.ones(11, np.float32)
    out = np.zeros(1, np.float32)
    emulator.launch(None, (1,), unmasked_sum_kernel, (x, out))
    assert np.isfinite(out[0]) and abs(out[0] - 11) > 100


def test_strict_mode_flags_undetermined_padding_in_a_result(monkeypatch):
    monkeypatch.setenv(emulator.STRICT_ENV, "1")
    with pytest.raises(IndexError, match="UNDETERMINED"):
        emulator.launch(None, (1,), unmasked_sum_kernel, (np.ones(11, np.float32),
                                                          np.zeros(1, np.float32)))
    out = np.zeros(11, np.float32)  # the masked kernel is fine in strict mode too
    emulator.launch(None, (1,), masked_softmax_kernel, (np.ones(11, np.float32), out, 11))
    np.testing.assert_allclose(out, np.full(11, 1 / 11), rtol=1e-6)


@ct.kernel
def tiled_view_kernel(x, out, counts):
    v = x.tiled_view((4,), padding_mode=ct.PaddingMode.ZERO)
    w = x.tiled_view((4,), traversal_steps=(2,))
    ct.store(counts, (0,), ct.cat((ct.reshape(v.num_tiles(0), (1,)),
                                   ct.reshape(w.num_tiles(0), (1,))), 0))
    ct.store(counts, (1,), ct.full((2,), ct.num_tiles(x, 0, (4,)), ct.int32))
    ct.store(out, (ct.bid(0),), v.load((ct.bid(0),)) * 2)


@declares("num_tiles")
def test_tiled_views_and_num_tiles(xp, rng):
    x = rng.standard_normal(14).astype(np.float32)
    _, out, counts = _run(xp, tiled_view_kernel, (x, np.zeros(14, np.float32),
                                                  np.zeros(4, np.int32)),
                          ("num_tiles",), grid=(4,))
    np.testing.assert_array_equal(counts, [4, 7, 4, 4])
    np.testing.assert_array_equal(out, 2 * x)


@ct.kernel
def gather_scatter_kernel(x, idx, g, s, adv):
    i = ct.load(idx, (0,), (8,))
    v = ct.gather(x, i, padding_value=-1.0)
    ct.store(g, (0,), v)
    ct.scatter(s, i, v * 10)
    rows = ct.load_advanced_indexing(adv, (ct.arange(2, dtype=ct.int32), ct.Slice(0, 4)))
    ct.store_advanced_indexing(adv, (ct.arange(2, dtype=ct.int32) + 2, ct.Slice(0, 4)), rows + 1)


@declares("gather", "scatter", "load_advanced_indexing", "store_advanced_indexing",
          "Slice.__init__")
def test_gather_scatter_and_advanced_indexing(xp, rng):
    x = rng.standard_normal(10).astype(np.float32)
    idx = np.array([0, 3, 9, 10, -1, 4, 7, 2], np.int32)  # 10 and -1 are out of bounds
    adv = rng.standard_normal((4, 4)).astype(np.float32)
    _, _, g, s, a = _run(xp, gather_scatter_kernel, (x, idx, np.zeros(8, np.float32),
                                                     np.zeros(10, np.float32), adv.copy()),
                         ("gather", "scatter", "load_advanced_indexing",
                          "store_advanced_indexing", "Slice.__init__"))
    inb = (idx >= 0) & (idx < 10)
    np.testing.assert_array_equal(g, np.where(inb, x[np.clip(idx, 0, 9)], -1.0))
    want = np.zeros(10, np.float32)
    want[idx[inb]] = 10 * x[idx[inb]]
    np.testing.assert_array_equal(s, want)
    np.testing.assert_array_equal(a[2:], adv[:2] + 1)


ATOMICS = {"atomic_add": (ct.atomic_add, np.add), "atomic_max": (ct.atomic_max, np.maximum),
           "atomic_min": (ct.atomic_min, np.minimum), "atomic_and": (ct.atomic_and, np.bitwise_and),
           "atomic_or": (ct.atomic_or, np.bitwise_or), "atomic_xor": (ct.atomic_xor,
                                                                      np.bitwise_xor),
           "atomic_xchg": (ct.atomic_xchg, lambda a, b: b)}
covers(*ATOMICS, "atomic_cas")


def _atomic_kernel(fn):
    @ct.kernel
    def k(a, old):
        i = ct.arange(8, dtype=ct.int32)
        ct.store(old, (0,), fn(a, i, ct.arange(8, dtype=ct.int32) * 3 + ct.bid(0)))
    return k


@pytest.mark.parametrize("op", list(ATOMICS))
def test_atomics(xp, rng, op):
    fn, ref = ATOMICS[op]
    a = _ints(rng, np.int32, n=8, lo=0, hi=40)
    (got, old) = _run(xp, _atomic_kernel(fn), (a.copy(), np.zeros(8, np.int32)), [op])
    np.testing.assert_array_equal(old, a)
    np.testing.assert_array_equal(got, ref(a, np.arange(8, dtype=np.int32) * 3))


@ct.kernel
def cas_kernel(a, old):
    i = ct.arange(8, dtype=ct.int32)
    ct.store(old, (0,), ct.atomic_cas(a, i, i, ct.full((8,), -1, ct.int32)))


def test_atomic_cas(xp):
    a = np.array([0, 5, 2, 7, 4, 0, 6, 1], np.int32)  # equal to its index at 0, 2, 4, 6
    (got, old) = _run(xp, cas_kernel, (a.copy(), np.zeros(8, np.int32)), ["atomic_cas"])
    np.testing.assert_array_equal(old, a)
    np.testing.assert_array_equal(got, np.where(a == np.arange(8), -1, a))


# ---- blocks, utilities, printing -------------------------------------------------------------

@ct.kernel
def blocks_kernel(out, n):
    ct.grid_dependency_control_wait()
    m = ct.assume_divisible_by(n, 4)
    c = ct.ensure_constant(4)
    ct.static_assert(c == 4)
    s = ct.static_eval(out.ndim)
    ct.assert_(m >= 0, "n is a count")
    v = ct.bid(0) + ct.bid(1) * ct.num_blocks(0) + m * s
    ct.store(out, (ct.bid(1), ct.bid(0)), ct.full((1, 1), v, ct.int32))
    ct.grid_dependency_control_launch_dependents()


@declares("bid", "num_blocks", "assume_divisible_by", "static_assert", "ensure_constant",
          "static_eval", "assert_", "grid_dependency_control_wait",
          "grid_dependency_control_launch_dependents")
def test_blocks_and_utilities(xp):
    ops = ("bid", "num_blocks", "assume_divisible_by", "static_assert", "ensure_constant",
           "static_eval", "assert_", "grid_dependency_control_wait",
           "grid_dependency_control_launch_dependents")
    (out, _) = _run(xp, blocks_kernel, (np.zeros((2, 3), np.int32), 8), ops, grid=(3, 2))
    np.testing.assert_array_equal(out, np.arange(6).reshape(2, 3) + 16)


@ct.kernel
def printing_kernel(x):
    t = ct.load(x, (0,), (4,))
    ct.printf("tile[%d]:%d\n", ct.bid(0), ct.arange(4, dtype=ct.int32))
    ct.printf("f=%.2f %5.1f%%\n", t, ct.sum(t))
    ct.print(f"sum={ct.sum(t)} first={ct.extract(t, (0,), (1,))}")


@declares("printf", "print")
def test_printing(xp, capfd):
    x = np.array([0.5, 1.25, -2.0, 3.0], np.float32)
    _run(xp, printing_kernel, (x,), ("printf", "print"))
    lines = capfd.readouterr().out.strip().splitlines()
    assert lines == ["tile[0]:[0, 1, 2, 3]", "f=[0.50, 1.25, -2.00, 3.00]   2.8%",
                     "sum=2.750000 first=[0.500000]"]


def test_every_emulated_operation_is_covered():
    missing = set(emulator.supported_operations()) - COVERED
    assert not missing, f"operations without a conformance program: {sorted(missing)}"


# ---- GPU behaviours the emulator once got wrong ----------------------------------------------

@ct.kernel
def fp16_floordiv_kernel(x, y, out):
    ct.store(out, (0,), ct.load(x, (0,), (2,)) // ct.load(y, (0,), (2,)))


def test_fp16_floor_division_rounds_the_quotient_first(xp):
    x = np.array([42.5, -42.5], np.float16)
    y = np.array([4.72265625, 4.72265625], np.float16)  # 42.5 / y = 8.9993 -> 9.0 in fp16
    (_, _, out) = _run(xp, fp16_floordiv_kernel, (x, y, np.zeros(2, np.float16)), [])
    np.testing.assert_array_equal(out, [9.0, -9.0])


@ct.kernel
def argmax_nan_kernel(x, out):
    t = ct.load(x, (0,), (4,))
    ct.store(out, (0,), ct.cat((ct.reshape(ct.argmax(t, propagate_nan=True), (1,)),
                                ct.reshape(ct.argmin(t, propagate_nan=True), (1,))), 0))


def test_argmax_with_propagate_nan_returns_the_nan(xp):
    x = np.array([3, INF, NAN, 1], np.float32)
    (_, out) = _run(xp, argmax_nan_kernel, (x, np.zeros(2, np.int32)), [])
    np.testing.assert_array_equal(out, [2, 2])


@ct.kernel
def branch_constant_kernel(out, n, C: ct.Constant[int]):
    if n > 0:
        t = C
    else:
        t = 7
    ct.store(out, (0,), ct.arange(4, dtype=ct.int8) + t)


def test_constants_merged_from_a_runtime_if_are_int32(xp):
    (out, _, _) = _run(xp, branch_constant_kernel, (np.zeros(4, np.int32), 1, 125), [])
    np.testing.assert_array_equal(out, [125, 126, 127, 128])  # not wrapped to int8


@ct.kernel
def static_shape_astype_kernel(x, out):
    t = ct.load(x, (0, 0), (4, 8))
    ct.store(out, (0,), ct.full((1,), ct.static_eval(t.shape)[1].astype(ct.float32),
                                ct.float32))


def test_static_eval_shape_item_astype(xp):
    (_, out) = _run(xp, static_shape_astype_kernel, (np.zeros((4, 8), np.float32),
                                                     np.zeros(1, np.float32)), [])
    assert out[0] == 8.0


@ct.kernel
def compile_time_branch_kernel(out, C: ct.Constant[int]):
    if C > 0:  # decided at compile time: t stays a loosely typed constant
        t = C
    else:
        t = 7
    ct.store(out, (0,), ct.arange(4, dtype=ct.int8) + t)


def test_constants_from_a_compile_time_if_stay_loosely_typed(xp):
    (out, _) = _run(xp, compile_time_branch_kernel, (np.zeros(4, np.int8), 125), [])
    np.testing.assert_array_equal(out, np.array([125, 126, 127, -128], np.int8))  # int8 wraps
