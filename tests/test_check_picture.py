"""A failing checker offers the tile trace of the learner's kernel (mt.check.picture)."""
import matplotlib
import numpy as np

import cuda.tile as ct

import moe_tutorial as mt

matplotlib.use("Agg")


@ct.kernel
def axpy_forgets_the_block(alpha, x, y, out, TILE: ct.Constant[int]):
    # wrong on purpose: every block works on tile 0
    xt = ct.load(x, index=(0,), shape=(TILE,))
    yt = ct.load(y, index=(0,), shape=(TILE,))
    ct.store(out, index=(0,), tile=alpha * xt + yt)


def test_a_failing_checker_offers_the_picture_and_it_shows_the_wrong_writes(capsys):
    assert not mt.check.axpy(axpy_forgets_the_block, tile=8, trials=2)
    printed = capsys.readouterr().out
    assert "mt.check.picture()" in printed
    tr = mt.check.picture(block=1)
    n = tr.arrays["out"].shape[0]
    assert n == 32, "the first axpy case is 4 tiles of 8"
    assert tr.blocks == [(b, 0, 0) for b in range(4)]
    for b in range(4):
        assert tr.elements("out", "written", block=b) == {(i,) for i in range(8)}
    assert (tr.arrays["out"][8:] == mt.check.FLOAT_POISON).all(), "the replay starts from the poisoned output"


def test_passing_checks_print_no_picture_hint(capsys):
    @ct.kernel
    def axpy(alpha, x, y, out, TILE: ct.Constant[int]):
        i = ct.bid(0)
        ct.store(out, index=(i,), tile=alpha * ct.load(x, index=(i,), shape=(TILE,))
                 + ct.load(y, index=(i,), shape=(TILE,)))

    assert mt.check.axpy(axpy, tile=8, trials=2)
    assert "picture" not in capsys.readouterr().out
