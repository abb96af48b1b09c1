"""Every notebook is committed clean (no outputs), with cell ids, the python3 kernel and a seed;
lesson notebooks follow the course template and have a worked-solutions notebook."""
import json
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = sorted(p for p in NOTEBOOKS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
LESSONS = [p for p in ALL if p.parent == NOTEBOOKS]
SOLUTIONS = [p for p in ALL if p.parent == NOTEBOOKS / "solutions"]
LESSON_NAME = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")
SEED = re.compile(r"default_rng\(\s*(seed\s*=\s*)?\d+|\.seed\(\s*\d+|\bSEED\s*=\s*\d+")


def _ids(paths):
    return [str(p.relative_to(NOTEBOOKS)) for p in paths]


def _read(path):
    with open(path, encoding="utf-8") as f:
        return nbformat.read(f, as_version=nbformat.NO_CONVERT)


def _code(nb):
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def _markdown_headings(nb):
    return [line.strip() for c in nb.cells if c.cell_type == "markdown"
            for line in c.source.splitlines() if line.startswith("#")]


def test_there_are_notebooks():
    assert (NOTEBOOKS / "00_tiles.ipynb") in LESSONS
    assert all(p.parent in (NOTEBOOKS, NOTEBOOKS / "solutions") for p in ALL), \
        "notebooks live in notebooks/ or notebooks/solutions/"


@pytest.mark.parametrize("path", ALL, ids=_ids(ALL))
def test_format(path):
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["nbformat"] == 4 and raw["nbformat_minor"] >= 5, "needs nbformat 4.5+ (cell ids)"
    nb = _read(path)
    nbformat.validate(nb)
    spec = nb.metadata.get("kernelspec", {})
    assert spec.get("name") == "python3", f"kernelspec name is {spec.get('name')!r}"
    assert spec.get("display_name") == "Python 3"
    ids = [c.get("id") for c in nb.cells]
    assert all(ids), "every cell needs an id"
    assert len(set(ids)) == len(ids), "cell ids must be unique"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"cell {i} has an execution count"
    assert SEED.search(_code(nb)), "seed the random generator, e.g. np.random.default_rng(0)"


@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_lesson_template(path):
    assert LESSON_NAME.match(path.name), "lesson notebooks are named NN_topic.ipynb"
    nb = _read(path)
    first = nb.cells[0]
    assert first.cell_type == "markdown", "the first cell is the markdown introduction"
    assert first.source.lstrip().startswith("# "), "the first cell starts with a # title"
    intro = first.source.lower()
    for needed in ("learning objectives", "prerequisites", "time", "next"):
        assert needed in intro, f"the first cell should mention {needed!r}"
    head_code = [c.source for c in nb.cells[:6] if c.cell_type == "code"]
    assert any("mt.describe()" in src for src in head_code), \
        "an early code cell prints mt.describe()"
    headings = _markdown_headings(nb)
    assert "## Summary" in headings and "## Exercises" in headings
    assert headings.index("## Summary") < headings.index("## Exercises")
    exercises = nb.cells[next(i for i, c in enumerate(nb.cells)
                              if c.cell_type == "markdown" and "## Exercises" in c.source):]
    assert any(c.cell_type == "code" and "mt.check." in c.source for c in exercises), \
        "exercises are checked with an mt.check.<name>(...) call"


@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_lesson_has_solutions(path):
    solution = NOTEBOOKS / "solutions" / f"{path.stem}_solutions.ipynb"
    assert solution.exists(), f"missing {solution.relative_to(NOTEBOOKS.parent)}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=_ids(SOLUTIONS))
def test_solutions_match_a_lesson_and_assert_the_checks(path):
    assert path.stem.endswith("_solutions")
    lesson = NOTEBOOKS / f"{path.stem.removesuffix('_solutions')}.ipynb"
    assert lesson.exists(), f"{path.name} has no lesson {lesson.name}"
    assert re.search(r"assert\s+mt\.check\.\w+\(", _code(_read(path))), \
        "solutions assert on the checkers' return value: assert mt.check.<name>(...)"
