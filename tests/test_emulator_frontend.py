"""cuTile's own front end runs before the emulator: a program the GPU compiler rejects is
rejected on the CPU with the same exception type and message (compared with the real compile
path, ``moe_tutorial.compile.export_cubin``, which fails in the same front end before tileiras
runs), once per specialisation, and ``MOE_TUTORIAL_EMULATOR_FRONTEND=0`` switches it off."""
import numpy as np
import pytest

import cuda.tile as ct
from moe_tutorial import emulator
from moe_tutorial.compile import array, export_cubin, scalar
from moe_tutorial.emulator import FRONTEND_ENV, _frontend


@ct.kernel
def store_narrowing(a, b):
    ct.store(a, (0,), ct.load(b, (0,), (4,)))          # float32 into a float16 array


@ct.kernel
def mixed_sign_add(a, b):
    ct.store(a, (0,), ct.load(a, (0,), (4,)) + ct.load(b, (0,), (4,)))   # uint8 + int8


@ct.kernel
def bitwise_on_floats(a, b):
    t = ct.load(a, (0,), (4,))
    ct.store(a, (0,), t & t)


@ct.kernel
def non_power_of_two(a, b):
    ct.store(a, (0,), ct.load(a, (0,), (3,)))


@ct.kernel
def runtime_shape(a, b):
    ct.store(a, (0,), ct.full((a.shape[0],), 0, ct.float32))


@ct.kernel
def tile_indexing(a, b):
    t = ct.load(a, (0,), (4,))
    ct.store(a, (0,), ct.full((4,), t[0], ct.float32))


@ct.kernel
def static_eval_in_static_assert(a, b):
    t = ct.load(a, (0,), (4,))
    ct.static_assert(ct.static_eval(t.shape[0]) == 4)


@ct.kernel
def fine(a, b, n, C: ct.Constant[int]):
    ct.store(a, (0,), ct.load(b, (0,), (4,)) * C + n)


F16, F32, I8, U8 = (np.zeros(4, d) for d in (np.float16, np.float32, np.int8, np.uint8))
BAD = [(store_narrowing, (F16, F32)), (mixed_sign_add, (U8, I8)), (bitwise_on_floats, (F32, F32)),
       (non_power_of_two, (F32, F32)), (runtime_shape, (F32, F32)), (tile_indexing, (F32, F32)),
       (static_eval_in_static_assert, (F32, F32))]


def _ct(a: np.ndarray):
    return array(emulator._dtypes.from_numpy(a.dtype), a.ndim)


@pytest.mark.parametrize("kernel, args", BAD, ids=[k._pyfunc.__name__ for k, _ in BAD])
def test_compile_errors_are_cutiles_own(kernel, args):
    with pytest.raises(ct.TileError) as compiled:
        export_cubin(kernel, [_ct(a) for a in args], "sm_90")
    with pytest.raises(ct.TileError) as emulated:
        emulator.launch(None, (1,), kernel, args)
    assert type(emulated.value) is type(compiled.value)
    assert emulated.value.message == compiled.value.message
    assert emulated.value.loc.line == compiled.value.loc.line   # points at the same source line


def test_front_end_runs_once_per_specialisation():
    out, x = np.zeros(4, np.float32), np.ones(4, np.float32)
    runs = _frontend.stats["runs"]
    emulator.launch(None, (1,), fine, (out, x, 1, 3))
    emulator.launch(None, (1,), fine, (out, x, 2, 3))            # same dtypes and constant
    assert _frontend.stats["runs"] == runs + 1
    np.testing.assert_array_equal(out, np.full(4, 5.0))
    emulator.launch(None, (1,), fine, (out, x, 1, 4))            # a new constant
    emulator.launch(None, (1,), fine, (out.astype(np.float64), x, 1, 4))   # a new dtype
    assert _frontend.stats["runs"] == runs + 3


def test_a_rejected_program_stays_rejected():
    for _ in range(2):  # the cached verdict, not a later emulator error
        with pytest.raises(ct.TileTypeError):
            emulator.launch(None, (1,), store_narrowing, (F16, F32))


def test_switching_the_front_end_off(monkeypatch):
    monkeypatch.setenv(FRONTEND_ENV, "0")
    runs = _frontend.stats["runs"]
    with pytest.raises(TypeError, match="cannot implicitly cast float32 to float16"):
        emulator.launch(None, (1,), store_narrowing, (F16, F32))   # the emulator's own check
    assert _frontend.stats["runs"] == runs


def test_scalar_and_constant_arguments_are_described_like_ct_launch():
    sig = [_frontend._constraint(v, ann) for v, ann in
           zip((F32, F32, 3, 2), fine._annotated_function.parameter_annotations)]
    assert sig[2] == scalar(ct.int32) and sig[3] == 2
    assert sig[0].dtype == ct.float32 and sig[0].ndim == 1
